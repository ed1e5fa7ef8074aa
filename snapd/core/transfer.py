"""Export and import of snapshots as portable or native streams (backends/portable.py), for the service.

Export streams a snapshot (or its changes since a base) while the snapshot and the
base are marked as being exported: a delete of either is refused (409) until the
stream ends.  Import reads the stream's header first (its container, name and base
decide the answer before any data lands), then, under the container's lock like a
create, journals a create intent, lets the pool receive the rest into scratch and
records the row once the snapshot is visible: a crash leaves it absent or whole,
and the journal's create settling rolls a visible one forward with the stream's
metadata.  A container the receiver does not have is made in a pool first.

A native stream (the header names a filesystem: "btrfs", "zfs") carries that
filesystem's own send stream in the same envelope; export writes one on request
(`native=True`) from a pool that has a native kind, import dispatches on the header
and refuses (409) a kind the receiving pool lacks, or an incremental from a snapshot
the pool cannot use as a native base.  `import_formats` says what a pool accepts,
so a sender chooses before it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

from backends import faults
from backends.base import Backend, ImportUnsupported, SnapshotRef
from backends.portable import (
    Header,
    PORTABLE,
    NativeFramer,
    Stats,
    StreamError,
    StreamReader,
    compressions,
    write_stream,
)

from snapd.core.errors import Conflict, InvalidInput, NotFound
from snapd.core.pipe import LoopReader, LoopWriter, Stalled
from snapd.core.store import SnapshotRow, Store

RESERVED_NAME = "import"
"""`.../snapshots/import` is the import route: no snapshot is given that name."""

if TYPE_CHECKING:
    from snapd.core.service import Container, Guard, SnapshotService


def _bad_stream(reason: str) -> InvalidInput:
    return InvalidInput("stream", [{"field": "stream", "reason": reason}])


@dataclass(frozen=True)
class Formats:
    """What a pool takes (import_formats): stream kinds, the native one first, and the
    snapshots a native incremental may start from."""

    pool: str
    kinds: list[str]
    native_bases: list[str]

    def as_json(self) -> dict:
        return {"pool": self.pool, "formats": self.kinds, "native_bases": self.native_bases}


@dataclass(frozen=True)
class Export:
    """A snapshot ready to stream: `run(push)` writes the whole stream through `push`."""

    container: Container
    header: Header
    run: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[Stats]]


class Transfers:
    """Export and import (mixed into SnapshotService)."""

    _exporting: Counter[tuple[str, str]]

    def exporting(self, cid: str, name: str) -> bool:
        """Whether snapshot `name` of `cid` is being streamed out (a delete must wait)."""
        return self._exporting[(cid, name)] > 0

    @contextlib.asynccontextmanager
    async def export(self: SnapshotService, cid: str, name: str, base: str | None, guard: Guard | None,
                     compression: str = "none", native: bool = False) -> AsyncIterator[Export]:
        """The snapshot (changes since `base` when given) ready to stream, for the context's
        duration; NotFound when the snapshot or the base is not there.  `native`: the pool's
        own send stream in the envelope (Conflict when the pool has none)."""
        if compression not in compressions():
            raise InvalidInput("query", [{"field": "compression",
                                          "reason": f"one of {', '.join(compressions())} on this daemon"}])
        container, row = await self.get(cid, name, guard)
        base_row = None
        if base is not None:
            base_row = self.store.get(cid, base)
            if base_row is None:
                raise NotFound("snapshot")
        backend = container.backend
        kind = backend.native_stream if native else None
        if native and kind is None:
            raise Conflict(f"pool {backend.pool_id} has no native stream",
                           [{"field": "stream", "reason": f"{backend.kind} pools send portable streams only"}])
        layout, _ = ("whole", None) if native else await self.layout(container)
        header = Header(container=cid, snapshot=name, created_at=row.created_at, alias=row.alias,
                        expires_at=row.expires_at, base=base, layout="upper" if layout == "overlay" else "whole",
                        compression=compression, project=container.project, native=kind)
        marks = [(cid, name)] + ([(cid, base)] if base else [])
        self._exporting.update(marks)

        async def run_native(push: Callable[[bytes], Awaitable[None]]) -> Stats:
            framer = NativeFramer(header)

            async def frames(chunk: bytes) -> None:
                for piece in await asyncio.to_thread(framer.frames, chunk):  # hashed off the loop
                    await push(piece)

            await push(framer.start())
            async with self._slot(container, "export"):
                await backend.send_native(cid, SnapshotRef(row.name, row.ref),
                                          None if base_row is None else SnapshotRef(base_row.name, base_row.ref),
                                          frames)
            await push(framer.end())
            return Stats(bytes=framer.bytes)

        async def run(push: Callable[[bytes], Awaitable[None]]) -> Stats:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(self._slot(container, "export"))
                tree = await stack.enter_async_context(backend.export_path(cid, SnapshotRef(row.name, row.ref)))
                base_tree = None if base_row is None else await stack.enter_async_context(
                    backend.export_path(cid, SnapshotRef(base_row.name, base_row.ref)))
                out = LoopWriter(push, self.stream_idle_timeout)
                try:
                    stats = await asyncio.to_thread(write_stream, out.write, header, tree, base_tree)
                except BaseException:
                    out.abort()
                    raise
                await out.finish()
                return stats

        try:
            yield Export(container, header, run_native if native else run)
        finally:
            self._exporting.subtract(marks)
            self._exporting = +self._exporting

    async def import_stream(self: SnapshotService, cid: str, pull: Callable[[], Awaitable[bytes]],
                            pool: str | None, may_write: Callable[[str | None], bool]
                            ) -> tuple[Container, SnapshotRow]:
        """Import the stream `pull` yields (chunks, b"" at the end) as a snapshot of `cid`.

        `pool`: where to make the container if this daemon does not have it (None: the
        first pool that accepts imports).  `may_write(project)` says whether the caller
        may write to a container of that project; False is a 403 (raised as NotFound,
        which the route turns into its forbidden answer for non-admins)."""
        source = LoopReader(pull, self.stream_idle_timeout)
        try:
            return await self._import(cid, source, pool, may_write)
        finally:
            source.stop()

    async def _import(self: SnapshotService, cid: str, source: LoopReader, pool: str | None,
                      may_write: Callable[[str | None], bool]) -> tuple[Container, SnapshotRow]:
        try:
            reader = await asyncio.to_thread(StreamReader, source)
        except StreamError as exc:
            raise _bad_stream(str(exc)) from None
        except Stalled as exc:
            raise _bad_stream(f"stream ended early: {exc}") from None
        h = reader.header
        if h.snapshot == RESERVED_NAME:
            raise InvalidInput("stream", [{"field": "snapshot", "reason": f"{RESERVED_NAME!r} names the import route"}])
        if h.container != cid:
            raise InvalidInput("stream", [{"field": "container",
                                           "reason": f"the stream holds container {h.container}, not {cid}"}])

        async def op() -> tuple[Container, SnapshotRow]:
            from snapd.core.service import Container

            try:
                container = await self.find(cid)
                new = False
            except NotFound:
                container, new = Container(cid, self._import_pool(pool, h.native), h.project), True
            if not may_write(container.project):
                raise NotFound("container")
            if h.native is not None and container.backend.native_stream != h.native:
                raise Conflict(f"a native {h.native} stream cannot be received into pool {container.pool}",
                               [{"field": "stream", "reason": f"pool {container.pool} takes "
                                 f"{', '.join(_kinds(container.backend))} streams"}])
            async with self._slot(container, "import"):
                return await admitted(container, new)

        async def admitted(container: Container, new: bool) -> tuple[Container, SnapshotRow]:
            if self.store.get(cid, h.snapshot) is not None:
                raise Conflict(f"snapshot {h.snapshot} of container {cid} exists already; nothing was imported",
                               [{"field": "snapshot", "reason": f"{h.snapshot} exists"}])
            base = None
            if h.base is not None:
                base_row = self.store.get(cid, h.base)
                if base_row is None:
                    raise Conflict(f"the stream holds the changes since snapshot {h.base}, which container {cid} "
                                   "does not have here; import that one first or export in full",
                                   [{"field": "base", "reason": f"{h.base} not found"}])
                base = SnapshotRef(base_row.name, base_row.ref)
                if h.native is not None and h.base not in await container.backend.native_bases(cid):
                    raise Conflict(f"snapshot {h.base} of {cid} was not received natively here, so a native "
                                   f"{h.native} stream cannot start from it; send a portable stream",
                                   [{"field": "base", "reason": f"{h.base} is not a native base"}])
            limits = await self._check_room(container)
            now = self.clock.now()

            def intent(store: Store) -> int:  # in the writer: limits and intent at once
                limits()
                jid = self._journal("create", container, cid, h.snapshot,
                                    {"alias": h.alias, "expires_at": h.expires_at, "created_at": h.created_at,
                                     "policy": None, "imported": True})
                store.raise_name_mark(cid, h.snapshot)
                return jid

            jid = await self.store.write(intent)
            try:
                facts = await self._run("import", container.backend, cid, h.snapshot,
                                        _receive(container.backend, cid, h, reader, base, new))
                if new and h.project is not None:
                    await container.backend.set_project(cid, h.project)
            except BaseException:
                await self._journal_failed(jid)
                raise
            faults.point("service.import.on-disk")
            row = SnapshotRow(container_id=cid, name=h.snapshot, pool=container.pool, created_at=h.created_at,
                              alias=h.alias, expires_at=h.expires_at, size=facts.size, ref=facts.ref)
            await self.store.write(lambda s: (s.insert(row), s.journal_end(jid, "done", now)))
            self._label_seen(container)
            self._recount_later(container.backend, cid, [h.snapshot, *self.store.neighbours(cid, h.created_at,
                                                                                            h.snapshot)])
            if h.expires_at is not None:
                self.on_expiry_set(h.expires_at)
            return container, row

        return await self._mutate(cid, op)

    def _import_pool(self: SnapshotService, pool: str | None, native: str | None = None) -> Backend:
        """The pool a new container is made in: `pool` (by id, `kind:root`) or the first that
        accepts the stream (of native kind `native`, or portable when None)."""
        what = f"native {native}" if native else "portable"

        def accepts(backend: Backend) -> bool:
            return backend.native_stream == native if native else backend.accepts_imports

        if pool is not None:
            backend = self.backend_for_pool(pool)
            if backend is None:
                raise InvalidInput("query", [{"field": "pool", "reason": f"no pool {pool} here"}])
            if not accepts(backend):
                raise Conflict(f"pool {pool} cannot receive {what} streams",
                               [{"field": "pool", "reason": f"{backend.kind} pools do not receive them"}])
            return backend
        for backend in self.backends:
            if accepts(backend):
                return backend
        raise Conflict(f"no pool here can receive {what} streams", [{"field": "pool", "reason": "none accepts"}])

    async def import_formats(self: SnapshotService, cid: str, pool: str | None, guard: Guard | None) -> Formats:
        """The stream kinds the pool holding `cid` accepts (for a container not here: pool
        `pool`, or the pools an import would pick) and the snapshots a native incremental
        may start from; NotFound("container") never: a container not here is one to make."""
        if pool is not None and self.backend_for_pool(pool) is None:  # well-formed, not here: 409
            raise Conflict(f"no pool {pool[:200]} here", [{"field": "pool", "reason": "not a pool of this daemon"}])
        try:
            container = await self.find(cid, guard)
        except NotFound:
            if pool is not None:
                backend = self._import_pool(pool)
                return Formats(backend.pool_id, _kinds(backend), [])
            backend = self._import_pool(None)
            natives = [b.native_stream for b in self.backends if b.native_stream and b.accepts_imports]
            return Formats(backend.pool_id, list(dict.fromkeys([*natives, *_kinds(backend)])), [])
        backend = container.backend
        known = {r.name for r in self.store.list(cid)} if backend.native_stream else set()
        bases = [n for n in await backend.native_bases(cid) if n in known]
        return Formats(backend.pool_id, _kinds(backend), bases)


def _kinds(backend: Backend) -> list[str]:
    """The stream kinds `backend` receives, the native one first."""
    return [k for k in (backend.native_stream, PORTABLE if backend.accepts_imports else None) if k]


async def _receive(backend: Backend, cid: str, h: Header, reader: StreamReader, base: SnapshotRef | None,
                   new: bool):  # type: ignore[no-untyped-def]
    """backend.receive, with a bad or cut stream told as the client's mistake (400)."""
    try:
        if h.native is not None:
            return await backend.receive_native(cid, h.snapshot, reader.native(), base, new)
        return await backend.receive(cid, h.snapshot, reader, base, h.layout, new)
    except StreamError as exc:
        raise _bad_stream(str(exc)) from None
    except Stalled as exc:
        raise _bad_stream(f"stream ended early: {exc}") from None
    except ImportUnsupported as exc:
        raise Conflict(str(exc), [{"field": "pool", "reason": str(exc)}]) from None
