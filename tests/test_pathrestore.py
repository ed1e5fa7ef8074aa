"""restore-paths on a filesystem without renameat2's flags (zfs-fuse answers EINVAL): the swap
takes two renames, and a crash between them is undone by the sweep (the path as it was)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backends import fsops, pathrestore
from backends.base import TreeRoot

from .digest import walk_digest, write_tree

TOKEN = "0123456789ab"


@contextmanager
def root(path: Path) -> Iterator[TreeRoot]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield TreeRoot(fd, str(path))
    finally:
        os.close(fd)


@pytest.fixture
def no_rename_flags(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """renameat2 with flags fails as on zfs-fuse; the flags asked for, in order."""
    asked: list[int] = []

    def refuse(dir_fd: int, old: bytes, new: bytes, flags: int) -> None:
        asked.append(flags)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(fsops, "rename_in", refuse)
    return asked


async def no_busy() -> None:
    return None


def trees(tmp_path: Path) -> tuple[Path, Path]:
    snap, live = tmp_path / "snap", tmp_path / "live"
    write_tree(snap, {"etc/nginx/nginx.conf": "good\n", "etc/nginx/sites/a": "a\n", "etc/motd": "hello\n"})
    write_tree(live, {"etc/nginx/nginx.conf": "broken\n", "etc/nginx/extra": "x\n", "etc/other": "keep\n"})
    return snap, live


async def test_without_rename_flags_each_path_is_swapped_in_two_renames(tmp_path: Path,
                                                                       no_rename_flags: list[int]) -> None:
    snap, live = trees(tmp_path)
    with root(snap) as src, root(live) as dst:
        done = await pathrestore.restore(src, dst, [(b"etc", b"nginx"), (b"etc", b"motd")], TOKEN, no_busy)
    assert no_rename_flags == [fsops.RENAME_EXCHANGE, fsops.RENAME_NOREPLACE]
    assert [(d["path"], d["replaced"]) for d in done] == [("/etc/nginx", True), ("/etc/motd", False)]
    assert walk_digest(live / "etc" / "nginx") == walk_digest(snap / "etc" / "nginx")
    assert (live / "etc" / "motd").read_text() == "hello\n"
    assert (live / "etc" / "other").read_text() == "keep\n"
    assert sorted(os.listdir(live / "etc")) == ["motd", "nginx", "other"]  # no temporary left


async def test_a_crash_between_the_two_renames_is_undone_by_the_sweep(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      no_rename_flags: list[int]) -> None:
    snap, live = trees(tmp_path)
    before = walk_digest(live / "etc" / "nginx")
    real = os.rename

    def die_after_aside(src: bytes, dst: bytes, **kw: int) -> None:
        real(src, dst, **kw)
        if dst.endswith(pathrestore.OLD):
            raise SystemExit("killed")  # as a crash: nothing after it runs

    monkeypatch.setattr(os, "rename", die_after_aside)
    monkeypatch.setattr(pathrestore, "_discard", lambda step: None)  # a crash cleans nothing up
    with root(snap) as src, root(live) as dst, pytest.raises(SystemExit):
        await pathrestore.restore(src, dst, [(b"etc", b"nginx")], TOKEN, no_busy)
    monkeypatch.setattr(os, "rename", real)
    assert not (live / "etc" / "nginx").exists()  # the crash left the path missing
    with root(live) as dst:
        await pathrestore.sweep(dst, ["/etc/nginx"], TOKEN)
    assert walk_digest(live / "etc" / "nginx") == before  # as it was
    assert sorted(os.listdir(live / "etc")) == ["nginx", "other"]


async def test_a_crash_after_both_renames_keeps_the_snapshots_version(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      no_rename_flags: list[int]) -> None:
    snap, live = trees(tmp_path)
    monkeypatch.setattr(pathrestore, "_discard", lambda step: None)
    with root(snap) as src, root(live) as dst:
        await pathrestore.restore(src, dst, [(b"etc", b"nginx")], TOKEN, no_busy)
    assert any(n.endswith("-old") for n in os.listdir(live / "etc"))  # the old entry, aside
    with root(live) as dst:
        await pathrestore.sweep(dst, ["/etc/nginx"], TOKEN)
    assert walk_digest(live / "etc" / "nginx") == walk_digest(snap / "etc" / "nginx")
    assert sorted(os.listdir(live / "etc")) == ["nginx", "other"]


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_temporary_swapped_for_a_symlink_while_built_passes_nothing_through_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The copy is built under its temporary name in a live directory the container writes
    to: a process there (started after the in-use check) can swap that name for a symlink to
    a host file between the copy's creation and its mode being set.  The snapshot's mode
    (here 0o4777) must never be set through it."""
    snap, live, outside = tmp_path / "snap", tmp_path / "live", tmp_path / "outside"
    snap.mkdir(), live.mkdir()
    outside.write_text("host secret")
    os.chmod(outside, 0o600)
    if kind == "file":
        (snap / "e").write_text("from the snapshot")
    else:
        os.mkfifo(snap / "e")
    os.chmod(snap / "e", 0o4777 if kind == "file" else 0o777)
    tmp = pathrestore.PREFIX + b"x-0"
    real_chown = os.chown

    def chown_then_swap(path, uid, gid, *, dir_fd=None, follow_symlinks=True):  # type: ignore[no-untyped-def]
        real_chown(path, uid, gid, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        if os.path.lexists(live / os.fsdecode(tmp)) and not os.path.islink(live / os.fsdecode(tmp)):
            os.unlink(live / os.fsdecode(tmp))  # the container's move, between the calls
            os.symlink(outside, live / os.fsdecode(tmp))

    real_fsync = os.fsync

    def fsync_then_swap(fd: int) -> None:
        real_fsync(fd)
        chown_then_swap(live / os.fsdecode(tmp), -1, -1, follow_symlinks=False)

    monkeypatch.setattr(os, "chown", chown_then_swap)
    monkeypatch.setattr(os, "fsync", fsync_then_swap)
    sp, dp = os.open(snap, os.O_RDONLY | os.O_DIRECTORY), os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        step = pathrestore._Step((b"e",), sp, dp, b"e", os.lstat(snap / "e"), tmp)
        try:
            pathrestore._build(step)
        except OSError:
            pass  # refusing is fine; passing the mode on is not
    finally:
        os.close(sp), os.close(dp)
    assert os.stat(outside).st_mode & 0o7777 == 0o600
    assert outside.read_text() == "host secret"
