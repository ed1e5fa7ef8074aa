#!/usr/bin/env python3
"""Benchmark the policy logic (pure CPU, no daemon): the plan for one container and a retention
pass over a host's snapshots.

- plan: plan_container() for one container with 10,000 of the policy's snapshots (one an hour,
  the newest just taken), an hourly policy, a 24-hour horizon (24 projected snapshots);
  once under the usual grid and once under a grid that keeps all 10,000 (every projection
  step then works on all of them);
- retain: retain() for each of 1,000 containers with 100 snapshots each (100,000), spread over
  400 days, plus one held and one manual snapshot per container.

Every run starts with empty period/reason caches (what a freshly started daemon pays).
Prints one Markdown table: median and worst of --runs runs.

    .venv/bin/python scripts/bench_policy_plan.py [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snapd.core.policies.plan import plan_container  # noqa: E402
from snapd.core.policies.retention import Snap, describe, period_keys, retain  # noqa: E402
from snapd.core.policies.spec import PolicySpec, parse_policy  # noqa: E402

NOW = 1_735_000_000.0  # 24 Dec 2024, 00:26:40 UTC
GRID = {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 12}


def policy(keep_last: int, keep: dict[str, int]) -> PolicySpec:
    return parse_policy("hourly", {"schedule": "0 * * * *", "timezone": "Europe/Berlin", "jitter": "5m",
                                   "applies_to": ["project:web"], "keep_last": keep_last, "keep": keep}, "file")


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        period_keys.cache_clear()
        describe.cache_clear()
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs

    last_slot = NOW - NOW % 3600
    hourly = [Snap(f"snap-{i:05d}", last_slot - 3600 * i, None, "hourly", None) for i in range(10_000)]
    usual, keep_all = policy(3, GRID), policy(3, {"hourly": 10_000})

    rng = random.Random(13)
    host = []
    for c in range(1_000):
        snaps = [Snap(f"s{i}", NOW - rng.uniform(0, 400 * 86400), None, "hourly", None) for i in range(98)]
        snaps += [Snap("held", NOW - 30 * 86400, None, "hourly", "pre-upgrade"),
                  Snap("manual", NOW - 86400, NOW + 86400, None, None)]
        host.append(snaps)

    def plan(spec: PolicySpec) -> Callable[[], object]:
        return lambda: plan_container(hourly, spec, NOW, 24, spec.tz, offset=90.0, last_slot=last_slot)

    def retain_host() -> None:
        for snaps in host:
            retain(snaps, usual, NOW)

    rows = [
        ("plan, 10,000 snapshots, grid 3 + 24/7/4/12, 24 h", timed(plan(usual), runs), 0.100),
        ("plan, 10,000 snapshots, all kept (hourly 10,000), 24 h", timed(plan(keep_all), runs), None),
        ("retain, 1,000 containers x 100 snapshots", timed(retain_host, runs), 2.0),
    ]
    print(f"| computation | median | worst of {runs} | target |")
    print("|---|---:|---:|---:|")
    for name, times, target in rows:
        goal = f"< {target * 1000:.0f} ms" if target is not None and target < 1 else \
            (f"< {target:.0f} s" if target else "-")
        print(f"| {name} | {statistics.median(times) * 1000:.1f} ms | {max(times) * 1000:.1f} ms | {goal} |")


if __name__ == "__main__":
    main()
