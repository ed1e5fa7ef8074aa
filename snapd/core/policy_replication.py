"""Policies that name targets: after each snapshot a policy takes of a container, the
container is replicated to each of the policy's targets, and failed jobs are tried again.

One driver task per container and target, alive while there is something to do: it
starts a job through Replications.start (joining one started by request means going
again once it ends: it planned before the new snapshot), waits for it, and on failure
sleeps on the daemon's clock until the retry replication_retry says (a new snapshot
wakes it at once and supersedes the retry).  Retries live in memory, as jobs do: a
restart forgets them, and the policy's next snapshot starts again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from snapd.core.clock import Clock, iso
from snapd.core.errors import NotFound
from snapd.core.policies.spec import PolicySpec
from snapd.core.replication import Job, Replications
from snapd.core.replication_retry import Streak

log = logging.getLogger("snapd.replication")


@dataclass
class _Pair:
    """One container and target under a policy: its streak and its driver."""

    cid: str
    target: str
    policy: str
    streak: Streak = Streak()
    pending: bool = False
    """A snapshot came since the last job started: start one now."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    last: Job | None = None


class PolicyReplication:
    """Replication driven by policies, with retries on the daemon's clock."""

    def __init__(self, replications: Replications, clock: Clock,
                 policy_of: Callable[[str], PolicySpec | None]) -> None:
        self.replications = replications
        self.clock = clock
        self.policy_of = policy_of
        """Container id -> the policy it follows now (None: none)."""
        self._pairs: dict[tuple[str, str], _Pair] = {}

    def snapshot_taken(self, spec: PolicySpec, cid: str) -> None:
        """Policy `spec` took a snapshot of `cid`: replicate it to each of the policy's targets."""
        for target in spec.targets:
            pair = self._pairs.setdefault((cid, target), _Pair(cid, target, spec.name))
            pair.policy, pair.pending = spec.name, True
            pair.wake.set()
            if pair.task is None or pair.task.done():
                pair.task = asyncio.create_task(self._drive(pair), name=f"policy-replication-{cid}-{target}")

    async def stop(self) -> None:
        tasks = [p.task for p in self._pairs.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _wanted(self, pair: _Pair) -> bool:
        spec = self.policy_of(pair.cid)
        return spec is not None and spec.name == pair.policy and pair.target in spec.targets

    async def _drive(self, pair: _Pair) -> None:
        try:
            while pair.pending or pair.streak.retry_at is not None:
                if not pair.pending:
                    pair.wake.clear()
                    await self.clock.sleep_until(pair.streak.retry_at, pair.wake)  # type: ignore[arg-type]
                    if not pair.pending and not self._wanted(pair):
                        log.info("replication retry container=%s target=%s dropped: policy %s no longer sends "
                                 "it there", pair.cid, pair.target, pair.policy)
                        pair.streak = Streak()
                        break
                    if not pair.pending and self.clock.now() < pair.streak.retry_at:  # type: ignore[operator]
                        continue
                if pair.pending and pair.last is not None:
                    pair.last.next_retry_at = None  # superseded by the new snapshot's job
                pair.streak, pair.pending = pair.streak.superseded(), False
                await self._attempt(pair)
        finally:
            if self._pairs.get((pair.cid, pair.target)) is pair and not pair.pending:
                del self._pairs[(pair.cid, pair.target)]

    async def _attempt(self, pair: _Pair) -> None:
        try:
            job, new = await self.replications.start(pair.cid, pair.target)
        except NotFound as exc:
            log.warning("policy %s cannot replicate container %s to %s: %s not found", pair.policy, pair.cid,
                        pair.target, exc.message)
            pair.streak = Streak()
            return
        except Exception:  # noqa: BLE001 - whatever it was, a failed attempt, retried
            log.exception("policy %s could not start replicating container %s to %s", pair.policy, pair.cid,
                          pair.target)
            pair.streak = pair.streak.after(False, self.clock.now())
            return
        if not new:  # started by request before this snapshot existed: go again once it ends
            await self.replications.wait(job)
            pair.pending = True
            return
        job.policy, job.attempt, pair.last = pair.policy, pair.streak.attempt, job
        await self.replications.wait(job)
        pair.streak = pair.streak.after(job.state == "done", job.finished_at or self.clock.now())
        job.next_retry_at = pair.streak.retry_at
        if job.next_retry_at is not None:
            log.warning("policy replication container=%s target=%s attempt %d failed; next attempt at %s",
                        pair.cid, pair.target, job.attempt, iso(job.next_retry_at))
