"""Expiry: the reaper sleeps until the earliest expires_at and deletes on time."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.overlay import OverlayBackend

from .client import snaps
from .daemon import DaemonProcess
from .digest import write_tree
from .fakes import reaper_world, settle, step
from .harness import new_cid
from .waiting import until

SECOND = 1 / 86400  # in days


@pytest.fixture
async def setup(tmp_path: Path):
    async with reaper_world(tmp_path) as w:
        yield w


def make_container(backend: OverlayBackend) -> str:
    cid = new_cid()
    write_tree(Path(backend.root) / cid, {"f": "x"})
    return cid


async def test_reaper_sleeps_until_the_expiry_then_deletes(setup) -> None:
    service, reaper, clock, backend = setup
    cid = make_container(backend)
    _, row = await service.create(cid, None, SECOND)
    await settle(reaper, clock)
    assert clock.sleeps[-1] == row.expires_at
    assert service.store.get(cid, row.name) is not None
    await step(reaper, clock, 0.999)
    assert service.store.get(cid, row.name) is not None  # not a millisecond early
    await step(reaper, clock, 0.001)
    assert service.store.get(cid, row.name) is None  # gone when it expired, in clock time
    assert not (Path(backend.root) / ".snapshots" / cid / row.name).exists()
    assert reaper.deleted == 1


async def test_a_nearer_expiry_wakes_the_reaper(setup) -> None:
    service, reaper, clock, backend = setup
    cid = make_container(backend)
    _, far = await service.create(cid, None, 30)
    await settle(reaper, clock)
    assert clock.sleeps[-1] == far.expires_at
    _, near = await service.create(cid, None, 2 * SECOND)
    await settle(reaper, clock)
    assert clock.sleeps[-1] == near.expires_at
    await step(reaper, clock, 2.0)
    assert service.store.get(cid, near.name) is None
    assert service.store.get(cid, far.name) is not None
    assert clock.sleeps[-1] == far.expires_at


async def test_many_expire_at_once(setup) -> None:
    service, reaper, clock, backend = setup
    cids = [make_container(backend) for _ in range(5)]
    for cid in cids:
        for _ in range(20):
            await service.create(cid, None, SECOND)
    assert service.store.count() == 100
    await step(reaper, clock, 1.0)
    assert service.store.count() == 0
    assert reaper.deleted == 100 and not reaper.failures
    assert all(not any((Path(backend.root) / ".snapshots" / c).iterdir()) for c in cids)  # kept: name marks


async def test_a_failing_delete_is_retried_with_backoff_and_blocks_nothing(setup) -> None:
    service, reaper, clock, backend = setup
    cid = make_container(backend)
    _, bad = await service.create(cid, None, SECOND)
    _, good = await service.create(cid, None, SECOND)
    backend.fail = {bad.name}
    await step(reaper, clock, 1.0)
    assert service.store.get(cid, good.name) is None
    first = reaper.failures[(cid, bad.name)]
    assert first.attempts == 1 and "injected failure" in first.error
    assert first.retry_at == clock.now() + 1.0
    assert service.store.get(cid, bad.name) is not None  # still listed: it still exists
    await step(reaper, clock, 0.999)
    assert reaper.failures[(cid, bad.name)].attempts == 1  # not retried before its time
    await step(reaper, clock, 0.001)
    assert reaper.failures[(cid, bad.name)].attempts == 2
    assert reaper.failures[(cid, bad.name)].retry_at == clock.now() + 2.0  # the backoff doubles
    backend.fail = set()
    await step(reaper, clock, 2.0)
    assert service.store.get(cid, bad.name) is None
    assert (cid, bad.name) not in reaper.failures and reaper.deleted == 2


async def test_names_in_one_second_get_suffixes(setup) -> None:
    service, _reaper, clock, backend = setup
    cid = make_container(backend)
    names = [(await service.create(cid, None, None))[1].name for _ in range(3)]
    base = names[0]
    assert base.startswith("snap-") and names == [base, f"{base}-2", f"{base}-3"]
    clock.advance(1.0)
    assert (await service.create(cid, None, None))[1].name != base
    # a freed suffix is not reused while a higher one exists? it may be; names stay unique
    await service.delete(cid, f"{base}-2")
    clock.advance(-1.0)
    again = (await service.create(cid, None, None))[1].name
    assert again not in {base, f"{base}-3"}


def test_real_daemon_expires_a_one_second_snapshot(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"f": "x"})
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    try:
        r = d.unix.post(snaps(cid), {"expiry": SECOND})
        assert r.status == 200
        until(lambda: d.unix.get(snaps(cid)).data["snapshots"] == [], "the expired snapshot is no longer listed")
        assert not list((pool / ".snapshots").glob(f"{cid}/*"))
    finally:
        assert d.stop() == 0


def test_expired_while_down_is_pruned_on_start(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"f": "x"})
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    keep = d.unix.post(snaps(cid), {"expiry": 30}).data["snapshot"]["name"]
    gone = d.unix.post(snaps(cid), {"expiry": 1}).data["snapshot"]["name"]
    assert d.stop() == 0
    # two days later (the daemon's clock is moved by its environment)
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False,
                      env={"SNAPD_CLOCK_OFFSET": str(2 * 86400)}).start()
    try:
        # pruned before the socket opened: the very first request sees it gone
        assert [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]] == [keep]
        assert not (pool / ".snapshots" / cid / gone).exists()
        assert "pruned 1 snapshots" in d.log_text()
    finally:
        assert d.stop() == 0
