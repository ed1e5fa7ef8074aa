"""Native streams made by hand (`btrfs send` or `zfs send` in the envelope), for tests that damage or replay one."""

from __future__ import annotations

import os
import struct
import subprocess
from datetime import datetime
from pathlib import Path

from backends.portable import Header, NativeFramer


def when(text: str) -> float:
    """Seconds since the epoch of an API timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def native_stream(pool_spec: str, cid: str, name: str, created_at: float, **header: object) -> bytes:
    """The native envelope around `btrfs send` or `zfs send` of snapshot `name` of `cid` in
    pool `pool_spec` (`btrfs:ROOT`, `zfs:DATASET`); header fields beyond these as given."""
    kind, _, root = pool_spec.partition(":")
    if kind == "zfs":
        argv = ["zfs", "send", f"{root}/{cid}@{name}"]
    else:
        argv = ["btrfs", "send", "-q", str(Path(root) / ".snapshots" / cid / name)]
    sent = subprocess.run(argv, capture_output=True, check=True).stdout
    return enveloped(cid, name, created_at, sent, native=kind, **header)


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C as btrfs send streams use it: seed 0, no inversion."""
    crc = 0
    for b in data:
        crc = _CRC[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def btrfs_command(cmd: int, attrs: list[tuple[int, bytes]]) -> bytes:
    """One btrfs send-stream (v1) command: length, command, CRC-32C, then its attributes."""
    body = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in attrs)
    head = struct.pack("<IHI", len(body), cmd, 0)
    return struct.pack("<IHI", len(body), cmd, crc32c(head + body)) + body


def escaping_btrfs_stream(name: str, victim: str) -> bytes:
    """A hand-made btrfs send stream a real tree never produces: subvolume `name` holding a
    symlink to `victim` (an absolute path outside the pool) and a write through it."""
    u64 = lambda n: struct.pack("<Q", n)  # noqa: E731
    return b"".join([
        b"btrfs-stream\0" + struct.pack("<I", 1),
        btrfs_command(1, [(15, name.encode()), (1, os.urandom(16)), (2, u64(7))]),      # SUBVOL
        btrfs_command(8, [(15, b"evil"), (3, u64(257)), (17, victim.encode())]),      # SYMLINK
        btrfs_command(15, [(15, b"evil"), (18, u64(0)), (19, b"written through the link\n")]),  # WRITE
        btrfs_command(21, []),                                                          # END
    ])


def enveloped(cid: str, name: str, created_at: float, sent: bytes, **header: object) -> bytes:
    """`sent` (send-stream bytes, btrfs's unless the header's `native` says otherwise) in the
    native envelope for snapshot `name` of `cid`; header fields beyond these as given."""
    framer = NativeFramer(Header(**{"container": cid, "snapshot": name, "created_at": created_at,  # type: ignore[arg-type]
                                    "native": "btrfs", **header}))
    return framer.start() + b"".join(framer.frames(sent)) + framer.end()
