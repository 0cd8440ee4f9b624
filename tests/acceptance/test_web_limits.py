"""`engine web` under abuse: bodies over ENGINE_WEB_MAX_BODY are refused (413) before they are
read whole, and a client sending its headers slowly is cut off."""

from __future__ import annotations

import json
import select
import socket

import pytest

from tests.acceptance.web_helpers import WebProcess, make_key

LIMIT = 64 * 1024


def _connect(web: WebProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", web.port), timeout=30)


def _response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body[body.index(b"{") :]) if b"{" in body else {}


@pytest.mark.slow
def test_bodies_over_the_limit_are_refused_before_they_are_read(conn, database_url, tmp_path):
    key = make_key(conn, "trainer", "admin", "*")
    with WebProcess(database_url, tmp_path / "web.log", ENGINE_WEB_MAX_BODY=str(LIMIT)) as web:
        # Content-Length says it: the answer comes before a single byte of the body is sent
        with _connect(web) as sock:
            sock.sendall(
                b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {key}\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
            )
            status, body = _response(sock)
        assert status == 413 and "ENGINE_WEB_MAX_BODY" in body["detail"]

        # Chunked, no length: refused once the bytes streamed in pass the limit; the body's
        # last chunk is never sent, so answering at all means it was not read whole
        sent = 0
        with _connect(web) as sock:
            sock.sendall(
                b"POST /api/v1/automations/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
            while not select.select([sock], [], [], 0)[0]:
                assert sent < 100 * LIMIT, "the server kept reading a body 100 times over the limit"
                try:
                    sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 0x4000
            status, body = _response(sock)
        assert status == 413 and "larger than 65536 bytes" in body["detail"]
        assert sent > LIMIT

        # under the limit: served as usual
        with web.client(key) as http:
            ok = http.post("/api/v1/automations/validate", json={"yaml": "x" * (LIMIT // 2)})
        assert ok.status_code == 200
        assert key not in web.log()


@pytest.mark.slow
def test_a_client_sending_its_headers_slowly_is_cut_off(conn, database_url, tmp_path):
    with WebProcess(database_url, tmp_path / "web.log", ENGINE_WEB_HEADER_TIMEOUT="1") as web:
        with _connect(web) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            closed = False
            for _ in range(600):  # a header byte every 0.1 s (each would restart uvicorn's own timer)
                if select.select([sock], [], [], 0.1)[0]:
                    closed = sock.recv(1024) == b""
                    break
                try:
                    sock.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            assert closed, "the server waited a minute for headers that never ended"
        assert "did not arrive in time" in web.log()
        # on a kept-alive connection, the next request's headers get their own deadline
        with _connect(web) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _response(sock)[0] == 200
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ...and no end of headers
            ready = select.select([sock], [], [], 30)[0]
            assert ready and sock.recv(1024) == b"", "a second request's headers had no deadline"
        # a normal client on the same server is unaffected
        with web.client() as http:
            assert http.get("/healthz").status_code == 200
