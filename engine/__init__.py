"""Automation engine for ML experiment tracking on TimescaleDB.

import engine
with engine.init(project="acme/vision") as run:
    run.log({"loss": 0.5})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The SDK is loaded on first use, so that `engine <command>` does not pay for it.
__all__ = [
    "Api",
    "ArtifactVersion",
    "RegistryLink",
    "Run",
    "RunStopped",
    "StepWarning",
    "ValueWarning",
    "init",
]
_SDK_EXPORTS = frozenset(__all__)

if TYPE_CHECKING:
    from engine.sdk import (
        Api,
        ArtifactVersion,
        RegistryLink,
        Run,
        RunStopped,
        StepWarning,
        ValueWarning,
        init,
    )


def __getattr__(name: str) -> Any:
    if name in _SDK_EXPORTS:
        from engine import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
