"""The shared API suite: every endpoint, error and contract point, on every backend.

Runs against a real daemon over a real Unix socket (and TCP for the 401
contract), once per backend kind (the `pool` fixture is parametrized).
Every response is checked against the daemon's OpenAPI document by the
test client.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest

from .aftercheck import HostCheck
from .client import snaps
from .daemon import DaemonProcess
from .digest import tree_digest, write_tree
from .harness import PoolHarness, new_cid

STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
NAME = re.compile(r"^snap-\d{8}-\d{6}(-\d+)?$")


def ts(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


@pytest.fixture
def container(pool: PoolHarness) -> str:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"etc/hostname": "one\n", "data/a.txt": "alpha"})
    return cid


def create(daemon: DaemonProcess, cid: str, body: dict | None = None) -> dict:
    r = daemon.unix.post(snaps(cid), body)
    assert r.status == 200, r.body
    return r.data["snapshot"]


# -- list / create / get --------------------------------------------------------------


def test_list_empty_container(daemon: DaemonProcess, container: str) -> None:
    r = daemon.unix.get(snaps(container))
    assert r.status == 200
    assert r.body == {
        "statusCode": 200,
        "message": "Snapshots retrieved successfully",
        "data": {"container_id": container, "project_id": None, "snapshots": []},
    }


def test_create_returns_the_snapshot_object(daemon: DaemonProcess, container: str) -> None:
    r = daemon.unix.post(snaps(container), {"alias": "pre-deployment-backup", "expiry": 30})
    assert r.status == 200
    assert r.body["message"] == "Snapshot created successfully"
    assert r.data["container_id"] == container and r.data["project_id"] is None
    snap = r.data["snapshot"]
    assert set(snap) == {"name", "alias", "created_at", "last_used_at", "expires_at", "stateful", "size"}
    assert NAME.match(snap["name"]) and snap["alias"] == "pre-deployment-backup"
    assert STAMP.match(snap["created_at"]) and STAMP.match(snap["expires_at"])
    assert snap["last_used_at"] is None and snap["stateful"] is False
    assert isinstance(snap["size"], int) and snap["size"] >= 0
    assert ts(snap["expires_at"]) - ts(snap["created_at"]) == pytest.approx(30 * 86400, abs=0.002)
    # the name is the creation time, UTC
    created = datetime.fromtimestamp(ts(snap["created_at"]), tz=timezone.utc)
    assert snap["name"].startswith(created.strftime("snap-%Y%m%d-%H%M%S"))


def test_create_without_body_never_expires(daemon: DaemonProcess, container: str) -> None:
    for raw in (None, b"", b"{}", b'{"alias": null, "expiry": null}'):
        r = daemon.unix.request("POST", snaps(container), raw=raw)
        assert r.status == 200, (raw, r.body)
        assert r.data["snapshot"]["alias"] is None and r.data["snapshot"]["expires_at"] is None


def test_fractional_expiry(daemon: DaemonProcess, container: str) -> None:
    snap = create(daemon, container, {"expiry": 0.5})
    assert ts(snap["expires_at"]) - ts(snap["created_at"]) == pytest.approx(43200, abs=0.002)


def test_same_second_names_get_suffixes(daemon: DaemonProcess, container: str) -> None:
    names = [create(daemon, container)["name"] for _ in range(5)]
    assert len(set(names)) == 5
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n[:20], []).append(n)
    assert any(len(g) > 1 for g in groups.values()), names
    for base, group in groups.items():
        assert group == [base] + [f"{base}-{i}" for i in range(2, len(group) + 1)]


def test_list_is_newest_first_and_get_matches(daemon: DaemonProcess, container: str) -> None:
    made = [create(daemon, container, {"alias": f"n{i}"}) for i in range(4)]
    listed = daemon.unix.get(snaps(container)).data["snapshots"]
    assert [s["name"] for s in listed] == [s["name"] for s in reversed(made)]
    keys = [(ts(s["created_at"]), s["name"]) for s in listed]
    assert keys == sorted(keys, reverse=True)
    for snap in made:
        r = daemon.unix.get(snaps(container, snap["name"]))
        assert r.status == 200 and r.body["message"] == "Snapshot retrieved successfully"
        # sizes move as later snapshots share data with earlier ones
        assert r.data["container_id"] == container and r.data["project_id"] is None
        assert {**r.data["snapshot"], "size": 0} == {**snap, "size": 0}


def test_upper_case_id_is_accepted_and_reported_lower_case(daemon: DaemonProcess, container: str) -> None:
    r = daemon.unix.post(snaps(container.upper()))
    assert r.status == 200 and r.data["container_id"] == container
    r = daemon.unix.get(snaps(container.upper()))
    assert r.data["container_id"] == container and len(r.data["snapshots"]) == 1


# -- restore ---------------------------------------------------------------------------


def test_restore_brings_back_content_and_keeps_other_snapshots(
    daemon: DaemonProcess, pool: PoolHarness, container: str
) -> None:
    path = pool.container_path(container)
    first = tree_digest(path)
    s1 = create(daemon, container, {"alias": "first"})
    write_tree(path, {"data/a.txt": "changed", "data/new.txt": "new"})
    (path / "etc" / "hostname").unlink()
    second = tree_digest(path)
    s2 = create(daemon, container)
    write_tree(path, {"data/a.txt": "third"})

    r = daemon.unix.patch(snaps(container, s1["name"]))
    assert r.status == 200
    assert r.body["message"] == "Container restored from snapshot successfully"
    assert r.data["success"] is True
    assert r.data["message"] == "Container restored from snapshot successfully"
    restored = r.data["snapshot"]
    assert restored["name"] == s1["name"] and restored["alias"] == "first"
    assert STAMP.match(restored["last_used_at"])
    assert tree_digest(path) == first

    listed = {s["name"]: s for s in daemon.unix.get(snaps(container)).data["snapshots"]}
    assert set(listed) == {s1["name"], s2["name"]}
    assert listed[s1["name"]]["last_used_at"] == restored["last_used_at"]
    assert listed[s2["name"]]["last_used_at"] is None

    # the newer snapshot is intact: restoring it gives its content back
    assert daemon.unix.patch(snaps(container, s2["name"])).status == 200
    assert tree_digest(path) == second
    # and the older one is still intact after that
    assert daemon.unix.patch(snaps(container, s1["name"])).status == 200
    assert tree_digest(path) == first


def test_snapshot_is_not_changed_by_writes_after_restore(
    daemon: DaemonProcess, pool: PoolHarness, container: str
) -> None:
    path = pool.container_path(container)
    before = tree_digest(path)
    snap = create(daemon, container)
    assert daemon.unix.patch(snaps(container, snap["name"])).status == 200
    # writing through the restored container must not reach the snapshot
    (path / "data" / "a.txt").write_text("scribbled")
    assert daemon.unix.patch(snaps(container, snap["name"])).status == 200
    assert tree_digest(path) == before


# -- alias ------------------------------------------------------------------------------


def test_alias_set_and_clear(daemon: DaemonProcess, container: str) -> None:
    snap = create(daemon, container, {"alias": "old"})
    r = daemon.unix.patch(snaps(container, snap["name"], "/alias"), {"alias": "production-baseline"})
    assert r.status == 200 and r.body["message"] == "Snapshot alias updated successfully"
    assert r.data["snapshot"] == {**snap, "alias": "production-baseline", "size": r.data["snapshot"]["size"]}
    assert daemon.unix.get(snaps(container, snap["name"])).data["snapshot"]["alias"] == "production-baseline"
    r = daemon.unix.patch(snaps(container, snap["name"], "/alias"), {"alias": None})
    assert r.status == 200 and r.data["snapshot"]["alias"] is None
    assert daemon.unix.get(snaps(container, snap["name"])).data["snapshot"]["alias"] is None


def test_alias_need_not_be_unique(daemon: DaemonProcess, container: str) -> None:
    a, b = create(daemon, container, {"alias": "same"}), create(daemon, container, {"alias": "same"})
    assert a["name"] != b["name"] and a["alias"] == b["alias"] == "same"


@pytest.mark.parametrize(
    "body,message",
    [
        ({}, "Invalid alias value"),
        ({"alias": ""}, "Invalid alias value"),
        ({"alias": "x" * 101}, "Invalid alias value"),
        ({"alias": 5}, "Invalid alias value"),
        ({"alias": ["a"]}, "Invalid alias value"),
        ({"alias": "\ud800"}, "Invalid alias value"),
        ({"alias": "ok", "extra": 1}, "Invalid request payload"),
        ("not an object", "Invalid request payload"),
    ],
)
def test_alias_rejects_bad_values(daemon: DaemonProcess, container: str, body: object, message: str) -> None:
    snap = create(daemon, container, {"alias": "keep"})
    r = daemon.unix.patch(snaps(container, snap["name"], "/alias"), body)
    assert (r.status, r.body["message"], r.body["error"]) == (400, message, "Bad Request")
    assert r.body["details"] and all({"field", "reason"} <= set(d) for d in r.body["details"])
    assert daemon.unix.get(snaps(container, snap["name"])).data["snapshot"]["alias"] == "keep"


UNSAFE_CHARS = {
    "\u2028": "U+2028 (LINE SEPARATOR), a Unicode separator character",
    "\u2029": "U+2029 (PARAGRAPH SEPARATOR), a Unicode separator character",
    "\u0085": "U+0085, a Unicode control character",
    "\u009b": "U+009B, a Unicode control character",
    "\x1b": "U+001B, a Unicode control character",
    "\u202e": "U+202E (RIGHT-TO-LEFT OVERRIDE), a Unicode format character",
    "\u200e": "U+200E (LEFT-TO-RIGHT MARK), a Unicode format character",
    "\u200d": "U+200D (ZERO WIDTH JOINER), a Unicode format character",
    "\ufeff": "U+FEFF (ZERO WIDTH NO-BREAK SPACE), a Unicode format character",
}


@pytest.mark.parametrize("char", UNSAFE_CHARS, ids=lambda c: f"U+{ord(c):04X}")
def test_alias_refuses_control_format_and_separator_characters(
    daemon: DaemonProcess, pool: PoolHarness, container: str, char: str, host_unharmed: HostCheck,
) -> None:
    alias = f"prod{char}backup"
    r = daemon.unix.post(snaps(container), {"alias": alias})
    assert (r.status, r.body["message"]) == (400, "Invalid request payload"), r.body
    assert r.body["details"][0]["field"] == "alias"
    assert r.body["details"][0]["reason"].startswith(f"contains {UNSAFE_CHARS[char]};")
    assert daemon.unix.get(snaps(container)).data["snapshots"] == []
    snap = create(daemon, container, {"alias": "keep"})
    r = daemon.unix.patch(snaps(container, snap["name"], "/alias"), {"alias": alias})
    assert (r.status, r.body["message"]) == (400, "Invalid alias value"), r.body
    assert UNSAFE_CHARS[char] in r.body["details"][0]["reason"]
    assert daemon.unix.get(snaps(container, snap["name"])).data["snapshot"]["alias"] == "keep"
    host_unharmed(daemon, pool, [container])


def test_alias_of_100_characters_is_fine(daemon: DaemonProcess, container: str) -> None:
    assert create(daemon, container, {"alias": "é" * 100})["alias"] == "é" * 100


# -- delete -------------------------------------------------------------------------------


def test_delete(daemon: DaemonProcess, pool: PoolHarness, container: str) -> None:
    keep, gone = create(daemon, container), create(daemon, container)
    before = pool.artifacts()
    r = daemon.unix.delete(snaps(container, gone["name"]))
    assert r.status == 200 and r.body["message"] == "Snapshot deleted successfully"
    assert r.data == {"container_id": container, "project_id": None, "snapshot_name": gone["name"]}
    assert [s["name"] for s in daemon.unix.get(snaps(container)).data["snapshots"]] == [keep["name"]]
    assert daemon.unix.get(snaps(container, gone["name"])).status == 404
    again = daemon.unix.delete(snaps(container, gone["name"]))
    assert (again.status, again.body["message"]) == (404, "Container or snapshot not found")
    after = pool.artifacts()
    assert after < before
    (removed,) = before - after
    assert container in removed and removed.endswith(gone["name"])


# -- errors: 400 / 404 / 405 / 413 ------------------------------------------------------------


BAD_IDS = ["507f1f77bcf86cd79943901", "507f1f77bcf86cd7994390111", "507f1f77bcf86cd79943901g",
           "..", "%2e%2e", "507f1f77bcf86cd79943901%00", "ＡＢ" * 12]
BAD_NAMES = ["..", ".hidden", "-dash", "a%2Fb", "%2e%2e", "x" * 129, "snap%00", "snap\u200b", "ｓnap", "a b"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_container_id(daemon: DaemonProcess, bad: str) -> None:
    from urllib.parse import quote

    path_id = bad if "%" in bad else quote(bad, safe="")
    for method in ("GET", "POST"):
        r = daemon.unix.request(method, f"/api/v1/containers/{path_id}/snapshots")
        assert (r.status, r.body["message"]) == (400, "Invalid container ID format"), (method, bad)
        assert r.body["details"][0]["field"] == "id"
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("PATCH", "/alias")):
        r = daemon.unix.request(method, f"/api/v1/containers/{path_id}/snapshots/snap-1{suffix}",
                                body={"alias": "x"} if suffix else None)
        assert (r.status, r.body["message"]) == (400, "Invalid snapshot name or container ID"), (method, bad)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_snapshot_name(daemon: DaemonProcess, pool: PoolHarness, container: str, bad: str) -> None:
    from urllib.parse import quote

    create(daemon, container)
    before = pool.artifacts()
    name = bad if "%" in bad else quote(bad, safe="")
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("PATCH", "/alias")):
        r = daemon.unix.request(method, snaps(container, name, suffix), body={"alias": "x"} if suffix else None)
        assert r.status == 400, (method, bad, r.body)
        assert r.body["message"] == "Invalid snapshot name or container ID"
        assert r.body["details"][0]["field"] == "name"
    assert pool.artifacts() == before


def test_unknown_container_is_404(daemon: DaemonProcess) -> None:
    cid = new_cid()
    r = daemon.unix.get(snaps(cid))
    assert (r.status, r.body) == (404, {"statusCode": 404, "error": "Not Found", "message": "Container not found"})
    assert daemon.unix.post(snaps(cid)).body["message"] == "Container not found"
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("PATCH", "/alias")):
        r = daemon.unix.request(method, snaps(cid, "snap-20250101-000000", suffix),
                                body={"alias": "x"} if suffix else None)
        assert (r.status, r.body["message"]) == (404, "Container or snapshot not found")


def test_unknown_snapshot_is_404(daemon: DaemonProcess, container: str) -> None:
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("PATCH", "/alias")):
        r = daemon.unix.request(method, snaps(container, "snap-20250101-000000", suffix),
                                body={"alias": "x"} if suffix else None)
        assert (r.status, r.body["message"]) == (404, "Container or snapshot not found")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"expiry": 0}', b'{"expiry": -1}', b'{"expiry": "5"}', b'{"expiry": true}',
        b'{"expiry": NaN}', b'{"expiry": Infinity}', b'{"expiry": 36500.001}', b'{"expiry": 1e400}',
        b'{"expiry": ' + b"9" * 5000 + b"}", b'{"expiry": 1' + b"0" * 400 + b"}", b'{"alias": ""}',
        b'{"alias": 7}', b'{"alias": "\\ud800x"}',
        b'{"alias": "' + b"x" * 101 + b'"}', b'{"surprise": 1}', b"[]", b'"text"', b"null",
        b"not json", b'{"alias": "a", "alias": "b"}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
        b'{"alias": {"deep": ' * 40 + b"1" + b"}" * 80,
    ],
)
def test_create_rejects_bad_bodies(daemon: DaemonProcess, container: str, raw: bytes) -> None:
    r = daemon.unix.request("POST", snaps(container), raw=raw)
    assert (r.status, r.body["message"]) == (400, "Invalid request payload"), (raw[:40], r.body)
    assert r.body["details"]
    assert daemon.unix.get(snaps(container)).data["snapshots"] == []


def test_expiry_limit_is_accepted(daemon: DaemonProcess, container: str) -> None:
    assert create(daemon, container, {"expiry": 36500})["expires_at"] is not None


def test_restore_and_delete_reject_bodies(daemon: DaemonProcess, container: str) -> None:
    snap = create(daemon, container)
    for method in ("PATCH", "DELETE"):
        r = daemon.unix.request(method, snaps(container, snap["name"]), body={"force": True})
        assert (r.status, r.body["message"]) == (400, "Invalid request payload")
    assert daemon.unix.get(snaps(container, snap["name"])).status == 200


def test_wrong_method_is_405(daemon: DaemonProcess, container: str) -> None:
    for method, path in (("PUT", snaps(container)), ("DELETE", snaps(container)),
                         ("POST", snaps(container, "snap-1")), ("GET", snaps(container, "snap-1", "/alias"))):
        r = daemon.unix.request(method, path)
        assert (r.status, r.body["error"], r.body["message"]) == (405, "Method Not Allowed", "Method not allowed")
        assert "allow" in r.headers


def test_unknown_route_is_404_envelope(daemon: DaemonProcess) -> None:
    r = daemon.unix.get("/api/v2/whatever", check_schema=False)
    assert r.status == 404 and r.body["statusCode"] == 404 and r.body["error"] == "Not Found"


def test_oversized_body_is_413(daemon: DaemonProcess, container: str) -> None:
    raw = json.dumps({"alias": "x" * (70 * 1024)}).encode()
    r = daemon.unix.request("POST", snaps(container), raw=raw)
    assert (r.status, r.body["error"]) == (413, "Payload Too Large")
    assert daemon.unix.get(snaps(container)).data["snapshots"] == []


# -- transports ----------------------------------------------------------------------------------


ROUTES = [("GET", "{c}"), ("POST", "{c}"), ("GET", "{n}"), ("PATCH", "{n}"), ("DELETE", "{n}"),
          ("PATCH", "{n}/alias"), ("GET", "/api/v1/openapi.json")]


def _route_path(template: str, cid: str) -> str:
    return template.replace("{c}", snaps(cid)).replace("{n}", snaps(cid, "snap-1"))


def test_tcp_requires_authentication(daemon: DaemonProcess, container: str) -> None:
    unknown = [("GET", "/nowhere"), ("PUT", "{c}"), ("GET", "/api/v1/containers/zz/snapshots")]
    for method, template in ROUTES + unknown:
        r = daemon.tcp.request(method, _route_path(template, container), check_schema=False)
        assert r.status == 401, (method, template)
        assert r.body == {"statusCode": 401, "error": "Unauthorized", "message": "Authentication required"}
        assert r.headers["www-authenticate"] == "Bearer"
    assert daemon.unix.get(snaps(container)).data["snapshots"] == []


# -- the OpenAPI document ----------------------------------------------------------------------


def test_openapi_document_describes_every_route(daemon: DaemonProcess) -> None:
    from jsonschema import Draft202012Validator

    from snapd.http.api import make_app

    r = daemon.unix.get("/api/v1/openapi.json")
    assert r.status == 200
    doc = r.body
    assert doc["openapi"].startswith("3.1")
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
    routes = {
        (res.canonical, route.method.lower())
        for res in make_app(None, None).router.resources()  # type: ignore[arg-type]
        for route in res
    }
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented
