"""Policies on a real daemon and real pools, driven by the daemon's test clock (SNAPD_CLOCK_FILE):
snapshots on schedule, pruning by the grid, manual and held snapshots untouched, the plan the
pruner then carries out, and a restart that takes no slot twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from .clockfile import ClockFile
from .daemon import DaemonProcess
from .harness import PoolHarness, new_cid
from .waiting import until

ROUTE = "/api/v1/admin/policies"
HOUR = 3600.0
BASE = datetime(2025, 6, 15, tzinfo=timezone.utc).timestamp()
"""2025-06-15T00:00:00Z: slot h of an hourly policy is BASE + h hours."""


def at(h: float) -> float:
    """Half a minute after slot h: when the test sets the daemon's clock to take it."""
    return BASE + h * HOUR + 30


class World:
    """A daemon on the pool with its own state and clock, and one container."""

    def __init__(self, pool: PoolHarness, workdir: Path, start: float, extra: list[str] | None = None) -> None:
        self.pool = pool
        self.workdir = workdir
        self.extra = extra or []
        self.clock = ClockFile(workdir / "clock", start)
        self.cid = new_cid()
        (pool.make_container(self.cid) / "data").write_text("one\n")
        self.d = self.start()

    def start(self) -> DaemonProcess:
        return DaemonProcess(self.workdir / "d", [self.pool.spec], tcp=False, env=self.clock.env,
                             extra=self.extra).start()

    def restart(self, advance: float = 0.0) -> None:
        assert self.d.stop() == 0, self.d.log_text()[-3000:]
        if advance:
            self.clock.advance(advance)
        self.d = self.start()
        self.scheduling()

    def close(self) -> None:
        assert self.d.stop() == 0, self.d.log_text()[-3000:]

    def put_policy(self, name: str, body: dict[str, Any]) -> None:
        r = self.d.unix.request("PUT", f"{ROUTE}/{name}", body)
        assert r.status == 200, r.body

    def scheduling(self) -> None:
        """Wait until the scheduler has placed the container under its policy (its next
        snapshot is planned): whatever was due at start has been dispatched by then."""
        until(lambda: [p["status"]["next"] for p in self.d.unix.get(ROUTE).data["policies"]
                       if p["status"]["containers"]] and all(
            p["status"]["next"] for p in self.d.unix.get(ROUTE).data["policies"] if p["status"]["containers"]),
              "the scheduler to plan the container's next snapshot")

    def details(self) -> list[dict[str, Any]]:
        r = self.d.unix.get(f"/api/v1/containers/{self.cid}/snapshot-details")
        assert r.status == 200, r.body
        return r.data["snapshots"]

    def created(self, policy: str | None = "hourly") -> set[float]:
        """Creation instants of the container's snapshots of `policy`."""
        return {_epoch(s["created_at"]) for s in self.details() if s["policy"] == policy}

    def wait_for(self, expected: set[float], what: str, policy: str = "hourly") -> None:
        until(lambda: self.created(policy) == expected,
              f"{what}: snapshots at {sorted(_hours(expected))} (have {sorted(_hours(self.created(policy)))})")


def _epoch(stamp: str | None) -> float:
    assert stamp is not None
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def _hours(instants: set[float]) -> list[float]:
    return [(t - 30 - BASE) / HOUR for t in instants]


@pytest.fixture
def world(pool: PoolHarness, tmp_path: Path) -> Iterator[World]:
    w = World(pool, tmp_path, at(-1) - 60)  # 22:59:30 the day before
    try:
        yield w
    finally:
        w.close()


GRID = {"schedule": "0 * * * *", "keep_last": 1, "keep": {"hourly": 3, "daily": 2}}


def expected_grid(alive: list[int], held: set[int]) -> set[int]:
    """keep_last 1, hourly 3, daily 2 (UTC) over snapshots taken at the slots `alive` (hours
    since BASE, one per hour), held ones set aside: which the rules keep."""
    order = sorted((h for h in alive if h not in held), reverse=True)
    kept = set(order[:4])  # keep_last 1, then three more hours: one snapshot per hour
    days = {h // 24 for h in kept}
    for h in order:
        if len(days) >= len({k // 24 for k in kept}) + 2:
            break
        if h // 24 not in days:
            days.add(h // 24)
            kept.add(h)
    return kept | held


def test_a_policy_takes_snapshots_on_schedule_and_prunes_by_the_grid(world: World) -> None:
    manual = world.d.unix.post(f"/api/v1/containers/{world.cid}/snapshots", {"alias": "mine"})
    assert manual.status == 200, manual.body
    world.put_policy("hourly", {**GRID, "applies_to": [f"container:{world.cid}"]})
    world.scheduling()
    assert world.created() == set()  # a container new under a policy waits for the next slot
    alive: list[int] = []
    held: set[int] = set()
    for h in range(0, 50):
        world.clock.set(at(h))
        alive.append(h)
        kept = expected_grid(alive, held)
        alive = [a for a in alive if a in kept]
        world.wait_for({at(a) for a in kept}, f"slot {h} taken and the grid applied")
        if h == 21:  # hold one the rules keep now and drop later
            name = next(s["name"] for s in world.details() if s["created_at"] and _epoch(s["created_at"]) == at(20))
            r = world.d.unix.request("PUT", f"/api/v1/containers/{world.cid}/snapshots/{name}/hold",
                                     {"reason": "pre-upgrade"})
            assert r.status == 200, r.body
            held.add(20)
    # the known answer: the newest (keep_last), three hours, the last of 06-15 (daily), and the held one
    assert sorted(alive) == [20, 23, 46, 47, 48, 49]
    details = {s["name"]: s for s in world.details()}
    assert details[manual.data["snapshot"]["name"]]["keep"] == ["manual"]
    by_hour = {int(round((_epoch(s["created_at"]) - 30 - BASE) / HOUR)): s for s in details.values() if s["policy"]}
    assert by_hour[20]["keep"] == ["hold: pre-upgrade"]
    assert by_hour[23]["keep"] == ["daily 2025-06-15"]
    assert by_hour[49]["keep"] == ["keep_last"]
    assert by_hour[46]["keep"] == ["hourly 2025-06-16T22"]
    assert by_hour[49]["alias"] is None


def test_the_plan_is_what_the_pruner_then_does(world: World) -> None:
    """Take the plan, move the clock past its instants, and compare the snapshots that are left."""
    world.put_policy("hourly", {**GRID, "applies_to": [f"container:{world.cid}"], "max_age": "30h",
                                "alias": "auto-{time}"})
    world.scheduling()
    for h in range(0, 30):
        world.clock.set(at(h))
        until(lambda: at(h) in world.created(), f"slot {h} taken")
    plan = world.d.unix.get(f"{ROUTE}/plan?hours=40&container={world.cid}").data["containers"][0]
    assert plan["next_snapshots"][0] == "2025-06-16T06:00:00.000Z"
    fate = {s["name"]: (None if s["delete_at"] is None else _epoch(s["delete_at"]), s["delete_reason"])
            for s in plan["snapshots"]}
    assert {reason for _, reason in fate.values()} >= {"outside grid", "max_age"}
    for h in range(30, 70):
        world.clock.set(at(h))
        now = at(h)
        survivors = {name for name, (when, _) in fate.items() if when is None or when > now}
        until(lambda: at(h) in world.created() and
              {s["name"] for s in world.details()} & set(fate) == survivors,
              f"at slot {h}: the plan's survivors {sorted(survivors)}")


def test_a_restart_takes_no_slot_twice_and_downtime_ends_in_one_catch_up(world: World) -> None:
    world.put_policy("hourly", {"schedule": "0 * * * *", "keep_last": 100, "applies_to": [f"container:{world.cid}"]})
    world.scheduling()
    for h in range(0, 3):
        world.clock.set(at(h))
        world.wait_for({at(a) for a in range(0, h + 1)}, f"slot {h} taken")
    world.restart()  # same instant: slot 2 is taken already
    world.clock.set(at(3))
    world.wait_for({at(a) for a in range(0, 4)}, "slot 3 taken, and slot 2 not again")
    world.restart(advance=5 * HOUR)  # down for slots 4 to 8
    world.wait_for({at(a) for a in range(0, 4)} | {at(8)}, "one catch-up (slot 8), not five")
    world.clock.set(at(9))
    world.wait_for({at(a) for a in range(0, 4)} | {at(8), at(9)}, "slot 9 taken")
    world.clock.set(at(9) - 2 * HOUR)  # a clock stepped back repeats nothing
    world.clock.set(at(10))
    world.wait_for({at(a) for a in range(0, 4)} | {at(8), at(9), at(10)}, "slot 10 taken, once")


def test_a_failed_snapshot_is_retried_with_backoff_and_its_slot_is_not_lost(pool: PoolHarness, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("max_snapshots_per_container = 2\n")
    w = World(pool, tmp_path, at(-1) - 60, extra=["--config", str(config)])
    try:
        manual = w.d.unix.post(f"/api/v1/containers/{w.cid}/snapshots", {}).data["snapshot"]["name"]
        w.put_policy("hourly", {"schedule": "0 * * * *", "keep_last": 5, "applies_to": [f"container:{w.cid}"]})
        w.scheduling()
        w.clock.set(at(0))
        w.wait_for({at(0)}, "slot 0 taken (the container's second snapshot: its limit)")
        w.clock.set(at(1))

        def failing() -> list[dict]:
            return w.d.unix.get(f"{ROUTE}/hourly").data["status"]["failing"]

        errors = until(failing, "slot 1 refused by the snapshot limit, and recorded")
        assert errors[0]["container_id"] == w.cid and "max_snapshots_per_container" in errors[0]["error"]
        shown = w.d.unix.get(f"{ROUTE}/hourly").data["status"]
        assert (shown["failed"], shown["next"]) == (1, "2025-06-15T01:00:40.000Z")  # retried after 10 s
        assert w.d.unix.delete(f"/api/v1/containers/{w.cid}/snapshots/{manual}").status == 200
        w.clock.advance(10)
        w.wait_for({at(0), at(1) + 10}, "slot 1 taken at its retry")
        assert failing() == []
    finally:
        w.close()
