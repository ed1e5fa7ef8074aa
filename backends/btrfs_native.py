"""Native btrfs streams: `btrfs send [-p parent]` on the sender, `btrfs receive` on the receiver.

Send runs `btrfs send -q [-p <base>] <snapshot>` (an argv list) and reads its stdout on
the event loop (asyncio's pipe transport: never blocking, no thread to hop to and back
per chunk, which measured fewer context switches and less CPU than a reading thread) in
chunks of CHUNK bytes handed to `push`; at most about two chunks are buffered before
the pipe is left to fill and `btrfs send` waits.

Receive is done in scratch, then published in one step, as a portable import is:

1. The stream's first command is read and checked before anything runs: a SUBVOL
   command for a full stream, a SNAPSHOT command whose parent (clone) uuid is the
   base's received uuid for an incremental, and in either case the subvolume name
   `name` (the sender's snapshot name is its subvolume name).  Anything else is a
   StreamError: nothing was written.
2. `btrfs receive -q -e -C <scratch>` runs into a fresh scratch subvolume
   `.snapshots/.tmp/import-<id>-<token>`, fed from the verified-as-you-go stream,
   chrooted there (-C): receive follows symlinks when it writes, so without it a
   crafted stream (a symlink to a host path, then a write through it) would write
   anywhere as root.  The parent of an incremental is still found by its uuid.
3. Only when it succeeded and the envelope's trailer matched (NativeSource.finish)
   is the received subvolume checked (the only entry, read-only, with a received
   uuid) and snapshotted read-only into `.snapshots/<id>/<name>`: one ioctl.  A
   read-only snapshot of a received subvolume keeps its received uuid (the kernel
   clears it only for writable snapshots; checked on 6.x), so the published snapshot
   is what the next incremental's parent is found by.  The scratch is destroyed.

Why not receive straight into `.snapshots/<id>/`: `btrfs receive` makes the subvolume
under its final name at the stream's first command, so a half-received snapshot would
be listed (and a crash would leave one behind for the sweep to tell apart); and a
read-only received subvolume cannot be renamed into place (EROFS).  The extra snapshot
and destroy cost two ioctls, whatever the size.  A crash at any point leaves at most
the scratch subvolume, which the next open() sweeps (its nested received subvolume
included), or the published snapshot, which the service's create journal rolls forward.

A btrfs stream may also carry clone commands naming other subvolumes by uuid; a sender
holds a `replicate` token, which is root's power over the pool already (see import).
"""

from __future__ import annotations

import asyncio
import os
import stat
import struct
import subprocess
import tempfile
from typing import IO, TYPE_CHECKING, Awaitable, Callable

from backends import faults

from . import btrfs_ioctl as ioc
from .base import BackendError, NoSpace, SnapshotFacts, SnapshotNotFound, SnapshotRef
from .portable import NativeSource, StreamError
from .pump import grow_pipe, pump

if TYPE_CHECKING:
    from .btrfs import BtrfsBackend

CHUNK = 1 << 20
"""Bytes read from `btrfs send` per chunk (one N frame)."""
RECEIVE_CHUNK = 1 << 20
"""Bytes written to `btrfs receive` at a time."""

MAGIC = b"btrfs-stream\0"
_CMD = struct.Struct("<IHI")
_TLV = struct.Struct("<HH")
CMD_SUBVOL, CMD_SNAPSHOT = 1, 2
ATTR_UUID, ATTR_PATH, ATTR_CLONE_UUID = 1, 15, 20
MAX_FIRST = 64 << 10
"""Largest first command accepted (it holds a name and two uuids)."""
_ZERO_UUID = bytes(16)


def first_command(head: bytes) -> tuple[int, int, dict[int, bytes]] | None:
    """(bytes the stream's header and first command take, the command, its attributes) of a
    btrfs send stream beginning `head`; None when `head` is too short to tell.  StreamError
    when it is not a send stream."""
    fixed = len(MAGIC) + 4 + _CMD.size
    if len(head) < fixed:
        return None
    if head[:len(MAGIC)] != MAGIC:
        raise StreamError("the native data is not a btrfs send stream")
    (version,) = struct.unpack_from("<I", head, len(MAGIC))
    if version not in (1, 2, 3):
        raise StreamError(f"btrfs send stream version {version} is not supported")
    length, cmd, _crc = _CMD.unpack_from(head, len(MAGIC) + 4)
    if length > MAX_FIRST:
        raise StreamError("the btrfs stream's first command is too long")
    if len(head) < fixed + length:
        return None
    attrs: dict[int, bytes] = {}
    at, end = fixed, fixed + length
    while at < end:
        if at + _TLV.size > end:
            raise StreamError("the btrfs stream's first command is malformed")
        kind, size = _TLV.unpack_from(head, at)
        at += _TLV.size
        if at + size > end:
            raise StreamError("the btrfs stream's first command is malformed")
        attrs[kind] = bytes(head[at:at + size])
        at += size
    return end, cmd, attrs


def check_first(attrs_of: tuple[int, int, dict[int, bytes]], name: str, parent: bytes | None) -> None:
    """StreamError unless the first command makes subvolume `name`, in full (`parent` None)
    or as a snapshot of the subvolume whose received uuid is `parent`."""
    _, cmd, attrs = attrs_of
    got = attrs.get(ATTR_PATH, b"")
    if got != name.encode():
        raise StreamError(f"the btrfs stream holds subvolume {got[:200].decode('utf-8', 'replace')!r}, "
                          f"not {name!r}")
    if parent is None:
        if cmd != CMD_SUBVOL:
            raise StreamError("the header says a full stream, the btrfs stream is an incremental")
        return
    if cmd != CMD_SNAPSHOT:
        raise StreamError("the header says an incremental, the btrfs stream is a full one")
    if attrs.get(ATTR_CLONE_UUID) != parent:
        raise StreamError("the btrfs stream's parent is not the base snapshot received here")


class BtrfsNative:
    """send_native / receive_native / native_bases of BtrfsBackend (mixed in)."""

    native_stream = "btrfs"

    async def send_native(self: BtrfsBackend, cid: str, snap: SnapshotRef, base: SnapshotRef | None,
                          push: Callable[[bytes], Awaitable[None]]) -> int:
        paths = {s.name: self._spath(cid, s.name) for s in (snap, base) if s is not None}
        for what, path in paths.items():
            if _info(path) is None:
                raise SnapshotNotFound(f"snapshot {what} of container {cid} is not on disk")
        args = [self.btrfs_cmd, "send", "-q", *(["-p", paths[base.name]] if base else []), paths[snap.name]]
        with tempfile.TemporaryFile() as err:
            # read by the loop itself (no thread to hop to and from per chunk), at most about
            # two chunks buffered before the pipe is left to fill
            proc = await asyncio.create_subprocess_exec(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                        stderr=err, limit=CHUNK)
            assert proc.stdout is not None
            try:
                sent = await pump(proc.stdout, CHUNK, push)
                code = await proc.wait()
                if code:
                    raise _failed("send", snap.name, code, err)
                return sent
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.communicate()  # wait() alone hangs on a paused pipe that never sees EOF

    async def receive_native(self: BtrfsBackend, cid: str, name: str, source: NativeSource,
                             base: SnapshotRef | None, new_container: bool) -> SnapshotFacts:
        return await asyncio.to_thread(self._receive_native, cid, name, source, base, new_container)

    def _receive_native(self: BtrfsBackend, cid: str, name: str, source: NativeSource,
                        base: SnapshotRef | None, new_container: bool) -> SnapshotFacts:
        parent = None
        if base is not None:
            parent = _received_uuid(self._spath(cid, base.name))
            if parent is None:
                raise StreamError(f"snapshot {base.name} of {cid} was not received natively here: "
                                  "no btrfs incremental can start from it")
        head = b""
        while (first := first_command(head)) is None:
            data = source.read(MAX_FIRST)
            if not data:
                raise StreamError("the btrfs stream ends before its first command")
            head += data
        check_first(first, name, parent)

        def fill(tmppath: str, _tfd: int, _tmpname: str) -> str:
            self._run_sync("subvolume", "create", tmppath)
            _receive(self.btrfs_cmd, tmppath, head, source, name)
            received = os.path.join(tmppath, name)
            info = _info(received)
            if os.listdir(tmppath) != [name] or info is None or not info.readonly \
                    or info.received_uuid == _ZERO_UUID:
                raise StreamError(f"the btrfs stream did not make exactly one received subvolume {name}")
            faults.point("btrfs.native.received")
            return received

        return self._received(cid, name, new_container, fill)

    async def native_bases(self: BtrfsBackend, cid: str) -> list[str]:
        def bases() -> list[str]:
            names = self._snapshot_names(cid).get(cid, [])
            return [n for n in names if _received_uuid(self._spath(cid, n)) is not None]

        return await asyncio.to_thread(bases)


def _receive(btrfs: str, dest: str, head: bytes, source: NativeSource, name: str) -> None:
    """Run `btrfs receive` into `dest` fed `head` then the rest of `source`; return once it
    succeeded and the envelope's trailer matched.  When receive fails, the rest of the
    stream is read: a damaged stream is told as that (StreamError), else receive's error."""
    with tempfile.TemporaryFile() as err:
        # -e: stop at the first stream's end; a second one concatenated is never received.
        # -C: chrooted into `dest`, so a crafted stream's symlink cannot take a write outside it.
        proc = subprocess.Popen([btrfs, "receive", "-q", "-e", "-C", dest], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        broken = False
        try:
            grow_pipe(proc.stdin.fileno())
            data = head
            while data:
                try:
                    proc.stdin.write(data)
                except BrokenPipeError:
                    broken = True
                    break
                data = source.read(RECEIVE_CHUNK)
            try:
                proc.stdin.close()
            except BrokenPipeError:
                broken = True
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code or broken:
            while source.read(RECEIVE_CHUNK):  # the stream's own verdict first
                pass
            source.finish()
            raise _failed("receive", name, code, err)
        source.finish()


def _failed(what: str, name: str, code: int | None, err: IO[bytes]) -> BackendError:
    err.seek(0)
    lines = err.read(64 << 10).decode(errors="replace").strip().splitlines()
    text = lines[-1] if lines else f"exit status {code}"
    if "no space" in text.lower() or "quota exceeded" in text.lower():
        return NoSpace(f"btrfs {what} of {name}: {text}")
    if what == "receive":
        return StreamError(f"btrfs receive of {name} failed: {text}")
    return BackendError(f"btrfs {what} of {name} failed: {text}")



def _info(path: str) -> ioc.SubvolInfo | None:
    """Subvolume `path`'s facts; None when it is not a subvolume (or not there)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_ino != ioc.FIRST_FREE_OBJECTID:
        return None
    try:
        fd = ioc.open_dir(path)
    except FileNotFoundError:
        return None
    try:
        return ioc.subvol_info(fd)
    finally:
        os.close(fd)


def _received_uuid(path: str) -> bytes | None:
    """The received uuid of subvolume `path`; None when it was not received (or is not there)."""
    info = _info(path)
    return None if info is None or info.received_uuid == _ZERO_UUID else info.received_uuid

