"""Rules from Python, no YAML needed:

    from engine.rules import Automation
    from engine.rules.api import apply
    apply(Automation.model_validate({...}))        # or apply(yaml_text)
"""

from __future__ import annotations

from engine import db as enginedb
from engine.rules.automation import Automation
from engine.rules.loader import parse_rules_text
from engine.rules.store import Outcome, apply_rules


def apply(*rules: Automation | str, prune: bool = False, dry_run: bool = False) -> list[tuple[str, Outcome]]:
    """Create or update automations by name (YAML text may hold several rules).

    Connects like the rest of the engine (ENGINE_DATABASE_URL or the embedded database).
    Returns (name, created|updated|unchanged|deleted) for each; with `dry_run`, what it would
    return, and nothing is changed. Deleted automations keep their trigger history.
    """
    automations: list[Automation] = []
    for rule in rules:
        if isinstance(rule, str):
            automations += [loaded.automation for loaded in parse_rules_text(rule, file="<python>")]
        elif isinstance(rule, Automation):
            automations.append(rule)
        else:
            raise TypeError(f"apply() takes Automation models or YAML text, not {type(rule).__name__}")
    with enginedb.connect() as conn:
        enginedb.ensure_schema(conn)
        results = apply_rules(conn, automations, prune=prune, dry_run=dry_run)
        conn.commit()
    return results
