"""A deployment for the web console's tests: two teams' automations, metric triggers that the
evaluator fired (so that the "why it fired" chart has a series, windows and a firing), a
pending webhook delivery, and keys of each kind; and signing in over plain HTTP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx

import engine as sdk
from tests.acceptance.web_helpers import make_key
from tests.integration.evaluation_helpers import apply_yaml, tick, triggers

T0 = datetime(2026, 3, 1, tzinfo=UTC)
ACME_RULES = """\
name: acc-high
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: accuracy, window: 2, operator: ">=", threshold: 0.5}
action: {type: webhook, url: "https://hooks.example.com/acme", max_attempts: 1}
---
name: loss-up
scope: {project: acme/vision}
event: {type: run_metric_change, metric: loss, current_window: 2, prior_window: 3, change: absolute, direction: increase, amount: 0.5}
action: {type: no_op}
"""
OTHER_RULE = """\
name: other-rule
scope: {project: other/proj}
event: {type: run_metric_threshold, metric: accuracy, window: 1, operator: ">", threshold: 0.5}
action: {type: no_op}
"""


class Deployment:
    """acme/vision (run `acme-run`: acc-high and loss-up fired) and other/proj (other-rule fired);
    keys: `admin` (admin, *), `reader` (read, acme/*), `ingest` (ingest, *)."""

    def __init__(self, conn, database_url: str):
        apply_yaml(conn, ACME_RULES)
        apply_yaml(conn, OTHER_RULE)
        for project, run_id in (("acme/vision", "acme-run"), ("other/proj", "other-run")):
            with sdk.init(project=project, id=run_id, name=run_id, system_metrics_interval=0) as run:
                for i, (acc, loss) in enumerate([(0.1, 1.0), (0.3, 1.0), (0.6, 1.0), (0.7, 2.0), (0.8, 2.0)]):
                    run.log({"accuracy": acc, "loss": loss}, step=i, time=T0 + timedelta(seconds=i))
        tick(database_url)
        self.triggers = {t["automation"]: t["id"] for t in triggers(conn)}
        assert set(self.triggers) == {"acc-high", "loss-up", "other-rule"}, self.triggers
        self.keys = {
            "admin": make_key(conn, "admin", "admin", "*"),
            "reader": make_key(conn, "reader", "read", "acme/*"),
            "ingest": make_key(conn, "ingest", "ingest", "*"),
        }


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden field {name!r} in the page"
    return found.group(1)


def sign_in(http: httpx.Client, key: str, next_url: str = "/") -> httpx.Response:
    """Sign in as a browser does: the form (its token and cookie), then its post."""
    form = http.get("/login", params={"next": next_url})
    assert form.status_code == 200, form.text
    return http.post(
        "/login",
        data={"key": key, "csrf": hidden(form.text, "csrf"), "next": next_url},
        follow_redirects=False,
    )
