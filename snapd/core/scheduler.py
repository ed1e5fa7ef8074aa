"""Takes each policy's snapshots on time, on the daemon's clock.

For every container under a policy (coverage.py) the scheduler keeps the
last nominal slot taken, in the store's `policy_slots` (so a restart takes
no slot twice).  A heap holds each container's next planned instant (slot +
its stable jitter offset); the task sleeps until the earliest, and takes
what is due through service.create(policy=..., freeze=...) -- the one path
for mutations -- at most CONCURRENCY at once.  schedule.due_slot() decides:
after downtime one catch-up, never N; a clock stepped back repeats nothing.

A container that comes under a policy waits for the policy's next slot (its
first slot is seeded with the latest one already past).  A failed snapshot
is retried with backoff (RETRY_FIRST doubling to RETRY_MAX) until it works
or a newer slot replaces it; the error is recorded (status, metrics).

After each snapshot the pruner is asked to prune that container.  The lag
(actual start - planned instant) of every snapshot is kept for metrics and
the benchmark.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from snapd.core.clock import Clock, Sleeper, iso
from snapd.core.coverage import Coverage, Covered
from snapd.core.policies.schedule import due_slot, jitter_offset, next_planned
from snapd.core.policies.spec import PolicySpec, render_alias
from snapd.core.policy_book import PolicyBook
from snapd.core.pruner import Pruner
from snapd.core.service import SnapshotService

log = logging.getLogger("snapd.scheduler")

CONCURRENCY = 4
"""Scheduled snapshots being taken at once per project (unlabelled containers count as one
project): one project's queue (max_concurrent_per_project) never holds up another's."""
RETRY_FIRST = 10.0
RETRY_MAX = 600.0
"""Seconds (clock time) before a failed snapshot is tried again, doubling up to this."""
REBUILD_SLICE = 0.02
"""Seconds of CPU the heap rebuild takes before it yields to the event loop."""
MAX_LAGS = 100_000


@dataclass
class Slot:
    """Where one container stands under one policy."""

    last_slot: float | None = None
    last_run: float | None = None
    last_ok: float | None = None
    last_error: str | None = None
    attempts: int = 0
    retry_at: float | None = None


class Scheduler:
    """The policy task of one daemon."""

    def __init__(self, service: SnapshotService, book: PolicyBook, coverage: Coverage,
                 clock: Clock | None = None, *, concurrency: int = CONCURRENCY) -> None:
        self.service = service
        self.book = book
        self.coverage = coverage
        self.clock = clock or service.clock
        self.pruner = Pruner(service, lambda: self.covered, self.clock)
        self._concurrency = concurrency
        self._slots: dict[str | None, asyncio.Semaphore] = {}
        """Project (None: unlabelled) -> its scheduled snapshots' slots."""
        self.covered: dict[str, Covered] = {}
        """Container id -> the container and the policy it follows."""
        self.state: dict[tuple[str, str], Slot] = {}
        """(policy, container) -> its schedule position (loaded from the store)."""
        self.store = service.store
        for row in self.store.slot_rows():
            self.state[(row["policy"], row["container"])] = Slot(
                _s(row["last_slot"]), _s(row["last_run"]), _s(row["last_ok"]), row["last_error"])
        self._newest = {(p, cid): at for p, cid, at in self.store.policy_newest()}
        """(policy, container) -> its newest snapshot's created_at, read at start: a stop between a
        snapshot and the record of its slot must not make the slot be taken twice."""
        self._stopping = False
        self._heap: list[tuple[float, str, str]] = []
        """(planned instant, container, policy): each covered container's next look."""
        self._running: dict[str, asyncio.Task] = {}
        self._sleeper = Sleeper(self.clock)
        self._wake = self._sleeper.wake
        self._dirty = True
        self._task: asyncio.Task | None = None
        self._refresher: asyncio.Task | None = None
        self.taken: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.lags: list[float] = []
        """Seconds from planned instant to actual start, oldest first (bounded)."""
        self.lag_count = 0
        """Every lag ever recorded (metrics fold in the new ones)."""
        self.on_snapshot: list[Callable[[PolicySpec, str], None]] = []
        """Called with the policy and the container after each snapshot a policy took."""
        book.on_change(self.touch)

    # -- control ---------------------------------------------------------------------------

    def touch(self, *, fresh: bool = False) -> None:
        """Resolve containers and policies again (a policy changed; `fresh`: re-read pools too)."""
        if fresh:
            self.coverage.forget()
        self._dirty = True
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")
        self._refresher = asyncio.create_task(self._refresh(), name="scheduler-inventory")
        self.pruner.start()

    async def stop(self) -> None:
        """Stop dispatching; snapshots being taken finish and are recorded (those still
        waiting for their turn are dropped: their slot stays due)."""
        self._stopping = True
        tasks = [t for t in (self._task, self._refresher) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._running.values(), return_exceptions=True)
        self._running.clear()
        await self.pruner.stop()

    async def _refresh(self) -> None:
        """Look for containers made or removed in the pools, every REFRESH seconds (real time)."""
        while True:
            await asyncio.sleep(self.coverage.refresh_every)
            self.touch()

    # -- the dispatcher ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                if self._dirty:
                    self._dirty = False
                    await self._rebuild()
                self._dispatch(self.clock.now())
            except Exception:  # the scheduler must outlive any one bad pass
                log.exception("scheduler pass failed")
                await asyncio.sleep(1)
                continue
            if self._wake.is_set():
                continue
            await self._sleeper.sleep(self._heap[0][0] if self._heap else math.inf)

    async def settled(self, at: float | None = None) -> None:
        """Return once everything due at clock time `at` (default now) has been taken or has
        failed and waits for its retry, and the pruner has done what that asked (tests)."""
        if at is None:
            at = self.clock.now()
        while not (self._sleeper.idle_after(at) and not self._running and not self._dirty):
            await self._sleeper.parked()
        await self.pruner.idle()

    async def _rebuild(self) -> None:
        """Resolve every container's policy and plan each one's next look, yielding to the
        event loop every REBUILD_SLICE seconds (a thousand containers take a few)."""
        containers = await self.coverage.containers()
        covered = {c.container.id: c for c in Coverage.assign(self.book.specs(), containers)}
        now = self.clock.now()
        heap: list[tuple[float, str, str]] = []
        seeded: list[tuple[str, str, float]] = []
        began = time.monotonic()
        for cid, cov in covered.items():
            spec = cov.spec
            st = self.state.get((spec.name, cid))
            newest = self._newest.pop((spec.name, cid), None)
            if st is None or newest is not None:
                tz, offset = spec.tz, self.offset(spec, cid)
                # new under this policy: wait for its next slot; else the slot of its newest snapshot
                mark = spec.schedule.latest((now if st is None else newest) - offset, tz)
                if st is None:
                    st = self.state[(spec.name, cid)] = Slot()
                if mark is not None and (st.last_slot is None or mark > st.last_slot):
                    st.last_slot = mark
                    seeded.append((spec.name, cid, mark))
            if cid not in self._running:
                heap.append((self._next_look(spec, cid, st, now), cid, spec.name))
            if time.monotonic() - began > REBUILD_SLICE:
                await asyncio.sleep(0)
                began = time.monotonic()
        heapq.heapify(heap)
        self.covered, self._heap = covered, heap
        if seeded:  # lost in a crash, the same marks are seeded again from the newest snapshots
            await self.store.write(lambda s: [s.slot_put(policy, cid, last_slot=_ms(latest))
                                              for policy, cid, latest in seeded])

    def offset(self, spec: PolicySpec, cid: str) -> float:
        return jitter_offset(spec.name, cid, spec.jitter)

    def position(self, cov: Covered) -> tuple[float, float | None]:
        """A container's jitter offset under its policy and the slot it last took (for the
        plan; a container new under the policy waits for the next slot, as _rebuild seeds it)."""
        spec, cid = cov.spec, cov.container.id
        offset = self.offset(spec, cid)
        st = self.state.get((spec.name, cid))
        if st is None:
            return offset, spec.schedule.latest(self.clock.now() - offset, spec.tz)
        return offset, st.last_slot

    def _next_look(self, spec: PolicySpec, cid: str, st: Slot, now: float) -> float:
        planned = next_planned(spec.schedule, spec.tz, self.offset(spec, cid), st.last_slot, now)
        if st.retry_at is not None and planned <= now:
            return max(planned, st.retry_at)
        return planned

    def next_planned(self, policy: str) -> float | None:
        """When the policy's next snapshot is planned (status)."""
        times = [t for t, _, p in self._heap if p == policy]
        return min(times) if times else None

    def _dispatch(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, cid, policy = heapq.heappop(self._heap)
            cov = self.covered.get(cid)
            if cov is None or cov.spec.name != policy or cid in self._running:
                continue
            spec, st = cov.spec, self.state[(policy, cid)]
            offset = self.offset(spec, cid)
            slot = due_slot(spec.schedule, spec.tz, offset, st.last_slot, now)
            if slot is None or (st.retry_at is not None and now < st.retry_at):
                heapq.heappush(self._heap, (self._next_look(spec, cid, st, now), cid, policy))
                continue
            task = asyncio.create_task(self._take(cov, st, slot, slot + offset), name=f"policy-{cid}")
            self._running[cid] = task
            task.add_done_callback(lambda t, cid=cid: self._finished(cid, t))

    def _finished(self, cid: str, task: asyncio.Task) -> None:
        if self._running.get(cid) is task:
            del self._running[cid]
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduled snapshot of container %s failed", cid, exc_info=task.exception())
        cov = self.covered.get(cid)
        if cov is not None:
            st = self.state[(cov.spec.name, cid)]
            heapq.heappush(self._heap, (self._next_look(cov.spec, cid, st, self.clock.now()), cid, cov.spec.name))
        self._wake.set()

    # -- one snapshot --------------------------------------------------------------------------

    async def _take(self, cov: Covered, st: Slot, slot: float, planned: float) -> None:
        spec, cid = cov.spec, cov.container.id
        slots = self._slots.setdefault(cov.container.project, asyncio.Semaphore(self._concurrency))
        async with slots:
            if self._stopping:
                return
            started = self.clock.now()
            self._record_lag(started - planned)
            st.last_run = started
            try:
                _, row = await self.service.create(cid, alias=render_alias(spec, cid, slot), policy=spec.name,
                                                   freeze=spec.freeze)
            except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt, retried
                self._failed(spec, cid, st, str(exc) or type(exc).__name__)
                return
        st.last_slot, st.last_ok, st.last_error, st.attempts, st.retry_at = slot, row.created_at, None, 0, None
        await self.store.write(lambda s: s.slot_put(spec.name, cid, last_slot=_ms(slot), last_run=_ms(started),
                                                    last_ok=_ms(row.created_at), last_error=None))
        self.taken[spec.name] += 1
        log.info("policy snapshot container=%s snapshot=%s policy=%s slot=%s lag=%.3fs",
                 cid, row.name, spec.name, iso(slot), started - planned)
        self.pruner.request(cid)
        for listener in self.on_snapshot:
            listener(spec, cid)

    def _failed(self, spec: PolicySpec, cid: str, st: Slot, error: str) -> None:
        st.attempts += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (st.attempts - 1))
        st.retry_at = self.clock.now() + delay
        st.last_error = error
        self.failed[spec.name] += 1
        self.store.slot_put(spec.name, cid, last_run=_ms(st.last_run), last_error=error[:500])
        log.warning("policy snapshot failed container=%s policy=%s attempt=%d retry_in=%.0fs error=%s",
                    cid, spec.name, st.attempts, delay, error)

    def _record_lag(self, lag: float) -> None:
        self.lags.append(max(0.0, lag))
        self.lag_count += 1
        if len(self.lags) > MAX_LAGS:
            del self.lags[: MAX_LAGS // 2]

    # -- status ----------------------------------------------------------------------------------

    def last_success(self) -> dict[str, float]:
        """Policy -> when its newest scheduled snapshot was taken (metrics)."""
        out: dict[str, float] = {}
        for (policy, _), st in self.state.items():
            if st.last_ok is not None and st.last_ok > out.get(policy, -math.inf):
                out[policy] = st.last_ok
        return out

    def retention_deletes(self) -> Counter[str]:
        return self.pruner.deleted

    def held(self) -> int:
        return self.store.held_count()

    def lag_summary(self) -> dict[str, float | int | None]:
        """The median, 99th percentile and largest schedule lag of the recent snapshots (status)."""
        lags = sorted(self.lags)
        if not lags:
            return {"snapshots": 0, "lag_p50_s": None, "lag_p99_s": None, "lag_max_s": None}
        def q(p: float) -> float:
            return round(lags[min(len(lags) - 1, int(p * len(lags)))], 3)
        return {"snapshots": self.lag_count, "lag_p50_s": q(0.5), "lag_p99_s": q(0.99), "lag_max_s": round(lags[-1], 3)}

    def policy_status(self, name: str) -> dict:
        """Containers under `name`, its last run, last success, last error and next snapshot."""
        pairs = [(cid, st) for (p, cid), st in self.state.items()
                 if p == name and (c := self.covered.get(cid)) is not None and c.spec.name == name]
        runs = [st.last_run for _, st in pairs if st.last_run is not None]
        oks = [st.last_ok for _, st in pairs if st.last_ok is not None]
        errors = sorted(((st.last_run or 0.0, cid, st.last_error) for cid, st in pairs if st.last_error),
                        reverse=True)
        return {
            "containers": len(pairs),
            "last_run": max(runs) if runs else None,
            "last_ok": max(oks) if oks else None,
            "next": self.next_planned(name),
            "taken": self.taken[name],
            "failed": self.failed[name],
            "failing": [{"container_id": cid, "error": err} for _, cid, err in errors[:20]],
        }


def _ms(ts: float | None) -> int | None:
    return None if ts is None else round(ts * 1000)


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0
