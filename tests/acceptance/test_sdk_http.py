"""The SDK over HTTP: with ENGINE_URL + ENGINE_API_KEY, `engine.init`, `run.log`, `finish`,
artifacts and `engine.Api()` go through a real `engine web` on 127.0.0.1 into the real
database, with the same semantics (and exceptions) as over the database."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import engine
from engine import automations
from engine.exceptions import AccessDenied, ConfigurationError, KeyRefused, NotFound, RuleValidationError
from engine.sdk import session as sdk_session
from tests.acceptance.web_helpers import RULE, WebProcess, make_key
from tests.integration.sdk_helpers import set_env


def stored(conn, run_id: str) -> list[tuple[int, str, float]]:
    """(step, key, value) of a run's points, in the order the engine stored them (seq)."""
    return conn.execute(
        "SELECT p.step, k.key, p.value FROM metric_points p JOIN metric_keys k ON k.id = p.key_id"
        " JOIN runs r ON r.id = p.run_pk WHERE r.run_id = %s ORDER BY p.seq",
        (run_id,),
    ).fetchall()


def use_server(monkeypatch, web: WebProcess, key: str) -> None:
    # no database URL in the SDK's settings at all: only the server's address and a key
    monkeypatch.delenv("ENGINE_DATABASE_URL", raising=False)
    set_env(monkeypatch, url=web.url, api_key=key, system_metrics_interval=0)


def test_runs_points_artifacts_and_api_calls_go_through_the_server(conn, database_url, tmp_path, monkeypatch):
    key = make_key(conn, "trainer", "ingest", "acme/*", "registry:model")
    with WebProcess(database_url, tmp_path / "web.log") as web:
        use_server(monkeypatch, web, key)
        with engine.init(
            project="acme/vision", id="r1", name="resnet", config={"lr": 0.1}, tags=["a"]
        ) as run:
            assert (run.name, run.config, run.tags) == ("resnet", {"lr": 0.1}, ["a"])
            run.log({"loss": 0.5, "acc": math.nan})  # step 0
            run.log({"loss": math.inf}, step=5)
            with pytest.warns(engine.StepWarning):
                run.log({"loss": 0.1}, step=3)  # lower: dropped, as over the database
            run.log({"loss": 0.25})  # step 6
            version = run.log_artifact(
                "data", type="dataset", metadata={"rows": 3}, aliases=["best"], tags=["eu"]
            )
        assert run.state == "finished"
        assert str(version) == "acme/vision/data:v0"
        rows = stored(conn, "r1")
        assert [(s, k) for s, k, _ in rows] == [(0, "loss"), (0, "acc"), (5, "loss"), (6, "loss")]
        assert rows[0][2] == 0.5 and math.isnan(rows[1][2]) and rows[2][2] == math.inf
        assert conn.execute("SELECT state, exit_code FROM runs WHERE run_id = 'r1'").fetchone() == (
            "finished",
            0,
        )

        # resume: steps continue after the stored ones, attributes as stored
        with engine.init(project="acme/vision", id="r1", resume=True) as again:
            assert again.step == 6 and again.config == {"lr": 0.1}
            again.log({"loss": 0.2})
        assert stored(conn, "r1")[-1][:2] == (7, "loss")

        # an exception leaving the block: the run is failed and the exception goes on
        with pytest.raises(RuntimeError), engine.init(project="acme/vision", id="r2") as failing:
            failing.log({"loss": 1.0})
            raise RuntimeError("diverged")
        assert conn.execute("SELECT state FROM runs WHERE run_id = 'r2'").fetchone() == ("failed",)

        # an ingest key adds aliases and tags to the handles it made; reading needs a read role
        assert engine.Api().add_tag(version, "from-training") is True
        set_env(monkeypatch, api_key=make_key(conn, "analyst", "admin", "acme/*", "registry:model"))
        api = engine.Api()
        latest = api.artifact_version("acme/vision", "data", "latest")
        assert latest == version and latest.metadata == {"rows": 3}
        assert api.add_alias("acme/vision/data:v0", "production") is True
        assert api.add_tag(latest, "checked") is True and api.add_tag(latest, "checked") is False
        link = api.link_artifact(latest, registry="model", collection="resnet", aliases=["candidate"])
        assert str(link) == "model/resnet:v0"
        aliases = {a for (a,) in conn.execute("SELECT alias FROM artifact_aliases").fetchall()}
        assert {"latest", "best", "production"} <= aliases
        authors = {a for (a,) in conn.execute("SELECT DISTINCT author FROM events WHERE author LIKE 'key:%'")}
        assert authors == {"key:trainer", "key:analyst"}  # the server writes the key's name as the author

        # rules applied from Python with an admin key: YAML text or models
        rule = RULE.format(name="loss-high", project="acme/vision")
        assert api.apply(rule) == [("loss-high", "created")]
        model = automations.parse_rules_text(RULE.format(name="loss-model", project="acme/vision"))[
            0
        ].automation
        assert api.apply(model, rule) == [("loss-model", "created"), ("loss-high", "unchanged")]
        with pytest.raises(RuleValidationError) as invalid:
            api.apply(rule.replace("window: 1", "window: 0"))
        assert invalid.value.issues and invalid.value.issues[0].field.startswith("event")

        # errors are the SDK's, with the server's message
        with pytest.raises(ValueError, match="already exists"):
            engine.init(project="acme/vision", id="r1")
        with pytest.raises(NotFound, match="no artifact version"):
            api.artifact_version("acme/vision", "data", "v9")
        with pytest.raises(AccessDenied):
            engine.init(project="other/proj")
        with pytest.raises(ValueError, match="registry"):
            api.link_artifact(latest, registry="bad name", collection="x")


def test_a_bad_key_or_no_key_is_named(conn, database_url, tmp_path, monkeypatch):
    with WebProcess(database_url, tmp_path / "web.log") as web:
        use_server(monkeypatch, web, "eng_" + "x" * 40)
        with pytest.raises(KeyRefused, match="ENGINE_API_KEY"):
            engine.init(project="acme/vision")
        sdk_session.close_all()
        monkeypatch.delenv("ENGINE_API_KEY")
        set_env(monkeypatch)
        with pytest.raises(ConfigurationError, match="ENGINE_API_KEY is not"):
            engine.init(project="acme/vision")


class DropAnswers:
    """A TCP proxy in front of `engine web` that, while `dropping`, passes requests on but
    cuts the connection instead of passing the answer back: the server stored the batch, the
    client never heard so."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.dropping = threading.Event()
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self.dropping.is_set():
                    self.dropped += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.server.close()


def test_a_batch_whose_answer_was_lost_is_sent_again_and_stored_once(
    conn, database_url, tmp_path, monkeypatch
):
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web:
        proxy = DropAnswers(web.port)
        try:
            use_server(monkeypatch, web, key)
            set_env(monkeypatch, url=proxy.url, flush_interval=3600)
            run = engine.init(project="acme/vision", id="lost")
            for step in range(100):
                run.log({"loss": step / 100, "acc": 1 - step / 100})
            proxy.dropping.set()
            flushing = threading.Thread(target=run.flush)
            flushing.start()
            # the batch reaches the server and is stored; its answer never comes back
            assert _wait(lambda: len(stored(conn, "lost")) == 200)
            assert _wait(lambda: proxy.dropped > 0)
            run.log({"loss": 9.0})  # logged while the first batch is retried: after it
            proxy.dropping.clear()
            flushing.join(60)
            assert not flushing.is_alive()
            run.finish()
        finally:
            proxy.close()
        rows = stored(conn, "lost")
        assert [(s, k) for s, k, _ in rows] == [(s, k) for s in range(100) for k in ("loss", "acc")] + [
            (100, "loss")
        ]
        assert conn.execute("SELECT count(*) FROM ingest_batches").fetchone()[0] == 2


def _wait(check, timeout: float = 30.0) -> bool:
    from tests.acceptance.service_helpers import wait_until

    return bool(wait_until(check, timeout=timeout))


TRAINING = """
import sys, threading, engine
sampled = threading.Event()
run = engine.init(project="acme/vision", id="proc", system_metrics_interval=0.1)
sample = run._log_system
run._log_system = lambda values: (sample(values), sampled.set())  # the test needs one sample stored
for step in range(50):
    run.log({"loss": 1 / (step + 1)})
sampled.wait(30)
run.flush()
print("logged", flush=True)
sys.stdin.readline()  # the test looks at the database's connections meanwhile
run.finish()
print("finished", flush=True)
"""


@pytest.mark.slow
def test_a_training_process_holds_no_database_connection(conn, database_url, tmp_path):
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        env.update(ENGINE_URL=web.url, ENGINE_API_KEY=key, ENGINE_DATA_DIR=str(tmp_path / "nowhere"))
        script = tmp_path / "train.py"
        script.write_text(textwrap.dedent(TRAINING))
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "logged", proc.stderr.read() if proc.stderr else ""
            names = {n for (n,) in conn.execute("SELECT DISTINCT application_name FROM pg_stat_activity")}
            assert "engine-sdk" not in names and "engine-web" in names
            proc.stdin.write("\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        assert proc.returncode == 0 and "finished" in out, err
        assert not (tmp_path / "nowhere").exists()  # no embedded database was started either
        assert len(stored(conn, "proc")) == 50
        (samples,) = conn.execute(
            "SELECT count(*) FROM system_metrics s JOIN runs r ON r.id = s.run_pk WHERE r.run_id = 'proc'"
        ).fetchone()
        assert samples > 0  # system metrics go through the server too
