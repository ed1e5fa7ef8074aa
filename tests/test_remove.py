"""The one tree remover (backends/remove.py) on real trees: depth, mounts, symlinks, modes."""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import remove
from backends.base import BackendError, TreeHasMounts
from backends.remove import remove_tree, sweep_scratch

from .digest import tree_digest, write_tree
from .mounts import Mounts, deep_tree, tree_depth
from .rootfs import require_root

DEPTH = 10_000


@pytest.fixture
def low_fd_limit() -> Iterator[None]:
    """The default soft limit of 1024 descriptors, whatever this shell allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A tree outside everything removed; it must come out unchanged."""
    root = tmp_path / "canary"
    write_tree(root, {"keep.txt": "precious", "sub/deeper/data.bin": "\0" * 100})
    before = tree_digest(root)
    yield root
    assert tree_digest(root) == before


def test_a_10000_deep_tree_is_removed_within_1024_descriptors(tmp_path: Path, low_fd_limit: None) -> None:
    deep_tree(tmp_path / "t", DEPTH)
    assert tree_depth(tmp_path / "t") == DEPTH
    remove_tree(tmp_path / "t")
    assert not os.path.lexists(tmp_path / "t")


def test_symlinks_are_removed_never_followed(tmp_path: Path, canary: Path) -> None:
    t = tmp_path / "t"
    write_tree(t, {"a/file": "x"})
    os.symlink(canary, t / "to-canary")
    os.symlink(canary / "keep.txt", t / "a" / "to-file")
    os.symlink("../../..", t / "a" / "up")
    remove_tree(t)
    assert not os.path.lexists(t)
    os.symlink(canary, tmp_path / "link")  # the root itself a symlink: only the link goes
    remove_tree(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "link") and canary.is_dir()


def test_unreadable_and_unwritable_directories_are_removed(tmp_path: Path) -> None:
    t = tmp_path / "t"
    write_tree(t, {"closed/inner/file": "x", "readonly/file": "y", "file": "z"})
    os.chmod(t / "closed" / "inner", 0)
    os.chmod(t / "closed", 0)
    os.chmod(t / "readonly", 0o500)
    os.chmod(t / "file", 0)
    remove_tree(t)
    assert not os.path.lexists(t)


def test_a_daemon_that_is_not_root_removes_unreadable_directories_it_owns() -> None:
    """`snapd serve --dev`: a snapshot copies a container's mode-000 and read-only directories."""
    require_root()
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="snapd-remove-", dir="/tmp"))
    try:
        os.chown(base, nobody, nobody)
        t = base / "t"
        write_tree(t, {"closed/inner/file": "x", "readonly/file": "y"})
        for dirpath, dirnames, filenames in os.walk(t):
            for n in [dirpath, *(os.path.join(dirpath, f) for f in dirnames + filenames)]:
                os.chown(n, nobody, nobody)
        os.chmod(t / "closed" / "inner", 0)
        os.chmod(t / "closed", 0)
        os.chmod(t / "readonly", 0o500)
        pid = os.fork()  # (this interpreter is not reachable by nobody: fork, then drop root)
        if pid == 0:
            code = 1
            try:
                os.setgroups([])
                os.setresgid(nobody, nobody, nobody)
                os.setresuid(nobody, nobody, nobody)
                remove_tree(t)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not os.path.lexists(t)
    finally:
        shutil.rmtree(base)


def test_a_missing_tree_is_not_an_error(tmp_path: Path) -> None:
    remove_tree(tmp_path / "absent")


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
@pytest.mark.parametrize("found_by", ["mount table", "mount id", "mount table fallback"])
def test_a_mount_inside_is_left_whole_and_named(
    tmp_path: Path, canary: Path, monkeypatch: pytest.MonkeyPatch, kind: str, found_by: str,
) -> None:
    """Nothing inside a mount is deleted, whether it is a tmpfs or a bind mount of the same
    filesystem (same st_dev: only the mount id tells it apart), found before the walk
    (mount table) or during it (statx mount id, or the table when statx cannot say)."""
    require_root()
    t = tmp_path / "t"
    write_tree(t, {"a/b/file": "x", "c/file": "y"})
    if found_by != "mount table":  # make the up-front check miss it: the walk must catch it
        monkeypatch.setattr(remove, "mounts_under", lambda path, table=None: [])
    if found_by == "mount table fallback":
        monkeypatch.setattr(remove, "_statx_usable", False)
    with Mounts() as m:
        if kind == "tmpfs":
            m.tmpfs(t / "a" / "b" / "vol", {"inside.txt": "kept", "d/e": "kept too"})
        else:
            m.bind(canary, t / "c" / "vol")
        mount_point = t / ("a/b/vol" if kind == "tmpfs" else "c/vol")
        before = tree_digest(mount_point)
        with pytest.raises(TreeHasMounts) as caught:
            remove_tree(t)
        assert isinstance(caught.value, BackendError)
        assert caught.value.paths() == [str(mount_point)]
        assert str(mount_point) in str(caught.value)
        assert tree_digest(mount_point) == before
        assert str(mount_point) in remove.mount_points()  # (ismount misses same-fs binds)
    remove_tree(t)  # unmounted: now it all goes
    assert not os.path.lexists(t)


def test_every_mount_inside_is_reported(tmp_path: Path, canary: Path) -> None:
    require_root()
    t = tmp_path / "t"
    write_tree(t, {"x/file": "x"})
    with Mounts() as m:
        m.tmpfs(t / "one")
        m.bind(canary, t / "x" / "two")
        with pytest.raises(TreeHasMounts) as caught:
            remove_tree(t)
        assert sorted(caught.value.paths()) == [str(t / "one"), str(t / "x" / "two")]
        assert (t / "x" / "file").exists()  # found up front: nothing at all was removed


def test_the_sweep_quarantines_what_it_cannot_remove_and_retries_it(tmp_path: Path, low_fd_limit: None) -> None:
    require_root()
    scratch, quarantine = tmp_path / "tmp", tmp_path / "quarantine"
    write_tree(scratch, {"fine/file": "x", "mounted/file": "y"})
    deep_tree(scratch / "deep", DEPTH)
    with Mounts() as m:
        m.tmpfs(scratch / "mounted" / "vol", {"data": "kept"})
        problems = sweep_scratch(str(scratch), str(quarantine))
        assert os.listdir(scratch) == []
        assert os.listdir(quarantine) == ["mounted"]
        assert (quarantine / "mounted" / "vol" / "data").read_text() == "kept"
        assert len(problems) == 1 and "mounted" in problems[0] and "mount point" in problems[0]
        again = sweep_scratch(str(scratch), str(quarantine))
        assert len(again) == 1 and "quarantine" in again[0]
    assert sweep_scratch(str(scratch), str(quarantine)) == []
    assert os.listdir(quarantine) == []
