"""Time: one injectable clock, and the API's timestamp format."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timezone


class Clock:
    """Wall-clock time, with an optional fixed offset (tests move time forward).

    The offset comes from the constructor or, for a daemon started by a test,
    from the environment variable SNAPD_CLOCK_OFFSET (seconds).  A test may
    also stop a daemon's clock at one instant with SNAPD_CLOCK_FROZEN (epoch
    seconds): every operation then happens within the same second.
    """

    def __init__(self, offset: float | None = None) -> None:
        if offset is None:
            offset = float(os.environ.get("SNAPD_CLOCK_OFFSET", "0") or 0)
        self.offset = offset
        frozen = os.environ.get("SNAPD_CLOCK_FROZEN")
        self.frozen: float | None = float(frozen) if frozen else None

    def now(self) -> float:
        """Seconds since the epoch, to the millisecond (what the store keeps)."""
        t = self.frozen if self.frozen is not None else time.time() + self.offset
        return round(t * 1000) / 1000

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None:
        """Sleep until `when` (clock time) or until `wake` is set, whichever first."""
        delay = max(0.0, when - self.now())
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass


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
