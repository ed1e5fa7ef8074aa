"""Structured logs: one line per event, logfmt (`kv`) or JSON (`json`).

* `configure(level, fmt)` installs one stderr handler on the root logger
  (journald adds the timestamp, unit and pid; the line keeps its own `ts`
  for other collectors).  Calling it again (SIGHUP) replaces it.
* `request_log_middleware` (the OUTERMOST aiohttp middleware) gives every
  request an id — the client's X-Request-Id when it is sane, else a new
  one —, stores it in `request["request_id"]` and in the `request_id`
  context variable, returns it as X-Request-Id (error responses of inner
  middlewares included) and logs one line per request: method, route,
  status, duration_ms, container, snapshot, peer.
* `RequestIdFilter` copies the context variable onto every record, so the
  service's own lines (`created snapshot ...`) carry the id of the request
  that caused them.  Extra fields go in `extra={"fields": {...}}` or
  `log_event(logger, msg, **fields)`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import secrets
import socket
import struct
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

from aiohttp import web

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

FORMATS = ("kv", "json")
HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BARE = re.compile(r"^[^\s\"=\\]+$")
_HANDLER_FLAG = "_snapd_handler"
access_log = logging.getLogger("snapd.access")

# Attributes every LogRecord has; anything else set through `extra=` is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "fields"}


def new_request_id() -> str:
    return secrets.token_hex(8)


def sane_request_id(value: str | None) -> str | None:
    """An incoming X-Request-Id worth keeping: 1-64 of [A-Za-z0-9._-]."""
    if value and _SANE_ID.match(value):
        return value
    return None


# -- formatting ------------------------------------------------------------------------


def _timestamp(record: logging.LogRecord) -> str:
    dt = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """ts, level, logger, msg, request_id (when known), then the event's fields."""
    out: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    rid = getattr(record, "request_id", None)
    if rid:
        out["request_id"] = rid
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        out.update(fields)
    for key, value in vars(record).items():
        if key not in _STANDARD and key not in out and key != "request_id" and not key.startswith("_"):
            out[key] = value
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    return out


def logfmt_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "NaN"
    else:
        text = str(value)
    if text and _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """logfmt: `ts=… level=info logger=snapd.access msg="request" method=GET …`."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={logfmt_value(v)}" for k, v in record_fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record), ensure_ascii=False, default=str, separators=(",", ":"))


class RequestIdFilter(logging.Filter):
    """Puts the current request's id (if any) on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "kv":
        return KeyValueFormatter()
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def configure(level: str = "info", fmt: str = "kv", stream: Any = None) -> logging.Handler:
    """(Re)configure the root logger: one handler, `fmt` lines, `level` and up."""
    formatter = make_formatter(fmt)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_FLAG, False):
            root.removeHandler(h)
            h.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # aiohttp's own access log would duplicate ours
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured line: `log_event(log, "snapshot created", container=cid, snapshot=name)`."""
    logger.log(level, msg, extra={"fields": fields})


# -- per-operation lines ----------------------------------------------------------------


class OperationLog:
    """Context manager for one line per operation, with duration and outcome.

        with OperationLog(log, "create", container=cid) as op:
            ...
            op.fields["snapshot"] = name
    """

    def __init__(self, logger: logging.Logger, kind: str, **fields: Any) -> None:
        self.logger = logger
        self.kind = kind
        self.fields = fields

    def __enter__(self) -> "OperationLog":
        self.start = time.monotonic()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            outcome = "ok"
        else:
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
        fields = {"op": self.kind, **self.fields, "duration_ms": _ms(self.start), "outcome": outcome}
        if exc is not None:
            fields["error"] = str(exc) or type(exc).__name__
        self.logger.log(logging.INFO if exc is None else logging.WARNING, "operation",
                        extra={"fields": fields})


def _ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)


# -- request middleware -------------------------------------------------------------------


def peer_of(request: web.Request) -> str:
    """`uid=0 pid=123` for a Unix peer, `10.0.0.5:41234` for TCP, '-' if unknown."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return "unix"
        pid, uid, _gid = struct.unpack("3i", creds)
        return f"unix:uid={uid},pid={pid}"
    peer = transport.get_extra_info("peername") if transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "-"


def _route(request: web.Request) -> str:
    try:
        info = request.match_info
        if info.http_exception is not None or info.route.resource is None:
            return "unmatched"
        return info.route.resource.canonical
    except AttributeError:
        return "unmatched"


@web.middleware
async def request_log_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Request id in, X-Request-Id out, one access line per request.  Outermost."""
    rid = sane_request_id(request.headers.get(HEADER)) or new_request_id()
    request["request_id"] = rid
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
            "route": _route(request),
            "path": request.rel_url.path,
            "status": status,
            "duration_ms": _ms(start),
            "container": request.match_info.get("id"),
            "snapshot": request.match_info.get("name"),
            "peer": peer_of(request),
        }
        access_log.log(logging.WARNING if status >= 500 else logging.INFO, "request",
                       extra={"fields": {k: v for k, v in fields.items() if v is not None},
                              "request_id": rid})
        request_id_var.reset(token)
