"""Background size recounts: coalesced per container, debounced, one at a time, after requests.

A create or delete changes the exclusive size of its neighbours in time (what a
snapshot shares, it shares with them).  Counting them may walk their files (btrfs
without quotas, overlay), so it never runs on a request's path:

* coalesced: the asks for one container pile up into one count of all the names asked;
* debounced: a container is counted `delay` seconds after its last ask, but no later
  than `cap` seconds after its first, so a steady stream of creates is still counted;
* one at a time: a single worker task; the count itself runs in the long lane
  (the backends' threads, snapd/core/lanes.py);
* after requests: a count that is due waits while operations are in flight
  (`busy`), for at most `delay` more seconds.

`flush()` makes every pending count due at once and returns when all have run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Protocol

log = logging.getLogger("snapd.recount")

DELAY = 1.5
"""Seconds after a container's last ask before its sizes are counted."""
CAP = 10.0
"""Seconds after a container's first ask by which it is counted, asks or not."""


class Timer(Protocol):
    """What the recounter needs of a clock (snapd.core.clock.Clock and the tests' FakeClock fit)."""

    def now(self) -> float: ...

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None: ...


class MonotonicTimer:
    """Real monotonic time (a debounce must not follow wall-clock jumps or a frozen test clock)."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: float, wake: asyncio.Event) -> None:
        delay = when - self.now()
        if delay <= 0 or wake.is_set():
            return
        waiter = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait([waiter], timeout=delay)
        finally:
            waiter.cancel()


Count = Callable[[Any, str, list[str]], Awaitable[None]]
"""count(backend, container, names): count these snapshots' sizes and store them."""


@dataclass
class _Pending:
    key: tuple[str, str]
    """(pool, container)"""
    backend: Any
    names: set[str]
    first: float
    last: float


class Recounter:
    """Pending recounts per (pool, container) and the one worker that runs them."""

    def __init__(self, count: Count, *, busy: Callable[[], bool] = lambda: False,
                 timer: Timer | None = None, delay: float = DELAY, cap: float = CAP) -> None:
        self._count = count
        self._busy = busy
        self.timer: Timer = timer or MonotonicTimer()
        self.delay, self.cap = delay, cap
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._worker: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._urgent = 0
        self._awaiting_quiet = False
        self.asked = 0
        """Asks received (each create or delete that changed sizes is one)."""
        self.counted = 0
        """Counts run: one per container per burst of asks."""

    def ask(self, pool: str, backend: Any, cid: str, names: Iterable[str]) -> None:
        """Count these snapshots of `cid` later (nothing to count: nothing happens)."""
        names = set(names)
        if not names:
            return
        self.asked += 1
        now = self.timer.now()
        key = (pool, cid)
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = _Pending(key, backend, names, now, now)
            self._wake.set()  # it may be due before what the worker sleeps for
        else:  # its due time only moves later: the worker, waking, finds out
            entry.names |= names
            entry.backend, entry.last = backend, now
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="sizes")

    def poke(self) -> None:
        """Requests have ended: a count waiting for a quiet moment may go now."""
        if self._awaiting_quiet:  # else the worker sleeps for a time no request changes
            self._wake.set()

    @property
    def pending(self) -> int:
        """Containers waiting for a count."""
        return len(self._pending)

    def stats(self) -> dict[str, int]:
        return {"asked": self.asked, "counted": self.counted, "pending": self.pending}

    def _due(self, entry: _Pending) -> float:
        return min(entry.last + self.delay, entry.first + self.cap)

    async def _sleep(self, until: float) -> None:
        self._wake.clear()
        await self.timer.sleep_until(until, self._wake)

    async def _work(self) -> None:
        while self._pending:
            entry = min(self._pending.values(), key=self._due)
            due = self._due(entry)
            if not self._urgent and self.timer.now() < due:
                await self._sleep(due)
                continue  # woken early (a new ask, a flush): look again
            latest = self.timer.now() + self.delay
            self._awaiting_quiet = True
            try:
                while not self._urgent and self._busy() and self.timer.now() < latest:
                    await self._sleep(latest)
            finally:
                self._awaiting_quiet = False
            entry = self._pending.pop(entry.key)
            self.counted += 1
            try:
                await self._count(entry.backend, entry.key[1], sorted(entry.names))
            except Exception as exc:  # sizes are advisory; never fail anything for them
                log.warning("size recount failed pool=%s container=%s error=%s", *entry.key, exc)

    async def flush(self) -> None:
        """Run every pending count now (no delay, no waiting for quiet); return when all have run."""
        self._urgent += 1
        try:
            self._wake.set()
            while self._worker is not None and not self._worker.done():
                await asyncio.shield(self._worker)
        finally:
            self._urgent -= 1

    async def close(self) -> None:
        """Stop the worker; what is pending is dropped (sizes are advisory)."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
