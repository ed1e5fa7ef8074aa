"""The one way this project runs `zfs` and `zpool`: asyncio subprocesses, no shell.

Every call is timed into a `ZfsStats` (per command name: count, errors,
seconds) that the daemon can export as metrics.  Failures become
`BackendError` subclasses with zfs's own message: "does not exist" ->
SnapshotNotFound / ContainerNotFound, out of space -> NoSpace, busy ->
ContainerBusy, daemon/module missing -> PoolError.

Works with OpenZFS 2.x and zfs-fuse (pool v23): only `-H` output of
`zfs get -Hp` / `zfs list -H` is parsed (zfs-fuse has no `zfs list -p`,
no `zfs get -t`, no comma lists in `zfs destroy`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from dataclasses import dataclass, field

from .base import (
    BackendError,
    ContainerBusy,
    ContainerNotFound,
    NoSpace,
    PoolError,
    SnapshotNotFound,
)

DEFAULT_TIMEOUT = 120.0
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

    async def zfs(self, *args: str, check: bool = True) -> CmdResult:
        return await self.run("zfs", *args, check=check)

    async def zpool(self, *args: str, check: bool = True) -> CmdResult:
        return await self.run("zpool", *args, check=check)

    @staticmethod
    def rows(text: str, fields: int) -> list[list[str]]:
        """Tab-split `-H` output; every line must have `fields` fields.

        The last field keeps any further tabs (values may contain them).
        """
        rows = []
        for line in text.splitlines():
            if not line:
                continue
            parts = line.split("\t", fields - 1)
            if len(parts) != fields:
                raise ZfsError(f"unexpected zfs output (want {fields} fields): {line!r}")
            rows.append(parts)
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
        out: dict[str, dict[str, str]] = {}
        for name, prop, value in self.rows(res.stdout, 3):
            out.setdefault(name, {})[prop] = value
        return out


def find_tool(name: str) -> str:
    """`name` on PATH, else in /usr/sbin or /sbin (root's PATH is not always set)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    return found or name


def valid_dataset_name(name: str) -> bool:
    return bool(_DATASET_RE.match(name)) and "//" not in name and not name.endswith("/") \
        and "@" not in name
