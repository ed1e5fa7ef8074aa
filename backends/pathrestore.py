"""Bring single paths of a snapshot back into a live container.

Each path is checked first (all of them, before anything is written), then
built beside its target, in the same live directory, under a name carrying
the operation's token (`.snapd-restore-<token>-<n>`): a directory whole with
owners, modes, xattrs and the hard links inside it (backends.treecopy), any
other entry as itself.  Then each is renamed into place in one step:
RENAME_EXCHANGE when the path exists (the old entry is left under the
temporary name and removed after), RENAME_NOREPLACE when it does not.  A
filesystem without renameat2's flags (zfs-fuse: EINVAL) gets two renames
instead, the old entry first to `<temporary>-old`; a crash between them
leaves the path missing, and sweep() puts the old entry back.  A crash
leaves every path as it was or as in the snapshot, plus temporaries that
sweep() removes by token.  Every live directory is reached through
backends.beneath: no symlink followed, no mount crossed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from backends import beneath, faults, fsops, remove, treecopy
from backends.base import BackendError, TreeRoot

PREFIX = b".snapd-restore-"


class PathProblem(BackendError):
    """A path that cannot be restored as asked (`details` name it); nothing was changed."""

    def __init__(self, message: str, details: list[dict], missing: bool = False) -> None:
        super().__init__(message)
        self.details = details
        self.missing = missing
        """The path is not in the snapshot (else: refused as given)."""


@dataclass
class _Step:
    parts: tuple[bytes, ...]
    src_parent: int
    dst_parent: int
    name: bytes
    st: os.stat_result
    tmp: bytes
    existed: bool = False
    built: bool = False
    done: bool = False
    fds: list[int] = field(default_factory=list)

    @property
    def shown(self) -> str:
        return beneath.show_path(self.parts)


def _problem(step_path: str, reason: str, missing: bool = False) -> PathProblem:
    return PathProblem(f"cannot restore {step_path}: {reason}; nothing was restored",
                       [{"field": "paths", "reason": f"{step_path}: {reason}"}], missing)


def outermost(paths: list[tuple[bytes, ...]]) -> list[tuple[bytes, ...]]:
    """The paths in order, without repeats and without those inside another (restored with it)."""
    wanted = set(paths)
    out: list[tuple[bytes, ...]] = []
    for p in paths:
        if p not in out and not any(p[:i] in wanted for i in range(len(p))):
            out.append(p)
    return out


def _plan(src: TreeRoot, dst: TreeRoot, paths: list[tuple[bytes, ...]], token: str) -> list[_Step]:
    paths = outermost(paths)
    steps: list[_Step] = []
    try:
        for i, parts in enumerate(paths):
            shown = beneath.show_path(parts)
            if not parts:
                raise _problem(shown, "the root itself is restored with a whole restore")
            try:
                sp, name = beneath.open_parent(src.fd, parts)
            except beneath.Unsafe as e:
                raise _problem(shown, f"in the snapshot, {e.reason}") from None
            except (FileNotFoundError, NotADirectoryError):
                raise _problem(shown, "not in the snapshot", missing=True) from None
            step = _Step(parts, sp, -1, name, os.stat_result((0,) * 10), b"")
            step.fds.append(sp)
            steps.append(step)
            try:
                step.st = os.lstat(name, dir_fd=sp)
            except FileNotFoundError:
                raise _problem(shown, "not in the snapshot", missing=True) from None
            if src.whiteouts and _whiteout(step.st):
                raise _problem(shown, "the snapshot holds a deletion (an overlay whiteout) there", missing=True)
            try:
                step.dst_parent = beneath.open_dir(dst.fd, parts[:-1])
            except beneath.Unsafe as e:
                raise _problem(shown, f"in the container, {e.reason}") from None
            except (FileNotFoundError, NotADirectoryError):
                raise _problem(shown, "its parent directory is not in the container; restore the parent",
                               missing=True) from None
            step.fds.append(step.dst_parent)
            try:
                os.lstat(name, dir_fd=step.dst_parent)
                step.existed = True
            except FileNotFoundError:
                pass
            step.tmp = PREFIX + f"{token}-{i}".encode()
    except BaseException:
        _close(steps)
        raise
    return steps


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _proc(dir_fd: int, name: bytes = b"") -> str:
    return os.fsdecode(b"/proc/self/fd/%d/%s" % (dir_fd, name))


def _build(step: _Step) -> None:
    """The snapshot's entry, copied beside the live one under step.tmp."""
    step.built = True
    if stat.S_ISDIR(step.st.st_mode):
        fd = os.open(step.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=step.src_parent)
        try:
            # "/." keeps the magic link followed (O_NOFOLLOW applies to the last component); a Path would drop it
            treecopy.copy_tree(_proc(fd, b"."), Path(_proc(step.dst_parent, step.tmp)))  # type: ignore[arg-type]
        finally:
            os.close(fd)
        return
    st, sp, dp, tmp = step.st, step.src_parent, step.dst_parent, step.tmp
    if stat.S_ISREG(st.st_mode):
        _copy_file(sp, step.name, dp, tmp, st)  # its attributes set through its descriptor
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(step.name, dir_fd=sp), tmp, dir_fd=dp)
    else:
        os.mknod(tmp, st.st_mode, st.st_rdev, dir_fd=dp)
    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=dp, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        _chmod_made(dp, tmp, st)
    treecopy._write_xattrs(os.fsencode(_proc(dp, tmp)), treecopy._read_xattrs(os.fsencode(_proc(sp, step.name))))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dp, follow_symlinks=False)


def _chmod_made(dp: int, tmp: bytes, st: os.stat_result) -> None:
    """chmod of the node just made at `tmp` (a FIFO, a device), never through a symlink the
    container put in its place meanwhile (chmod follows one; the live directory is theirs)."""
    fd = os.open(tmp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dp)
    try:
        if stat.S_IFMT(os.fstat(fd).st_mode) != stat.S_IFMT(st.st_mode):
            raise OSError(errno.EEXIST, "replaced while it was built", os.fsdecode(tmp))
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


def _copy_file(sp: int, name: bytes, dp: int, tmp: bytes, st: os.stat_result) -> None:
    """Copy a regular file's data extents only (holes stay holes), then its size, owner,
    mode, xattrs and times, all through the new file's descriptor (the name is in a live
    directory: a symlink may replace it at any moment)."""
    fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=sp)
    try:
        if not stat.S_ISREG(os.fstat(fin).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fsdecode(name))
        fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dp)
        try:
            pos = 0
            while pos < st.st_size:
                try:
                    start = os.lseek(fin, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:
                        break  # only a hole remains
                    raise
                end = os.lseek(fin, start, os.SEEK_HOLE)
                off = start
                while off < end:
                    n = os.copy_file_range(fin, fout, end - off, off, off)
                    if n == 0:
                        break
                    off += n
                pos = end
            os.ftruncate(fout, st.st_size)
            os.fchown(fout, st.st_uid, st.st_gid)
            os.fchmod(fout, stat.S_IMODE(st.st_mode))
            treecopy._write_xattrs(fout, treecopy._read_xattrs(fin))
            os.utime(fout, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(fout)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


OLD = b"-old"
"""Suffix of the temporary name of an old entry moved aside by _swap_in_two()."""
NO_RENAME_FLAGS = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _swap(step: _Step) -> None:
    flags = fsops.RENAME_EXCHANGE if step.existed else fsops.RENAME_NOREPLACE
    try:
        fsops.rename_in(step.dst_parent, step.tmp, step.name, flags)
    except OSError as e:
        if e.errno not in NO_RENAME_FLAGS:
            raise
        _swap_in_two(step)
    step.done = True
    os.fsync(step.dst_parent)


def _swap_in_two(step: _Step) -> None:
    """The swap without renameat2's flags: the old entry aside, then the copy into place
    (the container's lock and the in-use check keep anyone else from the name between)."""
    fd = step.dst_parent
    if step.existed:
        os.rename(step.name, step.tmp + OLD, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
    elif _exists(fd, step.name):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(step.name))
    os.rename(step.tmp, step.name, src_dir_fd=fd, dst_dir_fd=fd)


def _exists(dir_fd: int, name: bytes) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _discard(step: _Step) -> None:
    """Remove what is left under step.tmp (the copy, or after a swap the old entry) and
    under step.tmp-old (the old entry a two-rename swap moved aside)."""
    if step.built and (step.existed or not step.done) and _exists(step.dst_parent, step.tmp):
        remove.remove_tree(_proc(step.dst_parent, step.tmp))
    if _exists(step.dst_parent, step.tmp + OLD):
        remove.remove_tree(_proc(step.dst_parent, step.tmp + OLD))


def _close(steps: list[_Step]) -> None:
    for s in steps:
        for fd in s.fds:
            os.close(fd)
        s.fds.clear()


def _describe(step: _Step) -> dict:
    return {"path": step.shown, "type": beneath.kind_of(step.st.st_mode), "replaced": step.existed}


async def restore(src: TreeRoot, dst: TreeRoot, paths: list[tuple[bytes, ...]], token: str,
                  refuse_busy: Callable[[], Awaitable[None]]) -> list[dict]:
    """See the module docstring; raises before any swap when a path cannot be restored."""
    steps = await asyncio.to_thread(_plan, src, dst, paths, token)
    try:
        await refuse_busy()
        try:
            for step in steps:
                await asyncio.to_thread(_build, step)
            await asyncio.to_thread(lambda: [os.fsync(s.dst_parent) for s in steps])
            await refuse_busy()  # again, just before the swaps
            for step in steps:
                await asyncio.to_thread(_swap, step)
                faults.point("pathrestore.swapped")
        finally:
            for step in steps:
                await asyncio.to_thread(_discard, step)
        return [_describe(s) for s in steps]
    finally:
        _close(steps)


def _sweep(dst: TreeRoot, paths: list[str], token: str) -> None:
    if not token:
        return
    mark = PREFIX + f"{token}-".encode()
    parsed = []
    for text in paths:
        try:
            parsed.append(beneath.parse(text))
        except ValueError:
            continue
    for i, parts in enumerate(outermost(parsed)):  # as _plan() numbered them
        try:
            fd = beneath.open_dir(dst.fd, parts[:-1])
        except (ValueError, OSError):
            continue
        try:
            aside = PREFIX + f"{token}-{i}".encode() + OLD
            if parts and _exists(fd, aside) and not _exists(fd, parts[-1]):
                os.rename(aside, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)  # back as it was
                os.fsync(fd)
            for entry in map(os.fsencode, os.listdir(fd)):
                if entry.startswith(mark):
                    remove.remove_tree(_proc(fd, entry))
        finally:
            os.close(fd)


async def sweep(dst: TreeRoot, paths: list[str], token: str) -> None:
    """Remove the temporaries of the interrupted restore `token` beside each of `paths`."""
    await asyncio.to_thread(_sweep, dst, paths, token)
