#!/usr/bin/env python3
"""Benchmark the ZFS backend against bare zfs commands (needs root).

Sets up its own zfs-fuse/OpenZFS pool in a temp dir (tests/harness/zfs.py)
and removes it afterwards.  Prints a Markdown table of medians.

    sudo .venv/bin/python scripts/bench_zfs.py [--runs 20] [--snapshots 1000]

To add a row, append a `Row` in `main()`: an async callable for the
daemon-side measurement and (optionally) one for the bare command.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.base import SnapshotRef  # noqa: E402
from backends.zfs import ZfsBackend  # noqa: E402
from backends.zfs_cmd import ZfsRunner  # noqa: E402
from tests.harness import new_cid  # noqa: E402
from tests.harness.zfs import ZfsHarness  # noqa: E402

Op = Callable[[int], Awaitable[object]]


@dataclass
class Row:
    name: str
    ours: Op
    bare: Op | None = None
    runs: int = 20


async def median_ms(op: Op, runs: int) -> float:
    times = []
    for i in range(runs):
        t = time.perf_counter()
        await op(i)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def run_rows(rows: list[Row]) -> list[tuple[str, float, float | None, int]]:
    out = []
    for row in rows:
        ours = await median_ms(row.ours, row.runs)
        bare = await median_ms(row.bare, row.runs) if row.bare else None
        out.append((row.name, ours, bare, row.runs))
        print(f"  {row.name}: {ours:.1f} ms", file=sys.stderr)
    return out


def table(results: list[tuple[str, float, float | None, int]], title: str) -> str:
    lines = [f"### {title}", "", "| operation | container-snapd (ms) | bare zfs (ms) | runs |",
             "|---|---:|---:|---:|"]
    for name, ours, bare, runs in results:
        lines.append(f"| {name} | {ours:.1f} | {'-' if bare is None else f'{bare:.1f}'} | {runs} |")
    return "\n".join(lines)


async def bench(h: ZfsHarness, runs: int, nsnaps: int) -> str:
    runner = ZfsRunner()
    b = ZfsBackend(h.root, runner)
    await b.open()

    cid = new_cid()
    h.make_container(cid)
    ds = h.dataset(cid)

    async def create(i: int) -> None:
        await b.create(cid, f"c{i}", "bench", time.time() + 86400)

    async def bare_create(i: int) -> None:
        await runner.zfs("snapshot", f"{ds}@bare{i}")

    rcid = new_cid()
    path = h.make_container(rcid)
    refs: dict[str, str] = {}
    for n in (1, 2, 3):
        (path / "v").write_text(str(n))
        refs[f"s{n}"] = (await b.create(rcid, f"s{n}", None, None)).ref

    async def restore(name: str) -> None:
        others = [SnapshotRef(n, r) for n, r in refs.items() if n != name]
        refs.update(await b.restore(rcid, SnapshotRef(name, refs[name]), others))

    async def restore_newest(i: int) -> None:
        (h.container_path(rcid) / "v").write_text("dirty")
        await restore("s3")

    async def bare_rollback(i: int) -> None:
        (h.container_path(rcid) / "v").write_text("dirty")
        await runner.zfs("rollback", refs["s3"])

    async def restore_older(i: int) -> None:
        await restore("s1" if i % 2 == 0 else "s2")

    lcid = new_cid()
    h.make_container(lcid)
    lds = h.dataset(lcid)
    print(f"  creating {nsnaps} snapshots...", file=sys.stderr)
    for i in range(nsnaps):
        await b.create(lcid, f"l{i:05d}", f"alias {i}", None)

    async def list_many(i: int) -> None:
        b._cache.clear()  # measure the real zfs call, not the 2 s cache
        got = await b.list(lcid)
        assert len(got[lcid]) == nsnaps

    async def bare_list(i: int) -> None:
        await runner.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", lds)

    async def delete_many(i: int) -> None:
        await b.delete(lcid, [SnapshotRef(f"l{i:05d}") for i in range(nsnaps)])

    rows = [
        Row("create snapshot (alias + expiry mirrored)", create, bare_create, runs),
        Row("restore newest (rollback)", restore_newest, bare_rollback, runs),
        Row("restore older, newer kept (clone/promote/swap)", restore_older, None, runs),
        Row(f"list {nsnaps} snapshots (backend: get -Hp)", list_many, bare_list, runs),
    ]
    results = await run_rows(rows)
    runner.stats.reset()
    results += await run_rows([Row(f"delete {nsnaps} snapshots (one call)", delete_many, None, 1)])
    kind = "OpenZFS" if b.multi_destroy else "zfs-fuse (no comma destroy)"
    return table(results, f"ZFS backend, {kind}") + \
        f"\n\nzfs processes for the delete: {runner.stats.count()}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--snapshots", type=int, default=1000)
    args = ap.parse_args()
    reason = ZfsHarness.unavailable()
    if reason:
        sys.exit(f"cannot benchmark ZFS: {reason}")
    with tempfile.TemporaryDirectory(prefix="bench-zfs-") as tmp:
        h = ZfsHarness(Path(tmp))
        try:
            print(asyncio.run(bench(h, args.runs, args.snapshots)))
        finally:
            h.close()


if __name__ == "__main__":
    main()
