#!/usr/bin/env python3
"""Benchmark restoring the oldest of 3 snapshots on btrfs: the API against a bare peer (root).

Sets up its own loop-mounted btrfs, makes one container of --files small files,
starts the real daemon on it (from --repo: another checkout's code, for a
before/after comparison) and takes 3 snapshots through the API.  Then --runs
times, alternating on the same container:

* api: `PATCH .../snapshots/<oldest>` over the Unix socket (one keep-alive
  connection), which journals, checks (nested subvolumes, mounts, the in-use
  scan of /proc) and swaps;
* bare: what a restore must do at least, with nothing checked: one writable
  snapshot of the oldest snapshot (BTRFS_IOC_SNAP_CREATE_V2), one
  renameat2(RENAME_EXCHANGE) with the container, one BTRFS_IOC_SNAP_DESTROY of
  the old container (no transaction commit waited for);
* scan: the in-use scan alone (backends.inuse.holders of the container, as the
  backend runs it), in this process, for the breakdown.

Prints the medians and the API / bare ratio, from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends import btrfs_ioctl, inuse
from scripts.bench_create_load import (Connection, btrfs_missing, daemon_options, snaps, start_daemon,
                                       start_profile, stop_profile)
from tests.harness import new_cid
from tests.harness.btrfs import BtrfsHarness


def bare_restore(fs: BtrfsHarness, cid: str, snapshot: str, scratch: Path, n: int) -> float:
    """Writable snapshot + RENAME_EXCHANGE + SNAP_DESTROY; its seconds."""
    began = time.perf_counter()
    src = btrfs_ioctl.open_dir(str(fs.root / ".snapshots" / cid / snapshot))
    dst = btrfs_ioctl.open_dir(str(scratch))
    try:
        btrfs_ioctl.snapshot(src, dst, f"new-{n}", False)
        btrfs_ioctl.exchange(str(scratch / f"new-{n}"), str(fs.container_path(cid)))
        btrfs_ioctl.destroy(dst, f"new-{n}")  # the old container, swapped to the scratch name
    finally:
        os.close(src)
        os.close(dst)
    return time.perf_counter() - began


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--files", type=int, default=50, help="4 KiB files in the container")
    daemon_options(ap, "the API restores")
    args = ap.parse_args()
    if btrfs_missing():
        return 2
    api_t: list[float] = []
    bare_t: list[float] = []
    scan_t: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as d:
        fs = BtrfsHarness(Path(d), size=2 << 30)
        proc = spy = None
        try:
            cid = new_cid()
            path = fs.make_container(cid)
            for i in range(args.files):
                (path / f"f{i}").write_bytes(os.urandom(4096))
            proc, sock = start_daemon(args.repo.resolve(), Path(d), fs.spec)
            conn = Connection(sock)
            names = []
            for _ in range(3):
                names.append(conn.call("POST", snaps(cid))["data"]["snapshot"]["name"])
                time.sleep(0.01)  # distinct creation times
            oldest = min(names)
            scratch = fs.mountpoint / "bare"
            scratch.mkdir()
            time.sleep(3)  # past the creates' debounced size recount (snapd/core/recount.py: 1.5 s)
            spy = start_profile(proc.pid, args.profile) if args.profile else None
            for n in range(args.runs):
                bare_t.append(bare_restore(fs, cid, oldest, scratch, n))
                began = time.perf_counter()
                conn.call("PATCH", f"{snaps(cid)}/{oldest}")
                api_t.append(time.perf_counter() - began)
                began = time.perf_counter()
                inuse.holders(str(fs.container_path(cid)))
                scan_t.append(time.perf_counter() - began)
        finally:
            if spy is not None:
                stop_profile(spy)
            if proc is not None:
                proc.terminate()
                proc.wait(60)
            fs.close()
    api, bare, scan = (statistics.median(t) * 1e3 for t in (api_t, bare_t, scan_t))
    print(f"daemon from {args.repo.resolve()}; one container of {args.files} x 4 KiB files, 3 snapshots, "
          f"the oldest restored; {args.runs} runs of each, alternating; {len(os.listdir('/proc'))} /proc entries; "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| restore of the oldest of 3 snapshots | median (ms) | vs bare |\n|---|---:|---:|")
    print(f"| bare: writable snapshot + RENAME_EXCHANGE + SNAP_DESTROY | {bare:.2f} | 1.00x |")
    print(f"| API (`PATCH .../snapshots/<name>`) | {api:.2f} | {api / bare:.2f}x |")
    print(f"| (in the API's time) the in-use scan of /proc alone | {scan:.2f} | {scan / bare:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
