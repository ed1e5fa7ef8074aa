"""Test doubles for pure-logic unit tests (never for the thing under test)."""

from __future__ import annotations

import asyncio

from snapd.clock import Clock


class FakeClock(Clock):
    """A clock that moves only when told; records what the reaper sleeps until."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        super().__init__(offset=0)
        self.t = start
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def now(self) -> float:
        return round(self.t * 1000) / 1000

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self._moved.set()

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None:
        self.sleeps.append(when)
        while self.now() < when and not wake.is_set():
            self._moved.clear()
            waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(self._moved.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait (real time) until predicate() is true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
