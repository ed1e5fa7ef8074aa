"""Tree digests for 'the content is exactly X' checks."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import Counter
from pathlib import Path


def set_xattr(path: Path, name: str, value: bytes) -> bool:
    """Set an extended attribute where the filesystem has them; False where it has none
    (zfs-fuse), so a test expects what that filesystem can hold."""
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as e:
        if e.errno != errno.ENOTSUP:
            raise
        return False
    return True


def tree_digest(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Relative path -> (type, mode, uid, gid, content hash or link target), for every entry."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if os.path.join(rel_dir, d).lstrip("./") not in skip)
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in skip:
                continue
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = ""
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
    return out


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    """Write files (creating parents) under root; str values are text."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def walk_digest(root: Path) -> list[tuple]:
    """Every entry of `root` in sorted depth-first order, for trees of any depth.

    One record per entry: depth, name, type, mode, owner, size, mtime,
    content hash / link target / device, xattrs (none where unsupported),
    and (for an inode with several names in the tree) the index of its
    first name, so equal lists mean equal trees with equal hard-link
    structure; links from outside the tree (a later snapshot sharing the
    file) do not count.  Holds one directory descriptor at a time (parents
    are re-opened through ".."), recurses nowhere, and keeps no full paths,
    so a 10,000-level tree digests within the default descriptor limit.
    """
    out: list[tuple] = []
    first: dict[int, int] = {}
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        out.append(_record(fd, b"", 0, os.fstat(fd), first, len(out)))
        stack = [iter(sorted(os.listdir(fd)))]  # bytes names: listdir(fd) gives str; encode below
        while stack:
            for sname in stack[-1]:
                name = os.fsencode(sname)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                out.append(_record(fd, name, len(stack), st, first, len(out)))
                if stat.S_ISDIR(st.st_mode):
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    os.close(fd)
                    fd = child
                    stack.append(iter(sorted(os.listdir(fd))))
                    break
            else:
                stack.pop()
                if stack:
                    parent = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd = parent
    finally:
        os.close(fd)
    names = Counter(r[-1] for r in out if r[-1] is not None)
    return [r if r[-1] is None or names[r[-1]] > 1 else (*r[:-1], None) for r in out]


def _record(dir_fd: int, name: bytes, depth: int, st: os.stat_result, first: dict[int, int], index: int) -> tuple:
    ref: int | bytes = dir_fd if not name else b"/proc/self/fd/%d/%s" % (dir_fd, name)
    follow = isinstance(ref, int)
    try:
        xattrs = tuple(sorted((n, os.getxattr(ref, n, follow_symlinks=follow))
                              for n in os.listxattr(ref, follow_symlinks=follow)))
    except OSError as e:
        if e.errno != errno.ENOTSUP:  # zfs-fuse has no xattrs
            raise
        xattrs = ()
    what: object = None
    if stat.S_ISREG(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            h = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
            what = h.hexdigest()
        finally:
            os.close(fd)
    elif stat.S_ISLNK(st.st_mode):
        what = os.readlink(name, dir_fd=dir_fd)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        what = st.st_rdev
    link = None
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
        link = first.setdefault(st.st_ino, index)
    size = None if stat.S_ISDIR(st.st_mode) else st.st_size
    return (depth, name, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, what, xattrs, link)
