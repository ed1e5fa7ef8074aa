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
