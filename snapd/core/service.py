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
import os
import signal
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

from backends import faults
from snapd.core.clock import Clock, snapshot_stamp
from snapd.core.names import highest, next_name
from snapd.host.config import PoolPolicy
from snapd.core.errors import Conflict, InsufficientStorage, InvalidInput, NotFound, OperationFailed
from snapd.core.oplog import OperationLog
from snapd.core.store import SnapshotRow, Store

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

    def busy(self, cid: str) -> bool:
        """Whether an operation on `cid` is running (or queued)."""
        lock = self._locks.get(cid)
        return lock is not None and lock.locked()

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
        """Anything with an `operation(backend_kind, kind)` context manager (snapd.host.metrics.Metrics)."""
        self.backends = backends
        self.clock = clock or Clock()
        self._locks = _Locks()
        self._inflight: set[asyncio.Task] = set()
        self.on_expiry_set: Callable[[float], None] = lambda when: None
        """Called with a new expires_at (the reaper wakes if it is sooner)."""
        self._size_pending: dict[tuple[str, str], Backend] = {}
        self._size_worker: asyncio.Task | None = None
        self.policies: dict[str, PoolPolicy] = {}
        """backend.describe() -> reserve and restore hooks (the server sets them)."""
        self.default_policy = PoolPolicy()
        self._open_gate = asyncio.Event()
        self._open_gate.set()
        self._exclusive_lock = asyncio.Lock()
        self._totals: dict[str, tuple[float, int | None]] = {}

    def policy(self, backend: Backend) -> PoolPolicy:
        return self.policies.get(backend.describe(), self.default_policy)

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

    async def list_json(
        self, cid: str, guard: Guard | None = None, limit: int | None = None,
        after: tuple[int, str] | str | None = None,
    ) -> tuple[Container, list[str], tuple[int, str] | None]:
        """The container and a page of its snapshots, newest first, already JSON-encoded
        (Store.list_json); the position after the page when more follow.  `after` is a
        position or a snapshot name (looked up only once the guard let the caller in)."""
        container = await self.find(cid, guard)
        if isinstance(after, str):
            position = self.store.position(cid, after)
            if position is None:
                raise InvalidInput("query", [{"field": "after",
                                              "reason": "no such snapshot; pass the cursor from data.next"}])
            after = position
        items, last = self.store.list_json(cid, limit, after)
        return container, items, last

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
        while not self._open_gate.is_set():  # an exclusive() run (reconcile) is on
            await self._open_gate.wait()
        task = asyncio.ensure_future(self._locks.run(cid, fn))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def exclusive(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` with no mutation in flight and none starting until it ends (reconcile)."""
        async with self._exclusive_lock:
            self._open_gate.clear()
            try:
                while self._inflight:
                    await asyncio.gather(*list(self._inflight), return_exceptions=True)
                return await fn()
            finally:
                self._open_gate.set()

    # -- journal, space, hooks -------------------------------------------------

    def _journal(self, op: str, container: Container | Backend, cid: str, snapshot: str | None,
                 data: dict) -> int:
        pool = container.pool if isinstance(container, Container) else container.describe()
        return self.store.journal_begin(op, cid, snapshot, pool, data, self.clock.now())

    def _journal_failed(self, jid: int) -> None:
        try:
            self.store.journal_end(jid, "failed", self.clock.now())
        except Exception as exc:  # the next start sees it pending and settles it
            log.warning("cannot record failure of journal entry %d: %s", jid, exc)

    async def _check_space(self, container: Container) -> None:
        """Refuse (507) a create that would eat into the pool's reserve; changes nothing."""
        backend = container.backend
        reserve = self.policy(backend).reserve
        if reserve.bytes == 0 or reserve.fraction == 0:
            return
        try:
            free = await backend.free_bytes()
            total = await self._total_bytes(backend) if reserve.fraction is not None else None
        except Exception as exc:  # an unreadable figure must not block snapshots
            log.warning("cannot read free space of pool %s: %s", container.pool, exc)
            return
        if free is None:
            return
        need = reserve.required(total)
        if free < need:
            log.warning("create refused container=%s pool=%s free=%d reserve=%d",
                        container.id, container.pool, free, need)
            raise InsufficientStorage(
                f"Pool {container.pool} has {_size(free)} free, below its reserve of {_size(need)} "
                f"({reserve}); no snapshot was created. Free space or delete snapshots first."
            )

    async def _total_bytes(self, backend: Backend) -> int | None:
        """A pool's size, re-read at most once a minute (it rarely changes; ZFS pays a process)."""
        key = backend.describe()
        now = asyncio.get_running_loop().time()
        hit = self._totals.get(key)
        if hit is None or now - hit[0] > 60:
            hit = (now, await backend.total_bytes())
            self._totals[key] = hit
        return hit[1]

    async def _hook(self, which: str, argv: tuple[str, ...], container: Container, name: str,
                    timeout: float) -> str | None:
        """Run a restore hook (no shell); None when it succeeded, else why it did not."""
        env = {k: v for k, v in os.environ.items() if k != faults.ENV}
        env.update(SNAPD_CONTAINER_ID=container.id, SNAPD_SNAPSHOT=name, SNAPD_POOL=container.pool,
                   SNAPD_HOOK=which)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return f"cannot run {argv[0]}: {exc.strerror or exc}"
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return f"{argv[0]} timed out after {timeout:g}s"
        text = err.decode(errors="replace").strip()[-2000:]
        if proc.returncode:
            return f"{argv[0]} exited {proc.returncode}" + (f": {text}" if text else "")
        oplog.info("hook=%s container=%s snapshot=%s ok%s", which, container.id, name,
                   f" stderr={text!r}" if text else "")
        return None

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

    def busy(self, cid: str) -> bool:
        """Whether an operation on container `cid` is running or queued."""
        return self._locks.busy(cid)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _new_name(self, cid: str, now: float) -> str:
        """A name never given to a snapshot of `cid` before (snapd/core/names.py)."""
        base = snapshot_stamp(now)
        return next_name(base, highest([self.store.name_mark(cid), *self.store.names_like(cid, base)]))

    async def create(
        self, cid: str, alias: str | None, expiry_days: float | None, guard: Guard | None = None
    ) -> tuple[Container, SnapshotRow]:
        async def op() -> tuple[Container, SnapshotRow]:
            container = await self.find(cid, guard)
            await self._check_space(container)
            now = self.clock.now()
            name = self._new_name(cid, now)
            expires_at = now + expiry_days * DAY if expiry_days is not None else None
            with self.store.transaction():  # the name is spent once the intent is recorded
                jid = self._journal("create", container, cid, name,
                                    {"alias": alias, "expires_at": expires_at, "created_at": now})
                self.store.raise_name_mark(cid, name)
            faults.point("service.create.journaled")
            try:
                facts = await self._run("create", container.backend, cid, name,
                                        container.backend.create(cid, name, alias, expires_at, created_at=now))
            except BaseException:
                self._journal_failed(jid)
                raise
            faults.point("service.create.on-disk")
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
            with self.store.transaction():
                self.store.insert(row)
                self.store.journal_end(jid, "done", now)
            self.refresh_sizes_later(container.backend, cid)
            if expires_at is not None:
                self.on_expiry_set(expires_at)
            return container, row

        return await self._mutate(cid, op)

    async def restore(self, cid: str, name: str, guard: Guard | None = None) -> tuple[Container, SnapshotRow]:
        async def op() -> tuple[Container, SnapshotRow]:
            container, row = await self.get(cid, name, guard)
            policy = self.policy(container.backend)
            if policy.pre_restore:
                failed = await self._hook("pre_restore", policy.pre_restore, container, name,
                                          policy.hook_timeout)
                if failed:
                    log.warning("restore refused container=%s snapshot=%s: pre_restore hook failed: %s",
                                cid, name, failed)
                    raise Conflict("The pre_restore hook refused the restore; nothing was changed",
                                   [{"field": "pre_restore", "reason": failed}])
            try:
                return await self._restore(container, row)
            finally:
                if policy.post_restore:
                    failed = await self._hook("post_restore", policy.post_restore, container, name,
                                              policy.hook_timeout)
                    if failed:  # the restore stands; the operator sees this in logs and status
                        log.error("post_restore hook failed container=%s snapshot=%s: %s", cid, name, failed)

        return await self._mutate(cid, op)

    async def _restore(self, container: Container, row: SnapshotRow) -> tuple[Container, SnapshotRow]:
        cid, name = container.id, row.name
        others = [SnapshotRef(r.name, r.ref) for r in self.store.list(cid) if r.name != name]
        jid = self._journal("restore", container, cid, name, {"ref": row.ref})
        faults.point("service.restore.journaled")
        try:
            moved = await self._run("restore", container.backend, cid, name,
                                    container.backend.restore(cid, SnapshotRef(row.name, row.ref), others))
        except BaseException:
            self._journal_failed(jid)
            raise
        faults.point("service.restore.on-disk")
        now = self.clock.now()
        with self.store.transaction():
            for moved_name, ref in moved.items():
                self.store.update(cid, moved_name, ref=ref)
            self.store.update(cid, name, last_used_at=now)
            self.store.journal_end(jid, "done", now)
        return container, replace(row, last_used_at=now, ref=moved.get(name, row.ref))

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
        names = ",".join(r.name for r in rows)
        await self._mirror_name_mark(backend, cid, [r.name for r in rows])
        jid = self._journal("delete", backend, cid, names, {"refs": {r.name: r.ref for r in rows}})
        faults.point("service.delete.journaled")
        try:
            results = await self._run("delete", backend, cid, names,
                                      backend.delete(cid, [SnapshotRef(r.name, r.ref) for r in rows]))
        except BaseException:
            self._journal_failed(jid)
            raise
        faults.point("service.delete.on-disk")
        self.refresh_sizes_later(backend, cid)
        with self.store.transaction():
            for row in rows:
                error = results.get(row.name, BackendError("backend gave no result"))
                if error is None:
                    self.store.delete(cid, row.name)
                else:
                    log.warning("snapshot not deleted container=%s snapshot=%s error=%s", cid, row.name, error)
            self.store.journal_end(jid, "done", self.clock.now())
        return {r.name: results.get(r.name, BackendError("backend gave no result")) for r in rows}

    async def _mirror_name_mark(self, backend: Backend, cid: str, names: list[str]) -> None:
        """Before names leave the disk, make sure a store rebuilt from the pool (whose
        mark is the greater of the disk's mark and the names still there) would
        never give them again: write the store's mark to the disk, unless a newer
        snapshot stays and covers them.  So creates need no disk write (a snapshot
        on disk speaks for its own name), and neither does pruning the oldest."""
        mark = highest([self.store.name_mark(cid), *names])
        if mark is None:
            return
        self.store.raise_name_mark(cid, mark)  # already so, unless the store lost track
        top = self.store.top_name(cid)
        if top is not None and top not in names:
            return
        try:
            await backend.set_name_mark(cid, mark)
        except (BackendError, OSError) as exc:  # the store's mark still holds; only a rebuild could miss it
            log.warning("cannot record name mark on disk container=%s mark=%s error=%s", cid, mark, exc)

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


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


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
