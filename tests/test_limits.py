"""Limits a tenant cannot push past, and files no other local user can read, on real daemons.

- an inode reserve on a real ext4 with few inodes: creates stop with 507 naming inodes
  before the pool runs out, and the refused create changes nothing
- snapshot count limits per container and per project (every backend): 507 naming the
  limit, nothing changed; shown by `snapd status`; still in force after a restart
- the state directory is 0700 and the store's files 0600 whatever the umask, also when
  an earlier run left them open
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from .aftercheck import HostCheck
from .client import snaps
from .crash import pending_journal
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import PoolHarness, new_cid
from .harness.overlay import OverlayHarness
from .loopfs import ext4
from .test_safety import running


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A real ext4 filesystem with about 256 inodes, loop-mounted (detached on teardown)."""
    with ext4(tmp_path, 64 << 20, "-N", "256") as mnt:
        yield mnt


def _inodes(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_favail, st.f_files


def test_inode_reserve_stops_creates_before_the_pool_runs_out(
        few_inodes: Path, tmp_path: Path, host_unharmed: HostCheck) -> None:
    pool = OverlayHarness(few_inodes)
    cid = new_cid()
    path = pool.make_container(cid)
    write_tree(path, {f"d{i}/f": str(i) for i in range(8)})  # ~17 inodes per snapshot
    free, total = _inodes(few_inodes)
    assert total <= 1024 and free > total // 2, (free, total)
    config = 'reserve = 0\nreserve_inodes = "30%"\n'
    with running(tmp_path / "d", [pool.spec], config) as d:
        made = []
        for _ in range(total):  # bounded: each create uses at least one inode
            r = d.unix.post(snaps(cid))
            if r.status != 200:
                break
            made.append(r.data["snapshot"]["name"])
        assert r.status == 507, r.body
        free_now = _inodes(few_inodes)[0]
        need = int(total * 0.3)
        assert free_now < need and len(made) >= 3, (free_now, need, made)
        assert r.body["message"] == (
            f"Pool {pool.spec} has {free_now} free inodes, below its reserve of {need} (30%); "
            "no snapshot was created. Free inodes or delete snapshots first."), r.body

        before = (set(pool.artifacts()), _inodes(few_inodes))
        again = d.unix.post(snaps(cid), {"alias": "x"})
        assert again.status == 507 and "free inodes" in again.body["message"], again.body
        assert (set(pool.artifacts()), _inodes(few_inodes)) == before  # the disk: not one inode
        assert sorted(s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]) == sorted(made)
        assert pending_journal(d) == []
        (path / "still-room").write_text("the container can still write")  # what the reserve is for

        status = d.unix.get("/api/v1/admin/status").data["pools"][0]
        assert status["free_inodes"] is not None and status["free_inodes"] < need
        assert status["limits"]["reserve_inodes"] == "30%"
    host_unharmed(d, pool, [cid])


def _set_project(d: DaemonProcess, cid: str, project: str) -> None:
    r = d.unix.request("PUT", f"/api/v1/admin/containers/{cid}/project", {"project": project})
    assert r.status == 200, r.body


def test_snapshot_count_limits(pool: PoolHarness, tmp_path: Path, host_unharmed: HostCheck) -> None:
    a, b, c = new_cid(), new_cid(), new_cid()
    for cid in (a, b, c):
        write_tree(pool.make_container(cid), {"f": cid})
    config = (f"max_snapshots_per_container = 2\n[pool_options.\"{pool.spec}\"]\n"
              "max_snapshots_per_project = 3\n")
    work = tmp_path / "d"
    with running(work, [pool.spec], config) as d:
        for cid in (a, b):
            _set_project(d, cid, "web")

        def create(cid: str) -> tuple[int, dict]:
            r = d.unix.post(snaps(cid))
            return r.status, r.body

        assert [create(a)[0], create(a)[0]] == [200, 200]
        before = (set(pool.artifacts()), [s["name"] for s in d.unix.get(snaps(a)).data["snapshots"]])
        status, body = create(a)
        assert status == 507, body
        assert body["message"] == (f"Container {a} has 2 snapshots, its limit (max_snapshots_per_container = 2); "
                                   "delete some or raise the limit; no snapshot was created.")
        assert (set(pool.artifacts()), [s["name"] for s in d.unix.get(snaps(a)).data["snapshots"]]) == before
        assert create(b)[0] == 200  # the project's third
        status, body = create(b)
        assert status == 507, body
        assert body["message"] == (f"Project web has 3 snapshots in pool {pool.spec}, its limit "
                                   "(max_snapshots_per_project = 3); delete some or raise the limit; "
                                   "no snapshot was created.")
        assert [create(c)[0], create(c)[0]] == [200, 200]  # unlabelled: only its own limit
        assert pending_journal(d) == []

        shown = d.unix.get("/api/v1/admin/status").data["pools"][0]["limits"]
        assert shown["max_snapshots_per_container"] == 2 and shown["max_snapshots_per_project"] == 3
        out = subprocess.run([sys.executable, "-m", "snapd", "status", "--socket", str(d.socket)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert re.search(r"snapshots per container at most 2, per project at most 3", out.stdout), out.stdout

    # a fresh daemon learns the projects from the pool (one batched read) and still counts them
    with running(work, [pool.spec], config) as d:
        def refused(cid: str) -> str:
            r = d.unix.post(snaps(cid))
            assert r.status == 507, r.body
            return r.body["message"]

        assert "Project web has 3 snapshots" in refused(b)  # a: 2, b: 1
        _set_project(d, c, "web")
        assert "Project web has 5 snapshots" in refused(b)  # c's 2 count from now on
        oldest = d.unix.get(snaps(a)).data["snapshots"][-1]["name"]
        assert d.unix.delete(snaps(a, oldest)).status == 200
        _set_project(d, c, "other")
        assert d.unix.post(snaps(b)).status == 200  # web: a 1, b 2
        assert "Project web has 3 snapshots" in refused(a)  # a itself is below its own limit
        assert f"Container {c} has 2 snapshots" in refused(c)
    host_unharmed(d, pool, [a, b, c])


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _start_with_umask(workdir: Path, state: Path, pool: str) -> DaemonProcess:
    old = os.umask(0o022)
    try:
        return DaemonProcess(workdir, [pool], tcp=False, state_dir=state).start()
    finally:
        os.umask(old)


@pytest.mark.parametrize("earlier", ["fresh", "open-modes"])
def test_state_files_are_private(tmp_path: Path, earlier: str, host_unharmed: HostCheck) -> None:
    pool = OverlayHarness(tmp_path / "p")
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    state = tmp_path / "state"
    if earlier == "open-modes":  # as a killed run outside the unit with umask 022 left them
        d = _start_with_umask(tmp_path / "d0", state, pool.spec)
        assert d.unix.post(snaps(cid)).status == 200
        d.kill()  # the WAL and its index stay behind
        os.chmod(state, 0o755)
        for f in state.iterdir():
            os.chmod(f, 0o644)
        assert {f.name for f in state.iterdir()} == {"snapd.db", "snapd.db-wal", "snapd.db-shm"}
    d = _start_with_umask(tmp_path / "d", state, pool.spec)
    try:
        assert d.unix.post(snaps(cid)).status == 200  # a write: the WAL and its index exist
        files = {f.name: _mode(f) for f in state.iterdir()}
        assert _mode(state) == 0o700
        assert files == {"snapd.db": 0o600, "snapd.db-wal": 0o600, "snapd.db-shm": 0o600}, files
    finally:
        assert d.stop() == 0, d.log_text()[-2000:]
    host_unharmed(d, pool, [cid])
