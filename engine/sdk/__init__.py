"""The logging SDK (user documentation: docs/sdk.md): `engine.init()`, `Run`, `engine.Api()`.

Layout: run.py (init, Run, states, log), buffer.py (buffer, flush thread,
retries), flush.py (the flush transaction), copy_binary.py (binary COPY encoding),
session.py (connections shared by the runs of a process), system.py (psutil sampler),
artifacts.py (versions, aliases, tags, registry links), api.py (Api), validate.py (checks).
"""

from engine.exceptions import RunStopped
from engine.sdk.api import Api
from engine.sdk.artifacts import ArtifactVersion, RegistryLink
from engine.sdk.run import Run, StepWarning, ValueWarning, init

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
