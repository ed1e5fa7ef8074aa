"""Change tracking between two ZFS snapshots: `zfs diff -H` (OpenZFS; zfs-fuse has none).

Each line is a change, a tab, the path (a rename: a tab and the new path), paths
absolute under the dataset's mountpoint, every byte outside printable ASCII and
every backslash written as a backslash and four octal digits.
"""

from __future__ import annotations

import re

Parts = tuple[bytes, ...]
_OCTAL = re.compile(rb"\\([0-7]{4})")


def unsupported(stderr: str) -> bool:
    """`zfs diff` with no arguments answered that there is no such command (zfs-fuse)."""
    return "unrecognized command" in stderr


def _parts(path: str, mountpoint: str) -> Parts | None:
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), path.encode("ascii", "surrogateescape"))
    prefix = mountpoint.rstrip("/").encode() + b"/"
    rest = raw[len(prefix):].rstrip(b"/") if raw.startswith(prefix) else b""
    return tuple(rest.split(b"/")) if rest else None  # the root itself is never reported


def candidates(text: str, mountpoint: str) -> dict[Parts, bool]:
    """Path components -> deep (a rename's both ends) for the lines of `zfs diff -H`."""
    out: dict[Parts, bool] = {}
    for line in text.splitlines():
        change, *paths = line.split("\t")
        for path in paths:
            parts = _parts(path, mountpoint)
            if parts is not None:
                out[parts] = change == "R" or out.get(parts, False)
    return out
