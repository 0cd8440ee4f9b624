"""Schemathesis against `engine web`'s OpenAPI document: thousands of generated requests,
valid and invalid, with an admin key. No answer is a 5xx; every 4xx is a JSON body with a
`detail` that says what is wrong."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.generation import GenerationMode

from tests.acceptance.web_helpers import TwoTeams, WebProcess, make_key

EXAMPLES = 60  # per operation and mode: 21 operations x 2 modes x 60 = about 2,500 requests


@pytest.mark.slow
def test_generated_requests_never_get_a_5xx_and_every_4xx_is_json(conn, database_url, tmp_path):
    TwoTeams(conn)
    key = make_key(conn, "fuzz", "admin", "*")
    headers = {"Authorization": f"Bearer {key}"}
    sent = 0
    with WebProcess(database_url, tmp_path / "web.log") as web:
        schema = schemathesis.openapi.from_url(web.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                sent += fuzz(operation, mode, web.url, headers)
        log = web.log()
    assert "Traceback" not in log, log[-3000:]
    assert key not in log
    print(f"schemathesis: {sent} requests over {len(operations)} operations")
    assert sent >= 1000


def fuzz(operation, mode, base_url: str, headers: dict[str, str]) -> int:
    """Send EXAMPLES generated requests for one operation; how many were sent."""
    sent = 0

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def call(case):
        nonlocal sent
        case.headers = {**(case.headers or {}), **headers}  # the generated one may be anything
        response = case.call(base_url=base_url, timeout=30)
        sent += 1
        where = f"{operation.method.upper()} {case.formatted_path} -> {response.status_code}"
        content_type = " ".join(response.headers.get("content-type") or [])
        assert response.status_code < 500, f"{where}: {response.text[:500]}"
        if response.status_code >= 400:
            assert content_type.startswith("application/json"), where
            assert isinstance(response.json().get("detail"), str) and response.json()["detail"], where

    try:
        call()
    except hypothesis.errors.Unsatisfiable:
        # no invalid request exists for this operation in this mode (e.g. a path of free strings)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return sent
