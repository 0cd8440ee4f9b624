"""ENGINE_LOG_FORMAT=json: one JSON object per record, with the record's extras as keys."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from engine.logs import JsonFormatter, formatter


def record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.getLogger("engine.test").makeRecord(
        "engine.test", logging.WARNING, "f.py", 1, message, args, exc_info, extra=extra
    )
    return rec


def test_one_object_with_time_level_logger_message_and_extras():
    line = JsonFormatter().format(
        record("tick: %d fired in %s", 2, "5 ms", automation="accuracy ✓", run_pk=7)
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.pop("time").endswith("+00:00") and entry == {
        "level": "WARNING",
        "logger": "engine.test",
        "message": "tick: 2 fired in 5 ms",
        "automation": "accuracy ✓",
        "run_pk": 7,
    }
    datetime.fromisoformat(json.loads(line)["time"])


def test_an_exception_is_one_field_and_odd_extras_are_text():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        line = JsonFormatter().format(
            record("failed", exc_info=sys.exc_info(), when=datetime(2024, 5, 1), items={1, 2})
        )
    entry = json.loads(line)
    assert "\n" not in line  # the traceback's newlines are escaped inside the JSON string
    assert entry["exception"].startswith("Traceback") and "ValueError: bad\nthing" in entry["exception"]
    assert entry["when"] == "2024-05-01 00:00:00" and entry["items"] == "{1, 2}"


def test_text_is_the_default():
    assert not isinstance(formatter("text"), JsonFormatter) and isinstance(formatter("json"), JsonFormatter)
