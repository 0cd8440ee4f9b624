"""How the HTTP transport cuts a run's share of a batch into log request bodies."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from engine.clock import to_micros
from engine.exceptions import AccessDenied, KeyRefused, NotFound, ServerUnavailable
from engine.sdk.buffer import Part, Stream
from engine.sdk.http_transport import (
    Answer,
    Client,
    HttpTransport,
    _as_rows,
    encode,
    in_form,
    log_bodies,
    run_path,
)
from engine.settings import Settings
from tests.receiver import Received, Receiver, Reply

T_AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
T = to_micros(T_AT)  # as records hold times


def part(records, system=()):
    return Part(Stream(0, "acme/vision/r1"), list(records), list(system), 0)


@pytest.mark.parametrize("columns", [True, False])
def test_bodies_hold_at_most_the_chunk_and_never_split_a_record(columns):
    records = [(T, s, ("a", "b", "c"), (1.0, 2.0, 3.0)) for s in range(10)]
    system = [(T, i, ("system/cpu",), (50.0,)) for i in range(4)]
    sent = list(log_bodies(part(records, system), chunk_points=7, columns=columns))
    assert all(("columns" in b or not b.get("rows")) if columns else "columns" not in b for b in sent)
    bodies = [_as_rows(b) for b in sent]  # the rows the server reads from either form
    sizes = [sum(len(r["values"]) for r in b.get("rows", []) + b["system"]) for b in bodies]
    assert all(n <= 7 for n in sizes) and sum(sizes) == 34
    steps = [r["step"] for b in bodies for r in b.get("rows", [])]
    assert steps == list(range(10))  # in order, each once
    assert [len(b["system"]) for b in bodies][-1] > 0 and all(
        "step" not in r for b in bodies for r in b["system"]
    )
    # deterministic: the same part gives the same bodies (a batch sent again keeps its ids)
    assert list(log_bodies(part(records, system), chunk_points=7, columns=columns)) == sent


@pytest.mark.parametrize("columns", [True, False])
def test_non_finite_values_are_written_as_the_api_spells_them_and_times_keep_microseconds(columns):
    records = [(T, 0, ("n", "p", "m", "x"), (math.nan, math.inf, -math.inf, 0.5))]
    (body,) = log_bodies(part(records), 100, columns=columns)
    row = json.loads(encode(_as_rows(json.loads(encode(body)))))["rows"][0]
    assert row["values"] == {"n": "NaN", "p": "Infinity", "m": "-Infinity", "x": 0.5}
    assert datetime.fromisoformat(row["time"]) == T_AT
    if columns:  # as whole microseconds since the Unix epoch
        assert body["columns"]["time_us"] == [1_767_323_045_123_456]


def test_run_paths_quote_each_part():
    assert run_path("acme/vision/r-1.2") == "/runs/acme/vision/r-1.2"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, KeyRefused),
        (403, AccessDenied),
        (404, NotFound),
        (422, ValueError),
        (429, ServerUnavailable),
        (503, ServerUnavailable),
    ],
)
def test_error_answers_become_the_sdks_exceptions_with_the_servers_message(status, error):
    client = Client(Settings(url="http://127.0.0.1:9", api_key="eng_secret"))  # type: ignore[arg-type]
    raised = client.error(Answer(status, b'{"detail": "what is wrong"}'))
    assert isinstance(raised, error) and "what is wrong" in str(raised) and "eng_secret" not in str(raised)
    client.close()


@pytest.mark.parametrize(
    ("server", "sent"),
    [
        ("current", ["time_us", "time_us"]),
        ("columns without time_us", ["time_us", "columns", "columns"]),
        ("rows only", ["time_us", "rows", "rows"]),
    ],
)
def test_a_server_that_predates_a_body_form_gets_the_next_older_one_for_the_session(server, sent):
    """An older `engine web` refuses the field it does not know (422 naming it, as pydantic
    words it); the transport resends the body in the next form it takes, and keeps that form."""

    def older_server(request: Received) -> Reply:
        body = request.json()
        columns = body.get("columns")
        refused = None
        if columns is not None and server == "rows only":
            refused = "columns"
        elif columns is not None and "time_us" in columns and server != "current":
            refused = "columns.time_us"
        if refused is not None:
            detail = f"{refused}: Extra inputs are not permitted"
            return Reply(422, json.dumps({"detail": detail}).encode(), {"Content-Type": "application/json"})
        return Reply(200, b'{"batch_id": "b", "points": 3}', {"Content-Type": "application/json"})

    records = [(T, s, ("a",), (float(s),)) for s in range(3)]
    with Receiver(older_server) as rx:
        client = Client(Settings(url=rx.url(""), api_key="eng_secret"))  # type: ignore[arg-type]
        transport = HttpTransport(client)
        for n in range(2):
            (body,) = log_bodies(part(records), 100)
            assert (
                transport._post_log("/runs/acme/vision/r1/log", body | {"batch_id": f"b{n}"})["points"] == 3
            )
        client.close()
    forms = []
    for request in rx.requests:
        columns = request.json().get("columns")
        forms.append("rows" if columns is None else "time_us" if "time_us" in columns else "columns")
        rows = in_form(request.json(), "rows")["rows"]  # the same rows in every form
        assert [(r["step"], r["values"], datetime.fromisoformat(str(r["time"]))) for r in rows] == [
            (s, {"a": float(s)}, T_AT) for s in range(3)
        ]
    assert forms == sent
