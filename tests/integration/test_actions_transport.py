"""The HTTP transport of webhooks: the connection goes to the address that was checked
(no second DNS answer), while Host and TLS (SNI, certificate) keep the host name."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from actions_helpers import Receiver

from engine.actions.http import post_json


def test_the_checked_address_is_the_one_connected_to(monkeypatch):
    """DNS rebinding: the first answer (checked, allowed) is used; a later, different
    answer for the same name is never asked for."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"])

    def resolver(host, *args, **kwargs):
        if host == "rebind.test":
            # First answer: the receiver. Any later one: an address nobody listens on.
            return real(next(answers, "127.0.0.2"), *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with Receiver() as rx:
        attempt = post_json(f"http://rebind.test:{rx.port}/hook", b"{}", {}, timeout=2, allow_hosts="127.0.0.1")
    assert attempt.succeeded, attempt.error
    assert rx.requests[0].headers["Host"] == f"rebind.test:{rx.port}"


@pytest.fixture
def tls_server(tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = f"host={self.headers.get('Host')}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert
    server.shutdown()
    server.server_close()


def test_tls_is_verified_against_the_host_name_not_the_pinned_address(tls_server, monkeypatch):
    port, cert = tls_server
    # The public CAs do not know our test certificate: refused, as it must be.
    refused = post_json(f"https://localhost:{port}/x", b"{}", {}, timeout=3, allow_hosts="localhost")
    assert "certificate verify failed" in refused.error and "mismatch" not in refused.error

    # Trusting it (only the trust store changes), the request connects to the pinned
    # 127.0.0.1 and the certificate is checked against "localhost" (SNI).
    from engine.actions import http as engine_http

    monkeypatch.setattr(engine_http, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    attempt = post_json(f"https://localhost:{port}/x", b"{}", {}, timeout=3, allow_hosts="localhost")
    assert attempt.http_status == 200 and attempt.response_body == f"host=localhost:{port}"
    # Addressed by IP, the same certificate does not match: the name really is what is checked.
    by_ip = post_json(f"https://127.0.0.1:{port}/x", b"{}", {}, timeout=3, allow_hosts="127.0.0.1")
    assert "IP address mismatch" in by_ip.error
