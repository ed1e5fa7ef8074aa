"""The mount table of this process's mount namespace, from /proc/self/mountinfo.

A container may have filesystems mounted inside it (a tmpfs, a bind mount of
a host directory, a volume).  A restore replaces the container's tree, so it
would either pull such a mount away with the old tree or (worse) delete
through it: restores refuse while any mount is inside (`refuse_mounts`).

Mount points are read from mountinfo, where the kernel escapes space, tab,
newline and backslash as three-digit octal (`\\040`); names are bytes and
decoded with the filesystem encoding (surrogateescape), like os.fsdecode.
Only this process's mount namespace is seen: a mount made in a container's
own namespace that does not propagate to the daemon's is invisible here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .base import BackendError, ContainerBusy

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo."""

    mount_id: int
    parent_id: int
    dev: tuple[int, int]
    """major:minor of the filesystem (the superblock's device, as /proc/<pid>/maps prints it)."""
    root: str
    """The directory of the filesystem this mount shows (a bind mount's source, in that filesystem)."""
    mountpoint: str
    fstype: str
    source: str
    super_options: str


def unescape(field: bytes) -> str:
    """A mountinfo path field as a str (octal escapes undone, os.fsdecode'd)."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), field))


def parse(text: bytes) -> list[Mount]:
    """Every well-formed line of mountinfo `text`; malformed lines are skipped."""
    out = []
    for line in text.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            major, minor = fields[2].split(b":")
            out.append(Mount(
                mount_id=int(fields[0]), parent_id=int(fields[1]), dev=(int(major), int(minor)),
                root=unescape(fields[3]), mountpoint=unescape(fields[4]),
                fstype=unescape(fields[sep + 1]), source=unescape(fields[sep + 2]),
                super_options=unescape(fields[sep + 3]),
            ))
        except (ValueError, IndexError):
            continue
    return out


def mount_table(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """This process's mount table (raises OSError when it cannot be read)."""
    with open(mountinfo, "rb") as f:
        return parse(f.read())


def mounts_under(path: str | os.PathLike[str], mountinfo: str = MOUNTINFO) -> list[Path]:
    """Mount points strictly beneath `path` (resolved with realpath), sorted, each once."""
    real = os.path.realpath(path)
    prefix = real.rstrip("/") + "/"
    return sorted({Path(m.mountpoint) for m in mount_table(mountinfo)
                   if m.mountpoint.startswith(prefix) and m.mountpoint != real})


def is_mount_point(path: str | os.PathLike[str], mountinfo: str = MOUNTINFO) -> bool:
    """Whether something is mounted at `path` (resolved with realpath).  Unlike
    os.path.ismount this sees a bind mount of a directory of the same filesystem."""
    real = os.path.realpath(path)
    return any(m.mountpoint == real for m in mount_table(mountinfo))


def refuse_mounts(cid: str, root: str | os.PathLike[str]) -> None:
    """Raise ContainerBusy (409) listing every mount beneath `root`, the tree a restore replaces.

    Each mount is one detail: {"field": "container", "reason": "mount at /data"},
    the path relative to `root`.
    """
    try:
        found = mounts_under(root)
    except OSError as e:
        raise BackendError(f"cannot read the mount table to check container {cid}: {e.strerror}") from e
    if not found:
        return
    real = Path(os.path.realpath(root))
    rel = ["/" + str(m.relative_to(real)) for m in found]
    raise ContainerBusy(
        f"cannot restore container {cid}: filesystems are mounted inside it ({', '.join(rel)}); "
        "a restore would replace the tree under them. Unmount them first",
        [{"field": "container", "reason": f"mount at {r}"} for r in rel],
    )
