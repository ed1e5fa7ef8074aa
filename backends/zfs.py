"""ZFS backend: a container is `<root>/<id>`, a snapshot `<root>/<id>@<name>`.

Restore to an older snapshot without losing newer ones (zfs rollback would
destroy them): clone the chosen snapshot to `<root>/.snapd-hidden/<id>.restoring`,
promote the clone, then swap names: the old container dataset becomes a
hidden *holder* `<root>/.snapd-hidden/<id>-<n>` (canmount=off, no mountpoint)
keeping the newer snapshots, and the clone becomes `<root>/<id>`.  Refs of
snapshots that moved are returned.  Holders with no visible snapshot left
are destroyed (promoting a dependent clone first when needed); snapshots
that other datasets still depend on are destroyed deferred (`destroy -d`)
and hidden from list().  `open()` finishes or undoes an interrupted restore.

Alias, expiry, creation time (ms precision), the policy that took it and
its hold are mirrored into user properties of each snapshot so the metadata
can be rebuilt from the pool; a held snapshot also carries a `zfs hold`
(tag HOLD_TAG), so not even a `zfs destroy` by hand removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from backends import faults

from . import beneath, inuse, mounts, portable, zfs_diff
from .zfs_native import NATIVE_PROPERTY, ZfsNative
from .base import (
    NAME_MARK_PROPERTY,
    PROJECT_PROPERTY,
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
from .zfs_cmd import CmdResult, ZfsRunner, ZfsStats, error_for, valid_dataset_name

log = logging.getLogger(__name__)

ALIAS_PROPERTY = "container-snapd:alias"
EXPIRES_PROPERTY = "container-snapd:expires_at"
CREATED_PROPERTY = "container-snapd:created_at"
PENDING_PROPERTY = "container-snapd:restore-pending"
POLICY_PROPERTY = "container-snapd:policy"
"""On a snapshot a policy took: the policy's name (a JSON string in ASCII, like the alias)."""
HOLD_PROPERTY = "container-snapd:hold"
"""On a held snapshot: `{"reason": ..., "since": seconds}` (JSON in ASCII), beside the zfs hold."""
HOLD_TAG = "container-snapd"
"""The tag of the daemon's `zfs hold` on a held snapshot (`zfs holds` shows it)."""
HIDDEN = ".snapd-hidden"
SIZE_TTL = 2.0
FREE_TTL = 1.0
PROBE_TTL = 1.0
"""Seconds a container's existence + project label are reused between requests."""
MAX_DESTROY_ARG = 100_000

_CID_RE = re.compile(r"^[0-9a-f]{24}$")
_HOLDER_RE = re.compile(r"^([0-9a-f]{24})-(\d+)$")
_TEMP_RE = re.compile(r"^([0-9a-f]{24})\.restoring$")
_RECEIVING_RE = re.compile(r"^[0-9a-f]{24}\.receiving-[0-9a-f]{8}$")
"""A dataset a portable stream is being received into (destroyed at start-up when a crash left it)."""
RECEIVE_DIR_PREFIX = "snapd-zfs-receive-"
SCRATCH_TRIES = 10
_FILES_RE = re.compile(r"^[0-9a-f]{24}\.files-[0-9a-f]{8}$")
"""A read-only clone mounted to export a snapshot where `.zfs/snapshot` is missing (swept at start-up)."""
_SCAN_PROPS = ["type", "creation", "used", "origin", "defer_destroy", "mounted",
               ALIAS_PROPERTY, EXPIRES_PROPERTY, CREATED_PROPERTY, PENDING_PROPERTY, POLICY_PROPERTY,
               HOLD_PROPERTY, NATIVE_PROPERTY]
# Properties a clone cannot take at creation or that restore handles itself.
_NO_COPY = {"mountpoint", "canmount", "casesensitivity", "normalization", "utf8only",
            "volsize", "volblocksize", "version", PENDING_PROPERTY}


@dataclass
class _Ds:
    name: str
    props: dict[str, str]

    @property
    def is_snap(self) -> bool:
        return "@" in self.name

    @property
    def deferred(self) -> bool:
        return self.props.get("defer_destroy") == "on"

    @property
    def origin(self) -> str | None:
        return self.get("origin")

    def get(self, prop: str) -> str | None:
        """A property's value, None when unset ('-')."""
        v = self.props.get(prop, "-")
        return None if v in ("-", "") else v


@dataclass(frozen=True)
class _Probe:
    """A container seen to exist, with its project label (one `zfs get`)."""

    project: str | None
    at: float


@dataclass
class _Scan:
    """One `zfs get` of a container (or the pool) plus the hidden holders."""

    root: str
    items: dict[str, _Ds]
    at: float = field(default_factory=time.monotonic)

    def snaps(self, ds: str) -> list[_Ds]:
        """Snapshots of `ds`, oldest first, deferred ones included."""
        pre = ds + "@"
        return [d for d in self.items.values() if d.name.startswith(pre)]

    def holders(self, cid: str) -> list[str]:
        pre = f"{self.root}/{HIDDEN}/"
        out = []
        for name, d in self.items.items():
            m = _HOLDER_RE.match(name[len(pre):]) if name.startswith(pre) and not d.is_snap else None
            if m and m.group(1) == cid:
                out.append(name)
        return sorted(out, key=lambda n: int(n.rsplit("-", 1)[1]))

    def cids(self) -> list[str]:
        pre = self.root + "/"
        return [n[len(pre):] for n, d in self.items.items()
                if n.startswith(pre) and not d.is_snap and _CID_RE.match(n[len(pre):])]

    def visible(self, cid: str) -> dict[str, _Ds]:
        """Snapshot name -> snapshot, on the container and its holders."""
        out: dict[str, _Ds] = {}
        for ds in [*reversed(self.holders(cid)), f"{self.root}/{cid}"]:
            for s in self.snaps(ds):
                if not s.deferred:
                    out[s.name.split("@", 1)[1]] = s
        return out

    def clones_of(self, snap: str) -> list[str]:
        return [d.name for d in self.items.values() if d.origin == snap]


def _encode(alias: str) -> str:
    """An alias as its property value: a JSON string literal in ASCII, so no
    character of it (U+2028, a tab, a newline) can break `zfs get -H` output."""
    return json.dumps(alias, ensure_ascii=True)


def _decode(value: str | None) -> str | None:
    """A property value back to the alias; a value that is not JSON (set by
    hand) is taken as it is."""
    if value is None or value == "-":
        return None
    try:
        v = json.loads(value)
        return v if isinstance(v, str) else value
    except ValueError:
        return value


def _hold(value: str | None) -> tuple[str, float] | None:
    """HOLD_PROPERTY's value back to (reason, since); None when unset or not what
    hold() writes (a hold the daemon did not record is not one it keeps)."""
    try:
        data = json.loads(value) if value not in (None, "-", "") else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    reason, since = data.get("reason"), data.get("since")
    if not isinstance(reason, str) or isinstance(since, bool) or not isinstance(since, (int, float)):
        return None
    return reason, float(since)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "-", "") else None
    except ValueError:
        return None


class ZfsBackend(ZfsNative, Backend):
    """Snapshots as native ZFS snapshots of `<root>/<id>`."""

    kind = "zfs"

    def __init__(self, root: str, runner: ZfsRunner | None = None) -> None:
        super().__init__(root.rstrip("/"))
        self.zfs = runner or ZfsRunner()
        self.problems: list[str] = self.zfs.problems
        """What the pool holds that could not be read (see ZfsRunner.rows); for `snapd status`."""
        self.hidden = f"{self.root}/{HIDDEN}"
        self.multi_destroy = False
        """True when `zfs destroy ds@a,b,c` works (OpenZFS); detected by open()."""
        self._cache: dict[str | None, _Scan] = {}
        self._probes: dict[str, _Probe] = {}
        self._free: tuple[float, int, str | None] | None = None  # (monotonic time, available, mountpoint)
        self._has_diff: bool | None = None
        """`zfs diff` exists (OpenZFS, not zfs-fuse); asked once, on the first diff."""

    @property
    def stats(self) -> ZfsStats:
        return self.zfs.stats

    def _ds(self, cid: str) -> str:
        return f"{self.root}/{cid}"

    # -- pool ---------------------------------------------------------------

    async def open(self) -> None:
        if not valid_dataset_name(self.root):
            raise PoolError(f"'{self.root}' is not a ZFS dataset name")
        res = await self.zfs.zfs("get", "-H", "-o", "value", "type", self.root, check=False)
        if res.rc != 0 or res.stdout.strip() != "filesystem":
            why = res.stderr.strip() or f"type {res.stdout.strip()}"
            raise PoolError(f"ZFS pool root '{self.root}' is not a usable dataset: {why}")
        ver = await self.zfs.zfs("version", check=False)
        self.multi_destroy = ver.rc == 0  # OpenZFS >= 0.8; zfs-fuse has no `zfs version`
        hid = await self.zfs.zfs("get", "-H", "-o", "value", "type", self.hidden, check=False)
        if hid.rc != 0:
            await self.zfs.zfs("create", "-o", "canmount=off", "-o", "mountpoint=none",
                               self.hidden)
        await self.detect_native()
        await self.sweep()

    async def sweep(self) -> None:
        """Finish or undo interrupted restores; drop holders nothing needs.

        A container that cannot be tidied is logged and listed in `problems`
        (tried again at the next start); the others are tidied all the same.
        """
        self.problems.clear()  # the same list the zfs wrapper reports unreadable values into
        try:
            scan = await self._scan(None, fresh=True)
        except Exception as e:  # noqa: BLE001 - the pool still opens; nothing tidied
            self._set_aside(f"cannot scan {self.root} for interrupted restores: {e}")
            return
        pre = self.hidden + "/"
        cids = set()
        for name in list(scan.items):
            tail = name[len(pre):] if name.startswith(pre) and "@" not in name else ""
            m = _TEMP_RE.match(tail) or _HOLDER_RE.match(tail)
            if m:
                cids.add(m.group(1))
            if _FILES_RE.match(tail):
                await self._drop_files_clone(name)
            if _RECEIVING_RE.match(tail):  # a crash left it, and its mount directory
                got = await self.zfs.get(["mountpoint"], [name], check=False)
                await self._drop_scratch(name, got.get(name, {}).get("mountpoint"))
        for name, d in scan.items.items():  # a container swapped in, not finished
            tail = name[len(self.root) + 1:] if name.startswith(self.root + "/") else ""
            if d.get(PENDING_PROPERTY) and not d.is_snap and _CID_RE.match(tail):
                cids.add(tail)
        for cid in sorted(cids):
            try:
                await self._repair(cid)
                await self._drop_orphans(cid)
                await self._gc(cid)
            except Exception as e:  # noqa: BLE001 - one container must not stop a start-up
                self._set_aside(f"cannot tidy an interrupted restore of container {cid}: {e}")
        self._cache.clear()

    async def _drop_orphans(self, cid: str) -> None:
        """Destroy the holders of a container that does not exist (after _repair: no restore
        is half done), which a native receive cut before it made the container leaves."""
        scan = await self._scan(cid, fresh=True)
        if self._ds(cid) in scan.items:
            return
        for holder in scan.holders(cid):
            log.warning("zfs %s: destroying %s, a cut receive's holder of no container", self.root, holder)
            res = await self._destroy_patiently("-r", holder)
            if res.rc != 0:
                self._set_aside(f"cannot destroy {holder}, a holder of no container: {res.stderr.strip()}")
        self._invalidate(cid)

    def _set_aside(self, problem: str) -> None:
        log.error("zfs %s: %s (tried again at the next start)", self.root, problem)
        self.problems.append(problem)

    async def _figures(self) -> tuple[int, str | None]:
        """The root's `available` bytes and, when mounted, its mountpoint: one `zfs get`,
        read at most once a second (every create asks)."""
        now = time.monotonic()
        cached = self._free
        if cached is None or now - cached[0] > FREE_TTL:
            got = (await self.zfs.get(["available", "mounted", "mountpoint"], [self.root]))[self.root]
            mnt = got.get("mountpoint", "")
            cached = self._free = (now, int(got["available"]),
                                   mnt if got.get("mounted") == "yes" and mnt.startswith("/") else None)
        return cached[1], cached[2]

    async def free_bytes(self) -> int | None:
        return (await self._figures())[0]

    async def _inodes(self) -> tuple[int, int] | None:
        """(free, total) inodes from statvfs of the mounted root; None when unmounted, or
        when the figures are no object limit at all: ZFS makes objects on demand and
        reports free bytes / 512 as its free count (zfs-fuse, OpenZFS alike)."""
        mnt = (await self._figures())[1]
        if mnt is None:
            return None  # no property holds an object count; without a mount, not known
        try:
            st = await asyncio.to_thread(os.statvfs, mnt)
        except OSError:
            return None
        if st.f_files <= 0 or not 0 <= st.f_favail <= st.f_files or \
                st.f_favail >= (st.f_bavail * st.f_frsize) >> 9:
            return None
        return st.f_favail, st.f_files

    async def free_inodes(self) -> int | None:
        """Objects ZFS can still make, when it states a limit of its own (see _inodes)."""
        got = await self._inodes()
        return None if got is None else got[0]

    async def total_inodes(self) -> int | None:
        got = await self._inodes()
        return None if got is None else got[1]

    async def containers(self) -> dict[str, str | None]:
        """Every filesystem directly under the root named like a container, in the one
        `zfs get -d 1` that projects() makes."""
        return await self._labels(None)

    async def projects(self, cids: list[str]) -> dict[str, str | None]:
        """The labels of containers `cids` in one `zfs get -d 1` (sources as _probe reads them)."""
        return await self._labels(cids)

    async def _labels(self, cids: list[str] | None) -> dict[str, str | None]:
        """Containers `cids` (None: every one there) -> project, from one `zfs get -d 1`."""
        res = await self.zfs.zfs("get", "-H", "-r", "-d", "1", "-o", "name,property,source,value",
                                 f"type,{PROJECT_PROPERTY}", self.root, check=False)
        prefix = self.root + "/"
        kinds: dict[str, str] = {}
        labels: dict[str, str] = {}
        for name, prop, source, value in self.zfs.rows(res.stdout, 4):
            if prop == "type":
                kinds[name] = value
            elif source in ("local", "received"):
                labels[name] = value
        if cids is None:
            cids = sorted(n[len(prefix):] for n in kinds if n.startswith(prefix) and _CID_RE.match(n[len(prefix):]))
        return {cid: labels.get(prefix + cid) for cid in cids if kinds.get(prefix + cid) == "filesystem"}

    async def total_bytes(self) -> int | None:
        """The whole ZFS pool's usable size: its top dataset's used + available."""
        top = self.root.split("/", 1)[0]
        got = await self.zfs.get(["available", "used"], [top])
        return int(got[top]["available"]) + int(got[top]["used"])

    async def recover(self, op: str, cid: str, snapshot: str | None, data: dict) -> None:
        """open() repaired restores it could see; repeat for this container (idempotent),
        and drop holders an interrupted restore or delete left with nothing to keep."""
        if op == "restore-paths":
            await self.recover_paths(cid, data)
        elif _CID_RE.match(cid):
            await self._repair(cid)
            await self._gc(cid)

    async def _refuse_busy(self, cid: str) -> None:
        """409 when the mounted container has filesystems mounted inside it (a rollback
        or swap would replace the tree under them) or processes with their cwd, root or
        open files in it."""
        ds = self._ds(cid)
        got = await self.zfs.get(["mounted", "mountpoint"], [ds], check=False)
        props = got.get(ds, {})
        if props.get("mounted") != "yes" or not props.get("mountpoint", "").startswith("/"):
            return

        def check(mountpoint: str) -> None:
            mounts.refuse_mounts(cid, mountpoint)
            inuse.refuse_held(cid, [mountpoint], ContainerBusy, log=log)

        await asyncio.to_thread(check, props["mountpoint"])

    # -- files --------------------------------------------------------------

    async def _mountpoint(self, cid: str) -> str:
        ds = self._ds(cid)
        props = (await self.zfs.get(["mounted", "mountpoint"], [ds], check=False)).get(ds)
        if props is None:
            raise ContainerNotFound(f"container {cid} not found in {self.pool_id}")
        if props.get("mounted") != "yes" or not props.get("mountpoint", "").startswith("/"):
            raise ContainerBusy(f"container {cid}'s dataset is not mounted; its files cannot be read",
                                [{"field": "container", "reason": "dataset not mounted"}])
        return props["mountpoint"]

    async def _snapshot_dir(self, cid: str, snap: SnapshotRef) -> tuple[str, str | None]:
        """The snapshot's full name and its `<mountpoint>/.zfs/snapshot/<name>` directory
        (None where there is none: zfs-fuse, a container whose dataset is not mounted)."""
        await self._require(cid)
        full = f"{self._ds(cid)}@{snap.name}"
        res = await self.zfs.zfs("get", "-H", "-o", "value", "type", full, check=False)
        if res.rc != 0 or res.stdout.strip() != "snapshot":
            raise SnapshotNotFound(f"snapshot {full} is not on disk")
        try:
            ctl = os.path.join(await self._mountpoint(cid), ".zfs", "snapshot", snap.name)
        except ContainerBusy:
            return full, None
        return full, ctl if await asyncio.to_thread(os.path.isdir, ctl) else None

    @contextlib.asynccontextmanager
    async def snapshot_root(self, cid: str, snap: SnapshotRef) -> AsyncIterator[TreeRoot]:
        """`.zfs/snapshot/<name>`.  Where there is none the files routes cannot read the
        snapshot (ContainerBusy): a clone mounted per request was tried, and on zfs-fuse
        unmounting a clone that requests read now and then hangs the whole pool (its
        unmount handler spins on vnodes the kernel still holds)."""
        full, ctl = await self._snapshot_dir(cid, snap)
        if ctl is None:
            raise ContainerBusy(f"the files of {full} cannot be read: this ZFS shows no .zfs/snapshot "
                                "directory (zfs-fuse has none)",
                                [{"field": "snapshot", "reason": "no .zfs/snapshot directory on this ZFS"}])
        async with open_root(ctl, snapshot=full) as root:
            yield root

    @contextlib.asynccontextmanager
    async def export_path(self, cid: str, snap: SnapshotRef) -> AsyncIterator[str]:
        """`.zfs/snapshot/<name>`, or where there is none a read-only clone mounted on a
        scratch directory for the export and destroyed after (a leftover is swept at
        start-up): one clone per export, read once front to back."""
        full, ctl = await self._snapshot_dir(cid, snap)
        if ctl is not None:
            yield ctl
            return
        clone = f"{self.hidden}/{cid}.files-{secrets.token_hex(4)}"
        scratch = await asyncio.to_thread(tempfile.mkdtemp, prefix="snapd-zfs-files-")
        try:
            await self.zfs.zfs("clone", "-o", "readonly=on", "-o", f"mountpoint={scratch}", full, clone)
            yield scratch
        finally:
            await self._drop_files_clone(clone, "-f")
            with contextlib.suppress(OSError):
                os.rmdir(scratch)

    async def changes(self, old: TreeRoot, new: TreeRoot) -> dict[tuple[bytes, ...], bool] | None:
        """Between two snapshots of one container, what `zfs diff` names, where the zfs has
        it; None otherwise, and when a named inode has several links (zfs diff names one
        of them): the diff walks."""
        ds = old.snapshot.partition("@")[0]
        if not ds or ds != new.snapshot.partition("@")[0]:
            return None
        if self._has_diff is None:
            probe = await self.zfs.zfs("diff", check=False)
            self._has_diff = not zfs_diff.unsupported(probe.stderr)
        if not self._has_diff:
            return None
        try:
            mountpoint = await self._mountpoint(ds.rpartition("/")[2])
        except ContainerBusy:
            return None
        res = await self.zfs.zfs("diff", "-H", old.snapshot, new.snapshot, check=False)
        if res.rc != 0:
            log.warning("zfs diff %s %s failed (%s); walking instead", old.snapshot, new.snapshot, res.stderr.strip())
            return None
        got = zfs_diff.candidates(res.stdout, mountpoint)
        linked = await asyncio.to_thread(lambda: any(_linked(r, p) for p in got for r in (old, new)))
        return None if linked else got

    # -- import -----------------------------------------------------------

    accepts_imports = True

    async def receive(self, cid: str, name: str, reader: portable.StreamReader, base: SnapshotRef | None,
                      layout: str, new_container: bool) -> SnapshotFacts:
        """Received into a scratch dataset (a clone of `base` for an incremental, else a new
        one) mounted on a scratch directory, then snapshotted with the stream's metadata and
        made visible by one rename: for a new container the scratch becomes the container
        (its live tree is the snapshot), else a hidden holder beside the container, where a
        restore finds it like the snapshots an earlier restore moved there.  The live tree of
        an existing container is never touched."""
        ds, scan = await self._receivable(cid, name, new_container)
        origin = self._locate(scan, cid, base) if base is not None else None
        scratch = self._scratch(cid)
        where = await asyncio.to_thread(tempfile.mkdtemp, prefix=RECEIVE_DIR_PREFIX)
        h = reader.header
        props = [f"{CREATED_PROPERTY}={float(h.created_at)!r}"]
        if h.alias is not None:
            props.append(f"{ALIAS_PROPERTY}={_encode(h.alias)}")
        if h.expires_at is not None:
            props.append(f"{EXPIRES_PROPERTY}={float(h.expires_at)!r}")
        self._invalidate(cid)
        moved = False
        try:
            mount = ["-o", f"mountpoint={where}"]
            if origin is not None:
                await self.zfs.zfs("clone", *mount, origin, scratch)
            else:
                await self.zfs.zfs("create", *mount, scratch)
            try:
                await asyncio.to_thread(reader.apply, where, incremental=base is not None)
            except OSError as e:
                reason = e.strerror or str(e)
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace(f"cannot receive snapshot {name} of {cid}: no space left in the pool "
                                  f"({reason})") from e
                raise BackendError(f"cannot receive snapshot {name} of {cid}: {reason}") from e
            faults.point("zfs.import.received")
            await self.zfs.zfs("snapshot", *(a for p in props for a in ("-o", p)), f"{scratch}@{name}")
            await self._patiently("unmount", scratch)  # zfs-fuse renames no mounted dataset ("busy")
            if new_container:
                await self._patiently("rename", scratch, ds)
                moved = True
                await self.zfs.zfs("inherit", "mountpoint", ds)
                await self._finish(ds, {"mounted": True})
            else:
                await self._to_holder(scratch, cid, scan)
                moved = True
        finally:
            self._invalidate(cid)
            if not moved:
                await self._drop_scratch(scratch)
            with contextlib.suppress(OSError):
                os.rmdir(where)
        found = (await self._scan(cid, fresh=True)).visible(cid).get(name)
        if found is None:
            raise BackendError(f"snapshot {name} of {cid} vanished after it was received")
        return self._facts(await self._scan(cid), cid, found)

    async def _receivable(self, cid: str, name: str, new_container: bool) -> tuple[str, _Scan]:
        """The container's dataset and a fresh scan, once sure snapshot `name` may be received:
        the container exists (or, for `new_container`, does not) and has no such snapshot."""
        if not _CID_RE.match(cid):
            raise ContainerNotFound(f"container {cid} not found in {self.pool_id}")
        ds = self._ds(cid)
        scan = await self._scan(cid, fresh=True)
        if new_container == (ds in scan.items):
            raise BackendError(f"container {cid} {'exists already' if new_container else 'not found'} "
                               f"in {self.pool_id}")
        if name in scan.visible(cid):
            raise BackendError(f"snapshot {name} of {cid} already exists")
        return ds, scan

    def _scratch(self, cid: str) -> str:
        """A new name to receive a snapshot of `cid` into (open() destroys what a crash left)."""
        return f"{self.hidden}/{cid}.receiving-{secrets.token_hex(4)}"

    async def _to_holder(self, scratch: str, cid: str, scan: _Scan) -> str:
        """Make the unmounted `scratch` the next hidden holder of `cid` (one rename); its name."""
        await self.zfs.zfs("set", "canmount=off", scratch)
        nums = [int(x.rsplit("-", 1)[1]) for x in scan.holders(cid)]
        holder = f"{self.hidden}/{cid}-{max(nums, default=0) + 1}"
        await self._patiently("rename", scratch, holder)
        await self._tidy_holder(holder, rollback=False)
        return holder

    async def _describe(self, snap: str, h: portable.Header, extra: dict[str, str]) -> None:
        """Give a received snapshot the header's metadata (and `extra` properties)."""
        props = {CREATED_PROPERTY: repr(float(h.created_at)), **extra}
        if h.alias is not None:
            props[ALIAS_PROPERTY] = _encode(h.alias)
        if h.expires_at is not None:
            props[EXPIRES_PROPERTY] = repr(float(h.expires_at))
        for key, value in props.items():  # zfs-fuse sets one property per command
            await self.zfs.zfs("set", f"{key}={value}", snap)

    async def _drop_scratch(self, scratch: str, where: str | None = None) -> None:
        """Destroy a receive's scratch dataset and its snapshot, if it is still there; and
        `where`, the empty directory it was mounted on."""
        res = await self._destroy_patiently("-r", scratch, unmount=True)
        if res.rc != 0 and "does not exist" not in res.stderr and "could not find" not in res.stderr:
            self._set_aside(f"cannot destroy the receive scratch {scratch}: {res.stderr.strip()}")
        elif where is not None and os.path.basename(where).startswith(RECEIVE_DIR_PREFIX):
            with contextlib.suppress(OSError):
                os.rmdir(where)

    async def _drop_files_clone(self, clone: str, *force: str) -> None:
        """Destroy a read-only clone made to read a snapshot's files: after an export, with
        `-f` (nothing is open in it then); one a crash left, at start-up, without."""
        res = await self._destroy_patiently(*force, clone)
        if res.rc != 0 and "does not exist" not in res.stderr:
            self._set_aside(f"cannot destroy the read-only clone {clone}: {res.stderr.strip()}")

    async def _destroy_patiently(self, *args: str, unmount: bool = False) -> CmdResult:
        """`zfs destroy ARGS` (the dataset last; unmounted first when asked), as _patiently."""
        if unmount:
            await self._patiently("unmount", args[-1], check=False)
        return await self._patiently("destroy", *args, check=False)

    async def _patiently(self, *args: str, check: bool = True) -> CmdResult:
        """`zfs ARGS`, tried again while zfs-fuse says "busy": it does for a moment after a
        write into a dataset (failed or not) and after the last read of a clone's files."""
        for attempt in range(SCRATCH_TRIES):
            res = await self.zfs.zfs(*args, check=False)
            if res.rc == 0 or "busy" not in res.stderr:
                break
            await asyncio.sleep(0.1 * (attempt + 1))
        if check and res.rc != 0:
            raise error_for(res.argv, res.stderr or res.stdout)
        return res

    @contextlib.asynccontextmanager
    async def live_root(self, cid: str) -> AsyncIterator[TreeRoot]:
        await self._require(cid)
        async with open_root(await self._mountpoint(cid)) as root:
            yield root

    async def refuse_busy(self, cid: str) -> None:
        await self._refuse_busy(cid)

    # -- containers ---------------------------------------------------------

    async def container_exists(self, cid: str) -> bool:
        return await self._probe(cid) is not None

    async def _probe(self, cid: str) -> _Probe | None:
        """Existence and project of `cid` in ONE `zfs get`, reused for PROBE_TTL.

        The service asks container_exists() then get_project() on every
        request; both are answered by one process, and a burst of requests
        for one container by one process a second.  Only positive answers
        are kept (a container made a moment ago is found at once); a stale
        positive answer is harmless: the operation itself then fails with
        'dataset does not exist', which is a ContainerNotFound.
        """
        if not _CID_RE.match(cid):
            return None
        now = time.monotonic()
        hit = self._probes.get(cid)
        if hit is not None and now - hit.at < PROBE_TTL:
            return hit
        self._probes.pop(cid, None)
        ds = self._ds(cid)
        res = await self.zfs.zfs("get", "-H", "-o", "name,property,source,value",
                                 f"type,{PROJECT_PROPERTY}", ds, check=False)
        if res.rc != 0:
            return None
        rows = self.zfs.rows(res.stdout, 4, lambda r: r[0] == ds)
        props = {p: (src, v) for _, p, src, v in rows}
        if props.get("type", ("", ""))[1] != "filesystem":
            return None
        source, value = props.get(PROJECT_PROPERTY, ("-", "-"))
        probe = _Probe(value if source in ("local", "received") else None, now)
        self._probes[cid] = probe
        return probe

    async def _require(self, cid: str) -> None:
        if not await self.container_exists(cid):
            raise ContainerNotFound(f"container {cid} not found in {self.pool_id}")

    async def get_project(self, cid: str) -> str | None:
        probe = await self._probe(cid)
        if probe is None:
            raise ContainerNotFound(f"container {cid} not found in {self.pool_id}")
        return probe.project

    async def set_project(self, cid: str, project: str | None) -> None:
        await self._require(cid)
        self._probes.pop(cid, None)
        if project is None:
            await self.zfs.zfs("inherit", PROJECT_PROPERTY, self._ds(cid))
        else:
            await self.zfs.zfs("set", f"{PROJECT_PROPERTY}={project}", self._ds(cid))

    async def name_marks(self, cid: str | None = None) -> dict[str, str]:
        """The local NAME_MARK_PROPERTY of `<root>/<id>` (one `zfs get`).  A restore's
        clone takes the container's local properties, so the mark follows the
        container; the holder keeps a copy nobody reads."""
        if cid is not None and not _CID_RE.match(cid):
            return {}
        top = self._ds(cid) if cid is not None else self.root
        got = await self.zfs.get([NAME_MARK_PROPERTY], [top], depth=None if cid else 1,
                                 sources="local", check=False)
        pre = self.root + "/"
        return {ds[len(pre):]: props[NAME_MARK_PROPERTY] for ds, props in got.items()
                if ds.startswith(pre) and _CID_RE.match(ds[len(pre):])
                and props.get(NAME_MARK_PROPERTY, "-") not in ("", "-")}

    async def set_name_mark(self, cid: str, name: str) -> None:
        await self._require(cid)
        await self.zfs.zfs("set", f"{NAME_MARK_PROPERTY}={name}", self._ds(cid))

    # -- snapshots ----------------------------------------------------------

    async def create(self, cid: str, name: str, alias: str | None,
                     expires_at: float | None, created_at: float | None = None, *,
                     policy: str | None = None) -> SnapshotFacts:
        """One `zfs snapshot -o ...`: the snapshot and its mirrored metadata at once.

        `created_at` is the time the caller records (its clock); without it,
        now.  The cached scans are extended rather than dropped: a new
        snapshot holds no block of its own yet (used 0) and changes no other
        snapshot's `used`, so the size refresh that follows a create needs
        no `zfs get` while the cache is fresh.
        """
        if not _CID_RE.match(cid):
            raise ContainerNotFound(f"container {cid} not found in {self.pool_id}")
        now = time.time() if created_at is None else float(created_at)
        ref = f"{self._ds(cid)}@{name}"
        args = ["snapshot", "-o", f"{CREATED_PROPERTY}={now!r}"]
        if alias is not None:
            args += ["-o", f"{ALIAS_PROPERTY}={_encode(alias)}"]
        if expires_at is not None:
            args += ["-o", f"{EXPIRES_PROPERTY}={float(expires_at)!r}"]
        if policy is not None:
            args += ["-o", f"{POLICY_PROPERTY}={_encode(policy)}"]
        try:
            await self.zfs.zfs(*args, ref)
        except SnapshotNotFound as e:  # "dataset does not exist" names the container
            self._probes.pop(cid, None)
            self._invalidate(cid)
            raise ContainerNotFound(f"container {cid} not found: {e}") from None
        except BaseException:
            self._invalidate(cid)
            raise
        self._add_to_cache(cid, _Ds(ref, {
            "type": "snapshot", "creation": str(int(now)), "used": "0", "origin": "-",
            "defer_destroy": "off", "mounted": "-", CREATED_PROPERTY: repr(now),
            ALIAS_PROPERTY: "-" if alias is None else _encode(alias),
            EXPIRES_PROPERTY: "-" if expires_at is None else repr(float(expires_at)),
            PENDING_PROPERTY: "-", POLICY_PROPERTY: "-" if policy is None else _encode(policy),
            HOLD_PROPERTY: "-"}))
        return SnapshotFacts(name=name, created_at=now, size=0, ref=ref, alias=alias,
                             expires_at=expires_at, mirrored=True, policy=policy)

    async def set_alias(self, cid: str, snap: SnapshotRef, alias: str | None) -> None:
        scan = await self._scan(cid, fresh=True)
        ref = self._locate(scan, cid, snap)
        self._invalidate(cid)
        if alias is None:
            await self.zfs.zfs("inherit", ALIAS_PROPERTY, ref)
        else:
            await self.zfs.zfs("set", f"{ALIAS_PROPERTY}={_encode(alias)}",
                               ref)

    async def hold(self, cid: str, snap: SnapshotRef, reason: str, since: float) -> None:
        """`zfs hold` with HOLD_TAG (a second hold with the tag is no error), then the
        reason and time in HOLD_PROPERTY, which a rebuilt store reads back."""
        ref = await self._hold_tag(cid, snap, "hold", "tag already exists")
        value = json.dumps({"reason": reason, "since": since}, ensure_ascii=True, sort_keys=True)
        await self.zfs.zfs("set", f"{HOLD_PROPERTY}={value}", ref)

    async def release(self, cid: str, snap: SnapshotRef) -> None:
        """`zfs release` of HOLD_TAG (none there is no error), then HOLD_PROPERTY goes."""
        ref = await self._hold_tag(cid, snap, "release", "no such tag")
        await self.zfs.zfs("inherit", HOLD_PROPERTY, ref)

    async def _hold_tag(self, cid: str, snap: SnapshotRef, command: str, already: str) -> str:
        """`zfs hold|release HOLD_TAG` on the snapshot, where it is now; zfs's answer that it
        is so already (`already`) is no error.  The snapshot's full name."""
        ref = self._locate(await self._scan(cid, fresh=True), cid, snap)
        self._invalidate(cid)
        res = await self.zfs.zfs(command, HOLD_TAG, ref, check=False)
        if res.rc != 0 and already not in (res.stderr + res.stdout).lower():
            raise error_for(res.argv, res.stderr or res.stdout)
        return ref

    async def list(self, cid: str | None = None) -> dict[str, list[SnapshotFacts]]:
        scan = await self._scan(cid)
        cids = [cid] if cid is not None else scan.cids()
        if cid is not None and self._ds(cid) not in scan.items:
            raise ContainerNotFound(f"container {cid} not found in {self.pool_id}")
        return {c: [self._facts(scan, c, s) for s in scan.visible(c).values()] for c in cids}

    async def sizes(self, cid: str, names: list[str]) -> dict[str, int]:
        """`used` of these snapshots (one `zfs get -r` of the container, cached briefly)."""
        listed = await self.list(cid)
        return {f.name: f.size or 0 for f in listed.get(cid, []) if f.name in names}

    def _facts(self, scan: _Scan, cid: str, s: _Ds) -> SnapshotFacts:
        p = s.props
        mirrored = any(p.get(k, "-") != "-" for k in (CREATED_PROPERTY, ALIAS_PROPERTY,
                                                       EXPIRES_PROPERTY))
        created = _float(p.get(CREATED_PROPERTY)) or _float(p.get("creation")) or 0.0
        hold = _hold(p.get(HOLD_PROPERTY))
        return SnapshotFacts(
            name=s.name.split("@", 1)[1], created_at=created, size=int(p.get("used", 0)),
            ref=s.name, alias=_decode(p.get(ALIAS_PROPERTY)),
            expires_at=_float(p.get(EXPIRES_PROPERTY)), mirrored=mirrored,
            policy=_decode(p.get(POLICY_PROPERTY)), hold_reason=hold[0] if hold else None,
            hold_since=hold[1] if hold else None)

    # -- restore ------------------------------------------------------------

    async def restore(self, cid: str, snap: SnapshotRef,
                      others: list[SnapshotRef]) -> RefUpdates:
        scan = await self._scan(cid, fresh=True)
        ds = self._ds(cid)
        if ds not in scan.items:
            raise ContainerNotFound(f"container {cid} not found in {self.pool_id}")
        if f"{self.hidden}/{cid}.restoring" in scan.items or scan.items[ds].get(PENDING_PROPERTY):
            await self._repair(cid)
            scan = await self._scan(cid, fresh=True)
        target = self._locate(scan, cid, snap)
        await self._refuse_busy(cid)
        passed = {r.name: r.ref for r in [snap, *others]}
        before = {n: s.name for n, s in scan.visible(cid).items()}
        self._invalidate(cid)
        own = scan.snaps(ds)
        if own and own[-1].name == target:
            await self.zfs.zfs("rollback", target)
            after = before
        else:
            self._probes.pop(cid, None)  # the dataset is replaced
            await self._restore_by_clone(scan, cid, target)
            await self._gc(cid)
            after = {n: s.name for n, s in (await self._scan(cid, fresh=True)).visible(cid).items()}
        return {n: r for n, r in after.items() if passed.get(n, before.get(n)) != r}

    async def _restore_by_clone(self, scan: _Scan, cid: str, target: str) -> None:
        ds = self._ds(cid)
        temp = f"{self.hidden}/{cid}.restoring"
        local = await self._local_props(ds)
        pending = {"canmount": local.get("canmount"), "mountpoint": local.get("mountpoint"),
                   "mounted": scan.items[ds].props.get("mounted") == "yes"}
        opts = ["-o", "canmount=noauto", "-o", f"{PENDING_PROPERTY}={json.dumps(pending)}"]
        for k, v in local.items():
            if k not in _NO_COPY:
                opts += ["-o", f"{k}={v}"]
        try:
            await self.zfs.zfs("clone", *opts, target, temp)
            await self.zfs.zfs("promote", temp)
            faults.point("zfs.restore.after-clone")
            await self._refuse_busy(cid)  # again, just before the swap
            if pending["mounted"]:
                await self.zfs.zfs("unmount", ds)
            await self.zfs.zfs("set", "canmount=off", ds)
        except BackendError:
            await self._repair(cid)
            raise
        nums = [int(h.rsplit("-", 1)[1]) for h in scan.holders(cid)]
        holder = f"{self.hidden}/{cid}-{max(nums, default=0) + 1}"
        try:
            await self.zfs.zfs("rename", ds, holder)
        except BackendError:
            await self._repair(cid)
            raise
        faults.point("zfs.restore.after-rename-old")
        try:
            await self.zfs.zfs("rename", temp, ds)
        except BackendError:
            await self._repair(cid)
            raise
        faults.point("zfs.restore.after-rename-new")
        await self._finish(ds, pending)
        await self._tidy_holder(holder, rollback=True)

    async def _local_props(self, ds: str) -> dict[str, str]:
        res = await self.zfs.zfs("get", "-H", "-s", "local", "-o", "name,property,value", "all", ds)
        return {k: v for _, k, v in self.zfs.rows(res.stdout, 3, lambda r: r[0] == ds)}

    async def _finish(self, ds: str, pending: dict) -> None:
        """Give the restored dataset the container's mount settings back."""
        if pending.get("mountpoint"):
            await self.zfs.zfs("set", f"mountpoint={pending['mountpoint']}", ds)
        await self.zfs.zfs("set", f"canmount={pending.get('canmount') or 'on'}", ds)
        await self.zfs.zfs("inherit", PENDING_PROPERTY, ds)
        if pending.get("mounted") or (pending.get("canmount") or "on") == "on":
            got = await self.zfs.get(["mounted", "mountpoint"], [ds])
            if got[ds]["mounted"] != "yes" and got[ds]["mountpoint"] not in ("none", "legacy"):
                await self.zfs.zfs("mount", ds)

    async def _tidy_holder(self, holder: str, rollback: bool) -> None:
        """A holder keeps snapshots only: no mount, no label, no stray data."""
        local = await self._local_props(holder)
        if local.get("canmount") != "off":
            await self.zfs.zfs("set", "canmount=off", holder)
        for prop in ("mountpoint", PROJECT_PROPERTY):
            if prop in local:
                await self.zfs.zfs("inherit", prop, holder)
        if rollback:
            snaps = (await self._scan_names([holder]))
            if snaps:
                await self.zfs.zfs("rollback", snaps[-1], check=False)

    async def _scan_names(self, datasets: list[str]) -> list[str]:
        got = await self.zfs.get(["type"], datasets, depth=1, check=False)
        return [n for n in got if "@" in n]

    async def _repair(self, cid: str) -> None:
        """Finish or undo an interrupted restore of `cid` (idempotent)."""
        ds = self._ds(cid)
        temp = f"{self.hidden}/{cid}.restoring"
        scan = await self._scan(cid, fresh=True)
        self._invalidate(cid)
        self._probes.pop(cid, None)
        cur = scan.items.get(ds)
        if cur is not None and cur.get(PENDING_PROPERTY) and temp not in scan.items:
            pending = json.loads(cur.get(PENDING_PROPERTY) or "{}")  # swapped, not finished
            await self._finish(ds, pending)
        if temp in scan.items:
            pending = json.loads(scan.items[temp].get(PENDING_PROPERTY) or "{}")
            if cur is None:  # container renamed away: complete the swap
                await self.zfs.zfs("rename", temp, ds)
                await self._finish(ds, pending)
            else:  # undo: give the snapshots back, restore mount settings
                if (cur.origin or "").startswith(temp + "@"):
                    await self.zfs.zfs("promote", ds)
                await self.zfs.zfs("destroy", temp)
                local = await self._local_props(ds)
                if local.get("canmount", "on") != (pending.get("canmount") or "on"):
                    await self.zfs.zfs("set", f"canmount={pending.get('canmount') or 'on'}", ds)
                if pending.get("mounted"):
                    got = await self.zfs.get(["mounted"], [ds])
                    if got[ds]["mounted"] != "yes":
                        await self.zfs.zfs("mount", ds)
        for holder in scan.holders(cid):
            local = await self._local_props(holder)
            if local.get("canmount") != "off" or "mountpoint" in local:
                await self._tidy_holder(holder, rollback=False)

    # -- delete -------------------------------------------------------------

    async def delete(self, cid: str, snaps: list[SnapshotRef]) -> dict[str, BackendError | None]:
        scan = await self._scan(cid, fresh=True)
        result: dict[str, BackendError | None] = {}
        by_ds: dict[str, list[str]] = {}
        visible = scan.visible(cid)
        for s in snaps:
            found = visible.get(s.name)
            if found is None:
                result[s.name] = None  # already gone
            else:
                ds, name = found.name.split("@", 1)
                by_ds.setdefault(ds, []).append(name)
        self._invalidate(cid)
        for ds, names in by_ds.items():
            result.update(await self._destroy(ds, names))
        if scan.holders(cid):  # a delete makes no holder; it may empty one
            await self._gc(cid)
        return result

    async def _destroy(self, ds: str, names: list[str]) -> dict[str, BackendError | None]:
        """`zfs destroy -d`: immediate, or deferred while clones depend on it."""
        out: dict[str, BackendError | None] = {}
        if self.multi_destroy and len(names) > 1:
            for chunk in _chunks(names, MAX_DESTROY_ARG - len(ds)):
                res = await self.zfs.zfs("destroy", "-d", f"{ds}@{','.join(chunk)}", check=False)
                if res.rc == 0:
                    out.update(dict.fromkeys(chunk))
                else:  # find out which ones failed, one by one
                    out.update(await self._destroy_each(ds, chunk))
            return out
        return await self._destroy_each(ds, names)

    async def _destroy_each(self, ds: str, names: list[str]) -> dict[str, BackendError | None]:
        sem = asyncio.Semaphore(8)

        async def one(name: str) -> tuple[str, BackendError | None]:
            async with sem:
                try:
                    await self.zfs.zfs("destroy", "-d", f"{ds}@{name}")
                except SnapshotNotFound:
                    pass
                except BackendError as e:
                    return name, e
                return name, None

        return dict(await asyncio.gather(*(one(n) for n in names)))

    async def _gc(self, cid: str) -> None:
        """Destroy holders with no visible snapshot, promoting a dependent first."""
        for _ in range(64):
            scan = await self._scan(cid, fresh=True)
            for holder in scan.holders(cid):
                snaps = scan.snaps(holder)
                if any(not s.deferred for s in snaps):
                    continue
                if snaps:
                    clones = scan.clones_of(snaps[-1].name)
                    if not clones:
                        continue
                    try:
                        await self.zfs.zfs("promote", clones[0])
                    except BackendError as e:
                        log.warning("zfs: cannot promote %s to free %s: %s", clones[0], holder, e)
                        continue
                await self.zfs.zfs("destroy", holder)
                break
            else:
                break
        self._invalidate(cid)

    # -- scanning -----------------------------------------------------------

    def _locate(self, scan: _Scan, cid: str, snap: SnapshotRef) -> str:
        """Full name of a visible snapshot: the ref if still right, else by name."""
        visible = scan.visible(cid)
        found = visible.get(snap.name)
        if found is None:
            raise SnapshotNotFound(f"snapshot {snap.name} of container {cid} not found")
        return found.name

    def _invalidate(self, cid: str | None) -> None:
        self._cache.pop(cid, None)
        self._cache.pop(None, None)

    def _add_to_cache(self, cid: str, snap: _Ds) -> None:
        """Record a snapshot just taken in the cached scans that cover `cid`."""
        for key in (cid, None):
            scan = self._cache.get(key)
            if scan is None:
                continue
            if self._ds(cid) in scan.items and snap.name not in scan.items:
                scan.items[snap.name] = snap
            else:
                self._cache.pop(key, None)

    async def _scan(self, cid: str | None, fresh: bool = False) -> _Scan:
        """All datasets/snapshots of `cid` (or the pool) + holders, in ONE `zfs get`."""
        now = time.monotonic()
        if not fresh:
            for key in (cid, None):
                hit = self._cache.get(key)
                if hit is not None and now - hit.at < SIZE_TTL:
                    return hit
        if cid is not None and not _CID_RE.match(cid):
            raise ContainerNotFound(f"container {cid} not found in {self.pool_id}")
        top = self.root if cid is None else self._ds(cid)
        got = await self.zfs.get(_SCAN_PROPS, [top, self.hidden], depth=2, check=False)
        if cid is None and self.root not in got:
            raise PoolError(f"ZFS pool root '{self.root}' does not exist")
        scan = _Scan(self.root, {n: _Ds(n, p) for n, p in got.items()}, now)
        self._cache[cid] = scan
        return scan


def _chunks(names: list[str], limit: int) -> list[list[str]]:
    out: list[list[str]] = [[]]
    size = 0
    for n in names:
        if out[-1] and size + len(n) + 1 > limit:
            out.append([])
            size = 0
        out[-1].append(n)
        size += len(n) + 1
    return out


def _linked(root: TreeRoot, parts: tuple[bytes, ...]) -> bool:
    """The entry at `parts` is not a directory and has other links."""
    try:
        fd = beneath.open_path(root.fd, parts)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1
