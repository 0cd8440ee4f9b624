"""Every /api/v1 route of `engine web` refuses what it must, and a refusal writes nothing.

The walker iterates the app's own route table, so a route added later is walked too (and a
route without the access dependency, or without a sample body here, fails the test)."""

from __future__ import annotations

import time

import pytest
from fastapi.routing import iter_route_contexts

from engine.web.app import API_PREFIX, create_app
from engine.web.auth import access_of
from tests.acceptance.web_helpers import RULE, TwoTeams, WebProcess, make_key
from tests.integration.test_rule_store import row_counts

# A body for each route that takes one; for routes whose target is in the body, it names
# the other team's project or a registry the scoped key does not cover.
OTHER_RULE = RULE.format(name="other-rule", project="other/proj")
BODIES = {
    ("POST", "/api/v1/runs"): {"project": "other/proj", "id": "new-run"},
    ("POST", "/api/v1/runs/{entity}/{project}/{run_id}/log"): {"batch_id": "b1", "rows": [{"values": {"loss": 1.0}}]},
    ("POST", "/api/v1/runs/{entity}/{project}/{run_id}/finish"): {"exit_code": 0},
    ("POST", "/api/v1/runs/{entity}/{project}/{run_id}/artifacts"): {"name": "m", "type": "model"},
    ("POST", "/api/v1/artifacts/{entity}/{project}/{collection}/{version}/aliases"): {"alias": "prod"},
    ("POST", "/api/v1/artifacts/{entity}/{project}/{collection}/{version}/tags"): {"tag": "eu"},
    ("POST", "/api/v1/artifacts/{entity}/{project}/{collection}/{version}/links"): {"registry": "other-reg", "collection": "c"},
    ("POST", "/api/v1/automations/validate"): {"yaml": OTHER_RULE},
    ("POST", "/api/v1/automations/apply"): {"yaml": OTHER_RULE.replace("threshold: 1", "threshold: 2"), "prune": True},
    ("POST", "/api/v1/automations/backtest"): {"yaml": OTHER_RULE},
    ("POST", "/api/v1/runs/{entity}/{project}/{run_id}/alerts"): {"title": "loss is NaN"},
    ("POST", "/api/v1/collections/{entity}/{project}/{collection}/tags"): {"tag": "golden"},
    ("POST", "/api/v1/registries/{registry}/{collection}/tags"): {"tag": "golden"},
    ("POST", "/api/v1/silences"): {"automation": "other-rule", "duration": "2h", "reason": "maintenance"},
}  # fmt: skip
# A key with this role may not do what a route needing the other role does.
WRONG_ROLES = {"admin": ["read-all", "ingest-all"], "ingest": ["read-all"], "read": ["ingest-all"]}


def api_routes():
    """(method, path template, route) of every /api/v1 route of the app's route table."""
    found = []
    for context in iter_route_contexts(create_app().routes):
        path = getattr(context, "path", "")
        if path.startswith(API_PREFIX):
            route = getattr(context, "original_route", context)
            for method in sorted(context.methods):
                found.append((method, path, route))
    return found


@pytest.mark.slow
def test_every_route_refuses_missing_bad_and_weak_keys_and_writes_nothing(conn, database_url, tmp_path):
    teams = TwoTeams(conn)
    keys = {
        "admin-acme": make_key(conn, "admin-acme", "admin", "acme/*", "registry:acme-reg"),
        "read-all": make_key(conn, "read-all", "read", "*"),
        "ingest-all": make_key(conn, "ingest-all", "ingest", "*"),
        "revoked": make_key(conn, "revoked", "admin", "*"),
        "expired": make_key(conn, "expired", "admin", "*"),
    }
    conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'revoked'")
    conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE name = 'expired'")
    unknown = "eng_" + "A" * 43
    refusals_401 = {
        "no key": {},
        "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
        "malformed": {"Authorization": "Bearer nonsense"},
        "unknown": {"Authorization": f"Bearer {unknown}"},
        "revoked": {"Authorization": f"Bearer {keys['revoked']}"},
        "expired": {"Authorization": f"Bearer {keys['expired']}"},
    }
    routes = api_routes()
    assert len(routes) >= 20
    before = row_counts(conn)
    counts = {"401": 0, "403 role": 0, "403 scope": 0, "filtered": 0}
    bodies_seen = []
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client() as http:
        for method, template, route in routes:
            access = access_of(route)
            assert access is not None, f"{method} {template} does not declare its access"
            path = template.format(**teams.other)
            body = BODIES.get((method, template))
            assert body is not None or route.body_field is None, f"give {method} {template} a body in BODIES"

            def send(headers, method=method, path=path, body=body):
                response = http.request(method, path, json=body, headers=headers)
                bodies_seen.append(response.text)
                assert response.headers["content-type"].startswith("application/json"), response.text
                return response

            for what, headers in refusals_401.items():
                response = send(headers)
                assert response.status_code == 401, (method, template, what, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert row_counts(conn) == before, (method, template, what)
                counts["401"] += 1
            for name in WRONG_ROLES[access.role]:
                response = send({"Authorization": f"Bearer {keys[name]}"})
                assert response.status_code == 403, (method, template, name, response.text)
                assert f"this needs {access.role}" in response.json()["detail"]
                assert row_counts(conn) == before, (method, template, name)
                counts["403 role"] += 1
            scoped = {"Authorization": f"Bearer {keys['admin-acme']}"}
            if access.target is not None:
                response = send(scoped)
                assert response.status_code == 403, (method, template, response.text)
                assert "does not cover" in response.json()["detail"]
                assert row_counts(conn) == before, (method, template, "scope")
                counts["403 scope"] += 1
            else:  # a listing: it answers with what the key covers, never the other team's rows
                response = send(scoped)
                assert response.status_code == 200, (method, template, response.text)
                assert "other-rule" not in response.text and "run-o" not in response.text
                counts["filtered"] += 1
        log = web.log()
    assert "refused" in log
    for key in [*keys.values(), unknown]:
        assert key not in log, "a key reached the server's log"
        assert not any(key in text for text in bodies_seen), "a key reached an error body"
    print(f"route-table walk: {len(routes)} routes, {counts}")
    assert counts["401"] == 6 * len(routes)


def test_a_revoked_key_is_refused_within_the_key_cache_and_on_its_next_request_without_it(
    conn, database_url, tmp_path
):
    """A web process takes a key it checked less than ENGINE_WEB_KEY_CACHE ago without asking
    the database: a key revoked in the database is refused once that has passed (here 1 s), or
    on its very next request with the cache at 0."""
    for cache, name in (("1", "cached"), ("0", "uncached")):
        key = make_key(conn, name, "read", "*")
        with (
            WebProcess(database_url, tmp_path / f"{name}.log", ENGINE_WEB_KEY_CACHE=cache) as web,
            web.client(key) as http,
        ):
            assert http.get("/api/v1/history").status_code == 200
            conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = %s", (name,))
            revoked_at = time.monotonic()
            answer = http.get("/api/v1/history")
            if cache == "1":
                while answer.status_code == 200 and time.monotonic() - revoked_at < 10:
                    time.sleep(0.05)
                    answer = http.get("/api/v1/history")
                assert time.monotonic() - revoked_at < 1 + 2  # the cache's second, and some slack
            assert answer.status_code == 401 and "revoked" in answer.json()["detail"], answer.text
