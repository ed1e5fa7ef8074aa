"""HTTP observation: the access log with request ids, and request metrics.

`request_log_middleware` is the OUTERMOST middleware: it gives every request an
id (the client's sane `X-Request-Id`, or a new one), returns it, and writes one
access line per request; `metrics_middleware` counts and times requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from snapd.core.oplog import elapsed_ms
from snapd.host.logsetup import HEADER, access_log, new_request_id, request_id_var, sane_request_id
from snapd.host.metrics import Metrics, render
from snapd.http.auth import peer_of
from snapd.http.envelope import route_template


def peer_text(request: web.Request) -> str:
    """`unix:uid=0,pid=123` for a Unix peer, `10.0.0.5:41234` for TCP, '-' if unknown."""
    peer = peer_of(request)
    if peer.transport == "unix":
        return f"unix:uid={peer.uid},pid={peer.pid}"
    name = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(name, tuple) and len(name) >= 2:
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "-"


@web.middleware
async def request_log_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Request id in, X-Request-Id out, one access line per request.  Outermost."""
    rid = sane_request_id(request.headers.get(HEADER)) or new_request_id()
    token = request_id_var.set(rid)
    start = time.monotonic()
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # an inner layer let one through: still tag it
            status = exc.status
            exc.headers[HEADER] = rid
            raise
        status = response.status
        if not response.prepared:
            response.headers[HEADER] = rid
        return response
    finally:
        fields = {
            "method": request.method,
            "route": route_template(request),
            "path": request.rel_url.path,
            "status": status,
            "duration_ms": elapsed_ms(start),
            "container": request.match_info.get("id"),
            "snapshot": request.match_info.get("name"),
            "peer": peer_text(request),
        }
        access_log.log(logging.WARNING if status >= 500 else logging.INFO, "request",
                       extra={"fields": {k: v for k, v in fields.items() if v is not None},
                              "request_id": rid})
        request_id_var.reset(token)


async def metrics_handler(request: web.Request) -> web.Response:
    """GET handler serving METRICS_KEY's registry (mount it where access is checked)."""
    body, ctype = render(request.app[METRICS_KEY])
    return web.Response(body=body, headers={"Content-Type": ctype})


METRICS_KEY = web.AppKey("metrics", Metrics)


# -- HTTP middleware ----------------------------------------------------------------


def metrics_middleware(metrics: Metrics) -> Callable:
    """Counts and times every request (place it outside the error-envelope middleware,
    so the status is the one the client got)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
        start = time.monotonic()
        status = 500
        metrics.requests_in_flight.inc()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.requests_in_flight.dec()
            metrics.observe_request(route_template(request), request.method, status,
                                    time.monotonic() - start)

    return middleware
