"""Files in snapshots: browse a directory, stream a file, diff two trees, restore single paths.

Reads (tree, file, diff) take no container lock: they read a read-only
snapshot (or the live tree, for a diff against it) through descriptors held
for the request.  restore-paths is a mutation like restore: under the
container's lock, between the pool's restore hooks, journalled, refused
(409) while the container is in use.  Paths are client text in the name
escape (backends.beneath); a bad one is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import AsyncIterator

from backends import beneath, treeread
from backends.base import SnapshotRef, TreeRoot
from snapd.core.clock import iso
from snapd.core.errors import InvalidInput, PathNotFound
from snapd.core.service import Container, Guard, SnapshotService, map_backend_errors

MAX_RESTORE_PATHS = 100
DIFF_BATCH = 1000


def parse_path(text: str, field: str = "path") -> tuple[bytes, ...]:
    """A client's path as components; InvalidInput("query") naming `field` when refused."""
    try:
        return beneath.parse(text)
    except beneath.PathRefused as exc:
        raise InvalidInput("query", [{"field": field, "reason": exc.reason}]) from None


def _entry(item: dict) -> dict:
    return {**item, "mtime": iso(item["mtime"])}


@contextlib.contextmanager
def _path_errors(parts: tuple[bytes, ...], field: str = "path"):  # type: ignore[no-untyped-def]
    """Resolution errors as the client's: missing -> 404, unsafe or not a directory -> 400."""
    shown = beneath.show_path(parts)
    try:
        yield
    except beneath.Unsafe as exc:
        raise InvalidInput("query", [{"field": field, "reason": exc.reason}]) from None
    except beneath.NotRegular as exc:
        raise InvalidInput("query", [{"field": field, "reason": f"{shown} is a {exc.kind}, not a regular file"}]) from None
    except FileNotFoundError:
        raise PathNotFound(f"{shown} does not exist", [{"field": field, "reason": f"{shown} does not exist"}]) from None
    except NotADirectoryError:
        raise InvalidInput("query", [{"field": field, "reason": f"{shown}: a component is not a directory"}]) from None


@dataclass(frozen=True)
class OpenFile:
    """A regular file of a snapshot, open for reading."""

    fd: int
    size: int
    mtime: float
    etag: str


class Files:
    """File access to snapshots, through the service's containers and guards."""

    def __init__(self, service: SnapshotService) -> None:
        self.service = service

    @contextlib.asynccontextmanager
    async def _snapshot(self, cid: str, name: str, guard: Guard | None) -> AsyncIterator[tuple[Container, TreeRoot]]:
        container, row = await self.service.get(cid, name, guard)
        cm = container.backend.snapshot_root(cid, SnapshotRef(row.name, row.ref))
        root = await map_backend_errors(cm.__aenter__(), f"open snapshot {cid}@{name}")
        try:
            yield container, root
        finally:
            await cm.__aexit__(None, None, None)

    @contextlib.asynccontextmanager
    async def _live(self, container: Container) -> AsyncIterator[TreeRoot]:
        cm = container.backend.live_root(container.id)
        root = await map_backend_errors(cm.__aenter__(), f"open container {container.id}")
        try:
            yield root
        finally:
            await cm.__aexit__(None, None, None)

    async def tree(self, cid: str, name: str, path: str, guard: Guard | None, limit: int,
                   after: str | None) -> tuple[Container, dict]:
        """One directory of the snapshot (a page of it), or the entry itself when it is not a directory."""
        parts = parse_path(path)
        after_name = None
        if after is not None:
            try:
                if len(after) > beneath.MAX_PATH_TEXT or "\x00" in after:
                    raise beneath.PathRefused(f"at most {beneath.MAX_PATH_TEXT} characters, no NUL")
                after_name = beneath.unescape(after)
            except beneath.PathRefused as exc:
                raise InvalidInput("query", [{"field": "after", "reason": exc.reason}]) from None
        async with self._snapshot(cid, name, guard) as (container, root):
            with _path_errors(parts):
                try:
                    items, last = await asyncio.to_thread(treeread.list_dir, root, parts, limit, after_name)
                except NotADirectoryError:
                    item = await asyncio.to_thread(treeread.stat_path, root, parts)
                    return container, {"path": beneath.show_path(parts), "entry": _entry(item),
                                       "entries": None, "next": None}
        return container, {"path": beneath.show_path(parts), "entry": None,
                           "entries": [_entry(i) for i in items],
                           "next": beneath.show(last) if last is not None else None}

    @contextlib.asynccontextmanager
    async def open_file(self, cid: str, name: str, path: str, guard: Guard | None) -> AsyncIterator[OpenFile]:
        """A regular file of the snapshot, open for as long as the context lasts."""
        parts = parse_path(path)
        async with self._snapshot(cid, name, guard) as (_container, root):
            with _path_errors(parts):
                fd = await asyncio.to_thread(beneath.open_regular, root.fd, parts)
            try:
                st = os.fstat(fd)
                etag = f'"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
                yield OpenFile(fd, st.st_size, st.st_mtime, etag)
            finally:
                os.close(fd)

    @contextlib.asynccontextmanager
    async def diff(self, cid: str, name: str, against: str, guard: Guard | None,
                   after: str | None = None) -> AsyncIterator[tuple[Container, AsyncIterator[list[dict]]]]:
        """The changes from snapshot `name` to `against` ("live" or another snapshot), in
        batches, after the path `after` (a cursor) when given."""
        after_parts = parse_path(after, "after") if after is not None else None
        async with contextlib.AsyncExitStack() as stack:
            container, old = await stack.enter_async_context(self._snapshot(cid, name, guard))
            if against == "live":
                new = await stack.enter_async_context(self._live(container))
            else:
                _c, new = await stack.enter_async_context(self._snapshot(cid, against, guard))
            candidates = await map_backend_errors(container.backend.changes(old, new), f"diff {cid}@{name}")
            batches = self._batches(old, new, after_parts, candidates)
            # A caller that stops early (a full page) leaves the walk's descriptors open until
            # the generator is collected: closed here, before the snapshot's root goes away.
            stack.push_async_callback(batches.aclose)
            yield container, batches

    async def _batches(self, old: TreeRoot, new: TreeRoot, after: tuple[bytes, ...] | None,
                       candidates: dict[tuple[bytes, ...], bool] | None) -> AsyncIterator[list[dict]]:
        """The diff in batches: only the candidate paths when the filesystem tracked
        changes, else the walk of both trees (the same records either way)."""
        walk = treeread.diff(old, new) if candidates is None else treeread.diff_paths(old, new, candidates)

        def batch() -> list[dict]:
            out: list[dict] = []
            for parts, record in walk:
                if after is not None and parts <= after:
                    continue
                out.append(record)
                if len(out) == DIFF_BATCH:
                    break
            return out

        try:
            while True:
                got = await asyncio.to_thread(batch)
                if not got:
                    return
                yield got
        finally:
            await asyncio.to_thread(walk.close)

    async def restore_paths(self, cid: str, name: str, paths: list[tuple[bytes, ...]],
                            guard: Guard | None) -> tuple[Container, list[dict]]:
        """Bring `paths` back from the snapshot (SnapshotService.restore_paths)."""
        return await self.service.restore_paths(cid, name, paths, guard)
