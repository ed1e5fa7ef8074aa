"""Ownership and holds (issue 13): a snapshot records the policy that took it; a
held snapshot outlives every rule that would delete it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .digest import write_tree
from .fakes import reaper_world, settle, step
from .harness import new_cid

SECOND = 1 / 86400  # in days


@pytest.fixture
async def world(tmp_path: Path):
    async with reaper_world(tmp_path) as w:
        yield w


def make_container(world) -> str:
    cid = new_cid()
    write_tree(Path(world[3].root) / cid, {"f": "x"})
    return cid


async def test_create_records_the_policy_that_took_it(world) -> None:
    service = world[0]
    cid = make_container(world)
    _, by_policy = await service.create(cid, policy="hourly")
    _, by_request = await service.create(cid, "mine", None)
    assert (by_policy.policy, by_request.policy) == ("hourly", None)
    assert service.store.get(cid, by_policy.name).policy == "hourly"
    assert service.store.get(cid, by_request.name).policy is None


async def test_the_reaper_passes_over_a_held_snapshot(world) -> None:
    service, reaper, clock, backend = world
    cid = make_container(world)
    _, held = await service.create(cid, None, SECOND)
    _, free = await service.create(cid, None, 2 * SECOND)
    service.store.set_hold(cid, held.name, "pre-upgrade", 1)
    await settle(reaper, clock)
    assert clock.sleeps[-1] == free.expires_at
    await step(reaper, clock, 3.0)
    assert service.store.get(cid, free.name) is None
    assert service.store.get(cid, held.name) is not None
    assert (Path(backend.root) / ".snapshots" / cid / held.name).exists()


async def test_a_create_rolled_forward_from_the_journal_keeps_its_policy(world) -> None:
    service, _reaper, clock, backend = world
    cid = make_container(world)
    _, row = await service.create(cid, policy="hourly")
    service.store.delete(cid, row.name)  # as if the daemon died between the disk and the store
    service.store.journal_begin("create", cid, row.name, backend.pool_id,
                                {"alias": None, "expires_at": None, "created_at": row.created_at,
                                 "policy": "hourly"}, clock.now())
    await service.settle()
    assert service.store.get(cid, row.name).policy == "hourly"


async def test_a_hold_keeps_its_first_time_and_takes_a_new_reason(world) -> None:
    service, _reaper, clock, _backend = world
    cid = make_container(world)
    _, row = await service.create(cid)
    _, held = await service.hold(cid, row.name, "pre-upgrade")
    assert (held.hold_reason, held.hold_since) == ("pre-upgrade", clock.now())
    first = clock.now()
    clock.advance(60)
    _, again = await service.hold(cid, row.name, "audit 2025")
    assert (again.hold_reason, again.hold_since) == ("audit 2025", first)
    assert service.store.get(cid, row.name) == again
    _, released = await service.release(cid, row.name)
    assert (released.hold_reason, released.hold_since) == (None, None)
    assert service.store.get(cid, row.name) == released
    _, unheld = await service.release(cid, row.name)  # releasing what is not held changes nothing
    assert unheld == released


async def test_a_delete_of_a_held_snapshot_is_a_conflict_naming_the_hold(world) -> None:
    from snapd.core.errors import Conflict

    service, _reaper, _clock, backend = world
    cid = make_container(world)
    _, row = await service.create(cid)
    await service.hold(cid, row.name, "pre-upgrade")
    with pytest.raises(Conflict, match=f"^snapshot {row.name} is held: pre-upgrade$"):
        await service.delete(cid, row.name)
    assert service.store.get(cid, row.name) is not None
    assert (Path(backend.root) / ".snapshots" / cid / row.name).is_dir()
    await service.release(cid, row.name)
    await service.delete(cid, row.name)
    assert service.store.get(cid, row.name) is None


async def test_a_held_snapshot_can_be_restored(world) -> None:
    service, _reaper, _clock, backend = world
    cid = make_container(world)
    _, row = await service.create(cid)
    await service.hold(cid, row.name, "known good")
    write_tree(Path(backend.root) / cid, {"f": "changed"})
    _, restored = await service.restore(cid, row.name)
    assert (Path(backend.root) / cid / "f").read_text() == "x"
    assert restored.hold_reason == "known good"


async def test_released_after_its_expiry_a_snapshot_goes_at_once(world) -> None:
    service, reaper, clock, _backend = world
    cid = make_container(world)
    _, row = await service.create(cid, None, SECOND)
    await service.hold(cid, row.name, "investigating")
    await step(reaper, clock, 10.0)
    assert service.store.get(cid, row.name) is not None
    await service.release(cid, row.name)
    await settle(reaper, clock)
    assert service.store.get(cid, row.name) is None


async def test_a_hold_placed_after_the_reaper_chose_its_names_still_wins(world) -> None:
    service, _reaper, clock, _backend = world
    cid = make_container(world)
    _, row = await service.create(cid, None, SECOND)
    clock.advance(5.0)
    due = [r.name for r in service.expired(cid, clock.now(), 10)]
    assert due == [row.name]
    await service.hold(cid, row.name, "just in time")
    assert await service.delete_expired(cid, row.pool, due, clock.now()) == {}
    assert service.store.get(cid, row.name) is not None
