"""Holding a daemon at a fault point from a test (backends/faults.py: SNAPD_FAULT_HOLD).

    hold = Hold(tmp_path / "hold")          # env: hold.env("store.writer.before-commit")
    hold.arm()                              # the next time the point is reached, it waits
    ... start a request ...
    hold.reached()                          # returns once the daemon waits there
    ... assert what must hold meanwhile ...
    hold.release()
"""

from __future__ import annotations

import os
from pathlib import Path

from backends import faults

from .waiting import until


class Hold:
    """One hold directory: arm, see it reached, release."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None

    def env(self, point: str) -> dict[str, str]:
        return {faults.HOLD_ENV: f"{point}={self.dir}"}

    def arm(self) -> None:
        """The point's next hit waits (one hit per arming)."""
        for name in ("hold", "release"):
            if not (self.dir / name).exists():
                os.mkfifo(self.dir / name)
        self._fd = os.open(self.dir / "hold", os.O_RDONLY | os.O_NONBLOCK)

    def reached(self, what: str = "the daemon waits at the held point") -> str:
        """Wait until the daemon is at the point; the point's name."""
        assert self._fd is not None, "arm() first"
        fd = self._fd

        def read() -> bytes:
            try:
                return os.read(fd, 200)
            except BlockingIOError:
                return b""

        return until(read, what).decode().strip()

    def close(self) -> None:
        """Let the daemon go if it still waits (a test that failed half-way), so it can stop."""
        try:
            fd = os.open(self.dir / "release", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no FIFO, or nobody waits at it
            return
        os.close(fd)

    def release(self) -> None:
        """Let the daemon go on (opening the FIFO waits for its reader: the daemon)."""
        with open(self.dir / "release", "wb"):
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        (self.dir / "release").unlink()
