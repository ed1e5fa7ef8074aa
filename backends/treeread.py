"""Reading trees beneath a root: one directory's entries, and the differences between two trees.

Everything is opened relative to descriptors with O_NOFOLLOW (backends.beneath):
symlinks are read as text, never followed; directories on another mount than
the root are neither listed into nor walked.  Names are bytes here; records
carry them in the name escape (backends.beneath.show).

A diff is a pre-order walk of both trees in name order (bytes), one record
per path that differs: `added`, `deleted`, `modified` (with `fields`: content,
mode, owner, target, xattrs) or `type_changed`; everything beneath an added or
deleted directory is listed too.  A regular file's content counts as unchanged
when size and mtime are equal (rsync's quick check) and the mtime has a
sub-second part; otherwise the bytes are compared: with whole-second
timestamps (zfs-fuse) a rewrite of the same size within the second would
look unchanged.  Directory mtimes are not compared (every
change inside moves them).  In an overlay upper-layer capture a whiteout is a
deletion, never an entry.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
from dataclasses import dataclass
from typing import Iterator

from backends import beneath, mountid
from backends.base import TreeRoot

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
Parts = tuple[bytes, ...]


def _whiteout(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def entry(name: str, st: os.stat_result, target: bytes | None) -> dict:
    """One entry as the API shows it (mtime in seconds; the caller formats it)."""
    out = {"name": name, "type": beneath.kind_of(st.st_mode), "size": st.st_size,
           "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid, "gid": st.st_gid,
           "mtime": st.st_mtime_ns / 1e9}
    if target is not None:
        out["target"] = beneath.show(target)
    return out


def _names(fd: int) -> list[bytes]:
    """The directory's names in byte order (listed through /proc as bytes: a listing by
    descriptor decodes every name, and encoding them back costs as much as the listing)."""
    names = os.listdir(b"/proc/self/fd/%d" % fd)
    names.sort()
    return names


def list_dir(root: TreeRoot, parts: Parts, limit: int, after: bytes | None) -> tuple[list[dict], bytes | None]:
    """Up to `limit` entries of the directory at `parts`, in name order after `after`,
    and the name to continue after (None on the last page)."""
    fd = beneath.open_dir(root.fd, parts)
    try:
        names = _names(fd)
        if after is not None:
            names = names[bisect.bisect_right(names, after):]
        out: list[dict] = []
        last = None
        for name in names:
            if len(out) == limit:
                return out, last
            try:
                st = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            if root.whiteouts and _whiteout(st):
                continue
            target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
            out.append(entry(beneath.show(name), st, target))
            last = name
        return out, None
    finally:
        os.close(fd)


def stat_path(root: TreeRoot, parts: Parts) -> dict:
    """The entry at `parts` itself (FileNotFoundError when it is not there)."""
    fd = beneath.open_path(root.fd, parts)
    try:
        st = os.fstat(fd)
        if root.whiteouts and _whiteout(st):
            raise FileNotFoundError(errno.ENOENT, "deleted (an overlay whiteout)", beneath.show_path(parts))
        target = os.readlink("", dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
    finally:
        os.close(fd)
    return entry(beneath.show(parts[-1]) if parts else "/", st, target)


# -- diff ----------------------------------------------------------------------------


class _Side:
    """One tree of a diff: its root, whether whiteouts are deletions, and its mount."""

    def __init__(self, root: TreeRoot) -> None:
        self.root = root
        self.mnt = mountid.mount_id(root.fd)

    def children(self, fd: int | None) -> dict[bytes, os.stat_result]:
        if fd is None:
            return {}
        out = {}
        for name in _names(fd):
            try:
                out[name] = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                continue
        return out

    def open(self, fd: int | None, name: bytes) -> int | None:
        """A child directory, or None when it is gone, or on another mount."""
        if fd is None:
            return None
        try:
            child = os.open(name, _DIR, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # gone, or swapped meanwhile
                return None
            raise  # out of descriptors, say: never a silently shorter diff
        if mountid.mount_id(child) != self.mnt:
            os.close(child)
            return None
        return child


def _xattrs(fd: int, name: bytes) -> dict[str, bytes]:
    path = b"/proc/self/fd/%d/%s" % (fd, name)
    try:
        return {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)}
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENODATA, errno.ENOENT, errno.EPERM):
            return {}
        raise


_CHANGED = (FileNotFoundError, beneath.NotRegular, beneath.Unsafe)
"""What a live tree changing between the listing and the comparison raises: a change."""


def _same_bytes(ofd: int, nfd: int, name: bytes) -> bool:
    """Whether two regular files hold the same bytes; False when either is gone or no
    longer a regular file (never opened then: a FIFO, a device node)."""
    try:
        a = beneath.open_regular(ofd, (name,))
    except _CHANGED:
        return False
    try:
        try:
            b = beneath.open_regular(nfd, (name,))
        except _CHANGED:
            return False
        try:
            pos = 0
            while True:  # from the next data either file holds: holes in both are equal (zeros)
                pos = min(_next_data(a, pos), _next_data(b, pos))
                x, y = os.pread(a, _CHUNK, pos), os.pread(b, _CHUNK, pos)
                if x != y:
                    return False
                if not x:
                    return True
                pos += len(x)
        finally:
            os.close(b)
    finally:
        os.close(a)


def _next_data(fd: int, pos: int) -> int:
    """Where data starts at or after `pos` (SEEK_DATA), the end of the file when only a
    hole is left, `pos` itself where the filesystem cannot tell."""
    try:
        return os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return os.fstat(fd).st_size
        if e.errno == errno.EINVAL:
            return pos
        raise


def _target(fd: int, name: bytes) -> bytes | None:
    """A symlink's target; None when it is gone or no longer a symlink (a live tree changes)."""
    try:
        return os.readlink(name, dir_fd=fd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINVAL):
            return None
        raise


def compare(ofd: int, nfd: int, name: bytes, o: os.stat_result, n: os.stat_result) -> list[str]:
    """What differs between two entries of one type: content, mode, owner, target, xattrs."""
    fields = []
    if stat.S_ISREG(n.st_mode):
        quick = o.st_mtime_ns == n.st_mtime_ns and o.st_mtime_ns % 1_000_000_000 != 0
        if o.st_size != n.st_size or (not quick and not _same_bytes(ofd, nfd, name)):
            fields.append("content")
    elif (stat.S_ISCHR(n.st_mode) or stat.S_ISBLK(n.st_mode)) and o.st_rdev != n.st_rdev:
        fields.append("content")
    if stat.S_IMODE(o.st_mode) != stat.S_IMODE(n.st_mode) and not stat.S_ISLNK(n.st_mode):
        fields.append("mode")
    if (o.st_uid, o.st_gid) != (n.st_uid, n.st_gid):
        fields.append("owner")
    if stat.S_ISLNK(n.st_mode) and _target(ofd, name) != _target(nfd, name):
        fields.append("target")
    if _xattrs(ofd, name) != _xattrs(nfd, name):
        fields.append("xattrs")
    return fields


def _record(parts: Parts, change: str, o: os.stat_result | None, n: os.stat_result | None,
            fields: list[str] | None = None) -> dict:
    shown = n if n is not None and not _whiteout(n) else o
    out = {"path": beneath.show_path(parts), "change": change,
           "type": beneath.kind_of(shown.st_mode) if shown is not None else "unknown",
           "size": n.st_size if n is not None and change != "deleted" else None,
           "old_size": o.st_size if o is not None and change != "added" else None}
    if change == "type_changed" and o is not None:
        out["old_type"] = beneath.kind_of(o.st_mode)
    if fields:
        out["fields"] = fields
    return out


@dataclass
class DiffStats:
    """How much a diff looked at: entries compared (a benchmark's and a test's witness)."""

    compared: int = 0


class _Pair:
    """The two trees of a diff, and what it has compared so far."""

    def __init__(self, old: TreeRoot, new: TreeRoot, stats: DiffStats | None) -> None:
        self.old, self.new = _Side(old), _Side(new)
        self.stats = stats if stats is not None else DiffStats()


@dataclass
class _Down:
    """A step's request: walk these two child directories (either may be None) next; the
    driver closes them after."""

    co: int | None
    cn: int | None
    here: Parts


Steps = Iterator["tuple[Parts, dict] | _Down"]


def _drive(pair: _Pair, first: Steps) -> Iterator[tuple[Parts, dict]]:
    """The records of a walk, descending with an explicit stack rather than nested
    generators: a tree thousands of directories deep takes no Python stack."""
    stack: list[tuple[Steps, tuple[int | None, ...]]] = [(first, ())]
    try:
        while stack:
            try:
                item = next(stack[-1][0])
            except StopIteration:
                for fd in stack.pop()[1]:
                    if fd is not None:
                        os.close(fd)
                continue
            if isinstance(item, _Down):
                stack.append((_walk(pair, item.co, item.cn, item.here), (item.co, item.cn)))
            else:
                yield item
    finally:
        for steps, fds in stack:
            steps.close()  # type: ignore[attr-defined]
            for fd in fds:
                if fd is not None:
                    os.close(fd)


def diff(old: TreeRoot, new: TreeRoot, stats: DiffStats | None = None) -> Iterator[tuple[Parts, dict]]:
    """Every difference from `old` to `new`, in walk order, each with its path's components
    (the order is that of the component tuples: a cursor compares with them)."""
    pair = _Pair(old, new, stats)
    ofd, nfd = os.dup(old.fd), os.dup(new.fd)
    try:
        yield from _drive(pair, _walk(pair, ofd, nfd, ()))
    finally:
        os.close(ofd)
        os.close(nfd)


def diff_paths(old: TreeRoot, new: TreeRoot, candidates: dict[Parts, bool],
               stats: DiffStats | None = None) -> Iterator[tuple[Parts, dict]]:
    """What `diff` gives, comparing only `candidates` (path -> deep: everything beneath
    compared too), the paths a filesystem's change tracking says may differ.

    Candidates are compared in walk order, each as the walk compares it, with its
    ancestors first; one beneath a path reported whole (added, deleted, type
    changed, deep) is already covered.  Paths in neither tree give nothing."""
    pair = _Pair(old, new, stats)
    wanted: dict[Parts, bool] = {}
    for parts, deep in candidates.items():
        for i in range(1, len(parts)):
            wanted.setdefault(parts[:i], False)
        wanted[parts] = deep or wanted.get(parts, False)
    covered: set[Parts] = set()
    for parts in sorted(wanted):
        if any(parts[:i] in covered for i in range(1, len(parts))):
            continue
        ofd, nfd = _parent(pair.old, parts), _parent(pair.new, parts)
        try:
            if ofd is None and nfd is None:
                continue
            name = parts[-1]
            o, n = _lstat(ofd, name), _lstat(nfd, name)
            whole = o is None or n is None or stat.S_IFMT(o.st_mode) != stat.S_IFMT(n.st_mode)
            if whole or wanted[parts]:
                covered.add(parts)
            yield from _drive(pair, _name(pair, ofd, nfd, parts[:-1], name, o, n, deep=wanted[parts]))
        finally:
            for fd in (ofd, nfd):
                if fd is not None:
                    os.close(fd)


def _parent(side: _Side, parts: Parts) -> int | None:
    """The directory holding `parts` as the walk reaches it (no symlink, no other
    mount), or None when it is not there."""
    fd: int | None = os.dup(side.root.fd)
    for name in parts[:-1]:
        child = side.open(fd, name)
        os.close(fd)  # type: ignore[arg-type]
        if child is None:
            return None
        fd = child
    return fd


def _lstat(fd: int | None, name: bytes) -> os.stat_result | None:
    if fd is None:
        return None
    try:
        return os.lstat(name, dir_fd=fd)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _walk(pair: _Pair, ofd: int | None, nfd: int | None, parts: Parts) -> Steps:
    olds, news = pair.old.children(ofd), pair.new.children(nfd)
    for name in sorted(olds.keys() | news.keys()):
        yield from _name(pair, ofd, nfd, parts, name, olds.get(name), news.get(name), deep=True)


def _name(pair: _Pair, ofd: int | None, nfd: int | None, parts: Parts, name: bytes,
          o: os.stat_result | None, n: os.stat_result | None, deep: bool) -> Steps:
    """The records of one name of two directories: its own, then everything beneath an
    entry added, deleted or of another type, and beneath a directory in both if `deep`."""
    pair.stats.compared += 1
    here = parts + (name,)
    if pair.old.root.whiteouts and _whiteout(o):
        o = None if not _whiteout(n) else o
    if pair.new.root.whiteouts and _whiteout(n):
        if o is None or _whiteout(o):
            return
        yield here, _record(here, "deleted", o, None)
        yield from _subtree(pair, ofd, nfd, name, here, o, None)
        return
    if o is None and n is None:
        return
    if o is None or n is None:
        change = "added" if o is None else "deleted"
        yield here, _record(here, change, o, n)
        yield from _subtree(pair, ofd, nfd, name, here, o, n)
        return
    if stat.S_IFMT(o.st_mode) != stat.S_IFMT(n.st_mode):
        yield here, _record(here, "type_changed", o, n)
        yield from _subtree(pair, ofd, nfd, name, here, o, n)
        return
    assert ofd is not None and nfd is not None
    fields = compare(ofd, nfd, name, o, n)
    if fields:
        yield here, _record(here, "modified", o, n, fields)
    if deep and stat.S_ISDIR(n.st_mode):
        yield _Down(pair.old.open(ofd, name), pair.new.open(nfd, name), here)


def _subtree(pair: _Pair, ofd: int | None, nfd: int | None, name: bytes, here: Parts,
             o: os.stat_result | None, n: os.stat_result | None) -> Steps:
    """Everything beneath an entry that appeared or went (or changed type): the old
    directory's entries as deleted, the new one's as added."""
    old_dir = o is not None and stat.S_ISDIR(o.st_mode)
    new_dir = n is not None and stat.S_ISDIR(n.st_mode)
    if old_dir or new_dir:
        yield _Down(pair.old.open(ofd, name) if old_dir else None,
                    pair.new.open(nfd, name) if new_dir else None, here)
