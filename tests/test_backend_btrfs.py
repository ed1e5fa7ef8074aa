"""The btrfs backend against a real loop-mounted btrfs (no mocks)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import btrfs_ioctl as ioc
from backends import inuse
from backends.base import (
    ContainerBusy,
    ContainerNotFound,
    PoolError,
    SnapshotNotFound,
    SnapshotRef,
)
from backends.btrfs import BtrfsBackend, parse_du
from tests.digest import tree_digest
from tests.harness import new_cid
from tests.harness.btrfs import BtrfsHarness

MiB = 1 << 20


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BtrfsHarness]:
    reason = BtrfsHarness.unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"btrfs unavailable under CI: {reason}", pytrace=False)
        pytest.skip(f"btrfs unavailable: {reason}")
    h = BtrfsHarness(tmp_path_factory.mktemp("btrfs"))
    try:
        yield h
    finally:
        h.close()
        assert h.loop_devices() == []


@pytest.fixture
async def backend(fs: BtrfsHarness) -> BtrfsBackend:
    b = BtrfsBackend(str(fs.root))
    await b.open()
    return b


def digest(root: Path) -> dict[str, tuple]:
    """Paths, types, modes, owners and content hashes, plus the root's own mode."""
    return {".": os.lstat(root).st_mode, **tree_digest(root)}


def populate(c: Path, version: int) -> None:
    (c / "etc").mkdir(exist_ok=True)
    (c / "etc" / "version").write_text(f"v{version}\n")
    (c / f"only-v{version}").write_bytes(os.urandom(4096))
    os.chmod(c / "etc", 0o755 if version % 2 else 0o700)
    link = c / "link"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"etc/version-{version}")
    if version > 1 and (c / f"only-v{version - 1}").exists():
        (c / f"only-v{version - 1}").unlink()


async def test_open_rejects_missing_root(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="does not exist"):
        await BtrfsBackend(str(tmp_path / "nope")).open()


async def test_open_rejects_non_btrfs_root(tmp_path: Path) -> None:
    if ioc.is_btrfs(str(tmp_path)):
        pytest.skip("the temp directory is itself on btrfs")
    with pytest.raises(PoolError, match="not on btrfs"):
        await BtrfsBackend(str(tmp_path)).open()


async def test_plain_directory_is_not_a_container(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    cid = new_cid()
    (fs.root / cid).mkdir()
    assert not await backend.container_exists(cid)
    link = new_cid()
    os.symlink(fs.make_container(new_cid()), fs.root / link)
    assert not await backend.container_exists(link)
    assert not await backend.container_exists("not-an-id")
    assert not await backend.container_exists(new_cid())
    with pytest.raises(ContainerNotFound):
        await backend.create(cid, "s1", None, None)
    with pytest.raises(ContainerNotFound):
        await backend.get_project(cid)


async def test_create_list_delete(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    cid = new_cid()
    c = fs.make_container(cid)
    assert await backend.container_exists(cid)
    populate(c, 1)
    before = time.time()
    s1 = await backend.create(cid, "snap-1", None, None)
    s2 = await backend.create(cid, "snap-2", None, None)
    assert s1.ref == f".snapshots/{cid}/snap-1"
    assert before - 2 < s1.created_at <= s2.created_at < time.time() + 2
    snap = fs.root / s1.ref
    assert digest(snap) == digest(c)
    with pytest.raises(OSError) as e:
        (snap / "new").write_text("x")
    assert e.value.errno == errno.EROFS

    listed = await backend.list(cid)
    assert [f.name for f in listed[cid]] == ["snap-2", "snap-1"]
    assert listed[cid][1].created_at == pytest.approx(s1.created_at, abs=1e-6)
    assert cid in await backend.list()
    assert fs.artifacts() >= {cid, s1.ref, s2.ref}

    with pytest.raises(Exception, match="already exists"):
        await backend.create(cid, "snap-1", None, None)

    res = await backend.delete(cid, [SnapshotRef("snap-1", s1.ref), SnapshotRef("gone")])
    assert res == {"snap-1": None, "gone": None}
    assert [f.name for f in (await backend.list(cid))[cid]] == ["snap-2"]
    assert await backend.delete(cid, [SnapshotRef("snap-2")]) == {"snap-2": None}
    assert await backend.list(cid) == {}
    assert {a for a in fs.artifacts() if cid in a} == {cid}


async def test_restore_older_snapshot(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    cid = new_cid()
    c = fs.make_container(cid)
    digests = {}
    for v in (1, 2, 3):
        populate(c, v)
        digests[v] = digest(c)
        await backend.create(cid, f"s{v}", None, None)
    populate(c, 4)
    digests[4] = digest(c)
    assert len({repr(d) for d in digests.values()}) == 4
    artifacts = fs.artifacts()
    snap_infos = {}
    for v in (1, 2, 3):
        with ioc_fd(c.parent / ".snapshots" / cid / f"s{v}") as fd:
            snap_infos[v] = ioc.subvol_info(fd)
    listed = await backend.list(cid)

    others = [SnapshotRef("s2"), SnapshotRef("s3")]
    assert await backend.restore(cid, SnapshotRef("s1"), others) == {}
    assert digest(c) == digests[1]
    assert await backend.container_exists(cid)
    for v in (1, 2, 3):
        snap = fs.root / ".snapshots" / cid / f"s{v}"
        assert digest(snap) == digests[v], f"snapshot s{v} changed"
        with ioc_fd(snap) as fd:
            assert ioc.subvol_info(fd) == snap_infos[v]
    assert await backend.list(cid) == listed
    assert fs.artifacts() == artifacts  # nothing stray, nothing lost
    assert os.listdir(fs.root / ".snapshots" / ".tmp") == []

    # The restored container is writable and can be restored forward again.
    (c / "after").write_text("x")
    await backend.restore(cid, SnapshotRef("s3"), [])
    assert digest(c) == digests[3]
    assert fs.artifacts() == artifacts

    with pytest.raises(SnapshotNotFound):
        await backend.restore(cid, SnapshotRef("nope"), [])


async def test_project_label_survives_restore(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    cid = new_cid()
    fs.make_container(cid)
    assert await backend.get_project(cid) is None
    await backend.set_project(cid, "alpha")
    await backend.create(cid, "s1", None, None)  # the snapshot keeps "alpha"
    await backend.set_project(cid, "beta")
    await backend.restore(cid, SnapshotRef("s1"), [])
    assert await backend.get_project(cid) == "beta"
    await backend.set_project(cid, None)
    await backend.set_project(cid, None)  # removing twice is fine
    await backend.restore(cid, SnapshotRef("s1"), [])
    assert await backend.get_project(cid) is None


async def test_nested_subvolumes_refused(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    cid = new_cid()
    c = fs.make_container(cid)
    await backend.create(cid, "s1", None, None)
    (c / "var" / "lib").mkdir(parents=True)
    subprocess.run(["btrfs", "subvolume", "create", str(c / "var/lib/machines")],
                   check=True, capture_output=True)
    before = fs.artifacts()
    with pytest.raises(ContainerBusy, match="var/lib/machines") as e:
        await backend.create(cid, "s2", None, None)
    assert e.value.details
    with pytest.raises(ContainerBusy, match="nested subvolume"):
        await backend.restore(cid, SnapshotRef("s1"), [])
    assert fs.artifacts() == before
    assert (c / "var/lib/machines").is_dir()
    subprocess.run(["btrfs", "subvolume", "delete", str(c / "var/lib/machines")],
                   check=True, capture_output=True)
    await backend.create(cid, "s2", None, None)
    await backend.restore(cid, SnapshotRef("s1"), [])


async def test_restore_refuses_mounted_container(
    fs: BtrfsHarness, backend: BtrfsBackend, tmp_path: Path
) -> None:
    cid = new_cid()
    c = fs.make_container(cid)
    (c / "f").write_text("old")
    await backend.create(cid, "s1", None, None)
    (c / "f").write_text("new")
    run = tmp_path / "rootfs"
    run.mkdir()
    subprocess.run(["mount", "--bind", str(c), str(run)], check=True)
    try:
        with pytest.raises(ContainerBusy, match="mounted at"):
            await backend.restore(cid, SnapshotRef("s1"), [])
        assert (run / "f").read_text() == "new"
    finally:
        subprocess.run(["umount", str(run)], check=True)
    assert os.listdir(fs.root / ".snapshots" / ".tmp") == []
    await backend.restore(cid, SnapshotRef("s1"), [])
    assert (c / "f").read_text() == "old"


@pytest.mark.parametrize("use_ioctl", [True, False], ids=["ioctl", "command"])
async def test_delete_reports_failures(fs: BtrfsHarness, backend: BtrfsBackend,
                                       tmp_path: Path, use_ioctl: bool) -> None:
    """Both delete paths agree: a busy subvolume and a non-subvolume are errors (their
    rows kept), a missing name is already done."""
    backend.use_ioctl = use_ioctl
    cid = new_cid()
    fs.make_container(cid)
    await backend.create(cid, "busy", None, None)
    await backend.create(cid, "fine", None, None)
    (fs.root / ".snapshots" / cid / "plain").mkdir()
    busy = fs.root / ".snapshots" / cid / "busy"
    subprocess.run(["mount", "--bind", str(tmp_path), str(busy)], check=True)
    try:
        res = await backend.delete(
            cid, [SnapshotRef("busy"), SnapshotRef("fine"), SnapshotRef("plain")]
        )
    finally:
        subprocess.run(["umount", str(busy)], check=True)
    assert res["fine"] is None
    assert res["busy"] is not None and "busy" in str(res["busy"]).lower()
    assert res["plain"] is not None and "not a subvolume" in str(res["plain"])
    assert (fs.root / ".snapshots" / cid / "plain").is_dir()
    assert [f.name for f in (await backend.list(cid))[cid]] == ["busy"]
    assert await backend.delete(cid, [SnapshotRef("busy")]) == {"busy": None}


async def test_open_sweeps_leftovers(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    tmp = fs.root / ".snapshots" / ".tmp"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("btrfs", "subvolume", "create", str(tmp / f"restore-{new_cid()}-dead"))
    left = tmp / f"restore-{new_cid()}-beef"
    run("btrfs", "subvolume", "create", str(left))
    run("btrfs", "subvolume", "create", str(left / "nested"))
    (tmp / "junk").mkdir()
    await BtrfsBackend(str(fs.root)).open()
    assert os.listdir(tmp) == []
    assert not any(a.startswith(".snapshots/.tmp") for a in fs.artifacts())


async def test_command_fallback(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    backend.use_ioctl = False
    cid = new_cid()
    c = fs.make_container(cid)
    populate(c, 1)
    s = await backend.create(cid, "s1", None, None)
    assert s.created_at > 0 and digest(fs.root / s.ref) == digest(c)
    populate(c, 2)
    await backend.restore(cid, SnapshotRef("s1"), [])
    assert (c / "etc/version").read_text() == "v1\n"
    assert await backend.delete(cid, [SnapshotRef("s1"), SnapshotRef("s9")]) == {
        "s1": None, "s9": None,
    }
    assert {a for a in fs.artifacts() if cid in a} == {cid}


async def test_parallel_containers(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    cids = [new_cid() for _ in range(4)]
    for cid in cids:
        (fs.make_container(cid) / "f").write_text(cid)
    await asyncio.gather(*(backend.create(cid, "p", None, None) for cid in cids))
    listed = await backend.list()
    assert all([f.name for f in listed[cid]] == ["p"] for cid in cids)
    assert await backend.free_bytes() > 0
    assert await backend.free_inodes() is None  # btrfs: inodes are dynamic (f_files 0)


def rewrite(path: Path) -> None:
    """Rewrite a file's bytes in place: snapshots keep the old extents."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())


async def test_sizes_without_quotas_count_exclusive_extents(
    fs: BtrfsHarness, backend: BtrfsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not await backend.quotas_enabled()
    counted: list[list[str]] = []
    real_count = backend._count_exclusive

    async def spy(paths: list[str]) -> dict[str, int]:
        counted.append(sorted(os.path.basename(p) for p in paths))
        return await real_count(paths)

    monkeypatch.setattr(backend, "_count_exclusive", spy)
    cid = new_cid()
    data = fs.make_container(cid) / "data"
    data.write_bytes(os.urandom(10 * MiB))
    s1 = await backend.create(cid, "s1", None, None)
    assert s1.size == 0  # a quick, exact-at-that-instant estimate; no walk on create
    rewrite(data)
    await backend.create(cid, "s2", None, None)
    assert counted == []

    # list never counts: sizes are unknown to it, and nothing was walked
    assert [(f.name, f.size) for f in (await backend.list(cid))[cid]] == [("s2", None), ("s1", None)]
    assert counted == []

    sizes = await backend.sizes(cid, ["s1", "s2"])
    assert counted == [["s1", "s2"]]  # both, in one process
    assert 9.5 * MiB <= sizes["s1"] <= 10.5 * MiB, sizes
    assert sizes["s2"] < MiB, sizes  # shares everything with the container

    # Just the snapshots asked for (the service names a create's or delete's neighbours).
    rewrite(data)
    await backend.create(cid, "s3", None, None)
    sizes = await backend.sizes(cid, ["s2"])
    assert counted[-1] == ["s2"] and sizes.keys() == {"s2"}
    assert 9.5 * MiB <= sizes["s2"] <= 10.5 * MiB, sizes

    # A snapshot gone meanwhile is left out.
    assert await backend.delete(cid, [SnapshotRef("s2")]) == {"s2": None}
    sizes = await backend.sizes(cid, ["s1", "s2", "s3"])
    assert sizes.keys() == {"s1", "s3"}
    assert 9.5 * MiB <= sizes["s1"] <= 10.5 * MiB and sizes["s3"] < MiB, sizes


def test_parse_du_checks_fields(caplog: pytest.LogCaptureFixture) -> None:
    text = (
        "     Total   Exclusive  Set shared  Filename\n"
        "  10485760    10485760           0  /p/a\n"
        "  10485760           0           -  /p/b\n"
        "  garbage line\n"
        "  12 x 0  /p/c\n"
        "  5 5 0  /p/other\n"
    )
    assert parse_du(text, ["/p/a", "/p/b", "/p/c"]) == {"/p/a": 10 * MiB, "/p/b": 0}
    assert "unexpected line" in caplog.text


async def test_sizes_with_quotas(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    cid = new_cid()
    data = fs.make_container(cid) / "data"
    data.write_bytes(os.urandom(10 * MiB))
    fs.enable_quotas()
    try:
        s1 = await backend.create(cid, "s1", None, None)
        assert s1.size is not None and s1.size < MiB
        rewrite(data)
        fs.sync()
        sizes = await backend.sizes(cid, ["s1"])
        assert 9.5 * MiB <= sizes["s1"] <= 11 * MiB, sizes
        listed = {f.name: f.size for f in (await backend.list(cid))[cid]}
        assert listed["s1"] == sizes["s1"]
        assert await backend.quotas_enabled()
    finally:
        fs.disable_quotas()


async def test_restore_refuses_a_held_container(fs: BtrfsHarness, backend: BtrfsBackend) -> None:
    cid = new_cid()
    c = fs.make_container(cid)
    (c / "sub").mkdir()
    (c / "f").write_text("old")
    await backend.create(cid, "s1", None, None)
    (c / "f").write_text("new")
    # cwd inside the container (also covers a process in another mount namespace:
    # the check compares device numbers, not paths)
    child = subprocess.Popen(["sleep", "60"], cwd=c / "sub")
    try:
        found = inuse.holders(str(c))
        assert [h["pid"] for h in found] == [child.pid], found
        assert found[0]["command"] == "sleep" and "cwd" in found[0]["reason"]
        with pytest.raises(ContainerBusy, match=rf"pid {child.pid} \(sleep\)") as e:
            await backend.restore(cid, SnapshotRef("s1"), [])
        assert e.value.details[0]["value"] == str(child.pid)
        assert (c / "f").read_text() == "new"
    finally:
        child.kill()
        child.wait()
    assert os.listdir(fs.root / ".snapshots" / ".tmp") == []

    # an open file (not cwd) counts as well
    with open(c / "f") as held:
        opener = subprocess.Popen(["sleep", "60"], stdin=held)
    try:
        found = inuse.holders(str(c))
        assert [(h["pid"], h["reason"]) for h in found] == [(opener.pid, "open file fd 0")]
    finally:
        opener.kill()
        opener.wait()

    # a mapped file whose fd is closed, held by a process living elsewhere
    (c / "blob").write_bytes(b"x" * 4096)
    mapper = subprocess.Popen(
        [sys.executable, "-c", MAP_AND_CLOSE, str(c / "blob")],
        cwd="/", stdout=subprocess.PIPE, text=True,
    )
    try:
        assert mapper.stdout.readline() == "mapped\n"
        found = inuse.holders(str(c))
        assert [(h["pid"], h["reason"]) for h in found] == [(mapper.pid, "mapped file")]
    finally:
        mapper.kill()
        mapper.wait()
        mapper.stdout.close()

    assert inuse.holders(str(c)) == []
    await backend.restore(cid, SnapshotRef("s1"), [])
    assert (c / "f").read_text() == "old"


async def test_a_restore_scans_for_holders_once(fs: BtrfsHarness, backend: BtrfsBackend,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cid = new_cid()
    c = fs.make_container(cid)
    (c / "f").write_text("old")
    await backend.create(cid, "s1", None, None)
    (c / "f").write_text("new")
    scanned: list[str] = []
    real = inuse.holders

    def spy(path: str, **kw: object) -> list[dict]:
        scanned.append(path)
        return real(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(inuse, "holders", spy)
    await backend.restore(cid, SnapshotRef("s1"), [])
    assert scanned == [str(c)] and (c / "f").read_text() == "old"


MAP_AND_CLOSE = (  # mmap a file, close its fd, keep the mapping
    "import ctypes, os, sys, time\n"
    "libc = ctypes.CDLL(None, use_errno=True); libc.mmap.restype = ctypes.c_void_p\n"
    "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,"
    " ctypes.c_int, ctypes.c_long]\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "assert libc.mmap(None, 4096, 1, 1, fd, 0) not in (None, ctypes.c_void_p(-1).value)\n"
    "os.close(fd); print('mapped', flush=True); time.sleep(60)"
)


def test_holders_of_a_plain_directory(tmp_path: Path) -> None:
    """Directories sharing their parent's device (overlay pools) are matched by ancestry."""
    inside, outside = tmp_path / "c" / "deep", tmp_path / "other"
    inside.mkdir(parents=True)
    outside.mkdir()
    kids = [subprocess.Popen(["sleep", "60"], cwd=d) for d in (inside, outside)]
    try:
        assert [h["pid"] for h in inuse.holders(str(tmp_path / "c"))] == [kids[0].pid]
    finally:
        for k in kids:
            k.kill()
            k.wait()
    assert inuse.holders(str(tmp_path / "c")) == []


class ioc_fd:
    def __init__(self, path: Path) -> None:
        self.fd = ioc.open_dir(str(path))

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
