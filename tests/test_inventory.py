"""Finding every container of every pool (what the policy scheduler works over), on real pools."""

from __future__ import annotations

import os
from pathlib import Path

from backends import make_backend
from snapd.core.service import SnapshotService
from snapd.core.store import Store

from .harness import PoolHarness, new_cid


async def test_every_container_is_found_with_its_project_and_nothing_else(pool: PoolHarness, tmp_path: Path) -> None:
    backend = make_backend(pool.kind, pool.spec.partition(":")[2])
    await backend.open()
    service = SnapshotService(Store(tmp_path / "db"), [backend])
    try:
        before = {c.id for c in await service.containers()}
        plain, labelled = new_cid(), new_cid()
        pool.make_container(plain)
        pool.make_container(labelled)
        await backend.set_project(labelled, "web")
        if pool.kind != "zfs":  # things a directory pool holds that are not containers
            root = Path(backend.root)
            (root / new_cid()).write_text("a file named like a container\n")
            (root / "not-a-container").mkdir(exist_ok=True)
            (root / "0123456789ABCDEF01234567").mkdir(exist_ok=True)  # upper-case: not an id on disk
            os.symlink(pool.container_path(plain), root / new_cid())
        found = {c.id: (c.project, c.pool) for c in await service.containers() if c.id not in before}
        assert found == {plain: (None, backend.pool_id), labelled: ("web", backend.pool_id)}
        assert sorted(await backend.containers()) == sorted(before | {plain, labelled})
    finally:
        await backend.close()


async def test_lookup_answers_what_exists_and_get_project_do(pool: PoolHarness, tmp_path: Path) -> None:
    """lookup() (one thread on btrfs) agrees with container_exists() and get_project()."""
    backend = make_backend(pool.kind, pool.spec.partition(":")[2])
    await backend.open()
    try:
        plain, labelled, missing = new_cid(), new_cid(), new_cid()
        pool.make_container(plain)
        pool.make_container(labelled)
        await backend.set_project(labelled, "web")
        asked = [plain, labelled, missing, "not-an-id", plain.upper()]
        if pool.kind != "zfs":
            stranger = new_cid()
            (Path(backend.root) / stranger).write_text("a file named like a container\n")
            asked.append(stranger)
        for cid in asked:
            exists = await backend.container_exists(cid)
            expected = (exists, await backend.get_project(cid) if exists else None)
            assert await backend.lookup(cid) == expected, cid
        assert await backend.lookup(labelled) == (True, "web")
        assert await backend.lookup(plain) == (True, None) and await backend.lookup(missing) == (False, None)
    finally:
        await backend.close()
