#!/usr/bin/env python3
"""Benchmark the btrfs backend against bare `btrfs` commands (run as root).

Sets up its own loop-mounted btrfs in a temporary directory, fills one
container per size with real data, and times create, restore and delete
(median of --runs runs each).  Prints a Markdown table.

Variants are functions registered per operation in VARIANTS; the first one
named "bare" is the baseline for the ratio columns.  To add a level (e.g.
the HTTP API), register another variant for each operation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.base import SnapshotRef  # noqa: E402
from backends.btrfs import BtrfsBackend  # noqa: E402
from tests.harness import new_cid  # noqa: E402
from tests.harness.btrfs import BtrfsHarness  # noqa: E402

MiB = 1 << 20
SIZES = {"10 MiB": 10 * MiB, "1 GiB": 1024 * MiB}


def btrfs(*args: str) -> None:
    subprocess.run(["btrfs", *args], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Ctx:
    """One container under test and the pool around it."""

    fs: BtrfsHarness
    backend: BtrfsBackend
    cmd_backend: BtrfsBackend
    cid: str
    seq: int = 0

    @property
    def cpath(self) -> Path:
        return self.fs.container_path(self.cid)

    def snap(self, name: str) -> Path:
        return self.fs.root / ".snapshots" / self.cid / name

    def fresh(self) -> str:
        self.seq += 1
        return f"b{self.seq}"


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
    try:
        backend = BtrfsBackend(str(fs.root))
        await backend.open()
        cmd_backend = BtrfsBackend(str(fs.root))
        cmd_backend.use_ioctl = False
        for label, size in sizes.items():
            cid = new_cid()
            fill(fs.make_container(cid), size)
            ctx = Ctx(fs, backend, cmd_backend, cid)
            for op in OPS.values():
                row = results.setdefault((op.name, label), {})
                for vname, fn in op.variants.items():
                    await fn(ctx)  # warm-up
                    samples = [await fn(ctx) for _ in range(runs)]
                    row[vname] = statistics.median(samples)
                    print(f"  {op.name:>10} {label:>7} {vname:<14} "
                          f"{row[vname] * 1e3:8.2f} ms", file=sys.stderr)
            assert not any(a.startswith(".snapshots/.tmp") for a in fs.artifacts())
    finally:
        fs.close()
    return results


def table(results: dict[tuple[str, str], dict[str, float]], runs: int) -> str:
    variants: list[str] = []
    for row in results.values():
        variants += [v for v in row if v not in variants]
    others = [v for v in variants if v != "bare"]
    head = ["operation", "container", *(f"{v} (ms)" for v in variants),
            *(f"{v} / bare" for v in others)]
    lines = [f"Median of {runs} runs; bare = `btrfs` command(s) spawned per operation.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (op, size), row in results.items():
        ms = [f"{row[v] * 1e3:.2f}" if v in row else "" for v in variants]
        ratio = [f"{row[v] / row['bare']:.2f}" if v in row and "bare" in row else ""
                 for v in others]
        lines.append("| " + " | ".join([op, size, *ms, *ratio]) + " |")
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
