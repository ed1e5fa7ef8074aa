"""A known-answer year, like sanoid's one-year test: an hourly policy in Europe/Berlin runs for
all of 2024 on a fake clock (both DST changes, irregular clock steps, one NTP step back and one
forward), taking snapshots through due_slot() and pruning through retain().  Every real hour gets
exactly one snapshot, and the survivors at the end are the ones worked out by hand below."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from snapd.core.policies.retention import Snap, retain
from snapd.core.policies.schedule import due_slot
from snapd.core.policies.spec import parse_policy

BERLIN = ZoneInfo("Europe/Berlin")
SPEC = parse_policy("hourly", {
    "schedule": "0 * * * *", "timezone": "Europe/Berlin", "applies_to": ["project:web"], "keep_last": 3,
    "keep": {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 12}}, "file")


def b(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, year: int = 2024,
      fold: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=BERLIN, fold=fold).timestamp()


START = b(1, 1)
END = b(12, 31, 23, 30)  # the clock stops before this; the last slot taken is 31 Dec 23:00
# The clock normally moves 10 minutes a step.  From the wall time on the left it moves by the
# step on the right instead, once.
IRREGULAR = {
    b(2, 10, 12, 50): 420, b(2, 10, 12, 57): 780,  # 13:00 is taken at 13:10
    b(5, 5, 12, 50): 599, b(5, 5, 12, 59, 59): 1,  # 13:00 is taken on the dot
    b(6, 15, 10, 10): -600,  # NTP steps back 20 min during a 10-minute step: 10:10 -> 10:00
    b(8, 20, 14, 20): 3000,  # NTP steps forward 40 min during a 10-minute step: 14:20 -> 15:10
}
LATE = {b(2, 10, 13): 600, b(8, 20, 15): 600}
"""Slots taken after their instant (seconds late); every other one is taken on the dot."""


def run_year() -> tuple[list[float], dict[float, float], dict[str, Snap]]:
    irregular = dict(IRREGULAR)
    slots: list[float] = []
    late: dict[float, float] = {}
    alive: dict[str, Snap] = {}
    last_slot: float | None = None
    now = START
    while now < END:
        slot = due_slot(SPEC.schedule, BERLIN, 0.0, last_slot, now)
        if slot is not None:
            slots.append(slot)
            last_slot = slot
            if now != slot:
                late[slot] = now - slot
            name = datetime.fromtimestamp(now, BERLIN).strftime("%Y-%m-%dT%H:%M%z")
            alive[name] = Snap(name, now, None, "hourly", None)
            for verdict in retain(list(alive.values()), SPEC, now):
                if verdict.delete_at is not None and verdict.delete_at <= now:
                    del alive[verdict.name]
        now += irregular.pop(now, 600)
    assert not irregular, "every irregular step happened"
    return slots, late, alive


def expected_survivors() -> dict[float, str]:
    """Worked out by hand from the rules (newest first; see retention's docstring)."""
    out: dict[float, str] = {}
    # keep_last 3: the three newest
    for h in (23, 22, 21):
        out[b(12, 31, h)] = "keep_last"
    # hourly 24: hours 31 Dec 20..00 (21) and 30 Dec 23, 22, 21 (3)
    for h in range(20, -1, -1):
        out[b(12, 31, h)] = f"hourly 2024-12-31T{h:02d}"
    for h in (23, 22, 21):
        out[b(12, 30, h)] = f"hourly 2024-12-30T{h:02d}"
    # daily 7: 31 and 30 Dec already hold kept snapshots (they do not count); 29 .. 23 Dec keep
    # their newest (23:00) and pass the rest over
    for d in range(29, 22, -1):
        out[b(12, d, 23)] = f"daily 2024-12-{d:02d}"
    # weekly 4: 2025-W01 (30-31 Dec) and W52 (23-29 Dec) are covered; W51 .. W48 keep their
    # newest not yet decided: Sundays 22, 15, 8 and 1 Dec at 23:00.  W48 runs from Mon 25 Nov,
    # so 25-30 Nov are passed over here.
    for d, w in ((22, 51), (15, 50), (8, 49), (1, 48)):
        out[b(12, d, 23)] = f"weekly 2024-W{w}"
    # monthly 12: December is covered.  Earlier months lost their last days long ago: when the
    # days of a month in the week that runs into the next month left the daily window, that week
    # was covered by the next month's daily snapshots and the month by the weekly one of its
    # last full week, so no rule kept them.  What stays of such a month is the Sunday ending
    # its last full week (kept weekly, then monthly); a month ending on a Sunday keeps its last
    # day.  2024: 31 Mar and 30 Jun are Sundays.  The 12th month would be December 2023: none.
    for m, sunday in ((11, 24), (10, 27), (9, 29), (8, 25), (7, 28), (6, 30), (5, 26), (4, 28), (3, 31),
                      (2, 25), (1, 28)):
        out[b(m, sunday, 23)] = f"monthly 2024-{m:02d}"
    return out


def test_a_year_of_hourly_snapshots_in_berlin() -> None:
    began = time.perf_counter()
    slots, late, alive = run_year()
    elapsed = time.perf_counter() - began

    # one slot per real hour of 2024 in Berlin: 366 days, the 23-hour March day and the 25-hour
    # October day cancel out; none doubled (not by the NTP step back), none skipped (not by the
    # step forward: its slot was caught, late)
    assert len(slots) == 366 * 24
    assert slots == [START + 3600 * k for k in range(366 * 24)]
    assert late == LATE
    # the days of the DST changes
    march = [s for s in slots if b(3, 31) <= s < b(4, 1)]
    october = [s for s in slots if b(10, 27) <= s < b(10, 28)]
    assert len(march) == 23 and len(october) == 25
    assert b(10, 27, 2, fold=0) in october and b(10, 27, 2, fold=1) in october

    expected = expected_survivors()
    assert len(expected) == 3 + 24 + 7 + 4 + 11
    assert sorted(s.created_at for s in alive.values()) == sorted(expected)
    # and for the reason worked out
    final = retain(list(alive.values()), SPEC, END)
    assert {s.created_at: v.keep for s, v in zip(alive.values(), final)} == \
        {t: (reason,) for t, reason in expected.items()}
    assert elapsed < 10
