"""Deletes expired snapshots on time: sleeps until the earliest expires_at.

Not a poll: the reaper sleeps until the earliest expiry in the store, and
the service wakes it when a nearer one appears.  Expired snapshots are
deleted in batches per container (one backend call each), containers in
parallel; a snapshot that fails to delete is retried with backoff and
never holds up the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

from .clock import Clock
from .service import SnapshotService

log = logging.getLogger("snapd.reaper")

BATCH = 500
PARALLEL = 4
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0


@dataclass
class _Failure:
    attempts: int
    retry_at: float
    error: str


class Reaper:
    """The expiry task of one daemon."""

    def __init__(self, service: SnapshotService, clock: Clock | None = None) -> None:
        self.service = service
        self.clock = clock or service.clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.failures: dict[tuple[str, str], _Failure] = {}
        self.deleted = 0
        self.lags: list[float] = []
        """Seconds between expires_at and the delete, most recent last (bounded)."""
        service.on_expiry_set = self.notify

    def notify(self, when: float) -> None:
        """A snapshot now expires at `when`: wake up if that is sooner than planned."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reaper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def next_wake(self, now: float) -> float | None:
        """When the next pass is due: the earliest future expiry or retry."""
        candidates = [f.retry_at for f in self.failures.values()]
        upcoming = self.service.store.next_expiry_after(now)
        if upcoming is not None:
            candidates.append(upcoming)
        if self._has_due_work(now):
            return now
        return min(candidates) if candidates else None

    def _has_due_work(self, now: float) -> bool:
        return any(
            (r.container_id, r.name) not in self.failures
            or self.failures[(r.container_id, r.name)].retry_at <= now
            for r in self.service.store.expired(now, limit=len(self.failures) + 1)
        )

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            try:
                await self.reap(now)
            except Exception:  # the reaper must outlive any one bad pass
                log.exception("reaper pass failed")
                await asyncio.sleep(1)
            now = self.clock.now()
            when = self.next_wake(now)
            if when is not None and when <= now:
                continue
            if when is None:
                await self._wake.wait()
            else:
                await self.clock.sleep_until(when, self._wake)

    async def reap(self, now: float) -> int:
        """Delete everything expired at `now` that is not waiting for a retry."""
        total = 0
        while True:
            due = [
                r
                for r in self.service.store.expired(now, limit=BATCH + len(self.failures))
                if (f := self.failures.get((r.container_id, r.name))) is None or f.retry_at <= now
            ][:BATCH]
            if not due:
                return total
            groups: dict[tuple[str, str], list[str]] = defaultdict(list)
            for r in due:
                groups[(r.container_id, r.pool)].append(r.name)
            expiry = {(r.container_id, r.name): r.expires_at for r in due}
            sem = asyncio.Semaphore(PARALLEL)

            async def one(cid: str, pool: str, names: list[str]) -> int:
                async with sem:
                    results = await self.service.delete_expired(cid, pool, names, now)
                done = 0
                for name in names:
                    error = results.get(name)
                    if name in results and error is None:
                        done += 1
                        self.deleted += 1
                        self.failures.pop((cid, name), None)
                        self._record_lag(expiry[(cid, name)])
                    elif name in results:
                        self._failed(cid, name, str(error))
                    else:
                        # gone from the store meanwhile, or its pool is not configured
                        if self.service.store.get(cid, name) is not None:
                            self._failed(cid, name, f"pool {pool} is not configured")
                return done

            counts = await asyncio.gather(
                *(one(cid, pool, names) for (cid, pool), names in groups.items()),
                return_exceptions=True,
            )
            progressed = 0
            for (cid, pool), names, count in zip(groups, groups.values(), counts):
                if isinstance(count, BaseException):
                    for name in names:
                        self._failed(cid, name, str(count) or type(count).__name__)
                else:
                    progressed += count
            total += progressed
            if not progressed and len(due) < BATCH:
                return total

    def _record_lag(self, expires_at: float | None) -> None:
        if expires_at is None:
            return
        self.lags.append(max(0.0, self.clock.now() - expires_at))
        if len(self.lags) > 10_000:
            del self.lags[:5_000]

    def _failed(self, cid: str, name: str, error: str) -> None:
        previous = self.failures.get((cid, name))
        attempts = previous.attempts + 1 if previous else 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempts - 1))
        self.failures[(cid, name)] = _Failure(attempts, self.clock.now() + delay, error)
        log.warning(
            "expired snapshot not deleted container=%s snapshot=%s attempt=%d retry_in=%.0fs error=%s",
            cid, name, attempts, delay, error,
        )
