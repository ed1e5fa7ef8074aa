"""Paths resolved beneath a root directory, never leaving it.

A path inside a snapshot or a live container comes from a client and names
entries a container wrote: every component is resolved relative to the
root's descriptor, symlinks anywhere along the path are never followed (a
symlink as the last component is opened as itself, with O_PATH), `..` is
refused before any lookup, and mount points are not crossed.  Where the
kernel has openat2 (Linux 5.6) one call does it with RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV; elsewhere a walk opens one component
at a time with O_NOFOLLOW and checks each directory's mount id.  Both give
the same answers (tests run both).

Names on disk are bytes.  They are shown and accepted in one escaped form
(the **name escape**): a name that is valid UTF-8 is itself, except that a
backslash is written `\\\\`; every byte that is not part of valid UTF-8 is
written `\\xHH` (two lower-case hex digits).  So b"caf\\xe9" reads
`caf\\xe9`, and `a\\b` on disk reads `a\\\\b`.  `parse()` undoes it; any
other backslash sequence is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import struct

from backends import mountid

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
SYS_OPENAT2 = 437  # same number on every architecture (added after the unification)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_PATH_TEXT = 4096
"""Longest path text accepted (escaped form)."""
NAME_MAX, PATH_MAX = 255, 4095
"""Longest name and path (bytes) the kernel resolves: longer is the client's mistake, not ENAMETOOLONG."""

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
use_openat2 = True
"""False after openat2 proved missing (ENOSYS, or blocked by seccomp): walk instead."""


class PathRefused(ValueError):
    """A path that is not accepted as given (`reason` says why; the client's mistake)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unsafe(OSError):
    """Resolving the path would follow a symlink or cross a mount point (`reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.ELOOP, reason)
        self.reason = reason


class NotRegular(OSError):
    """The entry is not a regular file; `kind` says what it is."""

    def __init__(self, kind: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file: a {kind}")
        self.kind = kind


# -- the name escape ---------------------------------------------------------------

_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})|\\\\|\\")


def show(name: bytes) -> str:
    """`name` in the name escape (see the module docstring)."""
    text = name.decode("utf-8", "surrogateescape")
    if "\\" not in text and not any(0xDC80 <= ord(c) <= 0xDCFF for c in text):
        return text
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(c) <= 0xDCFF:
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            out.append(c)
    return "".join(out)


def show_path(parts: tuple[bytes, ...] | list[bytes]) -> str:
    """An absolute path from components, escaped."""
    return "/" + "/".join(show(p) for p in parts)


def unescape(text: str) -> bytes:
    """The bytes of one escaped name or path; PathRefused for a stray backslash."""
    raw = text.encode("utf-8", "surrogatepass")

    def one(m: re.Match[bytes]) -> bytes:
        if m[1] is not None:
            return bytes([int(m[1], 16)])
        if m[0] == b"\\\\":
            return b"\\"
        raise PathRefused("a backslash starts \\\\ or \\xHH (two lower-case hex digits)")

    return _ESCAPE.sub(one, raw)


def parse(text: str) -> tuple[bytes, ...]:
    """The components of a client's path: absolute, in the name escape.

    Empty components (`//`, a trailing `/`) and `.` are dropped; `..`, NUL,
    a relative path and a stray backslash are refused.  `/` is ().
    """
    if not isinstance(text, str) or not text:
        raise PathRefused("a path is required")
    if len(text) > MAX_PATH_TEXT:
        raise PathRefused(f"at most {MAX_PATH_TEXT} characters")
    if "\x00" in text:
        raise PathRefused("a path may not contain NUL")
    if not text.startswith("/"):
        raise PathRefused("the path must be absolute (start with /)")
    try:
        raw = unescape(text)
    except UnicodeEncodeError:
        raise PathRefused("the path is not valid text") from None
    if b"\x00" in raw:
        raise PathRefused("a path may not contain NUL")
    parts = tuple(p for p in raw.split(b"/") if p and p != b".")
    if b".." in parts:
        raise PathRefused("'..' is not allowed in a path")
    if any(len(p) > NAME_MAX for p in parts):
        raise PathRefused(f"a name is at most {NAME_MAX} bytes")
    if len(raw) > PATH_MAX:
        raise PathRefused(f"a path is at most {PATH_MAX} bytes")
    return parts


# -- resolution --------------------------------------------------------------------


def _openat2(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
    how = struct.pack("=QQQ", flags, 0, resolve)
    fd = _syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(path),
                  ctypes.c_char_p(how), ctypes.c_size_t(len(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return fd


def _shown(parts: tuple[bytes, ...], upto: int) -> str:
    return show_path(parts[:upto])


def _walk(root_fd: int, parts: tuple[bytes, ...], last: int) -> int:
    """Open components one at a time (O_NOFOLLOW), checking the mount id stays root's."""
    root_mnt = mountid.mount_id(root_fd)
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            final = i == len(parts) - 1
            try:
                child = os.open(name, last if final else _DIR, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                    raise Unsafe(f"{_shown(parts, i + 1)} is a symlink; symlinks are never followed") from None
                raise
            os.close(fd)
            fd = child
            if mountid.mount_id(fd) != root_mnt:
                raise Unsafe(f"{_shown(parts, i + 1)} is a mount point; mounts are not crossed")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _resolve(root_fd: int, parts: tuple[bytes, ...], flags: int) -> int:
    global use_openat2
    if not parts:
        return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=root_fd)
    for _attempt in range(3):  # EAGAIN: a rename elsewhere raced the lookup
        if not use_openat2:
            break
        try:
            return _openat2(root_fd, b"/".join(parts), flags,
                            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EPERM):
                use_openat2 = False
            elif e.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                break  # the walk finds which component, and says so (it is as safe)
            elif e.errno != errno.EAGAIN:
                raise
    return _walk(root_fd, parts, flags)


def open_path(root_fd: int, parts: tuple[bytes, ...]) -> int:
    """An O_PATH descriptor of the entry (a final symlink is the symlink itself)."""
    return _resolve(root_fd, parts, _PATH)


def open_dir(root_fd: int, parts: tuple[bytes, ...]) -> int:
    """A readable descriptor of the directory at `parts` (NotADirectoryError if it is not one)."""
    return _resolve(root_fd, parts, _DIR)


def open_parent(root_fd: int, parts: tuple[bytes, ...]) -> tuple[int, bytes]:
    """The directory holding the entry at `parts` (a readable fd) and the entry's name."""
    if not parts:
        raise PathRefused("/ has no parent")
    return open_dir(root_fd, parts[:-1]), parts[-1]


def kind_of(mode: int) -> str:
    """The entry type as the API names it."""
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "device",
            stat.S_IFBLK: "device", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), "unknown")


def open_regular(root_fd: int, parts: tuple[bytes, ...]) -> int:
    """A read-only descriptor of the regular file at `parts`; NotRegular naming what else it is.

    The entry is first opened with O_PATH (which opens nothing: a device or a FIFO
    is never opened for reading), checked, then re-opened through its descriptor.
    """
    pfd = open_path(root_fd, parts)
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(kind_of(st.st_mode))
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(pfd)
    if (os.fstat(fd).st_ino, os.fstat(fd).st_dev) != (st.st_ino, st.st_dev):  # pragma: no cover
        os.close(fd)
        raise Unsafe(f"{show_path(parts)} changed while it was opened")
    return fd
