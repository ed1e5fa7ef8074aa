"""Schedules: slots are real instants; DST neither doubles nor skips an hourly slot; due_slot
takes one catch-up after downtime and never repeats a slot when the clock steps back."""

from __future__ import annotations

import bisect
import random
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from snapd.core.policies.schedule import (
    Schedule, due_slot, format_duration, jitter_offset, next_planned, parse_duration, parse_schedule)

BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")
H = 3600.0


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()


def test_hourly_cron_gives_one_slot_per_real_hour_across_a_year_in_berlin() -> None:
    start, end = utc(2023, 12, 31, 23), utc(2024, 12, 31, 23)  # Berlin's 2024, both DST changes
    began = time.perf_counter()
    got = list(parse_schedule("0 * * * *").slots(start, end, BERLIN))
    elapsed = time.perf_counter() - began
    assert got == [start + H * i for i in range(1, 8785)]  # 366 days * 24, no hour doubled or lost
    assert elapsed < 1.0


def test_spring_forward_keeps_every_real_hour() -> None:
    got = list(parse_schedule("0 * * * *").slots(utc(2024, 3, 30, 23), utc(2024, 3, 31, 3), BERLIN))
    walls = [datetime.fromtimestamp(t, BERLIN).strftime("%H:%M%z") for t in got]
    assert walls == ["01:00+0100", "03:00+0200", "04:00+0200", "05:00+0200"]


def test_fall_back_gives_the_repeated_hour_its_own_slot() -> None:
    got = list(parse_schedule("0 * * * *").slots(utc(2024, 10, 26, 22), utc(2024, 10, 27, 3), BERLIN))
    walls = [datetime.fromtimestamp(t, BERLIN).strftime("%H:%M%z") for t in got]
    assert walls == ["01:00+0200", "02:00+0200", "02:00+0100", "03:00+0100", "04:00+0100"]
    # the local day of the change has 25 hourly slots, the spring one 23
    day = parse_schedule("0 * * * *")
    assert len(list(day.slots(local(BERLIN, 2024, 10, 27) - 1, local(BERLIN, 2024, 10, 28) - 1, BERLIN))) == 25
    assert len(list(day.slots(local(BERLIN, 2024, 3, 31) - 1, local(BERLIN, 2024, 4, 1) - 1, BERLIN))) == 23


def test_a_daily_time_the_clock_skips_runs_when_it_jumps_and_a_repeated_one_runs_once() -> None:
    daily = parse_schedule("30 2 * * *")
    spring = list(daily.slots(utc(2024, 3, 29), utc(2024, 4, 2), BERLIN))
    assert [datetime.fromtimestamp(t, BERLIN).isoformat() for t in spring] == [
        "2024-03-29T02:30:00+01:00", "2024-03-30T02:30:00+01:00",
        "2024-03-31T03:00:00+02:00",  # 02:30 does not exist that day: at the jump, like Debian cron
        "2024-04-01T02:30:00+02:00"]
    autumn = list(daily.slots(utc(2024, 10, 26), utc(2024, 10, 29), BERLIN))
    assert [datetime.fromtimestamp(t, BERLIN).isoformat() for t in autumn] == [
        "2024-10-26T02:30:00+02:00", "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]


def test_cron_is_read_in_the_policy_zone() -> None:
    daily = parse_schedule("0 9 * * *")
    assert next(daily.slots(utc(2024, 1, 10), utc(2024, 1, 11), BERLIN)) == utc(2024, 1, 10, 8)
    assert next(daily.slots(utc(2024, 7, 10), utc(2024, 7, 11), BERLIN)) == utc(2024, 7, 10, 7)
    assert next(daily.slots(utc(2024, 7, 10), utc(2024, 7, 11), UTC)) == utc(2024, 7, 10, 9)


def test_interval_slots_are_multiples_of_the_interval() -> None:
    every = parse_schedule("every 15m")
    assert every == Schedule("every 15m", 900)
    assert list(every.slots(1000.0, 3700.0, BERLIN)) == [1800.0, 2700.0, 3600.0]
    assert list(every.slots(900.0, 1800.0, BERLIN)) == [1800.0]
    assert every.latest(1799.9, BERLIN) == 900.0 and every.latest(1800.0, BERLIN) == 1800.0
    assert every.next_after(1800.0, BERLIN) == 2700.0
    assert list(parse_schedule("every 2s").slots(10.0, 16.0, UTC)) == [12.0, 14.0, 16.0]


EXPRESSIONS = ["0 * * * *", "*/20 * * * *", "30 2 * * *", "0 2 * * *", "15 1-3 * * *", "0 0 * * 0",
               "0 3 1 * *", "45 23 * * 1-5", "0 0 29 2 *"]
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]


CASES = [(e, z) for e in EXPRESSIONS for z in ZONES
         if not e.startswith("*/20") or z in ("Europe/Berlin", "Australia/Lord_Howe")]  # cronsim is slow there


@pytest.mark.parametrize("expr, zone", CASES)
def test_latest_agrees_with_slots(expr: str, zone: str) -> None:
    """latest() is defined by slots(): random order (fresh searches) and rising order (its
    forward steps) give the same answers, also in the hours around DST changes."""
    tz = ZoneInfo(zone)
    rng = random.Random(f"{expr}{zone}")
    lo, hi = utc(2024, 2, 15), utc(2024, 11, 20)  # every DST change of these zones in 2024
    back = 5 * 366 * 86400 if "29 2" in expr else 40 * 86400  # room for the newest slot before lo
    every = list(parse_schedule(expr).slots(lo - back, hi, tz))
    points = [rng.uniform(lo, hi) for _ in range(150)]
    # around DST changes and on slots exactly
    for changes in (utc(2024, 3, 31, 1), utc(2024, 10, 27, 1), utc(2024, 3, 10, 7), utc(2024, 11, 3, 6),
                    utc(2024, 4, 6, 15), utc(2024, 10, 5, 15)):
        points += [changes + k * 600.0 for k in range(-24, 24)]
    points += [s for s in every if s > lo][::max(1, len(every) // 20)]

    def expected(at: float) -> float:
        return every[bisect.bisect_right(every, at) - 1]

    fresh = parse_schedule(expr)
    for at in points:
        assert fresh.latest(at, tz) == expected(at), datetime.fromtimestamp(at, tz)
    rising = parse_schedule(expr)
    for at in sorted(points):
        assert rising.latest(at, tz) == expected(at), datetime.fromtimestamp(at, tz)


def test_latest_on_a_slot_is_that_slot() -> None:
    hourly = parse_schedule("0 * * * *")
    assert hourly.latest(utc(2024, 5, 1, 12), BERLIN) == utc(2024, 5, 1, 12)
    assert hourly.latest(utc(2024, 5, 1, 12) - 0.001, BERLIN) == utc(2024, 5, 1, 11)


def test_jitter_offset_is_stable_and_spread() -> None:
    a = jitter_offset("hourly", "507f1f77bcf86cd799439011", 300)
    assert a == jitter_offset("hourly", "507f1f77bcf86cd799439011", 300)
    assert 0 <= a < 300
    offsets = [jitter_offset("hourly", f"{i:024x}", 300) for i in range(1000)]
    assert all(0 <= o < 300 for o in offsets)
    assert min(offsets) < 10 and max(offsets) > 290  # spread over the window
    assert len(set(offsets)) == 1000
    assert jitter_offset("daily", "507f1f77bcf86cd799439011", 300) != a
    assert jitter_offset("hourly", "507f1f77bcf86cd799439011", 0) == 0.0


HOURLY = parse_schedule("0 * * * *")


def test_due_slot_waits_for_the_planned_instant() -> None:
    slot = utc(2024, 5, 1, 12)
    last = slot - H
    assert due_slot(HOURLY, BERLIN, 120.0, last, slot + 119) is None
    assert due_slot(HOURLY, BERLIN, 120.0, last, slot + 120) == slot
    assert due_slot(HOURLY, BERLIN, 120.0, slot, slot + 121) is None  # taken: not again


def test_after_downtime_one_catch_up_never_n() -> None:
    last = utc(2024, 5, 1, 3)
    now = utc(2024, 5, 1, 12, 40)  # nine slots missed
    assert due_slot(HOURLY, BERLIN, 0.0, last, now) == utc(2024, 5, 1, 12)
    assert due_slot(HOURLY, BERLIN, 0.0, utc(2024, 5, 1, 12), now) is None


def test_a_clock_stepped_back_repeats_no_slot() -> None:
    taken = utc(2024, 5, 1, 12)
    for now in (taken - 1, taken - 600, taken - 5 * H):
        assert due_slot(HOURLY, BERLIN, 0.0, taken, now) is None
    assert due_slot(HOURLY, BERLIN, 0.0, taken, taken + H) == taken + H


def test_never_ran_takes_the_latest_slot() -> None:
    assert due_slot(HOURLY, BERLIN, 0.0, None, utc(2024, 5, 1, 12, 30)) == utc(2024, 5, 1, 12)


def test_next_planned() -> None:
    now = utc(2024, 5, 1, 12, 30)
    assert next_planned(HOURLY, BERLIN, 60.0, utc(2024, 5, 1, 12), now) == utc(2024, 5, 1, 13) + 60
    assert next_planned(HOURLY, BERLIN, 60.0, utc(2024, 5, 1, 11), now) == utc(2024, 5, 1, 12) + 60  # due now
    # a clock stepped back: the next is after the slot already taken
    assert next_planned(HOURLY, BERLIN, 0.0, utc(2024, 5, 1, 14), now) == utc(2024, 5, 1, 15)
    # offset larger than the time since the slot: the current slot is still ahead
    assert next_planned(HOURLY, BERLIN, 2400.0, utc(2024, 5, 1, 11), now) == utc(2024, 5, 1, 12) + 2400


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1h", 3600), ("400d", 400 * 86400),
                                           ("1w", 604800), ("0s", 0)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_picks_the_largest_exact_unit() -> None:
    assert [format_duration(s) for s in (0, 59, 60, 90, 3600, 86400 * 14, 86400 * 400)] == \
        ["0s", "59s", "1m", "90s", "1h", "2w", "400d"]
