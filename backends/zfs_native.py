"""Native ZFS streams: `zfs send [-i base] <snapshot>` on the sender, `zfs receive` on the receiver.

Both run through ZfsRunner (backends/zfs_cmd.py: argv lists, no shell).  The sender's
stdout goes out in CHUNK-byte pieces.  The receiver makes nothing visible before the
envelope's trailer is verified:

- The stream's BEGIN record is read and checked before zfs runs: the ZFS send magic,
  the snapshot name `name`, and for an incremental that it starts from the guid of the
  base snapshot held here (for a full stream: from nothing).  Anything else is a
  StreamError: nothing was written.
- A full stream is received into a scratch dataset `<root>/.snapd-hidden/<id>.receiving-<hex>`
  (its mountpoint inherited from the hidden parent: none, so it is never mounted).  Once
  received and verified, the snapshot gets its metadata, the scratch becomes a hidden
  holder (`<id>-<n>`, canmount=off) and, for a new container, the container's dataset
  is made as a clone of the received snapshot: the one step that makes it visible.
- An incremental is received onto the holder that holds the base, which must be that
  holder's newest snapshot (zfs receive without -F: no rollback ever destroys a newer
  snapshot).  zfs makes the snapshot when it reads the stream's END record, the stream's
  last bytes: those are held back until NativeSource.finish() verified the trailer, and a
  bad trailer kills the receive before it saw them (zfs then drops what it received).

Why holders: the container's own dataset is mounted, and a mounted dataset counts as
modified once anything read it (atime), after which zfs refuses an incremental onto it
(checked on zfs-fuse).  Holders are never mounted, so the chain stays receivable.  The
snapshots a native incremental may start from (native_bases) are those received natively
(NATIVE_PROPERTY, the sender's guid kept) that are their holder's newest.

A crash leaves at most a scratch dataset (open() destroys `.receiving-` datasets), a
holder whose container was not made yet (open() destroys holders without a container),
or a visible snapshot without its metadata, which the service's create journal rolls
forward.

Resumable receive (`zfs receive -s`, `receive_resume_token`) and bookmarks (`zfs
bookmark`) are detected at open() (`resumable`, `bookmarks`); zfs-fuse has neither, so a
cut transfer starts the snapshot over from the newest one both sides hold, and the base
is kept as a snapshot (held).  Using them where they exist is not implemented yet.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

from backends import faults

from .base import BackendError, ContainerNotFound, NoSpace, SnapshotFacts, SnapshotRef
from .portable import NativeSource, StreamError

if TYPE_CHECKING:
    from .zfs import ZfsBackend, _Scan

CHUNK = 1 << 20
"""Bytes of `zfs send` output per chunk (one N frame)."""
RECEIVE_CHUNK = 1 << 20
"""Bytes read from the envelope per write to `zfs receive`."""
NATIVE_PROPERTY = "container-snapd:native"
"""On a snapshot received from a native stream: "zfs" (its guid is the sender's)."""
BACKUP_MAGIC = 0x2F5BACBAC
BEGIN_SIZE = 312
"""A dmu_replay_record: the BEGIN record opens every send stream."""
_BEGIN = struct.Struct("<II QQQ II QQ 256s")  # type, payload; magic, version, time, objset type, flags, guids, name


def begin_record(head: bytes) -> tuple[int, int, str]:
    """(toguid, fromguid, toname) of a send stream's BEGIN record (`head`: its first
    BEGIN_SIZE bytes at least); StreamError when it is not one."""
    if len(head) < BEGIN_SIZE:
        raise StreamError("the zfs stream ends before its BEGIN record")
    for order in "<>":
        rtype, _, magic, _, _, _, _, toguid, fromguid, toname = struct.unpack_from(order + _BEGIN.format[1:], head)
        if magic == BACKUP_MAGIC:
            if rtype != 0:
                raise StreamError("the zfs stream does not open with a BEGIN record")
            return toguid, fromguid, toname.split(b"\0", 1)[0].decode("utf-8", "replace")
    raise StreamError("the native data is not a zfs send stream")


class ZfsNative:
    """send_native / receive_native / native_bases of ZfsBackend (mixed in)."""

    native_stream = "zfs"
    resumable = False
    """`zfs receive -s` exists here (OpenZFS >= 0.7); detected by open()."""
    bookmarks = False
    """`zfs bookmark` exists here; detected by open()."""

    async def detect_native(self: ZfsBackend) -> None:
        """Whether this ZFS has resumable receive and bookmarks (both absent on zfs-fuse)."""
        usage = await self.zfs.zfs("receive", check=False)
        self.resumable = "receive -A" in usage.stderr  # aborting a resumable receive: OpenZFS's usage says it
        book = await self.zfs.zfs("bookmark", check=False)
        self.bookmarks = "unrecognized command" not in book.stderr

    async def send_native(self: ZfsBackend, cid: str, snap: SnapshotRef, base: SnapshotRef | None,
                          push: Callable[[bytes], Awaitable[None]]) -> int:
        scan = await self._scan(cid, fresh=True)
        args = ["send"]
        if base is not None:
            args += ["-i", self._locate(scan, cid, base)]
        args.append(self._locate(scan, cid, snap))
        return await self.zfs.send(args, push, CHUNK)

    async def native_bases(self: ZfsBackend, cid: str) -> list[str]:
        try:
            scan = await self._scan(cid, fresh=True)
        except ContainerNotFound:
            return []
        return [name for name, s in scan.visible(cid).items() if _native_base(scan, cid, s.name)]

    async def receive_native(self: ZfsBackend, cid: str, name: str, source: NativeSource,
                             base: SnapshotRef | None, new_container: bool) -> SnapshotFacts:
        ds, scan = await self._receivable(cid, name, new_container)
        from_guid = 0
        if base is None:
            target = self._scratch(cid)
        else:
            origin = self._locate(scan, cid, base)
            if not _native_base(scan, cid, origin):
                raise StreamError(f"snapshot {base.name} of {cid} is not the newest snapshot received natively "
                                  "in its dataset here: no zfs incremental can start from it")
            target = origin.partition("@")[0]
            from_guid = int((await self.zfs.get(["guid"], [origin]))[origin]["guid"])
        head = await asyncio.to_thread(_head, source)
        _, fromguid, toname = begin_record(head)
        if toname.rpartition("@")[2] != name:
            raise StreamError(f"the zfs stream holds snapshot {toname.rpartition('@')[2][:200]!r}, not {name!r}")
        if fromguid != from_guid:
            raise StreamError("the header says a full stream, the zfs stream is an incremental" if not from_guid
                              else "the zfs stream does not start from the base snapshot held here")
        self._invalidate(cid)
        moved = False
        try:
            verified: list[bool] = []
            res = await asyncio.to_thread(self.zfs.feed, ["receive", target], _held_back(head, source, verified))
            if res.rc != 0:
                if not verified:
                    await asyncio.to_thread(_drain, source)  # the stream's own verdict first
                text = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit status {res.rc}"
                if "space" in text.lower() or "quota" in text.lower():
                    raise NoSpace(f"zfs receive of {name}: {text}")
                raise StreamError(f"zfs receive of {name} failed: {text}")
            faults.point("zfs.native.received")
            await self._describe(f"{target}@{name}", source.reader.header, {NATIVE_PROPERTY: "zfs"})
            if base is None:
                holder = await self._to_holder(target, cid, scan)
                moved = True
                faults.point("zfs.native.held")
                if new_container:  # the one step that makes it visible
                    await self.zfs.zfs("clone", f"{holder}@{name}", ds)
                    await self._finish(ds, {"mounted": True})
        finally:
            self._invalidate(cid)
            if base is None and not moved:
                await self._drop_scratch(target)
        found = (await self._scan(cid, fresh=True)).visible(cid).get(name)
        if found is None:
            raise BackendError(f"snapshot {name} of {cid} vanished after it was received")
        return self._facts(await self._scan(cid), cid, found)


def _native_base(scan: _Scan, cid: str, snap: str) -> bool:
    """Whether `snap` was received natively and is the newest snapshot (deferred ones
    included) of one of `cid`'s hidden holders: where a zfs incremental is received."""
    ds = snap.partition("@")[0]
    own = scan.snaps(ds) if ds in scan.holders(cid) else []
    return bool(own) and own[-1].name == snap and own[-1].get(NATIVE_PROPERTY) == "zfs"


def _head(source: NativeSource) -> bytes:
    head = b""
    while len(head) < BEGIN_SIZE:
        data = source.read(BEGIN_SIZE - len(head))
        if not data:
            break
        head += data
    return head


def _held_back(head: bytes, source: NativeSource, verified: list[bool]) -> Iterator[bytes]:
    """`head`, then the rest of `source`, the last piece only once the trailer verified
    (`verified` then holds True): zfs commits a received snapshot when it reads the
    stream's last record."""
    pending = head
    while True:
        more = source.read(RECEIVE_CHUNK)
        if not more:
            source.finish()
            verified.append(True)
            if pending:
                yield pending
            return
        if pending:
            yield pending
        pending = more


def _drain(source: NativeSource) -> None:
    """Read the rest of a stream zfs refused, then its trailer (StreamError when damaged)."""
    while source.read(RECEIVE_CHUNK):
        pass
    source.finish()
