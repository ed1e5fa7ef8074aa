"""btrfs backend: containers are subvolumes, snapshots read-only subvolumes.

Layout under the pool root (a directory on btrfs):

    <root>/<id>                          container (a subvolume)
    <root>/.snapshots/<id>/<name>        snapshot (a read-only subvolume)
    <root>/.snapshots/.tmp/              work in progress, swept by open()
    <root>/.snapshots/.quarantine/       what a sweep could not remove; retried by open()

Native streams (`btrfs send` / `btrfs receive`, between two btrfs pools): btrfs_native.py.

Snapshots are taken and deleted with the kernel's ioctls (SNAP_CREATE_V2 with
SUBVOL_RDONLY, SNAP_DESTROY); `btrfs subvolume ...` is the fallback when an
ioctl is unavailable (or `use_ioctl` is False).  Neither waits for a
transaction commit per deletion, and neither cost grows with container size.

Restore takes a writable snapshot of the chosen snapshot into `.tmp`, copies
the container's *current* project label onto it, swaps it with the container
in one step (renameat2 RENAME_EXCHANGE, so the container path never goes
missing) and then deletes the old subvolume.  A crash leaves either the old
or the new container in place plus a leftover in `.tmp` that open() deletes.

Nested subvolumes inside a container are not captured by a btrfs snapshot
and would be stranded by a restore, so create and restore refuse such a
container with ContainerBusy naming them.  Restore also refuses a container
whose subvolume is mounted somewhere in this mount namespace (a running
container's rootfs): deleting the old subvolume would empty it under its users.

Restore also refuses a container some process holds (an open file, its cwd,
root, executable or a mapped file inside the subvolume: backends/inuse.py,
by device number, so processes in other mount namespaces count too).  That
scan of /proc is a restore's longest step; it runs once, just before the swap.

Sizes: when quotas (qgroups) are enabled on the filesystem, a snapshot's size
is the exclusive bytes of its level-0 qgroup, read for all snapshots in one
BTRFS_IOC_TREE_SEARCH (accounting is as fresh as the last commit).  When
quotas are off, a size is what `btrfs filesystem du -s --raw` reports as
Exclusive: bytes of data extents no other file or subvolume references
(FIEMAP's SHARED flag), i.e. roughly what deleting the snapshot would free.
Counting walks the snapshot, so it never happens on create or list: create
reports 0 (exact at that instant: a new snapshot shares every extent with
its container), list reports None, and `sizes()` -- which the service calls
in the background with the snapshots a create or delete may have changed
(its neighbours in time) -- counts just those, in ONE `btrfs filesystem du`
process.  This backend never enables quotas.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import re
import secrets
import stat
import subprocess
from pathlib import Path
from typing import AsyncIterator, Callable

from backends import faults

from . import btrfs_ioctl as ioc
from . import btrfs_changes, fsops, inuse, mounts, portable, remove, sidecar
from .btrfs_native import BtrfsNative
from .base import (
    NAME_MARK_XATTR,
    PROJECT_XATTR,
    SNAPSHOTS_DIR,
    Backend,
    BackendError,
    ContainerBusy,
    ContainerNotFound,
    NoSpace,
    PoolError,
    RefUpdates,
    SnapshotFacts,
    SnapshotNotFound,
    SnapshotRef,
    TreeRoot,
    open_root,
)

DU_TIMEOUT = 600.0
"""Seconds one background `btrfs filesystem du` may take before it is killed."""
log = logging.getLogger(__name__)

CID_RE = re.compile(r"^[0-9a-f]{24}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TMP_DIR = ".tmp"
QUARANTINE_DIR = ".quarantine"
_FALLBACK_ERRNOS = {errno.ENOTTY, errno.ENOSYS, errno.EOPNOTSUPP}


def _error(e: OSError, what: str) -> BackendError:
    """Map an OSError to the backend error the service understands."""
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left in the pool ({reason})")
    if e.errno in (errno.EBUSY, errno.ETXTBSY):
        return ContainerBusy(f"{what}: in use ({reason})")
    return BackendError(f"{what}: {reason}")


def _is_subvolume(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_ino == ioc.FIRST_FREE_OBJECTID


class _Fd:
    """A directory fd as a context manager."""

    def __init__(self, path: str, dir_fd: int | None = None) -> None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(path, flags, dir_fd=dir_fd)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class BtrfsBackend(BtrfsNative, sidecar.SidecarMeta, Backend):
    """A pool of btrfs subvolume containers under one directory."""

    kind = "btrfs"
    use_ioctl = True
    """Use the kernel ioctls; False spawns `btrfs` for snapshot and delete."""
    btrfs_cmd = "btrfs"

    def __init__(self, root: str) -> None:
        super().__init__(os.path.abspath(root))
        self._snapdir = os.path.join(self.root, SNAPSHOTS_DIR)
        self._tmpdir = os.path.join(self._snapdir, TMP_DIR)
        self.meta_dir = Path(self._snapdir)
        self._root_treeid: int | None = None
        """(cid, name) -> creation time of snapshots seen, to order them cheaply."""

    # -- paths -------------------------------------------------------------

    def _cpath(self, cid: str) -> str:
        if not CID_RE.match(cid):
            raise ContainerNotFound(f"invalid container id {cid!r}")
        return os.path.join(self.root, cid)

    def _sdir(self, cid: str) -> str:
        self._cpath(cid)
        return os.path.join(self._snapdir, cid)

    def _spath(self, cid: str, name: str) -> str:
        if not NAME_RE.match(name):
            raise SnapshotNotFound(f"invalid snapshot name {name!r}")
        return os.path.join(self._sdir(cid), name)

    def _ref(self, cid: str, name: str) -> str:
        return f"{SNAPSHOTS_DIR}/{cid}/{name}"

    # -- pool --------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        if not os.path.isdir(self.root):
            raise PoolError(f"btrfs pool root {self.root} does not exist or is not a directory")
        if not ioc.is_btrfs(self.root):
            raise PoolError(
                f"btrfs pool root {self.root} is not on btrfs (it is on {_fstype(self.root)})"
            )
        os.makedirs(self._tmpdir, mode=0o700, exist_ok=True)
        root_dev = os.stat(self.root).st_dev
        for d in (self._snapdir, self._tmpdir):
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_dev != root_dev:
                raise PoolError(
                    f"{d} must be a plain directory in the same subvolume as {self.root}"
                )
        with _Fd(self.root) as fd:
            self._root_treeid = ioc.subvol_info(fd).treeid
        self._sweep()
        self._sweep_meta(lambda c: CID_RE.match(c) is not None)

    def _snapshot_there(self, cid: str, name: str) -> bool:
        return _is_subvolume(self._spath(cid, name))

    def _sweep(self) -> None:
        """Delete leftovers of interrupted operations in .tmp; quarantine what cannot go."""
        self.problems = remove.sweep_scratch(
            self._tmpdir, os.path.join(self._snapdir, QUARANTINE_DIR), _remove_leftover)

    async def free_bytes(self) -> int | None:
        st = await asyncio.to_thread(os.statvfs, self.root)
        return st.f_bavail * st.f_frsize

    async def total_bytes(self) -> int | None:
        st = await asyncio.to_thread(os.statvfs, self.root)
        return st.f_blocks * st.f_frsize

    async def free_inodes(self) -> int | None:
        """None: btrfs allocates inodes dynamically (its statfs reports f_files = 0), so
        there is nothing to read (and no thread to pay on every create's reserve check)."""
        return None

    async def total_inodes(self) -> int | None:
        return None

    async def quotas_enabled(self) -> bool:
        """Whether sizes come from qgroups (quotas on) or from `btrfs filesystem du`."""
        return await asyncio.to_thread(self._quota_status) is not None

    def _quota_status(self) -> int | None:
        with _Fd(self.root) as fd:
            try:
                return ioc.quota_status(fd)
            except OSError as e:
                log.debug("cannot read qgroup status: %s", e)
                return None

    def _exclusive(self, subvolid: int | None = None) -> dict[int, int] | None:
        """Exclusive bytes by subvolume id, or None when quotas are off/unreadable."""
        with _Fd(self.root) as fd:
            try:
                if ioc.quota_status(fd) is None:
                    return None
                return ioc.qgroup_exclusive(fd, subvolid)
            except OSError as e:
                log.debug("cannot read qgroups: %s", e)
                return None

    # -- containers --------------------------------------------------------

    async def container_exists(self, cid: str) -> bool:
        if not CID_RE.match(cid):
            return False
        return await asyncio.to_thread(self._is_container, self._cpath(cid))

    def _is_container(self, path: str) -> bool:
        if not _is_subvolume(path):
            return False
        try:
            with _Fd(path) as fd:
                parent = ioc.subvol_info(fd).parent_id  # ENOTTY off btrfs
        except OSError:
            return False
        return self._root_treeid is None or parent == self._root_treeid

    def _need_container(self, cid: str) -> str:
        path = self._cpath(cid)
        if not self._is_container(path):
            raise ContainerNotFound(f"container {cid} is not a subvolume in {self.root}")
        return path

    async def containers(self) -> dict[str, str | None]:
        return await asyncio.to_thread(
            fsops.containers_in, self.root,
            lambda n: CID_RE.match(n) is not None and self._is_container(self._cpath(n)),
            lambda n: _get_label(self._cpath(n)))

    async def lookup(self, cid: str) -> tuple[bool, str | None]:
        def look() -> tuple[bool, str | None]:
            path = self._cpath(cid)
            return (True, _get_label(path)) if self._is_container(path) else (False, None)

        return await asyncio.to_thread(look) if CID_RE.match(cid) else (False, None)

    async def get_project(self, cid: str) -> str | None:
        def get() -> str | None:
            return _get_label(self._need_container(cid))

        return await asyncio.to_thread(get)

    async def set_project(self, cid: str, project: str | None) -> None:
        def put() -> None:
            path = self._need_container(cid)
            try:
                _set_label(path, project)
            except OSError as e:
                raise _error(e, f"cannot label container {cid}") from e

        await asyncio.to_thread(put)

    async def name_marks(self, cid: str | None = None) -> dict[str, str]:
        return await asyncio.to_thread(fsops.read_name_marks, Path(self._snapdir), NAME_MARK_XATTR, cid,
                                       lambda c: CID_RE.match(c) is not None)

    async def set_name_mark(self, cid: str, name: str) -> None:
        self._cpath(cid)
        try:
            await asyncio.to_thread(fsops.write_name_mark, Path(self._snapdir), NAME_MARK_XATTR, cid, name)
        except OSError as e:
            raise _error(e, f"cannot record the name mark of container {cid}") from e

    def _refuse_nested(self, cid: str, cfd: int, action: str) -> None:
        nested = _nested(cfd)
        if nested:
            raise ContainerBusy(
                f"cannot {action} container {cid}: it holds nested subvolumes "
                f"({', '.join(nested)}), which btrfs snapshots do not capture",
                [{"field": "container", "reason": f"nested subvolume {p}"} for p in nested],
            )

    def _refuse_mounted(self, cid: str, cfd: int) -> None:
        """A mounted container is in use: swapping would pull it from under its users."""
        try:
            places = ioc.mounts_of(cfd)
        except OSError as e:
            log.debug("cannot read mounts: %s", e)
            return
        if places:
            raise ContainerBusy(
                f"cannot restore container {cid}: it is mounted at {', '.join(places)} "
                "(running?); stop it first",
                [{"field": "container", "reason": f"mounted at {m}"} for m in places],
            )

    def _refuse_held(self, cid: str, cpath: str) -> None:
        """A mount inside the container would go with the old subvolume, and a process
        holding a file of it would keep the old data alive and see none of the
        restore: refuse while there is either."""
        mounts.refuse_mounts(cid, cpath)
        inuse.refuse_held(cid, [cpath], ContainerBusy, log=log)

    # -- files -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def snapshot_root(self, cid: str, snap: SnapshotRef) -> AsyncIterator[TreeRoot]:
        await asyncio.to_thread(self._need_container, cid)
        spath = self._spath(cid, snap.name)
        if not await asyncio.to_thread(_is_subvolume, spath):
            raise SnapshotNotFound(f"snapshot {snap.name} of container {cid} is not on disk")
        async with open_root(spath, subvolume=True) as root:
            yield root

    @contextlib.asynccontextmanager
    async def live_root(self, cid: str) -> AsyncIterator[TreeRoot]:
        cpath = await asyncio.to_thread(self._need_container, cid)
        async with open_root(cpath, subvolume=True) as root:
            yield root

    async def changes(self, old: TreeRoot, new: TreeRoot) -> dict[tuple[bytes, ...], bool] | None:
        """Between two snapshots (read-only subvolumes), what `btrfs send --no-data -p` names
        (backends.btrfs_changes); against a live container, None (walk)."""
        if not await asyncio.to_thread(btrfs_changes.tracked, old, new):
            return None
        return await asyncio.to_thread(btrfs_changes.candidates, self.btrfs_cmd, old, new)

    async def refuse_busy(self, cid: str) -> None:
        def check() -> None:
            cpath = self._need_container(cid)
            with _Fd(cpath) as cfd:
                self._refuse_mounted(cid, cfd)
            self._refuse_held(cid, cpath)

        await asyncio.to_thread(check)

    # -- create ------------------------------------------------------------

    async def create(
        self, cid: str, name: str, alias: str | None, expires_at: float | None,
        created_at: float | None = None, *, policy: str | None = None,
    ) -> SnapshotFacts:
        spath = self._spath(cid, name)
        if self.use_ioctl:
            try:  # the policy's sidecar, the ioctl and the facts: one hop to a thread
                return await asyncio.to_thread(self._with_meta, cid, name, policy, self._create_ioctl)
            except _NoIoctl:
                log.info("snapshot ioctl unavailable; using %s", self.btrfs_cmd)
        meta = await asyncio.to_thread(self._create_meta, cid, name, policy)
        try:
            cpath = await asyncio.to_thread(self._create_prepare, cid)
            await self._run("subvolume", "snapshot", "-r", cpath, spath, what=f"snapshot {name}")
            facts = await asyncio.to_thread(self._facts_after_create, cid, name)
        except BaseException:
            await asyncio.to_thread(sidecar.remove, self.meta_dir, cid, name)
            raise
        return dataclasses.replace(facts, policy=meta.policy)

    def _with_meta(self, cid: str, name: str, policy: str | None,
                   make: Callable[[str, str], SnapshotFacts]) -> SnapshotFacts:
        """The snapshot's sidecar (its policy), then `make`; the sidecar goes again if that fails."""
        meta = self._create_meta(cid, name, policy)
        try:
            facts = make(cid, name)
        except BaseException:
            sidecar.remove(self.meta_dir, cid, name)
            raise
        return dataclasses.replace(facts, policy=meta.policy)

    def _create_prepare(self, cid: str) -> str:
        cpath = self._need_container(cid)
        with _Fd(cpath) as cfd:
            self._refuse_nested(cid, cfd, "snapshot")
        os.makedirs(self._sdir(cid), mode=0o700, exist_ok=True)
        return cpath

    def _create_ioctl(self, cid: str, name: str) -> SnapshotFacts:
        cpath = self._create_prepare(cid)
        with _Fd(cpath) as cfd, _Fd(self._sdir(cid)) as sfd:
            try:
                ioc.snapshot(cfd, sfd, name, readonly=True)
            except OSError as e:
                if e.errno in _FALLBACK_ERRNOS:
                    raise _NoIoctl from e
                if e.errno == errno.EEXIST:
                    raise BackendError(f"snapshot {name} of {cid} already exists") from e
                raise _error(e, f"cannot snapshot container {cid}") from e
        return self._facts_after_create(cid, name)

    def _facts_after_create(self, cid: str, name: str) -> SnapshotFacts:
        cpath = self._cpath(cid)
        with _Fd(cpath) as cfd:
            try:
                # A nested subvolume made while we snapshotted: the copy is partial.
                self._refuse_nested(cid, cfd, "snapshot")
            except ContainerBusy:
                with _Fd(self._sdir(cid)) as sfd:
                    _destroy_tree(sfd, name)
                raise
        facts = self._facts(cid, name)
        if facts is None:
            raise BackendError(f"snapshot {name} of {cid} vanished after creation")
        if facts.size is None:  # no qgroups: a new snapshot shares all its extents
            facts = dataclasses.replace(facts, size=0)
        return facts

    def _facts(
        self, cid: str, name: str, sizes: dict[int, int] | None | bool = True
    ) -> SnapshotFacts | None:
        """Facts of one snapshot; `sizes`: True = read its qgroup, else a prefetched map."""
        path = os.path.join(self._snapdir, cid, name)
        if not _is_subvolume(path):
            return None
        try:
            with _Fd(path) as fd:
                info = ioc.subvol_info(fd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            st = os.lstat(path)
            return SnapshotFacts(name, st.st_mtime, None, self._ref(cid, name))
        if sizes is True:
            sizes = self._exclusive(info.treeid)
        size = sizes.get(info.treeid) if isinstance(sizes, dict) else None
        created = info.otime or os.lstat(path).st_mtime
        return SnapshotFacts(name, created, size, self._ref(cid, name))

    # -- restore -----------------------------------------------------------

    restore_moves_others = False
    """Other snapshots live under .snapshots/<id>/ and are never touched."""

    async def restore(
        self, cid: str, snap: SnapshotRef, others: list[SnapshotRef]
    ) -> RefUpdates:
        await asyncio.to_thread(self._restore, cid, snap.name)
        return {}

    def _restore(self, cid: str, name: str) -> None:
        """Checks; then one writable snapshot, one RENAME_EXCHANGE, one SNAP_DESTROY (no
        commit waited for).  The in-use scan of /proc, by far the longest step, runs once,
        just before the swap."""
        spath = self._spath(cid, name)
        cpath = self._need_container(cid)
        if not _is_subvolume(spath):
            raise SnapshotNotFound(f"snapshot {name} of container {cid} is not on disk")
        tmpname = f"restore-{cid}-{secrets.token_hex(4)}"
        tmppath = os.path.join(self._tmpdir, tmpname)
        with _Fd(self._tmpdir) as tfd:
            with _Fd(cpath) as cfd:
                self._refuse_nested(cid, cfd, "restore")
                # mounts inside first: a bind mount of the container's own directory
                # shows its subvolume too, but is a mount inside, not the container mounted
                mounts.refuse_mounts(cid, cpath)
                self._refuse_mounted(cid, cfd)
            self._writable_copy(spath, tfd, tmpname)
            try:
                _set_label(tmppath, _get_label(cpath))
                faults.point("btrfs.restore.after-copy")
                with _Fd(cpath) as cfd:
                    self._refuse_nested(cid, cfd, "restore")
                self._refuse_held(cid, cpath)  # last, to keep the window to the swap short
                ioc.exchange(tmppath, cpath)
                faults.point("btrfs.restore.after-exchange")
            except BaseException as e:
                _quiet_destroy(tfd, tmpname)
                if isinstance(e, OSError):
                    raise _error(e, f"cannot restore {cid} from {name}") from e
                raise
            # tmppath now holds the old container.
            try:
                _destroy_tree(tfd, tmpname)
            except OSError as e:
                log.warning("restored %s; old subvolume %s left for the next sweep: %s",
                            cid, tmppath, e)

    def _writable_copy(self, spath: str, tfd: int, tmpname: str) -> None:
        if self.use_ioctl:
            try:
                with _Fd(spath) as sfd:
                    ioc.snapshot(sfd, tfd, tmpname, readonly=False)
                return
            except OSError as e:
                if e.errno not in _FALLBACK_ERRNOS:
                    raise _error(e, f"cannot copy snapshot {spath}") from e
        self._run_sync("subvolume", "snapshot", spath, os.path.join(self._tmpdir, tmpname))

    # -- export and import -------------------------------------------------

    accepts_imports = True

    async def receive(self, cid: str, name: str, reader: portable.StreamReader, base: SnapshotRef | None,
                      layout: str, new_container: bool) -> SnapshotFacts:
        return await asyncio.to_thread(self._receive, cid, name, reader, base, new_container)

    def _receive(self, cid: str, name: str, reader: portable.StreamReader, base: SnapshotRef | None,
                 new_container: bool) -> SnapshotFacts:
        """Received into a scratch subvolume (a writable snapshot of the base for an
        incremental), then snapshotted read-only into place, as a create is: one step
        (a read-only subvolume cannot be renamed into place)."""
        def fill(tmppath: str, tfd: int, tmpname: str) -> str:
            if base is not None:
                bpath = self._spath(cid, base.name)
                if not _is_subvolume(bpath):
                    raise SnapshotNotFound(base.name)
                self._writable_copy(bpath, tfd, tmpname)
            else:
                self._run_sync("subvolume", "create", tmppath)
            reader.apply(tmppath, incremental=base is not None)
            faults.point("btrfs.import.received")
            return tmppath

        return self._received(cid, name, new_container, fill)

    def _received(self, cid: str, name: str, new_container: bool,
                  fill: Callable[[str, int, str], str]) -> SnapshotFacts:
        """Snapshot `name` of `cid` made through scratch: `fill(path, tmpdir_fd, entry)` builds
        the scratch entry `path` and returns the subvolume to publish; the container is made
        first when `new_container`; the scratch goes whatever happens."""
        spath = self._spath(cid, name)
        if not new_container:
            self._need_container(cid)
        if os.path.lexists(spath):
            raise BackendError(f"snapshot {name} of {cid} already exists")
        tmpname = f"import-{cid}-{secrets.token_hex(4)}"
        tmppath = os.path.join(self._tmpdir, tmpname)
        with _Fd(self._tmpdir) as tfd:
            try:
                source = fill(tmppath, tfd, tmpname)
                if new_container:
                    self._new_container(cid, tfd)
                os.makedirs(self._sdir(cid), mode=0o700, exist_ok=True)
                self._publish(source, cid, name)
            except OSError as e:
                raise _error(e, f"cannot receive snapshot {name} of {cid}") from e
            finally:
                if os.path.lexists(tmppath):
                    _quiet_destroy(tfd, tmpname)
        facts = self._facts(cid, name, sizes=False)
        if facts is None:
            raise BackendError(f"snapshot {name} of {cid} vanished after it was received")
        return facts

    def _publish(self, tmppath: str, cid: str, name: str) -> None:
        """A read-only snapshot of `tmppath` as snapshot `name` of `cid` (a received
        subvolume's received uuid is kept: see btrfs_native)."""
        if self.use_ioctl:
            try:
                with _Fd(tmppath) as src, _Fd(self._sdir(cid)) as sfd:
                    ioc.snapshot(src, sfd, name, readonly=True)
                return
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise BackendError(f"snapshot {name} of {cid} already exists") from e
                if e.errno not in _FALLBACK_ERRNOS:
                    raise
        self._run_sync("subvolume", "snapshot", "-r", tmppath, self._spath(cid, name))

    def _new_container(self, cid: str, tfd: int) -> None:
        tmpname = f"container-{cid}-{secrets.token_hex(4)}"
        self._run_sync("subvolume", "create", os.path.join(self._tmpdir, tmpname))
        try:
            os.rename(os.path.join(self._tmpdir, tmpname), self._cpath(cid))
        except BaseException:
            _quiet_destroy(tfd, tmpname)
            raise
        fsops.fsync_dir(Path(self.root))

    # -- delete ------------------------------------------------------------

    async def delete(
        self, cid: str, snaps: list[SnapshotRef]
    ) -> dict[str, BackendError | None]:
        if not self.use_ioctl:
            results = await self._delete_cmd(cid, snaps)
        else:
            results = await asyncio.to_thread(self._delete_ioctl, cid, snaps)
        await asyncio.to_thread(self._forget_meta, cid, results)
        return results

    def _to_delete(self, cid: str, snaps: list[SnapshotRef]) -> tuple[dict[str, BackendError | None], list[str]]:
        """Sort a delete's names, the same for both paths: gone already (done), not a
        subvolume (an error: left alone, its row kept), or a subvolume to destroy."""
        done: dict[str, BackendError | None] = {}
        doomed = []
        for s in snaps:
            try:
                path = self._spath(cid, s.name)
            except BackendError as e:
                done[s.name] = e
                continue
            if _is_subvolume(path):
                doomed.append(s.name)
            elif os.path.lexists(path):
                done[s.name] = BackendError(f"{s.name} is not a subvolume; left alone")
            else:
                done[s.name] = None
        return done, doomed

    def _delete_ioctl(self, cid: str, snaps: list[SnapshotRef]) -> dict[str, BackendError | None]:
        sdir = self._sdir(cid)
        out, doomed = self._to_delete(cid, snaps)
        try:
            dfd = _Fd(sdir)
        except FileNotFoundError:
            return {**out, **{n: None for n in doomed}}
        with dfd as fd:
            for name in doomed:
                try:
                    ioc.destroy(fd, name)
                    out[name] = None
                except FileNotFoundError:
                    out[name] = None
                except OSError as e:
                    out[name] = _error(e, f"cannot delete snapshot {name}")
        return out  # an emptied `.snapshots/<id>` stays: it carries the name mark

    async def _delete_cmd(
        self, cid: str, snaps: list[SnapshotRef]
    ) -> dict[str, BackendError | None]:
        out, doomed = await asyncio.to_thread(self._to_delete, cid, snaps)
        paths = {n: os.path.join(self._sdir(cid), n) for n in doomed}
        err: BackendError | None = None
        if paths:
            try:
                await self._run("subvolume", "delete", *paths.values(), what="delete")
            except BackendError as e:
                err = e
        for n, p in paths.items():
            gone = not await asyncio.to_thread(os.path.lexists, p)
            out[n] = None if gone else (err or BackendError(f"snapshot {n} still present"))
        return out

    # -- list / sizes ------------------------------------------------------

    async def list(self, cid: str | None = None) -> dict[str, list[SnapshotFacts]]:
        return await asyncio.to_thread(lambda: self._attach_meta(self._list(cid)))

    def _snapshot_names(self, cid: str | None) -> dict[str, list[str]]:
        if cid is not None:
            self._cpath(cid)
        try:
            cids = [cid] if cid is not None else os.listdir(self._snapdir)
        except FileNotFoundError:
            return {}
        out: dict[str, list[str]] = {}
        for c in cids:
            if not CID_RE.match(c):
                continue  # .tmp and strangers
            try:
                names = os.listdir(os.path.join(self._snapdir, c))
            except (FileNotFoundError, NotADirectoryError):
                continue
            names = [n for n in names if NAME_RE.match(n)]
            if names:
                out[c] = names
        return out

    def _list(self, cid: str | None) -> dict[str, list[SnapshotFacts]]:
        sizes = self._exclusive()
        out: dict[str, list[SnapshotFacts]] = {}
        for c, names in self._snapshot_names(cid).items():
            facts = [f for n in names if (f := self._facts(c, n, sizes)) is not None]
            if facts:
                facts.sort(key=lambda f: (f.created_at, f.name), reverse=True)
                out[c] = facts
        return out

    async def sizes(self, cid: str, names: list[str]) -> dict[str, int]:
        """Exclusive sizes of these snapshots now: from qgroups when quotas are on,
        else counted (one `btrfs filesystem du`, walking them: off the request path)."""
        quota = await asyncio.to_thread(self._qgroup_sizes, cid, names)
        if quota is not None:
            return quota.get(cid, {})
        return (await self.recount({cid: names})).get(cid, {})

    async def recount(self, targets: dict[str, list[str]]) -> dict[str, dict[str, int]]:
        """Count exclusive bytes of these snapshots (cid -> names) in one process.

        Walks the snapshots (FIEMAP via `btrfs filesystem du`): call it off the
        request path.  Snapshots that vanish meanwhile are left out.
        """
        paths = {
            os.path.join(self._snapdir, c, n): (c, n) for c, names in targets.items() for n in names
        }
        if not paths:
            return {}
        counted = await self._count_exclusive(list(paths))
        out: dict[str, dict[str, int]] = {}
        for path, size in counted.items():
            c, n = paths[path]
            out.setdefault(c, {})[n] = size
        return out

    async def _count_exclusive(self, paths: list[str]) -> dict[str, int]:
        """Path -> Exclusive bytes, from one `btrfs filesystem du -s --raw` process.

        Started and waited for in a thread (the long lane), not from the event loop:
        spawning costs the loop a fork's worth of CPU that requests would wait behind."""
        proc = await asyncio.to_thread(
            subprocess.Popen, [self.btrfs_cmd, "filesystem", "du", "-s", "--raw", *paths],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.to_thread(proc.communicate, timeout=DU_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.communicate)  # reaps it
            raise BackendError(f"btrfs filesystem du took longer than {DU_TIMEOUT:g}s") from None
        except BaseException:  # the daemon is stopping: the thread in communicate() reaps the child
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        counted = parse_du(out.decode(errors="replace"), paths)
        if proc.returncode or len(counted) != len(paths):
            missing = [p for p in paths if p not in counted]
            log.info("btrfs filesystem du counted %d of %d snapshots (exit %s): %s%s",
                     len(counted), len(paths), proc.returncode, ", ".join(missing),
                     f"; {err.decode(errors='replace').strip()}" if err.strip() else "")
        return counted

    def _qgroup_sizes(self, cid: str | None,
                      only: list[str] | None = None) -> dict[str, dict[str, int]] | None:
        """Sizes from qgroups (one tree search for all), of `only` these names of `cid` when
        given; None when quotas are off."""
        sizes = self._exclusive()
        if sizes is None:
            return None
        out: dict[str, dict[str, int]] = {}
        listed = {cid: only} if cid is not None and only is not None else self._snapshot_names(cid)
        for c, names in listed.items():
            for n in names:
                f = self._facts(c, n, sizes)
                if f is not None and f.size is not None:
                    out.setdefault(c, {})[n] = f.size
        return out

    # -- commands ----------------------------------------------------------

    async def _run(self, *args: str, what: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.btrfs_cmd, *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode:
            raise _cmd_error(what, err)

    def _run_sync(self, *args: str) -> None:
        p = subprocess.run(
            [self.btrfs_cmd, *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        if p.returncode:
            raise _cmd_error(" ".join(args[:2]), p.stderr)


class _NoIoctl(Exception):
    """The kernel lacks an ioctl; use the command instead."""


def _cmd_error(what: str, stderr: bytes) -> BackendError:
    msg = stderr.decode(errors="replace").strip().splitlines()
    text = msg[-1] if msg else "btrfs command failed"
    low = text.lower()
    if "no space" in low or "quota exceeded" in low:
        return NoSpace(f"{what}: {text}")
    if "busy" in low:
        return ContainerBusy(f"{what}: {text}")
    return BackendError(f"{what}: {text}")


def _get_label(path: str) -> str | None:
    try:
        return os.getxattr(path, PROJECT_XATTR, follow_symlinks=False).decode()
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


def _set_label(path: str, project: str | None) -> None:
    if project is not None:
        os.setxattr(path, PROJECT_XATTR, project.encode(), follow_symlinks=False)
        return
    try:
        os.removexattr(path, PROJECT_XATTR, follow_symlinks=False)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise


def _nested(fd: int) -> list[str]:
    """Paths (relative to the subvolume of `fd`) of subvolumes directly inside it."""
    out = []
    for treeid, dirid in ioc.child_subvolumes(fd):
        try:
            out.append(ioc.child_path(fd, treeid, dirid))
        except OSError:
            out.append(f"<subvolume id {treeid}>")
    return sorted(out)


def _destroy_tree(parent_fd: int, name: str) -> None:
    """Delete subvolume `name` in `parent_fd` and any subvolumes nested in it."""
    try:
        ioc.destroy(parent_fd, name)
        return
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
    with _Fd(name, dir_fd=parent_fd) as fd:
        for treeid, dirid in ioc.child_subvolumes(fd):
            head, tail = os.path.split(ioc.child_path(fd, treeid, dirid))
            with _Fd(head or ".", dir_fd=fd) as pfd:
                _destroy_tree(pfd, tail)
    ioc.destroy(parent_fd, name)


def _remove_leftover(path: str) -> None:
    """Remove a scratch entry: a subvolume (and those nested in it), or any other tree."""
    if _is_subvolume(path):
        with _Fd(os.path.dirname(path)) as pfd:
            _destroy_tree(pfd, os.path.basename(path))
    else:
        remove.remove_tree(path)


def _quiet_destroy(parent_fd: int, name: str) -> None:
    try:
        _destroy_tree(parent_fd, name)
    except OSError as e:
        log.warning("cannot remove temporary subvolume %s: %s", name, e)


def parse_du(text: str, paths: list[str]) -> dict[str, int]:
    """Exclusive bytes per path from `btrfs filesystem du -s --raw` output.

    Expects a header then `<total> <exclusive> <set shared> <path>` lines;
    anything else (a changed format, an error message) is logged and skipped,
    never guessed at.
    """
    wanted = set(paths)
    out: dict[str, int] = {}
    for line in text.split("\n"):
        if not line.strip() or line.split() == ["Total", "Exclusive", "Set", "shared", "Filename"]:
            continue
        fields = line.strip().split(None, 3)
        if len(fields) != 4 or not fields[0].isdigit() or not fields[1].isdigit():
            log.warning("unexpected line from btrfs filesystem du: %r", line)
            continue
        if fields[3] in wanted:
            out[fields[3]] = int(fields[1])
    return out


def _fstype(path: str) -> str:
    """Best-effort name of the filesystem holding `path`, for messages."""
    try:
        import psutil

        real = os.path.realpath(path)
        best = ("", "an unknown filesystem")
        for p in psutil.disk_partitions(all=True):
            mp = p.mountpoint
            if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best[0]):
                best = (mp, p.fstype)
        return best[1]
    except Exception:  # noqa: BLE001 - only for a message
        return "an unknown filesystem"
