"""Hostile input: slow, oversized and malformed requests, and generated requests."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .client import Client, snaps
from .daemon import DaemonProcess
from .digest import tree_digest, write_tree
from .harness import new_cid

TIMEOUT = 1.5  # the daemon's request_timeout in these tests


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, Path, str]]:
    base = tmp_path_factory.mktemp("hostile")
    pool = base / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"etc/hostname": "h", "data": "d"})
    d = DaemonProcess(base / "d", [f"overlay:{pool}"], tcp=True,
                      extra=["--request-timeout", str(TIMEOUT)]).start()
    try:
        yield d, pool, cid
    finally:
        assert d.stop() == 0


def raw(port: int, payload: bytes, *, wait: float = 10) -> bytes:
    """Send raw bytes over TCP; return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(payload)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def envelope(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head, head
    return status, json.loads(body)


def test_a_request_head_that_never_finishes_is_cut_off(env) -> None:
    d, _, _ = env
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
        s.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        assert s.recv(100) == b""  # closed by the daemon
    assert time.monotonic() - started < 30
    # a connection that sends nothing at all is closed too
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
        assert s.recv(100) == b""


def test_a_body_that_never_arrives_gets_408(env) -> None:
    d, _, cid = env
    token = d.unix.post("/api/v1/admin/tokens", {"admin": True}).data["secret"]
    status, body = envelope(raw(d.port, (
        f"POST {snaps(cid)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"alias\":"
    ).encode(), wait=30))
    assert (status, body["error"]) == (408, "Request Timeout")
    assert d.unix.get(snaps(cid)).data["snapshots"] == []


@pytest.mark.parametrize("payload", [
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n",
    b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 10_000 + b"\r\n\r\n",
    b"\x00\x01\x02 garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    b"GET /api/v1/openapi.json HTTP/9.9\r\n\r\n",
])
def test_malformed_http_gets_a_json_400(env, payload: bytes) -> None:
    d, _, _ = env
    status, body = envelope(raw(d.port, payload))
    assert status == 400 and body["message"] == "Malformed HTTP request" and body["details"]
    assert "Traceback" not in json.dumps(body)


def test_huge_declared_body_is_refused_unread(env) -> None:
    d, _, cid = env
    status, body = envelope(raw(d.port, (
        f"POST {snaps(cid)} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n").encode()))
    assert status in (401, 413)  # unauthenticated TCP is refused before anything is read
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(d.socket))
        s.sendall(f"POST {snaps(cid)} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n".encode())
        status, body = envelope(s.recv(65536))
    assert (status, body["error"]) == (413, "Payload Too Large")


def test_oversized_chunked_body_is_413(env) -> None:
    d, _, cid = env
    chunk = b"x" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(d.socket))
        s.sendall(f"POST {snaps(cid)} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + body)
        status, resp = envelope(s.recv(65536))
    assert (status, resp["error"]) == (413, "Payload Too Large")
    assert d.unix.get(snaps(cid)).data["snapshots"] == []


# -- generated requests ------------------------------------------------------------------------------

SEGMENTS = st.one_of(
    st.text(min_size=0, max_size=40),
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "%00", "snap-20250101-000000", "ＡＢＣ", "a" * 300, "%ff"]),
    st.from_regex(r"[0-9a-fA-F]{24}", fullmatch=True),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=120),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["alias", "expiry", "project", "admin", "x", "containers", "label", "expires"])
        | st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _segment(s: str) -> str:
    return s if s.startswith("%") else quote(s, safe="")


@st.composite
def requests(draw, cid: str, names: list[str]):  # type: ignore[no-untyped-def]
    container = draw(st.one_of(st.just(cid), st.just(cid.upper()), SEGMENTS.map(_segment)))
    name = draw(st.one_of(st.sampled_from(names), SEGMENTS.map(_segment)))
    path = draw(st.sampled_from([
        f"/api/v1/containers/{container}/snapshots",
        f"/api/v1/containers/{container}/snapshots/{name}",
        f"/api/v1/containers/{container}/snapshots/{name}/alias",
        "/api/v1/openapi.json",
        "/api/v1/admin/tokens",
        f"/api/v1/admin/tokens/{name}",
        f"/api/v1/admin/containers/{container}",
        f"/api/v1/admin/containers/{container}/project",
        f"/{name}",
    ]))
    method = draw(st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"]))
    body = draw(st.one_of(
        st.none(),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.sampled_from([b'{"alias": "a", "alias": "b"}', b'{"expiry": NaN}', b"[" * 200, b'{"expiry": 1e999}']),
    ))
    return method, path, body


def test_generated_requests_never_get_5xx_or_break_the_schema(env) -> None:
    d, pool, cid = env
    tokens = {
        "admin": d.unix.post("/api/v1/admin/tokens", {"admin": True}).data["secret"],
        "project": d.unix.post("/api/v1/admin/tokens", {"project": "p"}).data["secret"],
    }
    names = [d.unix.post(snaps(cid)).data["snapshot"]["name"] for _ in range(3)]
    clients = [d.unix, Client(tcp=("127.0.0.1", d.port)),
               Client(tcp=("127.0.0.1", d.port), headers={"Authorization": f"Bearer {tokens['admin']}"}),
               Client(tcp=("127.0.0.1", d.port), headers={"Authorization": f"Bearer {tokens['project']}"})]
    seen: dict[int, int] = {}
    outside = tree_digest(pool.parent, skip=("pool", "d"))

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(req=requests(cid, names), which=st.integers(0, len(clients) - 1))
    def check(req: tuple[str, str, bytes | None], which: int) -> None:
        method, path, body = req
        # the client validates every documented response against the OpenAPI document
        r = clients[which].request(method, path, raw=body)
        seen[r.status] = seen.get(r.status, 0) + 1
        assert r.status < 500, (method, path, body, r.body)
        if not (r.status == 200 and path == "/api/v1/openapi.json"):
            assert set(r.body) >= {"statusCode", "message"} and r.body["statusCode"] == r.status

    check()
    assert {200, 400, 401, 404}.issubset(seen), seen
    assert tree_digest(pool.parent, skip=("pool", "d")) == outside  # nothing outside the pool was touched
