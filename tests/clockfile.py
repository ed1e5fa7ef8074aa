"""Moving a real daemon's time: the SNAPD_CLOCK_FILE a test writes (snapd/core/clock.py)."""

from __future__ import annotations

import os
from pathlib import Path


class ClockFile:
    """The clock file of one test daemon; the daemon's clock stands at `now` until moved."""

    def __init__(self, path: Path, start: float) -> None:
        self.path = path
        self.now = start
        self._writes = 0
        self.set(start)

    @property
    def env(self) -> dict[str, str]:
        """The environment that makes a daemon follow this file."""
        return {"SNAPD_CLOCK_FILE": str(self.path)}

    def set(self, when: float) -> None:
        """Stop the daemon's clock at epoch second `when` (written whole: a rename)."""
        self.now = when
        self._write(repr(float(when)))

    def advance(self, seconds: float) -> float:
        self.set(self.now + seconds)
        return self.now

    def run_offset(self, offset: float) -> None:
        """Let the daemon's clock run, `offset` seconds from the real time."""
        self._write(f"{offset:+f}")

    def _write(self, text: str) -> None:
        self._writes += 1
        tmp = self.path.with_name(f".{self.path.name}.{self._writes}")
        tmp.write_text(text + "\n")
        os.replace(tmp, self.path)
