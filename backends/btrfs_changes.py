"""Change tracking between two read-only btrfs snapshots: the candidate paths of a diff.

`btrfs send --no-data -p OLD NEW` lists what changed without reading any file
data (backends.btrfs_send parses it as it comes).  A command names an inode by
one of its links, so the other links of every multiply-linked inode named are
added (BTRFS_IOC_INO_PATHS, on both sides).  backends.treeread.diff_paths then
compares only these paths, exactly as its walk would.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess

from . import beneath, btrfs_send
from . import btrfs_ioctl as ioc
from .base import TreeRoot

log = logging.getLogger(__name__)
Parts = tuple[bytes, ...]


def tracked(old: TreeRoot, new: TreeRoot) -> bool:
    """Both roots are read-only subvolumes: btrfs send can compare them."""
    if not (old.subvolume and new.subvolume):
        return False
    try:
        return ioc.subvol_info(old.fd).readonly and ioc.subvol_info(new.fd).readonly
    except OSError:
        return False


def candidates(btrfs_cmd: str, old: TreeRoot, new: TreeRoot) -> dict[Parts, bool] | None:
    """Paths that may differ from `old` to `new` (-> deep), or None when send failed
    (logged; the caller walks instead).  Blocks: call it from a worker thread."""
    proc = subprocess.Popen([btrfs_cmd, "send", "--no-data", "-q", "-p", old.path, new.path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out: dict[Parts, bool] = {}
    try:
        for path, deep in btrfs_send.named_paths(proc.stdout):
            parts = tuple(path.split(b"/"))
            out[parts] = deep or out.get(parts, False)
        while proc.stdout.read(1 << 16):
            pass  # to EOF: closing the pipe early would kill btrfs with SIGPIPE
    except btrfs_send.StreamError as exc:
        proc.kill()
        log.warning("btrfs send %s -> %s: %s; walking instead", old.path, new.path, exc)
        return None
    finally:
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        proc.wait()
    if proc.returncode:
        log.warning("btrfs send %s -> %s failed (rc %s: %s); walking instead", old.path, new.path, proc.returncode,
                    err.decode(errors="replace").strip())
        return None
    seen: tuple[set[int], set[int]] = (set(), set())  # inodes whose links are in, per side
    for parts in list(out):
        for root, done in zip((old, new), seen):
            for link in _other_links(root, parts, done):
                out.setdefault(link, False)
    return out


def _other_links(root: TreeRoot, parts: Parts, done: set[int]) -> list[Parts]:
    """Every path of the inode at `parts` when it has several links and is not in `done`
    (then added: the stream names each of an inode's links, asking once is enough);
    [] otherwise."""
    try:
        fd = beneath.open_path(root.fd, parts)
    except OSError:
        return []  # not on this side, or a temporary name of the stream
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISDIR(st.st_mode) or st.st_nlink < 2 or st.st_ino in done:
        return []
    done.add(st.st_ino)
    return [tuple(p.split(b"/")) for p in ioc.ino_paths(root.fd, st.st_ino)]
