"""The web console over plain HTTP (the browser tests are in test_console_browser.py): the
session cookie's flags, signing in and out, scope filtering, the form tokens, and a revoked
key signing its sessions out."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

from tests.acceptance.console_helpers import Deployment, hidden, sign_in
from tests.acceptance.web_helpers import WebProcess, make_key


def cookie_header(response) -> str:
    found = [
        v for k, v in response.headers.multi_items() if k == "set-cookie" and v.startswith("engine_session=")
    ]
    assert len(found) == 1, response.headers
    return found[0]


def test_sign_in_sets_a_signed_httponly_strict_expiring_cookie_and_sign_out_ends_it(
    conn, database_url, tmp_path
):
    deployment = Deployment(conn, database_url)
    with WebProcess(database_url, tmp_path / "web.log", ENGINE_WEB_SESSION_HOURS="2") as web:
        with web.client() as http:
            # the console answers every path but the API's, which keeps its JSON 404 and 405
            assert http.get("/api/v1/runs").status_code == 405
            assert http.get("/api/v1/nope").json() == {"detail": "Not Found"}
            assert http.get("/nope").headers["content-type"].startswith("text/html")
            assert http.get("/", follow_redirects=False).headers["location"] == "/login?next=%2F"
            signed = sign_in(http, deployment.keys["reader"], "/history")
            assert signed.status_code == 303 and signed.headers["location"] == "/history"
            flags = [part.strip().lower() for part in cookie_header(signed).split(";")]
            assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
            assert "max-age=7200" in flags and "secure" not in flags  # plain http here
            assert deployment.keys["reader"] not in cookie_header(signed)  # the cookie is not the key
            page = http.get("/")
            assert page.status_code == 200 and "acc-high" in page.text
            # an altered cookie is no session
            value = http.cookies["engine_session"]
            http.cookies.set("engine_session", value[:-1] + ("0" if value[-1] != "0" else "1"))
            assert http.get("/", follow_redirects=False).status_code == 303
            # sign in again, then out: the cookie is cleared and the pages ask to sign in
            http.cookies.clear()
            sign_in(http, deployment.keys["reader"])
            page = http.get("/")
            out = http.post("/logout", data={"csrf": hidden(page.text, "csrf")}, follow_redirects=False)
            assert out.status_code == 303 and 'engine_session=""' in cookie_header(out)
            assert http.get("/", follow_redirects=False).headers["location"].startswith("/login")
        with web.client() as http:
            refused = sign_in(http, "eng_" + "A" * 43)
            assert refused.status_code == 401 and "unknown API key" in refused.text
            refused = sign_in(http, deployment.keys["ingest"])
            assert refused.status_code == 403 and "read or admin" in refused.text
            forged = http.post(
                "/login", data={"key": deployment.keys["reader"], "csrf": "1.x"}, follow_redirects=False
            )
            assert forged.status_code == 403 and "engine_session" not in forged.headers.get("set-cookie", "")
    assert deployment.keys["reader"] not in web.log()


def test_the_cookie_is_secure_behind_https(conn, database_url, tmp_path):
    deployment = Deployment(conn, database_url)
    with WebProcess(database_url, tmp_path / "web.log", ENGINE_BASE_URL="https://engine.example.com") as web:
        with web.client() as http:
            form = http.get("/login")
            signin = form.headers["set-cookie"]
            assert "; secure" in signin.lower()
            # a client that keeps Secure cookies off plain http: send it back as a browser over https would
            nonce = signin.split(";")[0].split("=", 1)[1]
            signed = http.post(
                "/login",
                data={"key": deployment.keys["reader"], "csrf": hidden(form.text, "csrf"), "next": "/"},
                headers={"Cookie": f"engine_signin={nonce}"},
            )
            assert signed.status_code == 303, signed.text
            assert "secure" in [p.strip().lower() for p in cookie_header(signed).split(";")]


def test_pages_show_exactly_what_the_key_covers(conn, database_url, tmp_path):
    deployment = Deployment(conn, database_url)
    other = deployment.triggers["other-rule"]
    with WebProcess(database_url, tmp_path / "web.log") as web:
        with web.client() as http:
            sign_in(http, deployment.keys["reader"])  # read, acme/*
            for path in ("/", "/history", "/deliveries?status=pending"):
                page = http.get(path)
                assert page.status_code == 200, page.text
                assert "acc-high" in page.text and "other-rule" not in page.text, path
            assert f'href="/triggers/{deployment.triggers["acc-high"]}"' in http.get("/history").text
            assert http.get(f"/triggers/{other}").status_code == 403
            assert http.get("/automations/other-rule").status_code == 403
            assert http.get("/other/proj/runs/other-run").status_code == 403
            assert http.get("/history", params={"project": "other/proj"}).text.count('href="/triggers/') == 0
            assert http.get("/acme/vision/runs/acme-run").status_code == 200
            assert 'href="/acme/vision/runs"' in http.get("/").text
            runs = http.get("/acme/vision/runs").text
            assert "acme-run" in runs and "accuracy = 0.8" in runs  # its last value
            assert http.get("/triggers/999999").status_code == 404
            # a read key gets no admin control, and its forged admin post is refused
            page = http.get("/")
            assert "Disable" not in page.text and "/enable" not in page.text
            token = hidden(page.text, "csrf")
            assert http.post("/automations/acc-high/disable", data={"csrf": token}).status_code == 403
        with web.client() as http:
            sign_in(http, deployment.keys["admin"])
            page = http.get("/")
            assert "other-rule" in page.text and "Disable" in page.text
    (enabled,) = conn.execute("SELECT enabled FROM automations WHERE name = 'acc-high'").fetchone()
    assert enabled


def test_forms_need_the_sessions_token(conn, database_url, tmp_path):
    deployment = Deployment(conn, database_url)
    with WebProcess(database_url, tmp_path / "web.log") as web:
        with web.client() as first, web.client() as second:
            sign_in(first, deployment.keys["admin"])
            sign_in(second, deployment.keys["admin"])
            theirs = hidden(second.get("/").text, "csrf")
            mine = hidden(first.get("/").text, "csrf")
            assert first.post("/automations/acc-high/disable", data={}).status_code == 403
            assert first.post("/automations/acc-high/disable", data={"csrf": theirs}).status_code == 403
            assert conn.execute("SELECT enabled FROM automations WHERE name = 'acc-high'").fetchone()[0]
            done = first.post(
                "/automations/acc-high/disable", data={"csrf": mine, "next": "/"}, follow_redirects=False
            )
            assert done.status_code == 303 and done.headers["location"] == "/"
            assert not conn.execute("SELECT enabled FROM automations WHERE name = 'acc-high'").fetchone()[0]
            # `next` never leads to another site
            again = first.post(
                "/automations/acc-high/enable",
                data={"csrf": mine, "next": "//evil.example/"},
                follow_redirects=False,
            )
            assert again.headers["location"] == "/"


def test_a_revoked_key_is_signed_out_at_its_next_request(conn, database_url, tmp_path):
    deployment = Deployment(conn, database_url)
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client() as http:
        sign_in(http, deployment.keys["reader"])
        assert http.get("/history").status_code == 200
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'reader'")
        gone = http.get("/history", follow_redirects=False)
        assert gone.status_code == 303 and gone.headers["location"] == "/login?next=%2Fhistory"
        assert 'engine_session=""' in cookie_header(gone)


def test_history_pages_by_keyset_and_filters(conn, database_url, tmp_path):
    deployment = Deployment(conn, database_url)
    newest_first = sorted(deployment.triggers.values(), reverse=True)  # fired in one tick: ids break the tie
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client() as http:
        sign_in(http, deployment.keys["admin"])
        seen, page = [], http.get("/history", params={"limit": 1})
        while True:
            assert page.status_code == 200, page.text
            seen += [int(i) for i in re.findall(r'href="/triggers/(\d+)"', page.text)]
            older = re.search(r'href="([^"]+)" rel="next"', page.text)
            if older is None:
                break
            page = http.get(html.unescape(older.group(1)))
        assert seen == newest_first
        # and back, by the "newer" links, to the newest page
        back = []
        while True:
            back += [int(i) for i in re.findall(r'href="/triggers/(\d+)"', page.text)]
            newer = re.search(r'href="([^"]+)" rel="prev"', page.text)
            if newer is None:
                break
            page = http.get(html.unescape(newer.group(1)))
        assert back == newest_first[::-1]
        assert "No older triggers" not in page.text and "« Newest" not in page.text  # the first page
        only = http.get("/history", params={"run": "other-run", "status": "skipped"}).text
        assert re.findall(r'href="/triggers/(\d+)"', only) == [str(deployment.triggers["other-rule"])]
        assert http.get("/history", params={"status": "failed"}).text.count('href="/triggers/') == 0
        assert "since:" in http.get("/history", params={"since": "soon"}).text  # the error, not a crash


def test_silences_are_listed_by_scope_and_added_and_ended_by_admin_keys_only(conn, database_url, tmp_path):
    deployment = Deployment(conn, database_url)
    from engine.actions import silences

    theirs = silences.add(
        conn, automation="other-rule", duration=timedelta(hours=1), reason="their maintenance"
    )
    acme_admin = make_key(conn, "acme-admin", "admin", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web:
        with web.client() as http:
            sign_in(http, deployment.keys["reader"])  # read, acme/*
            page = http.get("/silences")
            assert page.status_code == 200 and "their maintenance" not in page.text
            assert 'action="/silences"' not in page.text and "End now" not in page.text
            token = hidden(page.text, "csrf")
            form = {"csrf": token, "automation": "acc-high", "for": "2h", "reason": "forged"}
            assert http.post("/silences", data=form).status_code == 403
            assert http.post(f"/silences/{theirs}/end", data={"csrf": token}).status_code == 403
        with web.client() as http:
            sign_in(http, acme_admin)
            page = http.get("/silences")
            token = hidden(page.text, "csrf")
            assert "their maintenance" not in page.text and '<option value="other-rule"' not in page.text
            # the form's own token is needed; another team's automation or project is refused
            base = {"for": "2h", "reason": "retraining"}
            assert http.post("/silences", data=base | {"automation": "acc-high"}).status_code == 403
            refused = http.post("/silences", data=base | {"csrf": token, "automation": "other-rule"})
            assert refused.status_code == 403
            assert (
                http.post("/silences", data=base | {"csrf": token, "project": "other/proj"}).status_code
                == 403
            )
            assert http.post(f"/silences/{theirs}/end", data={"csrf": token}).status_code == 403
            # mistakes come back on the form, its values kept
            both = http.post(
                "/silences", data=base | {"csrf": token, "automation": "acc-high", "until": "2099-01-01"}
            )
            assert both.status_code == 422 and "exactly one of a duration" in both.text
            assert 'value="retraining"' in both.text
            bad = http.post("/silences", data=base | {"csrf": token, "project": "acme/vision", "for": "soon"})
            assert bad.status_code == 422 and "not a duration" in bad.text
            past = http.post(
                "/silences", data={"csrf": token, "project": "acme/x", "until": "2020-01-01", "reason": "r"}
            )
            assert past.status_code == 422 and "not in the future" in past.text
            unknown = http.post("/silences", data=base | {"csrf": token, "automation": "nope"})
            assert unknown.status_code == 422 and "no automation named 'nope'" in html.unescape(unknown.text)
            # added: by automation for a while, by project until a time
            added = http.post(
                "/silences", data=base | {"csrf": token, "automation": "acc-high"}, follow_redirects=False
            )
            assert added.status_code == 303 and added.headers["location"] == "/silences"
            later = http.post(
                "/silences",
                data={
                    "csrf": token,
                    "project": "acme/vision",
                    "until": "2099-01-01 12:00",
                    "reason": "sweep",
                },
                follow_redirects=False,
            )
            assert later.status_code == 303
            rows = {r["reason"]: r for r in silences.list_silences(conn)}
            assert rows["retraining"]["automation"] == "acc-high" and rows["retraining"]["active"]
            assert rows["retraining"]["created_by"] == "key:acme-admin"
            assert rows["sweep"]["project"] == "acme/vision"
            assert rows["sweep"]["ends_at"] == datetime(2099, 1, 1, 12, tzinfo=UTC)
            page = http.get("/silences").text
            assert "retraining" in page and "sweep" in page and "their maintenance" not in page
            ended = http.post(
                f"/silences/{rows['retraining']['id']}/end",
                data={"csrf": token, "next": "/silences"},
                follow_redirects=False,
            )
            assert ended.status_code == 303 and ended.headers["location"] == "/silences"
            assert "retraining" not in http.get("/silences").text  # the active ones only
            assert "ended early" in http.get("/silences", params={"all": "1"}).text
            again = http.post(f"/silences/{rows['retraining']['id']}/end", data={"csrf": token})
            assert again.status_code == 409 and "already ended" in again.text
    listed = {r["reason"]: r for r in silences.list_silences(conn, include_ended=True)}
    assert (
        listed["retraining"]["ended_by"] == "key:acme-admin" and not listed["their maintenance"]["ended_at"]
    )
    assert len(listed) == 3  # nothing refused was stored


def test_deliveries_page_older_and_back_newer(conn, database_url, tmp_path):
    deployment = Deployment(conn, database_url)
    # 120 failed deliveries of acc-high's trigger, one a minute (the page shows 50)
    conn.execute(
        """
        INSERT INTO deliveries (trigger_id, automation_id, action_index, action_type, action, status,
                                attempts, created_at, updated_at, finished_at)
        SELECT t.id, t.automation_id, g, 'webhook', '{"type": "webhook"}', 'failed', 1,
               now() - g * interval '1 minute', now(), now()
        FROM triggers t, generate_series(1, 120) AS g WHERE t.id = %s
        """,
        (deployment.triggers["acc-high"],),
    )
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client() as http:
        sign_in(http, deployment.keys["admin"])

        def ids(page) -> list[str]:
            return re.findall(r'action="/deliveries/([0-9a-f-]+)/redeliver"', page.text)

        pages, page = [], http.get("/deliveries", params={"status": "failed"})
        while True:
            pages.append(ids(page))
            older = re.search(r'href="([^"]+)" rel="next"', page.text)
            if older is None:
                break
            page = http.get(html.unescape(older.group(1)))
        assert [len(p) for p in pages] == [50, 50, 20]
        assert len({i for p in pages for i in p}) == 120
        for expected in (pages[1], pages[0]):
            newer = re.search(r'href="([^"]+)" rel="prev"', page.text)
            assert newer is not None and "status=failed" in newer.group(1)
            page = http.get(html.unescape(newer.group(1)))
            assert ids(page) == expected
        assert 'rel="prev"' not in page.text
        assert http.get("/deliveries", params={"newer": "bm90IGEgY3Vyc29y"}).status_code == 422
