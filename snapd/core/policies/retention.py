"""Which snapshots a policy keeps, and why; which go, when, and why.

Who is subject to what:

- a held snapshot is always kept ("hold: <reason>"); it takes no part in the
  rules below (it does not count toward keep_last or fill a bucket);
- a snapshot the policy did not take (policy None: "manual"; another policy's
  name: "other policy: <name>") is governed by its `expires_at` alone;
- the policy's own snapshots follow `expires_at` if set, `max_age`, the
  rules, and `min_free`.

The rules are Proxmox Backup Server's prune rules (its `mark_selections`), evaluated on the policy's
snapshots younger than max_age and not expired, newest first, in the order
keep_last, hourly, daily, weekly, monthly, yearly:

- keep_last N keeps the N newest;
- a bucket rule with count N walks the snapshots newest first, skipping every
  snapshot an earlier rule already decided and every snapshot whose period
  already holds one kept by an earlier rule (those periods do not count);
  the first snapshot met in a new period is kept for that period, until N
  periods are kept, then the rule stops; a later snapshot met in a period
  this rule already kept is passed over, and no later rule considers it;
- a snapshot no rule keeps is deleted now ("outside grid").

Periods are read in the policy's time zone: an hour (the autumn's repeated
hour is two periods, where PBS has one), a day, an ISO week (Monday to Sunday), a month, a year.
Reasons read "keep_last", "hourly 2024-05-01T13" (a repeated hour gets its
offset: "hourly 2024-10-27T02+01:00"), "daily 2024-05-01", "weekly 2024-W18",
"monthly 2024-05", "yearly 2024".

max_age deletes a policy snapshot at created_at + max_age even when a rule
would keep it (dropping it first changes nothing the rules decide for younger
ones: every snapshot in a period with an over-age newest one is over age too).

min_free (with the pool's Space): when free space is below the target, the
policy's oldest kept snapshots beyond its newest keep_last go ("min_free"),
oldest first, until the sizes of everything deleted in this pass would meet
the target; a snapshot of unknown size ends the pass after it (the pruner
measures the pool again before the next).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from datetime import datetime
from typing import Mapping, Sequence
from zoneinfo import ZoneInfo

from snapd.core.policies.spec import Grid, PolicySpec

RULES = ("keep_last", *(f.name for f in fields(Grid)))
"""The rules in the order they are applied; a rule's index is its position here."""


@dataclass(frozen=True)
class Snap:
    """What retention needs to know of one snapshot."""

    name: str
    created_at: float
    expires_at: float | None
    policy: str | None
    hold: str | None
    size: int | None = None


@dataclass(frozen=True)
class Verdict:
    """Why a snapshot is kept (`keep`), or when and why it goes (`delete_at` <= now: now)."""

    name: str
    keep: tuple[str, ...]
    delete_at: float | None
    delete_reason: str | None


@dataclass(frozen=True)
class Space:
    """A pool's free and total bytes."""

    free: int
    total: int


Keys = tuple[int, int, int, int, int]
"""A snapshot's (hour, day, ISO week, month, year) periods, as comparable ints."""


CACHE = 1 << 16
"""Entries of the period and reason caches: a pruner pass over a host's snapshots asks again
for the same instants (a container's kept snapshots, the plan's steps)."""


@lru_cache(maxsize=CACHE)
def period_keys(t: float, tz: ZoneInfo) -> Keys:
    """The periods instant `t` falls in, read in zone `tz`."""
    dt = datetime.fromtimestamp(t, tz)
    day = dt.toordinal()
    iso_year, week, _ = dt.isocalendar()
    return day * 48 + dt.hour * 2 + dt.fold, day, iso_year * 100 + week, dt.year * 12 + dt.month, dt.year


def select(order: Sequence[int], keys: Mapping[int, Keys], keep_last: int, grid: Grid) -> dict[int, int]:
    """The rules applied to candidates `order` (ids, newest first): id -> index in RULES of
    the rule that keeps it; ids not in the answer are not kept.  `keys[id]` are its periods."""
    kept: dict[int, int] = {i: 0 for i in order[:keep_last]}
    passed: set[int] = set()
    for rule, count in enumerate((grid.hourly, grid.daily, grid.weekly, grid.monthly, grid.yearly), 1):
        if count <= 0:
            continue
        k = rule - 1
        covered = {keys[i][k] for i in kept}
        periods: set[int] = set()
        for i in order:
            if i in kept or i in passed:
                continue
            period = keys[i][k]
            if period in covered:
                continue
            if period in periods:
                passed.add(i)
            elif len(periods) < count:
                periods.add(period)
                kept[i] = rule
            else:
                break
    return kept


@lru_cache(maxsize=CACHE)
def describe(rule: int, t: float, tz: ZoneInfo) -> str:
    """The reason rule `rule` gives for keeping the snapshot taken at `t`."""
    if rule == 0:
        return "keep_last"
    dt = datetime.fromtimestamp(t, tz)
    name = RULES[rule]
    if name == "hourly":
        stamp = dt.strftime("%Y-%m-%dT%H")
        if dt.replace(fold=1 - dt.fold).utcoffset() != dt.utcoffset():
            stamp += dt.isoformat()[-6:]
        return f"hourly {stamp}"
    if name == "daily":
        return f"daily {dt:%Y-%m-%d}"
    if name == "weekly":
        iso_year, week, _ = dt.isocalendar()
        return f"weekly {iso_year}-W{week:02d}"
    if name == "monthly":
        return f"monthly {dt:%Y-%m}"
    return f"yearly {dt.year}"


def time_limit(snap: Snap, spec: PolicySpec) -> tuple[float, str] | None:
    """When one of the policy's snapshots goes whatever the rules say: (instant, reason)."""
    limits = []
    if snap.expires_at is not None:
        limits.append((snap.expires_at, "expires_at"))
    if spec.max_age is not None:
        limits.append((snap.created_at + spec.max_age, "max_age"))
    return min(limits) if limits else None


def outsider(snap: Snap, spec: PolicySpec | None) -> Verdict | None:
    """The verdict for a held snapshot or one the policy does not own; None for the policy's own."""
    if snap.hold is not None:
        return Verdict(snap.name, (f"hold: {snap.hold}",), None, None)
    if spec is not None and snap.policy == spec.name:
        return None
    label = "manual" if snap.policy is None else f"other policy: {snap.policy}"
    if snap.expires_at is None:
        return Verdict(snap.name, (label,), None, None)
    return Verdict(snap.name, (label,), snap.expires_at, "expires_at")


def newest_first(snaps: Sequence[Snap], ids: list[int]) -> list[int]:
    """`ids` ordered by their snapshot's creation, newest first (name breaks ties)."""
    return sorted(ids, key=lambda i: (snaps[i].created_at, snaps[i].name), reverse=True)


def retain(snaps: Sequence[Snap], spec: PolicySpec | None, now: float, *,
           space: Space | None = None) -> list[Verdict]:
    """One verdict per snapshot, in the order given (see the module docstring for the rules)."""
    out: list[Verdict | None] = [outsider(s, spec) for s in snaps]
    if spec is None:
        return out  # type: ignore[return-value]
    tz = spec.tz
    limits: dict[int, tuple[float, str] | None] = {}
    for i, v in enumerate(out):
        if v is not None:
            continue
        limit = limits[i] = time_limit(snaps[i], spec)
        if limit is not None and limit[0] <= now:
            out[i] = Verdict(snaps[i].name, (), limit[0], limit[1])
            del limits[i]
    order = newest_first(snaps, list(limits))
    keys: dict[int, Keys] = {i: period_keys(snaps[i].created_at, tz) for i in order}
    kept = select(order, keys, spec.keep_last, spec.keep)
    for i in order:
        snap = snaps[i]
        if i not in kept:
            out[i] = Verdict(snap.name, (), now, "outside grid")
            continue
        limit = limits[i]
        out[i] = Verdict(snap.name, (describe(kept[i], snap.created_at, tz),),
                         None if limit is None else limit[0], None if limit is None else limit[1])
    if space is not None and spec.min_free is not None:
        _free_space(snaps, out, order[spec.keep_last:], spec, space, now)
    return out  # type: ignore[return-value]


def _free_space(snaps: Sequence[Snap], out: list[Verdict | None], beyond_last: list[int],
                spec: PolicySpec, space: Space, now: float) -> None:
    """Turn kept snapshots in `beyond_last` (newest first) into "min_free" deletions, oldest first."""
    assert spec.min_free is not None
    need = spec.min_free.target(space.total) - space.free
    for i, v in enumerate(out):
        if need <= 0:
            return
        if v is not None and v.delete_at is not None and v.delete_at <= now:
            size = snaps[i].size
            if size is None:
                return  # unknown: measure again after these deletions
            need -= size
    for i in reversed(beyond_last):
        if need <= 0:
            return
        v = out[i]
        assert v is not None
        if v.delete_at is not None and v.delete_at <= now:
            continue
        out[i] = Verdict(v.name, (), now, "min_free")
        size = snaps[i].size
        if size is None:
            return
        need -= size

