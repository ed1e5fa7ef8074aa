"""The overlay-aware copy fallback, for containers on ext4, xfs or anything else.

Layout under the pool root (a directory):

    <root>/<id>/                      a container: plain directory, or
    <root>/<id>/{upper,work,...}      an overlay container (only upper/ is captured)
    <root>/.snapshots/<id>/<name>/    a snapshot: a copy of the captured tree
    <root>/.snapshots/.tmp/           work in progress; swept on open()
    <root>/.snapshots/.quarantine/    what a sweep could not remove (a mount inside,
                                      an I/O error); retried by every open()

Snapshots are copies made by `treecopy.copy_tree`: reflinks where the
filesystem clones, otherwise hard links to the previous snapshot for
unchanged files.  A create builds in .tmp and renames into place; a
restore builds a real copy (never links into a snapshot) beside the live
tree and swaps the two with one RENAME_EXCHANGE; a delete renames into
.tmp before removing.  So a crash leaves every tree whole.  Every tree is
removed by `remove.remove_tree`, which never crosses into a mount; a delete
that cannot finish moves the snapshot back into place.

Sizes are exclusive allocated bytes (inodes not shared with another
snapshot), computed at creation; when a create or delete changes what a
neighbouring snapshot shares, the service asks `sizes()` to recount just
those, off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import AsyncIterator

from backends import faults

from . import fsops, inuse, mounts, portable, remove, sidecar, treecopy
from .base import (
    LAYOUT_XATTR,
    LAYOUTS,
    NAME_MARK_XATTR,
    PROJECT_XATTR,
    SNAPSHOTS_DIR,
    Backend,
    BackendError,
    ContainerBusy,
    ContainerChanged,
    ContainerNotFound,
    PoolError,
    RefUpdates,
    SnapshotFacts,
    SnapshotNotFound,
    SnapshotRef,
    TreeHasMounts,
    TreeRoot,
    open_root,
)

log = logging.getLogger(__name__)
_CID = re.compile(r"[0-9a-f]{24}")
RESTORE_PREFIX = ".snapd-restore-"
"""A restore's build beside upper/ (when upper/ is on another filesystem than .tmp)."""


COPY_STARTED_XATTR = "user.container-snapd.copy-started"
"""On a snapshot's root: when its copy began (ns).  The next snapshot links
only files whose ctime is older, less a margin for filesystems whose
timestamps are coarse (1 s on ext3 and small-inode ext4, 2 s on FAT), so a
rewrite that kept size and mtime is never mistaken for unchanged."""
CTIME_MARGIN_NS = 2_000_000_000
CAPTURED_XATTR = "user.container-snapd.captured"
"""On a snapshot's root: what it captured, "upper" (an overlay container's
writable layer) or "whole" (a plain directory).  A restore into a container
whose layout has changed since is refused rather than put in the wrong place."""
SNAPSHOT_TAGS = (COPY_STARTED_XATTR, CAPTURED_XATTR)
"""Attributes that describe a snapshot, not the tree: never restored into a container."""


def _tag(snapshot: Path, key: str, value: str) -> None:
    """Tag a snapshot's root; without user xattrs here the tag is simply absent
    (then the next snapshot copies everything, and restore cannot check the layout)."""
    try:
        fsops.set_xattr(snapshot, key, value)
    except OSError:
        pass


def _copy_started(snapshot: Path) -> int | None:
    """The ctime threshold for linking to `snapshot`, or None (then nothing is linked)."""
    try:
        value = fsops.get_xattr(snapshot, COPY_STARTED_XATTR)
    except OSError:
        return None
    return int(value) - CTIME_MARGIN_NS if value and value.isdigit() else None


def _name_key(name: str) -> tuple:
    """Order snapshot names as they were made (`-10` after `-9`)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


class OverlayBackend(sidecar.SidecarMeta, Backend):
    """Directory pool: copies, overlay-aware."""

    kind = "overlay"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.path = Path(root)
        self.snapdir = self.path / SNAPSHOTS_DIR
        self.tmpdir = self.snapdir / ".tmp"
        self.quarantine = self.snapdir / ".quarantine"
        self.meta_dir = self.snapdir

    # -- paths ---------------------------------------------------------------

    def _container(self, cid: str) -> Path:
        return self.path / cid

    def _captured(self, cid: str, layout: str) -> Path:
        """The tree a snapshot holds: upper/ of an overlay container, else the container."""
        c = self._container(cid)
        return c / "upper" if layout == "overlay" else c

    def _layout(self, cid: str, *, record: bool = False) -> tuple[str, str | None]:
        """The container's layout (one of LAYOUTS) and its label, decided by the host.

        The label (set by an admin, or recorded at the first snapshot) wins; then
        the pool's `layout` setting; under "auto" what the container's oldest
        snapshot captured (written by the daemon, out of the container's reach);
        only for a container never snapshotted, upper/ and work/ present means
        overlay.  With `record`, an "auto" decision is written as the label, so
        entries the container makes later change nothing.
        """
        container = self._container(cid)
        label = fsops.get_xattr(container, LAYOUT_XATTR)
        if label in LAYOUTS:
            return label, label
        if self.layout in LAYOUTS:
            return self.layout, None
        oldest = min(self._names(cid), key=_name_key, default=None)
        captured = fsops.get_xattr(self._snapshot(cid, oldest), CAPTURED_XATTR) if oldest else None
        if captured in ("upper", "whole"):
            decided = "overlay" if captured == "upper" else "whole"
        else:
            overlay = fsops.is_real_dir(container / "upper") and fsops.is_real_dir(container / "work")
            decided = "overlay" if overlay else "whole"
        if not record:
            return decided, None
        try:
            fsops.set_xattr(container, LAYOUT_XATTR, decided)
        except OSError as e:
            if e.errno != errno.ENOTSUP:
                raise
            return decided, None  # no xattrs here: the oldest snapshot's tag decides
        return decided, decided

    def _source(self, cid: str, layout: str) -> Path:
        """The captured tree, which for an overlay container must be upper/ itself."""
        source = self._captured(cid, layout)
        if not fsops.is_real_dir(source):
            raise ContainerBusy(
                f"container {cid} has the overlay layout but no upper/ directory",
                [{"field": "container", "reason": "layout overlay, upper/ missing"}],
            )
        return source

    def _snapshot(self, cid: str, name: str) -> Path:
        return self.snapdir / cid / name

    def _scratch(self, label: str) -> Path:
        return self.tmpdir / f"{label}-{secrets.token_hex(6)}"

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        if not fsops.is_real_dir(self.path):
            raise PoolError(f"pool root {self.root} is not a directory")
        self.snapdir.mkdir(mode=0o700, exist_ok=True)
        self.tmpdir.mkdir(mode=0o700, exist_ok=True)
        self.problems = remove.sweep_scratch(str(self.tmpdir), str(self.quarantine))
        self._sweep_meta(lambda c: _CID.fullmatch(c) is not None)

    def _snapshot_there(self, cid: str, name: str) -> bool:
        return _CID.fullmatch(cid) is not None and fsops.is_real_dir(self._snapshot(cid, name))

    async def container_exists(self, cid: str) -> bool:
        return _CID.fullmatch(cid) is not None and fsops.is_real_dir(self._container(cid))

    async def containers(self) -> dict[str, str | None]:
        return await asyncio.to_thread(
            fsops.containers_in, self.path,
            lambda n: _CID.fullmatch(n) is not None and fsops.is_real_dir(self.path / n),
            lambda n: fsops.get_xattr(self._container(n), PROJECT_XATTR))

    async def get_project(self, cid: str) -> str | None:
        return await asyncio.to_thread(fsops.get_xattr, self._container(cid), PROJECT_XATTR)

    async def set_project(self, cid: str, project: str | None) -> None:
        await asyncio.to_thread(fsops.set_xattr, self._container(cid), PROJECT_XATTR, project)

    async def get_layout(self, cid: str) -> tuple[str, str | None]:
        return await asyncio.to_thread(self._layout, cid)

    async def set_layout(self, cid: str, layout: str | None) -> None:
        await asyncio.to_thread(fsops.set_xattr, self._container(cid), LAYOUT_XATTR, layout)

    async def name_marks(self, cid: str | None = None) -> dict[str, str]:
        return await asyncio.to_thread(fsops.read_name_marks, self.snapdir, NAME_MARK_XATTR, cid,
                                       lambda c: _CID.fullmatch(c) is not None)

    async def set_name_mark(self, cid: str, name: str) -> None:
        if not _CID.fullmatch(cid):
            raise ContainerNotFound(cid)
        await asyncio.to_thread(fsops.write_name_mark, self.snapdir, NAME_MARK_XATTR, cid, name)

    async def free_bytes(self) -> int | None:
        return await asyncio.to_thread(fsops.free_bytes, self.path)

    async def total_bytes(self) -> int | None:
        st = await asyncio.to_thread(os.statvfs, self.path)
        return st.f_blocks * st.f_frsize

    async def free_inodes(self) -> int | None:
        got = await asyncio.to_thread(fsops.inodes, self.path)
        return None if got is None else got[0]

    async def total_inodes(self) -> int | None:
        got = await asyncio.to_thread(fsops.inodes, self.path)
        return None if got is None else got[1]

    async def recover(self, op: str, cid: str, snapshot: str | None, data: dict) -> None:
        if op == "restore-paths":
            return await self.recover_paths(cid, data)
        """A restore builds beside upper/ when upper/ is on another filesystem than .tmp:
        remove such a build (open() has swept .tmp itself)."""
        if op == "restore" and _CID.fullmatch(cid):
            await asyncio.to_thread(self._sweep_container, cid)

    def _sweep_container(self, cid: str) -> None:
        if not fsops.is_real_dir(self._container(cid)) or self._layout(cid)[0] != "overlay":
            return  # a plain container's root is the container's own data: never swept
        container = self._container(cid)
        try:
            entries = [e for e in os.scandir(container) if e.name.startswith(RESTORE_PREFIX)]
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                self._discard(Path(e.path), "an interrupted restore's build")

    # -- create --------------------------------------------------------------

    async def create(
        self, cid: str, name: str, alias: str | None, expires_at: float | None,
        created_at: float | None = None, *, policy: str | None = None,
    ) -> SnapshotFacts:
        return await asyncio.to_thread(self._create, cid, name, policy)

    def _latest(self, cid: str, exclude: str | None = None) -> Path | None:
        names = [n for n in self._names(cid) if n != exclude]
        return self._snapshot(cid, max(names, key=_name_key)) if names else None

    def _names(self, cid: str) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.snapdir / cid) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def _create(self, cid: str, name: str, policy: str | None = None) -> SnapshotFacts:
        if not fsops.is_real_dir(self._container(cid)):
            raise ContainerNotFound(cid)
        final = self._snapshot(cid, name)
        if os.path.lexists(final):
            raise BackendError(f"snapshot {name} already exists on disk")
        try:
            return self._create_tree(cid, name, final, self._create_meta(cid, name, policy))
        except BaseException:
            sidecar.remove(self.meta_dir, cid, name)
            raise

    def _create_tree(self, cid: str, name: str, final: Path, meta: sidecar.Meta) -> SnapshotFacts:
        previous = self._latest(cid)
        since = _copy_started(previous) if previous is not None else None
        layout, _ = self._layout(cid, record=True)
        source = self._source(cid, layout)
        scratch = self._scratch(f"create-{cid}")
        started = time.time_ns()
        try:
            try:
                stats = treecopy.copy_tree(source, scratch,
                                           link_dest=previous if since is not None else None,
                                           unchanged_since_ns=since)
            except treecopy.TreeChanged as exc:
                where = exc.path.decode("utf-8", "backslashreplace")[-200:]
                raise ContainerChanged([{"field": "container", "reason": f"{where!r} {exc.why}"}]) from exc
            _tag(scratch, COPY_STARTED_XATTR, str(started))
            _tag(scratch, CAPTURED_XATTR, "upper" if layout == "overlay" else "whole")
            fsops.syncfs(self.tmpdir)
            faults.point("overlay.create.after-copy")
            (self.snapdir / cid).mkdir(mode=0o700, exist_ok=True)
            os.rename(scratch, final)
            fsops.fsync_dir(final.parent)
        except BaseException:
            self._discard(scratch, "a failed create's copy")
            raise
        return SnapshotFacts(
            name=name,
            created_at=os.lstat(final).st_ctime,
            size=stats.exclusive_bytes,
            ref=f"{cid}/{name}",
            policy=meta.policy,
        )

    # -- export and import ---------------------------------------------------

    accepts_imports = True

    async def receive(self, cid: str, name: str, reader: portable.StreamReader, base: SnapshotRef | None,
                      layout: str, new_container: bool) -> SnapshotFacts:
        return await asyncio.to_thread(self._receive, cid, name, reader, base, layout, new_container)

    def _receive(self, cid: str, name: str, reader: portable.StreamReader, base: SnapshotRef | None,
                 layout: str, new_container: bool) -> SnapshotFacts:
        """An incremental starts from a copy of the base linked to it (never written through:
        the reader replaces a file, it does not rewrite it).  The result carries no copy-started
        tag, so the container's next snapshot links nothing to it."""
        if not _CID.fullmatch(cid) or (not new_container and not fsops.is_real_dir(self._container(cid))):
            raise ContainerNotFound(cid)
        final = self._snapshot(cid, name)
        if os.path.lexists(final):
            raise BackendError(f"snapshot {name} already exists on disk")
        scratch = self._scratch(f"import-{cid}")
        try:
            if base is not None:
                source = self._snapshot(cid, base.name)
                if not fsops.is_real_dir(source):
                    raise SnapshotNotFound(base.name)
                treecopy.copy_tree(source, scratch, link_dest=source, unchanged_since_ns=1 << 62)
                for tag in SNAPSHOT_TAGS:
                    fsops.set_xattr(scratch, tag, None)
            else:
                scratch.mkdir(mode=0o700)
            reader.apply(str(scratch), incremental=base is not None)
            _tag(scratch, CAPTURED_XATTR, layout)
            fsops.syncfs(self.tmpdir)
            faults.point("overlay.import.received")
            if new_container:
                self._new_container(cid, layout)
            (self.snapdir / cid).mkdir(mode=0o700, exist_ok=True)
            if os.path.lexists(final):
                raise BackendError(f"snapshot {name} already exists on disk")
            os.rename(scratch, final)
            fsops.fsync_dir(final.parent)
        except BaseException:
            self._discard(scratch, "a failed import's tree")
            raise
        return SnapshotFacts(name=name, created_at=os.lstat(final).st_ctime, ref=f"{cid}/{name}")

    def _new_container(self, cid: str, layout: str) -> None:
        """An empty container whose layout is what the stream captured: an overlay container
        (upper/ and work/) for an upper-layer capture, else a plain directory."""
        build = self._scratch(f"container-{cid}")
        build.mkdir(mode=0o755)
        if layout == "upper":
            (build / "upper").mkdir(mode=0o755)
            (build / "work").mkdir(mode=0o700)
        try:
            fsops.set_xattr(build, LAYOUT_XATTR, "overlay" if layout == "upper" else "whole")
        except OSError as exc:
            if exc.errno != errno.ENOTSUP:
                raise
        os.rename(build, self._container(cid))
        fsops.fsync_dir(self.path)

    # -- restore -------------------------------------------------------------

    restore_moves_others = False
    """Other snapshots are directories beside the container, never touched."""

    async def restore(self, cid: str, snap: SnapshotRef, others: list[SnapshotRef]) -> RefUpdates:
        await asyncio.to_thread(self._restore, cid, snap.name)
        return {}

    def _restore(self, cid: str, name: str) -> None:
        container = self._container(cid)
        if not fsops.is_real_dir(container):
            raise ContainerNotFound(cid)
        source = self._snapshot(cid, name)
        if not fsops.is_real_dir(source):
            raise SnapshotNotFound(name)
        layout, _ = self._layout(cid, record=True)
        captured = fsops.get_xattr(source, CAPTURED_XATTR)
        wanted = "upper" if layout == "overlay" else "whole"
        if captured is not None and captured != wanted:
            raise ContainerBusy(
                f"the container's layout changed since the snapshot: it captured "
                f"{'the overlay upper layer' if captured == 'upper' else 'the whole directory'}, "
                f"the container is now {'an overlay container' if layout == 'overlay' else 'a plain directory'}",
                [{"field": "container", "reason": f"snapshot layout {captured}, container layout {wanted}"}],
            )
        target = self._source(cid, layout)
        merged = container / "merged"
        if layout == "overlay" and os.path.ismount(merged):
            details = [{"field": "container", "reason": f"{merged} is a mount point"}]
            try:
                inuse.refuse_held(cid, [str(merged), str(container)], ContainerBusy)
            except ContainerBusy as busy:
                details += busy.details
            raise ContainerBusy(
                "the container's overlay is mounted; unmount it before restoring", details)
        self._refuse_busy(cid, container, target)  # before the copy: fail fast
        build = self._scratch(f"restore-{cid}")
        if os.lstat(target).st_dev != os.lstat(self.tmpdir).st_dev:
            build = target.parent / f"{RESTORE_PREFIX}{secrets.token_hex(6)}"
        try:
            # A real copy: the live tree must never share an inode with a snapshot.
            treecopy.copy_tree(source, build, link_dest=None)
            for tag in SNAPSHOT_TAGS:
                fsops.set_xattr(build, tag, None)
            if target == container:
                for label in (PROJECT_XATTR, LAYOUT_XATTR):  # the container's, not the snapshot's
                    fsops.set_xattr(build, label, fsops.get_xattr(container, label))
            fsops.syncfs(build)
            faults.point("overlay.restore.after-copy")
            self._refuse_busy(cid, container, target)  # again, just before the swap
            fsops.exchange(build, target)
            fsops.fsync_dir(target.parent)
            faults.point("overlay.restore.after-exchange")
        except BaseException:
            if fsops.is_real_dir(build):
                self._discard(build, "a failed restore's copy")
            raise
        self._discard(build, f"the tree restore of {cid} replaced")  # the swap stands either way

    @staticmethod
    def _refuse_busy(cid: str, container: Path, target: Path) -> None:
        """409 when the swap of `target` would pull a mount or a process's files away.

        Mounts are looked for in the tree that is replaced (a mount at or under
        `target`); processes anywhere in the container directory, whatever its layout.
        """
        if mounts.is_mount_point(target):
            what = "the container directory" if target == container else f"{target.name}/"
            raise ContainerBusy(
                f"cannot restore container {cid}: {what} is a mount point and cannot be swapped",
                [{"field": "container", "reason": "mount at /" + ("" if target == container else target.name)}],
            )
        mounts.refuse_mounts(cid, target)
        inuse.refuse_held(cid, [str(container)], ContainerBusy)

    # -- delete --------------------------------------------------------------

    async def delete(self, cid: str, snaps: list[SnapshotRef]) -> dict[str, BackendError | None]:
        return await asyncio.to_thread(self._delete, cid, [s.name for s in snaps])

    def _delete(self, cid: str, names: list[str]) -> dict[str, BackendError | None]:
        results: dict[str, BackendError | None] = {}
        table = remove.mount_points()  # read once for the batch (the reaper deletes 100 at a time)
        for name in names:
            path = self._snapshot(cid, name)
            if not os.path.lexists(path):
                results[name] = None
                continue
            mounts = remove.mounts_under(str(path), table)
            if mounts:  # refused before anything moves or goes
                results[name] = TreeHasMounts(str(path), mounts)
                continue
            doomed = self._scratch(f"delete-{cid}")
            try:
                os.rename(path, doomed)
            except OSError as exc:
                results[name] = BackendError(f"cannot remove {name}: {exc.strerror}")
                continue
            faults.point("overlay.delete.after-rename")
            results[name] = self._remove_or_put_back(name, doomed, path)
        # an emptied `.snapshots/<id>` stays: it carries the container's name mark
        self._forget_meta(cid, results)
        return results

    def _remove_or_put_back(self, name: str, doomed: Path, path: Path) -> BackendError | None:
        """Finish a delete, or move the snapshot back where it was: the store keeps
        listing a snapshot only while it is on disk, and forgets it only once gone."""
        try:
            remove.remove_tree(doomed, table=[])  # the mount table was checked before the rename
            return None
        except TreeHasMounts as exc:
            error: BackendError = exc.under(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure: the snapshot goes back
            error = BackendError(f"cannot remove {name}: {remove.why(exc)}")
        try:
            os.rename(doomed, path)
        except OSError as exc:
            self._set_aside(f"{doomed} (snapshot {name}, deleted but not removed: {error}; "
                            f"cannot move it back: {exc.strerror})")
            return None  # no longer the snapshot: scratch, which the next open() sweeps
        log.warning("snapshot %s kept (moved back into place): %s", path, error)
        return error

    def _discard(self, tree: Path, what: str) -> None:
        """Remove scratch `tree`; what cannot go is logged and left for the next open()."""
        try:
            remove.remove_tree(tree)
        except Exception as exc:  # noqa: BLE001 - leftovers never fail the operation
            self._set_aside(f"{tree} ({what}) left for the next start: {remove.why(exc)}")

    def _set_aside(self, problem: str) -> None:
        log.error("%s", problem)
        self.problems.append(problem)

    # -- listing and sizes ---------------------------------------------------

    async def list(self, cid: str | None = None) -> dict[str, list[SnapshotFacts]]:
        return await asyncio.to_thread(lambda: self._attach_meta(self._list(cid)))

    def _list(self, cid: str | None) -> dict[str, list[SnapshotFacts]]:
        cids = [cid] if cid else [
            e.name for e in os.scandir(self.snapdir) if _CID.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
        ]
        out: dict[str, list[SnapshotFacts]] = {}
        for c in cids:
            facts = [
                SnapshotFacts(name=n, created_at=os.lstat(self._snapshot(c, n)).st_ctime, ref=f"{c}/{n}")
                for n in self._names(c)
            ]
            if facts:
                out[c] = facts
        return out

    async def sizes(self, cid: str, names: list[str]) -> dict[str, int]:
        """Exclusive allocated bytes of these snapshots now (walks them: off the request path)."""
        return await asyncio.to_thread(self._sizes, cid, names)

    def _sizes(self, cid: str, names: list[str]) -> dict[str, int]:
        return {name: treecopy.tree_exclusive_bytes(path) for name in names
                if fsops.is_real_dir(path := self._snapshot(cid, name))}

    # -- files -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def snapshot_root(self, cid: str, snap: SnapshotRef) -> AsyncIterator[TreeRoot]:
        if not await self.container_exists(cid):
            raise ContainerNotFound(cid)
        path = self._snapshot(cid, snap.name)
        if not fsops.is_real_dir(path):
            raise SnapshotNotFound(snap.name)
        upper = await asyncio.to_thread(fsops.get_xattr, path, CAPTURED_XATTR) == "upper"
        async with open_root(str(path), whiteouts=upper) as root:
            yield root

    @contextlib.asynccontextmanager
    async def live_root(self, cid: str) -> AsyncIterator[TreeRoot]:
        if not await self.container_exists(cid):
            raise ContainerNotFound(cid)
        layout, _ = await asyncio.to_thread(self._layout, cid)
        source = await asyncio.to_thread(self._source, cid, layout)
        async with open_root(str(source), whiteouts=layout == "overlay") as root:
            yield root

    async def refuse_busy(self, cid: str) -> None:
        await asyncio.to_thread(self._refuse_in_use, cid)

    def _refuse_in_use(self, cid: str) -> None:
        """Restore's rule without the swap of the whole tree: a mounted overlay (writing
        its upper layer under it is undefined), mounts inside, processes holding it."""
        container = self._container(cid)
        layout, _ = self._layout(cid)
        merged = container / "merged"
        if layout == "overlay" and os.path.ismount(merged):
            raise ContainerBusy("the container's overlay is mounted; unmount it before restoring",
                                [{"field": "container", "reason": f"{merged} is a mount point"}])
        mounts.refuse_mounts(cid, self._captured(cid, layout))
        inuse.refuse_held(cid, [str(container)], ContainerBusy)

    def container_path(self, cid: str) -> Path:
        return self._container(cid)


