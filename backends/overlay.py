"""The overlay-aware copy fallback, for containers on ext4, xfs or anything else.

Layout under the pool root (a directory):

    <root>/<id>/                      a container: plain directory, or
    <root>/<id>/{upper,work,...}      an overlay container (only upper/ is captured)
    <root>/.snapshots/<id>/<name>/    a snapshot: a copy of the captured tree
    <root>/.snapshots/.tmp/           work in progress; swept on open()

Snapshots are copies made by `treecopy.copy_tree`: reflinks where the
filesystem clones, otherwise hard links to the previous snapshot for
unchanged files.  A create builds in .tmp and renames into place; a
restore builds a real copy (never links into a snapshot) beside the live
tree and swaps the two with one RENAME_EXCHANGE; a delete renames into
.tmp before removing.  So a crash leaves every tree whole.

Sizes are exclusive allocated bytes (inodes not shared with another
snapshot), computed at creation; when a create or delete changes what a
neighbouring snapshot shares, that neighbour is marked for recount and
`sizes()` recounts just those, off the request path.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from backends import faults

from . import fsops, inuse, treecopy
from .base import (
    NAME_MARK_XATTR,
    PROJECT_XATTR,
    SNAPSHOTS_DIR,
    Backend,
    BackendError,
    ContainerBusy,
    ContainerNotFound,
    PoolError,
    RefUpdates,
    SnapshotFacts,
    SnapshotNotFound,
    SnapshotRef,
)

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


class OverlayBackend(Backend):
    """Directory pool: copies, overlay-aware."""

    kind = "overlay"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.path = Path(root)
        self.snapdir = self.path / SNAPSHOTS_DIR
        self.tmpdir = self.snapdir / ".tmp"
        self._dirty: dict[str, set[str]] = {}

    # -- paths ---------------------------------------------------------------

    def _container(self, cid: str) -> Path:
        return self.path / cid

    def _captured(self, cid: str) -> Path:
        """The tree a snapshot holds: upper/ of an overlay container, else the container."""
        c = self._container(cid)
        return c / "upper" if self._is_overlay(cid) else c

    def _is_overlay(self, cid: str) -> bool:
        c = self._container(cid)
        return fsops.is_real_dir(c / "upper") and fsops.is_real_dir(c / "work")

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
        if self.tmpdir.exists():
            shutil.rmtree(self.tmpdir)
        self.tmpdir.mkdir(mode=0o700)

    async def container_exists(self, cid: str) -> bool:
        return _CID.fullmatch(cid) is not None and fsops.is_real_dir(self._container(cid))

    async def get_project(self, cid: str) -> str | None:
        return await asyncio.to_thread(fsops.get_xattr, self._container(cid), PROJECT_XATTR)

    async def set_project(self, cid: str, project: str | None) -> None:
        await asyncio.to_thread(fsops.set_xattr, self._container(cid), PROJECT_XATTR, project)

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

    async def recover(self, op: str, cid: str, snapshot: str | None, data: dict) -> None:
        """A restore builds beside upper/ when upper/ is on another filesystem than .tmp:
        remove such a build (open() has swept .tmp itself)."""
        if op == "restore" and _CID.fullmatch(cid):
            await asyncio.to_thread(self._sweep_container, cid)

    def _sweep_container(self, cid: str) -> None:
        if not self._is_overlay(cid):
            return  # a plain container's root is the container's own data: never swept
        container = self._container(cid)
        try:
            entries = [e for e in os.scandir(container) if e.name.startswith(RESTORE_PREFIX)]
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)

    # -- create --------------------------------------------------------------

    async def create(
        self, cid: str, name: str, alias: str | None, expires_at: float | None,
        created_at: float | None = None,
    ) -> SnapshotFacts:
        return await asyncio.to_thread(self._create, cid, name)

    def _latest(self, cid: str, exclude: str | None = None) -> Path | None:
        names = [n for n in self._names(cid) if n != exclude]
        return self._snapshot(cid, max(names, key=_name_key)) if names else None

    def _names(self, cid: str) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.snapdir / cid) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def _create(self, cid: str, name: str) -> SnapshotFacts:
        if not fsops.is_real_dir(self._container(cid)):
            raise ContainerNotFound(cid)
        final = self._snapshot(cid, name)
        if os.path.lexists(final):
            raise BackendError(f"snapshot {name} already exists on disk")
        previous = self._latest(cid)
        since = _copy_started(previous) if previous is not None else None
        scratch = self._scratch(f"create-{cid}")
        source = self._captured(cid)
        started = time.time_ns()
        try:
            stats = treecopy.copy_tree(source, scratch,
                                       link_dest=previous if since is not None else None,
                                       unchanged_since_ns=since)
            _tag(scratch, COPY_STARTED_XATTR, str(started))
            _tag(scratch, CAPTURED_XATTR, "whole" if source == self._container(cid) else "upper")
            fsops.syncfs(self.tmpdir)
            faults.point("overlay.create.after-copy")
            (self.snapdir / cid).mkdir(mode=0o700, exist_ok=True)
            os.rename(scratch, final)
            fsops.fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        if previous is not None and stats.linked:
            self._dirty.setdefault(cid, set()).add(previous.name)
        return SnapshotFacts(
            name=name,
            created_at=os.lstat(final).st_ctime,
            size=stats.exclusive_bytes,
            ref=f"{cid}/{name}",
        )

    # -- restore -------------------------------------------------------------

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
        target = self._captured(cid)
        layout = "upper" if target != container else "whole"
        captured = fsops.get_xattr(source, CAPTURED_XATTR)
        if captured is not None and captured != layout:
            raise ContainerBusy(
                f"the container's layout changed since the snapshot: it captured "
                f"{'the overlay upper layer' if captured == 'upper' else 'the whole directory'}, "
                f"the container is now {'an overlay container' if layout == 'upper' else 'a plain directory'}",
                [{"field": "container", "reason": f"snapshot layout {captured}, container layout {layout}"}],
            )
        merged = container / "merged"
        if target != container and os.path.ismount(merged):
            details = [{"field": "container", "reason": f"{merged} is a mount point"}]
            try:
                inuse.refuse_held(cid, [str(merged), str(target)], ContainerBusy)
            except ContainerBusy as busy:
                details += busy.details
            raise ContainerBusy(
                "the container's overlay is mounted; unmount it before restoring", details)
        if target == container and os.path.ismount(container):
            raise ContainerBusy(
                "the container directory is a mount point and cannot be swapped",
                [{"field": "container", "reason": f"{container} is a mount point"}],
            )
        inuse.refuse_held(cid, [str(target)], ContainerBusy)  # before the copy: fail fast
        build = self._scratch(f"restore-{cid}")
        if os.lstat(target).st_dev != os.lstat(self.tmpdir).st_dev:
            build = target.parent / f"{RESTORE_PREFIX}{secrets.token_hex(6)}"
        try:
            # A real copy: the live tree must never share an inode with a snapshot.
            treecopy.copy_tree(source, build, link_dest=None)
            for tag in SNAPSHOT_TAGS:
                fsops.set_xattr(build, tag, None)
            if target == container:
                fsops.set_xattr(build, PROJECT_XATTR, fsops.get_xattr(container, PROJECT_XATTR))
            fsops.syncfs(build)
            faults.point("overlay.restore.after-copy")
            inuse.refuse_held(cid, [str(target)], ContainerBusy)  # again, just before the swap
            fsops.exchange(build, target)
            fsops.fsync_dir(target.parent)
            faults.point("overlay.restore.after-exchange")
        except BaseException:
            if fsops.is_real_dir(build):
                shutil.rmtree(build, ignore_errors=True)
            raise
        shutil.rmtree(build)

    # -- delete --------------------------------------------------------------

    async def delete(self, cid: str, snaps: list[SnapshotRef]) -> dict[str, BackendError | None]:
        return await asyncio.to_thread(self._delete, cid, [s.name for s in snaps])

    def _delete(self, cid: str, names: list[str]) -> dict[str, BackendError | None]:
        results: dict[str, BackendError | None] = {}
        for name in names:
            path = self._snapshot(cid, name)
            if not os.path.lexists(path):
                results[name] = None
                continue
            doomed = self._scratch(f"delete-{cid}")
            try:
                os.rename(path, doomed)
            except OSError as exc:
                results[name] = BackendError(f"cannot remove {name}: {exc.strerror}")
                continue
            faults.point("overlay.delete.after-rename")
            results[name] = None
            shutil.rmtree(doomed, ignore_errors=True)
        remaining = sorted(self._names(cid), key=_name_key)
        if remaining:
            # Only a deleted snapshot's nearest survivors can gain exclusive inodes.
            dirty = self._dirty.setdefault(cid, set())
            keys = [_name_key(n) for n in remaining]
            for name in names:
                i = bisect.bisect_left(keys, _name_key(name))  # name itself is gone
                dirty.update(remaining[max(i - 1, 0):i + 1])
        # an emptied `.snapshots/<id>` stays: it carries the container's name mark
        return results

    # -- listing and sizes ---------------------------------------------------

    async def list(self, cid: str | None = None) -> dict[str, list[SnapshotFacts]]:
        return await asyncio.to_thread(self._list, cid)

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

    async def sizes(self, cid: str | None = None) -> dict[str, dict[str, int]]:
        """Recount the snapshots whose sharing changed since the last call."""
        return await asyncio.to_thread(self._sizes, cid)

    def _sizes(self, cid: str | None) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for c in [cid] if cid else list(self._dirty):
            for name in self._dirty.pop(c, set()):
                path = self._snapshot(c, name)
                if fsops.is_real_dir(path):
                    out.setdefault(c, {})[name] = treecopy.tree_exclusive_bytes(path)
        return out

    def container_path(self, cid: str) -> Path:
        return self._container(cid)


