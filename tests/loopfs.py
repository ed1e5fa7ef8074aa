"""Small real filesystems for tests: an ext4 image, loop-mounted, detached afterwards."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .conftest import unavailable
from .harness import is_root


def _run(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def ext4(workdir: Path, size: int, *mkfs_args: str) -> Iterator[Path]:
    """A `size`-byte ext4 filesystem (`mkfs.ext4 *mkfs_args`) mounted at workdir/ext4."""
    if not is_root():
        unavailable("mounting an ext4 image needs root")
    for tool in ("mkfs.ext4", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not found (install e2fsprogs / util-linux)")
    image, mnt = workdir / "ext4.img", workdir / "ext4"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    _run("mkfs.ext4", "-q", "-F", *mkfs_args, str(image))
    dev = _run("losetup", "--find", "--show", str(image))
    try:
        _run("mount", dev, str(mnt))
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
