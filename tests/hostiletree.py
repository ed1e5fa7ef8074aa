"""Trees a hostile container can hold: deeper than PATH_MAX and than the
descriptor limit (built and removed one directory descriptor at a time,
without recursion), and entries that change while they are copied."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backends import treecopy

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def build_deep(root: Path, depth: int, name: bytes = b"d", *, every: int = 1000) -> None:
    """`root`/name/name/... `depth` levels; every `every` levels a file and a symlink,
    and at the bottom a file, a hard-link pair and a hard-linked symlink pair."""
    os.mkdir(root)
    fd = os.open(root, _DIR)
    try:
        for level in range(1, depth + 1):
            os.mkdir(name, 0o755, dir_fd=fd)
            child = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
            if level % every == 0:
                _write(fd, b"level", b"%d\n" % level)
                os.symlink(b"../" * 3 + b"level", b"up", dir_fd=fd)
        _write(fd, b"leaf", b"bottom\n")
        _write(fd, b"a", b"linked twice\n")
        os.link(b"a", b"b", src_dir_fd=fd, dst_dir_fd=fd)
        os.symlink(b"a", b"s1", dir_fd=fd)
        os.link(b"s1", b"s2", src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def bottom(root: Path, name: bytes = b"d") -> tuple[int, int]:
    """A descriptor of the deepest `name` directory under `root` (caller closes), and its depth."""
    fd = os.open(root, _DIR)
    depth = 0
    while True:
        try:
            child = os.open(name, _DIR, dir_fd=fd)
        except FileNotFoundError:
            return fd, depth
        os.close(fd)
        fd, depth = child, depth + 1


def remove_deep(root: Path) -> None:
    """Remove the tree at `root` (no mounts inside), whatever its depth."""
    if not os.path.lexists(root):
        return
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        os.unlink(root)
        return
    fd = os.open(root, _DIR)
    names: list[bytes] = []
    try:
        while True:
            sub = None
            for entry in os.scandir(fd):
                if entry.is_dir(follow_symlinks=False):
                    sub = os.fsencode(entry.name)
                    break
                os.unlink(entry.name, dir_fd=fd)
            if sub is not None:
                child = os.open(sub, _DIR, dir_fd=fd)
                os.close(fd)
                fd = child
                names.append(sub)
                continue
            if not names:
                break
            parent = os.open(b"..", _DIR, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(root)


def _write(dir_fd: int, name: bytes, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def flip_on_every_visit(monkeypatch: pytest.MonkeyPatch, src: Path, times: int) -> list[int]:
    """Make `src`/flip change type (dir <-> file) each time the copier turns to it, `times` times.

    Returns a one-item list counting the flips made.
    """
    calls = [0]

    def flip() -> None:
        if calls[0] >= times:
            return
        calls[0] += 1
        target = src / "flip"
        if target.is_dir():
            (target / "inside").unlink()
            target.rmdir()
            target.write_text("now a file")
        else:
            target.unlink()
            target.mkdir()
            (target / "inside").write_text("now a dir")

    for method in ("_enter_dir", "_copy_regular"):
        original = getattr(treecopy._Copier, method)

        def wrapped(self, d, name, *args, _original=original):  # type: ignore[no-untyped-def]
            if name == b"flip":
                flip()
            return _original(self, d, name, *args)

        monkeypatch.setattr(treecopy._Copier, method, wrapped)
    return calls
