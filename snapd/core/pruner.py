"""Deletes what a policy's retention rules no longer keep, through the service.

After each scheduled snapshot of a container the scheduler asks for that
container to be pruned; besides, a pass over every container under a policy
runs every PASS_EVERY seconds of clock time, and a container is looked at
again when the earliest future `delete_at` of its last verdicts comes (a
`max_age`).  For one container: its snapshots from the store, retention.retain()
(with the pool's free space when the policy has `min_free`), and the "delete
now" verdicts deleted in one service call -- which checks again, under the
container's lock, that each is this policy's and not held.  Manual snapshots,
another policy's and held ones are never deleted here; `expires_at` stays the
reaper's.

The plan (`plan()`, the plan route, `snapd policy plan`) is computed from the
same snapshots by plan.plan_container(), which projects retain() forward: the
pruner carries out what the plan says, it does not compute a second opinion.

Passes stream over containers and yield to the event loop between them;
retention over a container with many snapshots runs in a worker thread, so no
request waits more than a few tens of milliseconds behind a pass.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import Counter
from collections.abc import Callable

from snapd.core.clock import Clock, Sleeper
from snapd.core.coverage import Covered
from snapd.core.policies.plan import ContainerPlan, plan_container
from snapd.core.policies.retention import Snap, Space, Verdict, retain
from snapd.core.policies.spec import PolicySpec
from snapd.core.records import SnapshotRow
from snapd.core.service import SnapshotService

log = logging.getLogger("snapd.pruner")

PASS_EVERY = 600.0
"""Seconds (clock time) between passes over every container under a policy."""
THREAD_AT = 500
"""Snapshots of one container from which retention (and the plan) runs in a worker thread."""
PARALLEL = 2
"""Containers pruned at once."""
EXPIRY = "expires_at"


def snaps(rows: list[SnapshotRow], pool: str) -> list[Snap]:
    """The retention view of a container's snapshots in its pool."""
    return [Snap(r.name, r.created_at, r.expires_at, r.policy, r.hold_reason, r.size)
            for r in rows if r.pool == pool]


def due_now(verdicts: list[Verdict], now: float) -> list[Verdict]:
    """The verdicts the pruner carries out at `now`: deletes due now, except at expires_at
    (the reaper's)."""
    return [v for v in verdicts if v.delete_at is not None and v.delete_at <= now and v.delete_reason != EXPIRY]


def _retain(rows: list[SnapshotRow], pool: str, spec: PolicySpec, now: float, space: Space | None) -> list[Verdict]:
    return retain(snaps(rows, pool), spec, now, space=space)


def _plan(rows: list[SnapshotRow], pool: str, spec: PolicySpec, now: float, hours: float, offset: float,
          last_slot: float | None, space: Space | None) -> ContainerPlan:
    return plan_container(snaps(rows, pool), spec, now, hours, spec.tz, offset=offset, last_slot=last_slot,
                          space=space)


class Pruner:
    """The retention task of one daemon."""

    def __init__(self, service: SnapshotService, covered: Callable[[], dict[str, Covered]],
                 clock: Clock | None = None, *, parallel: int = PARALLEL, pass_every: float = PASS_EVERY) -> None:
        self.service = service
        self.covered = covered
        """Container id -> the container and its policy, as the scheduler last resolved them."""
        self.clock = clock or service.clock
        self.pass_every = pass_every
        self._slots = asyncio.Semaphore(parallel)
        self._queue: dict[str, None] = {}
        """Containers asked for, in order (a dict: asked twice, pruned once)."""
        self._sleeper = Sleeper(self.clock)
        self._wake = self._sleeper.wake
        self._task: asyncio.Task | None = None
        self._workers: set[asyncio.Task] = set()
        self._next_look: dict[str, float] = {}
        """Container -> the earliest future delete_at of its last verdicts."""
        self._next_pass: float | None = None
        self.deleted: Counter[str] = Counter()
        """Snapshots deleted, by reason."""
        self.by_policy: Counter[str] = Counter()
        self.failures: dict[tuple[str, str], str] = {}
        """(container, snapshot) -> why its delete failed (retried at the next look)."""
        self.passes = 0
        self.last_space: dict[str, Space] = {}
        """Pool -> its free and total bytes as last read (for min_free)."""

    # -- the computation (one for the pruner and the plan) ------------------------------

    async def space(self, cov: Covered) -> Space | None:
        """The pool's free and total bytes, when the policy has min_free and both are known."""
        if cov.spec.min_free is None:
            return None
        backend = cov.container.backend
        try:
            free, total = await backend.free_bytes(), await backend.total_bytes()
        except Exception as exc:  # unknown space: the rule cannot act, the others still do
            log.warning("cannot read the free space of pool %s: %s", backend.pool_id, exc)
            return None
        if free is None or total is None:
            return None
        space = self.last_space[backend.pool_id] = Space(free, total)
        return space

    async def verdicts(self, cov: Covered, now: float, rows: list[SnapshotRow] | None = None) -> list[Verdict]:
        """retain() for the container's snapshots (`rows`, else read from the store) at `now`."""
        if rows is None:
            rows = await self.service.snapshots_paced(cov.container.id)
        space = await self.space(cov)
        call = functools.partial(_retain, rows, cov.container.pool, cov.spec, now, space)
        return await asyncio.to_thread(call) if len(rows) >= THREAD_AT else call()

    async def plan(self, cov: Covered, now: float, hours: float, offset: float,
                   last_slot: float | None) -> ContainerPlan:
        """plan_container() for the container's snapshots: what retain() says now, and again
        after each planned snapshot (`offset`: its jitter; `last_slot`: the slot last taken)."""
        rows = await self.service.snapshots_paced(cov.container.id)
        space = await self.space(cov)
        call = functools.partial(_plan, rows, cov.container.pool, cov.spec, now, hours, offset, last_slot, space)
        return await asyncio.to_thread(call) if len(rows) >= THREAD_AT else call()

    # -- the task ----------------------------------------------------------------------------

    def request(self, cid: str) -> None:
        """Prune `cid` soon (after a scheduled snapshot of it)."""
        self._queue[cid] = None
        self._wake.set()

    def start(self) -> None:
        self._next_pass = self.clock.now() + self.pass_every
        self._task = asyncio.create_task(self._run(), name="pruner")

    async def stop(self) -> None:
        tasks = ([self._task] if self._task else []) + list(self._workers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Return once nothing is asked for, no worker runs and the task sleeps with nothing
        due now (tests, benchmarks)."""
        while self._queue or self._workers or not self._sleeper.idle_after(self.clock.now()):
            await self._sleeper.parked()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            try:
                if self._next_pass is not None and now >= self._next_pass:
                    self._next_pass = now + self.pass_every
                    self.passes += 1
                    for cid in self.covered():
                        self._queue.setdefault(cid, None)
                for cid in [c for c, t in self._next_look.items() if t <= now]:
                    del self._next_look[cid]
                    self._queue.setdefault(cid, None)
                await self._drain()
            except Exception:  # the pruner must outlive any one bad pass
                log.exception("pruning pass failed")
            if not self._wake.is_set():
                await self._sleeper.sleep(min([*self._next_look.values(), self._next_pass or math.inf]))

    async def _drain(self) -> None:
        """Prune every container asked for, PARALLEL at a time, yielding between them."""
        while self._queue:
            cid = next(iter(self._queue))
            del self._queue[cid]
            cov = self.covered().get(cid)
            if cov is None:
                self._next_look.pop(cid, None)
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._one(cov), name=f"prune-{cid}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
            await asyncio.sleep(0)
        if self._workers:
            await asyncio.gather(*list(self._workers), return_exceptions=True)

    async def _one(self, cov: Covered) -> None:
        try:
            await self.prune(cov)
        except Exception:
            log.exception("pruning container %s failed", cov.container.id)
        finally:
            self._slots.release()

    async def prune(self, cov: Covered) -> int:
        """Delete what retention does not keep of one container now; how many were deleted."""
        cid, spec = cov.container.id, cov.spec
        now = self.clock.now()
        rows = await self.service.snapshots_paced(cid)
        verdicts = await self.verdicts(cov, now, rows)
        later = [v.delete_at for v in verdicts
                 if v.delete_at is not None and v.delete_at > now and v.delete_reason != EXPIRY]
        if later:
            self._next_look[cid] = min(later)
        else:
            self._next_look.pop(cid, None)
        doomed = due_now(verdicts, now)
        by_name = {r.name: r for r in rows}
        # retain() guarantees it; a delete is final, so make sure again before asking (and the
        # service checks once more under the container's lock)
        doomed = [v for v in doomed if (r := by_name.get(v.name)) is not None
                  and r.policy == spec.name and r.hold_reason is None and not v.keep]
        if not doomed:
            return 0
        results = await self.service.delete_pruned(cid, cov.container.pool, [v.name for v in doomed], spec.name)
        gone = 0
        for v in doomed:
            error = results.get(v.name)
            if v.name in results and error is None:
                gone += 1
                self.deleted[v.delete_reason or "?"] += 1
                self.by_policy[spec.name] += 1
                self.failures.pop((cid, v.name), None)
                log.info("pruned container=%s snapshot=%s policy=%s reason=%s",
                         cid, v.name, spec.name, v.delete_reason)
            elif error is not None:
                self.failures[(cid, v.name)] = str(error)
        if gone and any(v.delete_reason == "min_free" for v in doomed):
            self.request(cid)  # measure the pool again: retain() stops at a snapshot of unknown size
        return gone
