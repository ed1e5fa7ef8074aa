"""Bridges between the event loop's streams and the blocking stream code of a worker thread.

A portable stream is written and read by blocking code (backends.portable, tarfile)
in a worker thread, while the HTTP body and response live on the event loop.  A
bounded queue of DEPTH chunks sits between the two, filled (import) or drained
(export) by a task on the loop, so the network and the thread work at the same
time; memory stays at DEPTH chunks whatever the stream's size, and a client that
goes away, or stalls for IDLE_TIMEOUT, fails the thread's next read or write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from typing import Awaitable, Callable

IDLE_TIMEOUT = 120.0
"""Seconds a read or write may wait for the other side before the transfer is given up."""
DEPTH = 4
"""Chunks queued between the loop and the thread."""


class Stalled(Exception):
    """The other side sent or took nothing for IDLE_TIMEOUT seconds, or went away."""


class LoopReader(io.RawIOBase):
    """A blocking, readable file (for a worker thread) over `pull`, a coroutine function
    on the loop returning the next chunk (b"" at the end), read ahead by a task.
    Make it on the loop; `stop()` it there when done."""

    def __init__(self, pull: Callable[[], Awaitable[bytes]], timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue(DEPTH)
        self.task = self.loop.create_task(self._fill(pull))
        self.pending = memoryview(b"")
        self.eof = False

    async def _fill(self, pull: Callable[[], Awaitable[bytes]]) -> None:
        while True:
            try:
                data = await pull()
            except Exception as exc:  # aiohttp's ClientPayloadError, a reset connection, ...
                await self.queue.put(exc)
                return
            await self.queue.put(data)
            if not data:
                return

    def readable(self) -> bool:
        return True

    def _fill_pending(self) -> bool:
        """Wait for the next chunk when none is pending; False at the end."""
        if not self.pending:
            if self.eof:
                return False
            item = _wait(asyncio.run_coroutine_threadsafe(self.queue.get(), self.loop), self.timeout, "sent")
            if isinstance(item, BaseException):
                raise Stalled(f"the connection failed: {item or type(item).__name__}")
            if not item:
                self.eof = True
                return False
            self.pending = memoryview(item)
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if not self._fill_pending():
            return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (at most the rest of one chunk); a whole chunk asked for is
        handed on without a copy (RawIOBase.read would copy it twice)."""
        if not self._fill_pending():
            return b""
        n = len(self.pending) if size is None or size < 0 else min(size, len(self.pending))
        item = self.pending.obj
        out = item if isinstance(item, bytes) and n == len(self.pending) == len(item) else bytes(self.pending[:n])
        self.pending = self.pending[n:]
        return out

    def stop(self) -> None:
        """Stop reading ahead, and wake a thread still waiting for data (call on the loop):
        a request that ends under a running import does not hold it for IDLE_TIMEOUT."""
        self.task.cancel()
        while True:
            try:
                self.queue.put_nowait(Stalled("the request ended"))
                break
            except asyncio.QueueFull:
                self.queue.get_nowait()


class LoopWriter:
    """A blocking `write(bytes)` (for a worker thread) whose chunks a task on the loop hands
    to `push`, a coroutine function.  Make it on the loop; `await finish()` there after the
    last write (or `abort()` when the thread failed)."""

    def __init__(self, push: Callable[[bytes], Awaitable[None]], timeout: float = IDLE_TIMEOUT) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(DEPTH)
        self.task = self.loop.create_task(self._drain(push))

    async def _drain(self, push: Callable[[bytes], Awaitable[None]]) -> None:
        while chunk := await self.queue.get():
            await push(chunk)

    async def _put(self, data: bytes) -> None:
        put = asyncio.ensure_future(self.queue.put(data))
        await asyncio.wait({put, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
        if self.task.done():  # the pump ended early: the connection failed
            self.task.result()
            if data:
                raise Stalled("the connection was closed")

    def write(self, data: bytes) -> None:
        _wait(asyncio.run_coroutine_threadsafe(self._put(data), self.loop), self.timeout, "taken")

    async def finish(self) -> None:
        """Wait until every chunk written has been pushed."""
        await self._put(b"")
        await self.task

    def abort(self) -> None:
        self.task.cancel()


def _wait(future: concurrent.futures.Future, timeout: float, verb: str):  # type: ignore[no-untyped-def]
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise Stalled(f"nothing {verb} for {timeout:g} s") from None
    except Stalled:
        raise
    except (ConnectionError, asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
        raise Stalled(f"the connection went away ({type(exc).__name__})") from None
    except Exception as exc:  # aiohttp's ClientConnectionError, ClientPayloadError, ...
        raise Stalled(f"the connection failed: {exc or type(exc).__name__}") from None
