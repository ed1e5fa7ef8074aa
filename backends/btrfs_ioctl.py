"""Thin, synchronous wrappers around the btrfs ioctls the btrfs backend uses.

Layouts follow <linux/btrfs.h> (checked against the kernel headers on x86_64
and aarch64, where they are identical).  Every function blocks: call it from
a worker thread.  Errors surface as OSError with the kernel's errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import platform
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from . import mounts

BTRFS_SUPER_MAGIC = 0x9123683E
FIRST_FREE_OBJECTID = 256
"""Inode number of every subvolume's root directory."""

_MAGIC = 0x94


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


_W, _R, _WR = 1, 2, 3
IOC_SNAP_DESTROY = _ioc(_W, 15, 4096)
IOC_TREE_SEARCH = _ioc(_WR, 17, 4096)
IOC_INO_PATHS = _ioc(_WR, 35, 56)
IOC_SNAP_CREATE_V2 = _ioc(_W, 23, 4096)
IOC_GET_SUBVOL_INFO = _ioc(_R, 60, 504)
IOC_GET_SUBVOL_ROOTREF = _ioc(_WR, 61, 4096)
IOC_INO_LOOKUP_USER = _ioc(_WR, 62, 4096)

SUBVOL_RDONLY = 1 << 1
_SUBVOL_NAME_MAX = 4039
_VOL_ARGS_V2 = struct.Struct(f"<qQQ32s{_SUBVOL_NAME_MAX + 1}s")
_VOL_ARGS = struct.Struct("<q4088s")
# treeid, name, parent_id, dirid, generation, flags, uuid, parent_uuid,
# received_uuid, c/o/s/rtransid, ctime, otime, stime, rtime, reserved
_SUBVOL_INFO = struct.Struct("<Q256s4Q16s16s16s4Q" + "QI4x" * 4 + "64x")
_ROOTREF_HEAD = struct.Struct("<Q")
_ROOTREF_ITEM = struct.Struct("<QQ")
_ROOTREF_MAX = 255
_SEARCH_KEY = struct.Struct("<7Q4I32x")
_SEARCH_HEADER = struct.Struct("<3Q2I")
_U64_MAX = (1 << 64) - 1

QUOTA_TREE_OBJECTID = 8
QGROUP_STATUS_KEY = 240
QGROUP_INFO_KEY = 242
QGROUP_STATUS_ON = 1 << 0
QGROUP_STATUS_RESCAN = 1 << 1
QGROUP_STATUS_INCONSISTENT = 1 << 2


def open_dir(path: str) -> int:
    """An O_RDONLY|O_DIRECTORY fd for `path`, not following a final symlink."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _name(name: str, limit: int) -> bytes:
    raw = os.fsencode(name)
    if not raw or b"/" in raw or b"\0" in raw or len(raw) > limit:
        raise OSError(errno.EINVAL, f"bad subvolume name {name!r}")
    return raw


def snapshot(src_fd: int, dst_dir_fd: int, name: str, readonly: bool) -> None:
    """Snapshot the subvolume open as `src_fd` to `name` inside `dst_dir_fd`."""
    args = bytearray(_VOL_ARGS_V2.size)  # mutable buffer: immutable args are capped at 1 KiB
    _VOL_ARGS_V2.pack_into(
        args, 0, src_fd, 0, SUBVOL_RDONLY if readonly else 0, b"", _name(name, _SUBVOL_NAME_MAX)
    )
    fcntl.ioctl(dst_dir_fd, IOC_SNAP_CREATE_V2, args, True)


def destroy(parent_fd: int, name: str) -> None:
    """Delete subvolume `name` inside `parent_fd` (no commit is waited for)."""
    args = bytearray(_VOL_ARGS.size)
    _VOL_ARGS.pack_into(args, 0, 0, _name(name, 4087))
    fcntl.ioctl(parent_fd, IOC_SNAP_DESTROY, args, True)


@dataclass(frozen=True)
class SubvolInfo:
    treeid: int
    parent_id: int
    flags: int
    otime: float
    ctransid: int
    """Transaction of the last change to the subvolume's content."""
    uuid: bytes
    received_uuid: bytes = bytes(16)
    """The sender's uuid of a subvolume made by `btrfs receive` (zeros otherwise); kept by a
    read-only snapshot of it, and what an incremental receive finds its parent by."""

    @property
    def readonly(self) -> bool:
        return bool(self.flags & 1)  # BTRFS_ROOT_SUBVOL_RDONLY


def subvol_info(fd: int) -> SubvolInfo:
    """Facts about the subvolume containing `fd` (unprivileged ioctl)."""
    buf = bytearray(_SUBVOL_INFO.size)
    fcntl.ioctl(fd, IOC_GET_SUBVOL_INFO, buf, True)
    f = _SUBVOL_INFO.unpack(buf)
    treeid, parent_id, flags, ctransid = f[0], f[2], f[5], f[9]
    otime = f[15] + f[16] / 1e9
    return SubvolInfo(treeid, parent_id, flags, otime, ctransid, f[6], f[8])


def child_subvolumes(fd: int) -> list[tuple[int, int]]:
    """(treeid, dirid) of the subvolumes directly inside the subvolume of `fd`."""
    out: list[tuple[int, int]] = []
    min_treeid = 0
    while True:
        buf = bytearray(4096)
        _ROOTREF_HEAD.pack_into(buf, 0, min_treeid)
        more = False
        try:
            fcntl.ioctl(fd, IOC_GET_SUBVOL_ROOTREF, buf, True)
        except OSError as e:
            if e.errno != errno.EOVERFLOW:
                raise
            more = True
        count = buf[8 + _ROOTREF_MAX * _ROOTREF_ITEM.size]
        for i in range(count):
            out.append(_ROOTREF_ITEM.unpack_from(buf, 8 + i * _ROOTREF_ITEM.size))
        if not more or not count:
            return out
        min_treeid = _ROOTREF_HEAD.unpack_from(buf, 0)[0]


def child_path(fd: int, treeid: int, dirid: int) -> str:
    """Path of child subvolume `treeid` (in directory inode `dirid`) relative to `fd`."""
    buf = bytearray(4096)
    struct.pack_into("<QQ", buf, 0, dirid, treeid)
    fcntl.ioctl(fd, IOC_INO_LOOKUP_USER, buf, True)
    name = bytes(buf[16:272]).split(b"\0", 1)[0]
    path = bytes(buf[272:]).split(b"\0", 1)[0]
    return os.fsdecode(path + name)


def ino_paths(fd: int, ino: int, size: int = 64 << 10) -> list[bytes]:
    """Every path (relative to the subvolume of `fd`) of inode `ino`: its hard links.

    BTRFS_IOC_INO_PATHS needs CAP_SYS_ADMIN.  A buffer too small for them all is doubled."""
    while True:
        buf = ctypes.create_string_buffer(size)
        args = bytearray(struct.pack("<QQ32xQ", ino, size, ctypes.addressof(buf)))
        fcntl.ioctl(fd, IOC_INO_PATHS, args, True)
        _left, missing, count, _missed = struct.unpack_from("<4I", buf, 0)
        if missing and size < 16 << 20:
            size *= 2
            continue
        offsets = struct.unpack_from(f"<{count}Q", buf, 16)
        return [ctypes.string_at(ctypes.addressof(buf) + 16 + off) for off in offsets]


def _tree_search(
    fd: int, tree: int, objectid: int, key_type: int, min_offset: int = 0,
    max_offset: int = _U64_MAX,
) -> Iterator[tuple[int, bytes]]:
    """(offset, item) of the items (objectid, key_type, min..max_offset) in `tree`.

    BTRFS_IOC_TREE_SEARCH needs CAP_SYS_ADMIN.
    """
    while True:
        buf = bytearray(4096)
        _SEARCH_KEY.pack_into(
            buf, 0, tree, objectid, objectid, min_offset, max_offset, 0, _U64_MAX,
            key_type, key_type, 4096, 0,
        )
        fcntl.ioctl(fd, IOC_TREE_SEARCH, buf, True)
        nr = struct.unpack_from("<I", buf, 64)[0]
        if nr == 0:
            return
        pos = _SEARCH_KEY.size
        last = None
        for _ in range(nr):
            _, obj, offset, typ, length = _SEARCH_HEADER.unpack_from(buf, pos)
            pos += _SEARCH_HEADER.size
            if obj == objectid and typ == key_type:
                yield offset, bytes(buf[pos : pos + length])
            last = offset
            pos += length
        if last is None or last >= max_offset:
            return
        min_offset = last + 1


def quota_status(fd: int) -> int | None:
    """The qgroup status flags of the filesystem of `fd`, or None when quotas are off."""
    try:
        for _, item in _tree_search(fd, QUOTA_TREE_OBJECTID, 0, QGROUP_STATUS_KEY):
            flags = struct.unpack_from("<QQQ", item)[2]
            return flags if flags & QGROUP_STATUS_ON else None
    except OSError as e:
        if e.errno == errno.ENOENT:  # no quota tree
            return None
        raise
    return None


def qgroup_exclusive(fd: int, subvolid: int | None = None) -> dict[int, int]:
    """Exclusive bytes by subvolume id: every level-0 qgroup, or just `subvolid`'s."""
    out: dict[int, int] = {}
    lo, hi = (0, (1 << 48) - 1) if subvolid is None else (subvolid, subvolid)
    try:
        for qgroupid, item in _tree_search(
            fd, QUOTA_TREE_OBJECTID, 0, QGROUP_INFO_KEY, lo, hi
        ):
            if qgroupid >> 48 == 0:
                out[qgroupid] = struct.unpack_from("<5Q", item)[3]
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
    return out


def mounts_of(fd: int, mountinfo: str = mounts.MOUNTINFO) -> list[str]:
    """Mount points (in this mount namespace) showing the subvolume of `fd`."""
    me = subvol_info(fd)
    out = []
    for m in mounts.mount_table(mountinfo):
        if m.fstype != "btrfs":
            continue
        opts = dict(o.partition("=")[::2] for o in m.super_options.split(","))
        if opts.get("subvolid") != str(me.treeid):
            continue
        try:
            mfd = open_dir(m.mountpoint)
        except OSError:
            continue
        try:
            if subvol_info(mfd).uuid == me.uuid:
                out.append(m.mountpoint)
        except OSError:
            pass
        finally:
            os.close(mfd)
    return out


def is_btrfs(path: str) -> bool:
    """Whether `path` is on btrfs (statfs f_type == BTRFS_SUPER_MAGIC)."""
    return _statfs_type(path) == BTRFS_SUPER_MAGIC


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _statfs_type(path: str) -> int:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return buf.f_type & 0xFFFFFFFF


RENAME_EXCHANGE = 1 << 1
AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "riscv64": 276, "ppc64le": 357, "s390x": 347}


def exchange(a: str, b: str) -> None:
    """Atomically swap the paths `a` and `b` (renameat2 RENAME_EXCHANGE)."""
    pa, pb = os.fsencode(a), os.fsencode(b)
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        rc = fn(AT_FDCWD, pa, AT_FDCWD, pb, ctypes.c_uint(RENAME_EXCHANGE))
    else:
        nr = _SYS_RENAMEAT2.get(platform.machine())
        if nr is None:
            raise OSError(errno.ENOSYS, "renameat2 unavailable on this platform")
        rc = _libc.syscall(
            ctypes.c_long(nr), AT_FDCWD, pa, AT_FDCWD, pb, ctypes.c_uint(RENAME_EXCHANGE)
        )
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"renameat2(RENAME_EXCHANGE): {os.strerror(e)}", a, None, b)
