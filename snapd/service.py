"""The one path for every mutation: naming, per-container order, backend + store.

Handlers, the reaper, the CLI (through the API) and tests all go through
`SnapshotService`.  Operations on one container are serialised in arrival
order; different containers proceed concurrently.  A mutation, once
started, runs to its end even if the client that asked goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, TypeVar

from backends.base import (
    Backend,
    BackendError,
    ContainerBusy,
    ContainerNotFound,
    NoSpace,
    SnapshotNotFound,
    SnapshotRef,
)

from .clock import Clock, snapshot_stamp
from .errors import Conflict, InsufficientStorage, NotFound, OperationFailed
from .oplog import OperationLog
from .store import SnapshotRow, Store

log = logging.getLogger("snapd.service")
oplog = logging.getLogger("snapd.operation")
T = TypeVar("T")
Guard = Callable[["Container"], None]
"""Sees a found container before anything else happens; raises to refuse."""
DAY = 86400.0


@dataclass(frozen=True)
class Container:
    """A container found in a pool."""

    id: str
    backend: Backend
    project: str | None

    @property
    def pool(self) -> str:
        return self.backend.describe()


class _Locks:
    """One FIFO lock per container, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = defaultdict(int)

    async def run(self, cid: str, fn: Callable[[], Awaitable[T]]) -> T:
        lock = self._locks.setdefault(cid, asyncio.Lock())
        self._users[cid] += 1
        try:
            async with lock:
                return await fn()
        finally:
            self._users[cid] -= 1
            if not self._users[cid]:
                del self._users[cid]
                del self._locks[cid]


class SnapshotService:
    """Snapshot operations over a set of pools and one store."""

    def __init__(self, store: Store, backends: list[Backend], clock: Clock | None = None,
                 metrics: Any = None) -> None:
        self.store = store
        self.metrics = metrics
        """Anything with an `operation(backend_kind, kind)` context manager (snapd.metrics.Metrics)."""
        self.backends = backends
        self.clock = clock or Clock()
        self._locks = _Locks()
        self._inflight: set[asyncio.Task] = set()
        self.on_expiry_set: Callable[[float], None] = lambda when: None
        """Called with a new expires_at (the reaper wakes if it is sooner)."""
        self._size_pending: dict[tuple[str, str], Backend] = {}
        self._size_worker: asyncio.Task | None = None

    # -- finding containers ------------------------------------------------

    async def find(self, cid: str, guard: Guard | None = None) -> Container:
        """The container `cid` in whichever pool holds it, or NotFound.

        `guard`, when given, sees the container first and raises to refuse.
        """
        for backend in self.backends:
            if await backend.container_exists(cid):
                container = Container(cid, backend, await backend.get_project(cid))
                if guard is not None:
                    guard(container)
                return container
        raise NotFound("container")

    def backend_for_pool(self, pool: str) -> Backend | None:
        return next((b for b in self.backends if b.describe() == pool), None)

    # -- reads -------------------------------------------------------------

    async def list(self, cid: str, guard: Guard | None = None) -> tuple[Container, list[SnapshotRow]]:
        container = await self.find(cid, guard)
        return container, self.store.list(cid)

    async def get(self, cid: str, name: str, guard: Guard | None = None) -> tuple[Container, SnapshotRow]:
        container = await self.find(cid, guard)
        row = self.store.get(cid, name)
        if row is None:
            raise NotFound("snapshot")
        return container, row

    # -- mutations ---------------------------------------------------------

    async def _run(self, kind: str, backend: Backend, cid: str, snapshot: str | None,
                   call: Awaitable[T]) -> T:
        """One backend operation: timed into metrics, one log line, errors mapped."""
        what = f"{kind} {cid}" + (f"@{snapshot}" if snapshot else "")
        fields = {"backend": backend.kind, "container": cid, "snapshot": snapshot}
        timer = self.metrics.operation(backend.kind, kind) if self.metrics else contextlib.nullcontext()
        with OperationLog(oplog, kind, **{k: v for k, v in fields.items() if v}), timer:
            return await _map_errors(call, what)

    async def _mutate(self, cid: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` under the container's lock, shielded from the caller's cancellation."""
        task = asyncio.ensure_future(self._locks.run(cid, fn))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for every operation in flight to finish; stop the size refresher."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        if self._size_worker is not None:
            self._size_worker.cancel()
            await asyncio.gather(self._size_worker, return_exceptions=True)

    def refresh_sizes_later(self, backend: Backend, cid: str) -> None:
        """Recount sizes a create or delete may have changed, off the request path."""
        self._size_pending[(backend.describe(), cid)] = backend
        if self._size_worker is None or self._size_worker.done():
            self._size_worker = asyncio.create_task(self._refresh_sizes(), name="sizes")

    async def _refresh_sizes(self) -> None:
        while self._size_pending:
            (_pool, cid), backend = next(iter(self._size_pending.items()))
            del self._size_pending[(_pool, cid)]
            try:
                for c, sizes in (await backend.sizes(cid)).items():
                    self.store.update_sizes(c, sizes)
            except Exception as exc:  # sizes are advisory; never fail an operation for them
                log.warning("size refresh failed pool=%s container=%s error=%s", _pool, cid, exc)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _new_name(self, cid: str, now: float) -> str:
        base = snapshot_stamp(now)
        taken = self.store.names_like(cid, base)
        if base not in taken:
            return base
        n = 2
        while f"{base}-{n}" in taken:
            n += 1
        return f"{base}-{n}"

    async def create(
        self, cid: str, alias: str | None, expiry_days: float | None, guard: Guard | None = None
    ) -> tuple[Container, SnapshotRow]:
        async def op() -> tuple[Container, SnapshotRow]:
            container = await self.find(cid, guard)
            now = self.clock.now()
            name = self._new_name(cid, now)
            expires_at = now + expiry_days * DAY if expiry_days is not None else None
            facts = await self._run("create", container.backend, cid, name,
                                    container.backend.create(cid, name, alias, expires_at, created_at=now))
            row = SnapshotRow(
                container_id=cid,
                name=name,
                pool=container.pool,
                created_at=now,
                alias=alias,
                expires_at=expires_at,
                size=facts.size,
                ref=facts.ref,
            )
            self.store.insert(row)
            self.refresh_sizes_later(container.backend, cid)
            if expires_at is not None:
                self.on_expiry_set(expires_at)
            return container, row

        return await self._mutate(cid, op)

    async def restore(self, cid: str, name: str, guard: Guard | None = None) -> tuple[Container, SnapshotRow]:
        async def op() -> tuple[Container, SnapshotRow]:
            container, row = await self.get(cid, name, guard)
            others = [
                SnapshotRef(r.name, r.ref) for r in self.store.list(cid) if r.name != name
            ]
            moved = await self._run("restore", container.backend, cid, name,
                                    container.backend.restore(cid, SnapshotRef(row.name, row.ref), others))
            for moved_name, ref in moved.items():
                self.store.update(cid, moved_name, ref=ref)
            now = self.clock.now()
            self.store.update(cid, name, last_used_at=now)
            return container, replace(row, last_used_at=now, ref=moved.get(name, row.ref))

        return await self._mutate(cid, op)

    async def set_alias(
        self, cid: str, name: str, alias: str | None, guard: Guard | None = None
    ) -> tuple[Container, SnapshotRow]:
        async def op() -> tuple[Container, SnapshotRow]:
            container, row = await self.get(cid, name, guard)
            await self._run("alias", container.backend, cid, name,
                            container.backend.set_alias(cid, SnapshotRef(row.name, row.ref), alias))
            self.store.update(cid, name, alias=alias)
            return container, replace(row, alias=alias)

        return await self._mutate(cid, op)

    async def delete(self, cid: str, name: str, guard: Guard | None = None) -> Container:
        async def op() -> Container:
            container, row = await self.get(cid, name, guard)
            error = (await self._delete_rows(container.backend, cid, [row]))[name]
            if error is not None:
                raise OperationFailed(f"snapshot {name} was not deleted: {error}")
            return container

        return await self._mutate(cid, op)

    async def set_project(self, cid: str, project: str | None) -> Container:
        """Label the container with `project` (None removes the label)."""

        async def op() -> Container:
            container = await self.find(cid)
            await self._run("set-project", container.backend, cid, None,
                            container.backend.set_project(cid, project))
            return Container(cid, container.backend, project)

        return await self._mutate(cid, op)

    async def _delete_rows(
        self, backend: Backend, cid: str, rows: list[SnapshotRow]
    ) -> dict[str, BackendError | None]:
        """Delete snapshots on disk (batched), then drop the rows of those gone."""
        results = await self._run("delete", backend, cid, ",".join(r.name for r in rows),
                                  backend.delete(cid, [SnapshotRef(r.name, r.ref) for r in rows]))
        self.refresh_sizes_later(backend, cid)
        for row in rows:
            error = results.get(row.name, BackendError("backend gave no result"))
            if error is None:
                self.store.delete(cid, row.name)
            else:
                log.warning("snapshot not deleted container=%s snapshot=%s error=%s", cid, row.name, error)
        return {r.name: results.get(r.name, BackendError("backend gave no result")) for r in rows}

    async def delete_expired(
        self, cid: str, pool: str, names: list[str], now: float
    ) -> dict[str, BackendError | None]:
        """Delete those of `names` that are still expired at `now` (for the reaper).

        The container may be gone; its snapshots are still removed from their pool.
        """

        async def op() -> dict[str, BackendError | None]:
            rows = [
                r
                for n in names
                if (r := self.store.get(cid, n)) is not None
                and r.expires_at is not None
                and r.expires_at <= now
            ]
            backend = self.backend_for_pool(pool)
            if not rows or backend is None:
                return {}
            return await self._delete_rows(backend, cid, rows)

        return await self._mutate(cid, op)


async def _map_errors(call: Awaitable[T], what: str) -> T:
    """Await a backend call, mapping its errors to service errors."""
    try:
        return await call
    except ContainerNotFound:
        raise NotFound("container") from None
    except SnapshotNotFound:
        raise NotFound("snapshot") from None
    except ContainerBusy as exc:
        raise Conflict(str(exc), exc.details) from None
    except NoSpace as exc:
        raise InsufficientStorage(str(exc)) from None
    except BackendError as exc:
        raise OperationFailed(f"{what} failed: {exc}") from None
    except OSError as exc:
        log.exception("%s failed", what)
        if exc.errno == 28:  # ENOSPC
            raise InsufficientStorage(f"{what}: no space left in the pool") from None
        raise OperationFailed(f"{what} failed: {exc.strerror or exc}") from None
