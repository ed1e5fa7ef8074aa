"""ZFS backend against a real zfs-fuse/OpenZFS pool (no mocks)."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import pytest

from backends.base import PROJECT_PROPERTY, ContainerBusy, PoolError, SnapshotNotFound, SnapshotRef
from backends.zfs import HIDDEN, ZfsBackend
from backends.zfs_cmd import find_tool
from tests.harness import new_cid
from .conftest import open_harness
from tests.harness.zfs import ZfsHarness


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = open_harness("zfs", tmp_path_factory.mktemp("zfs"))
    assert isinstance(h, ZfsHarness)
    yield h
    h.close()


@pytest.fixture
async def backend(harness):
    b = ZfsBackend(harness.root)
    await b.open()
    return b


def zfs(*args: str) -> str:
    res = subprocess.run([find_tool("zfs"), *args], capture_output=True, text=True, check=True)
    return res.stdout


def write_state(path: Path, step: int) -> None:
    """Step n: file v holds n, and marker files m1..mn exist."""
    (path / "v").write_text(str(step))
    (path / f"m{step}").write_text("x" * 100_000 * step)


def check_state(path: Path, step: int) -> None:
    assert (path / "v").read_text() == str(step)
    assert sorted(p.name for p in path.iterdir()) == sorted(["v", *(f"m{i}" for i in range(1, step + 1))])


def refs_of(listing) -> dict[str, str]:
    return {f.name: f.ref for f in listing}


def check_artifacts(h: ZfsHarness, cid: str, refs: dict[str, str]) -> None:
    """Only the container, its live snapshots, holders that keep one, deferred leftovers."""
    ds = h.dataset(cid)
    arts = {a for a in h.artifacts() if cid in a}
    snaps = {a for a in arts if "@" in a}
    live = set(refs.values())
    assert live <= snaps
    extra = snaps - live
    if extra:
        props = h.props(sorted(extra), "defer_destroy")
        assert all(p["defer_destroy"] == "on" for p in props.values()), props
    holders = arts - snaps - {ds}
    for holder in holders:
        assert holder.startswith(f"{h.root}/{HIDDEN}/{cid}-")
        assert any(r.startswith(holder + "@") for r in live), f"{holder} kept with nothing live"
        p = h.props([holder], "canmount,mounted,mountpoint")[holder]
        assert (p["canmount"], p["mounted"], p["mountpoint"]) == ("off", "no", "none")
    if not refs:
        assert arts == {ds}


async def take(b: ZfsBackend, path: Path, cid: str, n: int, refs: dict[str, str]) -> None:
    write_state(path, n)
    facts = await b.create(cid, f"s{n}", None, None)
    refs[facts.name] = facts.ref


async def restore(b: ZfsBackend, cid: str, name: str, refs: dict[str, str]) -> None:
    others = [SnapshotRef(n, r) for n, r in refs.items() if n != name]
    refs.update(await b.restore(cid, SnapshotRef(name, refs[name]), others))
    listed = (await b.list(cid))[cid]
    assert refs_of(listed) == refs, "RefUpdates must match what list() reports"


@pytest.mark.parametrize("order", list(itertools.permutations(["s1", "s2", "s3"])),
                         ids=lambda o: "-".join(o))
async def test_restore_chain_then_delete(harness, backend, order):
    cid = new_cid()
    path = harness.make_container(cid)
    refs: dict[str, str] = {}
    for n in (1, 2, 3):
        await take(backend, path, cid, n, refs)
    write_state(path, 4)  # unsnapshotted: discarded by restore

    for name, step in (("s1", 1), ("s3", 3), ("s2", 2)):
        await restore(backend, cid, name, refs)
        check_state(harness.container_path(cid), step)
        assert set(refs) == {"s1", "s2", "s3"}
        check_artifacts(harness, cid, refs)

    path = harness.container_path(cid)
    (path / "after").write_text("kept")
    for name in order:
        result = await backend.delete(cid, [SnapshotRef(name, refs.pop(name))])
        assert result == {name: None}
        assert refs_of((await backend.list(cid))[cid]) == refs
        assert (path / "v").read_text() == "2" and (path / "after").read_text() == "kept"
        check_artifacts(harness, cid, refs)
        if refs:  # every remaining snapshot still restores to its content
            last = max(refs)
            await restore(backend, cid, last, refs)
            check_state(harness.container_path(cid), int(last[1]))
            (harness.container_path(cid) / "v").write_text("2")
            (harness.container_path(cid) / "after").write_text("kept")
    assert harness.artifacts() >= {harness.dataset(cid)}


async def test_restore_newest_is_plain_rollback(harness, backend):
    cid = new_cid()
    path = harness.make_container(cid)
    refs: dict[str, str] = {}
    await take(backend, path, cid, 1, refs)
    await take(backend, path, cid, 2, refs)
    write_state(path, 3)
    backend.stats.reset()
    await restore(backend, cid, "s2", refs)
    assert backend.stats.count("zfs rollback") == 1
    assert backend.stats.count("zfs clone") == 0
    check_state(harness.container_path(cid), 2)


async def test_project_and_mountpoint_survive_restore(harness, backend):
    cid = new_cid()
    harness.make_container(cid)
    mnt = harness.workdir / f"custom-{cid}"
    zfs("set", f"mountpoint={mnt}", harness.dataset(cid))
    assert await backend.get_project(cid) is None
    await backend.set_project(cid, "proj-1")
    refs: dict[str, str] = {}
    for n in (1, 2, 3):
        await take(backend, mnt, cid, n, refs)
    for name, step in (("s1", 1), ("s3", 3)):
        await restore(backend, cid, name, refs)
        assert await backend.get_project(cid) == "proj-1"
        p = harness.props([harness.dataset(cid)], f"mountpoint,mounted,canmount,{PROJECT_PROPERTY}")
        assert p[harness.dataset(cid)]["mountpoint"] == str(mnt)
        assert p[harness.dataset(cid)]["mounted"] == "yes"
        assert p[harness.dataset(cid)]["canmount"] == "on"
        check_state(mnt, step)
    await backend.set_project(cid, None)
    assert await backend.get_project(cid) is None


async def test_metadata_mirrored_and_rebuilt(harness, backend):
    cid = new_cid()
    harness.make_container(cid)
    exp = time.time() + 86400.5
    a = await backend.create(cid, "a", "weird\talias ✓", exp)
    b = await backend.create(cid, "b", "plain", None)
    await backend.create(cid, "c", None, None)
    await backend.set_alias(cid, SnapshotRef("b", b.ref), "renamed")
    await backend.set_alias(cid, SnapshotRef("a", a.ref), None)
    await backend.set_alias(cid, SnapshotRef("a", a.ref), "weird\talias ✓")
    zfs("snapshot", f"{harness.dataset(cid)}@foreign")

    fresh = ZfsBackend(harness.root)  # as if the store were lost
    await fresh.open()
    facts = {f.name: f for f in (await fresh.list(cid))[cid]}
    assert set(facts) == {"a", "b", "c", "foreign"}
    assert facts["a"].alias == "weird\talias ✓" and facts["a"].expires_at == exp
    assert abs(facts["a"].created_at - a.created_at) < 1e-3
    assert facts["b"].alias == "renamed" and facts["b"].expires_at is None
    assert facts["c"].alias is None and facts["c"].mirrored
    assert not facts["foreign"].mirrored and facts["foreign"].created_at > 0
    assert all(f.size is not None and f.size >= 0 for f in facts.values())
    whole = await fresh.list()
    assert cid in whole and {f.name for f in whole[cid]} == set(facts)
    with pytest.raises(SnapshotNotFound):
        await fresh.set_alias(cid, SnapshotRef("nope"), "x")


async def test_bulk_delete_and_batched_sizes(harness, backend):
    cid = new_cid()
    path = harness.make_container(cid)
    names = [f"n{i:03d}" for i in range(200)]
    for i, name in enumerate(names):
        if i % 50 == 0:
            (path / f"f{i}").write_bytes(os.urandom(200_000))
        await backend.create(cid, name, None, None)
    backend.stats.reset()
    sizes = await backend.sizes(cid, names)
    await backend.sizes(cid, names[:3])
    assert set(sizes) == set(names)
    assert backend.stats.count() == 1, backend.stats.as_dict()  # one zfs get, then cached

    backend.stats.reset()
    result = await backend.delete(cid, [SnapshotRef(n) for n in names] + [SnapshotRef("gone")])
    assert result == dict.fromkeys([*names, "gone"])
    destroys = backend.stats.count("zfs destroy")
    others = backend.stats.count() - destroys
    if backend.multi_destroy:  # OpenZFS: `zfs destroy ds@a,b,c`
        assert destroys <= 3
    else:  # zfs-fuse has no comma form: one process per snapshot
        assert destroys == 200
    assert others <= 5, backend.stats.as_dict()
    assert (await backend.list(cid))[cid] == []


async def test_container_checks_and_free_space(harness, backend):
    cid = new_cid()
    assert not await backend.container_exists(cid)
    harness.make_container(cid)
    assert await backend.container_exists(cid)
    assert not await backend.container_exists(HIDDEN)
    assert not await backend.container_exists("zz" * 12)
    assert (await backend.free_bytes() or 0) > 0
    # ZFS makes objects on demand; statvfs's count is free bytes / 512: no inode limit to keep
    assert await backend.free_inodes() is None and await backend.total_inodes() is None


async def test_projects_in_one_read(harness, backend):
    a, b = new_cid(), new_cid()
    harness.make_container(a)
    harness.make_container(b)
    await backend.set_project(a, "web")
    before = backend.stats.count("zfs get")
    assert await backend.projects([a, b, new_cid()]) == {a: "web", b: None}
    assert backend.stats.count("zfs get") == before + 1


async def test_bad_root_is_pool_error(harness):
    for root in (f"{harness.root}/missing", f"/{harness.root}", "nosuchpool_xyz/c"):
        with pytest.raises(PoolError):
            await ZfsBackend(root).open()


async def test_open_repairs_interrupted_restore(harness, backend):
    cid = new_cid()
    path = harness.make_container(cid)
    refs: dict[str, str] = {}
    for n in (1, 2):
        await take(backend, path, cid, n, refs)
    ds = harness.dataset(cid)
    temp = f"{harness.root}/{HIDDEN}/{cid}.restoring"

    # crash after clone + promote: undone
    zfs("clone", f"{ds}@s1", temp)
    zfs("promote", temp)
    await backend.open()
    assert harness.artifacts() >= {ds, f"{ds}@s1", f"{ds}@s2"} and temp not in harness.artifacts()
    check_state(path, 2)

    # crash after the container was renamed away: completed
    zfs("clone", f"{ds}@s1", temp)
    zfs("promote", temp)
    zfs("set", "canmount=off", ds)
    zfs("rename", ds, f"{harness.root}/{HIDDEN}/{cid}-1")
    await backend.open()
    assert harness.container_path(cid) == path
    check_state(path, 1)
    listed = refs_of((await backend.list(cid))[cid])
    assert set(listed) == {"s1", "s2"}
    check_artifacts(harness, cid, listed)


async def test_one_probe_answers_exists_and_project(harness, backend):
    """The service asks container_exists + get_project per request: one `zfs get`, reused."""
    cid = new_cid()
    harness.make_container(cid)
    await backend.set_project(cid, "p1")
    backend.stats.reset()
    for _ in range(5):
        assert await backend.container_exists(cid)
        assert await backend.get_project(cid) == "p1"
    assert backend.stats.count() == 1, backend.stats.as_dict()
    await backend.set_project(cid, "p2")  # a change through the daemon shows at once
    assert await backend.get_project(cid) == "p2"
    await backend.set_project(cid, None)
    assert await backend.get_project(cid) is None
    missing = new_cid()
    assert not await backend.container_exists(missing)
    harness.make_container(missing)  # negative answers are not cached
    assert await backend.container_exists(missing)


async def test_create_keeps_size_cache_and_mirrors_given_time(harness, backend):
    cid = new_cid()
    path = harness.make_container(cid)
    (path / "f").write_bytes(os.urandom(100_000))
    await backend.create(cid, "a", None, None)
    await backend.sizes(cid, ["a"])  # fills the cache
    backend.stats.reset()
    facts = await backend.create(cid, "b", "x", None, created_at=1_700_000_000.123)
    assert facts.created_at == 1_700_000_000.123
    sizes = await backend.sizes(cid, ["a", "b"])
    assert sizes == {"a": sizes["a"], "b": 0}
    assert backend.stats.count() == 1, backend.stats.as_dict()  # the snapshot only
    fresh = ZfsBackend(harness.root)
    await fresh.open()
    listed = {f.name: f for f in (await fresh.list(cid))[cid]}
    assert listed["b"].created_at == 1_700_000_000.123 and listed["b"].size == 0
    assert listed["a"].size == sizes["a"]


async def test_delete_without_holders_is_scan_plus_destroy(harness, backend):
    cid = new_cid()
    harness.make_container(cid)
    for n in ("a", "b"):
        await backend.create(cid, n, None, None)
    backend.stats.reset()
    assert await backend.delete(cid, [SnapshotRef("a")]) == {"a": None}
    assert backend.stats.as_dict().keys() == {"zfs get", "zfs destroy"}
    assert backend.stats.count() == 2, backend.stats.as_dict()


async def test_snapshot_files_are_read_through_the_snapshot_directory_or_refused(backend, harness):
    """`.zfs/snapshot/<name>` where ZFS shows it; where it does not (zfs-fuse) ContainerBusy,
    with nothing mounted or made (a clone mounted for the read hangs zfs-fuse when it is
    unmounted, now and then)."""
    cid = new_cid()
    harness.make_container(cid)
    snap = await backend.create(cid, "a", None, None)
    on_disk, mounted = harness.artifacts(), Path("/proc/self/mountinfo").read_text()
    if harness.snapdir:
        async with backend.snapshot_root(cid, SnapshotRef("a", snap.ref)) as root:
            assert root.path.endswith("/.zfs/snapshot/a")
        return
    with pytest.raises(ContainerBusy, match=r"\.zfs/snapshot"):
        async with backend.snapshot_root(cid, SnapshotRef("a", snap.ref)):
            pass
    assert harness.artifacts() == on_disk
    assert Path("/proc/self/mountinfo").read_text() == mounted


async def test_a_files_clone_an_earlier_version_left_is_swept(backend, harness):
    """Earlier versions mounted a read-only clone to read a snapshot's files; one left by a
    crash is destroyed by the sweep at start-up."""
    cid = new_cid()
    harness.make_container(cid)
    await backend.create(cid, "a", None, None)
    left = f"{harness.root}/{HIDDEN}/{cid}.files-0123abcd"
    zfs("clone", "-o", "readonly=on", "-o", "mountpoint=none", f"{harness.dataset(cid)}@a", left)
    assert left in harness.artifacts()
    await backend.sweep()
    assert left not in harness.artifacts() and not backend.problems
