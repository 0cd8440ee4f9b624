"""The one exception tree of the engine.

    EngineError                      everything the engine raises on purpose
    ├── ConfigurationError           bad settings or environment (missing env var, bad URL)
    ├── DatabaseError                a problem talking to PostgreSQL, translated at one boundary
    │   ├── DatabaseUnavailable      nothing answers (SQLSTATE class 08, or no server): transient
    │   │   ├── DatabaseBusy         the server refuses for capacity (class 53, too many clients): transient
    │   │   ├── LockBusy             a lock was held longer than the statement waits (55P03): transient
    │   │   └── ServerUnavailable    ENGINE_URL does not answer, or answers 429/5xx: transient
    │   ├── DatabaseAuthFailed       the credentials are refused (class 28): permanent
    │   ├── ExtensionMissing         TimescaleDB not installed or not preloaded
    │   ├── SchemaNotReady           migrations not applied (42P01 / 42883), or no such database (3D000)
    │   └── QueryTimeout             statement_timeout hit (SQLSTATE 57014)
    ├── LocalDatabaseError           the embedded cluster could not be initialised or started
    ├── RuleError                    rules that cannot be loaded
    │   └── RuleValidationError      carries every RuleIssue found (file, line, field, message)
    ├── NotFound                     a named thing (automation, trigger, delivery) does not exist
    ├── IngestError                  the SDK could not store what it was given
    ├── RunStopped                   an automation's stop_run action asks the run to stop
    ├── KeyRefused                   an API key that is malformed, unknown, revoked or expired
    ├── ApiError                     engine web (ENGINE_URL) cannot be reached or refuses a request
    ├── AccessDenied                 a valid API key without the role or the scope a request needs
    └── DeliveryError                an action could not be delivered
        └── PermanentDeliveryError   ...and retrying cannot help (4xx, refused address)

Every message is meant to be read by a person and says what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


class ConfigurationError(EngineError):
    pass


class DatabaseError(EngineError):
    # the server's SQLSTATE when it gave one (set by engine.db.translate): a caller that
    # expects one condition (42501, a privilege refused) tests it here
    sqlstate: str | None = None


class DatabaseUnavailable(DatabaseError):
    """Transient: retrying later can help."""


class DatabaseBusy(DatabaseUnavailable):
    """The server is at its connection limit or out of resources; transient like an outage."""


class LockBusy(DatabaseUnavailable):
    """A lock the statement needs stayed held longer than it waits (lock_timeout, SQLSTATE
    55P03): transient, the holder finishes."""


class ServerUnavailable(DatabaseUnavailable):
    """The engine's HTTP API (ENGINE_URL) does not answer, or answers 429 or 5xx: transient
    like an outage of the database behind it (code catching DatabaseUnavailable keeps working)."""


class DatabaseAuthFailed(DatabaseError):
    """Permanent: retrying with the same credentials cannot help."""


class ExtensionMissing(DatabaseError):
    pass


class SchemaNotReady(DatabaseError):
    pass


class QueryTimeout(DatabaseError):
    pass


class LocalDatabaseError(EngineError):
    pass


class NotFound(EngineError):
    pass


class IngestError(EngineError):
    pass


class RunStopped(EngineError):
    """An automation's `stop_run` action asked the run to stop (raised by `run.log` and
    `run.flush`). A run whose `with` block it leaves ends `killed`, naming `automation`."""

    def __init__(self, automation: str, run: str = ""):
        super().__init__(
            f"run {run} was asked to stop by automation {automation!r} (its stop_run action); "
            "it ends killed when it leaves its `with` block"
        )
        self.automation, self.run = automation, run

    def __reduce__(self) -> tuple[type[RunStopped], tuple[str, str]]:
        return type(self), (self.automation, self.run)


class KeyRefused(EngineError):
    """An API key that cannot authenticate; the message says why, never the key."""


class ApiError(EngineError):
    """A client of engine web: the server cannot be reached, or answered an error (`status`)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AccessDenied(EngineError):
    """The API key is valid but its role or scopes do not allow the request (HTTP 403)."""


class DeliveryError(EngineError):
    pass


class PermanentDeliveryError(DeliveryError):
    """An expected failure that retrying cannot fix (a 4xx answer, a refused address)."""


class RuleError(EngineError):
    pass


@dataclass(frozen=True)
class RuleIssue:
    """One problem in a rule file: `rules/x.yaml:12: event.window: must be ≥ 1`."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class RuleValidationError(RuleError):
    """Every issue found while loading rules, reported all at once."""

    def __init__(self, issues: list[RuleIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))
