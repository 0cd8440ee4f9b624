"""Log output of the `engine` command: text (the default) or, with ENGINE_LOG_FORMAT=json, one
JSON object per line for log collectors:

    {"time": "2024-05-01T12:00:00.123+00:00", "level": "INFO", "logger": "engine.scheduler",
     "message": "tick: 3 evaluated, 1 fired, 0 failed () in 12.5 ms", "automation": "acc"}

Fields given with `log.info(..., extra={"automation": name})` become keys of their own; an
exception adds `exception` (the formatted traceback). Nothing else is added, so what the
engine keeps out of its messages (secrets) stays out of the JSON too.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot hold is written as its text, never dropped
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: int | str = logging.WARNING, log_format: str | None = None) -> None:
    """Send the root logger to stderr in the configured format (ENGINE_LOG_FORMAT)."""
    if log_format is None:
        from engine.settings import get_settings

        try:
            log_format = get_settings().log_format
        except ValueError:  # a bad ENGINE_* value: the command reports it; log in text meanwhile
            log_format = "text"
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
