"""Connection-level limits and errors that aiohttp handles before any middleware.

aiohttp bounds header sizes but waits forever for a request that never
finishes arriving (slowloris).  `GuardedRunner` makes each connection
finish sending a request's head within HEAD_TIMEOUT of its first byte (or
of the connection opening); bodies are bounded separately (envelope.
BODY_TIMEOUT) and idle keep-alive connections by KEEPALIVE_TIMEOUT.
Malformed HTTP (bad request line, oversized URL or headers) is answered
in the API's JSON envelope too, not aiohttp's plain text.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from snapd.http.envelope import INTERNAL_MESSAGE, error_response

log = logging.getLogger("snapd.httpguard")

HEAD_TIMEOUT = 10.0
"""Default seconds for a request's head (config: request_timeout)."""
KEEPALIVE_TIMEOUT = 30.0
BACKLOG = 1024
"""Pending connections a listener queues (aiohttp's default of 128 refuses bursts: EAGAIN
on a Unix socket, dropped SYNs on TCP); the kernel caps it at net.core.somaxconn."""
LIMITS = {
    "max_line_size": 8190,  # request line (URL) and each header line
    "max_field_size": 8190,
    "max_headers": 64,
    "keepalive_timeout": KEEPALIVE_TIMEOUT,
    "lingering_time": 2.0,  # seconds spent draining an unread body after an early answer
}


class _GuardedHandler(RequestHandler):
    """Closes the connection when a request's head does not arrive in time."""

    _deadline: asyncio.TimerHandle | None = None
    _busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._busy and self._deadline is None:
            self._arm()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        timeout = getattr(self._manager, "head_timeout", HEAD_TIMEOUT)
        self._deadline = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self._busy and self.transport is not None:
            log.warning("closing a connection whose request did not arrive in time")
            self.transport.close()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,  # type: ignore[no-untyped-def]
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if a response began
        if status >= 500:
            resp = error_response(500, INTERNAL_MESSAGE)
        else:
            reason = (message or (str(exc) if exc else "") or "malformed request").splitlines()[0][:200]
            resp = error_response(400, "Malformed HTTP request", [{"field": "request", "reason": reason}])
        resp.force_close()
        return resp

    def request_started(self) -> None:
        self._busy = True
        self._disarm()

    def request_finished(self) -> None:
        self._busy = False


class _GuardedServer(web.Server):
    head_timeout = HEAD_TIMEOUT

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are _GuardedHandlers."""

    def __init__(self, app: web.Application, head_timeout: float = HEAD_TIMEOUT, **kwargs: object) -> None:
        super().__init__(app, **{**LIMITS, **kwargs})
        self.head_timeout = head_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer
        server.head_timeout = self.head_timeout  # type: ignore[attr-defined]
        return server


@web.middleware
async def mark_busy(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Tell the connection its request head arrived (outermost middleware)."""
    proto = request.protocol
    if isinstance(proto, _GuardedHandler):
        proto.request_started()
    try:
        return await handler(request)
    finally:
        if isinstance(proto, _GuardedHandler):
            proto.request_finished()
