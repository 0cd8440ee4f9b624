"""`engine.rules.api.apply`, the documented import path of `engine.automations.apply`:

from engine.rules import Automation
from engine.rules.api import apply
apply(Automation.model_validate({...}))        # or apply(yaml_text)
"""

from engine.automations import apply

__all__ = ["apply"]
