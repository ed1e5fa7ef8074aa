#!/usr/bin/env python3
"""Reaper benchmark per backend (#8): lag of staggered expiries, time to expire N at once.

In-process (the real SnapshotService, Reaper, Store and backend; the real
clock).  For each backend asked for (overlay always; btrfs on a loop-mounted
image and zfs on a zfs-fuse pool, both made by the test harnesses and
removed at the end -- run as root):

* lag: --lag-count snapshots over 10 containers whose expiries are spread
  evenly over 10 s; the reaper's recorded lag (delete time - expires_at);
* mass: --mass-count snapshots over 100 containers expiring at the same
  instant; seconds until all are gone, and the latency of list requests
  (service.list + the store, on the same event loop) made meanwhile.

Snapshots are made with the backend's own create (btrfs, zfs) or, for
overlay, as the directories the backend keeps (a copy per row would only
time the copy).  Prints one Markdown table.

Usage: scripts/bench_reaper.py [--backends overlay,btrfs,zfs] [--mass-count 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends import make_backend
from snapd.core.reaper import Reaper
from snapd.core.service import SnapshotService
from snapd.core.store import SnapshotRow, Store
from tests.harness import harness_class, new_cid


async def make_snapshots(harness, backend, containers: int, each: int, expiry, now: float) -> list[SnapshotRow]:
    rows = []
    for c in range(containers):
        cid = new_cid()
        path = harness.make_container(cid)
        (path / "f").write_text("x")
        names = [f"snap-20250101-{i:06d}" for i in range(each)]
        for i, name in enumerate(names):
            if backend.kind == "overlay":
                d = Path(backend.root) / ".snapshots" / cid / name
                d.mkdir(parents=True)
                (d / "f").write_text("x")
                ref = ""
            else:
                ref = (await backend.create(cid, name, None, None, created_at=now)).ref
            rows.append(SnapshotRow(cid, name, backend.pool_id, now - 3600 + i,
                                    expires_at=expiry(c * each + i), ref=ref))
    return rows


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def run(kind: str, workdir: Path, lag_count: int, mass_count: int) -> list[str]:
    harness = harness_class(kind)(workdir)
    out = []
    try:
        backend = make_backend(kind, harness.spec.split(":", 1)[1])
        await backend.open()
        store = Store(workdir / "snapd.db")
        service = SnapshotService(store, [backend])
        reaper = Reaper(service)
        reaper.start()
        # lag: staggered expiries over 10 s, starting once everything is made
        start = time.time() + 5 + lag_count * (0.0 if kind == "overlay" else 0.03)
        rows = await make_snapshots(harness, backend, 10, lag_count // 10,
                                    lambda i: round((start + 10 * i / lag_count) * 1000) / 1000, time.time())
        store.insert_many(rows)
        reaper.notify(start)
        while store.count():
            await asyncio.sleep(0.1)
        lags = reaper.lags[-lag_count:]
        out.append(f"| {kind} | lag, {lag_count:,} staggered over 10 s | median {statistics.median(lags) * 1000:.0f} ms, "
                   f"p99 {pct(lags, 0.99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms | |")
        # mass: all at one instant
        each = mass_count // 100
        made = time.time()
        rows = await make_snapshots(harness, backend, 100, each, lambda i: 0.0, made)
        at = round((time.time() + 2) * 1000) / 1000
        rows = [SnapshotRow(r.container_id, r.name, r.pool, r.created_at, expires_at=at, ref=r.ref) for r in rows]
        store.insert_many(rows)
        reaper.notify(at)
        await asyncio.sleep(max(0.0, at - time.time()))
        t0 = time.perf_counter()
        probe = rows[-1].container_id
        lat = []
        while store.count():
            a = time.perf_counter()
            await service.list(probe)
            lat.append(time.perf_counter() - a)
            await asyncio.sleep(0.02)
        took = time.perf_counter() - t0
        lags = reaper.lags[-len(rows):]
        out.append(f"| {kind} | {len(rows):,} at once (100 containers) | all gone in {took:.1f} s "
                   f"({len(rows) / took:,.0f}/s); lag p99 {pct(lags, 0.99):.1f} s | "
                   f"list meanwhile: median {statistics.median(lat) * 1000:.1f} ms, "
                   f"max {max(lat) * 1000:.0f} ms ({len(lat)} requests) |")
        await reaper.stop()
        await service.drain()
        await backend.close()
        store.close()
    finally:
        harness.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="overlay,btrfs,zfs")
    ap.add_argument("--lag-count", type=int, default=1000)
    ap.add_argument("--mass-count", type=int, default=10_000)
    ap.add_argument("--zfs-mass-count", type=int, default=None,
                    help="mass count for zfs (zfs-fuse creates ~20 snapshots/s; default: --mass-count)")
    args = ap.parse_args()
    print("| backend | case | result | API meanwhile |\n|---|---|---|---|", flush=True)
    for kind in args.backends.split(","):
        reason = harness_class(kind).unavailable()
        if reason:
            print(f"| {kind} | skipped | {reason} | |", flush=True)
            continue
        mass = args.zfs_mass_count if kind == "zfs" and args.zfs_mass_count else args.mass_count
        with tempfile.TemporaryDirectory(prefix=f"bench-reaper-{kind}-") as tmp:
            print("\n".join(asyncio.run(run(kind, Path(tmp), args.lag_count, mass))), flush=True)


if __name__ == "__main__":
    os.umask(0o022)
    main()
