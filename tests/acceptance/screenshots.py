"""`make screenshots`: the console's pages at 1280×800 and at phone width (390×844), written to
docs/images/ for the README. Not collected by `make test` (no `test_` file prefix): run by name.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from engine.actions import silences
from tests.acceptance.console_helpers import Deployment
from tests.acceptance.test_console_browser import browser, signed_in  # noqa: F401 - the fixture
from tests.acceptance.web_helpers import WebProcess

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def test_screenshots(browser, conn, database_url, tmp_path):  # noqa: F811
    deployment = Deployment(conn, database_url)
    silences.add(
        conn, automation="loss-up", duration=timedelta(hours=2), reason="retraining with a new schedule"
    )
    silences.add(conn, project="acme/sweep", duration=timedelta(days=1), reason="sweep: results tomorrow")
    IMAGES.mkdir(parents=True, exist_ok=True)
    pages = {
        "automations": "/",
        "history": "/history",
        "trigger": f"/triggers/{deployment.triggers['acc-high']}",
        "trigger-change": f"/triggers/{deployment.triggers['loss-up']}",
        "run": "/acme/vision/runs/acme-run",
        "silences": "/silences",
    }
    written = []
    with WebProcess(database_url, tmp_path / "web.log") as web:
        for size, (width, height) in SIZES.items():
            context, page = signed_in(browser, web, deployment.keys["admin"], width, height)
            for name, path in pages.items():
                page.goto(path)
                target = IMAGES / f"console-{name}-{size}.png"
                page.screenshot(path=str(target))
                written.append(target)
            page.goto("/editor")
            page.get_by_label("Rules (YAML").fill(
                "name: new-rule\nscope: {project: acme/vision}\n"
                "event: {type: run_metric_threshold, metric: loss, window: 0, operator: '<', threshold: 1}\n"
                "action: {type: no_op}\n"
            )
            page.get_by_role("button", name="Check").click()
            target = IMAGES / f"console-editor-{size}.png"
            page.screenshot(path=str(target))
            written.append(target)
            context.close()
    assert all(p.stat().st_size > 5000 for p in written), written
