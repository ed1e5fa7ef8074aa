"""The pruner's last line of defence and its paced reads, in-process on a real overlay pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from .digest import write_tree
from .fakes import reaper_world
from .harness import new_cid


@pytest.fixture
async def world(tmp_path: Path):
    async with reaper_world(tmp_path) as w:
        yield w


async def test_delete_pruned_deletes_only_the_policys_own_unheld_snapshots(world) -> None:
    """Whatever names the pruner passes, the service deletes only snapshots of that policy that
    nobody holds, checked under the container's lock."""
    service, _reaper, clock, backend = world
    cid = new_cid()
    write_tree(Path(backend.root) / cid, {"f": "x"})
    own, held, manual, foreign = [(await service.create(cid, policy=p))[1] for p in ("hourly", "hourly", None, "daily")]
    service.store.set_hold(cid, held.name, "keep", 1)
    names = [own.name, held.name, manual.name, foreign.name, "snap-does-not-exist"]
    results = await service.delete_pruned(cid, backend.pool_id, names, "hourly")
    assert results == {own.name: None}
    assert [r.name for r in service.snapshots(cid)] == [foreign.name, manual.name, held.name]
    assert await service.delete_pruned(cid, "overlay:/elsewhere", [foreign.name], "daily") == {}  # not its pool


async def test_a_paced_read_returns_every_snapshot_in_list_order(world) -> None:
    service, _reaper, clock, backend = world
    cid = new_cid()
    write_tree(Path(backend.root) / cid, {"f": "x"})
    for _ in range(7):
        await service.create(cid)  # some within one second: names -2, -3 order them
        clock.advance(0.4)
    assert [r.name for r in await service.snapshots_paced(cid, page=3)] == [r.name for r in service.snapshots(cid)]
    assert len(service.snapshots(cid)) == 7
    assert await service.snapshots_paced(new_cid(), page=3) == []
