#!/usr/bin/env python3
"""Pruner benchmark (#13): a full retention pass over 100,000 policy snapshots in a daemon's event loop.

In-process: the real Store, SnapshotService, overlay backend (--containers
container directories), policy book, scheduler and pruner, on one event
loop.  The store holds --each hourly snapshots of one policy per container
(rows only: this measures the computation, not deletes).  A pass asks the
pruner to look at every container (retain() over each one's snapshots, the
pool's free space read once per container as `min_free` needs) while a
ticker task measures how long the event loop goes without running it.

Figures: the pass's wall time, and the longest stall of the event loop
during it.  Targets: < 2 s, < 50 ms.

The daemon freezes what start-up built (gc.freeze()), so a full collection
during a pass walks only the pass's objects; `--no-freeze` shows the pauses
without that.

Usage: scripts/bench_policy_prune.py [--containers 1000] [--each 100] [--runs 3] [--no-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

importlib.import_module("snapd.server")  # the daemon's modules: its heap, for the collector's pauses
from backends.overlay import OverlayBackend  # noqa: E402
from snapd.core.clock import Clock  # noqa: E402
from snapd.core.coverage import Coverage  # noqa: E402
from snapd.core.policy_book import PolicyBook  # noqa: E402
from snapd.core.records import SnapshotRow  # noqa: E402
from snapd.core.scheduler import Scheduler  # noqa: E402
from snapd.core.service import SnapshotService  # noqa: E402
from snapd.core.store import Store  # noqa: E402

NOW = 1_750_000_000.0


class Fixed(Clock):
    def now(self) -> float:
        return NOW


async def ticker(stop: asyncio.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        t = time.perf_counter()
        gaps.append(t - last)
        last = t


async def run(work: Path, containers: int, each: int, runs: int, freeze: bool) -> list[tuple[float, float]]:
    root = work / "pool"
    root.mkdir()
    cids = [secrets.token_hex(12) for _ in range(containers)]
    for cid in cids:
        (root / cid).mkdir()
    backend = OverlayBackend(str(root))
    await backend.open()
    clock = Fixed(offset=0)
    store = Store(work / "snapd.db")
    store.insert_many(SnapshotRow(cid, f"snap-{i:06d}", backend.pool_id, NOW - (each - i) * 3600.0, size=4096,
                                  policy="hourly") for cid in cids for i in range(each))
    service = SnapshotService(store, [backend], clock)
    book = PolicyBook(store, clock)
    spec, _ = book.proposal("hourly", {"schedule": "0 0 1 1 *", "applies_to": [f"pool:overlay:{root}"],
                                       "keep_last": each, "keep": {"hourly": 24, "daily": 7}, "min_free": "1%"})
    book.put(spec)
    scheduler = Scheduler(service, book, Coverage(service), clock)
    scheduler.start()
    await scheduler.settled()
    assert len(scheduler.covered) == containers, len(scheduler.covered)
    pruner = scheduler.pruner
    if freeze:
        gc.collect()
        gc.freeze()  # as the daemon does once started (snapd/server.py)
    out = []
    try:
        for _ in range(runs):
            stop, gaps = asyncio.Event(), []
            tick = asyncio.create_task(ticker(stop, gaps))
            await asyncio.sleep(0.01)
            began = time.perf_counter()
            for cid in cids:
                pruner.request(cid)
            await pruner.idle()
            took = time.perf_counter() - began
            stop.set()
            await tick
            out.append((took, max(gaps)))
            assert sum(pruner.deleted.values()) == 0
    finally:
        await scheduler.stop()
        store.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--each", type=int, default=100, help="snapshots per container (default 100)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-freeze", action="store_true",
                        help="leave start-up's objects to the collector (the daemon freezes them)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as d:
        results = asyncio.run(run(Path(d), args.containers, args.each, args.runs, not args.no_freeze))
    took = [t for t, _ in results]
    stall = [g for _, g in results]
    total = args.containers * args.each
    print(f"| snapshots | containers | start-up heap | pass (median of {args.runs}) | worst pass "
          "| longest loop stall (worst) |")
    print("|---:|---:|---|---:|---:|---:|")
    print(f"| {total:,} | {args.containers:,} | {'collected' if args.no_freeze else 'frozen'} "
          f"| {statistics.median(took) * 1000:.0f} ms | {max(took) * 1000:.0f} ms | {max(stall) * 1000:.1f} ms |")
    return 0 if max(took) < 2 and max(stall) < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
