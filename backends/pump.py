"""Moving a send or receive command's stream (`btrfs send`, `zfs send`, their receives) through pipes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from typing import Awaitable, Callable


async def pump(stream: asyncio.StreamReader, chunk: int, push: Callable[[bytes], Awaitable[None]]) -> int:
    """Hand `stream`'s bytes to `push` in pieces of `chunk` bytes (the last may be shorter)
    until it ends; the number of bytes handed on."""
    sent = 0
    while True:
        try:
            data = await stream.readexactly(chunk)
        except asyncio.IncompleteReadError as short:
            data = short.partial
        if data:
            await push(data)
            sent += len(data)
        if len(data) < chunk:
            return sent


PIPE_SIZE = 1 << 20
"""Bytes asked for a send's or a receive's pipe (F_SETPIPE_SZ): fewer wake-ups of the command."""


def grow_pipe(fd: int) -> None:
    """Ask for a PIPE_SIZE buffer on pipe `fd` (the default size works too, only slower)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
