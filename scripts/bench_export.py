#!/usr/bin/env python3
"""Benchmark export -> import of portable streams against `tar cf - | tar xf -` (run as root).

Real daemons on directory (overlay) pools in a temporary directory (or
--root): a container of --mib MiB (1 MiB files of random data, plus one small
file per 64 KiB of it), snapshotted on the sender, then streamed with the CLI
exactly as a user would pipe it:

    snapd export --socket A ID NAME | snapd import --socket B ID

and relayed by one HTTP client process (GET from one daemon, POST to a third as
the bytes arrive: what a replication job does), each timed end to end against GNU tar moving the same tree between the same
filesystems (`tar --xattrs -C src -cf - . | tar --xattrs -C dst -xpf -`), in one
run so the ratio compares like with like.  Then one 1 MiB file is rewritten, a
second snapshot taken, and the incremental stream (`--base`) is measured in
bytes and imported.  The daemons' peak resident memory (VmHWM) is printed too.
Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.client import snaps  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402
from tests.harness import new_cid  # noqa: E402

MiB = 1 << 20
SNAPD = [sys.executable, "-c", "import sys; from snapd.cli.main import main; sys.exit(main())"]


def fill(root: Path, mib: int) -> None:
    for i in range(mib):
        d = root / f"dir{i // 64:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"big{i:05d}.bin").write_bytes(os.urandom(MiB - 16 * 1024))
        (d / f"small{i:05d}.txt").write_bytes(os.urandom(16 * 1024))


def peak_rss(d: DaemonProcess) -> int:
    assert d.proc
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def pipe(left: list[str], right: list[str]) -> float:
    start = time.monotonic()
    a = subprocess.Popen(left, stdout=subprocess.PIPE)
    b = subprocess.Popen(right, stdin=a.stdout)
    assert a.stdout
    a.stdout.close()
    if b.wait() or a.wait():
        raise SystemExit(f"pipeline failed: {left} | {right}")
    return time.monotonic() - start


async def relay(src: Path, src_path: str, dst: Path, dst_path: str) -> None:
    """GET a stream from one daemon and POST it to the other as it arrives (one client process)."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(src))) as a, \
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(dst))) as b:
        async with a.get(f"http://localhost{src_path}") as got:
            assert got.status == 200

            async def body():  # type: ignore[no-untyped-def]
                async for chunk in got.content.iter_chunked(MiB):
                    yield chunk

            async with b.post(f"http://localhost{dst_path}", data=body()) as put:
                assert put.status == 200, await put.text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="container size in MiB (default 256)")
    parser.add_argument("--root", type=Path, help="work here (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.root))
    try:
        run(work, args.mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, mib: int) -> None:
    cid = new_cid()
    pools = {k: work / f"pool-{k}" for k in ("a", "b", "c")}
    for p in pools.values():
        p.mkdir()
    fill(pools["a"] / cid, mib)
    daemons = {k: DaemonProcess(work / f"d-{k}", [f"overlay:{p}"], tcp=False).start() for k, p in pools.items()}
    try:
        a, b = daemons["a"], daemons["b"]
        first = a.unix.post(snaps(cid), {}).data["snapshot"]["name"]
        subprocess.run(["sync"], check=True)
        api = pipe([*SNAPD, "export", "--socket", str(a.socket), cid, first],
                   [*SNAPD, "import", "--socket", str(b.socket), cid])
        start = time.monotonic()
        asyncio.run(relay(a.socket, snaps(cid, first, "/export"), daemons["c"].socket,
                          snaps(cid, None, "/import")))
        relayed = time.monotonic() - start
        tar_dst = work / "tar-dst"
        tar_dst.mkdir()
        tar = pipe(["tar", "--xattrs", "-C", str(pools["a"] / ".snapshots" / cid / first), "-cf", "-", "."],
                   ["tar", "--xattrs", "-C", str(tar_dst), "-xpf", "-"])
        live = pools["a"] / cid
        (live / "dir000" / "big00000.bin").write_bytes(os.urandom(MiB))
        second = a.unix.post(snaps(cid), {}).data["snapshot"]["name"]
        full = len(a.unix.get(snaps(cid, second, "/export")).raw)
        incremental = a.unix.get(snaps(cid, second, f"/export?base={first}")).raw
        assert b.unix.post(snaps(cid, None, "/import"), incremental).status == 200
        print(f"| measure | {mib} MiB container |")
        print("|---|---|")
        print(f"| export \\| import through both daemons (CLI pipe) | {api:.2f} s, {mib / api:.0f} MiB/s |")
        print(f"| export -> import relayed by one HTTP client (no CLI) | {relayed:.2f} s, {mib / relayed:.0f} MiB/s |")
        print(f"| tar cf - \\| tar xf - of the same tree | {tar:.2f} s, {mib / tar:.0f} MiB/s |")
        print(f"| ratio to tar's throughput: CLI pipe / relay | {tar / api:.2f}x / {tar / relayed:.2f}x |")
        print(f"| full stream of the second snapshot | {full / MiB:.1f} MiB |")
        print(f"| incremental after rewriting one 1 MiB file | {len(incremental) / MiB:.2f} MiB "
              f"({len(incremental)} bytes) |")
        print(f"| peak RSS sender / receiver | {peak_rss(a) / MiB:.0f} / {peak_rss(b) / MiB:.0f} MiB |")
    finally:
        for d in daemons.values():
            d.stop()


if __name__ == "__main__":
    main()
