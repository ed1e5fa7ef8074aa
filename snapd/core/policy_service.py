"""The policy operations the admin routes, status and the detail route call.

List, get, put (or its dry run), delete, and the plan -- over the book (the
policies), the coverage (which container follows which), the scheduler
(last run, next snapshot) and the pruner (whose computation the plan is).
Values come back as plain JSON-ready dicts; errors as PolicyError (400),
FileOwned (409) or NotFound (404).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from snapd.core.clock import iso
from snapd.core.coverage import Coverage, Covered
from snapd.core.errors import NotFound
from snapd.core.policies.plan import ContainerPlan
from snapd.core.policies.retention import retain
from snapd.core.policies.spec import PolicySpec, policy_json
from snapd.core.policy_book import Entry, PolicyBook
from snapd.core.pruner import snaps
from snapd.core.records import SnapshotRow
from snapd.core.scheduler import Scheduler
from snapd.core.service import Container

MAX_HOURS = 24.0 * 3660
"""The longest plan horizon: ten years."""
SLICE = 0.02
"""Seconds of CPU a plan over many containers takes before it yields to the event loop."""


class PolicyService:
    """Policies for the routes: the book, who follows what, the scheduler and the pruner."""

    def __init__(self, book: PolicyBook, scheduler: Scheduler) -> None:
        self.book = book
        self.scheduler = scheduler
        self.coverage: Coverage = scheduler.coverage
        self.clock = scheduler.clock

    # -- reading ---------------------------------------------------------------------

    def entry_json(self, entry: Entry) -> dict[str, Any]:
        spec = entry.spec
        status = self.scheduler.policy_status(spec.name)
        return {
            "name": spec.name,
            "source": spec.source,
            "policy": policy_json(spec),
            "updated_at": iso(entry.updated_at),
            "status": {**status, "last_run": iso(status["last_run"]), "last_ok": iso(status["last_ok"]),
                       "next": iso(status["next"])},
        }

    def list(self) -> list[dict[str, Any]]:
        return [self.entry_json(e) for e in self.book.entries()]

    def get(self, name: str) -> dict[str, Any]:
        entry = self.book.get(name)
        if entry is None:
            raise NotFound("policy")
        return self.entry_json(entry)

    # -- changing ----------------------------------------------------------------------

    async def put(self, name: str, data: Mapping[str, object], dry_run: bool = False,
                  hours: float = 24.0) -> dict[str, Any]:
        """Set policy `name` through the API (or, with `dry_run`, say what that would do
        and change nothing): the policy, the containers it moves, and on a dry run the
        plan of every container whose policy changes."""
        spec, new_set = self.book.proposal(name, data)
        await self.coverage.check_applies(spec, self._pools())
        containers = await self.coverage.containers()
        before = {c.container.id: c for c in Coverage.assign(self.book.specs(), containers)}
        after = {c.container.id: c for c in Coverage.assign(new_set, containers)}
        moves = _moves(before, after)
        existed = self.book.get(name) is not None
        if dry_run:
            moved = {m["container_id"] for m in moves}
            changed = [c for cid, c in after.items() if cid in moved or c.spec.name == name]
            return {"dry_run": True, "created": not existed, "policy": self._would_be(spec), "moves": moves,
                    "plan": await self.plan_json(changed, hours)}
        entry = self.book.put(spec)
        return {"dry_run": False, "created": not existed, "policy": self.entry_json(entry), "moves": moves,
                "plan": None}

    def _would_be(self, spec: PolicySpec) -> dict[str, Any]:
        entry = self.book.get(spec.name)
        return {**self.entry_json(Entry(spec, entry.updated_at if entry else None)), "updated_at": None}

    async def delete(self, name: str) -> dict[str, Any]:
        entry = self.book.get(name)
        if entry is None:
            raise NotFound("policy")
        shown = self.entry_json(entry)
        self.book.delete(name)  # FileOwned for a file policy, and nothing changes
        return shown

    def _pools(self) -> list[str]:
        return [b.pool_id for b in self.scheduler.service.backends]

    # -- the plan ---------------------------------------------------------------------

    async def plan(self, hours: float, container: str | None = None) -> dict[str, Any]:
        """Every container under a policy (or just `container`): next snapshots and, per
        snapshot, what keeps it or when and why it goes."""
        containers = await self.coverage.containers(fresh=True)
        covered = Coverage.assign(self.book.specs(), containers)
        if container is not None:
            covered = [c for c in covered if c.container.id == container]
            if not covered:
                raise NotFound("container")
        return await self.plan_json(covered, hours)

    async def plan_json(self, covered: list[Covered], hours: float) -> dict[str, Any]:
        now = self.clock.now()
        out = []
        began = time.monotonic()
        for cov in covered:
            offset, last_slot = self.scheduler.position(cov)
            plan = await self.scheduler.pruner.plan(cov, now, hours, offset, last_slot)
            out.append(self._container_plan(cov, plan))
            if time.monotonic() - began > SLICE:
                await asyncio.sleep(0)
                began = time.monotonic()
        return {"now": iso(now), "hours": hours, "until": iso(now + hours * 3600), "containers": out}

    def _container_plan(self, cov: Covered, plan: ContainerPlan) -> dict[str, Any]:
        c = cov.container
        rows = {r.name: r for r in self.scheduler.service.snapshots(c.id)}
        snaps = []
        for v in plan.verdicts:
            r = rows.get(v.name)
            snaps.append({
                "name": v.name,
                "created_at": iso(r.created_at) if r else None,
                "policy": r.policy if r else None,
                "hold": r.hold_reason if r else None,
                "keep": list(v.keep),
                "delete_at": iso(v.delete_at),
                "delete_reason": v.delete_reason,
            })
        return {"container_id": c.id, "project_id": c.project, "pool": c.pool, "policy": cov.spec.name,
                "next_snapshots": [iso(t) for t in plan.next_snapshots], "snapshots": snaps}

    def keep_reasons(self, container: Container, rows: list[SnapshotRow]) -> dict[str, list[str]]:
        """Snapshot name -> what keeps it now, for `rows` of `container` (the detail routes):
        retain() over the container's snapshots, as the pruner runs it (with the pool's
        free space as last read)."""
        cov = self.scheduler.covered.get(container.id)
        spec = cov.spec if cov is not None and cov.container.pool == container.pool else None
        wanted = {r.name for r in rows}
        view = snaps(self.scheduler.service.snapshots(container.id), container.pool)
        space = self.scheduler.pruner.last_space.get(container.pool) if spec is not None else None
        return {v.name: list(v.keep) for v in retain(view, spec, self.clock.now(), space=space)
                if v.name in wanted}


def _moves(before: dict[str, Covered], after: dict[str, Covered]) -> list[dict[str, Any]]:
    """Containers whose policy a change would switch: {container_id, from, to}."""
    out = []
    for cid in sorted(set(before) | set(after)):
        old, new = before.get(cid), after.get(cid)
        a, b = old.spec.name if old else None, new.spec.name if new else None
        if a != b:
            out.append({"container_id": cid, "from": a, "to": b})
    return out
