"""Structured logs: one line per event, logfmt (`kv`) or JSON (`json`).

* `configure(level, fmt)` installs one stderr handler on the root logger
  (journald adds the timestamp, unit and pid; the line keeps its own `ts`
  for other collectors).  Calling it again (SIGHUP) replaces it.
* `request_log_middleware` (the OUTERMOST aiohttp middleware) gives every
  request an id — the client's X-Request-Id when it is sane, else a new
  one —, keeps it in the `request_id` context variable (envelope.request_id_var),
  returns it as X-Request-Id (error responses of inner
  middlewares included) and logs one line per request: method, route,
  status, duration_ms, container, snapshot, peer.
* `RequestIdFilter` copies the context variable onto every record, so the
  service's own lines (`created snapshot ...`) carry the id of the request
  that caused them.  Extra fields go in `extra={"fields": {...}}`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
import secrets
import sys
from datetime import UTC, datetime
from typing import Any


from snapd.core.text import visible


FORMATS = ("kv", "json")
HEADER = "X-Request-Id"
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The id of the request being handled (set by snapd.http.observe.request_log_middleware)."""
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
    dt = datetime.fromtimestamp(record.created, tz=UTC)
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
        out.update((k, v) for k, v in fields.items() if v is not None)
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
        text = "NaN" if math.isnan(value) else f"{value:.3f}".rstrip("0").rstrip(".")
    else:
        text = str(value)
    if text and _BARE.match(text) and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{visible(escaped)}"'


class KeyValueFormatter(logging.Formatter):
    """logfmt: `ts=… level=info logger=snapd.access msg="request" method=GET …`."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={logfmt_value(v)}" for k, v in record_fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        # ensure_ascii: C1 controls, DEL, bidi overrides and U+2028 are escaped too, not only C0
        return json.dumps(record_fields(record), ensure_ascii=True, default=str, separators=(",", ":"))


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
