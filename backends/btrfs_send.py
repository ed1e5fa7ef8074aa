"""The paths a btrfs send stream names: the change tracking behind a btrfs diff.

`btrfs send --no-data -p OLD NEW` writes the commands that turn snapshot OLD
into NEW (write commands without their data, still naming the file).  The
stream is a header (magic, u32 version) then commands: u32 length, u16 command,
u32 crc32c, then `length` bytes of TLV attributes (u16 type, u16 length,
value), all little-endian.  It is read one command at a time, so memory stays
constant whatever the stream's size.  No maintained PyPI parser exists; the
CRC is not checked (the stream comes from the local btrfs command, not a
file or the network).

Paths in a stream are those of the tree while it is being rebuilt: a rename
can pass through a temporary `oINO-GEN-IDX` name, and commands name an inode
by one of its links only.  So a rename's source and destination, a new or
removed directory, are *deep*: everything beneath them is compared; the
caller adds the other links of a multiply-linked inode (see backends.btrfs).
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

MAGIC = b"btrfs-stream\0"
_HEADER = struct.Struct("<I")
_CMD = struct.Struct("<IHI")
_TLV = struct.Struct("<HH")

# commands (<linux/btrfs_send.h> / btrfs-progs send.h)
SUBVOL, SNAPSHOT, MKDIR, RENAME, RMDIR, END = 1, 2, 4, 9, 12, 21
WRITE, ENCODED_WRITE = 15, 25
# attributes
PATH, PATH_TO, DATA = 15, 16, 19

_DEEP = {MKDIR, RENAME, RMDIR}
_NO_PATHS = {SUBVOL, SNAPSHOT, END}


class StreamError(ValueError):
    """The input is not a btrfs send stream this parser understands."""


def _read(stream: BinaryIO, n: int) -> bytes:
    out = stream.read(n)
    if len(out) != n:
        raise StreamError(f"truncated stream: wanted {n} bytes, got {len(out)}")
    return out


def commands(stream: BinaryIO) -> Iterator[tuple[int, dict[int, bytes]]]:
    """(command, {attribute: value}) for each command of the stream, up to END."""
    if stream.read(len(MAGIC)) != MAGIC:
        raise StreamError("not a btrfs send stream (bad magic)")
    (version,) = _HEADER.unpack(_read(stream, _HEADER.size))
    if not 1 <= version <= 3:
        raise StreamError(f"send stream version {version} is not supported")
    while True:
        head = stream.read(_CMD.size)
        if not head:
            return  # several subvolumes may follow one another; EOF ends the stream
        if len(head) != _CMD.size:
            raise StreamError("truncated command header")
        length, cmd, _crc = _CMD.unpack(head)
        body = _read(stream, length)
        attrs: dict[int, bytes] = {}
        pos = 0
        while pos < length:
            kind, size = _TLV.unpack_from(body, pos)
            pos += _TLV.size
            if kind == DATA and version >= 2 and cmd in (WRITE, ENCODED_WRITE):
                size = length - pos  # v2+: the data runs to the end of the command, no length
            attrs[kind] = body[pos:pos + size]
            pos += size
        yield cmd, attrs
        if cmd == END:
            return


def named_paths(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """(path relative to the subvolume, deep) for every path a command changes.

    Deep: compare everything beneath too (a rename's both ends, mkdir, rmdir).  The
    subvolume's root itself (the empty path) is left out: a diff never reports it."""
    for cmd, attrs in commands(stream):
        if cmd in _NO_PATHS:
            continue
        deep = cmd in _DEEP
        for kind in (PATH, PATH_TO):
            path = attrs.get(kind)
            if path:
                yield path, deep
