"""Sizes: the service names the snapshots a create or delete may have changed (their
neighbours in time), the backend counts just those, off the request path."""

from __future__ import annotations

import os
from pathlib import Path

from backends import make_backend
from snapd.core.service import SnapshotService
from snapd.core.store import Store

from .fakes import FakeClock
from .harness import PoolHarness, new_cid


async def test_the_service_recounts_just_the_neighbours(pool: PoolHarness, tmp_path: Path) -> None:
    kind, _, root = pool.spec.partition(":")
    backend = make_backend(kind, root)
    await backend.open()
    asked: list[list[str]] = []
    real = backend.sizes

    async def spy(cid: str, names: list[str]) -> dict[str, int]:
        asked.append(sorted(names))
        return await real(cid, names)

    backend.sizes = spy  # type: ignore[method-assign]
    clock = FakeClock()
    store = Store(tmp_path / "snapd.db")
    service = SnapshotService(store, [backend], clock)
    try:
        cid = new_cid()
        data = pool.make_container(cid) / "data"
        names = []
        for _ in range(4):
            data.write_bytes(os.urandom(256 << 10))  # a new file each time: nothing shared
            clock.advance(1)
            _, row = await service.create(cid, None, None)
            await service.recounted()
            own = [row.name] if row.size is None else []
            if names:  # the new one (when its size is not known yet) and its older neighbour
                assert asked[-1] == sorted([names[-1], *own])
            else:
                assert asked == ([own] if own else [])
            names.append(row.name)
        first, second, third, newest = names

        n = len(asked)
        await service.delete(cid, second)
        await service.recounted()
        assert asked[n:] == [sorted([first, third])]  # both neighbours, one count

        await service.delete(cid, newest)
        await service.recounted()
        assert asked[-1] == [third]  # no newer neighbour

        fresh = await real(cid, [first, third])
        assert {r.name: r.size for r in store.list(cid)} == fresh  # the store holds the counts
    finally:
        await service.drain()
        store.close()
