#!/usr/bin/env python3
"""Benchmark ZFS snapshots: the HTTP API, the backend, and bare zfs commands, in one run.

Needs root.  Sets up its own pool on a sparse file (tests/harness/zfs.py;
starts zfs-fuse only when no ZFS daemon answers, and stops only what it
started), measures the backend in-process, then starts the real daemon

    python -m snapd serve --socket <tmp>/api.sock --state-dir <tmp>/state \\
        --pool zfs:<pool>/containers

and measures the same operations over HTTP on its Unix socket (a fresh
connection per request, like the CLI or curl).  Every row is the median
of --runs runs; the bare command runs in the same pool, right after.
Prints one Markdown table; removes the pool afterwards.

    sudo .venv/bin/python scripts/bench_zfs.py [--runs 20] [--snapshots 1000]

To add a row, append a `Row` in `bench()`: async callables for the API,
the backend and (optionally) the bare command, plus an optional `prep`
run untimed before each timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import SnapshotRef
from backends.zfs import ZfsBackend
from backends.zfs_cmd import ZfsRunner
from tests.harness import new_cid
from tests.harness.zfs import ZfsHarness

Op = Callable[[int], Awaitable[object]]


@dataclass
class Row:
    name: str
    api: Op | None = None
    backend: Op | None = None
    bare: Op | None = None
    runs: int = 20
    prep: Op | None = None
    target: str = ""
    """What the API/bare ratio should be ('<= 1.2x', '< 1x')."""


@dataclass
class Result:
    name: str
    api: float | None
    backend: float | None
    bare: float | None
    runs: int
    target: str


async def median_ms(op: Op, runs: int, prep: Op | None) -> float:
    times = []
    for i in range(runs):
        if prep is not None:
            await prep(i)
        t = time.perf_counter()
        await op(i)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def run_rows(rows: list[Row]) -> list[Result]:
    out = []
    for row in rows:
        got = {}
        for what in ("api", "backend", "bare"):
            op = getattr(row, what)
            got[what] = await median_ms(op, row.runs, row.prep) if op else None
        out.append(Result(row.name, got["api"], got["backend"], got["bare"], row.runs, row.target))
        print(f"  {row.name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in got.items() if v is not None),
              file=sys.stderr)
    return out


def table(results: list[Result]) -> str:
    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    lines = ["| operation | API (ms) | backend (ms) | bare zfs (ms) | API / bare | target | runs |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in results:
        ratio = f"{r.api / r.bare:.2f}x" if r.api is not None and r.bare else "–"
        lines.append(f"| {r.name} | {ms(r.api)} | {ms(r.backend)} | {ms(r.bare)} | {ratio} "
                     f"| {r.target or '–'} | {r.runs} |")
    return "\n".join(lines)


# -- the daemon ----------------------------------------------------------------


class Api:
    """`python -m snapd serve` on a Unix socket, and plain HTTP requests to it."""

    def __init__(self, workdir: Path, pool_spec: str) -> None:
        self.socket = workdir / "api.sock"
        self.log = workdir / "daemon.log"
        argv = [sys.executable, "-m", "snapd", "serve", "--socket", str(self.socket),
                "--state-dir", str(workdir / "state"), "--pool", pool_spec]
        self.command = " ".join(argv[1:])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"daemon did not start:\n{self.log.read_text()}") from None
                time.sleep(0.05)

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        conn = http.client.HTTPConnection("localhost", timeout=120)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.socket))
        conn.sock = sock
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = json.loads(resp.read())
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data["data"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def snaps(cid: str, name: str | None = None) -> str:
    return f"/api/v1/containers/{cid}/snapshots" + (f"/{name}" if name else "")


# -- the benchmark -------------------------------------------------------------


async def bench(h: ZfsHarness, workdir: Path, runs: int, nsnaps: int) -> tuple[str, str]:
    runner = ZfsRunner()
    b = ZfsBackend(h.root, runner)
    await b.open()
    zfs = runner.zfs

    # ---- backend in-process (and the bare commands beside it) ----
    cid = new_cid()
    h.make_container(cid)
    ds = h.dataset(cid)

    rcid = new_cid()
    rpath = h.make_container(rcid)
    refs: dict[str, str] = {}
    for n in (1, 2, 3):
        (rpath / "v").write_text(str(n))
        refs[f"s{n}"] = (await b.create(rcid, f"s{n}", None, None)).ref

    async def restore(name: str) -> None:
        others = [SnapshotRef(n, r) for n, r in refs.items() if n != name]
        refs.update(await b.restore(rcid, SnapshotRef(name, refs[name]), others))

    async def dirty_r(i: int) -> None:
        (h.container_path(rcid) / "v").write_text(f"dirty {i}")

    lcid = new_cid()
    h.make_container(lcid)
    print(f"  creating {nsnaps} snapshots (backend)...", file=sys.stderr)
    for i in range(nsnaps):
        await b.create(lcid, f"l{i:05d}", f"alias {i}", None)

    async def list_many(i: int) -> None:
        b._cache.clear()  # measure the real zfs call, not the cache
        got = await b.list(lcid)
        assert len(got[lcid]) == nsnaps

    async def delete_many(i: int) -> None:
        await b.delete(lcid, [SnapshotRef(f"l{i:05d}") for i in range(nsnaps)])

    backend_rows = [
        Row("create (backend only)", backend=lambda i: b.create(cid, f"c{i}", "bench",
                                                               time.time() + 86400),
            bare=lambda i: zfs("snapshot", f"{ds}@bare{i}"), runs=runs),
        Row("restore newest (rollback)", backend=lambda i: restore("s3"),
            bare=lambda i: zfs("rollback", refs["s3"]), prep=dirty_r, runs=runs),
        Row("restore older, newer kept (clone/promote/swap)",
            backend=lambda i: restore("s1" if i % 2 == 0 else "s2"), runs=runs),
        Row(f"list {nsnaps} snapshots (backend: one `zfs get -Hp`)", backend=list_many,
            bare=lambda i: zfs("list", "-t", "snapshot", "-r", h.dataset(lcid)), runs=runs),
    ]
    results = await run_rows(backend_rows)
    runner.stats.reset()
    results += await run_rows([Row(f"delete {nsnaps} snapshots (backend, one call)",
                                   backend=delete_many, runs=1)])
    delete_procs = runner.stats.count()

    # ---- the real daemon, over HTTP ----
    api = Api(workdir, h.spec)
    try:
        acid = new_cid()
        h.make_container(acid)
        ads = h.dataset(acid)
        made: list[str] = []

        async def api_create(i: int) -> None:
            made.append(api.request("POST", snaps(acid))["snapshot"]["name"])

        async def api_create_meta(i: int) -> None:
            made.append(api.request("POST", snaps(acid), {"alias": f"bench {i}", "expiry": 7})
                        ["snapshot"]["name"])

        async def bare_snapshot(i: int) -> None:
            await zfs("snapshot", f"{ads}@bare{i}")

        async def bare_snapshot_meta(i: int) -> None:
            await zfs("snapshot", "-o", f"container-snapd:created_at={time.time()!r}",
                      "-o", f'container-snapd:alias="bench {i}"',
                      "-o", f"container-snapd:expires_at={time.time() + 7 * 86400!r}",
                      f"{ads}@baremeta{i}")

        async def api_delete(i: int) -> None:
            api.request("DELETE", snaps(acid, made.pop()))

        async def bare_destroy(i: int) -> None:
            await zfs("destroy", f"{ads}@bare{i}")

        # restore: three snapshots through the API
        xcid = new_cid()
        xpath = h.make_container(xcid)
        names = []
        for n in (1, 2, 3):
            (xpath / "v").write_text(str(n))
            names.append(api.request("POST", snaps(xcid))["snapshot"]["name"])
            await asyncio.sleep(0.01)
        xds = h.dataset(xcid)

        async def dirty_x(i: int) -> None:
            (h.container_path(xcid) / "v").write_text(f"dirty {i}")

        async def api_restore_newest(i: int) -> None:
            api.request("PATCH", snaps(xcid, names[2]))

        async def bare_rollback(i: int) -> None:
            await zfs("rollback", f"{xds}@{names[2]}")

        async def api_restore_older(i: int) -> None:
            api.request("PATCH", snaps(xcid, names[i % 2]))

        # list: nsnaps snapshots made through the API, so the store has them
        mcid = new_cid()
        h.make_container(mcid)
        print(f"  creating {nsnaps} snapshots (API)...", file=sys.stderr)
        for _ in range(nsnaps):
            api.request("POST", snaps(mcid), {"alias": "many"})
        mds = h.dataset(mcid)

        async def api_list(i: int) -> None:
            got = api.request("GET", snaps(mcid))
            assert len(got["snapshots"]) == nsnaps

        async def bare_list(i: int) -> None:
            res = await zfs("list", "-t", "snapshot", "-r", mds)
            assert len(res.stdout.splitlines()) == nsnaps + 1

        await asyncio.sleep(1)  # let the daemon's size refresh settle
        api_rows = [
            Row("create, no body", api=api_create, bare=bare_snapshot, runs=runs,
                target="<= 1.2x"),
            Row("create, alias + expiry (bare: same three `-o` user properties)",
                api=api_create_meta,
                bare=bare_snapshot_meta, runs=runs, target="<= 1.2x"),
            Row(f"list {nsnaps} snapshots (API reads the store; bare: "
                f"`zfs list -t snapshot -r`)", api=api_list, bare=bare_list, runs=runs,
                target="< 1x"),
            Row("restore newest (rollback)", api=api_restore_newest, bare=bare_rollback,
                prep=dirty_x, runs=runs),
            Row("restore older, newer kept (no bare equivalent: `zfs rollback -r` "
                "would destroy them)", api=api_restore_older, prep=dirty_x, runs=runs),
            Row("delete one snapshot", api=api_delete, bare=bare_destroy, runs=runs),
        ]
        api_results = await run_rows(api_rows)
        command = api.command
    finally:
        api.stop()

    kind = "OpenZFS (comma destroy)" if b.multi_destroy else "zfs-fuse (no comma destroy)"
    text = ("#### Through the API (real daemon, Unix socket)\n\n" + table(api_results)
            + "\n\n#### Backend in-process\n\n" + table(results)
            + f"\n\nPool: {kind}. zfs processes for the {nsnaps}-snapshot delete: {delete_procs}.\n")
    return text, command


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
            text, command = asyncio.run(bench(h, Path(tmp), args.runs, args.snapshots))
        finally:
            h.close()
    print(text)
    print(f"Daemon started as: `{command}` (temp paths).")
    print(f"Host: {os.uname().sysname} {os.uname().release}, {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
