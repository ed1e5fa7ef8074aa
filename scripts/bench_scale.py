#!/usr/bin/env python3
"""Scale benchmark of the list route and the daemon's memory (#8).

Makes an overlay pool in a temporary directory, a store of --total generated
snapshot rows (Store.insert_many, pool label `overlay:generated` so reconcile
leaves them alone) over --containers containers, three of which hold 10,
1,000 and 10,000 snapshots, starts the real daemon on it
(`python -m snapd serve --socket ... --state-dir ... --pool overlay:<root>`),
and measures over its Unix socket, from another process (aiohttp):

* list latency (median, p99) for 10, 1,000 and 10,000 snapshots in a
  container: one keep-alive connection, full body read;
* list requests/s with 1, 16 and 64 concurrent clients (1,000-snapshot
  container), each client its own keep-alive connection;
* the daemon's resident memory (VmRSS) after start and after the above.

Prints Markdown tables.  Usage: scripts/bench_scale.py [--total 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from snapd.core.store import SnapshotRow, Store
from tests.daemon import DaemonProcess


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def generate(store: Store, sizes: dict[str, int], others: list[str], total: int) -> None:
    base = time.time() - 60 * 86400

    def rows():
        n = 0
        for cid, count in sizes.items():
            for i in range(count):
                yield SnapshotRow(cid, f"snap-{i:06d}", "overlay:generated", base + i * 60.0,
                                  alias=f"alias-{i}" if i % 2 else None,
                                  expires_at=base + 400 * 86400 + i if i % 3 else None, size=i * 4096)
                n += 1
        i = 0
        while n < total:
            cid = others[i % len(others)]
            yield SnapshotRow(cid, f"snap-{i:06d}", "overlay:generated", base + i, size=i)
            n += 1
            i += 1

    store.insert_many(rows())


async def latency(sock: str, path: str, runs: int) -> tuple[float, float, int]:
    times = []
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s:
        for i in range(runs + 3):
            t0 = time.perf_counter()
            async with s.get(f"http://localhost{path}") as r:
                body = await r.read()
                assert r.status == 200, body[:200]
            if i >= 3:  # warm-up
                times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000, len(body)


async def throughput(sock: str, path: str, clients: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s:
            while time.perf_counter() < stop:
                async with s.get(f"http://localhost{path}") as r:
                    await r.read()
                    assert r.status == 200
                done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total", type=int, default=100_000, help="snapshot rows in the store")
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=200, help="list requests per latency row")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput row")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        base = Path(tmp)
        pool = base / "pool"
        pool.mkdir()
        sizes = {secrets.token_hex(12): n for n in (10, 1000, 10_000)}
        others = [secrets.token_hex(12) for _ in range(args.containers - len(sizes))]
        for cid in [*sizes, *others]:
            (pool / cid).mkdir()
        (base / "d" / "state").mkdir(parents=True)
        store = Store(base / "d" / "state" / "snapd.db")
        generate(store, sizes, others, args.total)
        count = store.count()
        store.close()
        d = DaemonProcess(base / "d", [f"overlay:{pool}"], tcp=False, extra=["--log-level", "warning"]).start()
        try:
            pid = d.proc.pid
            rss_start = rss_mib(pid)
            sock = str(d.socket)
            print(f"store: {count} snapshots over {args.containers} containers; daemon pid {pid}\n")
            print("| snapshots in the container | median | p99 | response size |")
            print("|---:|---:|---:|---:|")
            for cid, n in sizes.items():
                med, p99, size = asyncio.run(latency(sock, f"/api/v1/containers/{cid}/snapshots", args.runs))
                print(f"| {n:,} | {med:.1f} ms | {p99:.1f} ms | {size / 1024:.0f} KiB |")
            big = next(c for c, n in sizes.items() if n == 10_000)
            med, p99, size = asyncio.run(latency(sock, f"/api/v1/containers/{big}/snapshots?limit=100",
                                                 args.runs))
            print(f"| 10,000, one page of 100 (`?limit=100`) | {med:.1f} ms | {p99:.1f} ms | "
                  f"{size / 1024:.0f} KiB |")
            mid = next(c for c, n in sizes.items() if n == 1000)
            print("\n| concurrent clients (list, 1,000 snapshots) | requests/s |")
            print("|---:|---:|")
            for clients in (1, 16, 64):
                rps = asyncio.run(throughput(sock, f"/api/v1/containers/{mid}/snapshots", clients, args.seconds))
                print(f"| {clients} | {rps:,.0f} |")
            small = next(c for c, n in sizes.items() if n == 10)
            print("\n| concurrent clients (list, 10 snapshots) | requests/s |")
            print("|---:|---:|")
            for clients in (1, 16, 64):
                rps = asyncio.run(throughput(sock, f"/api/v1/containers/{small}/snapshots", clients,
                                             args.seconds))
                print(f"| {clients} | {rps:,.0f} |")
            print(f"\n| daemon resident memory ({count:,} snapshots in the store) | VmRSS |")
            print("|---|---:|")
            print(f"| after start | {rss_start:.1f} MiB |")
            print(f"| after the benchmarks above | {rss_mib(pid):.1f} MiB |")
        finally:
            d.stop()


if __name__ == "__main__":
    main()
