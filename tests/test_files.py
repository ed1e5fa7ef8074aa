"""Files in snapshots on every backend: browse, download with ranges, diff (known-answer
trees), restore single paths; hostile trees and paths never reach outside the container."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from pathlib import Path

import pytest

from backends import faults, treeread, zfs_diff
from backends.base import SnapshotRef
from backends.btrfs import BtrfsBackend
from backends.treeread import DiffStats
from snapd.core.files import DIFF_BATCH

from .client import Client, snaps
from .crash import killed_at, pending_journal
from .daemon import DaemonProcess
from .digest import set_xattr, walk_digest, write_tree
from .harness import PoolHarness, new_cid

LATIN1 = b"caf\xe9".decode("utf-8", "surrogateescape")


def q(path: str) -> str:
    return urllib.parse.quote(path, safe="")


@pytest.fixture
def container(pool: PoolHarness) -> str:
    cid = new_cid()
    root = pool.make_container(cid)
    write_tree(root, {"etc/hosts": "127.0.0.1 localhost\n", "etc/nginx/nginx.conf": "worker 1;\n",
                      "etc/nginx/sites/a.conf": "a\n", "srv/app/config.yml": "debug: false\n",
                      "srv/keep.txt": "keep\n", "srv/mode.sh": "#!/bin/sh\n", "srv/owner": "o\n",
                      "srv/typed": "file then dir\n", "srv/renamed-from": "r\n", "srv/content": "one\n"})
    os.symlink("hosts", root / "etc" / "hosts-link")
    os.symlink("/", root / "to-slash")
    os.symlink("../../../../..", root / "etc" / "up")
    os.link(root / "srv" / "keep.txt", root / "srv" / "keep-link")
    with open(root / "srv" / "sparse", "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"middle")
    (root / LATIN1).write_text("latin-1\n")
    return cid


NO_SNAPDIR = "zfs-fuse has no .zfs/snapshot: the daemon refuses file access there " \
            "(test_zfs_without_a_snapshot_directory_refuses_file_access)"


@pytest.fixture(autouse=True)
def _readable(request: pytest.FixtureRequest) -> None:
    """A pool whose snapshots' files cannot be read (zfs-fuse) is tested for the refusal only."""
    if "pool" in request.fixturenames and request.node.get_closest_marker("refusal") is None:
        pool = request.getfixturevalue("pool")
        if pool.kind == "zfs" and not pool.snapdir:
            pytest.skip(NO_SNAPDIR)


@pytest.mark.refusal
def test_zfs_without_a_snapshot_directory_refuses_file_access(daemon: DaemonProcess, pool: PoolHarness,
                                                              container: str) -> None:
    """Where ZFS shows no .zfs/snapshot (zfs-fuse), every files route answers 409 naming the
    snapshot, and nothing is mounted, made or changed: a clone mounted for the read would
    do, but unmounting it hangs zfs-fuse now and then, and with it the whole pool."""
    if pool.kind != "zfs" or pool.snapdir:
        pytest.skip("only a ZFS without .zfs/snapshot refuses")
    root = pool.container_path(container)
    name = snap(daemon, container)
    before, on_disk, mounted = walk_digest(root), pool.artifacts(), Path("/proc/self/mountinfo").read_text()
    for r in (daemon.unix.get(snaps(container, name, "/tree") + "?path=/etc"),
              daemon.unix.get(snaps(container, name, "/file") + "?path=/etc/hosts", binary=True),
              daemon.unix.get(snaps(container, name, "/diff")),
              daemon.unix.post(snaps(container, name, "/restore-paths"), {"paths": ["/etc/hosts"]})):
        body = r.body if isinstance(r.body, dict) else json.loads(r.raw)
        assert r.status == 409, body
        assert ".zfs/snapshot" in body["message"] + json.dumps(body.get("details")), body
    assert walk_digest(root) == before
    assert pool.artifacts() == on_disk
    assert Path("/proc/self/mountinfo").read_text() == mounted


def snap(daemon: DaemonProcess, cid: str) -> str:
    r = daemon.unix.post(snaps(cid))
    assert r.status == 200, r.body
    return r.data["snapshot"]["name"]


def test_tree_lists_a_directory_in_pages(daemon: DaemonProcess, container: str) -> None:
    name = snap(daemon, container)
    r = daemon.unix.get(snaps(container, name, "/tree") + "?path=/etc")
    assert r.status == 200, r.body
    entries = {e["name"]: e for e in r.data["entries"]}
    assert set(entries) == {"hosts", "hosts-link", "nginx", "up"}
    assert entries["hosts-link"]["type"] == "symlink" and entries["hosts-link"]["target"] == "hosts"
    assert entries["up"]["target"] == "../../../../.."
    assert entries["nginx"]["type"] == "dir" and entries["hosts"]["size"] == 20
    first = daemon.unix.get(snaps(container, name, "/tree") + "?path=/etc&limit=2")
    assert [e["name"] for e in first.data["entries"]] == ["hosts", "hosts-link"]
    rest = daemon.unix.get(snaps(container, name, "/tree") + f"?path=/etc&limit=2&after={q(first.data['next'])}")
    assert [e["name"] for e in rest.data["entries"]] == ["nginx", "up"] and rest.data["next"] is None
    top = daemon.unix.get(snaps(container, name, "/tree"))
    assert "caf\\xe9" in {e["name"] for e in top.data["entries"]}


@pytest.mark.parametrize("path, status, reason", [
    ("/etc/../..", 400, "'..'"), ("etc", 400, "absolute"), ("/to-slash/etc", 400, "symlink"),
    ("/etc/up/etc", 400, "symlink"), ("/a%00b", 400, "NUL"), ("/nope", 404, "does not exist"),
    ("/" + "a" * 256, 400, "255 bytes"), ("/etc/" + "\\xff" * 256 + "/x", 400, "255 bytes"),
    ("/" + "/".join(["abcdefg"] * 512), 400, "4095 bytes"),
])
def test_tree_refuses_hostile_paths(daemon: DaemonProcess, container: str, path: str, status: int,
                                    reason: str) -> None:
    name = snap(daemon, container)
    raw = path if "%" in path else q(path)
    r = daemon.unix.get(snaps(container, name, "/tree") + f"?path={raw}")
    assert r.status == status, r.body
    assert reason in json.dumps(r.body["details"]), r.body


def test_file_streams_with_range_and_etag(daemon: DaemonProcess, container: str) -> None:
    name = snap(daemon, container)
    url = snaps(container, name, "/file") + "?path=/etc/hosts"
    r = daemon.unix.get(url, binary=True)
    assert r.status == 200 and r.raw == b"127.0.0.1 localhost\n"
    etag = r.headers["etag"]
    part = daemon.unix.get(url, binary=True, headers={"Range": "bytes=4-8"})
    assert part.status == 206 and part.raw == b"0.0.1" and part.headers["content-range"] == "bytes 4-8/20"
    tail = daemon.unix.get(url, binary=True, headers={"Range": "bytes=-10"})
    assert tail.raw == b"localhost\n"
    assert daemon.unix.get(url, binary=True, headers={"If-None-Match": etag}).status == 304
    assert daemon.unix.get(url, headers={"Range": "bytes=50-"}).status == 416
    sparse = daemon.unix.get(snaps(container, name, "/file") + "?path=/srv/sparse", binary=True)
    assert len(sparse.raw) == 8 << 20 and sparse.raw[4 << 20:(4 << 20) + 6] == b"middle"
    latin = daemon.unix.get(snaps(container, name, "/file") + "?path=" + q("/caf\\xe9"), binary=True)
    assert latin.raw == b"latin-1\n"
    for path, kind in (("/etc", "dir"), ("/etc/hosts-link", "symlink")):
        bad = daemon.unix.get(snaps(container, name, "/file") + "?path=" + q(path))
        assert bad.status == 400 and kind in json.dumps(bad.body["details"]), bad.body


def _changes(daemon: DaemonProcess, cid: str, name: str, against: str = "live") -> dict[str, dict]:
    r = daemon.unix.get(snaps(cid, name, "/diff") + f"?against={against}")
    assert r.status == 200, r.body
    assert r.data["next"] is None
    return {c["path"]: c for c in r.data["changes"]}


def _mutate(root: Path) -> dict[str, tuple[str, list[str] | None]]:
    """Change the tree in every way a diff tells apart; the changes a diff must then show."""
    (root / "srv" / "content").write_text("two\n")
    os.chmod(root / "srv" / "mode.sh", 0o755)
    os.chown(root / "srv" / "owner", 1234, 1234)
    os.unlink(root / "srv" / "typed")
    (root / "srv" / "typed").mkdir()
    (root / "srv" / "typed" / "inner").write_text("x\n")
    os.rename(root / "srv" / "renamed-from", root / "srv" / "renamed-to")
    os.unlink(root / "etc" / "hosts-link")
    os.symlink("nginx", root / "etc" / "hosts-link")
    os.link(root / "srv" / "keep.txt", root / "srv" / "another-link")
    (root / "new").mkdir()
    (root / "new" / "file").write_text("new\n")
    if not set_xattr(root / "srv" / "keep.txt", "user.note", b"x"):  # zfs-fuse has no xattrs
        return {p: c for p, c in EXPECTED.items() if c[1] != ["xattrs"]}
    return EXPECTED


EXPECTED = {
    "/etc/hosts-link": ("modified", ["target"]),
    "/new": ("added", None), "/new/file": ("added", None),
    "/srv/another-link": ("added", None),
    "/srv/content": ("modified", ["content"]),
    "/srv/keep-link": ("modified", ["xattrs"]), "/srv/keep.txt": ("modified", ["xattrs"]),
    "/srv/mode.sh": ("modified", ["mode"]),
    "/srv/owner": ("modified", ["owner"]),
    "/srv/renamed-from": ("deleted", None), "/srv/renamed-to": ("added", None),
    "/srv/typed": ("type_changed", None), "/srv/typed/inner": ("added", None),
}


def test_diff_against_live_and_another_snapshot(daemon: DaemonProcess, pool: PoolHarness, container: str) -> None:
    first = snap(daemon, container)
    assert _changes(daemon, container, first) == {}
    expected = _mutate(pool.container_path(container))
    got = _changes(daemon, container, first)
    assert {p: (c["change"], c.get("fields")) for p, c in got.items()} == expected
    assert got["/srv/typed"]["old_type"] == "file" and got["/srv/typed"]["type"] == "dir"
    second = snap(daemon, container)
    on_disk = pool.artifacts()
    assert {p: (c["change"], c.get("fields")) for p, c in _changes(daemon, container, first, second).items()} \
        == expected
    back = _changes(daemon, container, second, first)
    assert back["/new"]["change"] == "deleted" and back["/srv/renamed-from"]["change"] == "added"
    paged = daemon.unix.get(snaps(container, first, "/diff") + f"?against={second}&limit=5")
    assert [c["path"] for c in paged.data["changes"]] == sorted(expected)[:5]
    more = daemon.unix.get(snaps(container, first, "/diff") + f"?against={second}&after={q(paged.data['next'])}")
    assert [c["path"] for c in more.data["changes"]] == sorted(expected)[5:]
    assert pool.artifacts() == on_disk  # a page that stops the walk early leaves no clone behind (zfs-fuse)
    nd = daemon.unix.get(snaps(container, first, "/diff") + f"?against={second}", binary=True,
                         headers={"Accept": "application/x-ndjson"})
    assert nd.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line)["path"] for line in nd.raw.decode().splitlines()] == sorted(expected)


def test_a_page_of_a_long_diff_leaves_nothing_behind(daemon: DaemonProcess, pool: PoolHarness) -> None:
    """A page ends the walk early (more changes than one batch): the answer is that page,
    and nothing is left on disk (the walk is closed before the snapshot's root)."""
    cid = new_cid()
    root = pool.make_container(cid)
    name = snap(daemon, cid)
    (root / "many").mkdir()
    for i in range(DIFF_BATCH + 100):
        (root / "many" / f"{i:05}").write_bytes(b"")
    on_disk = pool.artifacts()
    r = daemon.unix.get(snaps(cid, name, "/diff") + "?limit=10")
    assert r.status == 200 and r.data["next"] == "/many/00008", r.body
    assert pool.artifacts() == on_disk


def test_restore_paths_brings_back_exactly_those_paths(daemon: DaemonProcess, pool: PoolHarness,
                                                       container: str, tmp_path: Path) -> None:
    root = pool.container_path(container)
    name = snap(daemon, container)
    wanted = {p: walk_digest(root / p) for p in ("etc/nginx",)}
    _mutate(root)
    (root / "etc" / "nginx" / "nginx.conf").write_text("broken\n")
    (root / "etc" / "nginx" / "extra").write_text("extra\n")
    os.unlink(root / "srv" / "app" / "config.yml")
    untouched = {p: walk_digest(root / p) for p in ("new", "srv/typed")}
    r = daemon.unix.post(snaps(container, name, "/restore-paths"),  # a path inside another, and a repeat
                         {"paths": ["/etc/nginx", "/srv/app/config.yml", "/etc/nginx/nginx.conf", "/srv/content",
                                    "/etc/nginx"]})
    assert r.status == 200, r.body
    assert r.data["restored"] == [
        {"path": "/etc/nginx", "type": "dir", "replaced": True},
        {"path": "/srv/app/config.yml", "type": "file", "replaced": False},
        {"path": "/srv/content", "type": "file", "replaced": True},
    ]
    assert walk_digest(root / "etc" / "nginx") == wanted["etc/nginx"]
    assert (root / "srv" / "app" / "config.yml").read_text() == "debug: false\n"
    assert (root / "srv" / "content").read_text() == "one\n"
    assert {p: walk_digest(root / p) for p in untouched} == untouched
    assert not [n for n in os.listdir(root / "etc") if n.startswith(".snapd-restore-")]
    left = _changes(daemon, container, name)
    assert "/etc/nginx/extra" not in left and "/srv/content" not in left and "/new" in left


@pytest.mark.parametrize("body, status, field", [
    ({"paths": []}, 400, "paths"), ({"paths": ["etc"]}, 400, "paths[0]"), ({"paths": ["/a/../b"]}, 400, "paths[0]"),
    ({"paths": [1]}, 400, "paths[0]"), ({"paths": ["/"]}, 400, "paths"),
    ({"paths": ["/to-slash/etc/passwd"]}, 400, "paths"), ({"paths": ["/nope"]}, 404, "paths"), ({}, 400, "paths"),
    ({"paths": ["/etc/" + "a" * 256]}, 400, "paths[0]"), ({"paths": ["/" + "a" * 256 + "/x"]}, 400, "paths[0]"),
])
def test_restore_paths_refuses_bad_paths_and_changes_nothing(daemon: DaemonProcess, pool: PoolHarness,
                                                             container: str, body: dict, status: int,
                                                             field: str) -> None:
    root = pool.container_path(container)
    name = snap(daemon, container)
    before, on_disk = walk_digest(root), pool.artifacts()
    r = daemon.unix.post(snaps(container, name, "/restore-paths"), body)
    assert r.status == status, r.body
    assert field in [d["field"] for d in r.body.get("details", [])], r.body
    assert walk_digest(root) == before
    assert pool.artifacts() == on_disk


def test_a_swapped_directory_is_not_followed_out_of_the_container(daemon: DaemonProcess, pool: PoolHarness,
                                                                  container: str, tmp_path: Path) -> None:
    """The live container swaps /etc for a symlink to a canary tree outside: restore-paths
    refuses, and the canary is unchanged."""
    root = pool.container_path(container)
    name = snap(daemon, container)
    canary = tmp_path / "canary"
    write_tree(canary, {"nginx/nginx.conf": "canary\n"})
    before = walk_digest(canary)
    os.rename(root / "etc", root / "etc.real")
    os.symlink(str(canary), root / "etc")
    r = daemon.unix.post(snaps(container, name, "/restore-paths"), {"paths": ["/etc/nginx"]})
    assert r.status == 400 and "symlink" in json.dumps(r.body["details"]), r.body
    assert walk_digest(canary) == before


# -- change tracking (btrfs send) against the walk ------------------------------------


def _both_engines(pool: PoolHarness, cid: str, first: str, second: str) -> tuple[list, list, DiffStats, DiffStats]:
    """The diff of two snapshots by the walk and by change tracking (records, stats)."""
    async def run() -> tuple[list, list, DiffStats, DiffStats]:
        backend = BtrfsBackend(str(pool.root))  # type: ignore[attr-defined]
        await backend.open()
        async with backend.snapshot_root(cid, SnapshotRef(first)) as old, \
                backend.snapshot_root(cid, SnapshotRef(second)) as new:
            candidates = await backend.changes(old, new)
            assert candidates is not None, "btrfs send gave no change set"
            walked, tracked = DiffStats(), DiffStats()
            return (list(treeread.diff(old, new, walked)), list(treeread.diff_paths(old, new, candidates, tracked)),
                    walked, tracked)
    return asyncio.run(run())


def _more_mutations(root: Path) -> None:
    """Renames and replacements that send streams express through temporary names."""
    os.rename(root / "srv" / "app", root / "srv" / "app2")
    (root / "srv" / "app2" / "config.yml").write_text("debug: true\n")
    os.rename(root / "etc" / "nginx", root / "etc" / "nginx.old")
    (root / "etc" / "nginx").mkdir()
    (root / "etc" / "nginx" / "other.conf").write_text("other\n")
    os.chmod(root / "srv" / "keep-link", 0o600)  # one inode, three links: all three differ
    (root / LATIN1).write_text("latin-1, changed\n")
    with open(root / "srv" / "sparse", "r+b") as f:
        f.seek(6 << 20)
        f.write(b"later")


@pytest.mark.parametrize("mutations", [[_mutate], [_mutate, _more_mutations]], ids=["known-answer", "renames"])
def test_change_tracking_gives_what_the_walk_gives(daemon: DaemonProcess, pool: PoolHarness, container: str,
                                                   mutations: list) -> None:
    if pool.kind != "btrfs":
        pytest.skip("change tracking is btrfs send here (zfs diff cannot run on zfs-fuse)")
    first = snap(daemon, container)
    for mutate in mutations:
        mutate(pool.container_path(container))
    second = snap(daemon, container)
    for a, b in ((first, second), (second, first)):
        walked, tracked, _w, _t = _both_engines(pool, container, a, b)
        assert tracked == walked
    walked, tracked, _w, _t = _both_engines(pool, container, first, second)
    got = {p: (c["change"], c.get("fields")) for _parts, c in walked for p in [c["path"]]}
    if len(mutations) == 1:
        assert got == EXPECTED
    else:
        assert got["/srv/app"] == ("deleted", None) and got["/srv/app2/config.yml"] == ("added", None)
        assert got["/etc/nginx/nginx.conf"] == ("deleted", None) and got["/etc/nginx/other.conf"] == ("added", None)
        assert got["/srv/keep-link"] == ("modified", ["mode", "xattrs"]) and got["/srv/another-link"][0] == "added"
        assert got["/caf\\xe9"] == ("modified", ["content"]) and got["/srv/sparse"] == ("modified", ["content"])
    route = _changes(daemon, container, first, second)  # the route takes the tracked path on btrfs
    assert list(route) == [c["path"] for _p, c in walked]


def test_change_tracking_compares_only_what_changed(daemon: DaemonProcess, pool: PoolHarness) -> None:
    if pool.kind != "btrfs":
        pytest.skip("change tracking is btrfs send here")
    cid = new_cid()
    root = pool.make_container(cid)
    write_tree(root, {f"d{i}/f{j}": f"{i} {j}\n" for i in range(20) for j in range(100)})
    first = snap(daemon, cid)
    (root / "d3" / "f7").write_text("changed\n")
    os.unlink(root / "d11" / "f0")
    second = snap(daemon, cid)
    walked, tracked, wstats, tstats = _both_engines(pool, cid, first, second)
    assert tracked == walked and [c["path"] for _p, c in walked] == ["/d11/f0", "/d3/f7"]
    assert wstats.compared == 2020  # 20 directories and 2000 files, every one looked at
    assert tstats.compared <= 10, tstats


def test_zfs_diff_lines_become_candidate_paths() -> None:
    """`zfs diff -H` output (OpenZFS): octal escapes undone, the mountpoint stripped, a
    rename's both ends deep; zfs-fuse's answer to `zfs diff` says it has none."""
    text = ("M\t/pool/ct/\n+\t/pool/ct/new\\0040file\n-\t/pool/ct/caf\\0351\n"
            "R\t/pool/ct/srv/app\t/pool/ct/srv/app2\nM\t/pool/ct/back\\0134slash\n")
    assert zfs_diff.candidates(text, "/pool/ct") == {
        (b"new file",): False, (b"caf\xe9",): False, (b"srv", b"app"): True, (b"srv", b"app2"): True,
        (b"back\\slash",): False}
    assert zfs_diff.unsupported("unrecognized command 'diff'\nusage: zfs command args ...")
    assert not zfs_diff.unsupported("missing snapshot argument\nusage:\n\tdiff [-FHth] <snapshot> ...")


def test_a_crash_between_two_paths_leaves_each_before_or_after(pool: PoolHarness, container: str,
                                                                tmp_path: Path) -> None:
    """The daemon dies (SIGKILL) with the first of two paths swapped in: after the restart the
    first is as in the snapshot, the second as it was, the journal settled, no temporary left."""
    root = pool.container_path(container)
    work = tmp_path / "d"
    d = DaemonProcess(work, [pool.spec], tcp=False, env={faults.ENV: "pathrestore.swapped"}).start()
    name = snap(d, container)
    wanted = walk_digest(root / "etc" / "nginx")
    (root / "etc" / "nginx" / "nginx.conf").write_text("broken\n")
    (root / "srv" / "content").write_text("changed since\n")
    killed_at(d, "pathrestore.swapped", lambda: d.unix.post(snaps(container, name, "/restore-paths"),
                                                           {"paths": ["/etc/nginx", "/srv/content"]}))
    d = DaemonProcess(work, [pool.spec], tcp=False).start()
    try:
        assert walk_digest(root / "etc" / "nginx") == wanted  # after
        assert (root / "srv" / "content").read_text() == "changed since\n"  # before
        leftovers = [p for p in root.rglob(".snapd-restore-*")]
        assert leftovers == [] and pending_journal(d) == []
        r = d.unix.post(snaps(container, name, "/restore-paths"), {"paths": ["/srv/content"]})
        assert r.status == 200, r.body  # and it runs again, normally
    finally:
        assert d.stop() == 0


def _chain(top: Path, depth: int, leaf: str, text: str) -> None:
    """`top`/d/d/.../d (`depth` levels)/`leaf`, made one level at a time (pathlib recurses)."""
    top.mkdir(exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        try:
            os.mkdir("d", dir_fd=fd)
        except FileExistsError:
            pass
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd), "w") as f:
        f.write(text)
    os.close(fd)


def _unchain(top: Path) -> None:
    """Remove what _chain() made under `top` (shutil.rmtree recurses too)."""
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    while "d" in os.listdir(fds[-1]):
        fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    for fd in reversed(fds):
        for name in os.listdir(fd):
            if name == "d":
                os.rmdir(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
        os.close(fd)


def test_a_deep_tree_is_diffed_whole(daemon: DaemonProcess, pool: PoolHarness) -> None:
    """A container's tree 1,200 directories deep (a hostile or generated one): the diff walks
    it without running out of stack, against live (the walk) and between snapshots (change
    tracking on btrfs), and lists every change."""
    cid = new_cid()
    root = pool.make_container(cid)
    deep = "/".join(["d"] * 1200)
    _chain(root, 1200, "f", "one\n")
    first = snap(daemon, cid)
    _chain(root, 1200, "f", "two\n")
    _chain(root / "added", 1200, "g", "g\n")
    expected = {"/" + deep + "/f": "modified", "/added": "added", "/added/" + deep + "/g": "added",
                **{"/added/" + "/".join(["d"] * i): "added" for i in range(1, 1201)}}
    second = snap(daemon, cid)
    slow = Client(unix=daemon.socket, timeout=280)  # 40 s on btrfs when quiet; a loaded CI took over 60
    try:
        for against in ("live", second):
            r = slow.get(snaps(cid, first, "/diff") + f"?against={against}&limit=10000")
            assert r.status == 200, str(r.body)[:2000]
            assert {c["path"]: c["change"] for c in r.data["changes"]} == expected
    finally:
        for name in (first, second):
            assert daemon.unix.delete(snaps(cid, name)).status == 200
        _unchain(root / "added")
        os.rmdir(root / "added")
        _unchain(root)


@pytest.mark.parametrize("swap", ["gone", "fifo-with-a-writer", "symlink", "directory", "symlink-gone"])
def test_a_live_entry_changing_between_listing_and_compare_is_a_change(tmp_path: Path, swap: str) -> None:
    """A diff against live lists a directory, then compares each entry: a running container
    may remove or swap it meanwhile.  That is a change (or nothing to compare), never an
    error, and what is there now is never opened unless it is a regular file (a FIFO, a
    device node)."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    for side in (old, new):
        if swap == "symlink-gone":
            os.symlink("target-" + side.name, side / "e")
        else:
            (side / "e").write_bytes(b"same size " + side.name.encode())
    os.utime(old / "e", ns=(0, 0), follow_symlinks=False)
    o, n = os.lstat(old / "e"), os.lstat(new / "e")  # as the walk listed them
    os.unlink(new / "e")
    writer = None
    if swap == "fifo-with-a-writer":
        os.mkfifo(new / "e")
        writer = os.open(new / "e", os.O_RDWR | os.O_NONBLOCK)  # a reader would find no data: EAGAIN
    elif swap == "symlink":
        os.symlink("/etc/hostname", new / "e")
    elif swap == "directory":
        (new / "e").mkdir()
    ofd, nfd = os.open(old, os.O_RDONLY | os.O_DIRECTORY), os.open(new, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fields = treeread.compare(ofd, nfd, b"e", o, n)
    finally:
        for fd in (ofd, nfd) + ((writer,) if writer is not None else ()):
            os.close(fd)
    assert fields == (["target"] if swap == "symlink-gone" else ["content"])


@pytest.mark.parametrize("same", [True, False])
def test_huge_sparse_files_are_compared_by_their_data_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           same: bool) -> None:
    """A container can make a file of terabytes that holds a few bytes (a sparse file,
    free to make): a diff compares the data both hold, never reads the holes (reading
    zeros at GB/s would hold one of the daemon's few worker threads for hours)."""
    size = 1 << 30
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    for side, data in ((old, b"x"), (new, b"x" if same else b"y")):
        with open(side / "huge", "wb") as f:
            f.truncate(size)
            f.seek(768 << 20)
            f.write(data)
    os.utime(old / "huge", ns=(0, 0))  # the quick check does not settle it: bytes are compared
    read = [0]
    real_read, real_pread = os.read, os.pread

    def counting_read(fd: int, n: int) -> bytes:
        out = real_read(fd, n)
        read[0] += len(out)
        return out

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        out = real_pread(fd, n, offset)
        read[0] += len(out)
        return out

    monkeypatch.setattr(os, "read", counting_read)
    monkeypatch.setattr(os, "pread", counting_pread)
    ofd, nfd = os.open(old, os.O_RDONLY | os.O_DIRECTORY), os.open(new, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fields = treeread.compare(ofd, nfd, b"huge", os.lstat(old / "huge"), os.lstat(new / "huge"))
    finally:
        os.close(ofd), os.close(nfd)
    assert fields == ([] if same else ["content"])
    assert read[0] <= 16 << 20, f"read {read[0] >> 20} MiB"


def test_change_tracking_asks_for_the_links_of_an_inode_once(daemon: DaemonProcess, pool: PoolHarness,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A container that gives one file thousands of hard links between two snapshots: the
    send stream names every link, and asking the filesystem for all the inode's links once
    per link named is quadratic (50,000 links: billions of steps for one diff).  Once per
    inode and side is enough."""
    if pool.kind != "btrfs":
        pytest.skip("change tracking is btrfs send here")
    from backends import btrfs_ioctl
    cid = new_cid()
    root = pool.make_container(cid)
    write_tree(root, {"f": "linked\n", "links/keep": "k\n"})
    first = snap(daemon, cid)
    for i in range(2000):
        os.link(root / "f", root / "links" / f"l{i}")
    second = snap(daemon, cid)
    asked = [0]
    real = btrfs_ioctl.ino_paths

    def counting(fd: int, ino: int, size: int = 64 << 10) -> list[bytes]:
        asked[0] += 1
        return real(fd, ino, size)

    monkeypatch.setattr(btrfs_ioctl, "ino_paths", counting)
    walked, tracked, _w, _t = _both_engines(pool, cid, first, second)
    assert tracked == walked
    assert asked[0] <= 2, asked[0]
