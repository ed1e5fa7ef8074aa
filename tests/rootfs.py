"""A rootfs-like tree with everything a container filesystem can hold, and a digest of it.

Shared by the tree-copy tests and the overlay backend's daemon tests.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MiB = 1 << 20
SPARSE_SIZE = 100 * MiB
DEEP = 300  # levels of 15-character names: the deepest path exceeds PATH_MAX


def require_root() -> None:
    """Skip (fail under CI=true) when not root."""
    if os.geteuid() != 0:
        msg = "needs root: owners, device nodes, trusted.* xattrs and mounts"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    """Mount something of ours on `target` (made a directory unless it exists); always unmount it again."""
    if not target.exists():
        target.mkdir()
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)


# -- the digest -----------------------------------------------------------


def _proc(dir_fd: int, name: bytes) -> bytes:
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _content(dir_fd: int, name: bytes) -> str:
    h = hashlib.sha256()
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        while chunk := os.read(fd, 4 * MiB):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def digest(root: Path) -> dict[bytes, tuple]:
    """Everything copy_tree must preserve, per relative path (atime and inode numbers aside)."""
    out: dict[bytes, tuple] = {}
    inodes: dict[int, list[bytes]] = {}
    broot = os.fsencode(root)
    for top, dirs, files, dir_fd in os.fwalk(broot, follow_symlinks=False):
        reltop = os.path.relpath(top, broot)
        entries = [(b".", b".")] if top == broot else []
        entries += [(n, os.path.normpath(os.path.join(reltop, n))) for n in dirs + files]
        for name, rel in entries:
            if name == b".":
                st, ref = os.stat(dir_fd), dir_fd
            else:
                st, ref = os.stat(name, dir_fd=dir_fd, follow_symlinks=False), _proc(dir_fd, name)
            kind = stat.S_IFMT(st.st_mode)
            follow = isinstance(ref, int)
            xattrs = tuple(
                sorted((n, os.getxattr(ref, n, follow_symlinks=follow)) for n in os.listxattr(ref, follow_symlinks=follow))
            )
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = _content(dir_fd, name)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(name, dir_fd=dir_fd)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            size = None if stat.S_ISDIR(st.st_mode) else st.st_size
            out[rel] = (kind, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, extra, xattrs)
            if not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(rel)
    for paths in inodes.values():
        for rel in paths:
            out[rel] += (tuple(sorted(paths)),)
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    da, db = digest(a), digest(b)
    assert sorted(da) == sorted(db)
    diffs = {k: (da[k], db[k]) for k in da if da[k] != db[k]}
    assert not diffs


# -- a rootfs-like source -------------------------------------------------


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """The system.posix_acl_* xattr value for (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


NO_ID = 0xFFFFFFFF
ACL = posix_acl((0x01, 7, NO_ID), (0x02, 5, 1234), (0x04, 5, NO_ID), (0x10, 5, NO_ID), (0x20, 4, NO_ID))
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # VFS_CAP_REVISION_2, effective


def set_times(path: Path | bytes, ns: int, *, dir_fd: int | None = None) -> None:
    os.utime(path, ns=(ns - 7_000_000_123, ns), dir_fd=dir_fd, follow_symlinks=False)


def build_rootfs(root: Path) -> dict[str, bool]:
    """A tree with everything a container root filesystem can hold; returns optional features made."""
    made = {"acl": True, "caps": True}
    root.mkdir()
    for d in ("etc", "usr/bin", "usr/lib", "home/user", "dev", "run", "var/empty", "layer/opaque", "layer/moved"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/shadow").write_text("root:*:1::::::\n")
    os.chown(root / "etc/shadow", 0, 42)
    os.chmod(root / "etc/shadow", 0o640)
    (root / "home/user/notes").write_bytes(os.urandom(5000))
    for p in ("home/user", "home/user/notes"):
        os.chown(root / p, 1234, 1234)
    os.chmod(root / "home/user", 0o2750)
    (root / "usr/bin/su").write_bytes(b"\x7fELF" + os.urandom(20000))
    os.chmod(root / "usr/bin/su", 0o4755)
    (root / "usr/bin/wall").write_bytes(b"\x7fELF wall")
    os.chown(root / "usr/bin/wall", 0, 5)
    os.chmod(root / "usr/bin/wall", 0o2755)
    (root / "usr/bin/ping").write_bytes(b"\x7fELF ping")
    try:
        os.setxattr(root / "usr/bin/ping", "security.capability", CAP_NET_RAW)
    except OSError:
        made["caps"] = False
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    os.setxattr(root, "user.root-label", b"rootfs")
    os.setxattr(root / "etc/passwd", "user.mime", b"text/plain")
    os.setxattr(root / "etc", "user.empty", b"")
    os.setxattr(root / "layer/opaque", "trusted.overlay.opaque", b"y")
    os.setxattr(root / "layer/moved", "trusted.overlay.redirect", b"/layer/original")
    try:
        os.setxattr(root / "home/user/notes", "system.posix_acl_access", ACL)
        os.setxattr(root / "home/user", "system.posix_acl_default", ACL)
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
        made["acl"] = False
    # Whiteouts (overlayfs shares one inode between them), devices, FIFO, socket.
    os.mknod(root / "layer/deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.link(root / "layer/deleted", root / "layer/deleted-too")
    os.setxattr(root / "layer/deleted", "trusted.overlay.origin", b"\x00\xfb\x21")
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "dev/loop99", stat.S_IFBLK | 0o660, os.makedev(7, 99))
    os.chown(root / "dev/loop99", 0, 6)
    os.mkfifo(root / "run/initctl", 0o600)
    os.mknod(root / "run/sock", stat.S_IFSOCK | 0o755)
    # Symlinks: relative, absolute (must not be followed: host's /etc!), dangling, to a dir, odd bytes.
    os.symlink("../etc/passwd", root / "usr/passwd-link")
    os.symlink("/etc/shadow", root / "usr/host-shadow")
    os.symlink("nowhere/at/all", root / "usr/dangling")
    os.symlink("usr/lib", root / "lib")
    os.symlink(b"target-\xff\xfe", os.fsencode(root / "usr/odd-target"))
    os.chown(root / "usr/passwd-link", 1234, 1234, follow_symlinks=False)
    os.setxattr(root / "usr/dangling", "trusted.note", b"symlink xattr", follow_symlinks=False)
    # Hard links: three names across directories, and a hard-linked symlink.
    (root / "usr/lib/libc.so").write_bytes(os.urandom(30000))
    os.link(root / "usr/lib/libc.so", root / "usr/lib/libc.so.6")
    os.link(root / "usr/lib/libc.so", root / "etc/libc-copy")
    os.link(root / "usr/passwd-link", root / "etc/passwd-link-2", follow_symlinks=False)
    # Sparse: 100 MiB with two small data regions; and one that starts and ends with data.
    fd = os.open(root / "var/sparse.img", os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, b"A" * 4096, 1 * MiB)
    os.pwrite(fd, b"B" * 8192, 60 * MiB)
    os.ftruncate(fd, SPARSE_SIZE)
    os.close(fd)
    fd = os.open(root / "var/ends.img", os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, b"head", 0)
    os.pwrite(fd, b"tail", 8 * MiB - 4)
    os.close(fd)
    (root / "var/empty-file").touch()
    Path(os.fsdecode(os.fsencode(root / "etc") + b"/caf\xe9-\xff\x80.conf")).write_bytes(b"latin-1 name")
    os.mkdir(os.fsencode(root / "etc") + b"/dir-\xfe")
    # Deep nesting past PATH_MAX (created relative to descriptors).
    fd = os.open(root / "var", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEEP):
        os.mkdir("deep-directory", dir_fd=fd)
        nfd = os.open("deep-directory", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    os.close(fd)
    # Distinct times everywhere, directories last (their contents are done).
    now = time.time_ns()
    for top, dirs, files, dfd in os.fwalk(os.fsencode(root), topdown=False, follow_symlinks=False):
        for i, name in enumerate(files + dirs):
            set_times(name, now - 10**9 * (i + 1) - 123_457, dir_fd=dfd)
    set_times(root, now - 99_000_000_001)
    return made
