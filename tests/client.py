"""A plain HTTP client for tests: Unix socket or TCP, raw bytes allowed.

Every JSON response is checked against the daemon's own OpenAPI document,
so each API test also proves the document true.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from snapd.http.openapi import openapi_document


def unix_listening(path: Path) -> bool:
    """Whether a Unix stream socket listens at `path` (per /proc/net/unix).  Wait for this,
    not for the file: it appears at bind(), before listen(), and a connect in between is
    refused."""
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split(maxsplit=7)
            if len(fields) == 8 and fields[7].rstrip("\n") == str(path) and int(fields[3], 16) & 0x10000:
                return True
    return False


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes
    request_id: str | None = None
    """From an error's details (moved out of `body`, which keeps the reference's shape)."""

    @property
    def data(self) -> Any:
        return self.body["data"]


@lru_cache(maxsize=None)
def _validator(path: str, method: str, status: int) -> jsonschema.Draft202012Validator | None:
    doc = openapi_document()
    op = doc["paths"].get(path, {}).get(method.lower())
    if op is None:
        return None
    response = op["responses"].get(str(status))
    assert response is not None, f"status {status} of {method} {path} is not in the OpenAPI document"
    schema = response["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def _template(path: str) -> str:
    """The OpenAPI path a concrete request path belongs to."""
    parts = path.split("?")[0].split("/")
    if len(parts) == 6 and parts[1:4] == ["api", "v1", "containers"] and parts[5] == "snapshot-details":
        parts[4] = "{id}"
    if len(parts) >= 6 and parts[1:4] == ["api", "v1", "containers"] and parts[5] == "snapshots":
        parts[4] = "{id}"
        if len(parts) >= 7 and parts[6:] != ["import"]:
            parts[6] = "{name}"
    return "/".join(parts)


STREAM = "application/vnd.container-snapd.stream"
"""The media type of portable snapshot streams (export answers, import bodies)."""


class Client:
    """Requests to one daemon over one transport."""

    def __init__(self, unix: str | Path | None = None, tcp: tuple[str, int] | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.unix = str(unix) if unix else None
        self.tcp = tcp
        self.headers = headers or {}
        self.timeout = timeout

    def _conn(self) -> http.client.HTTPConnection:
        if self.unix:
            return UnixHTTPConnection(self.unix, self.timeout)
        assert self.tcp
        return http.client.HTTPConnection(*self.tcp, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: dict[str, str] | None = None, check_schema: bool = True,
                binary: bool = False) -> Response:
        """`binary`: a success may be other than JSON (a file, NDJSON): `raw` holds it, `body` is None.
        A `body` of bytes is sent as a portable stream; an export's stream is in `raw`, `body` {}."""
        hdrs = {**self.headers, **(headers or {})}
        if isinstance(body, bytes):  # a portable stream (import)
            raw, body = body, None
            hdrs.setdefault("Content-Type", STREAM)
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if payload is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn = self._conn()
        try:
            conn.request(method, path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            result = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, None, data)
        finally:
            conn.close()
        if binary and result.status < 400:
            return result
        if result.status == 200 and result.headers.get("content-type", "").startswith(STREAM):
            result.body = {}  # an export: the stream is in `raw`
            return result
        assert result.headers.get("content-type", "").startswith("application/json"), result
        result.body = json.loads(data)
        if check_schema:
            validator = _validator(_template(path), method, result.status)
            if validator is not None:
                validator.validate(result.body)
        details = result.body.get("details") if isinstance(result.body, dict) else None
        if details:
            ids = [d for d in details if d.get("field") == "request_id"]
            if ids:
                assert ids[0]["value"] == result.headers.get("x-request-id"), result
                result.request_id = ids[0]["value"]
                result.body["details"] = [d for d in details if d.get("field") != "request_id"]
                if not result.body["details"]:
                    del result.body["details"]
        return result

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)


def snaps(cid: str, name: str | None = None, suffix: str = "") -> str:
    base = f"/api/v1/containers/{cid}/snapshots"
    return base + (f"/{name}" if name is not None else "") + suffix


def snapshot_names(client: Client, cid: str) -> list[tuple[str, str]]:
    """(name, created_at) of a container's snapshots, newest first; [] when it is not there."""
    r = client.get(snaps(cid))
    if r.status == 404:
        return []
    assert r.status == 200, r.body
    return [(s["name"], s["created_at"]) for s in r.data["snapshots"]]
