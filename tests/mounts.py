"""Real mounts and deep trees for tests, always cleaned up.

`Mounts` remembers each mount by its mount id, so it unmounts it wherever
the mount point has been moved since (a snapshot renamed into scratch and
back, a tree quarantined).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import TracebackType

from backends.remove import unescape


def _mountinfo() -> dict[int, str]:
    """Mount id -> mount point, in this mount namespace."""
    out: dict[int, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split(" ")
            out[int(parts[0])] = unescape(parts[4])
    return out


def _mount_id(path: Path) -> int | None:
    """The mount id of the mount `path` is on, straight from the table (not via statx,
    which a test may have switched off)."""
    real = os.path.realpath(path)
    ids = [i for i, point in _mountinfo().items() if point == real]
    return max(ids) if ids else None  # the topmost of mounts stacked there


class Mounts:
    """Mount real filesystems for a test; `with Mounts() as m:` unmounts them all on exit."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def tmpfs(self, target: Path, files: dict[str, str] | None = None) -> Path:
        """A small tmpfs on `target` (created), holding `files`."""
        return self._mount(target, ["-t", "tmpfs", "-o", "size=4m", "snapd-test-mount"], files)

    def bind(self, source: Path, target: Path) -> Path:
        """A bind mount of directory `source` on `target` (created)."""
        return self._mount(target, ["--bind", str(source)], None)

    def _mount(self, target: Path, args: list[str], files: dict[str, str] | None) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        mnt = _mount_id(target)
        if mnt is None:
            subprocess.run(["umount", str(target)], check=True, capture_output=True)
            raise AssertionError("the kernel gives no mount ids (statx STATX_MNT_ID)")
        self.ids.append(mnt)
        for rel, text in (files or {}).items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_text(text)
        return target

    def unmount_all(self) -> None:
        for i in reversed(self.ids):
            point = _mountinfo().get(i)
            if point is not None:
                subprocess.run(["umount", point], check=True, capture_output=True)
        self.ids.clear()

    def __enter__(self) -> Mounts:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.unmount_all()


def deep_tree(root: Path, depth: int, *, name: str = "d") -> None:
    """`depth` nested directories under `root` (created), a small file in each: made through
    directory descriptors, since the deepest paths are far beyond PATH_MAX."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir(name, dir_fd=fd)
            f = os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
            os.write(f, str(level).encode())
            os.close(f)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def tree_depth(root: Path, *, name: str = "d") -> int:
    """How many levels of `name` directories are under `root` (through descriptors)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        while True:
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                return depth
            os.close(fd)
            fd = child
            depth += 1
    finally:
        os.close(fd)
