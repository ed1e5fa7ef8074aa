"""Restore safety, full pools, restore hooks and on-demand reconcile, on real daemons.

- a process with its cwd in a container: restore answers 409 naming it; after it exits, restore works
- a pool below its free-space reserve: create answers 507 and changes nothing
- a real small filesystem (tmpfs) filled up: reserve refusal, and ENOSPC in mid-copy leaves nothing
- pre_restore / post_restore hooks
- reconcile --dry-run shows the plan and changes nothing; a real run applies it
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from .client import snaps
from .crash import container_digest, pending_journal, strays
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import PoolHarness, is_root, new_cid


def _daemon(workdir: Path, pools: list[str], config: str | None = None) -> DaemonProcess:
    extra = []
    if config is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.toml").write_text(config)
        extra = ["--config", str(workdir / "config.toml")]
    return DaemonProcess(workdir, pools, tcp=False, extra=extra).start()


@contextlib.contextmanager
def running(workdir: Path, pools: list[str], config: str | None = None) -> Iterator[DaemonProcess]:
    d = _daemon(workdir, pools, config)
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log_text()[-2000:]


def test_busy_container_is_not_restored(pool: PoolHarness, tmp_path: Path) -> None:
    cid = new_cid()
    path = pool.make_container(cid)
    write_tree(path, {"f": "1", "sub/g": "2"})
    with running(tmp_path / "d", [pool.spec]) as d:
        name = d.unix.post(snaps(cid)).data["snapshot"]["name"]
        write_tree(path, {"f": "changed"})
        changed = container_digest(pool, cid)
        child = subprocess.Popen(["sleep", "60"], cwd=path / "sub")
        try:
            r = d.unix.patch(snaps(cid, name))
            assert r.status == 409, r.body
            assert any(x.get("value") == str(child.pid) and "sleep" in x["reason"]
                       for x in r.body["details"]), r.body
            assert f"pid {child.pid} (sleep)" in r.body["message"]
            assert container_digest(pool, cid) == changed
        finally:
            child.kill()
            child.wait()
        r = d.unix.patch(snaps(cid, name))
        assert r.status == 200, r.body
        assert (pool.container_path(cid) / "f").read_text() == "1"
        assert strays(pool, cid, {name}) == []


def test_create_below_the_reserve_is_refused(pool: PoolHarness, tmp_path: Path) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    with running(tmp_path / "d", [pool.spec]) as d:  # the default reserve lets it through
        kept = d.unix.post(snaps(cid)).data["snapshot"]["name"]
    config = f'reserve = "1GiB"\n[pool_options."{pool.spec}"]\nreserve = "100TiB"\n'
    with running(tmp_path / "d", [pool.spec], config) as d:
        before = set(pool.artifacts())
        r = d.unix.post(snaps(cid), {"alias": "x"})
        assert r.status == 507, r.body
        assert "reserve" in r.body["message"] and "no snapshot was created" in r.body["message"]
        assert [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]] == [kept]
        assert set(pool.artifacts()) == before
        assert pending_journal(d) == []


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs: a small real filesystem that fills up."""
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "snapd-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_full_filesystem(tmpfs: Path, tmp_path: Path) -> None:
    from .harness.overlay import OverlayHarness

    pool = OverlayHarness(tmpfs)
    cid = new_cid()
    path = pool.make_container(cid)
    write_tree(path, {"small": "1"})
    work = tmp_path / "d"
    with running(work, [pool.spec], 'reserve = "16MiB"\n') as d:
        kept = d.unix.post(snaps(cid)).data["snapshot"]["name"]
        (path / "big").write_bytes(os.urandom(20 << 20))  # not in any snapshot: a create copies it
        filler = tmpfs / "filler"
        filler.write_bytes(b"\0" * (_free(tmpfs) - (10 << 20)))  # ~10 MiB left, under the reserve
        r = d.unix.post(snaps(cid))
        assert r.status == 507 and "reserve" in r.body["message"], r.body
        assert [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]] == [kept]
        assert strays(pool, cid, {kept}) == []
    # no reserve: the copy itself runs out of space half-way; nothing half-made remains
    with running(work, [pool.spec], "reserve = 0\n") as d:
        r = d.unix.post(snaps(cid))
        assert r.status == 507 and "reserve" not in r.body["message"], r.body  # ENOSPC, mid-copy
        assert [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]] == [kept]
        assert strays(pool, cid, {kept}) == []
        assert pending_journal(d) == []
        filler.unlink()
        r = d.unix.post(snaps(cid))
        assert r.status == 200, r.body


def test_restore_hooks(tmp_path: Path) -> None:
    from .harness.overlay import OverlayHarness

    pool = OverlayHarness(tmp_path / "p")
    cid = new_cid()
    path = pool.make_container(cid)
    write_tree(path, {"f": "1"})
    record, veto = tmp_path / "hooks.log", tmp_path / "veto"
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import os, sys\n"
        f"open({str(record)!r}, 'a').write(os.environ['SNAPD_HOOK'] + ' ' + os.environ['SNAPD_CONTAINER_ID'] + '\\n')\n"
        f"if os.environ['SNAPD_HOOK'] == 'pre_restore' and os.path.exists({str(veto)!r}):\n"
        "    sys.stderr.write('container will not stop'); sys.exit(3)\n"
    )
    config = (f'[pool_options."{pool.spec}"]\n'
              f'pre_restore = ["{sys.executable}", "{hook}"]\n'
              f'post_restore = ["{sys.executable}", "{hook}"]\nhook_timeout = 20\n')
    with running(tmp_path / "d", [pool.spec], config) as d:
        name = d.unix.post(snaps(cid)).data["snapshot"]["name"]
        write_tree(path, {"f": "2"})
        veto.touch()
        r = d.unix.patch(snaps(cid, name))
        assert r.status == 409, r.body
        assert "container will not stop" in r.body["details"][0]["reason"]
        assert (path / "f").read_text() == "2"
        assert record.read_text().split("\n")[:-1] == [f"pre_restore {cid}"]
        veto.unlink()
        assert d.unix.patch(snaps(cid, name)).status == 200
        assert (path / "f").read_text() == "1"
        assert record.read_text().split("\n")[1:-1] == [f"pre_restore {cid}", f"post_restore {cid}"]


def test_reconcile_dry_run_then_apply(pool: PoolHarness, tmp_path: Path) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    with running(tmp_path / "d", [pool.spec]) as d:
        s1, s2 = (d.unix.post(snaps(cid), {"alias": a}).data["snapshot"]["name"] for a in ("a", "b"))
        db = sqlite3.connect(str(d.state_dir / "snapd.db"))
        with db:  # drift behind the daemon's back: a row lost, a row for nothing
            db.execute("DELETE FROM snapshots WHERE container_id = ? AND name = ?", [cid, s1])
            db.execute("INSERT INTO snapshots (container_id, name, pool, created_at, ref) "
                       "SELECT container_id, 'ghost', pool, created_at, ref FROM snapshots "
                       "WHERE container_id = ? AND name = ?", [cid, s2])
        db.close()
        listed = lambda: sorted(s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"])  # noqa: E731
        drifted = listed()
        assert drifted == sorted([s2, "ghost"])

        out = subprocess.run([sys.executable, "-m", "snapd", "reconcile", "--dry-run", "--socket", str(d.socket)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"would adopt {cid}/{s1}" in out.stdout and f"would forget {cid}/ghost" in out.stdout
        r = d.unix.post("/api/v1/admin/reconcile", {"dry_run": True})
        assert r.status == 200 and r.data["dry_run"] is True
        assert listed() == drifted  # nothing changed

        r = d.unix.post("/api/v1/admin/reconcile", {"dry_run": False})
        assert r.status == 200, r.body
        (mine,) = [p for p in r.data["pools"] if p["pool"].endswith(pool.root if isinstance(pool.root, str)
                                                                      else str(pool.root))]
        assert {(a["container_id"], a["snapshot"]) for a in mine["adopt"]} >= {(cid, s1)}
        assert {(a["container_id"], a["snapshot"]) for a in mine["forget"]} >= {(cid, "ghost")}
        assert listed() == sorted([s1, s2])
        assert f"adopt container={cid} snapshot={s1}" in d.log_text()
        assert d.unix.post("/api/v1/admin/reconcile", {"dry_run": "yes"}).status == 400
        # idempotent: a second run has nothing to do for this container
        again = d.unix.post("/api/v1/admin/reconcile", {}).data["pools"]
        assert not any(a["container_id"] == cid for p in again for a in p["adopt"] + p["forget"])


def test_reserve_parsing() -> None:
    from snapd.core.settings import PoolPolicy
    from snapd.host.config import DEFAULT_RESERVE, DEFAULT_RESERVE_INODES, ConfigError, parse_reserve

    # the documented defaults are the service's defaults
    assert PoolPolicy().reserve == parse_reserve(DEFAULT_RESERVE, "x")
    assert PoolPolicy().reserve_inodes == parse_reserve(DEFAULT_RESERVE_INODES, "x", "inodes")

    assert parse_reserve("1GiB,5%", "x").required(100 << 30) == 1 << 30
    assert parse_reserve("1GiB,5%", "x").required(10 << 30) == (10 << 30) // 20
    assert parse_reserve("512MiB", "x").required(None) == 512 << 20
    assert parse_reserve("5%", "x").required(None) == 0  # size unknown: no check
    assert parse_reserve(0, "x").required(1 << 40) == 0
    for bad in ("", "-1", "5%%", "100%", "1GiB,2GiB", "lots", True, -5):
        with pytest.raises(ConfigError):
            parse_reserve(bad, "x")
    assert parse_reserve("100000,5%", "x", "inodes").required(10_000_000) == 100_000
    assert parse_reserve("100000,5%", "x", "inodes").required(1000) == 50
    assert str(parse_reserve("100000,5%", "x", "inodes")) == "100000 inodes or 5%"
    assert parse_reserve(0, "x", "inodes").off and parse_reserve("5%,0", "x", "inodes").off
    for bad in ("1k", "1GiB", "1.5", "5%,6%", "-3"):
        with pytest.raises(ConfigError):
            parse_reserve(bad, "x", "inodes")


def test_layout_setting(pool: PoolHarness, tmp_path: Path) -> None:
    """`layout` is an overlay pool's setting: a value other than auto elsewhere stops start-up."""
    from snapd.host.config import ConfigError, build

    for bad in ("upper", "", 1):
        with pytest.raises(ConfigError, match="layout must be one of auto, overlay, whole"):
            build({"pool_options": {pool.spec: {"layout": bad}}}, {})
    config = f'[pool_options."{pool.spec}"]\nlayout = "whole"\n'
    if pool.kind == "overlay":
        with running(tmp_path / "d", [pool.spec], config) as d:
            assert d.unix.get("/api/v1/admin/status").status == 200
        return
    (tmp_path / "config.toml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "snapd", "serve", "--socket", str(tmp_path / "api.sock"),
         "--state-dir", str(tmp_path / "state"), "--pool", pool.spec, "--config", str(tmp_path / "config.toml")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "layout applies to overlay pools only" in result.stderr and "Traceback" not in result.stderr
