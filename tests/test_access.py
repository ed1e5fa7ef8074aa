"""Access control: the full 401/403 matrix on both transports, tokens, projects, admin routes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends.base import PROJECT_XATTR

from .client import Client, snaps
from .conftest import unavailable
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import new_cid
from .peers import Request, requests_as_uid

NOBODY = 65534
ADMIN = "/api/v1/admin"
FORBIDDEN = {
    "list": "You do not have permission to access this container",
    "get": "You do not have permission to access this container",
    "create": "You do not have permission to create snapshots for this container",
    "alias": "You do not have permission to update snapshots for this container",
    "restore": "You do not have permission to restore this container",
    "delete": "You do not have permission to delete snapshots for this container",
    "hold": "You do not have permission to hold or release snapshots for this container",
    "release": "You do not have permission to hold or release snapshots for this container",
    "detail": "You do not have permission to access this container",
    "details": "You do not have permission to access this container",
    "tree": "You do not have permission to read files of this container",
    "file": "You do not have permission to read files of this container",
    "diff": "You do not have permission to read files of this container",
    "restore-paths": "You do not have permission to restore this container",
    "export": "You do not have permission to export snapshots of this container",
    "import": "Admin access required",
}
WRITES = {"create", "alias", "restore", "delete", "hold", "release", "restore-paths", "export", "import"}
FILES = {"tree", "file", "diff"}
"""Reading files in snapshots: whoever may restore, or a token with the files scope."""


@dataclass
class World:
    d: DaemonProcess
    pool: Path
    a: str  # project proj-a
    a2: str  # project proj-a too
    b: str  # project proj-b
    u: str  # unlabelled
    tokens: dict[str, str]
    ids: dict[str, str]


def admin() -> dict[str, str]:
    return {}


def make_token(d: DaemonProcess, **scope: Any) -> tuple[str, str]:
    r = d.unix.post(f"{ADMIN}/tokens", scope)
    assert r.status == 200, r.body
    return r.data["token"]["id"], r.data["secret"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("access")
    pool = base / "pool"
    cids = {k: new_cid() for k in ("a", "a2", "b", "u")}
    for cid in cids.values():
        write_tree(pool / cid, {"f": "1"})
    d = DaemonProcess(base / "d", [f"overlay:{pool}"], tcp=True).start()
    try:
        for key, project in (("a", "proj-a"), ("a2", "proj-a"), ("b", "proj-b")):
            r = d.unix.request("PUT", f"{ADMIN}/containers/{cids[key]}/project", {"project": project})
            assert r.status == 200 and r.data["project_id"] == project
        tokens, ids = {}, {}
        for name, scope in {
            "own": {"project": "proj-a", "label": "ci"},
            "other": {"project": "proj-b"},
            "read_only": {"project": "proj-a", "read_only": True},
            "files": {"project": "proj-a", "read_only": True, "files": True},
            "replicate": {"replicate": True},
            "scoped": {"project": "proj-a", "containers": [cids["a"]]},
            "admin": {"admin": True},
            "revoked": {"project": "proj-a"},
            "expired": {"project": "proj-a", "expires": 0.5 / 86400},
        }.items():
            ids[name], tokens[name] = make_token(d, **scope)
        assert d.unix.delete(f"{ADMIN}/tokens/{ids['revoked']}").status == 200
        tokens["bad"] = "csd_" + ids["own"] + "_" + "A" * 43
        tokens["garbage"] = "not-a-token"
        time.sleep(0.6)  # the expired token's half second passes
        yield World(d, pool, cids["a"], cids["a2"], cids["b"], cids["u"], tokens, ids)
    finally:
        assert d.stop() == 0


def auth(world: World, who: str) -> dict[str, str]:
    return {} if who == "none" else {"Authorization": f"Bearer {world.tokens[who]}"}


def route_requests(cid: str, name: str, headers: dict[str, str], stream: bytes = b"") -> list[tuple[str, Request]]:
    """Every route once, in an order that works for a caller allowed everything (`stream`:
    the snapshot's export, imported again once it is deleted)."""
    return [
        ("list", ("GET", snaps(cid), None, headers)),
        ("export", ("GET", snaps(cid, name, "/export"), None, headers)),
        ("get", ("GET", snaps(cid, name), None, headers)),
        ("tree", ("GET", snaps(cid, name, "/tree") + "?path=/", None, headers)),
        ("file", ("GET", snaps(cid, name, "/file") + "?path=/f", None, headers)),
        ("diff", ("GET", snaps(cid, name, "/diff"), None, headers)),
        ("restore-paths", ("POST", snaps(cid, name, "/restore-paths"), {"paths": ["/f"]}, headers)),
        ("alias", ("PATCH", snaps(cid, name, "/alias"), {"alias": "x"}, headers)),
        ("restore", ("PATCH", snaps(cid, name), None, headers)),
        ("hold", ("PUT", snaps(cid, name, "/hold"), {"reason": "r"}, headers)),
        ("detail", ("GET", snaps(cid, name, "/detail"), None, headers)),
        ("details", ("GET", f"/api/v1/containers/{cid}/snapshot-details", None, headers)),
        ("release", ("DELETE", snaps(cid, name, "/hold"), None, headers)),
        ("delete", ("DELETE", snaps(cid, name), None, headers)),
        ("import", ("POST", snaps(cid, None, "/import"), stream, headers)),
        ("create", ("POST", snaps(cid), None, headers)),
        ("openapi", ("GET", "/api/v1/openapi.json", None, headers)),
        ("admin-list", ("GET", f"{ADMIN}/tokens", None, headers)),
        ("admin-show", ("GET", f"{ADMIN}/containers/{cid}", None, headers)),
        ("admin-project", ("PUT", f"{ADMIN}/containers/{cid}/project", {"project": "proj-a"}, headers)),
        ("admin-create", ("POST", f"{ADMIN}/tokens", {"project": "p"}, headers)),
        ("admin-revoke", ("DELETE", f"{ADMIN}/tokens/000000000000", None, headers)),
    ]


def expected(who: str, route: str) -> tuple[int, str | None]:
    if who in ("none", "bad", "garbage", "revoked", "expired"):
        return 401, "Authentication required"
    if route.startswith("admin-"):
        if who == "admin":
            return (404, "Token not found") if route == "admin-revoke" else (200, None)
        return 403, "Admin access required"
    if route == "import":  # a stream sets owners, set-id bits and device nodes: admins only
        if who == "replicate":  # let in; the snapshot it holds is still there (its delete was refused)
            return 409, None
        return (200, None) if who == "admin" else (403, "Admin access required")
    if route == "openapi" or who in ("own", "admin", "scoped"):
        return 200, None
    if who == "replicate":  # a sender plans from snapshot lists: reads them, nothing else
        return (200, None) if route in ("list", "get", "detail", "details") else (403, FORBIDDEN[route])
    if who in ("read_only", "files") and route not in WRITES | FILES:
        return 200, None
    if who == "files" and route in FILES:
        return 200, None
    return 403, FORBIDDEN[route]


def run(world: World, transport: str, requests: list[Request]) -> list[tuple[int, str | None, str | None]]:
    if transport == "tcp":
        client = world.d.tcp
        out = []
        for method, path, body, headers in requests:
            r = client.request(method, path, body, headers=headers, binary=True)
            out.append((r.status, r.body.get("message") if r.body else None, r.headers.get("www-authenticate")))
        return out
    if os.geteuid() != 0:
        unavailable("the Unix-socket matrix needs root to act as another uid")
    world.d.socket.chmod(0o666)
    try:
        return requests_as_uid(world.d.socket, NOBODY, requests)
    finally:
        world.d.socket.chmod(0o660)


WHO = ["none", "bad", "garbage", "expired", "revoked", "other", "read_only", "files", "replicate", "own", "scoped",
       "admin"]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_the_full_matrix(world: World, transport: str) -> None:
    batch: list[Request] = []
    labels: list[tuple[str, str]] = []
    for who in WHO:
        # a snapshot made by root for this caller to act on
        name = world.d.unix.post(snaps(world.a)).data["snapshot"]["name"]
        stream = world.d.unix.get(snaps(world.a, name, "/export")).raw
        for route, request in route_requests(world.a, name, auth(world, who), stream):
            batch.append(request)
            labels.append((who, route))
    results = run(world, transport, batch)
    failures = []
    for (who, route), (status, message, www) in zip(labels, results):
        want_status, want_message = expected(who, route)
        if status != want_status or (want_message and message != want_message):
            failures.append((who, route, status, message, want_status, want_message))
        if status == 401 and www != "Bearer":
            failures.append((who, route, "no WWW-Authenticate: Bearer"))
    assert not failures, failures


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_other_projects_and_unlabelled_containers_look_the_same_as_missing_ones(
    world: World, transport: str
) -> None:
    h = auth(world, "own")
    missing = new_cid()
    requests: list[Request] = []
    for cid in (world.b, world.u, missing):
        requests += [("GET", snaps(cid), None, h), ("POST", snaps(cid), None, h),
                     ("GET", snaps(cid, "snap-20250101-000000"), None, h),
                     ("DELETE", snaps(cid, "snap-20250101-000000"), None, h)]
    results = run(world, transport, requests)
    # the same answers for another project's container, an unlabelled one and none at all
    per_container = [results[i:i + 4] for i in range(0, 12, 4)]
    assert per_container[0] == per_container[1] == per_container[2]
    assert [r[0] for r in per_container[0]] == [403] * 4
    # the scoped token sees only its container, even within its project
    scoped = run(world, transport, [("GET", snaps(world.a2), None, auth(world, "scoped")),
                                    ("GET", snaps(world.a), None, auth(world, "scoped"))])
    assert [r[0] for r in scoped] == [403, 200]
    assert world.d.unix.get(snaps(world.b)).data["snapshots"] == []


def test_revocation_takes_effect_on_the_next_request(world: World) -> None:
    token_id, secret = make_token(world.d, project="proj-a")
    client = Client(tcp=("127.0.0.1", world.d.port), headers={"Authorization": f"Bearer {secret}"})
    assert client.get(snaps(world.a)).status == 200
    assert world.d.unix.delete(f"{ADMIN}/tokens/{token_id}").status == 200
    assert client.get(snaps(world.a)).status == 401


def test_tokens_are_listed_without_secrets_and_stored_only_as_hashes(world: World) -> None:
    r = world.d.unix.get(f"{ADMIN}/tokens")
    listed = {t["id"]: t for t in r.data["tokens"]}
    own = listed[world.ids["own"]]
    assert own["label"] == "ci" and own["scope"]["project"] == "proj-a" and own["last_used_at"]
    assert listed[world.ids["revoked"]]["revoked_at"] is not None
    assert listed[world.ids["expired"]]["expires_at"] is not None
    assert world.tokens["own"] not in r.raw.decode()
    db = (world.d.state_dir / "snapd.db").read_bytes()
    for secret in world.tokens.values():
        assert secret.encode() not in db and secret.split("_", 2)[-1].encode() not in db


def test_project_label_lives_on_the_container_and_survives_restore(world: World) -> None:
    assert os.getxattr(world.pool / world.a, PROJECT_XATTR) == b"proj-a"
    name = world.d.unix.post(snaps(world.a)).data["snapshot"]["name"]
    assert world.d.unix.patch(snaps(world.a, name)).status == 200
    assert world.d.unix.get(snaps(world.a)).data["project_id"] == "proj-a"
    shown = world.d.unix.get(f"{ADMIN}/containers/{world.a}").data
    assert shown["project_id"] == "proj-a" and shown["backend"] == "overlay" and shown["snapshot_count"] >= 1


@pytest.mark.parametrize("body,field", [
    ({"project": "a/b"}, "project"), ({"project": ""}, "project"), ({"project": 5}, "project"), ({}, "project"),
    ({"project": "ok", "x": 1}, "x"),
])
def test_bad_project_labels_are_refused(world: World, body: dict, field: str) -> None:
    r = world.d.unix.request("PUT", f"{ADMIN}/containers/{world.a}/project", body)
    assert (r.status, r.body["message"]) == (400, "Invalid request payload")
    assert r.body["details"][0]["field"] == field
    assert world.d.unix.get(snaps(world.a)).data["project_id"] == "proj-a"


CID = new_cid()
BAD_TOKEN_BODIES: list[tuple[dict, str]] = [
    ({}, "project"), ({"admin": True, "project": "p"}, "admin"), ({"containers": [CID]}, "project"),
    # a scope is absent or a non-empty list of container ids: nothing falls back to the whole project
    *(({"project": "p", "containers": bad}, "containers")
      for bad in ({}, None, "", 0, False, True, CID, {"id": CID}, [], ["nope"], [CID, "nope"], [CID, None],
                  [[CID]], [CID.upper() + "0"])),
    ({"admin": True, "containers": []}, "containers"),
    # flags are booleans; nothing is coerced from truthiness
    *(({"project": "p", flag: bad}, flag)
      for flag in ("admin", "read_only", "metrics", "files", "replicate") for bad in (None, 0, 1, "yes", "", [], {})),
    # a replicate token has no other scope
    *(({"replicate": True, **other}, "replicate")
      for other in ({"admin": True}, {"project": "p"}, {"metrics": True}, {"read_only": True})),
    # file access is a project token's scope
    ({"admin": True, "files": True}, "files"), ({"metrics": True, "files": True}, "files"),
    # expires: a positive number of days, at most 36500
    *(({"project": "p", "expires": bad}, "expires")
      for bad in (0, -1, False, True, "1", [], {}, 36501, 10**400)),
    # label: 1 to 100 characters, no control characters
    *(({"project": "p", "label": bad}, "label")
      for bad in ("", 5, True, [], {}, "x" * 101, "bell\u0007", "line\nbreak", "\ud800")),
    # project: a project name
    *(({"project": bad}, "project") for bad in ("", "a/b", ".hidden", "x" * 129, 5, True, [], {})),
    ({"project": "p", "scope": "all"}, "scope"),
    # text hygiene: no Unicode control, format or separator character
    *(({"project": "p", "label": bad}, "label") for bad in ("ci\u202egpj.exe", "a\x1b[31m", "x\u2028y", "\u009b")),
]


@pytest.mark.parametrize("body,field", BAD_TOKEN_BODIES, ids=lambda v: repr(v)[:60])
def test_bad_token_requests_are_refused(world: World, body: dict, field: str) -> None:
    before = world.d.unix.get(f"{ADMIN}/tokens").data["tokens"]
    r = world.d.unix.post(f"{ADMIN}/tokens", body)
    assert (r.status, r.body["message"]) == (400, "Invalid request payload"), r.body
    assert r.body["details"][0]["field"] == field, r.body
    assert world.d.unix.get(f"{ADMIN}/tokens").data["tokens"] == before


def test_a_container_scope_is_kept_exactly(world: World) -> None:
    """Ids are lower-cased and deduplicated; the token sees those containers and no other."""
    token_id, secret = make_token(world.d, project="proj-a",
                                  containers=[world.a.upper(), world.a, world.a.upper()])
    listed = {t["id"]: t for t in world.d.unix.get(f"{ADMIN}/tokens").data["tokens"]}
    assert listed[token_id]["scope"]["containers"] == [world.a]
    client = Client(tcp=("127.0.0.1", world.d.port), headers={"Authorization": f"Bearer {secret}"})
    assert client.get(snaps(world.a)).status == 200
    assert client.get(snaps(world.a2)).status == 403


@pytest.mark.parametrize("body", [
    {"project": "p", "admin": False, "read_only": True, "metrics": False, "label": None, "expires": None},
    {"project": "p", "containers": [CID, CID], "expires": 0.5, "label": "ci ☃"},
    {"metrics": True}, {"admin": True, "metrics": True, "expires": 36500},
], ids=lambda v: repr(v)[:60])
def test_good_token_requests_still_work(world: World, body: dict) -> None:
    r = world.d.unix.post(f"{ADMIN}/tokens", body)
    assert r.status == 200, r.body
    scope = r.data["token"]["scope"]
    assert scope["containers"] == sorted(set(body.get("containers", [])))
    assert scope["project"] == body.get("project")
    assert world.d.unix.delete(f"{ADMIN}/tokens/{r.data['token']['id']}").status == 200


def test_admin_group_members_are_admins_on_the_unix_socket(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("needs root to act as another uid")
    import grp

    group = grp.getgrgid(NOBODY).gr_name  # 'nogroup': exists on Debian, we add nobody to nothing
    pool = tmp_path / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"f": "1"})
    results = {}
    for admin_group in (group, ""):
        d = DaemonProcess(tmp_path / f"d{bool(admin_group)}", [f"overlay:{pool}"], tcp=False,
                          extra=["--admin-group", admin_group]).start()
        try:
            if admin_group:
                assert os.stat(d.socket).st_gid == NOBODY  # the socket belongs to the admin group
            d.socket.chmod(0o666)
            results[admin_group] = requests_as_uid(d.socket, NOBODY, [("GET", snaps(cid), None, {})])[0][0]
        finally:
            assert d.stop() == 0
    assert results == {group: 200, "": 401}


def test_a_container_cannot_relabel_itself(world: World) -> None:
    """The label of a plain container sits on the container's own root: a user.* attribute
    there (which the container's root can set) must not move it into another project."""
    if os.geteuid() != 0:
        unavailable("the daemon keeps labels in trusted.* only when it runs as root")
    client = Client(tcp=("127.0.0.1", world.d.port), headers={"Authorization": f"Bearer {world.tokens['other']}"})
    assert client.get(snaps(world.a)).status == 403
    os.setxattr(world.pool / world.a, "user.container-snapd.project", b"proj-b")
    try:
        assert client.get(snaps(world.a)).status == 403
        assert world.d.unix.get(snaps(world.a)).data["project_id"] == "proj-a"
    finally:
        os.removexattr(world.pool / world.a, "user.container-snapd.project")
