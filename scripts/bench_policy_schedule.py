#!/usr/bin/env python3
"""Policy scheduler benchmark (#13): 1,000 containers under one hourly policy with jitter.

A real daemon (`python -m snapd serve`, its own socket and state) on an
overlay pool of --containers tiny containers (one small file each), with
its clock moved by SNAPD_CLOCK_FILE to --lead seconds before the top of an
hour (the clock runs: an offset, not a stop).  One policy,
`schedule = "0 * * * *"`, `jitter = --jitter`, applies to the pool.  As the
hour passes every container's snapshot is due at its own planned instant
(the hour + its stable jitter offset); meanwhile a client lists snapshots
(`GET /api/v1/containers/{id}/snapshots`, a random container each time,
--clients at once) over the Unix socket.

Figures: the schedule lag of the snapshots (actual start - planned instant,
as the daemon records it: `snapd status`), and the latency of the list
requests served while the snapshots were taken (from the top of the hour
until the last snapshot).  Targets: p99 lag < 1 s,
median list < 10 ms.

Usage: scripts/bench_policy_schedule.py [--containers 1000] [--jitter 2m] [--clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
UNITS = {"s": 1, "m": 60, "h": 3600}


def seconds(text: str) -> int:
    return int(text[:-1]) * UNITS[text[-1]]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def status(session: aiohttp.ClientSession) -> dict:
    async with session.get("http://localhost/api/v1/admin/status") as resp:
        return (await resp.json())["data"]


async def lister(session: aiohttp.ClientSession, cids: list[str], stop: asyncio.Event,
                 latencies: list[tuple[float, float]]) -> None:
    while not stop.is_set():
        cid = random.choice(cids)
        at, t = time.time(), time.perf_counter()
        async with session.get(f"http://localhost/api/v1/containers/{cid}/snapshots") as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        latencies.append((at, time.perf_counter() - t))


async def measure(sock: Path, cids: list[str], clients: int, deadline: float
                  ) -> tuple[dict, list[tuple[float, float]], float]:
    connector = aiohttp.UnixConnector(path=str(sock), limit=clients + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.put("http://localhost/api/v1/admin/policies/hourly", json={
            "schedule": "0 * * * *", "jitter": ARGS.jitter, "keep_last": 2,
            "applies_to": [f"pool:overlay:{ARGS.pool}"]}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        stop = asyncio.Event()
        latencies: list[tuple[float, float]] = []
        tasks = [asyncio.create_task(lister(session, cids, stop, latencies)) for _ in range(clients)]
        began = time.monotonic()
        while True:
            st = await status(session)
            if st["scheduler"]["snapshots"] >= len(cids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        return st, latencies, time.monotonic() - began


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    pool = work / "pool"
    pool.mkdir()
    ARGS.pool = pool
    cids = [secrets.token_hex(12) for _ in range(ARGS.containers)]
    for cid in cids:
        (pool / cid).mkdir()
        (pool / cid / "hostname").write_text(f"{cid}\n")
    now = time.time()
    top = math.ceil((now + ARGS.lead + 5) / 3600) * 3600  # the hour the snapshots are planned from
    clock = work / "clock"
    clock.write_text(f"{top - ARGS.lead - now:+f}\n")  # the daemon's clock: `lead` seconds before the hour
    window = now + ARGS.lead  # real time when the daemon's clock reaches the hour
    sock = work / "api.sock"
    log = open(work / "daemon.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapd", "serve", "--socket", str(sock), "--state-dir", str(work / "state"),
         "--pool", f"overlay:{pool}", "--log-level", "warning"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SNAPD_CLOCK_FILE": str(clock)})
    try:
        for _ in range(600):
            if sock.exists():
                break
            time.sleep(0.1)
        deadline = time.monotonic() + ARGS.lead + seconds(ARGS.jitter) + 120
        st, timed, took = asyncio.run(measure(sock, cids, ARGS.clients, deadline))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        log.close()
    latencies = [lat for at, lat in timed if at >= window]  # served while the snapshots were taken
    sched = st["scheduler"]
    result = {
        "containers": ARGS.containers, "jitter": ARGS.jitter, "snapshots": sched["snapshots"],
        "lag_p50_s": sched["lag_p50_s"], "lag_p99_s": sched["lag_p99_s"], "lag_max_s": sched["lag_max_s"],
        "lists": len(latencies), "list_median_ms": round(statistics.median(latencies) * 1000, 2),
        "list_p99_ms": round(pct(latencies, 0.99) * 1000, 2), "seconds": round(took, 1),
        "failed": sum(p["failed"] for p in st["policies"]),
    }
    print(json.dumps(result, indent=2))
    print()
    print("| containers | jitter | snapshots | lag p50 | lag p99 | lag max | lists served | list median | list p99 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {ARGS.containers:,} | {ARGS.jitter} | {sched['snapshots']:,} | {sched['lag_p50_s'] * 1000:.0f} ms "
          f"| {sched['lag_p99_s'] * 1000:.0f} ms | {sched['lag_max_s'] * 1000:.0f} ms | {len(latencies):,} "
          f"| {result['list_median_ms']:.1f} ms | {result['list_p99_ms']:.1f} ms |")
    ok = sched["snapshots"] >= ARGS.containers and sched["lag_p99_s"] < 1.0 and result["list_median_ms"] < 10
    if not ARGS.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        print(f"kept {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--jitter", default="2m", help="the policy's jitter (default 2m)")
    parser.add_argument("--lead", type=float, default=20.0, help="seconds from the start to the hour (default 20)")
    parser.add_argument("--clients", type=int, default=2, help="list requests in flight at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (daemon log)")
    ARGS = parser.parse_args()
    sys.exit(main())
