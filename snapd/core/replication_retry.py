"""When a policy-driven replication is tried again: pure logic over a count of failures.

After the n-th failed attempt in a row the next one comes FIRST * 2**(n-1) seconds
later (1 min, 2, 4, 8 ...), at most CAP apart (1 h).  A success resets the count; a
new snapshot of the policy starts a job at once, whatever retry was pending (the
count goes on: a target down for a day is not hammered once per snapshot and then
once a minute again).
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST = 60.0
"""Seconds from the first failure to the first retry."""
CAP = 3600.0
"""The longest wait between two attempts."""


def retry_delay(failures: int) -> float:
    """Seconds from the `failures`-th failed attempt in a row (>= 1) to the next attempt."""
    if failures < 1:
        raise ValueError(f"failures must be at least 1, not {failures}")
    if failures > 32:  # 2**31 minutes is past the cap long ago; no huge floats
        return CAP
    return min(CAP, FIRST * 2 ** (failures - 1))


@dataclass(frozen=True)
class Streak:
    """Where one container and target stand: failed attempts in a row, and when to try again."""

    failures: int = 0
    retry_at: float | None = None

    @property
    def attempt(self) -> int:
        """The number the next attempt gets (1 after a success)."""
        return self.failures + 1

    def after(self, ok: bool, finished_at: float) -> "Streak":
        """The streak once an attempt that ended at `finished_at` succeeded or failed."""
        if ok:
            return Streak()
        failures = self.failures + 1
        return Streak(failures, finished_at + retry_delay(failures))

    def superseded(self) -> "Streak":
        """A new snapshot's job starts now: no retry pending, the count goes on."""
        return Streak(self.failures, None)
