"""Export and import of portable streams between two real daemons, each on its own real pool.

The sender is the shared `daemon` on `pool` (every backend kind); the receivers are daemons on
pools of their own: one of the same kind, one of another kind (overlay <-> btrfs; ZFS sends to
overlay, and receives nothing yet).  A snapshot is compared by restoring it on the receiver and digesting both live trees
(walk_digest in tests/digest.py: types, modes, owners, mtimes to the ns, content, xattrs, hard links).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends import faults
from backends.portable import compressions
from snapd.core import pipe

from .client import snaps
from .conftest import open_harness
from .crash import killed_at
from .daemon import DaemonProcess
from .digest import set_xattr, walk_digest, write_tree
from .harness import PoolHarness, is_root, new_cid
from .harness.overlay import OverlayHarness
from .nativestream import native_stream, when

OTHER_KIND = {"overlay": "btrfs", "btrfs": "overlay", "zfs": "overlay"}
SEVEN = {"name", "alias", "created_at", "last_used_at", "expires_at", "stateful", "size"}


@dataclass
class Peer:
    """A receiving daemon on a pool of its own."""

    d: DaemonProcess
    pool: PoolHarness


def _peer(kind: str, where: Path) -> Iterator[Peer]:
    harness = open_harness(kind, where / "pool")
    d = DaemonProcess(where / "d", [harness.spec], tcp=False).start()
    try:
        yield Peer(d, harness)
    finally:
        code = d.stop()
        harness.close()
        assert code == 0, d.log_text()[-3000:]


@pytest.fixture(scope="module")
def same(pool: PoolHarness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """A receiver on a pool of the sender's kind."""
    yield from _peer(pool.kind, tmp_path_factory.mktemp(f"same-{pool.kind}"))


@pytest.fixture(scope="module")
def other(pool: PoolHarness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """A receiver on a pool of another kind."""
    kind = OTHER_KIND[pool.kind]
    yield from _peer(kind, tmp_path_factory.mktemp(f"other-{pool.kind}-{kind}"))


def rich_tree(root: Path) -> None:
    """Everything a root filesystem holds: owners, modes, xattrs, hard links, symlinks
    (dangling, absolute), a sparse file, a FIFO, an overlay whiteout, a non-UTF-8 name."""
    write_tree(root, {"etc/hostname": "web\n", "data/a.txt": "alpha" * 1000, "data/deep/b.bin": os.urandom(70000),
                      "gone/x": "x", "gone/sub/y": "y", "keep.txt": "keep"})
    os.link(root / "data/a.txt", root / "data/a-link.txt")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../nowhere", root / "data/dangling")
    (root / os.fsdecode(b"caf\xe9-latin1")).write_bytes(b"not utf-8")
    with open(root / "data/sparse.img", "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"middle")
    os.mkfifo(root / "data/fifo")
    set_xattr(root / "data/a.txt", "user.note", b"\x00binary\xff")
    os.chmod(root / "data", 0o2775)
    if is_root():
        os.mknod(root / "data/whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.chown(root / "data/deep/b.bin", 1234, 5678)
        set_xattr(root / "etc", "trusted.overlay.opaque", b"y")
    os.utime(root / "keep.txt", ns=(1, 1_234_567_891_987_654_321))


@pytest.fixture
def container(pool: PoolHarness) -> str:
    cid = new_cid()
    rich_tree(pool.make_container(cid))
    return cid


def snapshot(d: DaemonProcess, cid: str, body: dict | None = None) -> dict:
    r = d.unix.post(snaps(cid), body or {})
    assert r.status == 200, r.body
    return r.data["snapshot"]


def export(d: DaemonProcess, cid: str, name: str, query: str = "") -> bytes:
    r = d.unix.get(snaps(cid, name, "/export") + query)
    assert r.status == 200, r.body
    return r.raw


def send(peer: Peer, cid: str, stream: bytes, query: str = ""):  # type: ignore[no-untyped-def]
    return peer.d.unix.post(snaps(cid, None, "/import") + query, stream)


def listed(peer: Peer, cid: str) -> list[tuple]:
    """The receiver's snapshots of `cid` by what an import sets (sizes are recounted later)."""
    return [(s["name"], s["alias"], s["created_at"], s["expires_at"])
            for s in peer.d.unix.get(snaps(cid)).data["snapshots"]]


def same_trees(a: Path, b: Path) -> None:
    """Equal below the root (and the root's mode and owner: its xattrs are the pool's labels)."""
    da, db = walk_digest(a), walk_digest(b)
    assert da[0][2:5] == db[0][2:5]
    assert da[1:] == db[1:]


def restored(peer: Peer, cid: str, name: str) -> Path:
    r = peer.d.unix.patch(snaps(cid, name))
    assert r.status == 200, r.body
    return peer.pool.container_path(cid)


def test_round_trip_keeps_the_tree_and_the_metadata(daemon: DaemonProcess, pool: PoolHarness, container: str,
                                                    same: Peer) -> None:
    snap = snapshot(daemon, container, {"alias": "before upgrade", "expiry": 30})
    stream = export(daemon, container, snap["name"])
    r = send(same, container, stream)
    assert r.status == 200, r.body
    got = r.data["snapshot"]
    assert set(got) == SEVEN
    assert {k: got[k] for k in ("name", "alias", "created_at", "expires_at")} == \
        {k: snap[k] for k in ("name", "alias", "created_at", "expires_at")}
    assert same.d.unix.get(snaps(container)).data["snapshots"][0]["name"] == snap["name"]
    if same.pool.kind != "zfs":  # received sparse: the 8 MiB image holds one written block
        image = Path(same.pool.spec.split(":", 1)[1]) / ".snapshots" / container / snap["name"] / "data/sparse.img"
        assert os.stat(image).st_blocks * 512 < 1 << 20
    same_trees(pool.container_path(container), restored(same, container, snap["name"]))


@pytest.mark.skipif("zstd" not in compressions(), reason="the zstandard module is not installed")
def test_a_compressed_stream_round_trips(daemon: DaemonProcess, pool: PoolHarness, container: str,
                                         same: Peer) -> None:
    snap = snapshot(daemon, container)
    plain = export(daemon, container, snap["name"])
    packed = export(daemon, container, snap["name"], "?compression=zstd")
    assert len(packed) < len(plain)
    assert send(same, container, packed).status == 200
    same_trees(pool.container_path(container), restored(same, container, snap["name"]))


def test_cross_backend_round_trip(daemon: DaemonProcess, pool: PoolHarness, container: str, other: Peer) -> None:
    snap = snapshot(daemon, container, {"alias": "cross"})
    r = send(other, container, export(daemon, container, snap["name"]))
    assert r.status == 200, r.body
    assert r.data["snapshot"]["alias"] == "cross"
    same_trees(pool.container_path(container), restored(other, container, snap["name"]))


def test_incremental_applies_changes_and_deletions(daemon: DaemonProcess, pool: PoolHarness, container: str,
                                                   same: Peer) -> None:
    first = snapshot(daemon, container)["name"]
    assert send(same, container, export(daemon, container, first)).status == 200
    live = pool.container_path(container)
    (live / "data/deep/b.bin").write_bytes(os.urandom(1 << 20))  # one 1 MiB file changed
    (live / "keep.txt").unlink()
    shutil.rmtree(live / "gone")
    (live / "data/new.txt").write_text("new")
    second = snapshot(daemon, container)["name"]
    full = export(daemon, container, second)
    incremental = export(daemon, container, second, f"?base={first}")
    assert len(incremental) < (1 << 20) + (64 << 10) < len(full)
    r = send(same, container, incremental)
    assert r.status == 200, r.body
    assert [s["name"] for s in same.d.unix.get(snaps(container)).data["snapshots"]] == [second, first]
    same_trees(live, restored(same, container, second))
    same_trees(live, restored(same, container, second))  # and the base is untouched:
    base_tree = restored(same, container, first)
    assert (base_tree / "keep.txt").exists() and (base_tree / "gone/sub/y").exists()


@pytest.fixture
def imported(daemon: DaemonProcess, container: str, same: Peer) -> tuple[str, str, bytes]:
    """A container whose first snapshot the receiver holds, and the stream of a second one."""
    first = snapshot(daemon, container)["name"]
    assert send(same, container, export(daemon, container, first)).status == 200
    second = snapshot(daemon, container)["name"]
    return container, first, export(daemon, container, second)


def flipped(stream: bytes, at: int) -> bytes:
    out = bytearray(stream)
    out[at] ^= 0x01
    return bytes(out)


HOSTILE = {
    "truncated": lambda s: s[:len(s) // 2],
    "truncated-before-trailer": lambda s: s[:-1],
    "flipped-in-data": lambda s: flipped(s, len(s) // 2),
    "flipped-in-trailer": lambda s: flipped(s, len(s) - 3),
    "padded": lambda s: s + b"\0",
    "empty": lambda s: b"",
    "not-a-stream": lambda s: b"GET / HTTP/1.1\r\n" * 100,
}


@pytest.mark.parametrize("damage", list(HOSTILE))
def test_a_damaged_stream_is_refused_and_leaves_nothing(imported: tuple[str, str, bytes], same: Peer,
                                                        damage: str) -> None:
    cid, first, stream = imported
    before = (same.pool.artifacts(), listed(same, cid))
    r = send(same, cid, HOSTILE[damage](stream))
    assert (r.status, r.body["message"]) == (400, "Invalid snapshot stream"), r.body
    assert r.body["details"][0]["field"] == "stream"
    assert (same.pool.artifacts(), listed(same, cid)) == before
    assert send(same, cid, stream).status == 200  # the whole stream still goes in


def test_a_damaged_stream_for_a_new_container_makes_no_container(daemon: DaemonProcess, container: str,
                                                                 same: Peer) -> None:
    stream = export(daemon, container, snapshot(daemon, container)["name"])
    before = same.pool.artifacts()
    r = send(same, container, stream[:-10])
    assert r.status == 400, r.body
    assert same.d.unix.get(snaps(container)).status == 404
    assert same.pool.artifacts() == before


def test_replayed_stream_is_a_conflict(imported: tuple[str, str, bytes], same: Peer) -> None:
    cid, first, stream = imported
    assert send(same, cid, stream).status == 200
    before = (same.pool.artifacts(), listed(same, cid))
    r = send(same, cid, stream)
    assert r.status == 409 and r.body["details"][0]["field"] == "snapshot", r.body
    assert (same.pool.artifacts(), listed(same, cid)) == before


def test_a_stream_of_another_container_is_refused(imported: tuple[str, str, bytes], same: Peer) -> None:
    cid, first, stream = imported
    stranger = new_cid()
    before = same.pool.artifacts()
    r = send(same, stranger, stream)
    assert (r.status, r.body["details"][0]["field"]) == (400, "container"), r.body
    assert cid in r.body["details"][0]["reason"]
    assert same.d.unix.get(snaps(stranger)).status == 404
    assert same.pool.artifacts() == before


def test_an_existing_name_is_a_conflict_on_the_sender_too(daemon: DaemonProcess, pool: PoolHarness,
                                                          container: str) -> None:
    name = snapshot(daemon, container)["name"]
    stream = export(daemon, container, name)
    before = pool.artifacts()
    r = daemon.unix.post(snaps(container, None, "/import"), stream)
    assert r.status == 409, r.body
    assert pool.artifacts() == before


def test_an_incremental_without_its_base_names_the_base(daemon: DaemonProcess, container: str,
                                                        same: Peer) -> None:
    first = snapshot(daemon, container)["name"]
    second = snapshot(daemon, container)["name"]
    before = same.pool.artifacts()
    r = send(same, container, export(daemon, container, second, f"?base={first}"))
    assert r.status == 409 and first in r.body["message"], r.body
    assert r.body["details"] == [{"field": "base", "reason": f"{first} not found"}]
    assert same.pool.artifacts() == before


def test_export_refusals(daemon: DaemonProcess, container: str) -> None:
    name = snapshot(daemon, container)["name"]
    assert daemon.unix.get(snaps(container, name, "/export?base=snap-19990101-000000")).status == 404
    assert daemon.unix.get(snaps(container, "snap-19990101-000000", "/export")).status == 404
    for query, field in (("?base=../x", "base"), ("?bogus=1", "bogus"), ("?compression=lzma", "compression")):
        r = daemon.unix.get(snaps(container, name, "/export" + query))
        assert (r.status, r.body["details"][0]["field"]) == (400, field), r.body
    r = daemon.unix.post(snaps(container, None, "/import?pool=nowhere:/x"), b"")
    assert r.status == 400, r.body


def test_the_import_path_allows_only_post(daemon: DaemonProcess, container: str) -> None:
    """`.../snapshots/import` is a concrete path of its own (the OpenAPI document gives it POST
    only, and a concrete path matches before `{name}`): other methods are 405 with Allow: POST.
    No snapshot is ever named `import`; every other name still reaches the reference's routes."""
    snapshot(daemon, container)
    for method in ("GET", "PATCH", "DELETE", "OPTIONS"):
        r = daemon.unix.request(method, snaps(container, "import"))
        assert (r.status, r.headers.get("allow")) == (405, "POST"), (method, r.body)
    r = daemon.unix.get(snaps(container, "imports"))
    assert (r.status, r.body["message"]) == (404, "Container or snapshot not found"), r.body


def test_a_snapshot_being_exported_is_not_deleted(daemon: DaemonProcess, container: str) -> None:
    """A delete is refused (409) while a stream reads the snapshot.  The rich tree's 8 MiB image
    is sent in full, far beyond what the socket buffers hold: until this client reads on, the
    daemon's export waits in the middle of the stream."""
    from .client import UnixHTTPConnection

    name = snapshot(daemon, container)["name"]
    conn = UnixHTTPConnection(str(daemon.socket))
    try:
        conn.request("GET", snaps(container, name, "/export"))
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read(1)  # the stream has begun; the client reads no further for now
        r = daemon.unix.delete(snaps(container, name))
        assert r.status == 409 and r.body["details"][0]["reason"] == "being exported", r.body
        resp.read()
    finally:
        conn.close()
    assert daemon.unix.delete(snaps(container, name)).status == 200


@pytest.mark.parametrize("stream_kind", ["portable", "native"])
@pytest.mark.parametrize("stage", ["received", "on-disk"])
def test_a_crash_leaves_the_import_absent_or_whole(daemon: DaemonProcess, pool: PoolHarness, container: str,
                                                   tmp_path: Path, stage: str, stream_kind: str) -> None:
    """The receiver dies (SIGKILL) with the tree checked in scratch (then nothing is visible and
    the next start sweeps the scratch, a native stream's received subvolume too), or with the
    snapshot on disk and no row (then the next start rolls it forward with the stream's
    metadata, from the journal)."""
    if stream_kind == "native" and pool.kind == "overlay":
        pytest.skip("overlay pools have no native stream")
    snap = snapshot(daemon, container, {"alias": "crash", "expiry": 3})
    if stream_kind == "native":
        stream = native_stream(pool.spec, container, snap["name"], when(snap["created_at"]), alias="crash",
                               expires_at=when(snap["expires_at"]))
        received = f"{pool.kind}.native.received"
    else:
        stream = export(daemon, container, snap["name"])
        received = f"{pool.kind}.import.received"
    point = received if stage == "received" else "service.import.on-disk"
    harness = open_harness(pool.kind, tmp_path / "pool")
    try:
        work = tmp_path / "d"
        d = DaemonProcess(work, [harness.spec], tcp=False, env={faults.ENV: point}).start()
        empty = harness.artifacts()  # what the pool holds of its own (ZFS: its root, the hidden dataset)
        killed_at(d, point, lambda: d.unix.post(snaps(container, None, "/import"), stream))
        d = DaemonProcess(work, [harness.spec], tcp=False).start()
        try:
            shown = d.unix.get(snaps(container))
            if stage == "received":
                assert shown.status == 404 and harness.artifacts() == empty, harness.artifacts()
                assert d.unix.post(snaps(container, None, "/import"), stream).status == 200  # and it goes in
            else:
                got = shown.data["snapshots"]
                assert [(s["name"], s["alias"], s["created_at"], s["expires_at"]) for s in got] == \
                    [(snap["name"], "crash", snap["created_at"], snap["expires_at"])]
            same_trees(pool.container_path(container), restored(Peer(d, harness), container, snap["name"]))
        finally:
            assert d.stop() == 0
    finally:
        harness.close()


def test_a_full_pool_is_507_and_leaves_nothing(daemon: DaemonProcess, pool: PoolHarness, container: str,
                                               tmp_path: Path) -> None:
    """An overlay pool on a 4 MiB tmpfs receives a stream of a tree larger than that."""
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    (pool.container_path(container) / "data/random.bin").write_bytes(os.urandom(6 << 20))
    stream = export(daemon, container, snapshot(daemon, container)["name"])
    root = tmp_path / "tiny"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], check=True)
    try:
        tiny = OverlayHarness.at(root)
        d = DaemonProcess(tmp_path / "d", [tiny.spec], tcp=False).start()
        try:
            r = d.unix.post(snaps(container, None, "/import"), stream)
            assert r.status == 507, r.body
            assert d.unix.get(snaps(container)).status == 404
            assert tiny.artifacts() == set()
        finally:
            assert d.stop() == 0
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_the_cli_exports_to_a_file_and_imports_from_it(daemon: DaemonProcess, pool: PoolHarness, container: str,
                                                       same: Peer, tmp_path: Path) -> None:
    first = snapshot(daemon, container)["name"]
    (pool.container_path(container) / "etc/hostname").write_text("changed\n")
    second = snapshot(daemon, container, {"alias": "by cli"})["name"]
    cli = [sys.executable, "-m", "snapd"]
    for name, base in ((first, None), (second, first)):
        stream = tmp_path / f"{name}.csnap"
        with open(stream, "wb") as out:
            subprocess.run([*cli, "export", "--socket", str(daemon.socket), container, name,
                            *(["--base", base] if base else [])], stdout=out, check=True)
        with open(stream, "rb") as src:
            done = subprocess.run([*cli, "import", "--socket", str(same.d.socket), container], stdin=src,
                                  capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert name in done.stdout
    with open(tmp_path / f"{first}.csnap", "rb") as src:  # again: the daemon's 409, told on stderr
        again = subprocess.run([*cli, "import", "--socket", str(same.d.socket), container], stdin=src,
                               capture_output=True, text=True)
    assert again.returncode == 1 and "409" in again.stderr and "exists already" in again.stderr
    assert listed(same, container)[0][:2] == (second, "by cli")
    same_trees(pool.container_path(container), restored(same, container, second))


def test_a_client_that_goes_away_mid_import_leaves_nothing_and_holds_nothing(
        imported: tuple[str, str, bytes], same: Peer) -> None:
    """Half the body, then the connection closes: the import fails at once (no wait for the
    idle timeout under the container's lock), nothing is left, and the next import goes in."""
    cid, first, stream = imported
    before = (same.pool.artifacts(), listed(same, cid))
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(same.d.socket))
        s.sendall(f"POST {snaps(cid, None, '/import')} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(stream)}\r\n"
                  "Content-Type: application/vnd.container-snapd.stream\r\n\r\n".encode() + stream[:len(stream) // 2])
    started = time.monotonic()
    r = send(same, cid, stream)
    assert r.status == 200, r.body
    assert time.monotonic() - started < pipe.IDLE_TIMEOUT / 2
    r = same.d.unix.delete(snaps(cid, r.data["snapshot"]["name"]))
    assert r.status == 200, r.body
    assert (same.pool.artifacts(), listed(same, cid)) == before
