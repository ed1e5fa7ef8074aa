#!/usr/bin/env python3
"""Benchmark creates under load on btrfs against raw BTRFS_IOC_SNAP_CREATE_V2 ioctls (root).

Sets up its own loop-mounted btrfs, makes --containers small containers and
starts the real daemon on it (from --repo: another checkout's code, for a
before/after comparison).  Then, on the same filesystem:

* load: --rounds rounds, each first --containers raw read-only snapshot ioctls
  one after another (one per container: btrfs serialises snapshot creation,
  so the sequential rate is the ceiling), then --containers clients creating
  one snapshot each at once through the API (one keep-alive Unix-socket
  connection per client, one container each).  Rounds alternate, so both see
  the same snapshot counts per container.  Throughput of each, and their ratio.
  Then --rounds more API rounds while one more client lists a quiet container
  without pause (not while the raw ioctls run): its latencies under load
  against the same list when idle.
* one client: --runs API creates on one container, each after a raw ioctl on
  the same container (same counts again); medians and their ratio.

Prints one Markdown table; the figures are from one run on one machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends import btrfs_ioctl
from tests.harness import new_cid
from tests.harness.btrfs import BtrfsHarness

REPO = Path(__file__).resolve().parent.parent


class Connection(http.client.HTTPConnection):
    """HTTP over the daemon's Unix socket (keep-alive)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=120)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        raw = json.dumps(body).encode() if body is not None else None
        self.request(method, path, body=raw, headers={"Content-Type": "application/json"} if raw else {})
        resp = self.getresponse()
        data = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data


def start_daemon(repo: Path, workdir: Path, pool: str) -> tuple[subprocess.Popen, Path]:
    sock = workdir / "api.sock"
    log = open(workdir / "daemon.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapd", "serve", "--socket", str(sock), "--state-dir", str(workdir / "state"),
         "--pool", pool, "--log-level", "warning"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}: see {workdir / 'daemon.log'}")
        try:
            Connection(sock).connect()
            return proc, sock
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("daemon did not start in 60 s") from None
            time.sleep(0.05)


def snaps(cid: str) -> str:
    return f"/api/v1/containers/{cid}/snapshots"


class Raw:
    """Raw read-only snapshot ioctls of the containers, into a directory beside the pool."""

    def __init__(self, fs: BtrfsHarness) -> None:
        self.fs = fs
        self.dst = fs.mountpoint / "raw"
        self.dst.mkdir()
        self.n = 0

    def create(self, cid: str) -> float:
        """One ioctl (opening the source and target as a client would); its seconds."""
        self.n += 1
        began = time.perf_counter()
        src = btrfs_ioctl.open_dir(str(self.fs.container_path(cid)))
        dst = btrfs_ioctl.open_dir(str(self.dst))
        try:
            btrfs_ioctl.snapshot(src, dst, f"{cid}-{self.n}", True)
        finally:
            os.close(src)
            os.close(dst)
        return time.perf_counter() - began


class Lister(threading.Thread):
    """Lists one container again and again until stopped, each time it can take `gate`
    (held while the raw ioctls run: they are timed alone); its latencies."""

    def __init__(self, sock: Path, cid: str, gate: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.conn, self.cid, self.gate = Connection(sock), cid, gate
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with self.gate:
                began = time.perf_counter()
                self.conn.call("GET", snaps(self.cid))
                self.samples.append(time.perf_counter() - began)


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 2 else samples[0]


def load(sock: Path, raw: Raw, cids: list[str], quiet: str, rounds: int) -> dict[str, float]:
    conns = [Connection(sock) for _ in cids]
    start, done = threading.Barrier(len(cids) + 1), threading.Barrier(len(cids) + 1)
    stop = False

    def client(conn: Connection, cid: str) -> None:
        while True:
            start.wait()
            if stop:
                return
            conn.call("POST", snaps(cid))
            done.wait()

    threads = [threading.Thread(target=client, args=(c, cid), daemon=True) for c, cid in zip(conns, cids)]
    for t in threads:
        t.start()
    gate = threading.Lock()
    idle = Connection(sock)
    idle_samples = []
    for _ in range(200):
        began = time.perf_counter()
        idle.call("GET", snaps(quiet))
        idle_samples.append(time.perf_counter() - began)
    lister = Lister(sock, quiet, gate)
    raw_s = api_s = 0.0
    for r in range(2 * rounds):  # first without the lister (throughput), then with it (latency)
        with gate:
            raw_s += sum(raw.create(cid) for cid in cids) if r < rounds else 0.0
            if r == rounds:
                lister.start()
            began = time.perf_counter()
            start.wait()
        done.wait()
        api_s += time.perf_counter() - began if r < rounds else 0.0
    lister.stop.set()
    lister.join()
    stop = True
    start.wait()
    n = rounds * len(cids)
    return {"raw_rate": n / raw_s, "api_rate": n / api_s, "list_idle_p50": statistics.median(idle_samples),
            "list_idle_p99": p99(idle_samples), "list_load_p50": statistics.median(lister.samples),
            "list_load_p99": p99(lister.samples), "list_samples": len(lister.samples)}


def recounts(sock: Path) -> str:
    """The daemon's background size recounts so far, asked and counted (from /metrics)."""
    conn = Connection(sock)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    got = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
           if line.startswith("container_snapd_size_recounts_total{")}
    if not got:
        return "not counted by this daemon"
    return f"{got.get('asked', 0):.0f} asked, {got.get('counted', 0):.0f} counted"


def one_client(sock: Path, raw: Raw, cid: str, runs: int) -> dict[str, float]:
    conn = Connection(sock)
    raw_t, api_t = [], []
    for _ in range(runs):
        raw_t.append(raw.create(cid))
        began = time.perf_counter()
        conn.call("POST", snaps(cid))
        api_t.append(time.perf_counter() - began)
    return {"raw_median": statistics.median(raw_t), "api_median": statistics.median(api_t)}


def start_profile(pid: int, out: Path) -> subprocess.Popen:
    """py-spy recording process `pid` (collapsed stacks, idle threads too) into `out`; stop it
    with stop_profile()."""
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--idle", "--threads", "--rate", "1000",
                            "--format", "raw", "-o", str(out)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attaches
    return spy


def stop_profile(spy: subprocess.Popen) -> None:
    spy.send_signal(2)
    spy.wait(60)


def daemon_options(ap: argparse.ArgumentParser, profiled: str) -> None:
    """--repo and --profile (py-spy during `profiled`), as the daemon benchmarks here take them."""
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose daemon to run")
    ap.add_argument("--profile", type=Path, help="record the daemon with py-spy (collapsed stacks, idle "
                    f"threads too) during {profiled} into this file")


def btrfs_missing() -> bool:
    """Whether btrfs cannot be benchmarked here (and why, on stderr)."""
    if reason := BtrfsHarness.unavailable():
        print(f"cannot benchmark btrfs: {reason}", file=sys.stderr)
        return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=50)
    daemon_options(ap, "the one-client phase")
    args = ap.parse_args()
    if btrfs_missing():
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-create-load-") as d:
        fs = BtrfsHarness(Path(d), size=2 << 30)
        proc = None
        try:
            cids = [new_cid() for _ in range(args.containers + 2)]
            for cid in cids:
                path = fs.make_container(cid)
                for i in range(20):
                    (path / f"f{i}").write_bytes(os.urandom(4096))
            proc, sock = start_daemon(args.repo.resolve(), Path(d), fs.spec)
            quiet, single, busy = cids[0], cids[1], cids[2:]
            Connection(sock).call("POST", snaps(quiet))
            raw = Raw(fs)
            ld = load(sock, raw, busy, quiet, args.rounds)
            spy = start_profile(proc.pid, args.profile) if args.profile else None
            cpu_before = psutil.Process(proc.pid).cpu_times()
            one = one_client(sock, raw, single, args.runs)
            cpu = psutil.Process(proc.pid).cpu_times()
            sizes = recounts(sock)
            if spy is not None:
                stop_profile(spy)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
            fs.close()
    n = args.containers
    print(f"daemon from {args.repo.resolve()}; {n} containers of 20 x 4 KiB files; load: {args.rounds} rounds "
          f"of {n} raw ioctls then {n} API creates at once; one client: {args.runs} pairs; "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| measure | raw ioctl | API | API vs raw |\n|---|---|---|---|")
    print(f"| {n} clients on {n} containers (creates/s) | {ld['raw_rate']:.0f} | {ld['api_rate']:.0f} | "
          f"{ld['api_rate'] / ld['raw_rate']:.2f}x throughput |")
    print(f"| one client, median create (ms) | {one['raw_median'] * 1e3:.2f} | {one['api_median'] * 1e3:.2f} | "
          f"{one['api_median'] / one['raw_median']:.2f}x time |")
    print(f"\nList of a quiet container: idle p50 {ld['list_idle_p50'] * 1e3:.2f} ms, p99 "
          f"{ld['list_idle_p99'] * 1e3:.2f} ms; during the API creates p50 {ld['list_load_p50'] * 1e3:.2f} ms, "
          f"p99 {ld['list_load_p99'] * 1e3:.2f} ms ({ld['list_samples']} lists).")
    print(f"Background size recounts over the whole run: {sizes}.")
    user, system = ((getattr(cpu, k) - getattr(cpu_before, k)) / args.runs * 1e3 for k in ("user", "system"))
    kids = (cpu.children_user + cpu.children_system - cpu_before.children_user - cpu_before.children_system)
    print(f"Daemon CPU per one-client create: {user:.2f} ms user and {system:.2f} ms system itself (the "
          f"snapshot ioctl's kernel time included), {kids / args.runs * 1e3:.2f} ms in its child processes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
