"""Start-up reconcile: the store is rebuilt from the pools after it is lost."""

from __future__ import annotations

import shutil
from pathlib import Path

from .client import snaps
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import PoolHarness, new_cid

MIRRORS_METADATA = {"zfs"}  # backends that keep alias and expiry on disk


def test_store_loss_is_repaired_from_the_pool(pool: PoolHarness, tmp_path: Path) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    d = DaemonProcess(tmp_path / "d", [pool.spec], tcp=False).start()
    try:
        made = [d.unix.post(snaps(cid), body).data["snapshot"]
                for body in ({"alias": "keep-me", "expiry": 10}, {}, {"alias": "second"})]
        before = d.unix.get(snaps(cid)).data["snapshots"]
    finally:
        assert d.stop() == 0
    shutil.rmtree(d.state_dir)

    d = DaemonProcess(tmp_path / "d", [pool.spec], tcp=False).start()
    try:
        after = d.unix.get(snaps(cid)).data["snapshots"]
        assert [s["name"] for s in after] == [s["name"] for s in before]
        for old, new in zip(before, after):
            # creation time comes back from the filesystem, to the second at least
            assert abs(_ts(new["created_at"]) - _ts(old["created_at"])) < 1.0
            if pool.kind in MIRRORS_METADATA:
                assert new["created_at"] == old["created_at"]
                assert (new["alias"], new["expires_at"]) == (old["alias"], old["expires_at"])
        assert "adopt container=" in d.log_text()
        # adopted snapshots are fully usable
        assert d.unix.patch(snaps(cid, made[0]["name"])).status == 200
        assert d.unix.delete(snaps(cid, made[1]["name"])).status == 200
    finally:
        assert d.stop() == 0


def test_rows_whose_snapshot_vanished_are_forgotten(pool: PoolHarness, tmp_path: Path) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    d = DaemonProcess(tmp_path / "d", [pool.spec], tcp=False).start()
    try:
        gone, kept = (d.unix.post(snaps(cid)).data["snapshot"]["name"] for _ in range(2))
    finally:
        assert d.stop() == 0
    # delete one snapshot behind the daemon's back, with the other daemon that shares the pool
    other = DaemonProcess(tmp_path / "other", [pool.spec], tcp=False).start()
    try:
        assert other.unix.delete(snaps(cid, gone)).status == 200
    finally:
        assert other.stop() == 0
    d = DaemonProcess(tmp_path / "d", [pool.spec], tcp=False).start()
    try:
        assert [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]] == [kept]
        assert f"forget container={cid} snapshot={gone}" in d.log_text()
    finally:
        assert d.stop() == 0


def _ts(stamp: str) -> float:
    from datetime import datetime, timezone

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def test_a_pool_moved_to_another_path_keeps_its_rows(tmp_path: Path) -> None:
    """A pool whose tree moved (renamed directory, new config) takes its rows over, alias and
    expiry included, instead of failing on the duplicate or losing what only the store knew."""
    real = tmp_path / "pool"
    cid = new_cid()
    write_tree(real / cid, {"f": "1"})
    moved = tmp_path / "moved"
    d = DaemonProcess(tmp_path / "d", [f"overlay:{real}"], tcp=False).start()
    try:
        made = d.unix.post(snaps(cid), {"alias": "keep", "expiry": 5}).data["snapshot"]
    finally:
        assert d.stop() == 0
    real.rename(moved)
    d = DaemonProcess(tmp_path / "d", [f"overlay:{moved}"], tcp=False).start()
    try:
        (listed,) = d.unix.get(snaps(cid)).data["snapshots"]
        assert {**listed, "size": 0} == {**made, "size": 0}
        assert "take-over" in d.log_text()
        assert d.unix.delete(snaps(cid, made["name"])).status == 200
    finally:
        assert d.stop() == 0
