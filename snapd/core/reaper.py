"""Deletes expired snapshots on time: sleeps until the earliest expires_at.

Not a poll: a dispatcher sleeps until the earliest expiry in the store (or
the earliest retry), and the service wakes it when a nearer one appears.
When it wakes it asks the store which containers have snapshots due (one
GROUP BY over the partial expires_at index) and starts one worker per such
container, at most MAX_WORKERS at once.

A worker deletes its container's due snapshots in chunks of CHUNK names,
one backend call per chunk (one `zfs destroy ds@a,b,...` on OpenZFS, btrfs
ioctls without a commit wait, one thread of unlinks for overlay).  Between
chunks it lets go of the container's lock and yields to the event loop, so
requests queued on that container -- and everything else -- get their turn
during a mass expiry.  At most PARALLEL chunks run at once, daemon-wide.

A container that is busy (a create or restore holds its lock) does not tie
up a slot: its worker waits outside the slot until the lock is free (for at
most LOCK_PATIENCE seconds, then it queues like any client).  Because the
delete runs under the container's lock, a snapshot being created or
restored from is never reaped mid-operation.

A snapshot that fails to delete is retried with exponential backoff
(BACKOFF_FIRST doubling to BACKOFF_MAX), listed in `failures` (status and
metrics show it) and never holds up the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from dataclasses import dataclass

from snapd.core.clock import Clock, Sleeper
from snapd.core.service import SnapshotService
from snapd.core.records import SnapshotRow

log = logging.getLogger("snapd.reaper")

CHUNK = 100
"""Snapshots per backend call (and per hold of a container's lock)."""
PARALLEL = 4
"""Backend delete calls in flight at once, daemon-wide."""
MAX_WORKERS = 32
"""Containers being worked on at once (a worker waiting for a busy container holds no slot)."""
LOCK_POLL = 0.05
LOCK_PATIENCE = 5.0
"""Seconds (real time) a worker waits for a busy container before queueing for its lock."""
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0


@dataclass
class _Failure:
    attempts: int
    retry_at: float
    error: str
    pool: str = ""


class Reaper:
    """The expiry task of one daemon."""

    def __init__(self, service: SnapshotService, clock: Clock | None = None, *,
                 parallel: int = PARALLEL, chunk: int = CHUNK, max_workers: int = MAX_WORKERS) -> None:
        self.service = service
        self.clock = clock or service.clock
        self.chunk = chunk
        self.max_workers = max_workers
        self._slots = asyncio.Semaphore(parallel)
        self._sleeper = Sleeper(self.clock)
        self._wake = self._sleeper.wake
        self._task: asyncio.Task | None = None
        self._workers: dict[tuple[str, str], asyncio.Task] = {}
        self.failures: dict[tuple[str, str], _Failure] = {}
        self.held_back: set[str] = set()
        """Containers with snapshots due whose worker waits for the container's lock."""
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
        """Stop dispatching and stop the workers (a chunk already handed to the
        service finishes there: the service shields it and drains it)."""
        tasks = ([self._task] if self._task else []) + list(self._workers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()

    @property
    def working(self) -> int:
        """Containers being worked on right now."""
        return len(self._workers)

    # -- the dispatcher ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            try:
                self._dispatch(now)
                when = self.next_wake(now)
            except Exception:  # the reaper must outlive any one bad pass
                log.exception("reaper pass failed")
                await asyncio.sleep(1)
                continue
            await self._sleeper.sleep(math.inf if when is None else when)

    def idle_at(self, at: float) -> bool:
        """Whether everything due at clock time `at` is done: no worker runs, and the
        dispatcher sleeps with nothing to look at before a time later than `at`."""
        return self._sleeper.idle_after(at) and not self._workers

    async def settled(self, at: float | None = None) -> None:
        """Return once every snapshot due at `at` (default: now) has been deleted or
        has failed and waits for its retry -- and the counters say so."""
        if at is None:
            at = self.clock.now()
        while not self.idle_at(at):
            await self._sleeper.parked()

    def next_wake(self, now: float) -> float | None:
        """When the dispatcher must look again by itself: the earliest future expiry
        or retry.  (Finished workers and new expiries wake it sooner.)"""
        candidates = [f.retry_at for f in self.failures.values() if f.retry_at > now]
        upcoming = self.service.next_expiry(after=now)
        if upcoming is not None:
            candidates.append(upcoming)
        return min(candidates) if candidates else None

    def _waiting(self, now: float) -> Counter:
        """Failed snapshots still waiting for their retry, per (container, pool)."""
        return Counter((cid, f.pool) for (cid, _), f in self.failures.items() if f.retry_at > now)

    def _due(self, now: float) -> list[tuple[str, str]]:
        """(container, pool) with snapshots due at `now` that no worker has yet."""
        waiting = self._waiting(now) if self.failures else Counter()
        out = []
        for cid, pool, count in self.service.due_containers(now):
            key = (cid, pool)
            if key in self._workers:
                continue
            if count <= waiting[key]:
                self._forget_gone(cid)
                if count <= self._waiting(now)[key]:
                    continue  # only snapshots waiting for a retry
            out.append(key)
        return out

    def _forget_gone(self, cid: str) -> None:
        """Drop failures of snapshots that no longer exist (deleted through the API)."""
        for key in [k for k in self.failures if k[0] == cid]:
            if self.service.snapshot(*key) is None:
                del self.failures[key]

    def _dispatch(self, now: float) -> int:
        free = self.max_workers - len(self._workers)
        if free <= 0:
            return 0
        started = 0
        for key in self._due(now)[:free]:
            task = asyncio.create_task(self._work(*key), name=f"reaper-{key[0]}")
            self._workers[key] = task
            task.add_done_callback(lambda t, key=key: self._finished(key, t))
            started += 1
        return started

    def _finished(self, key: tuple[str, str], task: asyncio.Task) -> None:
        if self._workers.get(key) is task:
            del self._workers[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("reaper worker for container %s failed", key[0], exc_info=task.exception())
        self._wake.set()

    async def reap(self, now: float) -> int:
        """Delete everything expired at `now` that is not waiting for a retry, to the
        end (used at start-up, before listening); how many were deleted."""
        before = self.deleted
        while True:
            self._dispatch(now)
            running = [t for t in self._workers.values() if not t.done()]
            if not running:
                return self.deleted - before
            await asyncio.wait(running)
            for key, task in list(self._workers.items()):
                if task.done():
                    self._finished(key, task)

    # -- one container's worker ------------------------------------------------------

    def _locked(self, cid: str) -> bool:
        """Whether someone holds (or waits for) the container's lock in the service."""
        return self.service.busy(cid)

    async def _until_free(self, cid: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_PATIENCE
        while self._locked(cid) and loop.time() < deadline:
            await asyncio.sleep(LOCK_POLL)

    def _next_chunk(self, cid: str, pool: str, now: float) -> list[SnapshotRow]:
        failing = sum(1 for k in self.failures if k[0] == cid) if self.failures else 0
        rows = []
        for r in self.service.expired(cid, now, self.chunk + failing):
            f = self.failures.get((cid, r.name))
            if r.pool == pool and (f is None or f.retry_at <= now):
                rows.append(r)
                if len(rows) == self.chunk:
                    break
        return rows

    async def _work(self, cid: str, pool: str) -> None:
        """Delete the container's due snapshots, a chunk at a time, until none is due."""
        while True:
            if self._locked(cid):
                self.held_back.add(cid)
            try:
                await self._until_free(cid)
                async with self._slots:
                    now = self.clock.now()
                    rows = self._next_chunk(cid, pool, now)
                    if not rows:
                        return
                    try:
                        results = await self.service.delete_expired(cid, pool, [r.name for r in rows], now)
                    except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt, retried
                        results = {}
                        for r in rows:
                            self._failed(cid, pool, r.name, str(exc) or type(exc).__name__)
            finally:
                self.held_back.discard(cid)
            self._record(cid, pool, rows, results)
            await asyncio.sleep(0)  # let requests queued meanwhile run

    def _record(self, cid: str, pool: str, rows: list[SnapshotRow], results: dict) -> None:
        for r in rows:
            if r.name in results:
                error = results[r.name]
                if error is None:
                    self.deleted += 1
                    self.failures.pop((cid, r.name), None)
                    self._record_lag(r.expires_at)
                else:
                    self._failed(cid, pool, r.name, str(error))
            elif (cid, r.name) in self.failures and self.failures[(cid, r.name)].retry_at > self.clock.now():
                continue  # failed just now (the call raised)
            elif self.service.snapshot(cid, r.name) is not None:
                # not attempted, still there: its pool is not configured (or gone)
                self._failed(cid, pool, r.name, f"pool {pool} is not configured")
            else:
                self.failures.pop((cid, r.name), None)  # deleted meanwhile by someone else

    def _record_lag(self, expires_at: float | None) -> None:
        if expires_at is None:
            return
        self.lags.append(max(0.0, self.clock.now() - expires_at))
        if len(self.lags) > 10_000:
            del self.lags[:5_000]

    def _failed(self, cid: str, pool: str, name: str, error: str) -> None:
        previous = self.failures.get((cid, name))
        attempts = previous.attempts + 1 if previous else 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempts - 1))
        self.failures[(cid, name)] = _Failure(attempts, self.clock.now() + delay, error, pool)
        log.warning(
            "expired snapshot not deleted container=%s snapshot=%s attempt=%d retry_in=%.0fs error=%s",
            cid, name, attempts, delay, error,
        )
