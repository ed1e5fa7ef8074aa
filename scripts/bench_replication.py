#!/usr/bin/env python3
"""Benchmark replication jobs (run as root).

Portable (default): two real daemons on directory (overlay) pools in a temporary
directory (or --root), the receiver on a TCP listener on 127.0.0.1 with a `replicate`
token, the sender with it as `[targets.bench]`: a container of --mib MiB
(scripts/bench_export.py's tree) is snapshotted and replicated by a job (POST, then GET
until done), timed against GNU tar moving the same tree between the same filesystems.
Then one 1 MiB file is rewritten, a second snapshot taken and replicated: the job's
bytes on the wire.  The daemons' peak resident memory (VmHWM) is printed too.

--btrfs: the same between two loop-mounted btrfs pools, where the job sends the native
stream (`btrfs send` / `btrfs receive`), timed against a bare `btrfs send | btrfs
receive` pipe of the same snapshot between the same filesystems (run before and after
the job; their mean), with the daemons' resident memory sampled (psutil, every 20 ms)
during the job: the most it grew over its value at the start.

--zfs: the same between two ZFS pools (tests/harness/zfs.py: zfs-fuse on sparse files
unless a ZFS answers), the job sending `zfs send` / `zfs receive`, timed against a bare
`zfs send | zfs receive` of the same snapshot into the receiving pool.

Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_export import MiB, fill, peak_rss, pipe  # noqa: E402
from tests.client import snaps  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402
from tests.harness import new_cid  # noqa: E402
from tests.harness.btrfs import BtrfsHarness  # noqa: E402

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


@contextlib.contextmanager
def rss_growth(*daemons: DaemonProcess) -> Iterator[list[int]]:
    """While the context lasts, the most each daemon's RSS grew over its value at the start
    (bytes; sampled every 20 ms with psutil), one figure per daemon in the list it gives,
    then the CPU time each used (ms, user + system)."""
    import psutil

    procs = [psutil.Process(d.proc.pid) for d in daemons if d.proc]
    start = [p.memory_info().rss for p in procs]
    cpu = [sum(p.cpu_times()[:2]) for p in procs]
    growth = [0] * (2 * len(procs))
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            for i, p in enumerate(procs):
                growth[i] = max(growth[i], p.memory_info().rss - start[i])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield growth
    finally:
        done.set()
        sampler.join()
        for i, p in enumerate(procs):
            growth[len(procs) + i] = int((sum(p.cpu_times()[:2]) - cpu[i]) * 1000)


def bare_btrfs(snapshot: Path, dest: Path) -> float:
    """Seconds `btrfs send SNAPSHOT | btrfs receive DEST` takes (the received copy deleted after)."""
    dest.mkdir(exist_ok=True)
    seconds = pipe(["btrfs", "send", "-q", str(snapshot)], ["btrfs", "receive", "-q", str(dest)])
    subprocess.run(["btrfs", "subvolume", "delete", "-c", str(dest / snapshot.name)], check=True,
                   stdout=subprocess.DEVNULL)
    return seconds


def run_btrfs(work: Path, mib: int, rounds: int) -> None:
    cid = new_cid()
    size = (mib * 3 + 1024) * MiB
    with contextlib.ExitStack() as stack:
        pools = {}
        for k in ("sender", "receiver"):
            pools[k] = BtrfsHarness(work / k, size)
            stack.callback(pools[k].close)
        src, dst = pools["sender"].root, pools["receiver"].root
        subprocess.run(["btrfs", "subvolume", "create", str(src / cid)], check=True, stdout=subprocess.DEVNULL)
        fill(src / cid, mib)
        receiver, sender = stack.enter_context(_daemons(work, pools["receiver"].spec, pools["sender"].spec))
        first = sender.unix.post(snaps(cid), {}).data["snapshot"]["name"]
        subprocess.run(["sync"], check=True)
        snapshot = src / ".snapshots" / cid / first
        bare_btrfs(snapshot, dst.parent / "bare")  # a warm-up: both read the snapshot from the page cache
        measured = _rounds(sender, receiver, cid, first, rounds, lambda: bare_btrfs(snapshot, dst.parent / "bare"))
        _table(f"{mib} MiB container, btrfs to btrfs", "btrfs send \\| btrfs receive", mib, rounds,
               *measured, _incremental(sender, src / cid, cid))


def bare_zfs(snapshot: str, dest: str) -> float:
    """Seconds `zfs send SNAPSHOT | zfs receive DEST` takes (DEST destroyed after; zfs-fuse
    may call it busy for a moment)."""
    seconds = pipe(["zfs", "send", snapshot], ["zfs", "receive", dest])
    for attempt in range(20):
        if subprocess.run(["zfs", "destroy", "-r", dest], capture_output=True).returncode == 0:
            return seconds
        time.sleep(0.1 * (attempt + 1))
    raise SystemExit(f"cannot destroy {dest}")


def run_zfs(work: Path, mib: int, rounds: int) -> None:
    from tests.harness.zfs import ZfsHarness

    cid = new_cid()
    with contextlib.ExitStack() as stack:
        pools: dict[str, ZfsHarness] = {}
        for k in ("sender", "receiver"):
            pools[k] = ZfsHarness(work / k, (mib * 4 + 1024) * MiB)  # the job's copies and the bare one
            stack.callback(pools[k].close)
        src, dst = pools["sender"], pools["receiver"]
        fill(src.make_container(cid), mib)
        receiver, sender = stack.enter_context(_daemons(work, dst.spec, src.spec))
        first = sender.unix.post(snaps(cid), {}).data["snapshot"]["name"]
        snapshot = f"{src.dataset(cid)}@{first}"
        # received unmounted, as the job's receive is (into the hidden dataset)
        subprocess.run(["zfs", "create", "-o", "canmount=off", "-o", "mountpoint=none", f"{dst.root}/bare"], check=True)
        bare_zfs(snapshot, f"{dst.root}/bare/copy")  # a warm-up, as for btrfs
        measured = _rounds(sender, receiver, cid, first, rounds, lambda: bare_zfs(snapshot, f"{dst.root}/bare/copy"))
        _table(f"{mib} MiB container, zfs to zfs (zfs-fuse)", "zfs send \\| zfs receive", mib, rounds,
               *measured, _incremental(sender, src.container_path(cid), cid))


@contextlib.contextmanager
def _daemons(work: Path, receiver_spec: str, sender_spec: str) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """The receiver (TCP, a `replicate` token) and the sender naming it `[targets.bench]`,
    stopped when the context ends."""
    receiver = DaemonProcess(work / "d-receiver", [receiver_spec], tcp=True).start()
    try:
        token = work / "token"
        token.write_text(receiver.unix.post("/api/v1/admin/tokens", {"replicate": True}).data["secret"])
        config = work / "sender.toml"
        config.write_text(f'[targets.bench]\nurl = "http://127.0.0.1:{receiver.port}"\ntoken_file = "{token}"\n')
        sender = DaemonProcess(work / "d-sender", [sender_spec], tcp=False, extra=["--config", str(config)]).start()
        try:
            yield receiver, sender
        finally:
            sender.stop()
    finally:
        receiver.stop()


def _rounds(sender: DaemonProcess, receiver: DaemonProcess, cid: str, first: str, rounds: int,
            bare_once: Callable[[], float]) -> tuple[list[float], list[float], dict, list[int]]:
    """Bare pipes and full jobs of snapshot `first`, alternated (the machine's other load falls
    on both alike): their seconds, the last job and the daemons' growth during it."""
    bare, jobs = [], []
    for round_ in range(rounds):
        bare.append(bare_once())
        if round_:  # the receiver forgets the copy: the job sends it in full again
            assert receiver.unix.delete(snaps(cid, first)).status == 200
        with rss_growth(sender, receiver) as growth:
            seconds, job = replicate(sender, cid)
        jobs.append(seconds)
    return bare, jobs, job, growth


def _incremental(sender: DaemonProcess, live: Path, cid: str) -> dict:
    """The job replicating a snapshot taken after rewriting one 1 MiB file."""
    (live / "dir000" / "big00000.bin").write_bytes(os.urandom(MiB))
    sender.unix.post(snaps(cid), {})
    return replicate(sender, cid)[1]


def _table(title: str, bare_name: str, mib: int, rounds: int, bare: list[float], jobs: list[float], job: dict,
           growth: list[int], incremental: dict) -> None:
    """The native benchmark's Markdown table (medians of the alternated rounds)."""
    pipe_s, seconds = sorted(bare)[len(bare) // 2], sorted(jobs)[len(jobs) // 2]

    def runs(times: list[float]) -> str:
        return ", ".join(f"{t:.2f}" for t in times)

    print(f"| measure | {title} |")
    print("|---|---|")
    print(f"| replication job ({job['stream']} stream), first snapshot in full, median of {rounds} | "
          f"{seconds:.2f} s, {mib / seconds:.0f} MiB/s, {job['bytes_sent'] / MiB:.1f} MiB sent "
          f"(runs: {runs(jobs)} s) |")
    print(f"| {bare_name} of the same snapshot, median of {rounds} | {pipe_s:.2f} s, "
          f"{mib / pipe_s:.0f} MiB/s (runs: {runs(bare)} s) |")
    print(f"| ratio to the bare pipe's throughput (medians; per round: "
          f"{', '.join(f'{b / j:.2f}' for b, j in zip(bare, jobs))}) | {pipe_s / seconds:.2f}x |")
    print(f"| RSS growth during the last job, sender / receiver | {growth[0] / MiB:.1f} / {growth[1] / MiB:.1f} MiB |")
    print(f"| CPU time of the daemons during the last job, sender / receiver | {growth[2] / 1000:.2f} / "
          f"{growth[3] / 1000:.2f} s |")
    print(f"| incremental job ({incremental['stream']}) after rewriting one 1 MiB file | "
          f"{incremental['bytes_sent'] / MiB:.2f} MiB ({incremental['bytes_sent']} bytes) sent |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="container size in MiB (default 256)")
    parser.add_argument("--root", type=Path, help="work here (default: a temporary directory)")
    parser.add_argument("--btrfs", action="store_true", help="between two loop-mounted btrfs pools (native stream)")
    parser.add_argument("--zfs", action="store_true", help="between two zfs(-fuse) pools (native stream)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--btrfs/--zfs: bare pipes and jobs, alternated (default 3)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-replication-", dir=args.root))
    try:
        if args.btrfs:
            run_btrfs(work, args.mib, max(1, args.rounds))
        elif args.zfs:
            run_zfs(work, args.mib, max(1, args.rounds))
        else:
            run(work, args.mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
