"""Ownership survives the store: the policy that took a snapshot and its hold are
recorded on the snapshot too (ZFS user properties, a metadata file beside the
snapshot on btrfs and overlay), so a store rebuilt from the pools has them back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from backends import make_backend, sidecar
from backends.base import SnapshotNotFound
from snapd.core.service import SnapshotService
from snapd.core.store import STORE_FILE_SUFFIXES, Store

from .client import snaps
from .digest import write_tree
from .harness import PoolHarness, new_cid
from .test_names import Names


def _owned(rows) -> dict[str, tuple]:
    return {r.name: (r.policy, r.hold_reason, r.hold_since) for r in rows}


async def _rebuilt(pool: PoolHarness, db: Path) -> SnapshotService:
    """A service on a fresh store, settled from the pool alone (a lost store)."""
    for suffix in STORE_FILE_SUFFIXES:
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    backend = make_backend(*pool.spec.split(":", 1))
    await backend.open()
    service = SnapshotService(Store(db), [backend])
    await service.settle()
    return service


async def test_a_rebuilt_store_has_every_policy_and_hold_back(pool: PoolHarness, tmp_path: Path) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    db = tmp_path / "snapd.db"
    service = await _rebuilt(pool, db)
    _, hourly = await service.create(cid, policy="hourly")
    _, manual = await service.create(cid, "by hand")
    _, daily = await service.create(cid, policy="daily ☃")
    await service.hold(cid, daily.name, "pre-upgrade ☃ \"quoted\"")
    await service.hold(cid, manual.name, "audit")
    before = _owned(service.store.list(cid))
    assert before == {hourly.name: ("hourly", None, None), manual.name: (None, "audit", before[manual.name][2]),
                      daily.name: ("daily ☃", "pre-upgrade ☃ \"quoted\"", before[daily.name][2])}
    service.store.close()

    service = await _rebuilt(pool, db)
    try:
        assert _owned(service.store.list(cid)) == before
        await service.release(cid, daily.name)
        await service.delete(cid, hourly.name)
    finally:
        service.store.close()
    service = await _rebuilt(pool, db)
    try:
        assert _owned(service.store.list(cid)) == {manual.name: before[manual.name],
                                                   daily.name: ("daily ☃", None, None)}
        await service.release(cid, manual.name)
        for name in (manual.name, daily.name):
            await service.delete(cid, name)
    finally:
        service.store.close()
    if pool.kind != "zfs":  # every metadata file went with its snapshot
        assert not [p for p in (Path(pool.spec.split(":", 1)[1]) / ".snapshots" / cid).iterdir()
                    if p.name.startswith(".")]


def test_a_hold_survives_losing_the_store_under_a_daemon(pool: PoolHarness, tmp_path: Path) -> None:
    names = Names(pool, tmp_path / "d")
    names.d.start()
    try:
        name = names.create()
        held = names.d.unix.request("PUT", snaps(names.cid, name, "/hold"), {"reason": "keep"}).data["snapshot"]
        names.restart(lose_store=True)
        assert names.d.unix.get(snaps(names.cid, name, "/detail")).data["snapshot"]["hold"] == held["hold"]
        assert names.d.unix.delete(snaps(names.cid, name)).status == 409
        assert names.d.unix.delete(snaps(names.cid, name, "/hold")).status == 200
        names.restart(lose_store=True)
        assert names.d.unix.get(snaps(names.cid, name, "/detail")).data["snapshot"]["hold"] is None
    finally:
        assert names.d.stop() == 0, names.d.log_text()[-3000:]


# -- the metadata file of directory pools (backends/sidecar.py) ------------------------------------

CID = "a" * 24


def test_metadata_round_trips_in_ascii_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    meta = sidecar.Meta("hourly ☃", "pre-upgrade\u2028x", 1_750_000_000.125)
    sidecar.write(tmp_path, CID, "snap-1", meta)
    assert sidecar.read(tmp_path, CID, "snap-1") == meta
    assert sidecar.read_all(tmp_path, CID) == {"snap-1": meta}
    assert [p.name for p in (tmp_path / CID).iterdir()] == [".snap-1.json"]
    assert (tmp_path / CID / ".snap-1.json").read_bytes().isascii()
    sidecar.write(tmp_path, CID, "snap-1", sidecar.Meta())  # nothing to record: no file
    assert list((tmp_path / CID).iterdir()) == []
    assert sidecar.read(tmp_path, CID, "snap-1") == sidecar.Meta()


@pytest.mark.parametrize("content", [
    b"", b"{", b"[]", b'"x"', b'{"policy": 5}', b'{"hold": {"reason": "r"}}', b'{"hold": {"since": 1}}',
    b'{"hold": {"reason": "r", "since": true}}', b'{"hold": "r"}', "{\"policy\": \"\u00e9\"}".encode(),
    b'{"policy": "' + b"x" * (70 * 1024) + b'"}',
])
def test_an_unreadable_metadata_file_is_ignored_with_a_warning(tmp_path: Path, content: bytes,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / CID).mkdir()
    (tmp_path / CID / ".snap-1.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, "backends.sidecar"):
        assert sidecar.read_all(tmp_path, CID) == {}
    assert "unreadable, ignored" in caplog.text


def test_a_symlinked_metadata_file_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / CID).mkdir()
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"policy": "p", "hold": None}))
    (tmp_path / CID / ".snap-1.json").symlink_to(target)
    assert sidecar.read(tmp_path, CID, "snap-1") == sidecar.Meta()


@pytest.mark.parametrize("cid, name", [(CID, "../x"), (CID, ".hidden"), ("../" + CID, "snap-1"), ("x", "snap-1"),
                                       (CID, "a/b"), (CID, "")])
def test_metadata_paths_stay_in_the_container_directory(tmp_path: Path, cid: str, name: str) -> None:
    with pytest.raises(SnapshotNotFound):
        sidecar.write(tmp_path, cid, name, sidecar.Meta("p"))
    assert list(tmp_path.iterdir()) == []


def test_the_sweep_removes_files_whose_snapshot_is_gone(tmp_path: Path) -> None:
    for name in ("kept", "gone"):
        sidecar.write(tmp_path, CID, name, sidecar.Meta("p"))
    (tmp_path / CID / ".half.json.tmp").write_text("{")
    (tmp_path / CID / ".other-file").write_text("not ours")
    removed = sidecar.sweep(tmp_path, lambda c: c == CID, lambda c, n: n == "kept")
    assert removed == 2
    assert sorted(p.name for p in (tmp_path / CID).iterdir()) == [".kept.json", ".other-file"]


async def test_reconcile_takes_a_hold_from_the_disk_where_the_store_missed_it(pool: PoolHarness,
                                                                              tmp_path: Path) -> None:
    """A crash between the disk's hold (written first) and the store's: the disk is right."""
    from backends.base import SnapshotRef

    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    service = await _rebuilt(pool, tmp_path / "snapd.db")
    try:
        _, held = await service.create(cid)
        _, released = await service.create(cid)
        await service.hold(cid, held.name, "on disk only")
        since = service.store.get(cid, held.name).hold_since
        service.store.set_hold(cid, held.name, None, None)  # the store's write was lost
        await service.hold(cid, released.name, "released on disk")
        backend = service.backends[0]
        await backend.release(cid, SnapshotRef(released.name, released.ref))  # ... and the store never heard
        dry = await service.settle(dry_run=True)
        mine = [(r.name, reason) for s in dry.pools for r, reason, _ in s.plan.holds if r.container_id == cid]
        assert sorted(mine) == sorted([(held.name, "on disk only"), (released.name, None)])
        assert service.store.get(cid, held.name).hold_reason is None  # a dry run changes nothing
        await service.settle()
        assert _owned(service.store.list(cid)) == {held.name: (None, "on disk only", since),
                                                   released.name: (None, None, None)}
        await service.release(cid, held.name)
        for name in (held.name, released.name):
            await service.delete(cid, name)
    finally:
        service.store.close()
