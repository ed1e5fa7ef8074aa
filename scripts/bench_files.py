#!/usr/bin/env python3
"""Benchmark file access to snapshots on btrfs (run as root): the issue's three targets.

Sets up its own loop-mounted btrfs (tests.harness.btrfs), starts the real
daemon on it and times, median of --runs runs each, ratios within this run:

- diff of two snapshots of a tree of --files files with 10 changed files, via
  the route (btrfs send change tracking) vs the full metadata walk of the same
  pair (backends.treeread.diff, in process);
- the `file` route streaming a --mib MiB file over the Unix socket vs
  `cat FILE > /dev/null` of the same file (both from a warm page cache);
- the `tree` route listing the first 1,000 of a directory of --entries entries.

Prints one Markdown table; everything it made is removed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends import treeread
from backends.base import open_root
from tests.client import UnixHTTPConnection, snaps
from tests.daemon import DaemonProcess
from tests.harness import new_cid
from tests.harness.btrfs import BtrfsHarness

MiB = 1 << 20


def median(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fill(root: Path, files: int, per_dir: int = 1000) -> None:
    for d in range(files // per_dir):
        sub = root / f"d{d:04d}"
        sub.mkdir()
        for f in range(per_dir):
            (sub / f"f{f:04d}").write_bytes(b"x" * 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if BtrfsHarness.unavailable():
        sys.exit(f"cannot run: {BtrfsHarness.unavailable()}")
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp, \
            BtrfsHarness(Path(tmp), size=args.mib * MiB + (2048 * MiB)) as fs:
        daemon = DaemonProcess(Path(tmp) / "d", [fs.spec], tcp=False).start()
        try:
            rows = run(fs, daemon, args)
        finally:
            daemon.stop()
    print("| what | route | reference | ratio | target |\n| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def snap(daemon: DaemonProcess, cid: str) -> str:
    r = daemon.unix.post(snaps(cid))
    assert r.status == 200, r.body
    return str(r.data["snapshot"]["name"])


def get_all(daemon: DaemonProcess, path: str) -> int:
    """GET `path` over the Unix socket, reading the body in 1 MiB chunks; its length."""
    conn = UnixHTTPConnection(str(daemon.socket), timeout=600)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:500]
        total = 0
        while chunk := resp.read(MiB):
            total += len(chunk)
        return total
    finally:
        conn.close()


def run(fs: BtrfsHarness, daemon: DaemonProcess, args: argparse.Namespace) -> list[list[str]]:
    rows = []
    # diff: 10 changed files in a tree of args.files
    cid = new_cid()
    root = fs.make_container(cid)
    fill(root, args.files)
    first = snap(daemon, cid)
    for i in range(10):
        (root / f"d{i * 7 % (args.files // 1000):04d}" / f"f{i:04d}").write_bytes(b"changed")
    second = snap(daemon, cid)
    url = snaps(cid, first, "/diff") + f"?against={second}"

    def route() -> None:
        r = daemon.unix.get(url)
        assert r.status == 200 and len(r.data["changes"]) == 10, r.body

    async def walk() -> None:
        async with open_root(str(fs.root / ".snapshots" / cid / first)) as old, \
                open_root(str(fs.root / ".snapshots" / cid / second)) as new:
            assert len(list(treeread.diff(old, new))) == 10

    t_route = median(route, args.runs)
    t_walk = median(lambda: asyncio.run(walk()), args.runs)
    rows.append([f"diff, {args.files:,} files, 10 changed", f"{t_route * 1000:.0f} ms",
                 f"{t_walk * 1000:.0f} ms (metadata walk)", f"{t_route / t_walk:.3f}×", "≤ 0.1×"])

    # file: stream args.mib MiB vs cat
    big = fs.make_container(new_cid())
    block = bytes(range(256)) * (MiB // 256)
    with open(big / "big", "wb") as f:
        for _ in range(args.mib):
            f.write(block)
    name = snap(daemon, big.name)
    path = fs.root / ".snapshots" / big.name / name / "big"
    furl = snaps(big.name, name, "/file") + "?path=/big"
    def cat() -> None:  # cat FILE > /dev/null
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)

    cat()  # warm the page cache
    t_cat = median(cat, args.runs)
    t_file = median(lambda: get_all(daemon, furl), args.runs)
    rows.append([f"file, {args.mib} MiB", f"{t_file:.2f} s ({args.mib / t_file:.0f} MiB/s)",
                 f"{t_cat:.2f} s (`cat > /dev/null`, {args.mib / t_cat:.0f} MiB/s)",
                 f"{t_cat / t_file:.2f}× of cat's speed", "≥ 0.8×"])

    # tree: the first 1,000 of args.entries entries
    wide = fs.make_container(new_cid())
    (wide / "big").mkdir()
    for i in range(args.entries):
        (wide / "big" / f"entry-{i:06d}").touch()
    name = snap(daemon, wide.name)
    turl = snaps(wide.name, name, "/tree") + "?path=/big&limit=1000"

    def tree() -> None:
        r = daemon.unix.get(turl)
        assert r.status == 200 and len(r.data["entries"]) == 1000, r.body

    t_tree = median(tree, max(args.runs, 5))
    rows.append([f"tree, first 1,000 of {args.entries:,} entries", f"{t_tree * 1000:.0f} ms", "", "", "< 100 ms"])
    return rows


if __name__ == "__main__":
    main()
