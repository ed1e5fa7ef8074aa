#!/usr/bin/env python3
"""Benchmark fairness under load (run as root): list latency on a quiet container while others work.

Starts the real daemon on a loop-mounted btrfs pool of its own (tests.harness.btrfs)
and an overlay pool in a temporary directory, and measures GET .../snapshots on a
quiet container (p50, p99 over the Unix socket, one request at a time):

- btrfs: idle, then while --clients clients each create --creates snapshots on
  containers of their own (unlabelled) -- target p99 <= 5 ms;
- overlay: idle, then while one project creates on --copies containers of --files
  small files each at once (long copies; the project's max_concurrent_per_project
  queues them) -- target p99 <= 1.5x idle; then the same on fresh containers with
  no project limit (all copies at once: only the quick lane keeps lookups apart).

Ratios are within this run.  Prints one Markdown table; everything it made is
removed on exit.  A quick run: --files 5000 --creates 5 (well under 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import multiprocessing
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.client import UnixHTTPConnection, snaps
from tests.daemon import DaemonProcess
from tests.harness import new_cid
from tests.harness.btrfs import BtrfsHarness

MiB = 1 << 20


def request(sock: Path, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    """One request on a new connection, as a client makes it (no schema checks: they cost
    the client time the measurement would count)."""
    conn = UnixHTTPConnection(str(sock), timeout=600)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ok(sock: Path, method: str, path: str, body: dict | None = None) -> bytes:
    status, data = request(sock, method, path, body)
    assert status == 200, (method, path, status, data[:300])
    return data


def sample(sock: Path, cid: str, until: Callable[[], bool], at_least: int) -> list[float]:
    """Seconds per list of `cid`, back to back, until `until()` (and at least `at_least`)."""
    out: list[float] = []
    path = snaps(cid)
    while len(out) < at_least or not until():
        start = time.perf_counter()
        ok(sock, "GET", path)
        out.append(time.perf_counter() - start)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)


def fill(root: Path, files: int, per_dir: int = 1000) -> None:
    for d in range((files + per_dir - 1) // per_dir):
        sub = root / f"d{d:04d}"
        sub.mkdir(parents=True)
        for f in range(min(per_dir, files - d * per_dir)):
            (sub / f"f{f:04d}").write_bytes(b"x" * 100)


def under_load(sock: Path, quiet: str, load: Callable[[], None], idle_n: int) -> dict[str, float]:
    """List latencies idle, then while `load()` runs in a child process (its clients' threads
    must not take this process's interpreter lock from the one measuring); the load's wall time."""
    idle = sample(sock, quiet, lambda: True, idle_n)
    t0 = time.perf_counter()
    worker = multiprocessing.get_context("fork").Process(target=load)
    worker.start()
    busy = sample(sock, quiet, lambda: not worker.is_alive(), 20)
    worker.join()
    wall = time.perf_counter() - t0
    assert worker.exitcode == 0, f"the load failed (exit {worker.exitcode})"
    return {"idle_p50": p(idle, 50), "idle_p99": p(idle, 99), "busy_p50": p(busy, 50), "busy_p99": p(busy, 99),
            "busy_max": max(busy),
            "busy_n": len(busy), "wall": wall}


def label(sock: Path, cid: str, project: str) -> None:
    ok(sock, "PUT", f"/api/v1/admin/containers/{cid}/project", {"project": project})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20, help="btrfs: concurrent clients, a container each")
    ap.add_argument("--creates", type=int, default=20, help="btrfs: creates per client")
    ap.add_argument("--copies", type=int, default=6, help="overlay: containers of the busy project")
    ap.add_argument("--files", type=int, default=40_000, help="overlay: small files per container")
    ap.add_argument("--idle", type=int, default=300, help="list requests measured idle")
    ap.add_argument("--limit", type=int, default=2, help="max_concurrent_per_project")
    args = ap.parse_args()
    if BtrfsHarness.unavailable():
        sys.exit(f"cannot run: {BtrfsHarness.unavailable()}")
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as tmp, \
            BtrfsHarness(Path(tmp) / "btrfs", size=2048 * MiB) as fs:
        overlay = Path(tmp) / "overlay"
        overlay.mkdir()
        config = Path(tmp) / "config.toml"
        config.write_text(f"max_concurrent_per_project = {args.limit}\n")
        daemon = DaemonProcess(Path(tmp) / "d", [fs.spec, f"overlay:{overlay}"], tcp=False,
                               extra=["--log-level", "warning", "--config", str(config)]).start()
        try:
            rows = run(fs, overlay, daemon, config, args)
        finally:
            daemon.stop()
    print("| load | list p50 idle | list p99 idle | list p50 loaded | list p99 loaded | p99 ratio | "
          "target | load |\n| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def set_limit(daemon: DaemonProcess, config: Path, limit: int) -> None:
    """max_concurrent_per_project = `limit` in the config file, then SIGHUP; back once it applies."""
    config.write_text(f"max_concurrent_per_project = {limit}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while json.loads(ok(daemon.socket, "GET", "/api/v1/admin/status"))["data"]["lanes"][
            "max_concurrent_per_project"] != limit:
        assert time.monotonic() < deadline, "the daemon did not take the new limit"
        time.sleep(0.05)


def run(fs: BtrfsHarness, overlay: Path, daemon: DaemonProcess, config: Path,
        args: argparse.Namespace) -> list[list[str]]:
    rows = []
    sock = daemon.socket
    # btrfs: --clients clients creating on containers of their own
    quiet = new_cid()
    fs.make_container(quiet)
    (fs.container_path(quiet) / "f").write_text("quiet")
    label(sock, quiet, "quiet")
    ok(sock, "POST", snaps(quiet))
    busy = [new_cid() for _ in range(args.clients)]
    for cid in busy:
        (fs.make_container(cid) / "f").write_text(cid)

    def creates() -> None:
        with ThreadPoolExecutor(args.clients) as ex:
            list(ex.map(lambda cid: [ok(sock, "POST", snaps(cid)) for _ in range(args.creates)], busy))

    r = under_load(sock, quiet, creates, args.idle)
    n = args.clients * args.creates
    rows.append([f"btrfs: {args.clients} clients × {args.creates} creates", ms(r["idle_p50"]), ms(r["idle_p99"]),
                 ms(r["busy_p50"]), ms(r["busy_p99"]), f"{r['busy_p99'] / r['idle_p99']:.2f}×",
                 "p99 ≤ 5 ms", f"{n / r['wall']:.0f} creates/s; {r['busy_n']} lists, slowest {ms(r['busy_max'])}"])

    # overlay: one project's long copies, under the project limit and then without one
    quiet = new_cid()
    (overlay / quiet).mkdir()
    (overlay / quiet / "f").write_text("quiet")
    label(sock, quiet, "quiet")
    ok(sock, "POST", snaps(quiet))
    for limit in (args.limit, 0):
        set_limit(daemon, config, limit)
        bulk = [new_cid() for _ in range(args.copies)]
        for cid in bulk:
            fill(overlay / cid, args.files)
            label(sock, cid, "bulk")

        def copies() -> None:
            with ThreadPoolExecutor(args.copies) as ex:
                list(ex.map(lambda cid: ok(sock, "POST", snaps(cid)), bulk))

        r = under_load(sock, quiet, copies, args.idle)
        rows.append([f"overlay: 1 project, {args.copies} creates of {args.files:,} files at once, "
                     + (f"limit {limit}" if limit else "no project limit (quick lane only)"),
                     ms(r["idle_p50"]), ms(r["idle_p99"]), ms(r["busy_p50"]), ms(r["busy_p99"]),
                     f"{r['busy_p99'] / r['idle_p99']:.2f}×", "p99 ≤ 1.5× idle",
                     f"{r['wall']:.1f} s; {r['busy_n']} lists, slowest {ms(r['busy_max'])}"])
    return rows


if __name__ == "__main__":
    sys.exit(main())
