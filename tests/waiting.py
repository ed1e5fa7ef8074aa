"""Waiting for exactly the thing a test then asserts: a condition polled against a
generous deadline, failing with a message that says what never happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE = 60.0
"""Seconds: generous, for a loaded 2-core machine; a passing test never waits this long."""


def until(predicate: Callable[[], T], what: str, timeout: float = DEADLINE, interval: float = 0.01) -> T:
    """Poll `predicate` (real time) until it returns something true, and return that;
    fail with `what` (the awaited condition, in words) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(interval)
    return value


async def eventually(predicate: Callable[[], object], what: str = "condition",
                     timeout: float = DEADLINE, interval: float = 0.01) -> None:
    """`until` for a test running on the event loop: polls without blocking it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(interval)


async def within(awaitable: Awaitable[T], what: str, timeout: float = DEADLINE) -> T:
    """Await `awaitable`; fail with `what` if it takes longer than `timeout` seconds."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"not within {timeout:g}s: {what}") from None
