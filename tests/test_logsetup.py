"""snapd.host.logsetup: one parseable line per request (kv and json), request ids."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from snapd.core.oplog import OperationLog
from snapd.host.logsetup import HEADER, configure, logfmt_value, request_id_var
from snapd.http.observe import request_log_middleware

BASE = "/api/v1/containers/{id}/snapshots"
CID = "507f1f77bcf86cd799439011"
service_log = logging.getLogger("snapd.service")

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    out = {}
    for key, raw in _PAIR.findall(line):
        if raw.startswith('"'):
            raw = json.loads(raw)  # our escapes are JSON-compatible
        out[key] = raw
    assert " ".join(f"{k}={logfmt_value(v)}" for k, v in out.items()) == line, line
    return out


@web.middleware
async def envelope(request: web.Request, handler):
    """Stands in for api.envelope_errors (errors become JSON envelopes)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return web.json_response({"statusCode": exc.status, "error": exc.reason}, status=exc.status)


def make_app() -> web.Application:
    async def create(request: web.Request) -> web.Response:
        with OperationLog(service_log, "create", container=request.match_info["id"]) as op:
            op.fields["snapshot"] = "snap-20250115-103000"
        service_log.info("created snapshot with a quote \" and = sign")
        return web.json_response({"request_id": request_id_var.get()})

    async def get(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application(middlewares=[request_log_middleware, envelope])
    app.router.add_post(BASE, create)
    app.router.add_get(BASE + "/{name}", get)
    return app


@pytest.fixture(params=["kv", "json"])
def captured(request: pytest.FixtureRequest):
    stream = io.StringIO()
    handler = configure("debug", request.param, stream=stream)
    yield request.param, stream
    logging.getLogger().removeHandler(handler)


def lines_of(fmt: str, stream: io.StringIO) -> list[dict]:
    lines = [line for line in stream.getvalue().splitlines() if line]
    return [json.loads(line) if fmt == "json" else parse_logfmt(line) for line in lines]


async def test_request_lines_and_ids(captured) -> None:
    fmt, stream = captured
    async with TestClient(TestServer(make_app())) as client:
        res = await client.post(f"/api/v1/containers/{CID}/snapshots")
        assert res.status == 200
        rid = res.headers[HEADER]
        assert re.fullmatch(r"[0-9a-f]{16}", rid) and (await res.json())["request_id"] == rid

        res = await client.get(f"/api/v1/containers/{CID}/snapshots/nope",
                               headers={HEADER: "client-id.42_x"})
        assert res.status == 404 and res.headers[HEADER] == "client-id.42_x"  # error envelope too

        res = await client.get("/unknown", headers={HEADER: "bad id with spaces"})
        assert res.status == 404
        bad_replaced = res.headers[HEADER]
        assert bad_replaced != "bad id with spaces" and re.fullmatch(r"[0-9a-f]{16}", bad_replaced)
        res = await client.get("/unknown", headers={HEADER: "x" * 65})
        assert len(res.headers[HEADER]) == 16

    records = lines_of(fmt, stream)
    access = [r for r in records if r["logger"] == "snapd.access"]
    assert len(access) == 4  # one line per request
    first = access[0]
    assert first["msg"] == "request" and first["request_id"] == rid
    assert first["method"] == "POST" and first["route"] == BASE and str(first["status"]) == "200"
    assert first["container"] == CID and float(first["duration_ms"]) >= 0
    assert first["peer"].startswith("127.0.0.1:")
    second = access[1]
    assert second["request_id"] == "client-id.42_x" and str(second["status"]) == "404"
    assert second["snapshot"] == "nope" and second["route"] == BASE + "/{name}"
    assert access[2]["route"] == "unmatched" and access[2]["request_id"] == bad_replaced

    # the service's own lines carry the request id (context variable + filter)
    op = next(r for r in records if r.get("op") == "create")
    assert op["request_id"] == rid and op["outcome"] == "ok"
    assert op["snapshot"] == "snap-20250115-103000" and op["container"] == CID
    said = next(r for r in records if r["msg"].startswith("created snapshot"))
    assert said["request_id"] == rid and said["msg"].endswith('quote " and = sign')
    assert request_id_var.get() is None  # reset after the request


def test_operation_log_error_and_fields(captured) -> None:
    fmt, stream = captured
    with pytest.raises(ValueError):
        with OperationLog(service_log, "delete", container=CID, snapshot="s1"):
            raise ValueError("no such\nthing")
    service_log.info("reaped", extra={"fields": {"container": CID, "count": 3, "ratio": 0.5, "ok": True,
                                                  "note": None}})
    op, ev = lines_of(fmt, stream)
    assert op["outcome"] == "error" and op["error"] == "no such\nthing" and op["level"] == "warning"
    assert "request_id" not in op
    assert str(ev["count"]) == "3" and ev["container"] == CID
    assert ev["ok"] in (True, "true") and "note" not in ev


def test_configure_replaces_its_handler() -> None:
    root = logging.getLogger()
    a = configure("info", "kv", stream=io.StringIO())
    b = configure("warning", "json", stream=io.StringIO())
    try:
        assert a not in root.handlers and b in root.handlers and root.level == logging.WARNING
        with pytest.raises(ValueError):
            configure("info", "xml")
    finally:
        root.removeHandler(b)
