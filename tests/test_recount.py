"""Sizes: the service names the snapshots a create or delete may have changed (their
neighbours in time), the backend counts just those, off the request path: coalesced
per container, after a burst, one count at a time, after the requests in flight
(snapd/core/recount.py).  Time is a FakeClock; nothing here sleeps."""

from __future__ import annotations

import os
from pathlib import Path

import asyncio
from typing import Any, Awaitable, Callable

from backends import make_backend
from snapd.core.recount import Recounter
from snapd.core.service import SnapshotService
from snapd.core.store import Store

from .fakes import FakeClock
from .harness import PoolHarness, new_cid
from .waiting import eventually


async def _spied(pool: PoolHarness) -> tuple[Any, list[list[str]], Callable[[str, list[str]], Awaitable[dict]]]:
    """An opened backend of the pool whose sizes() records the names each call asks for
    (sorted, into the list returned), and its real sizes()."""
    kind, _, root = pool.spec.partition(":")
    backend = make_backend(kind, root)
    await backend.open()
    asked: list[list[str]] = []
    real = backend.sizes

    async def spy(cid: str, names: list[str]) -> dict[str, int]:
        asked.append(sorted(names))
        return await real(cid, names)

    backend.sizes = spy  # type: ignore[method-assign]
    return backend, asked, real


async def test_the_service_recounts_just_the_neighbours(pool: PoolHarness, tmp_path: Path) -> None:
    backend, asked, real = await _spied(pool)
    clock = FakeClock()
    store = Store(tmp_path / "snapd.db")
    service = SnapshotService(store, [backend], clock)
    try:
        cid = new_cid()
        data = pool.make_container(cid) / "data"
        names = []
        for _ in range(4):
            data.write_bytes(os.urandom(256 << 10))  # a new file each time: nothing shared
            clock.advance(1)
            _, row = await service.create(cid, None, None)
            await service.recounted()
            own = [row.name] if row.size is None else []
            if names:  # the new one (when its size is not known yet) and its older neighbour
                assert asked[-1] == sorted([names[-1], *own])
            else:
                assert asked == ([own] if own else [])
            names.append(row.name)
        first, second, third, newest = names

        n = len(asked)
        await service.delete(cid, second)
        await service.recounted()
        assert asked[n:] == [sorted([first, third])]  # both neighbours, one count

        await service.delete(cid, newest)
        await service.recounted()
        assert asked[-1] == [third]  # no newer neighbour

        fresh = await real(cid, [first, third])
        assert {r.name: r.size for r in store.list(cid)} == fresh  # the store holds the counts
    finally:
        await service.drain()
        store.close()


async def test_quick_creates_on_one_container_cause_one_recount(pool: PoolHarness, tmp_path: Path) -> None:
    backend, asked, real = await _spied(pool)
    clock, timer = FakeClock(), FakeClock()  # the debounce's time stands still: only a flush counts
    store = Store(tmp_path / "snapd.db")
    service = SnapshotService(store, [backend], clock, recount_timer=timer)
    try:
        cid = new_cid()
        data = pool.make_container(cid) / "data"
        rows = []
        for _ in range(5):
            data.write_bytes(os.urandom(64 << 10))
            clock.advance(1)
            rows.append((await service.create(cid, None, None))[1])
        assert service.recounts.counted == 0 and service.recounts.pending == 1 and asked == []
        await service.recounted()
        assert service.recounts.counted == 1 and service.recounts.asked >= 4
        names = [r.name for r in rows]
        want = set(names[:-1]) | {r.name for r in rows if r.size is None}  # every older neighbour
        assert asked == [sorted(want)]  # ONE count of all of them
        fresh = await real(cid, sorted(want))
        assert {r.name: r.size for r in store.list(cid) if r.name in want} == fresh
    finally:
        await service.drain()
        store.close()


class _Counts:
    """A count function that records its calls, and can be held to see how many run at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.running = self.most = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, backend: object, cid: str, names: list[str]) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        self.calls.append((cid, names))
        try:
            await self.gate.wait()
        finally:
            self.running -= 1


async def test_a_count_waits_for_the_end_of_the_burst_but_no_longer_than_the_cap() -> None:
    clock, counts = FakeClock(), _Counts()
    r = Recounter(counts, timer=clock, delay=1.5, cap=10)
    t0 = clock.now()
    r.ask("p", None, "c", ["a"])
    await eventually(lambda: clock.sleeps and clock.sleeps[-1] == t0 + 1.5, "the count waits 1.5 s")
    for i in range(1, 10):  # a create every second: each pushes the count back, up to the cap
        clock.advance(1)
        r.ask("p", None, "c", [f"n{i}"])
        await eventually(lambda: clock.sleeps[-1] > clock.now(), "the worker asleep again")
        assert counts.calls == []
    clock.advance(0.5)  # t0 + 9.5: due by the ask at t0 + 8, but the one at t0 + 9 came since
    await eventually(lambda: clock.sleeps[-1] > clock.now(), "the worker asleep again")
    assert clock.sleeps[-1] == t0 + 10 and counts.calls == []  # the cap, not t0 + 10.5
    clock.advance(0.5)  # t0 + 10: the cap
    await eventually(lambda: counts.calls, "the count at the cap")
    assert counts.calls == [("c", sorted(["a", *(f"n{i}" for i in range(1, 10))]))]
    assert (r.asked, r.counted, r.pending) == (10, 1, 0)
    await r.close()


async def test_a_due_count_yields_to_requests_in_flight() -> None:
    clock, counts = FakeClock(), _Counts()
    busy = [True]
    r = Recounter(counts, busy=lambda: busy[0], timer=clock, delay=1.5, cap=10)
    t0 = clock.now()
    r.ask("p", None, "c", ["a"])
    clock.advance(1.5)  # due, but requests are in flight: it waits up to `delay` more
    await eventually(lambda: clock.sleeps and clock.sleeps[-1] == t0 + 3.0,
                     "the due count waits for a quiet moment")
    assert counts.calls == []
    busy[0] = False
    r.poke()  # what the service does when its last operation ends
    await eventually(lambda: counts.calls, "the count once the requests ended")
    assert clock.now() == t0 + 1.5  # not by time: by the quiet moment
    await r.close()


async def test_one_count_at_a_time_and_a_flush_runs_everything_now() -> None:
    clock, counts = FakeClock(), _Counts()
    r = Recounter(counts, busy=lambda: True, timer=clock)
    counts.gate.clear()
    for cid in ("c1", "c2", "c3"):
        r.ask("p", None, cid, ["a"])
    flush = asyncio.ensure_future(r.flush())  # no delay, no waiting for quiet
    await eventually(lambda: counts.calls, "the first count")
    assert counts.running == 1 and not flush.done()
    counts.gate.set()
    await flush
    assert sorted(c for c, _ in counts.calls) == ["c1", "c2", "c3"] and counts.most == 1
    assert r.pending == 0 and clock.now() == 1_750_000_000.0  # no time passed
