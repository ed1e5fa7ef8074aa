"""The one way this project runs `zfs` and `zpool`: asyncio subprocesses, no shell.

Streams too: `send` hands a `zfs send`'s output to a coroutine in chunks
(through a pipe of its own: zfs-fuse writes into a copy of it), `feed`
writes chunks into a `zfs receive` (blocking, for a worker thread).

Every call is timed into a `ZfsStats` (per command name: count, errors,
seconds) that the daemon can export as metrics.  Failures become
`BackendError` subclasses with zfs's own message: "does not exist" ->
SnapshotNotFound / ContainerNotFound, out of space -> NoSpace, busy ->
ContainerBusy, daemon/module missing -> PoolError.

Works with OpenZFS 2.x and zfs-fuse (pool v23): only `-H` output of
`zfs get -Hp` / `zfs list -H` is parsed (zfs-fuse has no `zfs list -p`,
no `zfs get -t`, no comma lists in `zfs destroy`).

Output is split on "\n" only (str.splitlines() would also split on
U+2028, U+0085, \x0b, \x1c ... which property values may hold).  A line
that is not a row (a user property value written by hand with a newline
in it) never raises: the row it continues is dropped, the problem is
logged once and kept in `ZfsRunner.problems`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from .base import (
    BackendError,
    ContainerBusy,
    ContainerNotFound,
    NoSpace,
    PoolError,
    SnapshotNotFound,
)
from .pump import grow_pipe, pump

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
MAX_PROBLEMS = 100
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")


class ZfsError(BackendError):
    """A zfs/zpool command failed for a reason with no more specific class."""


class ZfsExists(ZfsError):
    """The dataset or snapshot to create already exists."""


class ZfsHasClones(ZfsError):
    """The snapshot has dependent clones."""


@dataclass
class CmdStat:
    count: int = 0
    errors: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0


@dataclass
class ZfsStats:
    """Per-command counters, keyed like 'zfs snapshot' or 'zpool list'."""

    by_cmd: dict[str, CmdStat] = field(default_factory=dict)

    def record(self, key: str, seconds: float, ok: bool) -> None:
        st = self.by_cmd.setdefault(key, CmdStat())
        st.count += 1
        st.errors += 0 if ok else 1
        st.seconds += seconds
        st.max_seconds = max(st.max_seconds, seconds)

    def count(self, key: str | None = None) -> int:
        """Commands run (of one kind, or all)."""
        if key is not None:
            return self.by_cmd.get(key, CmdStat()).count
        return sum(s.count for s in self.by_cmd.values())

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {k: vars(v).copy() for k, v in sorted(self.by_cmd.items())}

    def reset(self) -> None:
        self.by_cmd.clear()


@dataclass(frozen=True)
class CmdResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str


def error_for(argv: tuple[str, ...], stderr: str) -> BackendError:
    """Turn a failed command's stderr into the matching BackendError."""
    msg = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())
    msg = msg or f"{' '.join(argv[:2])} failed"
    low = msg.lower()
    if "zfs-fuse daemon is running" in low or "failed to initialize zfs library" in low \
            or "modules are not loaded" in low or "/dev/zfs" in low:
        return PoolError(f"ZFS is not available: {msg}")
    if "does not exist" in low or "no such pool" in low or "could not find any snapshots" in low:
        target = next((a for a in reversed(argv) if "@" in a), None)
        return SnapshotNotFound(msg) if target else ContainerNotFound(msg)
    if "out of space" in low or "no space" in low or "quota exceeded" in low:
        return NoSpace(msg)
    if "dependent clones" in low:
        return ZfsHasClones(msg)
    if "busy" in low:
        return ContainerBusy(msg)
    if "already exists" in low:
        return ZfsExists(msg)
    return ZfsError(msg)


class ZfsRunner:
    """Runs zfs/zpool with timing, `-H` parsing and error mapping."""

    def __init__(self, zfs: str | None = None, zpool: str | None = None,
                 stats: ZfsStats | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bins = {"zfs": zfs or find_tool("zfs"), "zpool": zpool or find_tool("zpool")}
        self.stats = stats if stats is not None else ZfsStats()
        self.timeout = timeout
        self.problems: list[str] = []
        """Output that could not be read (newest last, at most MAX_PROBLEMS, no repeats)."""

    def report(self, problem: str) -> None:
        """Log and keep a problem once (a scan repeats every few seconds)."""
        if problem in self.problems:
            return
        log.warning("zfs: %s", problem)
        self.problems.append(problem)
        del self.problems[:-MAX_PROBLEMS]

    async def run(self, tool: str, *args: str, check: bool = True) -> CmdResult:
        argv = (self.bins[tool], *args)
        key = f"{tool} {args[0]}" if args else tool
        start = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "LC_ALL": "C"},
            )
        except FileNotFoundError:
            self.stats.record(key, time.monotonic() - start, False)
            raise PoolError(f"{argv[0]} command not found: is ZFS installed?") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            self.stats.record(key, time.monotonic() - start, False)
            raise
        res = CmdResult(tuple(argv), proc.returncode or 0,
                        out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        self.stats.record(key, time.monotonic() - start, res.rc == 0)
        if check and res.rc != 0:
            raise error_for(res.argv, res.stderr or res.stdout)
        return res

    async def send(self, args: list[str], push: Callable[[bytes], Awaitable[None]], chunk: int) -> int:
        """`zfs ARGS` (a `send`) with its stdout handed to `push` in chunks of `chunk` bytes
        (the last one shorter); the bytes sent.  The error zfs gave when it fails."""
        key = f"zfs {args[0]}"
        start = time.monotonic()
        # stdout is a pipe of our own: zfs-fuse writes the stream into a copy of its write end,
        # so only closing the read end stops a send cut short (asyncio's own pipe would make
        # wait() wait for zfs-fuse to let go of it: forever, when nobody reads any more)
        rfd, wfd = os.pipe()
        grow_pipe(wfd)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.bins["zfs"], *args, stdin=asyncio.subprocess.DEVNULL, stdout=wfd,
                stderr=asyncio.subprocess.PIPE, env={**os.environ, "LC_ALL": "C"})
        except BaseException:
            os.close(rfd)
            raise
        finally:
            os.close(wfd)
        stdout = asyncio.StreamReader(limit=2 * chunk)
        loop = asyncio.get_running_loop()
        pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(rfd, "rb", 0))
        assert proc.stderr is not None
        errors = asyncio.ensure_future(proc.stderr.read())
        ok = False
        try:
            sent = await pump(stdout, chunk, push)
            rc = await proc.wait()
            err = (await errors).decode("utf-8", "replace")
            ok = rc == 0
            if not ok:
                raise error_for((self.bins["zfs"], *args), err or f"zfs {args[0]} exited {rc}")
            return sent
        finally:
            pipe.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            errors.cancel()
            self.stats.record(key, time.monotonic() - start, ok)

    def feed(self, args: list[str], chunks: Iterator[bytes]) -> CmdResult:
        """`zfs ARGS` (a `receive`) fed `chunks` on its stdin, blocking (run it in a worker
        thread).  When `chunks` raises, zfs is killed before it saw the end of its stream
        and the exception goes on; when zfs stops reading, the chunks left are not asked
        for.  The result (not checked: the caller tells a bad stream from zfs's error)."""
        key = f"zfs {args[0]}"
        start = time.monotonic()
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([self.bins["zfs"], *args], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=err, env={**os.environ, "LC_ALL": "C"})
            assert proc.stdin is not None
            grow_pipe(proc.stdin.fileno())
            try:
                for data in chunks:
                    try:
                        proc.stdin.write(data)
                    except BrokenPipeError:
                        break
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                rc = proc.wait()
            except BaseException:
                proc.kill()
                with contextlib.suppress(OSError):  # zfs-fuse reads a copy of the read end: EOF for it
                    proc.stdin.close()
                proc.wait()
                self.stats.record(key, time.monotonic() - start, False)
                raise
            err.seek(0)
            text = err.read(64 << 10).decode("utf-8", "replace")
        self.stats.record(key, time.monotonic() - start, rc == 0)
        return CmdResult((self.bins["zfs"], *args), rc, "", text)

    async def zfs(self, *args: str, check: bool = True) -> CmdResult:
        return await self.run("zfs", *args, check=check)

    async def zpool(self, *args: str, check: bool = True) -> CmdResult:
        return await self.run("zpool", *args, check=check)

    def rows(self, text: str, fields: int,
             is_row: Callable[[list[str]], bool] | None = None) -> list[list[str]]:
        """Tab-split `-H` output, one row per "\n"-terminated line.

        The last field keeps any further tabs (values may contain them).  A
        line with too few fields, or that `is_row` refuses, continues the
        value of the row before it: that row is dropped and reported.
        Ask for the name as the first column so reports say what it was.
        """
        rows: list[list[str]] = []
        broken = False
        for line in text.split("\n"):
            if not line:
                continue
            parts = line.split("\t", fields - 1)
            if len(parts) == fields and (is_row is None or is_row(parts)):
                rows.append(parts)
                broken = False
                continue
            if rows and not broken:
                bad = rows.pop()
                self.report(f"value of {' '.join(bad[:-1])} spans lines, ignored "
                            f"(set by hand?): {bad[-1]!r} + {line!r}")
                broken = True  # further lines of the same value add nothing
            elif not rows:
                self.report(f"unreadable zfs output line, ignored: {line!r}")
        return rows

    async def get(self, props: list[str], datasets: list[str], *, depth: int | None = None,
                  recursive: bool = False, sources: str | None = None,
                  check: bool = True) -> dict[str, dict[str, str]]:
        """`zfs get -Hp` -> {dataset: {property: value}}, in zfs's order.

        zfs's order is by name, and for the snapshots of one dataset by
        creation (txg).  With check=False a missing dataset is skipped.
        """
        args = ["get", "-Hp", "-o", "name,property,value"]
        if recursive or depth is not None:
            args.append("-r")
        if depth is not None:
            args += ["-d", str(depth)]
        if sources:
            args += ["-s", sources]
        res = await self.zfs(*args, ",".join(props), *datasets, check=check)
        if res.rc != 0 and not res.stdout:
            err = error_for(res.argv, res.stderr)
            if not isinstance(err, (ContainerNotFound, SnapshotNotFound)):
                raise err
        wanted = set(props)

        def is_row(row: list[str]) -> bool:
            name, prop = row[0], row[1]
            return ("all" in wanted or prop in wanted) and any(
                name == d or name.startswith((d + "/", d + "@")) for d in datasets)

        out: dict[str, dict[str, str]] = {}
        for name, prop, value in self.rows(res.stdout, 3, is_row):
            out.setdefault(name, {})[prop] = value
        return out



def find_tool(name: str) -> str:
    """`name` on PATH, else in /usr/sbin or /sbin (root's PATH is not always set)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    return found or name


def valid_dataset_name(name: str) -> bool:
    return bool(_DATASET_RE.match(name)) and "//" not in name and not name.endswith("/") \
        and "@" not in name
