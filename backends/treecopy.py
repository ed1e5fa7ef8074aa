"""Exact copies of directory trees, for the overlay fallback backend.

`copy_tree` reproduces a tree as a root filesystem needs it: owners, modes
(setuid/setgid/sticky), atime/mtime in ns, every xattr (``trusted.overlay.*``
included, POSIX ACLs set last), overlay whiteouts and other device nodes,
FIFOs, sockets, symlinks (exact bytes), hard links, sparse files and
arbitrary-byte names.  File data is cloned (FICLONE) where the filesystem
can, else hard-linked to the previous snapshot when unchanged (rsync
``--link-dest`` quick check), else copied with ``copy_file_range``.

Behaviour the caller must know:

* ``src`` and ``link_dest`` themselves must be directories, not symlinks to
  them (ELOOP).  Everything below is opened relative to its parent's
  descriptor with ``O_NOFOLLOW``: a symlink is never followed, even if a
  running container swaps a directory for one during the copy, and path
  length is unbounded.  Descriptors are bounded whatever the depth: the top
  `KEEP_OPEN` levels stay open, deeper ones hold only the current
  directory's and are re-opened through ``..`` (checked to be the same
  inode) on the way back up; hard links are made through an ``O_PATH``
  descriptor of the first copy (at most `LINK_FDS` at a time, then by
  path from the copy's root, one component at a time), never through a
  path that could exceed PATH_MAX.  At most about
  ``3 * KEEP_OPEN + LINK_FDS + 4`` descriptors per copy.
* Mount points inside ``src`` (a directory, or a bind-mounted file or
  device, on another mount than src: compared by mount id, so a bind mount
  of the same filesystem counts) are recreated as an empty directory /
  empty regular file with the owner, mode and times of what is mounted
  there (the mounted root as seen through the mount point, not the covered
  directory beneath), not descended into, and listed in
  `CopyStats.mount_points`.  ``src`` must be a plain directory on one
  filesystem, not an overlay *merged* mount: copy the upper layer instead.
* Entries that vanish between listing and copying are skipped and counted in
  `CopyStats.vanished`.  An entry that changes while copied (renamed,
  replaced, swapped for another type) is copied again from scratch, up to
  `ATTEMPTS` times in all (`CopyStats.retried`); if it keeps changing, or a
  directory being copied is moved away, `TreeChanged` is raised.
* Errors are raised as they come (OSError subclasses; ``filename`` and a
  note name the source path being copied).  A partially built ``dst`` is
  left behind: the caller removes it.
* ``allow_reflink=False`` only stops the explicit FICLONE: on btrfs/XFS the
  kernel's ``copy_file_range`` may still share extents.
* Without root: owners other than the caller's (EPERM), device nodes other
  than whiteouts (EPERM) fail with a PermissionError saying so; ``trusted.*``
  xattrs are invisible to non-root and silently not copied.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import mountid

FICLONE = 0x40049409
"""ioctl(dst_fd, FICLONE, src_fd): share all of src's extents (linux/fs.h)."""

_ACL_XATTRS = frozenset({"system.posix_acl_access", "system.posix_acl_default"})
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS})
_NO_COPY_FILE_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
_NO_XATTRS = frozenset({errno.EOPNOTSUPP, errno.ENOSYS})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK/O_NOCTTY: harmless if a container swaps in a FIFO or tty at the last moment.
_SRC_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DST_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 30
_BUF = 1 << 20

Xattrs = list[tuple[str, bytes]]

KEEP_OPEN = 8
"""Levels of depth whose directory descriptors stay open; deeper ones are re-opened."""
LINK_FDS = 32
"""O_PATH descriptors kept for multiply-linked inodes whose other names are still to come."""
ATTEMPTS = 5
"""Times one entry is tried before a tree that keeps changing is given up on."""

# Errors an entry gives when it was replaced between being listed and opened.
_CHANGE_ERRNOS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EINVAL, errno.ESTALE,
})
_DIR, _REG, _OTHER = 1, 2, 0


class TreeChanged(OSError):
    """The source tree kept changing while it was copied (a live container: retry, or freeze it)."""

    def __init__(self, path: bytes, why: str) -> None:
        super().__init__(errno.EAGAIN, f"{why}: {_short(path)!r}")
        self.path = path
        """The entry (relative to src) that kept changing."""
        self.why = why


class _Changed(OSError):
    """One attempt at an entry saw it change under it."""


@dataclass
class CopyStats:
    """What one `copy_tree` did."""

    files: int = 0
    """Non-directory entries created (regular, symlink, device, FIFO, socket), links included."""
    dirs: int = 0
    """Directories created, dst itself included."""
    bytes_copied: int = 0
    """File data written (data segments only; cloned and linked files count 0)."""
    linked: int = 0
    """Regular files hard-linked to their unchanged twin in link_dest."""
    reflinked: int = 0
    """Regular files cloned with FICLONE."""
    exclusive_bytes: int = 0
    """Allocated bytes (st_blocks*512, each inode once) of inodes this copy created.

    Inodes linked from link_dest are not counted.  Cloned files count in
    full: st_blocks cannot see shared extents, so with reflinks this is an
    upper bound.
    """
    mount_points: list[bytes] = field(default_factory=list)
    """Paths (relative to src) of mount points recreated empty, not descended."""
    vanished: int = 0
    """Entries listed but gone before they could be copied (live trees)."""
    retried: int = 0
    """Entries copied again because they changed while copied (live trees)."""


def copy_tree(
    src: Path, dst: Path, *, link_dest: Path | None = None, allow_reflink: bool = True,
    unchanged_since_ns: int | None = None,
) -> CopyStats:
    """Create `dst` (must not exist; its parent must) as an exact copy of directory `src`.

    `link_dest` is the previous snapshot of the same tree: when files are
    not cloned, a regular file whose twin at the same relative path there
    has the same size, mtime_ns, mode, uid, gid and xattrs is hard-linked to
    it instead of copied (content is not compared).  `unchanged_since_ns`
    (when link_dest was copied, at the latest its start) makes that safe:
    only a file whose ctime is older is linked.  Every write changes a
    file's ctime and nobody can set it back, so a file whose mtime was
    preserved or restored (`touch -r`, tar, rsync -t) after a rewrite is
    still copied.  Raises OSError; see the module docstring for what is left
    behind.
    """
    return _Copier(os.fsencode(src), os.fsencode(dst), link_dest, allow_reflink, unchanged_since_ns).run()


def tree_exclusive_bytes(root: Path) -> int:
    """Allocated bytes of the inodes under `root` that no path outside `root` links to.

    Directories always count; other inodes count (once) when all their
    st_nlink links lie inside `root`.  Does not cross mount points or follow
    symlinks; descriptors are bounded whatever the depth.
    """
    root_fd = os.open(os.fsencode(root), _DIR_FLAGS)
    try:
        st = os.fstat(root_fd)
        root_mnt = mountid.mount_id(root_fd)
        listing = _list_dir(root_fd)
    except BaseException:
        os.close(root_fd)
        raise
    total = st.st_blocks * 512
    multi: dict[tuple[int, int], list[int]] = {}  # inode -> [links seen, st_nlink, bytes]
    stack = [_Level(b"", [root_fd], [(st.st_dev, st.st_ino)], iter(listing))]
    try:
        while stack:
            top = stack[-1]
            for name, kind in top.entries:
                est = os.stat(name, dir_fd=top.fds[0], follow_symlinks=False)
                if stat.S_ISDIR(est.st_mode):
                    child = os.open(name, _DIR_FLAGS, dir_fd=top.fds[0])
                    try:
                        cst = os.fstat(child)
                        if mountid.mount_id(child) != root_mnt:
                            os.close(child)
                            continue
                        total += cst.st_blocks * 512
                        level = _Level(name, [child], [(cst.st_dev, cst.st_ino)], iter(_list_dir(child)))
                    except BaseException:
                        os.close(child)
                        raise
                    _push(stack, level)
                    break
                if est.st_nlink == 1:
                    total += est.st_blocks * 512
                else:
                    rec = multi.setdefault((est.st_dev, est.st_ino), [0, est.st_nlink, est.st_blocks * 512])
                    rec[0] += 1
            else:
                _pop(stack)
    finally:
        for level in stack:
            level.close()
    return total + sum(size for seen, nlink, size in multi.values() if seen >= nlink)


def reflink_supported(directory: Path) -> bool:
    """Whether files in `directory` can be cloned with FICLONE (tries it on two temp files)."""
    with tempfile.TemporaryFile(dir=directory) as a, tempfile.TemporaryFile(dir=directory) as b:
        a.write(b"treecopy reflink probe\n" * 200)
        a.flush()
        try:
            fcntl.ioctl(b.fileno(), FICLONE, a.fileno())
        except OSError as e:
            if e.errno in _NO_REFLINK:
                return False
            raise
    return True


def _list_dir(fd: int) -> list[tuple[bytes, int]]:
    """(name, _DIR/_REG/_OTHER) of each entry, typed while `fd` is open (d_type or an lstat)."""
    out = []
    with os.scandir(fd) as it:
        for e in it:
            kind = _DIR if e.is_dir(follow_symlinks=False) else _REG if e.is_file(follow_symlinks=False) else _OTHER
            out.append((os.fsencode(e.name), kind))
    return out


def _short(path: bytes, keep: int = 300) -> str:
    """A path for a message: its end, when very long (deep trees)."""
    text = os.fsdecode(path)
    return text if len(text) <= keep else "..." + text[-keep:]


@dataclass(slots=True)
class _Level:
    """One directory on the way down: its name, a descriptor per tree walked
    in step (src, dst, link_dest; -1 when closed, re-opened through ".."),
    their (st_dev, st_ino), and the entries still to do."""

    name: bytes
    fds: list[int]
    ids: list[tuple[int, int] | None]
    entries: Iterator[tuple[bytes, int]]
    st: os.stat_result | None = None

    # The copier walks (src, dst, link_dest); the top level's descriptors are always open.
    @property
    def src_fd(self) -> int:
        return self.fds[0]

    @property
    def dst_fd(self) -> int:
        return self.fds[1]

    @property
    def ld_fd(self) -> int | None:
        return self.fds[2] if self.fds[2] >= 0 else None

    def close(self) -> None:
        for i, fd in enumerate(self.fds):
            if fd >= 0:
                os.close(fd)
                self.fds[i] = -1


def _push(stack: list[_Level], child: _Level) -> None:
    """Descend into `child`; below KEEP_OPEN levels its parent gives up the
    descriptors the child can find again through ".." (trees the child is in)."""
    parent = stack[-1] if stack else None
    stack.append(child)
    if parent is not None and len(stack) - 2 >= KEEP_OPEN:
        for i, fd in enumerate(parent.fds):
            if fd >= 0 and i < len(child.fds) and child.fds[i] >= 0:
                os.close(fd)
                parent.fds[i] = -1


def _pop(stack: list[_Level]) -> None:
    """Leave the top directory, re-opening its parent's closed descriptors through "..".

    A parent that is no longer the directory it was (the source was moved
    by a running container) raises TreeChanged.
    """
    top = stack.pop()
    try:
        if stack:
            parent = stack[-1]
            for i, fd in enumerate(parent.fds):
                if fd < 0 and parent.ids[i] is not None:
                    up = os.open(b"..", _DIR_FLAGS | (os.O_NOATIME if i == 0 and os.geteuid() == 0 else 0),
                                 dir_fd=top.fds[i])
                    st = os.fstat(up)
                    if (st.st_dev, st.st_ino) != parent.ids[i]:
                        os.close(up)
                        name = b"/".join(f.name for f in stack[1:])
                        raise TreeChanged(name, "a directory was moved while it was copied")
                    parent.fds[i] = up
    finally:
        top.close()


def _proc_path(dir_fd: int, name: bytes) -> bytes:
    """A path to `name` in `dir_fd` for calls that take no dir_fd (the xattr family)."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _read_xattrs(target: int | bytes) -> Xattrs:
    """All xattrs of an fd or (not followed) path, ACLs last so they are set after chmod."""
    follow = isinstance(target, int)  # fds refuse follow_symlinks=False
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return []
        raise
    out: Xattrs = []
    for name in sorted(names, key=lambda n: (n in _ACL_XATTRS, n)):
        try:
            out.append((name, os.getxattr(target, name, follow_symlinks=follow)))
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed since listed
                raise
    return out


def _write_xattrs(target: int | bytes, xattrs: Xattrs) -> None:
    follow = isinstance(target, int)
    for name, value in xattrs:
        os.setxattr(target, name, value, follow_symlinks=follow)


def _owner_error(e: PermissionError, st: os.stat_result) -> PermissionError:
    return PermissionError(
        e.errno, f"cannot set owner {st.st_uid}:{st.st_gid}: preserving owners needs root (CAP_CHOWN)"
    )


class _Copier:
    """State of one copy_tree call."""

    def __init__(self, src: bytes, dst: bytes, link_dest: Path | None, allow_reflink: bool,
                 unchanged_since_ns: int | None = None) -> None:
        self.src, self.dst = src, dst
        self.unchanged_since_ns = unchanged_since_ns
        self.link_dest = None if link_dest is None else os.fsencode(link_dest)
        self.allow_reflink = allow_reflink
        self.reflink = False
        self.use_link_dest = link_dest is not None
        self.copy_file_range = True
        self.noatime = os.O_NOATIME if os.geteuid() == 0 else 0
        self.stats = CopyStats()
        self.root_mnt = 0
        self.stack: list[_Level] = []
        # source inode -> [O_PATH fd of its first copy or -1, links still to come, dst path or None]
        self.hardlinks: dict[tuple[int, int], list] = {}
        self.link_fds = 0
        self.ld_claims: dict[tuple[int, int], tuple[int, int]] = {}  # link_dest inode -> source inode

    def run(self) -> CopyStats:
        src_fd = os.open(self.src, _DIR_FLAGS | self.noatime)
        dst_fd = ld_fd = -1
        try:
            st = os.fstat(src_fd)
            self.root_mnt = mountid.mount_id(src_fd)
            os.mkdir(self.dst, 0o700)
            dst_fd = os.open(self.dst, _DIR_FLAGS)
            dst_st = os.fstat(dst_fd)
            self.stats.dirs += 1
            self.reflink = self.allow_reflink and reflink_supported(Path(os.fsdecode(self.dst)))
            ld_id = None
            if self.link_dest is not None:
                ld_fd = os.open(self.link_dest, _DIR_FLAGS)
                ld_st = os.fstat(ld_fd)
                ld_id = (ld_st.st_dev, ld_st.st_ino)
            self.stack.append(_Level(b"", [src_fd, dst_fd, ld_fd],
                                     [(st.st_dev, st.st_ino), (dst_st.st_dev, dst_st.st_ino), ld_id],
                                     iter(_list_dir(src_fd)), st))
        except BaseException:
            for fd in (src_fd, dst_fd, ld_fd):
                if fd >= 0:
                    os.close(fd)
            raise
        stack = self.stack
        try:
            while stack:
                d = stack[-1]
                for name, kind in d.entries:
                    child = self._entry(d, name, kind)
                    if child is not None:
                        _push(stack, child)
                        break
                else:
                    try:
                        self._finish_dir(d)
                        _pop(stack)
                    except OSError as e:
                        self._annotate(e, self._rel(), None)
                        raise
        finally:
            for d in stack:
                d.close()
            for rec in self.hardlinks.values():
                if rec[0] >= 0:
                    os.close(rec[0])
        return self.stats

    # -- per entry --------------------------------------------------------

    def _entry(self, d: _Level, name: bytes, kind: int) -> _Level | None:
        """Copy one entry, again if it changed meanwhile; a directory comes back as a level to descend into."""
        seen: tuple[int, int, int] | None = None
        try:
            for _ in range(ATTEMPTS):
                try:
                    return self._entry_once(d, name, kind)
                except OSError as e:
                    if isinstance(e, TreeChanged):
                        raise
                    try:
                        now = os.stat(name, dir_fd=d.src_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        self._discard(d, name)
                        self.stats.vanished += 1
                        return None
                    ident = (now.st_ino, now.st_mode, now.st_ctime_ns)
                    changed = isinstance(e, _Changed) or (
                        e.errno in _CHANGE_ERRNOS if seen is None else ident != seen)
                    if not changed:
                        raise
                    seen, kind = ident, _OTHER  # next time: dispatch on a fresh lstat
                    self._discard(d, name)
                    self.stats.retried += 1
            raise TreeChanged(self._rel(name), f"kept changing while copied ({ATTEMPTS} attempts)")
        except OSError as e:
            self._annotate(e, self._rel(name), name)
            raise

    def _entry_once(self, d: _Level, name: bytes, kind: int) -> _Level | None:
        if kind == _DIR:
            return self._enter_dir(d, name)
        if kind == _REG and self._copy_regular(d, name):
            return None
        try:
            st = os.stat(name, dir_fd=d.src_fd, follow_symlinks=False)
        except FileNotFoundError:
            self.stats.vanished += 1
            return None
        if stat.S_ISDIR(st.st_mode):
            return self._enter_dir(d, name)
        if stat.S_ISREG(st.st_mode):
            if self._copy_regular(d, name):
                return None
            raise _Changed(errno.EAGAIN, "file changed type during the copy", os.fsdecode(name))
        self._copy_special(d, name, st)
        return None

    def _discard(self, d: _Level, name: bytes) -> None:
        """Remove what a failed attempt made for `name` (a non-directory, or a still empty directory)."""
        try:
            os.unlink(name, dir_fd=d.dst_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            os.rmdir(name, dir_fd=d.dst_fd)
        except PermissionError:  # EPERM: some kernels' answer to unlinking a directory
            os.rmdir(name, dir_fd=d.dst_fd)

    def _annotate(self, e: OSError, rel: bytes, name: bytes | None) -> None:
        """Name the source path in `e` (filename when it had none or only a base name)."""
        path = os.path.join(self.src, rel) if rel else self.src
        if e.filename is None or (name is not None and e.filename in (name, os.fsdecode(name))):
            e.filename = os.fsdecode(path)
        e.add_note(f"copy_tree: while copying {_short(path)!r}")

    def _rel(self, name: bytes | None = None) -> bytes:
        """The path, relative to src, of the current directory (or of `name` in it)."""
        parts = [level.name for level in self.stack[1:]]
        if name is not None:
            parts.append(name)
        return b"/".join(parts)

    def _enter_dir(self, d: _Level, name: bytes) -> _Level | None:
        try:
            src_fd = os.open(name, _DIR_FLAGS | self.noatime, dir_fd=d.src_fd)
        except FileNotFoundError:
            self.stats.vanished += 1
            return None
        dst_fd = ld_fd = -1
        try:
            st = os.fstat(src_fd)
            os.mkdir(name, 0o700, dir_fd=d.dst_fd)
            dst_fd = os.open(name, _DIR_FLAGS, dir_fd=d.dst_fd)
            if mountid.mount_id(src_fd) != self.root_mnt:
                self._set_meta_fd(dst_fd, st, [])
                self.stats.exclusive_bytes += os.fstat(dst_fd).st_blocks * 512
                self.stats.mount_points.append(self._rel(name))
                self.stats.dirs += 1
                os.close(src_fd)
                os.close(dst_fd)
                return None
            dst_st = os.fstat(dst_fd)
            ld_id = None
            if d.ld_fd is not None and self.use_link_dest:
                try:
                    ld_fd = os.open(name, _DIR_FLAGS, dir_fd=d.ld_fd)
                    ld_st = os.fstat(ld_fd)
                    ld_id = (ld_st.st_dev, ld_st.st_ino)
                except (FileNotFoundError, NotADirectoryError):
                    pass
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
            level = _Level(name, [src_fd, dst_fd, ld_fd],
                           [(st.st_dev, st.st_ino), (dst_st.st_dev, dst_st.st_ino), ld_id],
                           iter(_list_dir(src_fd)), st)
            self.stats.dirs += 1
            return level
        except BaseException:
            for fd in (src_fd, dst_fd, ld_fd):
                if fd >= 0:
                    os.close(fd)
            raise

    def _finish_dir(self, d: _Level) -> None:
        """Directory metadata goes on last: after its contents, so times and default ACLs stick."""
        assert d.st is not None
        self._set_meta_fd(d.dst_fd, d.st, _read_xattrs(d.src_fd))
        self.stats.exclusive_bytes += os.fstat(d.dst_fd).st_blocks * 512

    def _copy_regular(self, d: _Level, name: bytes) -> bool:
        """Copy a regular file; False if it turns out not to be one (caller re-examines it)."""
        try:
            sfd = os.open(name, _SRC_FILE_FLAGS | self.noatime, dir_fd=d.src_fd)
        except FileNotFoundError:
            self.stats.vanished += 1
            return True
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                return False
            raise
        try:
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode):
                return False
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.hardlinks:
                self._link_inside(d, name, key)
                return True
            if mountid.mount_id(sfd) != self.root_mnt:
                self._new_file(d, name, st, [], None)
                self.stats.mount_points.append(self._rel(name))
            else:
                xattrs = _read_xattrs(sfd)
                if not (self.use_link_dest and not self.reflink and self._link_from_dest(d, name, st, xattrs)):
                    self._new_file(d, name, st, xattrs, sfd)
                if st.st_nlink > 1:
                    self._remember_link(d, name, st)
            self.stats.files += 1
            return True
        finally:
            os.close(sfd)

    def _new_file(self, d: _Level, name: bytes, st: os.stat_result, xattrs: Xattrs, sfd: int | None) -> None:
        dfd = os.open(name, _DST_FILE_FLAGS, 0o600, dir_fd=d.dst_fd)
        try:
            # Data before owner/mode/xattrs: writing clears setuid and security.capability.
            if sfd is not None and st.st_size:
                if self.reflink and self._clone(sfd, dfd):
                    self.stats.reflinked += 1
                else:
                    self.stats.bytes_copied += self._copy_data(sfd, dfd, st)
            self._set_meta_fd(dfd, st, xattrs)
            self.stats.exclusive_bytes += os.fstat(dfd).st_blocks * 512
        finally:
            os.close(dfd)

    def _clone(self, sfd: int, dfd: int) -> bool:
        try:
            fcntl.ioctl(dfd, FICLONE, sfd)
        except OSError as e:
            if e.errno not in _NO_REFLINK:
                raise
            self.reflink = False
            return False
        return True

    def _copy_data(self, sfd: int, dfd: int, st: os.stat_result) -> int:
        """Copy the data segments of `sfd` (all of it unless sparse); holes stay holes."""
        size = st.st_size
        if st.st_blocks * 512 >= size:
            end = self._copy_range(sfd, dfd, 0, size)
            copied = end
        else:
            copied = end = pos = 0
            while pos < size:
                try:
                    data = os.lseek(sfd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # only a hole remains
                        break
                    raise
                if data >= size:
                    break
                hole = min(os.lseek(sfd, data, os.SEEK_HOLE), size)
                n = self._copy_range(sfd, dfd, data, hole - data)
                copied += n
                end = data + n
                if n < hole - data:  # source shrank under us
                    break
                pos = hole
        if end < size:
            os.ftruncate(dfd, size)
        return copied

    def _copy_range(self, sfd: int, dfd: int, offset: int, count: int) -> int:
        done = 0
        if self.copy_file_range:
            try:
                while done < count:
                    n = os.copy_file_range(sfd, dfd, min(count - done, _CHUNK), offset + done, offset + done)
                    if n == 0:
                        return done
                    done += n
                return done
            except OSError as e:
                if e.errno not in _NO_COPY_FILE_RANGE:
                    raise
                self.copy_file_range = False
        while done < count:
            buf = os.pread(sfd, min(count - done, _BUF), offset + done)
            if not buf:
                break
            view = memoryview(buf)
            while view:
                n = os.pwrite(dfd, view, offset + done)
                done += n
                view = view[n:]
        return done

    def _link_from_dest(self, d: _Level, name: bytes, st: os.stat_result, xattrs: Xattrs) -> bool:
        """Hard-link `name` to its unchanged twin in link_dest, if it has one."""
        if d.ld_fd is None:
            return False
        if self.unchanged_since_ns is not None and st.st_ctime_ns >= self.unchanged_since_ns:
            return False  # changed (or may have) since link_dest was taken
        try:
            lst = os.stat(name, dir_fd=d.ld_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not (
            stat.S_ISREG(lst.st_mode)
            and lst.st_size == st.st_size
            and lst.st_mtime_ns == st.st_mtime_ns
            and lst.st_mode == st.st_mode
            and lst.st_uid == st.st_uid
            and lst.st_gid == st.st_gid
        ):
            return False
        ld_key, src_key = (lst.st_dev, lst.st_ino), (st.st_dev, st.st_ino)
        # Two source inodes must not end up as one: a second one gets a real copy.
        if self.ld_claims.get(ld_key, src_key) != src_key:
            return False
        if _read_xattrs(_proc_path(d.ld_fd, name)) != xattrs:
            return False
        try:
            os.link(name, name, src_dir_fd=d.ld_fd, dst_dir_fd=d.dst_fd, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.EXDEV:
                self.use_link_dest = False
                return False
            if e.errno == errno.EMLINK:
                return False
            raise
        self.ld_claims[ld_key] = src_key
        self.stats.linked += 1
        return True

    def _remember_link(self, d: _Level, name: bytes, st: os.stat_result) -> None:
        """Note the first copy of a multiply-linked inode, for its other names to link to."""
        if self.link_fds < LINK_FDS:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.dst_fd)
            self.link_fds += 1
            self.hardlinks[(st.st_dev, st.st_ino)] = [fd, st.st_nlink - 1, None]
        else:
            self.hardlinks[(st.st_dev, st.st_ino)] = [-1, st.st_nlink - 1, self._rel(name)]

    def _link_inside(self, d: _Level, name: bytes, key: tuple[int, int]) -> None:
        """Another name of an inode already copied: a hard link to the copy, however deep."""
        rec = self.hardlinks[key]
        if rec[0] >= 0:
            # linkat(AT_SYMLINK_FOLLOW) on the magic link: the inode itself, even a symlink's.
            os.link(b"/proc/self/fd/%d" % rec[0], name, dst_dir_fd=d.dst_fd, follow_symlinks=True)
        else:
            self._link_by_path(rec[2], d, name)
        self.stats.files += 1
        rec[1] -= 1
        if rec[1] <= 0:  # every name seen: let the descriptor go
            if rec[0] >= 0:
                os.close(rec[0])
                self.link_fds -= 1
            del self.hardlinks[key]

    def _link_by_path(self, rel: bytes, d: _Level, name: bytes) -> None:
        """Link to dst/`rel`, walking to its directory one component at a time (no PATH_MAX)."""
        *dirs, last = rel.split(b"/")
        fd = os.dup(self.stack[0].dst_fd)
        try:
            for part in dirs:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            os.link(last, name, src_dir_fd=fd, dst_dir_fd=d.dst_fd, follow_symlinks=False)
        finally:
            os.close(fd)

    def _copy_special(self, d: _Level, name: bytes, st: os.stat_result) -> None:
        """Symlinks, device nodes (whiteouts included), FIFOs and sockets."""
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.hardlinks:
            self._link_inside(d, name, key)
            return
        mode = st.st_mode
        if not stat.S_ISLNK(mode) and mountid.mount_id(d.src_fd, name) != self.root_mnt:
            self._new_file(d, name, st, [], None)  # a device or FIFO bind-mounted over a file
            self.stats.mount_points.append(self._rel(name))
            self.stats.files += 1
            return
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(name, dir_fd=d.src_fd)
            except FileNotFoundError:
                self.stats.vanished += 1
                return
            os.symlink(target, name, dir_fd=d.dst_fd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            try:
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=d.dst_fd)
            except PermissionError as e:
                raise PermissionError(
                    e.errno,
                    f"cannot create device node {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}: needs root (CAP_MKNOD)",
                ) from e
        else:
            raise OSError(errno.EINVAL, f"unsupported file type {stat.S_IFMT(mode):#o}", os.fsdecode(name))
        xattrs = _read_xattrs(_proc_path(d.src_fd, name))
        # Read by name: the entry must still be the one the lstat saw, or what was made mixes two.
        now = os.stat(name, dir_fd=d.src_fd, follow_symlinks=False)
        if (now.st_ino, now.st_mode) != (st.st_ino, st.st_mode):
            raise _Changed(errno.EAGAIN, "entry replaced during the copy", os.fsdecode(name))
        try:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=d.dst_fd, follow_symlinks=False)
        except PermissionError as e:
            raise _owner_error(e, st) from e
        if not stat.S_ISLNK(mode):
            os.chmod(name, stat.S_IMODE(mode), dir_fd=d.dst_fd)
        _write_xattrs(_proc_path(d.dst_fd, name), xattrs)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=d.dst_fd, follow_symlinks=False)
        self.stats.exclusive_bytes += os.stat(name, dir_fd=d.dst_fd, follow_symlinks=False).st_blocks * 512
        self.stats.files += 1
        if st.st_nlink > 1:
            self._remember_link(d, name, st)

    def _set_meta_fd(self, fd: int, st: os.stat_result, xattrs: Xattrs) -> None:
        """Owner, then mode (chown clears setuid), then xattrs (ACLs last), then times."""
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except PermissionError as e:
            raise _owner_error(e, st) from e
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        _write_xattrs(fd, xattrs)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
