"""Time: one injectable clock, and the API's timestamp format."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from datetime import datetime, timezone

log = logging.getLogger("snapd.clock")

FILE_POLL = 0.02
"""Seconds (real time) between looks at SNAPD_CLOCK_FILE while the clock sleeps."""


class Clock:
    """Wall-clock time, with an optional fixed offset (tests move time forward).

    The offset comes from the constructor or, for a daemon started by a test,
    from the environment variable SNAPD_CLOCK_OFFSET (seconds).  A test may
    also stop a daemon's clock at one instant with SNAPD_CLOCK_FROZEN (epoch
    seconds): every operation then happens within the same second.

    SNAPD_CLOCK_FILE (only when set) names a file a test writes to move a
    running daemon's time: `+N` or `-N` is an offset from the real time (the
    clock runs), a plain number `T` stops the clock at epoch second T.  The
    file is read again whenever it changes (write it whole: to a temporary
    name, then rename); sleeps end as soon as the time it says is reached.
    A missing or unreadable file leaves the clock as it was.
    """

    def __init__(self, offset: float | None = None, file: str | os.PathLike[str] | None = None) -> None:
        if offset is None:
            offset = float(os.environ.get("SNAPD_CLOCK_OFFSET", "0") or 0)
        self.offset = offset
        frozen = os.environ.get("SNAPD_CLOCK_FROZEN")
        self.frozen: float | None = float(frozen) if frozen else None
        path = file if file is not None else os.environ.get("SNAPD_CLOCK_FILE") or None
        self._file: ClockFile | None = ClockFile(os.fspath(path)) if path else None
        if self._file is not None:
            self._file.apply(self)

    def now(self) -> float:
        """Seconds since the epoch, to the millisecond (what the store keeps)."""
        if self._file is not None:
            self._file.apply(self)
        t = self.frozen if self.frozen is not None else time.time() + self.offset
        return round(t * 1000) / 1000

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None:
        """Sleep until `when` (clock time) or until `wake` is set, whichever first."""
        while True:
            delay = max(0.0, when - self.now())
            if self._file is not None and delay > 0:
                delay = min(delay, FILE_POLL)  # the file may move the time meanwhile
            # asyncio.wait, not wait_for: Python 3.11's wait_for loses a cancellation that
            # comes as `wake` is set, and the cancelled task (pruner, reaper) then never ends
            waiter = asyncio.ensure_future(wake.wait())
            try:
                done, _ = await asyncio.wait({waiter}, timeout=delay)
            finally:
                waiter.cancel()
            if done or self._file is None or self.now() >= when:
                return


class Sleeper:
    """The sleep of a dispatcher task (reaper, scheduler): until a clock time or a wake-up, and
    observable -- `until` says, while it sleeps, when it will look again by itself, and
    parked() returns the next time it goes to sleep (tests wait for "nothing left to do")."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.wake = asyncio.Event()
        """Set to end the sleep now (something nearer came up); cleared by the dispatcher."""
        self.until: float | None = None
        self._parked = asyncio.Event()

    async def sleep(self, when: float) -> None:
        """Sleep until clock time `when` (math.inf: until woken)."""
        self.until = when
        parked, self._parked = self._parked, asyncio.Event()
        parked.set()
        try:
            if when == math.inf:
                await self.wake.wait()
            else:
                await self.clock.sleep_until(when, self.wake)
        finally:
            self.until = None

    def idle_after(self, at: float) -> bool:
        """Asleep, not woken, and not to look again by itself before a time later than `at`."""
        return self.until is not None and self.until > at and not self.wake.is_set()

    async def parked(self) -> None:
        await self._parked.wait()


class ClockFile:
    """The SNAPD_CLOCK_FILE of a test daemon, read again whenever it changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: str | None = None

    def apply(self, clock: Clock) -> None:
        """Set the clock's offset or stop it, as the file says (if it changed).  Read at
        every look: a few bytes, test daemons only, and no timestamp granularity to trust."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(64)
        except OSError:
            return
        text = raw.decode("ascii", "replace").strip()
        if text == self._seen:
            return
        self._seen = text  # a bad value is reported once, not at every look
        try:
            value = float(text)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(text)
        except ValueError:
            log.warning("clock file %s: cannot read a time from it; the clock stays as it was", self.path)
            return
        if text[:1] in "+-":
            clock.offset, clock.frozen = value, None
        else:
            clock.frozen = value


def iso(ts: float | None) -> str | None:
    """`2025-01-15T10:30:00.000Z` for epoch seconds; None stays None."""
    if ts is None:
        return None
    ms = round(ts * 1000)
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def snapshot_stamp(ts: float) -> str:
    """`snap-YYYYMMDD-HHMMSS` (UTC) for epoch seconds."""
    return datetime.fromtimestamp(round(ts * 1000) // 1000, tz=timezone.utc).strftime("snap-%Y%m%d-%H%M%S")
