"""When a policy's snapshots are due: cron or fixed-interval slots, read in the policy's zone.

A slot is a real instant (epoch seconds).  Cron expressions (5 fields) are
evaluated by cronsim in the policy's time zone:

- an expression whose hour field starts with `*` (`0 * * * *`, `*/15 * * * *`)
  runs on real time: in the autumn's repeated hour it fires once in each real
  hour, and on the spring day the clock skips an hour no real hour loses its
  slot (03:00 CEST follows 01:00 CET);
- an expression at fixed hours (`30 2 * * *`) behaves like Debian cron: a
  time the clock skips runs when the clock jumps (03:00 on the spring day), a
  time that happens twice runs the first time only.

`every N<unit>` intervals (s, m, h, d, w) are the multiples of N seconds since
the Unix epoch; they ignore the zone (use cron for wall-clock times).

The scheduler remembers the last slot it took per policy and container;
`due_slot` then gives at most the latest due slot, so downtime ends in one
catch-up snapshot and a wall clock stepped back never repeats a slot.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
"""Duration units, in seconds."""
_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_EVERY = re.compile(r"every\s+(\S+)")
_PROBE = datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC"))
_FORWARD_STEPS = 8
"""latest() walks forward from its last answer this many slots before searching afresh."""


class ScheduleError(ValueError):
    """A schedule text that does not parse (the message says why)."""


def parse_duration(text: str) -> int:
    """`"90s"`, `"5m"`, `"1h"`, `"400d"`, `"1w"` -> seconds (ValueError otherwise)."""
    m = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not a duration like '90s', '5m', '1h', '400d' or '1w'")
    return int(m.group(1)) * UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact form: 300 -> "5m", 90 -> "90s", 0 -> "0s"."""
    s = int(seconds)
    for unit in ("w", "d", "h", "m"):
        if s and s % UNITS[unit] == 0:
            return f"{s // UNITS[unit]}{unit}"
    return f"{s}s"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: `text` is its canonical form, `interval` is set for `every ...`."""

    text: str
    interval: int | None = None
    _near: dict = field(default_factory=dict, compare=False, repr=False, hash=False)
    """zone key -> (lo, hi): the last latest() answer and the slot after it."""

    def slots(self, after: float, until: float, tz: ZoneInfo) -> Iterator[float]:
        """The slot instants t with after < t <= until, in order."""
        if self.interval is not None:
            k = math.floor(after / self.interval) + 1
            while k * self.interval <= until:
                yield float(k * self.interval)
                k += 1
            return
        for t in self._forward(after, tz):
            if t > until:
                return
            yield t

    def next_after(self, t: float, tz: ZoneInfo) -> float | None:
        """The first slot after `t` (None: the expression never fires again)."""
        return next(self._forward(t, tz), None) if self.interval is None else \
            float((math.floor(t / self.interval) + 1) * self.interval)

    def latest(self, at: float, tz: ZoneInfo) -> float | None:
        """The newest slot instant <= at (None: none in the 50 years before)."""
        if self.interval is not None:
            return float(math.floor(at / self.interval) * self.interval)
        lo, hi = self._near.get(tz, (math.inf, math.inf))
        if lo <= at < hi:
            return lo
        if hi <= at:  # the usual case: time moved on a little since the last call
            steps = self._forward(hi - 1, tz)
            for _ in range(_FORWARD_STEPS):
                nxt = next(steps, math.inf)
                if nxt > at:
                    self._near[tz] = (hi, nxt)
                    return hi
                hi = nxt
        lo, hi = self._around(at, tz)
        self._near[tz] = (lo, hi)
        return None if lo == -math.inf else lo

    def _forward(self, after: float, tz: ZoneInfo) -> Iterator[float]:
        """Every slot after `after`, in order (cron only)."""
        for dt in CronSim(self.text, datetime.fromtimestamp(after, tz)):
            yield dt.timestamp()

    def _around(self, at: float, tz: ZoneInfo) -> tuple[float, float]:
        """(newest slot <= at or -inf, first slot > at or inf), searched afresh.

        cronsim's reverse iteration finds a candidate fast, but around a DST change
        it can land on a different instant than forward iteration (the definition
        of the slots); the answer is therefore read from a forward walk that starts
        at the candidate, going back further when the candidate was not a slot.
        """
        start = datetime.fromtimestamp(math.floor(at) + 1, tz)
        candidate = next(CronSim(self.text, start, reverse=True), None)
        if candidate is None:
            return -math.inf, next(self._forward(at, tz), math.inf)
        begin = candidate.timestamp() - 1
        for back in (0, 2 * 86400, 35 * 86400, 400 * 86400):
            lo = -math.inf
            for t in self._forward(begin - back, tz):
                if t > at:
                    if lo != -math.inf:
                        return lo, t
                    break
                lo = t
            else:
                if lo != -math.inf:
                    return lo, math.inf
        return -math.inf, next(self._forward(at, tz), math.inf)


def parse_schedule(text: str) -> Schedule:
    """A 5-field cron expression or `every N<s|m|h|d|w>`; ScheduleError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError("must be a cron expression (5 fields) or 'every N<s|m|h|d|w>'")
    if len(text) > 200:
        raise ScheduleError("is longer than 200 characters")
    m = _EVERY.fullmatch(text.strip())
    if m is not None:
        try:
            seconds = parse_duration(m.group(1))
        except ValueError as exc:
            raise ScheduleError(str(exc)) from None
        if seconds == 0:
            raise ScheduleError("an interval must be at least 1s")
        return Schedule(f"every {format_duration(seconds)}", seconds)
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"a cron expression has 5 fields (minute hour day month weekday), not {len(fields)}")
    canonical = " ".join(fields)
    try:
        first = next(CronSim(canonical, _PROBE), None)
    except CronSimError as exc:
        raise ScheduleError(f"{canonical!r}: {exc}") from None
    except (ValueError, IndexError, TypeError):
        raise ScheduleError(f"{canonical!r} is not a cron expression") from None
    if first is None:
        raise ScheduleError(f"{canonical!r} never fires")
    return Schedule(canonical)


def jitter_offset(policy: str, container_id: str, jitter: float) -> float:
    """A stable offset in [0, jitter) for one container under one policy (hash based)."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.sha256(f"{policy}\0{container_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * jitter


def due_slot(schedule: Schedule, tz: ZoneInfo, jitter_offset: float, last_slot: float | None,
             now: float) -> float | None:
    """The nominal slot to take now, or None.

    Only the latest slot whose planned instant (slot + offset) is <= now and
    that is after `last_slot`: after downtime one catch-up, never N; a clock
    stepped back repeats nothing.  With no `last_slot` (never ran) the latest
    slot is due at once; a scheduler that wants to wait for the next slot seeds
    `last_slot` with `schedule.latest(now - offset, tz)` instead.
    """
    slot = schedule.latest(now - jitter_offset, tz)
    if slot is None or (last_slot is not None and slot <= last_slot):
        return None
    return slot


def next_planned(schedule: Schedule, tz: ZoneInfo, offset: float, last_slot: float | None,
                 now: float) -> float:
    """When the next snapshot is planned (slot + offset): <= now when one is due now.

    math.inf when the schedule never fires again.
    """
    due = due_slot(schedule, tz, offset, last_slot, now)
    if due is not None:
        return due + offset
    base = now - offset if last_slot is None else max(now - offset, last_slot)
    nxt = schedule.next_after(base, tz)
    return math.inf if nxt is None else nxt + offset
