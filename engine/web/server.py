"""`engine web` on uvicorn, with a deadline for a request's headers.

uvicorn's own timeouts do not cover a client that opens a connection and sends its headers
a byte at a time (each byte restarts the keep-alive timer): such clients would hold
connections forever. `HeaderDeadline` gives every request ENGINE_WEB_HEADER_TIMEOUT
seconds from its first byte (or from the connection's start) to the end of its headers,
then closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from engine.settings import get_settings

APP = "engine.web.app:create_app"


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose headers do not arrive in time."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or the connection is over)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(get_settings().web_header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
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
