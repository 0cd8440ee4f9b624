"""The web console in a real browser: Playwright (from PyPI) driving the system's chromium
(Debian's package, which scripts/setup installs: no browser download, no internet).

One browser for the module; each test has its own deployment, server and browser context."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.acceptance.console_helpers import Deployment
from tests.acceptance.web_helpers import WebProcess

AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe-core" / "axe.min.js"
CHROMIUM = os.environ.get("ENGINE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), f"no chromium at {CHROMIUM}: scripts/setup installs Debian's `chromium`"
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # root: chromium refuses its sandbox
        b = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield b
        b.close()


@pytest.fixture
def served(conn, database_url, tmp_path) -> Iterator[tuple[Deployment, WebProcess]]:
    deployment = Deployment(conn, database_url)
    with WebProcess(database_url, tmp_path / "web.log") as web:
        yield deployment, web


def signed_in(
    browser: Browser, web: WebProcess, key: str, width: int = 1280, height: int = 800, **options: Any
) -> tuple[BrowserContext, Page]:
    context = browser.new_context(base_url=web.url, viewport={"width": width, "height": height}, **options)
    page = context.new_page()
    page.goto("/")
    expect(page).to_have_url(f"{web.url}/login?next=%2F")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Automations")).to_be_visible()
    return context, page


def test_a_reader_sees_its_automations_history_and_why_a_trigger_fired_but_no_admin_control(browser, served):
    deployment, web = served
    context, page = signed_in(browser, web, deployment.keys["reader"])
    rows = page.locator("table.automations tbody tr")
    expect(rows).to_have_count(2)  # acc-high and loss-up; other/proj's rule is not this key's
    expect(page.locator("tr[data-automation='acc-high'] td.enabled")).to_have_text("yes")
    assert page.get_by_role("button", name="Disable").count() == 0
    assert page.locator("button.admin").count() == 0

    page.get_by_role("link", name="History").click()
    page.get_by_label("Automation").fill("acc-high")
    page.get_by_role("button", name="Filter").click()
    history = page.locator("table tbody tr")
    expect(history).to_have_count(1)
    history.get_by_role("link", name=f"#{deployment.triggers['acc-high']}").click()

    expect(
        page.get_by_role("heading", name=f"Trigger #{deployment.triggers['acc-high']}: why it fired")
    ).to_be_visible()
    chart = page.locator("figure.why svg.chart")
    expect(chart).to_be_visible()
    assert chart.locator("circle.point").count() == 5  # every value of the series
    expect(chart.locator("rect.window")).to_have_count(1)  # the window the rule averaged
    expect(chart.locator("line.threshold")).to_have_count(1)
    fired = chart.locator("circle.fired")
    expect(fired).to_have_count(1)
    # the window of two values at steps 2 and 3 averaged 0.65, over the threshold: fired at step 3
    assert fired.locator("title").text_content() == "fired: accuracy = 0.7 at step 3; avg = 0.65 >= 0.5"
    assert "window #3–#4 (steps 2–3)" in chart.locator("rect.window title").text_content()
    assert page.locator("button.admin").count() == 0  # no redeliver for a read key

    # a forged admin post, with the page's own token, is refused by the server
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    forged = context.request.post(f"{web.url}/automations/acc-high/disable", form={"csrf": token})
    assert forged.status == 403

    # readable at phone width: the page does not scroll sideways (tables scroll in their box)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    context.close()


def test_an_admin_disables_enables_redelivers_and_applies_a_rule_after_its_error(browser, served, conn):
    deployment, web = served
    context, page = signed_in(browser, web, deployment.keys["admin"])
    row = page.locator("tr[data-automation='acc-high']")
    row.get_by_role("button", name="Disable").click()
    expect(row.locator("td.enabled")).to_have_text("no")
    row.get_by_role("button", name="Enable").click()
    expect(row.locator("td.enabled")).to_have_text("yes")

    # a post without the form's token is refused, and changes nothing
    refused = context.request.post(f"{web.url}/automations/acc-high/disable", form={})
    assert refused.status == 403
    expect(page.locator("tr[data-automation='acc-high'] td.enabled")).to_have_text("yes")

    page.goto(f"/triggers/{deployment.triggers['acc-high']}")
    conn.execute(
        "UPDATE deliveries SET status = 'failed', attempts = 1 WHERE trigger_id = %s",
        (deployment.triggers["acc-high"],),
    )
    page.reload()
    page.get_by_role("button", name="Redeliver").click()
    expect(page.locator("article.delivery .status").first).to_have_text("pending")

    page.get_by_role("link", name="Rule editor").click()
    bad = "name: new-rule\nscope: {project: acme/vision}\nevent: {type: run_metric_threshold, metric: loss, window: 0, operator: '<', threshold: 1}\naction: {type: no_op}\n"
    page.get_by_label("Rules (YAML").fill(bad)
    page.get_by_role("button", name="Check").click()
    problem = page.locator("ol.numbered li.bad")
    expect(problem).to_have_count(1)
    expect(problem).to_have_attribute("data-line", "3")
    expect(problem.locator(".problem")).to_contain_text("line 3: event.window")
    page.get_by_label("Rules (YAML").fill(bad.replace("window: 0", "window: 1"))
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_contain_text("new-rule created")
    assert conn.execute("SELECT count(*) FROM automations WHERE name = 'new-rule'").fetchone()[0] == 1
    context.close()


def test_history_pages_older_and_back_newer(browser, served):
    deployment, web = served
    context, page = signed_in(browser, web, deployment.keys["admin"])
    newest_first = [f"#{i}" for i in sorted(deployment.triggers.values(), reverse=True)]
    page.goto("/history?limit=1")
    shown = page.locator("table tbody tr td:first-child a")
    pager = page.get_by_role("navigation", name="Pages of the history")
    expect(shown).to_have_text([newest_first[0]])
    expect(pager.get_by_role("link", name="Newer triggers")).to_have_count(0)
    for expected in newest_first[1:]:
        pager.get_by_role("link", name="Older triggers").click()
        expect(shown).to_have_text([expected])
    expect(pager).to_contain_text("No older triggers.")
    for expected in reversed(newest_first[:-1]):
        pager.get_by_role("link", name="Newer triggers").click()
        expect(shown).to_have_text([expected])
    expect(pager.get_by_role("link", name="Newer triggers")).to_have_count(0)
    assert "limit=1" in page.url  # the page keeps its size (and its filters) both ways
    context.close()


def test_an_admin_silences_an_automation_and_ends_it_and_a_reader_only_looks(browser, served, conn):
    deployment, web = served
    context, page = signed_in(browser, web, deployment.keys["admin"])
    page.get_by_role("link", name="Silences").click()
    expect(page.get_by_role("heading", name="Silences", exact=True)).to_be_visible()
    form = page.locator("form.silence-form")
    form.get_by_label("Automation").select_option("acc-high")
    form.get_by_label("For").fill("soon")
    form.get_by_label("Reason").fill("retraining the model")
    form.get_by_role("button", name="Silence").click()
    expect(page.get_by_role("alert")).to_contain_text("not a duration")
    expect(page.locator("form.silence-form").get_by_label("Reason")).to_have_value("retraining the model")
    page.locator("form.silence-form").get_by_label("For").fill("2h")
    page.locator("form.silence-form").get_by_role("button", name="Silence").click()
    row = page.locator("table.silences tbody tr").first
    expect(row).to_contain_text("acc-high")
    expect(row.locator("td.state")).to_contain_text("active")
    (silence_id,) = conn.execute("SELECT id FROM silences WHERE reason = 'retraining the model'").fetchone()

    reader, reading = signed_in(browser, web, deployment.keys["reader"])
    reading.goto("/silences")
    expect(reading.locator("table.silences tbody tr").first).to_contain_text("retraining the model")
    assert reading.locator("form.silence-form").count() == 0 and reading.locator("button.admin").count() == 0
    token = reading.locator("input[name=csrf]").first.get_attribute("value")
    forged = reader.request.post(f"{web.url}/silences/{silence_id}/end", form={"csrf": token})
    assert forged.status == 403
    reader.close()

    # a post without the form's token is refused
    assert context.request.post(f"{web.url}/silences/{silence_id}/end", form={}).status == 403
    row.get_by_role("button", name="End now").click()
    expect(page.locator("table.silences tbody")).to_contain_text("No active silence.")
    page.get_by_role("link", name="Also those that have ended").click()
    expect(page.locator(f"tr[data-silence='{silence_id}'] td.state")).to_have_text("ended early")
    context.close()


def test_a_revoked_key_is_signed_out(browser, served, conn):
    deployment, web = served
    context, page = signed_in(browser, web, deployment.keys["reader"])
    conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'reader'")
    page.get_by_role("link", name="History").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert [c for c in context.cookies() if c["name"] == "engine_session"] == []
    context.close()


def test_the_pages_have_no_serious_accessibility_violations(browser, served):
    deployment, web = served
    # the pages' Content-Security-Policy forbids every script: bypassed to inject axe-core
    context, page = signed_in(browser, web, deployment.keys["admin"], bypass_csp=True)
    pages = [
        "/",
        "/history",
        f"/triggers/{deployment.triggers['acc-high']}",
        f"/triggers/{deployment.triggers['loss-up']}",
        "/automations/acc-high?since=3650d",
        "/deliveries",
        "/acme/vision/runs",
        "/acme/vision/runs/acme-run",
        "/editor",
        "/silences",
    ]
    found = {}
    for path in pages:
        page.goto(path)
        page.add_script_tag(path=str(AXE))
        violations = page.evaluate("async () => (await axe.run(document)).violations")
        serious = [
            f"{v['id']}: {v['help']} ({len(v['nodes'])}: {v['nodes'][0]['target']})"
            for v in violations
            if v["impact"] in ("serious", "critical")
        ]
        if serious:
            found[path] = serious
    assert found == {}
    context.close()
