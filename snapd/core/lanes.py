"""Two thread lanes, so quick lookups never wait behind long filesystem work.

Blocking work reaches threads through `asyncio.to_thread` (backends, core), which
submits to the loop's default executor.  `Lanes` becomes that executor (install())
and is the **long lane** itself: copies, sends, receives, size counts, removals,
snapshot ioctls, file walks -- everything not marked otherwise.  Calls made inside
`with quick():` go to a separate, small **quick lane** instead: container exists,
project labels, free space, layout, the service's short label and hold writes.

Why the default is the long lane: a call nobody marked is assumed long, and only
the few calls the service names as quick are admitted to the quick lane, so long
work can never fill it, whatever a backend does.  Backends need not know (they
import nothing from snapd): the lane is a context variable read when the call is
submitted, in the caller's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

_QUICK: contextvars.ContextVar[bool] = contextvars.ContextVar("snapd_quick_lane", default=False)

LONG_THREADS = min(32, (os.cpu_count() or 1) + 4)
"""asyncio's own default: 6 threads on 2 cores."""
QUICK_THREADS = 4


@contextlib.contextmanager
def quick() -> Iterator[None]:
    """Threads started by this task inside the block (asyncio.to_thread) use the quick lane."""
    token = _QUICK.set(True)
    try:
        yield
    finally:
        _QUICK.reset(token)


class Lanes(ThreadPoolExecutor):
    """The loop's default executor: the long lane, with the quick lane beside it."""

    def __init__(self, long_threads: int = LONG_THREADS, quick_threads: int = QUICK_THREADS) -> None:
        super().__init__(max_workers=long_threads, thread_name_prefix="snapd-long")
        self.quick = ThreadPoolExecutor(max_workers=quick_threads, thread_name_prefix="snapd-quick")
        self.long_threads, self.quick_threads = long_threads, quick_threads

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if _QUICK.get():
            return self.quick.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.quick.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)

    def queued(self) -> dict[str, int]:
        """Calls waiting for a thread, per lane (for status and metrics)."""
        return {"long": self._work_queue.qsize(), "quick": self.quick._work_queue.qsize()}

    def status(self) -> dict[str, dict[str, int]]:
        waiting = self.queued()
        return {"long": {"threads": self.long_threads, "waiting": waiting["long"]},
                "quick": {"threads": self.quick_threads, "waiting": waiting["quick"]}}


def install(loop: asyncio.AbstractEventLoop | None = None, **threads: int) -> Lanes:
    """Make a new Lanes the running loop's default executor; returns it."""
    lanes = Lanes(**threads)
    (loop or asyncio.get_running_loop()).set_default_executor(lanes)
    return lanes
