"""Time: one injectable clock, and the API's timestamp format."""

from __future__ import annotations

import asyncio
import logging
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
            try:
                await asyncio.wait_for(wake.wait(), timeout=delay)
                return
            except asyncio.TimeoutError:
                if self._file is None or self.now() >= when:
                    return


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
