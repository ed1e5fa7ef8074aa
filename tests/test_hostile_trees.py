"""Hostile trees through the real daemon (overlay pool): mounts and 10,000-deep trees in
snapshots and scratch space, and journal entries that cannot be settled.

Start-up never dies on one bad item: it is set aside, shown by `snapd status` and
/metrics, and every other container is served.  A delete that cannot finish puts the
snapshot back (store and disk agree); a deep one simply succeeds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import remove
from backends.base import SnapshotRef, TreeHasMounts
from backends.overlay import OverlayBackend

from .client import snaps
from .daemon import DaemonProcess
from .digest import tree_digest, write_tree
from .harness import new_cid
from .mounts import Mounts, deep_tree
from .rootfs import require_root
from .test_cli import snapd
from .test_daemon_systemd import scrape

DEPTH = 10_000
STATUS = "/api/v1/admin/status"


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A tree outside the pool; no test here may change it."""
    root = tmp_path / "canary"
    write_tree(root, {"keep.txt": "precious", "sub/data": "more"})
    before = tree_digest(root)
    yield root
    assert tree_digest(root) == before


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    with Mounts() as m:
        yield m


class Env:
    """An overlay pool with one served container holding one snapshot, and its daemon."""

    def __init__(self, base: Path) -> None:
        self.pool = base / "pool"
        self.pool.mkdir()
        self.daemon = DaemonProcess(base / "d", [f"overlay:{self.pool}"], tcp=False)
        self.cid = new_cid()
        write_tree(self.pool / self.cid, {"etc/hostname": "web-1"})
        self.daemon.start()
        r = self.daemon.unix.post(snaps(self.cid))
        assert r.status == 200, r.body
        self.snapshot = r.data["snapshot"]["name"]

    @property
    def scratch(self) -> Path:
        return self.pool / ".snapshots" / ".tmp"

    @property
    def quarantine(self) -> Path:
        return self.pool / ".snapshots" / ".quarantine"

    def restart(self) -> None:
        assert self.daemon.stop() == 0, self.daemon.log_text()[-3000:]
        self.daemon.start()

    def stop(self) -> None:
        code = self.daemon.stop()
        assert code == 0, f"daemon exited {code}:\n{self.daemon.log_text()[-3000:]}"

    def serves(self) -> None:
        """It answers on its socket and lists the good container's snapshot."""
        r = self.daemon.unix.get(snaps(self.cid))
        assert r.status == 200, r.body
        assert [s["name"] for s in r.data["snapshots"]] == [self.snapshot]

    def problems(self) -> list[dict]:
        r = self.daemon.unix.get(STATUS)
        assert r.status == 200, r.body
        return r.data["problems"]

    def metric(self, source: str) -> float:
        return scrape(self.daemon.unix)["container_snapd_startup_problems"][(("source", source),)]

    def journal(self, op: str, pool: str, data: str, snapshot: str | None = None) -> int:
        """Add a pending journal entry behind the stopped daemon's back."""
        with sqlite3.connect(self.daemon.state_dir / "snapd.db") as db:
            cur = db.execute(
                "INSERT INTO journal (op, container_id, snapshot, pool, data, state, started_at) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                [op, new_cid(), snapshot, pool, data, int(time.time() * 1000)])
            return int(cur.lastrowid)

    def store_matches_disk(self) -> None:
        on_disk = {(c.name, s.name) for c in os.scandir(self.pool / ".snapshots")
                   if len(c.name) == 24 for s in os.scandir(c.path)}
        with sqlite3.connect(self.daemon.state_dir / "snapd.db") as db:
            stored = set(db.execute("SELECT container_id, name FROM snapshots").fetchall())
        assert stored == on_disk


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.daemon.kill()
        # a deep tree left by a failing test would break pytest's own recursive
        # clean-up of old temporary directories in later sessions
        remove.remove_tree(e.pool)


BAD_ITEMS = ["scratch-with-a-mount", "deep-scratch", "journal-unreadable", "journal-unknown-pool"]


@pytest.mark.parametrize("bad", BAD_ITEMS)
def test_one_bad_item_never_stops_a_start_up(env: Env, mounts: Mounts, canary: Path, bad: str) -> None:
    require_root()
    env.stop()
    if bad == "scratch-with-a-mount":
        write_tree(env.scratch / "create-x", {"copied/file": "x"})
        mounts.tmpfs(env.scratch / "create-x" / "copied" / "vol", {"inside": "kept"})
    elif bad == "deep-scratch":
        deep_tree(env.scratch / "delete-deep", DEPTH)
    elif bad == "journal-unreadable":
        env.journal("delete", f"overlay:{env.pool}", "{not json", "snap-20250101-000000")
    else:
        env.journal("create", "overlay:/nowhere", json.dumps({"alias": None}), "snap-20250101-000000")

    env.daemon.start()
    env.serves()
    problems = env.problems()
    source = {"scratch-with-a-mount": "pool", "deep-scratch": None}.get(bad, "journal")
    if source is None:  # the deep tree simply goes
        assert problems == [] and os.listdir(env.scratch) == []
        return
    assert [p["source"] for p in problems] == [source]
    assert env.metric(source) == 1
    if bad == "scratch-with-a-mount":
        assert "mount point" in problems[0]["problem"] and ".quarantine" in problems[0]["problem"]
        assert os.listdir(env.scratch) == []
        assert (env.quarantine / "create-x" / "copied" / "vol" / "inside").read_text() == "kept"
        shown = snapd(env.daemon, "status")
        assert shown.returncode == 0 and "set aside (1" in shown.stdout, shown
        assert str(env.quarantine / "create-x") in shown.stdout
        # set aside, retried at the next start: once the mount is gone, so is the entry
        env.stop()
        mounts.unmount_all()
        env.daemon.start()
        env.serves()
        assert env.problems() == [] and os.listdir(env.quarantine) == []
    else:
        assert "left pending" in problems[0]["problem"]
        env.restart()  # still pending, still shown; start-up still fine
        env.serves()
        assert [p["source"] for p in env.problems()] == ["journal"]
    env.store_matches_disk()


def _snapshot_dir(env: Env, name: str) -> Path:
    return env.pool / ".snapshots" / env.cid / name


def test_a_snapshot_with_a_mount_inside_is_not_deleted(env: Env, mounts: Mounts, canary: Path) -> None:
    require_root()
    snap = _snapshot_dir(env, env.snapshot)
    mounts.tmpfs(snap / "etc" / "vol", {"data": "on the volume"})
    mounts.bind(canary, snap / "canary-bind")
    before = tree_digest(snap)
    r = env.daemon.unix.delete(snaps(env.cid, env.snapshot))
    assert r.status == 409, r.body
    assert str(snap / "etc" / "vol") in r.body["message"]
    assert {d["reason"] for d in r.body["details"] if d.get("field") == "mount"} == {
        f"{snap / 'etc' / 'vol'} is a mount point", f"{snap / 'canary-bind'} is a mount point"}
    env.serves()  # still listed
    assert tree_digest(snap) == before  # still on disk, whole
    assert os.listdir(env.scratch) == []
    mounts.unmount_all()
    env.restart()
    env.serves()
    assert env.problems() == []
    env.store_matches_disk()


def test_an_expired_snapshot_with_a_mount_inside_is_kept_and_retried(
    env: Env, mounts: Mounts, canary: Path,
) -> None:
    """The reaper takes the same route as DELETE: the snapshot stays, listed and whole."""
    require_root()
    r = env.daemon.unix.post(snaps(env.cid), {"expiry": 0.00002})  # ~1.7 s
    assert r.status == 200, r.body
    name = r.data["snapshot"]["name"]
    snap = _snapshot_dir(env, name)
    mounts.tmpfs(snap / "etc" / "vol", {"data": "on the volume"})
    deadline = time.monotonic() + 30
    while env.daemon.unix.get(STATUS).data["reaper"]["failing"] == 0:
        assert time.monotonic() < deadline, "the reaper never tried"
        time.sleep(0.1)
    listed = [s["name"] for s in env.daemon.unix.get(snaps(env.cid)).data["snapshots"]]
    assert name in listed
    assert (snap / "etc" / "vol" / "data").read_text() == "on the volume"
    assert (snap / "etc" / "hostname").read_text() == "web-1"
    mounts.unmount_all()
    env.restart()  # expired while down: pruned at start-up, now that nothing is mounted
    assert name not in [s["name"] for s in env.daemon.unix.get(snaps(env.cid)).data["snapshots"]]
    assert not snap.exists()
    env.store_matches_disk()


def test_a_10000_deep_snapshot_deletes(env: Env, canary: Path) -> None:
    """Built inside the snapshot on disk (the copier's own depth limits are another matter)."""
    snap = _snapshot_dir(env, env.snapshot)
    deep_tree(snap / "deep", DEPTH)
    r = env.daemon.unix.delete(snaps(env.cid, env.snapshot))
    assert r.status == 200, r.body
    assert env.daemon.unix.get(snaps(env.cid)).data["snapshots"] == []
    assert not snap.exists() and os.listdir(env.scratch) == []
    env.restart()
    assert env.problems() == []
    env.store_matches_disk()


def test_restoring_over_a_deep_tree_leaves_no_scratch(env: Env, canary: Path) -> None:
    """The replaced tree goes through the same remover."""
    deep_tree(env.pool / env.cid / "deep", DEPTH)
    r = env.daemon.unix.patch(snaps(env.cid, env.snapshot))
    assert r.status == 200, r.body
    assert not (env.pool / env.cid / "deep").exists()
    assert os.listdir(env.scratch) == []
    env.restart()
    env.serves()
    assert env.problems() == []
    env.store_matches_disk()


def test_a_delete_that_meets_a_mount_midway_puts_the_snapshot_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts: Mounts,
) -> None:
    """A mount the table did not show up front (one made a moment later): the walk stops at
    it, and the snapshot goes back into place, so the store's row stays true."""
    require_root()
    backend = OverlayBackend(str(tmp_path / "pool"))
    (tmp_path / "pool").mkdir()
    asyncio.run(backend.open())
    cid = new_cid()
    write_tree(tmp_path / "pool" / cid, {"etc/hostname": "web-1", "var/log/x": "y"})
    asyncio.run(backend.create(cid, "s1", None, None))
    snap = tmp_path / "pool" / ".snapshots" / cid / "s1"
    mounts.tmpfs(snap / "etc" / "vol", {"data": "on the volume"})
    monkeypatch.setattr(remove, "mounts_under", lambda path, table=None: [])
    error = asyncio.run(backend.delete(cid, [SnapshotRef("s1")]))["s1"]
    assert isinstance(error, TreeHasMounts) and error.paths() == [str(snap / "etc" / "vol")]
    assert (snap / "etc" / "vol" / "data").read_text() == "on the volume"
    assert [f.name for f in asyncio.run(backend.list(cid))[cid]] == ["s1"]
    assert os.listdir(backend.tmpdir) == []
