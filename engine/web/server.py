"""`engine web` on uvicorn (httptools, llhttp's C parser), with a deadline for a request's headers.

uvicorn's own timeouts do not cover a client that opens a connection and sends its headers
a byte at a time (each byte restarts the keep-alive timer): such clients would hold
connections forever. `HeaderDeadline` gives every request ENGINE_WEB_HEADER_TIMEOUT
seconds from its first byte (or from the connection's start) to the end of its headers,
then closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine.settings import get_settings

APP = "engine.web.app:create_app"


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose headers do not arrive in time.
    (httptools rather than h11: h11 parses in Python, a share of every request's time.)"""

    _deadline: asyncio.TimerHandle | None = None
    _waiting = False  # for a request's headers: from the connection's start or the last answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # its headers are in already: it starts now
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting = True
        self._deadline = self.loop.call_later(get_settings().web_header_timeout, self._expired)

    def _disarm(self) -> None:
        self._waiting = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._waiting and not self.transport.is_closing():
            self.logger.warning("closed a connection whose request headers did not arrive in time")
            self.transport.close()


def serve(host: str, port: int, workers: int, **options: Any) -> None:
    """Serve the app until SIGINT/SIGTERM (uvicorn's graceful shutdown)."""
    uvicorn.run(
        APP,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=HeaderDeadline,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        log_config=None,  # the engine's logging (ENGINE_LOG_FORMAT), set up by the CLI
        server_header=False,
        proxy_headers=False,
        **options,
    )
