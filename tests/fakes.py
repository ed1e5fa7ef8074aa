"""Test doubles: a clock that moves when told, and the real overlay backend with
injected delete failures and a gate to hold operations mid-way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from backends.base import BackendError, SnapshotRef
from backends.overlay import OverlayBackend
from snapd.core.clock import Clock
from snapd.core.reaper import Reaper
from snapd.core.service import SnapshotService
from snapd.core.store import Store

from .waiting import DEADLINE, eventually

__all__ = ["FakeClock", "GatedOverlay", "eventually", "reaper_world", "settle", "step"]


class FakeClock(Clock):
    """A clock that moves only when told; records what the reaper sleeps until."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        super().__init__(offset=0)
        self.t = start
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def now(self) -> float:
        return round(self.t * 1000) / 1000

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self._moved.set()

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None:
        self.sleeps.append(when)
        while self.now() < when and not wake.is_set():
            self._moved.clear()
            waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(self._moved.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()


async def settle(reaper: Reaper, clock: FakeClock) -> None:
    """Wait until the reaper has done everything due at the clock's present time:
    every due snapshot deleted (and counted) or failed and waiting for its retry,
    no worker running, the dispatcher asleep until a later time."""
    now = clock.now()
    try:
        await asyncio.wait_for(reaper.settled(now), DEADLINE)
    except asyncio.TimeoutError:
        raise AssertionError(f"the reaper did not settle at t={now} within {DEADLINE:g}s: "
                             f"{reaper.working} workers still running") from None


async def step(reaper: Reaper, clock: FakeClock, seconds: float) -> None:
    """Move the clock forward and wait until the reaper has caught up with it."""
    clock.advance(seconds)
    await settle(reaper, clock)


class GatedOverlay(OverlayBackend):
    """The real overlay backend; deleting names in `fail` errors, and create/restore
    can be held at a gate to look at the world mid-operation."""

    fail: set[str]
    gate: asyncio.Event | None
    entered: asyncio.Event

    async def delete(self, cid: str, snaps_: list[SnapshotRef]) -> dict[str, BackendError | None]:
        results = await super().delete(cid, [s for s in snaps_ if s.name not in self.fail])
        results.update({s.name: BackendError("injected failure") for s in snaps_ if s.name in self.fail})
        return results

    async def _held(self) -> None:
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()

    async def create(self, cid, name, alias, expires_at, created_at=None, *, policy=None):  # type: ignore[override]
        await self._held()
        return await super().create(cid, name, alias, expires_at, created_at=created_at, policy=policy)

    async def restore(self, cid, snap, others):  # type: ignore[override]
        await self._held()
        return await super().restore(cid, snap, others)


@contextlib.asynccontextmanager
async def reaper_world(tmp_path: Path) -> AsyncIterator[tuple[SnapshotService, Reaper, FakeClock, GatedOverlay]]:
    """A service and a running reaper on a real overlay pool, with a fake clock."""
    root = tmp_path / "pool"
    root.mkdir()
    backend = GatedOverlay(str(root))
    backend.fail, backend.gate, backend.entered = set(), None, asyncio.Event()
    await backend.open()
    clock = FakeClock()
    store = Store(tmp_path / "snapd.db")
    service = SnapshotService(store, [backend], clock)
    reaper = Reaper(service, clock)
    reaper.start()
    try:
        yield service, reaper, clock, backend
    finally:
        if backend.gate is not None:
            backend.gate.set()
        await reaper.stop()
        await service.drain()
        store.close()
