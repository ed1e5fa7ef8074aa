"""Bridges between the event loop's streams and the blocking stream code of a worker thread.

A portable stream is written and read by blocking code (backends.portable, tarfile)
in a worker thread, while the HTTP body and response live on the event loop.  The
thread pulls each chunk from, or pushes each chunk to, the loop and waits for it:
backpressure is the await itself, so memory stays at one chunk whatever the
stream's size, and a client that goes away fails the next pull or push.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from typing import Awaitable, Callable

IDLE_TIMEOUT = 120.0
"""Seconds a pull or push may wait for the other side before the transfer is given up."""


class Stalled(Exception):
    """The other side sent or took nothing for IDLE_TIMEOUT seconds, or went away."""


class LoopReader(io.RawIOBase):
    """A blocking, readable file (for a worker thread) over `pull`, a coroutine function
    on `loop` returning the next chunk (b"" at the end)."""

    def __init__(self, pull: Callable[[], Awaitable[bytes]], loop: asyncio.AbstractEventLoop,
                 timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__()
        self.pull, self.loop, self.timeout = pull, loop, timeout
        self.pending = memoryview(b"")
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if not self.pending:
            if self.eof:
                return 0
            data = _wait(asyncio.run_coroutine_threadsafe(self.pull(), self.loop), self.timeout, "sent")
            if not data:
                self.eof = True
                return 0
            self.pending = memoryview(data)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def loop_writer(push: Callable[[bytes], Awaitable[None]], loop: asyncio.AbstractEventLoop,
                timeout: float = IDLE_TIMEOUT) -> Callable[[bytes], None]:
    """A blocking write function (for a worker thread) over `push`, a coroutine function on `loop`."""
    def write(data: bytes) -> None:
        _wait(asyncio.run_coroutine_threadsafe(push(data), loop), timeout, "taken")

    return write


def _wait(future: concurrent.futures.Future, timeout: float, verb: str):  # type: ignore[no-untyped-def]
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise Stalled(f"nothing {verb} for {timeout:g} s") from None
    except (ConnectionError, asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
        raise Stalled(f"the connection went away ({type(exc).__name__})") from None
    except Exception as exc:  # aiohttp's ClientConnectionError, ClientPayloadError, ...
        raise Stalled(f"the connection failed: {exc or type(exc).__name__}") from None
