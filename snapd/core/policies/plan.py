"""The plan for one container: its next snapshots, and when each snapshot it has goes.

It is retain() now, then retain() again at each planned snapshot's instant
with that snapshot added (the pruner runs after each one): a snapshot the
rules keep now but drop once newer ones arrive gets that instant and
"outside grid".  Only the snapshots kept at the previous step take part in
the next (a deleted one stays deleted), so each step is small.  Space is not
projected: min_free shows only what goes now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence
from zoneinfo import ZoneInfo

from snapd.core.policies.retention import (
    Keys, Snap, Space, Verdict, newest_first, period_keys, retain, select, time_limit)
from snapd.core.policies.schedule import due_slot
from snapd.core.policies.spec import PolicySpec

MAX_PLANNED = 1000
"""At most this many planned snapshots are projected; `until` then ends at the last one."""


@dataclass(frozen=True)
class ContainerPlan:
    """Planned snapshot instants (one <= now: due now) and one verdict per existing snapshot.

    A verdict's `delete_at` is the instant it goes within the horizon (`until`),
    or a later one `expires_at` or `max_age` sets, or None: kept beyond.
    """

    next_snapshots: list[float]
    verdicts: list[Verdict]
    until: float


def plan_container(snaps: Sequence[Snap], spec: PolicySpec | None, now: float, hours: float, tz: ZoneInfo, *,
                   offset: float = 0.0, last_slot: float | None = None,
                   space: Space | None = None) -> ContainerPlan:
    """The plan for the next `hours` (schedule read in `tz`, this container's jitter `offset`)."""
    verdicts = retain(snaps, spec, now, space=space)
    horizon = now + max(hours, 0) * 3600
    if spec is None:
        return ContainerPlan([], verdicts, horizon)
    planned = planned_instants(spec, tz, offset, last_slot, now, horizon)
    if len(planned) >= MAX_PLANNED:
        planned = planned[:MAX_PLANNED]
        horizon = planned[-1]
    if planned:
        _project(snaps, spec, now, planned, verdicts)
    return ContainerPlan(planned, verdicts, horizon)


def planned_instants(spec: PolicySpec, tz: ZoneInfo, offset: float, last_slot: float | None, now: float,
                     until: float) -> list[float]:
    """slot + offset of every snapshot planned up to `until`; the first is <= now when one is due."""
    out = []
    due = due_slot(spec.schedule, tz, offset, last_slot, now)
    if due is not None:
        out.append(due + offset)
    after = now - offset if last_slot is None else max(now - offset, last_slot)
    for slot in spec.schedule.slots(after, until - offset, tz):
        out.append(slot + offset)
        if len(out) >= MAX_PLANNED:
            break
    return out


def _project(snaps: Sequence[Snap], spec: PolicySpec, now: float, planned: list[float],
             verdicts: list[Verdict]) -> None:
    """Set in `verdicts` the instant each kept snapshot of the policy is dropped by the rules."""
    tz = spec.tz
    alive = [i for i, (s, v) in enumerate(zip(snaps, verdicts))
             if s.hold is None and s.policy == spec.name and (v.delete_at is None or v.delete_at > now)]
    order = newest_first(snaps, alive)  # ids; planned snapshots get ids -1, -2, ...
    keys: dict[int, Keys] = {i: period_keys(snaps[i].created_at, tz) for i in order}
    created: dict[int, float] = {i: snaps[i].created_at for i in order}
    limits = {i: lim[0] for i in order if (lim := time_limit(snaps[i], spec)) is not None}
    for n, instant in enumerate(planned, 1):
        at = max(instant, now)
        order = [i for i in order if limits.get(i, math.inf) > at]
        new = -n
        created[new], keys[new] = at, period_keys(at, tz)
        pos = 0
        while pos < len(order) and created[order[pos]] > at:
            pos += 1
        order.insert(pos, new)
        if len(order) <= spec.keep_last:
            continue
        kept = select(order, keys, spec.keep_last, spec.keep)
        if len(kept) == len(order):
            continue
        for i in order:
            if i not in kept and i >= 0:
                v = verdicts[i]
                verdicts[i] = Verdict(v.name, v.keep, at, "outside grid")
        order = [i for i in order if i in kept]
