#!/usr/bin/env python3
"""Benchmark a replication job against `tar cf - | tar xf -` (run as root).

Two real daemons on directory (overlay) pools in a temporary directory (or --root),
the receiver on a TCP listener on 127.0.0.1 with a `replicate` token, the sender
with it as `[targets.bench]`: a container of --mib MiB (scripts/bench_export.py's
tree) is snapshotted and replicated by a job (POST, then GET until done), timed
against GNU tar moving the same tree between the same filesystems.  Then one
1 MiB file is rewritten, a second snapshot taken and replicated: the job's bytes
on the wire.  The daemons' peak resident memory (VmHWM) is printed too.  Prints
one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_export import MiB, fill, peak_rss, pipe  # noqa: E402
from tests.client import snaps  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402
from tests.harness import new_cid  # noqa: E402

JOBS = "/api/v1/admin/replications"


def replicate(d: DaemonProcess, cid: str) -> tuple[float, dict]:
    """Seconds a job takes from its POST to `done` (polled every 20 ms), and the job."""
    start = time.monotonic()
    job = d.unix.post(JOBS, {"container": cid, "target": "bench"}).data["job"]
    while job["state"] not in ("done", "failed"):
        time.sleep(0.02)
        job = d.unix.get(f"{JOBS}/{job['id']}").data["job"]
    if job["state"] != "done":
        raise SystemExit(f"job failed: {job['last_error']}")
    return time.monotonic() - start, job


def run(work: Path, mib: int) -> None:
    cid = new_cid()
    pools = {k: work / f"pool-{k}" for k in ("sender", "receiver")}
    for p in pools.values():
        p.mkdir()
    fill(pools["sender"] / cid, mib)
    receiver = DaemonProcess(work / "d-receiver", [f"overlay:{pools['receiver']}"], tcp=True).start()
    sender = None
    try:
        token = work / "token"
        token.write_text(receiver.unix.post("/api/v1/admin/tokens", {"replicate": True}).data["secret"])
        config = work / "sender.toml"
        config.write_text(f'[targets.bench]\nurl = "http://127.0.0.1:{receiver.port}"\ntoken_file = "{token}"\n')
        sender = DaemonProcess(work / "d-sender", [f"overlay:{pools['sender']}"], tcp=False,
                               extra=["--config", str(config)]).start()
        first = sender.unix.post(snaps(cid), {}).data["snapshot"]["name"]
        subprocess.run(["sync"], check=True)
        seconds, job = replicate(sender, cid)
        tar_dst = work / "tar-dst"
        tar_dst.mkdir()
        tar = pipe(["tar", "--xattrs", "-C", str(pools["sender"] / ".snapshots" / cid / first), "-cf", "-", "."],
                   ["tar", "--xattrs", "-C", str(tar_dst), "-xpf", "-"])
        (pools["sender"] / cid / "dir000" / "big00000.bin").write_bytes(os.urandom(MiB))
        sender.unix.post(snaps(cid), {})
        _, incremental = replicate(sender, cid)
        print(f"| measure | {mib} MiB container |")
        print("|---|---|")
        print(f"| replication job, first snapshot in full | {seconds:.2f} s, {mib / seconds:.0f} MiB/s, "
              f"{job['bytes_sent'] / MiB:.1f} MiB sent |")
        print(f"| tar cf - \\| tar xf - of the same tree | {tar:.2f} s, {mib / tar:.0f} MiB/s |")
        print(f"| ratio to tar's throughput | {tar / seconds:.2f}x |")
        print(f"| incremental job after rewriting one 1 MiB file | {incremental['bytes_sent'] / MiB:.2f} MiB "
              f"({incremental['bytes_sent']} bytes) sent |")
        print(f"| peak RSS sender / receiver | {peak_rss(sender) / MiB:.0f} / {peak_rss(receiver) / MiB:.0f} MiB |")
    finally:
        if sender is not None:
            sender.stop()
        receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="container size in MiB (default 256)")
    parser.add_argument("--root", type=Path, help="work here (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-replication-", dir=args.root))
    try:
        run(work, args.mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
