"""At most `max_concurrent_per_project` long operations of one project at once.

A long operation (create, restore, restore-paths, delete, import, export) of a
container labelled with a project takes one of the project's slots once its
container's turn has come; beyond the limit it waits, in arrival order (FIFO per
project), and never fails for it.  Each project queues on its own, so a burst in
one never delays another's.  Unlabelled containers are not limited beyond their
per-container order.  The reaper's and the pruner's deletes take no slot (they
pace themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator

DEFAULT_MAX_CONCURRENT_PER_PROJECT = 2


@dataclass
class _Waiter:
    container: str
    kind: str
    granted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class _Project:
    running: list[tuple[str, str]] = field(default_factory=list)
    """(container, kind) of the operations holding a slot, in start order."""
    waiting: deque[_Waiter] = field(default_factory=deque)


class ProjectSlots:
    """Per-project FIFO admission of long operations (limit 0: no limit)."""

    def __init__(self, limit: int = DEFAULT_MAX_CONCURRENT_PER_PROJECT) -> None:
        self._limit = limit
        self._projects: dict[str, _Project] = {}

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        """A new limit (reload): a raised one admits waiters now; a lowered one lets running
        operations finish and admits no more until the project is under it."""
        self._limit = value
        for project in list(self._projects):
            self._admit(project)

    def _full(self, p: _Project) -> bool:
        return bool(self._limit) and len(p.running) >= self._limit

    def _admit(self, project: str) -> None:
        p = self._projects[project]
        while p.waiting and not self._full(p):
            w = p.waiting.popleft()
            if not w.granted.done():
                p.running.append((w.container, w.kind))
                w.granted.set_result(None)
        if not p.running and not p.waiting:
            del self._projects[project]

    @contextlib.asynccontextmanager
    async def slot(self, project: str | None, container: str, kind: str) -> AsyncIterator[None]:
        """Hold one of `project`'s slots for the block (None: unlimited, no wait)."""
        if project is None:
            yield
            return
        p = self._projects.setdefault(project, _Project())
        entry = (container, kind)
        if p.waiting or self._full(p):
            w = _Waiter(container, kind)
            p.waiting.append(w)
            try:
                await w.granted
            except BaseException:
                if w.granted.done() and not w.granted.cancelled():  # granted as we were cancelled
                    p.running.remove(entry)
                else:
                    w.granted.cancel()
                    with contextlib.suppress(ValueError):
                        p.waiting.remove(w)
                self._admit(project)
                raise
        else:
            p.running.append(entry)
        try:
            yield
        finally:
            p.running.remove(entry)
            self._admit(project)

    def status(self) -> list[dict]:
        """Each project with operations running or waiting: counts, and who waits, in order."""
        return [{"project": name, "running": len(p.running), "queued": len(p.waiting),
                 "operations": [{"container": c, "kind": k, "state": "running"} for c, k in p.running]
                 + [{"container": w.container, "kind": w.kind, "state": "queued"} for w in p.waiting]}
                for name, p in sorted(self._projects.items())]

    def counts(self, state: str) -> dict[str, int]:
        """Project -> operations running (state "running") or queued ("queued"), for metrics."""
        return {name: len(p.running) if state == "running" else len(p.waiting)
                for name, p in self._projects.items()}
