"""Retention: Proxmox Backup Server's prune rules on a policy's own snapshots, holds and manual
snapshots outside them, max_age and min_free; and the plan, which is retain() projected."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from snapd.core.policies.plan import MAX_PLANNED, plan_container
from snapd.core.policies.retention import Snap, Space, Verdict, retain
from snapd.core.policies.schedule import parse_schedule
from snapd.core.policies.spec import parse_policy

BERLIN = ZoneInfo("Europe/Berlin")
H = 3600.0
D = 86400.0


def spec_of(keep_last: int = 0, zone: str = "Europe/Berlin", schedule: str = "0 * * * *", **extra: object):
    data: dict = {"schedule": schedule, "timezone": zone, "applies_to": ["project:web"], "keep_last": keep_last}
    grid = {k: extra.pop(k) for k in ("hourly", "daily", "weekly", "monthly", "yearly") if k in extra}
    if grid:
        data["keep"] = grid
    data.update(extra)
    return parse_policy("p", data, "api")


def at(*args: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()


def snap(name: str, t: float, policy: str | None = "p", hold: str | None = None,
         expires_at: float | None = None, size: int | None = None) -> Snap:
    return Snap(name, t, expires_at, policy, hold, size)


def kept(verdicts: list[Verdict], now: float) -> dict[str, tuple[str, ...]]:
    return {v.name: v.keep for v in verdicts if v.delete_at is None or v.delete_at > now}


def gone(verdicts: list[Verdict], now: float) -> dict[str, str | None]:
    return {v.name: v.delete_reason for v in verdicts if v.delete_at is not None and v.delete_at <= now}


NOW = at(2024, 5, 1, 13, 30)


def test_keep_last_keeps_the_newest() -> None:
    snaps = [snap(f"s{i}", NOW - i * H) for i in range(6)]
    out = retain(snaps, spec_of(keep_last=2), NOW)
    assert kept(out, NOW) == {"s0": ("keep_last",), "s1": ("keep_last",)}
    assert gone(out, NOW) == {f"s{i}": "outside grid" for i in range(2, 6)}
    assert all(v.delete_at == NOW for v in out[2:])
    assert [v.name for v in out] == [s.name for s in snaps]  # the order given


def test_hourly_keeps_the_newest_of_each_hour_and_empty_hours_do_not_count() -> None:
    snaps = [snap("a", at(2024, 5, 1, 13, 10)), snap("b", at(2024, 5, 1, 13, 5)),
             snap("c", at(2024, 5, 1, 11, 50)), snap("d", at(2024, 5, 1, 11, 0)),
             snap("e", at(2024, 5, 1, 8, 0)), snap("f", at(2024, 5, 1, 7, 0))]
    out = retain(snaps, spec_of(hourly=3), NOW)
    assert kept(out, NOW) == {"a": ("hourly 2024-05-01T13",), "c": ("hourly 2024-05-01T11",),
                              "e": ("hourly 2024-05-01T08",)}
    assert set(gone(out, NOW)) == {"b", "d", "f"}


def test_a_period_already_holding_a_kept_snapshot_is_skipped() -> None:
    snaps = [snap("s1100", at(2024, 5, 1, 11, 0)), snap("s1030", at(2024, 5, 1, 10, 30)),
             snap("s1000", at(2024, 5, 1, 10, 0)), snap("s0900", at(2024, 5, 1, 9, 0)),
             snap("s0800", at(2024, 5, 1, 8, 0))]
    out = retain(snaps, spec_of(keep_last=1, hourly=2), NOW)
    # hour 11 holds the keep_last one: it does not count; hours 10 and 9 fill the two buckets
    assert kept(out, NOW) == {"s1100": ("keep_last",), "s1030": ("hourly 2024-05-01T10",),
                              "s0900": ("hourly 2024-05-01T09",)}


def test_a_snapshot_a_rule_passed_over_is_not_picked_by_a_later_rule() -> None:
    """ISO week 2024-W18 is Mon 29 April to Sun 5 May.  The weekly rule keeps 1 May for W18 and
    passes over 30 and 29 April (older, same week); the monthly rule then finds May covered and
    keeps April's newest snapshot it may still consider: 10 April, not 30 April (as PBS does)."""
    snaps = [snap("may01", at(2024, 5, 1, 12)), snap("apr30", at(2024, 4, 30, 12)),
             snap("apr29", at(2024, 4, 29, 12)), snap("apr10", at(2024, 4, 10, 12)),
             snap("mar05", at(2024, 3, 5, 12))]
    out = retain(snaps, spec_of(weekly=1, monthly=2), NOW)
    assert kept(out, NOW) == {"may01": ("weekly 2024-W18",), "apr10": ("monthly 2024-04",),
                              "mar05": ("monthly 2024-03",)}


def test_daily_backups_under_a_grid() -> None:
    """A daily snapshot at 12:00 for 60 days (2 March .. 30 April) under keep_last 3, daily 7,
    weekly 4, monthly 3, worked out by hand."""
    days = [datetime(2024, 4, 30, 12, tzinfo=BERLIN) - timedelta(days=i) for i in range(60)]
    snaps = [snap(d.strftime("%m-%d"), d.timestamp()) for d in days]
    out = retain(snaps, spec_of(keep_last=3, daily=7, weekly=4, monthly=3), NOW)
    assert kept(out, NOW) == {
        "04-30": ("keep_last",), "04-29": ("keep_last",), "04-28": ("keep_last",),
        **{f"04-{d}": (f"daily 2024-04-{d}",) for d in ("27", "26", "25", "24", "23", "22", "21")},
        # 21 April is a Sunday (W16, covered by the daily one); weeks 15, 14, 13, 12 end on Sundays
        "04-14": ("weekly 2024-W15",), "04-07": ("weekly 2024-W14",), "03-31": ("weekly 2024-W13",),
        "03-24": ("weekly 2024-W12",),
        # April and March are covered; February has no snapshot: the monthly rule runs out
    }


def test_iso_weeks_across_the_year_end() -> None:
    snaps = [snap("dec30", at(2024, 12, 30, 12)), snap("dec29", at(2024, 12, 29, 12))]
    out = retain(snaps, spec_of(weekly=2, yearly=1), at(2025, 1, 2))
    assert [v.keep for v in out] == [("weekly 2025-W01",), ("weekly 2024-W52",)]


def test_buckets_are_read_in_the_policy_zone() -> None:
    utc = ZoneInfo("UTC")
    late, early = at(2024, 5, 1, 22, 30, tz=utc), at(2024, 5, 2, 0, 30, tz=utc)  # both 2 May in Berlin
    snaps = [snap("early", early), snap("late", late)]
    now = early + H
    assert kept(retain(snaps, spec_of(daily=5), now), now) == {"early": ("daily 2024-05-02",)}
    assert kept(retain(snaps, spec_of(daily=5, zone="UTC"), now), now) == {
        "early": ("daily 2024-05-02",), "late": ("daily 2024-05-01",)}


def test_the_repeated_autumn_hour_is_two_periods() -> None:
    first, second = at(2024, 10, 27, 2, 30, fold=0), at(2024, 10, 27, 2, 30, fold=1)
    assert second - first == H
    snaps = [snap("second", second), snap("first", first), snap("before", at(2024, 10, 27, 1, 30))]
    out = retain(snaps, spec_of(hourly=24), second + 60)
    assert [v.keep for v in out] == [("hourly 2024-10-27T02+01:00",), ("hourly 2024-10-27T02+02:00",),
                                     ("hourly 2024-10-27T01",)]


def test_held_snapshots_are_kept_extra_to_the_rules() -> None:
    snaps = [snap("held-new", NOW - 60, hold="pre-upgrade"), snap("a", NOW - H), snap("b", NOW - 2 * H),
             snap("c", NOW - 3 * H), snap("held-old", NOW - 400 * D, hold="audit", expires_at=NOW - D)]
    out = retain(snaps, spec_of(keep_last=2, max_age="30d"), NOW, space=Space(0, 10**12))
    assert kept(out, NOW) == {"held-new": ("hold: pre-upgrade",), "a": ("keep_last",), "b": ("keep_last",),
                              "held-old": ("hold: audit",)}
    assert gone(out, NOW) == {"c": "outside grid"}
    assert out[0].delete_at is None and out[4].delete_at is None


def test_manual_and_other_policies_snapshots_follow_only_expires_at() -> None:
    snaps = [snap("manual", NOW - 900 * D, policy=None), snap("manual-exp", NOW - D, policy=None,
                                                                expires_at=NOW + D),
             snap("manual-past", NOW - D, policy=None, expires_at=NOW - 1),
             snap("other", NOW - 900 * D, policy="nightly"), snap("mine", NOW - H)]
    out = retain(snaps, spec_of(keep_last=1, max_age="1d"), NOW, space=Space(0, 10**12))
    assert out[0] == Verdict("manual", ("manual",), None, None)
    assert out[1] == Verdict("manual-exp", ("manual",), NOW + D, "expires_at")
    assert out[2] == Verdict("manual-past", ("manual",), NOW - 1, "expires_at")
    assert out[3] == Verdict("other", ("other policy: nightly",), None, None)
    assert out[4] == Verdict("mine", ("keep_last",), NOW - H + D, "max_age")


def test_without_a_policy_every_snapshot_follows_only_expires_at() -> None:
    out = retain([snap("a", NOW - H), snap("b", NOW - H, expires_at=NOW)], None, NOW)
    assert out == [Verdict("a", ("other policy: p",), None, None), Verdict("b", ("other policy: p",), NOW,
                                                                           "expires_at")]


def test_max_age_deletes_what_a_rule_would_keep() -> None:
    snaps = [snap("new", NOW - D), snap("old", NOW - 40 * D), snap("older", NOW - 70 * D)]
    out = retain(snaps, spec_of(monthly=12, max_age="60d"), NOW)
    assert out[0] == Verdict("new", ("monthly 2024-04",), NOW - D + 60 * D, "max_age")
    assert out[1] == Verdict("old", ("monthly 2024-03",), NOW + 20 * D, "max_age")
    assert out[2] == Verdict("older", (), NOW - 10 * D, "max_age")


def test_a_policy_snapshot_with_expires_at_goes_then() -> None:
    out = retain([snap("a", NOW - H, expires_at=NOW - 5), snap("b", NOW - 2 * H, expires_at=NOW + 5)],
                 spec_of(keep_last=5, max_age="1d"), NOW)
    assert out == [Verdict("a", (), NOW - 5, "expires_at"), Verdict("b", ("keep_last",), NOW + 5, "expires_at")]


GB = 1 << 30


def test_min_free_deletes_the_oldest_beyond_keep_last_until_the_target_is_met() -> None:
    snaps = [snap(f"s{i}", NOW - i * H, size=GB) for i in range(8)]
    snaps += [snap("held", NOW - 50 * H, hold="x", size=50 * GB), snap("manual", NOW - 60 * H, policy=None,
                                                                      size=50 * GB)]
    spec = spec_of(keep_last=2, hourly=24, min_free="10%")  # target 10 GiB of 100 GiB
    out = retain(snaps, spec, NOW, space=Space(free=7 * GB, total=100 * GB))
    # 3 GiB short: s7, s6, s5 go, oldest first
    assert gone(out, NOW) == {"s7": "min_free", "s6": "min_free", "s5": "min_free"}
    assert {"held", "manual", "s0", "s1"} <= set(kept(out, NOW))
    # far short: everything beyond keep_last goes, never the newest two, the held or the manual one
    out = retain(snaps, spec, NOW, space=Space(free=0, total=100 * GB))
    assert gone(out, NOW) == {f"s{i}": "min_free" for i in range(2, 8)}
    # enough space: nothing
    assert gone(retain(snaps, spec, NOW, space=Space(free=10 * GB, total=100 * GB)), NOW) == {}
    # no space given (or no min_free): nothing either
    assert gone(retain(snaps, spec, NOW), NOW) == {}


def test_min_free_counts_what_goes_anyway_and_stops_at_an_unknown_size() -> None:
    snaps = [snap(f"s{i}", NOW - i * H, size=GB) for i in range(6)]
    snaps.append(snap("expired", NOW - D, policy=None, expires_at=NOW - 1, size=2 * GB))
    spec = spec_of(keep_last=1, hourly=24, min_free="5G")
    out = retain(snaps, spec, NOW, space=Space(free=2 * GB, total=100 * GB))
    assert gone(out, NOW) == {"expired": "expires_at", "s5": "min_free"}  # 2 GiB + 1 GiB
    unknown = [snap(f"s{i}", NOW - i * H, size=None if i == 4 else GB) for i in range(6)]
    out = retain(unknown, spec, NOW, space=Space(free=0, total=100 * GB))
    assert gone(out, NOW) == {"s5": "min_free", "s4": "min_free"}  # then measure again


# --- an independent model of the PBS rules: period ids as PBS writes them (strftime strings) ---

FORMATS = {"hourly": "%Y/%m/%d/%H", "daily": "%Y/%m/%d", "weekly": "%G/%V", "monthly": "%Y/%m", "yearly": "%Y"}


def pbs_model(snaps: list[Snap], keep_last: int, grid: dict[str, int], tz: ZoneInfo) -> set[str]:
    ordered = sorted(snaps, key=lambda s: (s.created_at, s.name), reverse=True)
    mark: dict[str, bool] = {}
    rules = [("last", keep_last, lambda s: s.name)]
    for name, fmt in FORMATS.items():
        rules.append((name, grid.get(name, 0),
                      lambda s, fmt=fmt: datetime.fromtimestamp(s.created_at, tz).strftime(fmt)
                      + str(datetime.fromtimestamp(s.created_at, tz).fold)))
    for _, keep, select_id in rules:
        if keep == 0:
            continue
        already = {select_id(s) for s in ordered if mark.get(s.name) is True}
        include: set[str] = set()
        for s in ordered:
            if s.name in mark:
                continue
            sel = select_id(s)
            if sel in already:
                continue
            if sel not in include:
                if len(include) >= keep:
                    break
                include.add(sel)
                mark[s.name] = True
            else:
                mark[s.name] = False
    return {n for n, k in mark.items() if k}


@pytest.mark.parametrize("seed", range(40))
def test_retain_matches_a_model_of_the_pbs_rules(seed: int) -> None:
    rng = random.Random(seed)
    tz = ZoneInfo(rng.choice(["Europe/Berlin", "UTC", "America/New_York"]))
    now = datetime(2024, rng.randint(1, 12), rng.randint(1, 28), tzinfo=timezone.utc).timestamp()
    span = rng.choice([2 * D, 30 * D, 400 * D, 3 * 366 * D])
    snaps = [snap(f"s{i:04d}", now - rng.uniform(0, span)) for i in range(rng.randint(0, 300))]
    keep_last = rng.choice([0, 1, 3])
    grid = {k: rng.choice([0, 0, 1, 2, 5, 24]) for k in FORMATS}
    if keep_last == 0 and not any(grid.values()):
        keep_last = 1
    spec = spec_of(keep_last=keep_last, zone=tz.key, **grid)
    out = retain(snaps, spec, now)
    assert set(kept(out, now)) == pbs_model(snaps, keep_last, grid, tz)


# --- the plan ---

HOURLY = spec_of(keep_last=3)


def test_plan_lists_the_next_snapshots_with_the_offset() -> None:
    now = at(2024, 5, 1, 13, 30)
    plan = plan_container([], HOURLY, now, 3, BERLIN, offset=90.0, last_slot=at(2024, 5, 1, 13))
    assert plan.next_snapshots == [at(2024, 5, 1, h) + 90 for h in (14, 15, 16)]
    assert plan.until == now + 3 * H
    due = plan_container([], HOURLY, now, 1, BERLIN, offset=90.0, last_slot=at(2024, 5, 1, 12))
    assert due.next_snapshots == [at(2024, 5, 1, 13) + 90, at(2024, 5, 1, 14) + 90]  # the first: due now


def test_plan_says_when_keep_last_lets_each_go() -> None:
    now = at(2024, 5, 1, 13, 30)
    snaps = [snap(f"s{h}", at(2024, 5, 1, h)) for h in (13, 12, 11, 10)]
    plan = plan_container(snaps, HOURLY, now, 24, BERLIN, last_slot=at(2024, 5, 1, 13))
    assert plan.verdicts == [
        Verdict("s13", ("keep_last",), at(2024, 5, 1, 16), "outside grid"),
        Verdict("s12", ("keep_last",), at(2024, 5, 1, 15), "outside grid"),
        Verdict("s11", ("keep_last",), at(2024, 5, 1, 14), "outside grid"),
        Verdict("s10", (), now, "outside grid"),
    ]


def test_plan_keeps_beyond_the_horizon_and_shows_later_limits() -> None:
    now = at(2024, 5, 1, 13, 30)
    spec = spec_of(keep_last=3, daily=7, max_age="30d")
    snaps = [snap("today", at(2024, 5, 1, 13)), snap("yesterday", at(2024, 4, 30, 13)),
             snap("held", at(2024, 4, 1), hold="x"), snap("manual", at(2024, 4, 1), policy=None)]
    plan = plan_container(snaps, spec, now, 2, BERLIN, last_slot=at(2024, 5, 1, 13))
    assert plan.verdicts == [
        Verdict("today", ("keep_last",), at(2024, 5, 31, 13), "max_age"),
        Verdict("yesterday", ("keep_last",), at(2024, 5, 30, 13), "max_age"),
        Verdict("held", ("hold: x",), None, None),
        Verdict("manual", ("manual",), None, None)]


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_what_retain_then_does(seed: int) -> None:
    """Walk the plan's horizon the way the daemon does: at each planned instant take the snapshot
    and run retain(); every snapshot goes exactly when (and why) the plan said."""
    rng = random.Random(seed)
    spec = spec_of(keep_last=rng.choice([1, 3]), hourly=rng.choice([0, 6, 24]), daily=rng.choice([0, 3, 7]),
                   weekly=rng.choice([0, 2]), monthly=rng.choice([0, 3]), max_age=rng.choice([None, "5d", "9d"]),
                   schedule=rng.choice(["0 * * * *", "*/30 * * * *", "every 2h"]))
    now = at(2024, 10, 26, 12) + rng.uniform(0, 3 * H)  # the horizon crosses the autumn change
    snaps = [snap(f"old{i:03d}", now - rng.uniform(60, 20 * D)) for i in range(rng.randint(5, 120))]
    snaps += [snap("held", now - 2 * D, hold="x"), snap("manual", now - D, policy=None, expires_at=now + 5 * H)]
    offset = rng.uniform(0, 600)
    last = parse_schedule(spec.schedule.text).latest(now - offset, BERLIN)
    plan = plan_container(snaps, spec, now, 48, BERLIN, offset=offset, last_slot=last)
    # the walk
    alive = {s.name: s for s in snaps}
    went: dict[str, tuple[float, str | None]] = {}

    def prune(t: float) -> None:
        for v in retain(list(alive.values()), spec, t):
            if v.delete_at is not None and v.delete_at <= t:
                went[v.name] = (v.delete_at if v.delete_reason in ("max_age", "expires_at") else t, v.delete_reason)
                del alive[v.name]

    prune(now)
    for n, t in enumerate(plan.next_snapshots):
        # time-based deletions happen at their own instant: prune just after each
        for name, s in list(alive.items()):
            limit = min([x for x in (s.expires_at, None if spec.max_age is None or s.hold or s.policy != "p"
                                     else s.created_at + spec.max_age) if x is not None], default=None)
            if s.hold is None and limit is not None and limit <= t:
                prune(limit)
        alive[f"new{n:04d}"] = snap(f"new{n:04d}", t)
        prune(t)
    for v in plan.verdicts:
        if v.name in went:
            assert (v.delete_at, v.delete_reason) == went[v.name], v
        else:
            assert v.delete_at is None or v.delete_at > plan.until, v


def test_plan_without_a_policy_and_the_cap() -> None:
    now = at(2024, 5, 1, 13, 30)
    plan = plan_container([snap("m", now - H, policy=None)], None, now, 24, BERLIN)
    assert plan.next_snapshots == [] and plan.verdicts == [Verdict("m", ("manual",), None, None)]
    fast = spec_of(keep_last=3, schedule="every 2s")
    plan = plan_container([], fast, now, 24, BERLIN, last_slot=now)
    assert len(plan.next_snapshots) == MAX_PLANNED and plan.until == plan.next_snapshots[-1]
