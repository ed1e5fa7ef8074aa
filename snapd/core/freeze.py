"""Freezing a running container for its snapshot: the cgroup v2 freezer.

A pool with `freeze = true` (or a create asked with `freeze=True`) has the
container's cgroup -- `cgroup_template` with `{id}` replaced by the
container id, e.g. `/sys/fs/cgroup/machine.slice/{id}.scope` -- frozen
while the snapshot is taken: `1` written to its `cgroup.freeze`, then
`frozen 1` awaited in its `cgroup.events` (the kernel reports it once every
task in the cgroup and below has stopped).  So an overlay copy of a running
container is point-in-time.

* No cgroup directory (the container is not running): nothing to freeze;
  logged at debug, the snapshot is taken.
* `frozen 1` not seen within `freeze_timeout` (a task stuck in the kernel),
  or `cgroup.freeze` not writable: the freeze is abandoned -- `0` written at
  once, a warning logged, counted -- and the snapshot taken anyway.
* Otherwise the cgroup is thawed (`0`) as soon as the snapshot is taken,
  whatever happened to it.

The freeze is journalled (op "freeze", data {"cgroup": <directory>}) before
`1` is written and marked done after `0` is; a daemon killed in between
leaves the entry pending, and the next start thaws that cgroup first of all
(snapd/core/journal.py), before any other recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections import Counter
from typing import AsyncIterator, Callable

from snapd.core.clock import Clock
from snapd.core.store import Store

log = logging.getLogger("snapd.freeze")

OUTCOMES = ("frozen", "abandoned", "not_running")
"""What a freeze came to: settled; given up (not settled in time, or not writable); no cgroup."""
_FIRST_POLL, _MAX_POLL = 0.001, 0.05
_GONE = (errno.ENOENT, errno.ENODEV, errno.ENOTDIR)
"""Errors that mean the cgroup is not there (any more)."""


def cgroup_dir(template: str, cid: str) -> str:
    """The cgroup directory of container `cid` (a validated 24-hex id) from a
    `cgroup_template` (checked by snapd/host/config.py: absolute, with `{id}`)."""
    return template.replace("{id}", cid)


def write_freeze(cgroup: str, value: str) -> None:
    """Write `value` ("1" or "0") to the cgroup's cgroup.freeze (never creates it)."""
    fd = os.open(os.path.join(cgroup, "cgroup.freeze"), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def is_frozen(cgroup: str) -> bool:
    """Whether the cgroup's cgroup.events says `frozen 1`."""
    with open(os.path.join(cgroup, "cgroup.events"), encoding="ascii", errors="replace") as f:
        return any(line.split() == ["frozen", "1"] for line in f)


async def wait_frozen(cgroup: str, timeout: float, *, monotonic: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], object] = asyncio.sleep) -> bool:
    """Wait until cgroup.events says `frozen 1` (True) or `timeout` seconds pass (False).

    A short poll (1 ms, doubling up to 50 ms): tasks usually stop within a
    millisecond, and cgroup.events is one small kernfs read.
    """
    deadline = monotonic() + timeout
    delay = _FIRST_POLL
    while not is_frozen(cgroup):
        left = deadline - monotonic()
        if left <= 0:
            return False
        await sleep(min(delay, left))  # type: ignore[misc]
        delay = min(delay * 2, _MAX_POLL)
    return True


def thaw(cgroup: str) -> bool:
    """Write 0 to cgroup.freeze; False when the cgroup is gone (nothing left to thaw)."""
    try:
        write_freeze(cgroup, "0")
    except OSError as exc:
        if exc.errno in _GONE:
            return False
        raise
    return True


class Freezer:
    """Freezes containers around their snapshots, journalled; counts the outcomes."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.counts: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))

    @contextlib.asynccontextmanager
    async def frozen(self, cid: str, pool: str, snapshot: str, template: str,
                     timeout: float) -> AsyncIterator[str]:
        """Hold the container frozen for the body; yields the outcome (OUTCOMES).

        The body runs whatever the outcome: a freeze that cannot be had is given up,
        never a reason to refuse the snapshot.  The thaw runs in a `finally`.
        """
        cgroup = cgroup_dir(template, cid)
        what = f"container={cid} snapshot={snapshot} cgroup={cgroup}"
        if not os.path.isdir(cgroup):
            log.debug("freeze skipped %s: no such cgroup (container not running)", what)
            self.counts["not_running"] += 1
            yield "not_running"
            return
        now = self.clock.now()
        jid = await self.store.write(lambda s: s.journal_begin("freeze", cid, snapshot, pool, {"cgroup": cgroup}, now))
        started = time.monotonic()
        thawed = False
        try:
            outcome = await self._freeze(cgroup, timeout, what)
            self.counts[outcome] += 1
            if outcome == "frozen":
                log.debug("frozen %s in %.3fs", what, time.monotonic() - started)
            else:  # given up: thawed at once, the snapshot is taken unfrozen
                thawed = self._thaw(jid, cgroup, what, started)
            yield outcome
        finally:
            if not thawed:
                self._thaw(jid, cgroup, what, started)

    async def _freeze(self, cgroup: str, timeout: float, what: str) -> str:
        try:
            write_freeze(cgroup, "1")
            if await wait_frozen(cgroup, timeout):
                return "frozen"
            why = f"not frozen within freeze_timeout={timeout:g}s"
        except OSError as exc:
            if exc.errno in _GONE and not os.path.isdir(cgroup):  # stopped just now: no freeze needed
                log.debug("freeze skipped %s: the cgroup went away", what)
                return "not_running"
            why = f"cannot freeze: {exc.strerror or exc}"
            if exc.errno == errno.ENOENT:
                why += " (no cgroup.freeze or cgroup.events: not a cgroup v2 directory, or Linux before 5.2)"
        log.warning("freeze abandoned %s: %s; thawed, snapshot taken unfrozen", what, why)
        return "abandoned"

    def _thaw(self, jid: int, cgroup: str, what: str, started: float) -> bool:
        """Write 0 and settle the journal entry; False when even the write failed."""
        try:
            thaw(cgroup)
        except OSError as exc:  # left pending: the next start (or `snapd reconcile`) thaws it
            log.error("cannot thaw %s: %s (retried at the next start or by snapd reconcile)",
                      what, exc.strerror or exc)
            return False
        log.debug("thawed %s after %.3fs", what, time.monotonic() - started)
        try:
            self.store.journal_end(jid, "done", self.clock.now())
        except Exception as exc:  # pending: the next start thaws it again, harmlessly
            log.warning("cannot record the thaw of %s: %s", what, exc)
        return True


def thaw_journalled(data: dict | None) -> str:
    """Thaw the cgroup a pending freeze entry names (start-up); what was done.

    Raises (the entry then stays pending) when the data is unreadable or the write fails.
    """
    cgroup = (data or {}).get("cgroup")
    if not isinstance(cgroup, str) or not cgroup.startswith("/"):
        raise ValueError(f"freeze entry without a cgroup directory: {data!r}")
    if thaw(cgroup):
        return f"thawed {cgroup}"
    return f"nothing to thaw ({cgroup} is gone)"
