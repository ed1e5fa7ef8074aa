#!/usr/bin/env python3
"""Benchmark the btrfs backend against bare `btrfs` commands (run as root).

Sets up its own loop-mounted btrfs in a temporary directory, fills one
container per size with real data, starts the real daemon on it
(`python -m snapd serve --socket ... --state-dir ... --pool btrfs:<root>`)
and times create, restore and delete (median of --runs runs each) at each
level: the bare `btrfs` command, the backend in-process (ioctls, and the
command fallback), and the HTTP API over the daemon's Unix socket (one
keep-alive connection, as a client would hold).  Before each API sample
the benchmark waits until the daemon has no child process, so the
background size recount (`btrfs filesystem du`) a previous create/delete
started is not billed to the next request; its own cost is the "size
recount" row.  Prints one Markdown table.

Variants are functions registered per operation with @variant; the one
named "bare" is the baseline for the ratio columns.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from backends.base import SnapshotRef
from backends.btrfs import BtrfsBackend
from tests.harness import new_cid
from tests.harness.btrfs import BtrfsHarness

MiB = 1 << 20
SIZES = {"10 MiB": 10 * MiB, "1 GiB": 1024 * MiB}


def btrfs(*args: str) -> None:
    subprocess.run(["btrfs", *args], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Daemon:
    """The real daemon serving the benchmark's pool, and an HTTP client for it."""

    def __init__(self, workdir: Path, pool_spec: str) -> None:
        self.socket = workdir / "api.sock"
        self.log = open(workdir / "daemon.log", "ab")
        self.command = [
            sys.executable, "-m", "snapd", "serve", "--socket", str(self.socket),
            "--state-dir", str(workdir / "state"), "--pool", pool_spec, "--log-level", "warning",
        ]
        self.proc = subprocess.Popen(
            self.command, cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                self.log.close()
                tail = Path(self.log.name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{tail}")
            try:
                self.conn = _UnixConnection(str(self.socket))
                self.conn.connect()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("daemon did not start in 30 s")
                time.sleep(0.05)
        self.ps = psutil.Process(self.proc.pid)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        raw = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if raw is not None else {}
        self.conn.request(method, path, body=raw, headers=headers)
        resp = self.conn.getresponse()
        data = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data["data"]

    def idle(self, timeout: float = 60, quiet: float = 0.03) -> None:
        """Wait until the daemon has run no child (the background size recount,
        which starts a moment after the response) for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        calm_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.ps.children():
                calm_since = time.monotonic()
            elif time.monotonic() - calm_since >= quiet:
                return
            time.sleep(0.002)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class Ctx:
    """One container under test and the pool around it."""

    fs: BtrfsHarness
    backend: BtrfsBackend
    cmd_backend: BtrfsBackend
    cid: str
    daemon: Daemon
    seq: int = 0

    @property
    def cpath(self) -> Path:
        return self.fs.container_path(self.cid)

    def snap(self, name: str) -> Path:
        return self.fs.root / ".snapshots" / self.cid / name

    def fresh(self) -> str:
        self.seq += 1
        return f"b{self.seq}"

    def url(self, name: str | None = None) -> str:
        base = f"/api/v1/containers/{self.cid}/snapshots"
        return base if name is None else f"{base}/{name}"

    def api_create(self) -> str:
        return self.daemon.call("POST", self.url())["snapshot"]["name"]

    def api_delete(self, name: str) -> None:
        self.daemon.call("DELETE", self.url(name))


Timed = Callable[[Ctx], Awaitable[float]]
"""Does its own set-up and clean-up; returns the seconds of the measured step."""


@dataclass
class Op:
    name: str
    variants: dict[str, Timed] = field(default_factory=dict)


OPS: dict[str, Op] = {}


def variant(op: str, label: str) -> Callable[[Timed], Timed]:
    def register(fn: Timed) -> Timed:
        OPS.setdefault(op, Op(op)).variants[label] = fn
        return fn
    return register


async def timed(fn: Callable[[], Awaitable[object] | object]) -> float:
    t = time.perf_counter()
    r = fn()
    if asyncio.iscoroutine(r):
        await r
    return time.perf_counter() - t


# -- create -----------------------------------------------------------------

@variant("create", "bare")
async def create_bare(c: Ctx) -> float:
    n = c.fresh()
    c.snap(n).parent.mkdir(parents=True, exist_ok=True)
    t = await timed(lambda: btrfs("subvolume", "snapshot", "-r", str(c.cpath), str(c.snap(n))))
    await c.backend.delete(c.cid, [SnapshotRef(n)])
    return t


@variant("create", "backend")
async def create_backend(c: Ctx) -> float:
    n = c.fresh()
    t = await timed(lambda: c.backend.create(c.cid, n, None, None))
    await c.backend.delete(c.cid, [SnapshotRef(n)])
    return t


@variant("create", "backend (cmd)")
async def create_backend_cmd(c: Ctx) -> float:
    n = c.fresh()
    t = await timed(lambda: c.cmd_backend.create(c.cid, n, None, None))
    await c.backend.delete(c.cid, [SnapshotRef(n)])
    return t


@variant("create", "api")
async def create_api(c: Ctx) -> float:
    c.daemon.idle()
    t = time.perf_counter()
    name = c.api_create()
    t = time.perf_counter() - t
    c.api_delete(name)
    return t


# -- restore ----------------------------------------------------------------

@variant("restore", "bare")
async def restore_bare(c: Ctx) -> float:
    """Non-atomic baseline: writable snapshot, delete container, rename."""
    n = c.fresh()
    await c.backend.create(c.cid, n, None, None)
    tmp = c.fs.root / ".snapshots" / ".tmp" / f"bare-{n}"

    def run() -> None:
        btrfs("subvolume", "snapshot", str(c.snap(n)), str(tmp))
        btrfs("subvolume", "delete", str(c.cpath))
        os.rename(tmp, c.cpath)

    t = await timed(run)
    await c.backend.delete(c.cid, [SnapshotRef(n)])
    return t


@variant("restore", "backend")
async def restore_backend(c: Ctx) -> float:
    n = c.fresh()
    await c.backend.create(c.cid, n, None, None)
    t = await timed(lambda: c.backend.restore(c.cid, SnapshotRef(n), []))
    await c.backend.delete(c.cid, [SnapshotRef(n)])
    return t


@variant("restore", "backend (cmd)")
async def restore_backend_cmd(c: Ctx) -> float:
    n = c.fresh()
    await c.backend.create(c.cid, n, None, None)
    t = await timed(lambda: c.cmd_backend.restore(c.cid, SnapshotRef(n), []))
    await c.backend.delete(c.cid, [SnapshotRef(n)])
    return t


@variant("restore", "api")
async def restore_api(c: Ctx) -> float:
    name = c.api_create()
    c.daemon.idle()
    t = await timed(lambda: c.daemon.call("PATCH", c.url(name)))
    c.api_delete(name)
    return t


# -- delete -----------------------------------------------------------------

@variant("delete", "bare")
async def delete_bare(c: Ctx) -> float:
    n = c.fresh()
    await c.backend.create(c.cid, n, None, None)
    return await timed(lambda: btrfs("subvolume", "delete", str(c.snap(n))))


@variant("delete", "backend")
async def delete_backend(c: Ctx) -> float:
    n = c.fresh()
    await c.backend.create(c.cid, n, None, None)
    return await timed(lambda: c.backend.delete(c.cid, [SnapshotRef(n)]))


@variant("delete", "backend (cmd)")
async def delete_backend_cmd(c: Ctx) -> float:
    n = c.fresh()
    await c.backend.create(c.cid, n, None, None)
    return await timed(lambda: c.cmd_backend.delete(c.cid, [SnapshotRef(n)]))


@variant("delete", "api")
async def delete_api(c: Ctx) -> float:
    name = c.api_create()
    c.daemon.idle()
    return await timed(lambda: c.api_delete(name))


BATCH = 10


@variant(f"delete ×{BATCH}", "bare")
async def delete_batch_bare(c: Ctx) -> float:
    names = [c.fresh() for _ in range(BATCH)]
    for n in names:
        await c.backend.create(c.cid, n, None, None)
    return await timed(lambda: btrfs("subvolume", "delete", *(str(c.snap(n)) for n in names)))


@variant(f"delete ×{BATCH}", "backend")
async def delete_batch_backend(c: Ctx) -> float:
    names = [c.fresh() for _ in range(BATCH)]
    for n in names:
        await c.backend.create(c.cid, n, None, None)
    return await timed(lambda: c.backend.delete(c.cid, [SnapshotRef(n) for n in names]))


# -- size recount (background work after each create/delete, quotas off) --------

async def _two_snapshots(c: Ctx) -> list[str]:
    names = [c.fresh(), c.fresh()]
    for n in names:
        await c.backend.create(c.cid, n, None, None)
    return names


@variant("size recount", "bare")
async def sizes_bare(c: Ctx) -> float:
    names = await _two_snapshots(c)
    t = await timed(lambda: subprocess.run(
        ["btrfs", "filesystem", "du", "-s", "--raw", *(str(c.snap(n)) for n in names)],
        check=True, capture_output=True))
    await c.backend.delete(c.cid, [SnapshotRef(n) for n in names])
    return t


@variant("size recount", "backend")
async def sizes_backend(c: Ctx) -> float:
    names = await _two_snapshots(c)
    t = await timed(lambda: c.backend.recount({c.cid: names}))
    await c.backend.delete(c.cid, [SnapshotRef(n) for n in names])
    return t


# -- driver -----------------------------------------------------------------

def fill(path: Path, size: int) -> None:
    """Real data in 1 MiB files (plus a few small ones), committed to disk."""
    chunk = os.urandom(MiB)
    for i in range(size // MiB):
        (path / f"blob-{i:05d}").write_bytes(chunk[i % 256:] + chunk[: i % 256])
    (path / "etc").mkdir()
    for i in range(100):
        (path / "etc" / f"conf-{i}").write_text(f"setting={i}\n")
    os.sync()


async def run(runs: int, sizes: dict[str, int], workdir: Path) -> dict[tuple[str, str], dict[str, float]]:
    results: dict[tuple[str, str], dict[str, float]] = {}
    fs = BtrfsHarness(workdir, size=4 << 30)
    daemon: Daemon | None = None
    try:
        backend = BtrfsBackend(str(fs.root))
        await backend.open()
        cmd_backend = BtrfsBackend(str(fs.root))
        cmd_backend.use_ioctl = False
        daemon = Daemon(workdir, fs.spec)
        print("daemon: " + " ".join(daemon.command), file=sys.stderr)
        for label, size in sizes.items():
            cid = new_cid()
            fill(fs.make_container(cid), size)
            ctx = Ctx(fs, backend, cmd_backend, cid, daemon)
            for op in OPS.values():
                row = results.setdefault((op.name, label), {})
                for vname, fn in op.variants.items():
                    await fn(ctx)  # warm-up
                    samples = [await fn(ctx) for _ in range(runs)]
                    row[vname] = statistics.median(samples)
                    print(f"  {op.name:>10} {label:>7} {vname:<14} "
                          f"{row[vname] * 1e3:8.2f} ms", file=sys.stderr)
            daemon.idle()
            assert not any(a.startswith(".snapshots/.tmp") for a in fs.artifacts())
            assert {a for a in fs.artifacts() if cid in a} == {cid}, "stray snapshots"
    finally:
        if daemon is not None:
            daemon.stop()
        fs.close()
    return results


def table(results: dict[tuple[str, str], dict[str, float]], runs: int) -> str:
    """One table: a row per operation and level; sizes side by side; ratios."""
    sizes = list(dict.fromkeys(size for _, size in results))
    ops = list(dict.fromkeys(op for op, _ in results))
    head = ["operation", "level", *(f"{s} (ms)" for s in sizes)]
    if len(sizes) > 1:
        head.append(f"{sizes[-1]} / {sizes[0]}")
    head += [f"{s} vs bare" for s in sizes]
    legend = (f"Median of {runs} runs. bare = the `btrfs` command(s) spawned per operation; "
              "backend = in-process ioctls; backend (cmd) = the backend's command fallback; "
              "api = HTTP request to the daemon over its Unix socket.")
    lines = [legend, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op in ops:
        levels: list[str] = []
        for size in sizes:
            levels += [v for v in results.get((op, size), {}) if v not in levels]
        for level in levels:
            ms = [results.get((op, s), {}).get(level) for s in sizes]
            cells = [op, level, *(f"{m * 1e3:.2f}" if m is not None else "" for m in ms)]
            if len(sizes) > 1:
                cells.append(f"{ms[-1] / ms[0]:.2f}x" if ms[0] and ms[-1] else "")
            for s, m in zip(sizes, ms):
                bare = results.get((op, s), {}).get("bare")
                cells.append("" if level == "bare" or not m or not bare else f"{m / bare:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--sizes", nargs="*", choices=list(SIZES), default=list(SIZES))
    args = ap.parse_args()
    if reason := BtrfsHarness.unavailable():
        print(f"cannot benchmark btrfs: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-btrfs-") as d:
        results = asyncio.run(run(args.runs, {s: SIZES[s] for s in args.sizes}, Path(d)))
    print(table(results, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
