"""The one way the daemon deletes a tree: snapshots, scratch work, replaced trees.

`remove_tree(path)` is iterative (no recursion limit), keeps at most two
directory descriptors open whatever the depth (it climbs back with `..`
and checks that it arrived where it came from), works only through `*at`
calls relative to those descriptors with O_NOFOLLOW (a directory swapped
for a symlink mid-walk is unlinked as a symlink, never followed), and never
crosses into a mount: before touching anything it looks for mount points
under `path` in the mount table, and while walking it compares every
directory's mount id (statx STATX_MNT_ID; st_dev alone misses a bind mount
of the same filesystem) with the tree's own.  A mount point found is left
in place with everything beneath it, and the removal ends with
TreeHasMounts naming every one.

`sweep_scratch()` empties a scratch directory entry by entry: what cannot
be removed is moved into a quarantine directory (or left where it is) and
reported, never raised, so one bad entry cannot stop a start-up.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import TreeHasMounts

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# -- mount identity -------------------------------------------------------------

_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
STATX_INO = 0x100
STATX_MNT_ID = 0x1000
_STATX_SIZE = 256
_STATX_OFF_INO = 32
_STATX_OFF_DEV = 136  # stx_dev_major, stx_dev_minor
_STATX_OFF_MNT_ID = 144
_SYS_STATX = {"x86_64": 332, "aarch64": 291, "riscv64": 291, "ppc64le": 383, "s390x": 379}

_libc = ctypes.CDLL(None, use_errno=True)
_statx_usable: bool | None = None
"""None until the first call; then whether statx reports STATX_MNT_ID here."""


def _raw_statx(dir_fd: int, name: bytes, flags: int, mask: int) -> bytes:
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    nr = _SYS_STATX.get(platform.machine())
    if nr is not None:
        rc = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(dir_fd), ctypes.c_char_p(name),
                           ctypes.c_int(flags), ctypes.c_uint(mask), buf)
    else:
        rc = _libc.statx(ctypes.c_int(dir_fd), ctypes.c_char_p(name), ctypes.c_int(flags),
                         ctypes.c_uint(mask), buf)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw


@dataclass(frozen=True)
class Ident:
    """Where a directory is: its device and inode, and its mount id (None when unknown)."""

    dev: int
    ino: int
    mnt_id: int | None


def ident(fd: int) -> Ident:
    """The identity of the open file `fd`, with its mount id when the kernel tells it."""
    global _statx_usable
    if _statx_usable is not False:
        try:
            raw = _raw_statx(fd, b"", _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW, STATX_INO | STATX_MNT_ID)
        except (OSError, AttributeError):
            _statx_usable = False  # no statx (old kernel, seccomp): the mount table instead
        else:
            (mask,) = struct.unpack_from("=I", raw, 0)
            if mask & STATX_MNT_ID:
                _statx_usable = True
                (ino,) = struct.unpack_from("=Q", raw, _STATX_OFF_INO)
                major, minor = struct.unpack_from("=II", raw, _STATX_OFF_DEV)
                (mnt,) = struct.unpack_from("=Q", raw, _STATX_OFF_MNT_ID)
                return Ident(os.makedev(major, minor), ino, mnt)
            _statx_usable = False  # kernel before 5.8
    st = os.fstat(fd)
    return Ident(st.st_dev, st.st_ino, None)


def unescape(field_: str) -> str:
    r"""Undo the octal escapes of /proc/self/mountinfo (`\040` for a space ...)."""
    if "\\" not in field_:
        return field_
    out, i = bytearray(), 0
    raw = field_.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i] == 0x5C and i + 4 <= len(raw) and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def mount_points() -> list[str]:
    """Every mount point in this process's mount namespace (from /proc/self/mountinfo)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().split("\n")
    except OSError:
        return []
    return [unescape(parts[4]) for line in lines if len(parts := line.split(" ")) > 4]


def mounts_under(path: str, table: list[str] | None = None) -> list[str]:
    """Mount points at or below `path` (resolved), as paths relative to it ("." for itself);
    `table`: mount_points() read already (one read for a batch of removals)."""
    absolute = os.path.abspath(path)  # `path` itself unresolved: a symlink there is only a link
    real = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    prefix = real.rstrip("/") + "/"
    points = mount_points() if table is None else table
    found = {os.path.relpath(mp, real) for mp in points if mp == real or mp.startswith(prefix)}
    return sorted(found)


# -- removal --------------------------------------------------------------------


@dataclass
class _Level:
    """One directory on the way down: its name in its parent, identity, what is left in it."""

    name: str
    ident: Ident
    subdirs: list[str] | None = None
    kept: bool = False
    """Something beneath stays (a mount): this directory cannot be removed either."""


@dataclass
class _Walk:
    root: str
    ref: Ident
    mounts: list[str] = field(default_factory=list)
    table: set[str] | None = None
    """Mount points by path, read once when the kernel cannot give mount ids."""

    def is_foreign(self, fd: int, here: Ident) -> bool:
        """Whether directory `fd` is on another mount than the tree's root."""
        if here.mnt_id is not None and self.ref.mnt_id is not None:
            return here.mnt_id != self.ref.mnt_id
        if here.dev != self.ref.dev:
            return True
        if self.table is None:
            self.table = set(mount_points())
        try:
            return os.readlink(f"/proc/self/fd/{fd}") in self.table
        except OSError:
            return False  # a path too long to name: st_dev was all there was to check


def _open_dir(walk: _Walk, name: str, dir_fd: int) -> tuple[int, Ident] | None:
    """Open subdirectory `name` without following a symlink: its descriptor and identity,
    or None when it is on another mount (then nothing in it was touched).  A directory
    this daemon may not read (not root, mode 000 in a snapshot) is made readable first."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        pfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if walk.is_foreign(pfd, ident(pfd)):
                return None
            os.chmod(f"/proc/self/fd/{pfd}", 0o700)  # exactly that inode, never a symlink's target
            fd = os.open(f"/proc/self/fd/{pfd}", _DIR_FLAGS & ~os.O_NOFOLLOW)
        finally:
            os.close(pfd)
    here = ident(fd)
    if walk.is_foreign(fd, here):
        os.close(fd)
        return None
    return fd, here


def _retry_writable(call: Callable[[], None], dir_fd: int) -> None:
    """Run an unlink/rmdir in `dir_fd`; on EACCES make the directory writable and retry once."""
    try:
        call()
    except PermissionError:
        os.fchmod(dir_fd, 0o700)
        call()


def _unlink(walk: _Walk, dir_fd: int, name: str, path: Callable[[], str]) -> bool:
    """Unlink a non-directory; False when it is a mount point (a bind-mounted file) and stays."""
    try:
        _retry_writable(lambda: os.unlink(name, dir_fd=dir_fd), dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise  # a directory swapped in: the caller walks it
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            walk.mounts.append(path())
            return False
        raise
    return True


def remove_tree(path: str | os.PathLike[str], *, table: list[str] | None = None) -> None:
    """Delete `path` and everything beneath it, never crossing into a mount.

    A missing `path` is not an error; a symlink or file at `path` is simply
    unlinked.  Raises TreeHasMounts when mount points are inside, having
    touched nothing inside them (nothing at all when the mount table shows
    them up front; `table` is that table when the caller read it already);
    an OSError for anything else that stops it.
    """
    root = os.fspath(path)
    found = mounts_under(root, table) if os.path.lexists(root) else []
    if found:
        raise TreeHasMounts(root, found)
    parent, name = os.path.split(os.path.abspath(root))
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
            return
        walk = _Walk(root, ident(pfd))
        _remove_dir(walk, pfd, name)
    finally:
        os.close(pfd)
    if walk.mounts:
        raise TreeHasMounts(root, [os.path.relpath(m, root) for m in walk.mounts])


def _remove_dir(walk: _Walk, top_fd: int, top_name: str) -> None:
    """Post-order removal of directory `top_name` in `top_fd`, one descriptor per step."""
    opened = _open_dir(walk, top_name, top_fd)
    if opened is None:
        walk.mounts.append(walk.root)
        return
    fd, here = opened
    top = _Level(top_name, here)
    stack = [top]
    try:
        while stack:
            level = stack[-1]
            if level.subdirs is None:
                level.subdirs = _clear_files(walk, fd, stack)
            if level.subdirs:
                child = level.subdirs.pop()
                try:
                    opened = _open_dir(walk, child, fd)
                except FileNotFoundError:
                    continue
                except NotADirectoryError:  # swapped for a symlink or file: unlink, never follow
                    if not _unlink(walk, fd, child, lambda: _path(walk, stack, child)):
                        level.kept = True
                    continue
                if opened is None:
                    walk.mounts.append(_path(walk, stack, child))
                    level.kept = True
                    continue
                os.close(fd)
                fd = opened[0]
                stack.append(_Level(child, opened[1]))
                continue
            stack.pop()
            if not stack:
                break
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            parent = stack[-1]
            arrived = ident(fd)
            if (arrived.dev, arrived.ino) != (parent.ident.dev, parent.ident.ino):
                raise OSError(errno.ESTALE, f"{walk.root}: a directory was moved out of the tree "
                                            "while it was being removed; stopped")
            if level.kept:
                parent.kept = True
            else:
                _rmdir(fd, level.name)
    finally:
        os.close(fd)
    if not top.kept:
        _rmdir(top_fd, top_name, chmod=False)  # the tree's parent is not the remover's to change


def _rmdir(dir_fd: int, name: str, *, chmod: bool = True) -> None:
    try:
        if chmod:
            _retry_writable(lambda: os.rmdir(name, dir_fd=dir_fd), dir_fd)
        else:
            os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _path(walk: _Walk, stack: list[_Level], name: str) -> str:
    return os.path.join(walk.root, *(lv.name for lv in stack[1:]), name)


def _clear_files(walk: _Walk, fd: int, stack: list[_Level]) -> list[str]:
    """Unlink every non-directory in `fd`; return the subdirectories' names."""
    subdirs: list[str] = []
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
            continue
        try:
            if not _unlink(walk, fd, name, lambda: _path(walk, stack, name)):
                stack[-1].kept = True
        except IsADirectoryError:
            subdirs.append(name)
    return subdirs


# -- scratch sweep --------------------------------------------------------------


def sweep_scratch(
    scratch: str, quarantine: str, remove: Callable[[str], None] = remove_tree,
) -> list[str]:
    """Empty `scratch` entry by entry, then retry what `quarantine` holds.

    An entry of `scratch` that `remove` cannot delete is moved into
    `quarantine` (left in place if even that fails); a quarantined entry
    that still cannot be deleted stays.  Returns one line per entry set
    aside, saying what and why; never raises for an entry.
    """
    problems: list[str] = []
    for where, is_quarantine in ((quarantine, True), (scratch, False)):
        try:
            names = sorted(os.listdir(where))
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(where, name)
            try:
                remove(path)
                log.info("swept leftover %s", path)
                continue
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stop a start-up
                reason = why(exc)
            if is_quarantine:
                problems.append(f"{path} kept in quarantine: {reason}")
                log.error("cannot remove quarantined %s (kept, retried at the next start): %s", path, reason)
                continue
            try:
                os.makedirs(quarantine, mode=0o700, exist_ok=True)
                os.rename(path, os.path.join(quarantine, name))
            except OSError as exc:
                problems.append(f"{path} left in scratch: {reason}; cannot quarantine it: {exc.strerror}")
                log.error("cannot remove leftover %s (%s) nor quarantine it: %s", path, reason, exc.strerror)
                continue
            moved = os.path.join(quarantine, name)
            problems.append(f"{path} quarantined as {moved}: {reason}")
            log.error("cannot remove leftover %s (quarantined as %s, retried at the next start): %s",
                      path, moved, reason)
    return problems


def why(exc: BaseException) -> str:
    """A short reason for `exc`, fit for a log line or a status entry."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__
