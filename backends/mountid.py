"""Mount identities of open files and directory entries.

A bind mount of a directory of the same filesystem has the same ``st_dev``
as its surroundings, so "is this a mount point?" needs the mount id:
``statx(STATX_MNT_ID)`` (Linux 5.8; Python 3.11 has no ``os.statx``, so
through ctypes), else the ``mnt_id`` line of ``/proc/self/fdinfo/<fd>``
(Linux 3.15).  Ids are unique among the mounts that exist at one time.
"""

from __future__ import annotations

import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    _statx.restype = ctypes.c_int

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
STATX_MNT_ID = 0x1000
_STATX_SIZE = 256  # struct statx, with its spare room
_MASK_OFFSET = 0  # __u32 stx_mask
_MNT_ID_OFFSET = 144  # __u64 stx_mnt_id, after the four timestamps and the device numbers

_use_statx = _statx is not None


def mount_id(dir_fd: int, name: bytes = b"") -> int:
    """The id of the mount `name` in `dir_fd` lives on (not followed if a symlink).

    With `name` empty: the mount of `dir_fd` itself.  A mount point's id is
    that of what is mounted on it, so an entry whose id differs from its
    directory's is a mount point.
    """
    global _use_statx
    if _use_statx:
        buf = ctypes.create_string_buffer(_STATX_SIZE)
        flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | (AT_EMPTY_PATH if not name else 0)
        if _statx(dir_fd, name, flags, STATX_MNT_ID, buf) != 0:
            err = ctypes.get_errno()
            if err != 38:  # ENOSYS: an old kernel or a seccomp filter; use /proc
                raise OSError(err, os.strerror(err), os.fsdecode(name) if name else None)
            _use_statx = False
        elif struct.unpack_from("=I", buf, _MASK_OFFSET)[0] & STATX_MNT_ID:
            return struct.unpack_from("=Q", buf, _MNT_ID_OFFSET)[0]
        else:
            _use_statx = False  # kernel before 5.8: the field is not filled in
    if not name:
        return _fdinfo_mount_id(dir_fd)
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return _fdinfo_mount_id(fd)
    finally:
        os.close(fd)


def _fdinfo_mount_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    raise OSError(f"no mnt_id in /proc/self/fdinfo/{fd}")
