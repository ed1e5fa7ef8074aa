"""Per-snapshot metadata of directory pools (btrfs, overlay): a small JSON file beside
the snapshot, so a store rebuilt from the pool knows which policy took a snapshot
and that it is held.

    <root>/.snapshots/<id>/<name>/         the snapshot
    <root>/.snapshots/<id>/.<name>.json    its metadata (only when there is some)

The per-container directory is out of the container's reach and already carries the
container's name mark (fsops.write_name_mark).  A snapshot name never starts with a
dot, so no metadata file is ever taken for a snapshot.  The file is written to a
temporary name, fsynced and renamed over the old one: a reader sees the old or the
new content, never part of one.  A btrfs snapshot is a read-only subvolume, so the
metadata cannot live on the snapshot itself.

The content is ASCII JSON: `{"policy": str | null, "hold": {"reason": str, "since":
float} | null}`.  A file that cannot be read (written by hand, truncated by a disk
fault) is ignored with a warning: the snapshot is then adopted as a manual one,
not held, as it would be without the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .base import BackendError, SnapshotFacts, SnapshotNotFound, SnapshotRef
from .fsops import fsync_dir

log = logging.getLogger(__name__)

SUFFIX = ".json"
TEMP_SUFFIX = ".json.tmp"
MAX_BYTES = 64 * 1024
_CID = re.compile(r"[0-9a-f]{24}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Meta:
    """What a snapshot's metadata file records."""

    policy: str | None = None
    hold_reason: str | None = None
    hold_since: float | None = None

    @property
    def empty(self) -> bool:
        return self.policy is None and self.hold_reason is None


def path_of(snapdir: Path, cid: str, name: str) -> Path:
    """The metadata file of snapshot `name` of `cid` (both checked: never a path elsewhere)."""
    if not _CID.fullmatch(cid) or not _NAME.fullmatch(name):
        raise SnapshotNotFound(f"no snapshot {name!r} of container {cid!r}")
    return snapdir / cid / f".{name}{SUFFIX}"


def _encode(meta: Meta) -> bytes:
    hold = None if meta.hold_reason is None else {"reason": meta.hold_reason, "since": meta.hold_since}
    return json.dumps({"policy": meta.policy, "hold": hold}, ensure_ascii=True, sort_keys=True).encode()


def _decode(raw: bytes) -> Meta:
    """The metadata in `raw`; ValueError when it is not what this module writes."""
    data = json.loads(raw.decode("ascii"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    policy, hold = data.get("policy"), data.get("hold")
    if policy is not None and not isinstance(policy, str):
        raise ValueError("policy is not a string")
    if hold is None:
        return Meta(policy)
    reason, since = (hold.get("reason"), hold.get("since")) if isinstance(hold, dict) else (None, None)
    if not isinstance(reason, str) or isinstance(since, bool) or not isinstance(since, (int, float)):
        raise ValueError("hold is not {reason: string, since: number}")
    return Meta(policy, reason, float(since))


def read(snapdir: Path, cid: str, name: str) -> Meta:
    """The snapshot's metadata (empty when there is no readable file)."""
    path = path_of(snapdir, cid, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return Meta()
    except OSError as exc:
        log.warning("snapshot metadata %s unreadable, ignored: %s", path, exc.strerror)
        return Meta()
    try:
        raw = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        if len(raw) > MAX_BYTES:
            raise ValueError(f"over {MAX_BYTES} bytes")
        return _decode(raw)
    except ValueError as exc:
        log.warning("snapshot metadata %s unreadable, ignored: %s", path, exc)
        return Meta()


def read_all(snapdir: Path, cid: str) -> dict[str, Meta]:
    """Every snapshot metadata file of container `cid`, by snapshot name."""
    try:
        entries = [e.name for e in os.scandir(snapdir / cid)
                   if e.name.startswith(".") and e.name.endswith(SUFFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for entry in entries:
        name = entry[1:-len(SUFFIX)]
        if not _NAME.fullmatch(name):
            continue
        meta = read(snapdir, cid, name)
        if not meta.empty:
            out[name] = meta
    return out


def write(snapdir: Path, cid: str, name: str, meta: Meta) -> None:
    """Record `meta` for the snapshot atomically and durably (empty: remove the file)."""
    path = path_of(snapdir, cid, name)
    if meta.empty:
        remove(snapdir, cid, name)
        if path.parent.is_dir():
            fsync_dir(path.parent)  # a release is not undone by a power loss
        return
    path.parent.mkdir(mode=0o700, exist_ok=True)
    temp = path.with_name(f".{name}{TEMP_SUFFIX}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, _encode(meta))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_dir(path.parent)


def remove(snapdir: Path, cid: str, name: str) -> None:
    """Remove the snapshot's metadata file (and a temporary one a crash left)."""
    path = path_of(snapdir, cid, name)
    for path in (path, path.with_name(f".{name}{TEMP_SUFFIX}")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def sweep(snapdir: Path, is_cid: Callable[[str], bool], exists: Callable[[str, str], bool]) -> int:
    """Remove metadata files whose snapshot is gone (a crash between a snapshot's
    removal and its file's, or a create that never finished) and temporary files;
    how many.  For open(), before any operation runs."""
    removed = 0
    try:
        cids = [e.name for e in os.scandir(snapdir) if is_cid(e.name) and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    for cid in cids:
        for entry in os.scandir(snapdir / cid):
            if not entry.name.startswith("."):
                continue
            if entry.name.endswith(TEMP_SUFFIX):
                stale = True
            elif entry.name.endswith(SUFFIX):
                stale = not exists(cid, entry.name[1:-len(SUFFIX)])
            else:
                continue
            if stale:
                os.unlink(entry.path)
                removed += 1
    return removed


class SidecarMeta:
    """Snapshot metadata files for a directory backend (mixed into btrfs and overlay):
    the policy written at create, holds, and reading both back for list()."""

    meta_dir: Path
    """The pool's `.snapshots` directory."""

    def _snapshot_there(self, cid: str, name: str) -> bool:
        """Whether snapshot `name` of `cid` is on disk (the backend validates both)."""
        raise NotImplementedError

    def _create_meta(self, cid: str, name: str, policy: str | None) -> Meta:
        """Before a create makes the snapshot: record its policy (nothing when None)."""
        meta = Meta(policy)
        if not meta.empty:
            write(self.meta_dir, cid, name, meta)
        return meta

    def _attach_meta(self, listed: dict[str, list[SnapshotFacts]]) -> dict[str, list[SnapshotFacts]]:
        """list()'s facts with the policy and hold each snapshot's file records."""
        out = {}
        for cid, facts in listed.items():
            metas = read_all(self.meta_dir, cid)
            out[cid] = [f if (m := metas.get(f.name)) is None else
                        replace(f, policy=m.policy, hold_reason=m.hold_reason, hold_since=m.hold_since)
                        for f in facts]
        return out

    def _forget_meta(self, cid: str, results: dict[str, BackendError | None]) -> None:
        """After a delete: drop the files of the snapshots gone."""
        for name, error in results.items():
            if error is None:
                remove(self.meta_dir, cid, name)

    def _sweep_meta(self, is_cid: Callable[[str], bool]) -> None:
        removed = sweep(self.meta_dir, is_cid, self._snapshot_there)
        if removed:
            log.info("removed %d snapshot metadata files whose snapshot is gone", removed)

    async def hold(self, cid: str, snap: SnapshotRef, reason: str, since: float) -> None:
        await asyncio.to_thread(self._set_hold, cid, snap.name, reason, since)

    async def release(self, cid: str, snap: SnapshotRef) -> None:
        await asyncio.to_thread(self._set_hold, cid, snap.name, None, None)

    def _set_hold(self, cid: str, name: str, reason: str | None, since: float | None) -> None:
        if not self._snapshot_there(cid, name):
            raise SnapshotNotFound(f"snapshot {name} of container {cid} not found")
        meta = read(self.meta_dir, cid, name)
        write(self.meta_dir, cid, name, replace(meta, hold_reason=reason, hold_since=since))
