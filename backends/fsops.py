"""Small filesystem primitives shared by the directory-based backends."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path
from typing import Callable

import psutil

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 1 << 1


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (renameat2 with RENAME_EXCHANGE).

    Both must exist on the same filesystem; at no instant is either missing.
    """
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = _RENAME_EXCHANGE


def rename_in(dir_fd: int, old: bytes, new: bytes, flags: int) -> None:
    """renameat2 within one directory descriptor (RENAME_EXCHANGE or RENAME_NOREPLACE)."""
    if _libc.renameat2(dir_fd, old, dir_fd, new, ctypes.c_uint(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(new))


def syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` to stable storage."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_real_dir(path: Path) -> bool:
    """A directory, and not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def get_xattr(path: Path, key: str) -> str | None:
    try:
        return os.getxattr(path, key, follow_symlinks=False).decode("utf-8", "replace")
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def set_xattr(path: Path, key: str, value: str | None) -> None:
    """Set, or with None remove, an extended attribute."""
    if value is None:
        try:
            os.removexattr(path, key, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    else:
        os.setxattr(path, key, value.encode("utf-8"), follow_symlinks=False)


def fs_type(path: str) -> str | None:
    """The filesystem type holding `path` (psutil's view of the mount table)."""
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > best[0]:
                best = (len(mp), part.fstype)
    return best[1] if best else None


def containers_in(root: Path | str, is_container: Callable[[str], bool],
                  label: Callable[[str], str | None]) -> dict[str, str | None]:
    """The entries of a directory pool's root that `is_container` accepts, each with its
    `label` (an entry gone meanwhile is left out)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return {}
    out: dict[str, str | None] = {}
    for name in names:
        try:
            if is_container(name):
                out[name] = label(name)
        except OSError:
            continue
    return out


def free_bytes(path: Path) -> int:
    return psutil.disk_usage(str(path)).free


def inodes(path: Path | str) -> tuple[int, int] | None:
    """(free, total) inodes of the filesystem holding `path`, free as an unprivileged
    user sees it; None when it reports no inode count (btrfs: inodes are dynamic)."""
    st = os.statvfs(path)
    if st.f_files <= 0 or not 0 <= st.f_favail <= st.f_files:
        return None
    return st.f_favail, st.f_files


def read_name_marks(snapdir: Path, key: str, cid: str | None, is_cid: Callable[[str], bool]) -> dict[str, str]:
    """Attribute `key` of `snapdir/<cid>` (every `snapdir/<id>` when cid is None), by id."""
    if cid is not None:
        cids = [cid]
    else:
        try:
            cids = [e.name for e in os.scandir(snapdir) if is_cid(e.name) and e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return {}
    out: dict[str, str] = {}
    for c in cids:
        try:
            value = get_xattr(snapdir / c, key)
        except FileNotFoundError:
            continue
        if value:
            out[c] = value
    return out


def write_name_mark(snapdir: Path, key: str, cid: str, name: str) -> None:
    """Set attribute `key` of `snapdir/<cid>` (made if missing) to `name`.

    No fsync: what must not overtake it is the removal of a snapshot under
    the same directory, a later metadata change of the same filesystem,
    which a journalling filesystem never makes durable before an earlier one.
    """
    d = snapdir / cid
    d.mkdir(mode=0o700, exist_ok=True)
    set_xattr(d, key, name)
