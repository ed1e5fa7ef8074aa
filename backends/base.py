"""The interface every filesystem backend implements, and its errors.

A backend does the filesystem work for one pool (a backend kind plus a
root).  It knows nothing of HTTP, tokens or SQLite: the service calls it
with validated container ids and snapshot names, and records what it
returns in the store.  Every method may block only inside a worker thread
or a subprocess; none blocks the event loop.
"""

from __future__ import annotations

import abc
import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

if TYPE_CHECKING:
    from .portable import NativeSource, StreamReader

PROJECT_XATTR = (
    "trusted.container-snapd.project" if os.geteuid() == 0 else "user.container-snapd.project"
)
"""Extended attribute holding a directory container's project label.

For a plain-directory or btrfs container the labelled directory is the
container's own `/`, which its root (even an unprivileged one in a user
namespace) can give any `user.*` attribute: a label there would let a
workload move its container into another project.  `trusted.*` needs
CAP_SYS_ADMIN in the host's user namespace, so the daemon (root) keeps the
label there; only a daemon running as a normal user (`--dev`) uses `user.*`.
"""

LAYOUT_XATTR = PROJECT_XATTR.replace(".project", ".layout")
"""Extended attribute holding a directory container's layout, "overlay" or "whole"
(overlay pools): set by an admin or recorded at the first snapshot, never inferred
again.  `trusted.*` for the same reason as PROJECT_XATTR."""
LAYOUTS = ("overlay", "whole")
"""What a snapshot of a directory container captures: `upper/` only, or the whole tree."""

PROJECT_PROPERTY = "container-snapd:project"
"""ZFS user property holding a dataset container's project label."""

NAME_MARK_XATTR = (
    "trusted.container-snapd.last-name" if os.geteuid() == 0 else "user.container-snapd.last-name"
)
"""Extended attribute on `<root>/.snapshots/<id>` (out of the container's reach):
the greatest snapshot name ever given for the container (see name_marks())."""

NAME_MARK_PROPERTY = "container-snapd:last-name"
"""ZFS user property on a container's dataset: its NAME_MARK_XATTR."""

SNAPSHOTS_DIR = ".snapshots"
"""Directory under a directory pool's root that holds snapshots (and temp work)."""


@dataclass(frozen=True)
class SnapshotFacts:
    """What a backend knows about one snapshot on disk."""

    name: str
    created_at: float
    """Seconds since the epoch (UTC)."""
    size: int | None = None
    """Bytes the snapshot holds exclusively, or None when not known yet."""
    ref: str = ""
    """Where the snapshot lives, in the backend's own terms (stored, passed back)."""
    alias: str | None = None
    """Alias mirrored on disk, for backends that mirror metadata (else None)."""
    expires_at: float | None = None
    """Expiry mirrored on disk, for backends that mirror metadata (else None)."""
    mirrored: bool = False
    """True when alias/expires_at above were read from on-disk metadata."""
    policy: str | None = None
    """The policy that took it, as recorded on disk (None: by request, or not recorded)."""
    hold_reason: str | None = None
    """Its hold as recorded on disk (None: not held)."""
    hold_since: float | None = None


@dataclass(frozen=True)
class SnapshotRef:
    """A snapshot as the service hands it to a backend."""

    name: str
    ref: str = ""


@dataclass(frozen=True)
class TreeRoot:
    """A directory tree to read beneath: a snapshot's content, or a live container's.

    `fd` is an O_RDONLY|O_DIRECTORY descriptor, valid inside the context that gave it;
    every path is resolved beneath it (backends.beneath), never through `path`, which
    is for messages and for filesystem tools (btrfs send)."""

    fd: int
    path: str
    whiteouts: bool = False
    """An overlay upper-layer capture: a 0/0 character device is a deletion, not an entry."""
    subvolume: bool = False
    """The root is a btrfs subvolume (change tracking between two of one container)."""
    snapshot: str = ""
    """The ZFS snapshot (dataset@name) it shows, for `zfs diff`."""


@contextlib.asynccontextmanager
async def open_root(path: str, **kind: Any) -> AsyncIterator[TreeRoot]:
    """A TreeRoot of directory `path` (not followed if a symlink), closed on exit."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield TreeRoot(fd, path, **kind)
    finally:
        os.close(fd)


RefUpdates = dict[str, str]
"""Snapshot name -> new ref, for snapshots an operation moved."""


class BackendError(Exception):
    """A filesystem operation failed; the message is safe to show an admin."""


class ContainerNotFound(BackendError):
    """The container does not exist in this pool (or is not of this pool's kind)."""


class SnapshotNotFound(BackendError):
    """The snapshot does not exist on disk."""


class ContainerBusy(BackendError):
    """The container cannot be changed now (in use, nested subvolumes, ...)."""

    def __init__(self, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class ContainerChanged(ContainerBusy):
    """The container's files kept changing while a copy of them was taken (overlay)."""

    MESSAGE = "container changed during the snapshot; retry or freeze it"

    def __init__(self, details: list[dict] | None = None) -> None:
        super().__init__(self.MESSAGE, details)


class TreeHasMounts(ContainerBusy):
    """A tree to delete has mount points inside: they, and all beneath them, were left alone."""

    def __init__(self, root: str, mounts: list[str]) -> None:
        self.root = root
        self.mounts = mounts
        """Paths relative to `root` ("." for `root` itself)."""
        shown = ", ".join(self.paths()[:10]) + (f" and {len(mounts) - 10} more" if len(mounts) > 10 else "")
        super().__init__(
            f"{root} has {len(mounts)} mount point{'s' if len(mounts) != 1 else ''} inside "
            f"({shown}); nothing was deleted through them",
            [{"field": "mount", "reason": f"{p} is a mount point"} for p in self.paths()],
        )

    def paths(self) -> list[str]:
        """The mount points as full paths."""
        return [os.path.normpath(os.path.join(self.root, m)) for m in self.mounts]

    def under(self, root: str) -> TreeHasMounts:
        """The same finding, told about the tree as it is known at `root` (after a move)."""
        return TreeHasMounts(root, self.mounts)


class NoSpace(BackendError):
    """The pool has no room for the operation."""


class ImportUnsupported(BackendError):
    """This pool cannot receive (or send) a stream of that kind."""


class PoolError(BackendError):
    """The pool itself is unusable (wrong filesystem, missing root, ...)."""


class Backend(abc.ABC):
    """One pool: a backend kind and a root (a directory or a ZFS dataset)."""

    kind: str = ""

    def __init__(self, root: str) -> None:
        self.root = root
        self.layout = "auto"
        """Pool setting (config `layout`): the layout of containers without a label,
        one of LAYOUTS, or "auto" (decided at a container's first snapshot).
        Only overlay pools have a choice; the others capture the whole container."""
        self.problems: list[str] = []
        """What this pool has set aside (leftovers it could not remove, repairs it could
        not make), one line each; reset by every open(), shown by `snapd status`."""

    async def open(self) -> None:
        """Check the root is usable (raise PoolError if not) and sweep leftovers."""

    async def close(self) -> None:
        """Release anything held."""

    @abc.abstractmethod
    async def container_exists(self, cid: str) -> bool:
        """Whether the container `cid` lives in this pool."""

    @abc.abstractmethod
    async def containers(self) -> dict[str, str | None]:
        """Every container in the pool, id -> project label (None when unlabelled), read
        in one pass (the policy scheduler's inventory)."""

    @abc.abstractmethod
    async def get_project(self, cid: str) -> str | None:
        """The container's project label, or None when unlabelled."""

    async def lookup(self, cid: str) -> tuple[bool, str | None]:
        """Whether `cid` lives in this pool, and its project label: what every request asks
        first (a backend may answer both in one thread or one process)."""
        if not await self.container_exists(cid):
            return False, None
        return True, await self.get_project(cid)

    @abc.abstractmethod
    async def set_project(self, cid: str, project: str | None) -> None:
        """Set (or with None, remove) the container's project label."""

    async def get_layout(self, cid: str) -> tuple[str, str | None]:
        """What a snapshot of `cid` captures (one of LAYOUTS) and the container's layout
        label (None when it has none)."""
        return "whole", None

    async def set_layout(self, cid: str, layout: str | None) -> None:
        """Label the container with `layout` (one of LAYOUTS; None removes the label)."""
        raise ContainerBusy(
            f"a {self.kind} container is always captured whole: layout labels apply to overlay pools only",
            [{"field": "layout", "reason": f"container {cid} is in {self.kind} pool {self.root}"}],
        )

    @abc.abstractmethod
    async def name_marks(self, cid: str | None = None) -> dict[str, str]:
        """The snapshot-name high-water marks kept on disk, by container id (all
        containers when cid is None; containers without one are left out).

        The service writes a container's mark with set_name_mark() before a
        delete removes its newest snapshot, so the greater of the mark and the
        names still on disk is at least every name ever given: what a store
        rebuilt from the pool needs to never give a name twice.  The mark is
        kept out of the container's reach, survives restores and deleting
        every snapshot, and moves with the container where the container moves.
        """

    @abc.abstractmethod
    async def set_name_mark(self, cid: str, name: str) -> None:
        """Record `name` as the container's mark, so that no snapshot removed after
        this call can be gone from the disk while the mark is not there."""

    @abc.abstractmethod
    async def create(
        self, cid: str, name: str, alias: str | None, expires_at: float | None,
        created_at: float | None = None, *, policy: str | None = None,
    ) -> SnapshotFacts:
        """Take snapshot `name` of container `cid`, atomically: all or nothing.

        `alias`, `expires_at` and `created_at` (the time the service records)
        are passed so backends that mirror metadata on disk can write it in
        the same step; `policy` (the policy taking it, None: by request) is
        recorded on disk by every backend, so a rebuilt store keeps it.
        """

    restore_moves_others = True
    """Whether restore() may move other snapshots and so must be told them (ZFS); False
    spares the caller listing every snapshot of the container first."""

    @abc.abstractmethod
    async def restore(
        self, cid: str, snap: SnapshotRef, others: list[SnapshotRef]
    ) -> RefUpdates:
        """Make the container's content equal to `snap`, atomically.

        `others` are the container's other snapshots (empty when
        `restore_moves_others` is False); none may be lost or altered.
        Returns new refs for snapshots the restore moved.
        """

    @abc.abstractmethod
    async def delete(self, cid: str, snaps: list[SnapshotRef]) -> dict[str, BackendError | None]:
        """Delete snapshots of one container, batched where the backend can.

        Returns, per name, None when it is gone (or was already gone) or the
        error that kept it.
        """

    @abc.abstractmethod
    async def list(self, cid: str | None = None) -> dict[str, list[SnapshotFacts]]:
        """Snapshots on disk, by container id (all containers when cid is None)."""

    @abc.abstractmethod
    def snapshot_root(self, cid: str, snap: SnapshotRef) -> contextlib.AbstractAsyncContextManager[TreeRoot]:
        """The snapshot's content, read-only, for as long as the context lasts
        (ContainerNotFound / SnapshotNotFound when it is not on disk)."""

    @abc.abstractmethod
    def live_root(self, cid: str) -> contextlib.AbstractAsyncContextManager[TreeRoot]:
        """The container's live tree, as a snapshot of it captures it (on an overlay
        container, its upper layer)."""

    @abc.abstractmethod
    async def refuse_busy(self, cid: str) -> None:
        """ContainerBusy when a restore would now be refused as in use (mounts inside,
        processes holding it): the rule restore-paths follows too."""

    async def changes(self, old: TreeRoot, new: TreeRoot) -> dict[tuple[bytes, ...], bool] | None:
        """The paths the filesystem's change tracking says may differ from `old` to `new`
        (components -> deep: compare everything beneath too), or None when it has none for
        this pair: the diff then walks both trees (backends.treeread)."""
        return None

    async def restore_paths(self, cid: str, snap: SnapshotRef, paths: list[tuple[bytes, ...]],
                            token: str) -> list[dict]:
        """Put each of `paths` (components, see backends.beneath) back as it is in the
        snapshot: built beside under a name carrying `token`, then renamed into place in
        one step, so each path is either as before or as in the snapshot.  Returns what
        was restored, one dict per path."""
        from backends import pathrestore

        async with self.snapshot_root(cid, snap) as src, self.live_root(cid) as dst:
            return await pathrestore.restore(src, dst, paths, token, lambda: self.refuse_busy(cid))

    async def set_alias(self, cid: str, snap: SnapshotRef, alias: str | None) -> None:
        """Mirror a new alias on disk, for backends that mirror metadata."""

    async def hold(self, cid: str, snap: SnapshotRef, reason: str, since: float) -> None:
        """Hold the snapshot (`reason`, held since `since`): recorded on disk where the
        backend can, so a store rebuilt from the pool keeps it; on ZFS also a `zfs hold`.
        Holding a held snapshot again replaces the reason."""

    async def release(self, cid: str, snap: SnapshotRef) -> None:
        """Release the snapshot's hold; releasing one not held changes nothing."""

    async def sizes(self, cid: str, names: list[str]) -> dict[str, int]:
        """Exclusive sizes of these snapshots now, by name (one batched count; the
        service names the snapshots a create or delete may have changed)."""
        return {}

    async def free_bytes(self) -> int | None:
        """Bytes available for new data in the pool, when known."""
        return None

    async def total_bytes(self) -> int | None:
        """The pool's size in bytes (for a reserve given as a percentage), when known."""
        return None

    async def free_inodes(self) -> int | None:
        """Inodes available for new files in the pool; None when the filesystem has no
        fixed inode count (btrfs, ZFS objects) or the figure cannot be trusted."""
        return None

    async def total_inodes(self) -> int | None:
        """The pool's inode count (for an inode reserve given as a percentage); None
        when not applicable (see free_inodes)."""
        return None

    async def projects(self, cids: list[str]) -> dict[str, str | None]:
        """The project labels of containers `cids` (those no longer there are left out),
        batched where the backend can (one `zfs get`)."""
        out: dict[str, str | None] = {}
        for cid in cids:
            try:
                out[cid] = await self.get_project(cid)
            except (ContainerNotFound, FileNotFoundError):
                continue
        return out

    accepts_imports = False
    """Whether `receive` can make snapshots from portable streams here."""

    @contextlib.asynccontextmanager
    async def export_path(self, cid: str, snap: SnapshotRef) -> AsyncIterator[str]:
        """The directory holding the snapshot's tree, read-only, for as long as the context
        lasts: snapshot_root's path (a directory pool's snapshot directory or subvolume, on
        ZFS `.zfs/snapshot/<name>` or a read-only clone)."""
        async with self.snapshot_root(cid, snap) as root:
            yield root.path

    async def receive(self, cid: str, name: str, reader: StreamReader, base: SnapshotRef | None,
                      layout: str, new_container: bool) -> SnapshotFacts:
        """Make snapshot `name` of `cid` from the rest of `reader`'s stream: received into
        scratch (a copy of snapshot `base` for an incremental), checked, then made visible
        in one step; on any failure nothing is visible and the scratch is removed.  With
        `new_container`, the container is first made (empty; `layout`: what the stream
        captured, "whole" or "upper") -- the live tree of an existing one is never touched."""
        raise ImportUnsupported(f"a {self.kind} pool cannot receive portable streams yet")

    native_stream: str | None = None
    """The kind of the filesystem's own send stream this pool sends and receives ("btrfs",
    "zfs"), or None: portable streams only.  Two pools of one kind move snapshots natively."""

    async def send_native(self, cid: str, snap: SnapshotRef, base: SnapshotRef | None,
                          push: Callable[[bytes], Awaitable[None]]) -> int:
        """Stream the filesystem's send stream of `snap` (incremental from `base` when given,
        which the receiver must hold as a native base) to `push`, chunk by chunk; the bytes
        sent.  Raises BackendError when the send fails (the caller then cuts the stream off
        without its trailer)."""
        raise ImportUnsupported(f"a {self.kind} pool has no native stream")

    async def receive_native(self, cid: str, name: str, source: NativeSource, base: SnapshotRef | None,
                             new_container: bool) -> SnapshotFacts:
        """Make snapshot `name` of `cid` from a native stream (`source`, a blocking reader: read
        it in a worker thread), incremental from `base` when given; as `receive` does: into
        scratch, visible in one step only after `source.finish()` verified the trailer, nothing
        left on any failure; StreamError when the stream is for another name or base."""
        raise ImportUnsupported(f"a {self.kind} pool cannot receive native streams")

    async def native_bases(self, cid: str) -> list[str]:
        """Names of the snapshots of `cid` a native incremental may start from here (on btrfs:
        those received natively, which keep the sender's identity)."""
        return []

    async def recover(self, op: str, cid: str, snapshot: str | None, data: dict) -> None:
        """Tidy what an interrupted `op` on `cid` may have left (start-up, after open()).

        Called for every unfinished journal entry of this pool before reconcile.
        open() has already swept the pool's scratch area; this is for anything
        outside it.  Must be idempotent.  The service then settles the store.
        """
        if op == "restore-paths":
            await self.recover_paths(cid, data)

    async def recover_paths(self, cid: str, data: dict) -> None:
        """Remove what an interrupted restore_paths() built or swapped out (idempotent)."""
        from backends import pathrestore

        async with self.live_root(cid) as dst:
            await pathrestore.sweep(dst, data.get("paths", []), data.get("token", ""))

    @property
    def pool_id(self) -> str:
        """The pool's identity, `kind:root`: the key the store, the journal and the
        service's policies know a pool by."""
        return f"{self.kind}:{self.root}"
