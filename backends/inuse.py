"""Which processes hold files of a container: open fds, cwd, root, exe, mmaps.

`holders(path)` scans /proc (the pid list and command names via psutil) and
compares device and inode numbers, never path strings where it can avoid
them, so processes in other mount namespaces (a container's own) are found
too: stat() through /proc/<pid>/{cwd,root,exe,fd/N,map_files/...} reaches
the very file the process holds, whatever its mount table says.

Exact when `path` is the root of its own device, as every btrfs subvolume is
(each has its own st_dev) and every mount root is: a holder is then any
process holding anything on that device.  For a plain directory sharing its
device with its parent (an overlay pool's container directory) directories
(cwd, root) are checked by walking `..` from the process's own view up to
the filesystem root, and open files by their /proc link text (exact for
processes in this mount namespace, best effort for others).

Blocking: call it from a worker thread.  Cost grows with the number of
processes and open files on the host, never with the container's size.
Racy by nature: a process may open a file just after the scan.
"""

from __future__ import annotations

import os

import psutil

from . import mounts

_MAX_DEPTH = 256


def holders(path: str, *, exclude: set[int] | None = None) -> list[dict]:
    """Processes holding files under `path`: [{"pid", "command", "reason"}], by pid.

    `exclude`: pids to ignore (default: this process, which holds the
    container itself while working on it).
    """
    st = os.stat(path)
    target = (st.st_dev, st.st_ino)
    own_device = _own_device(path, st)
    real = os.path.realpath(path)
    sb_dev = _superblock_dev(real)
    skip = {os.getpid()} if exclude is None else exclude
    found: dict[int, list[str]] = {}
    for pid in psutil.pids():
        if pid in skip:
            continue
        try:
            reasons = _scan(pid, target, own_device, real, sb_dev)
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue  # gone, or not ours to see
        if reasons:
            found[pid] = reasons
    out = []
    for pid, reasons in sorted(found.items()):
        try:
            command = psutil.Process(pid).name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            command = "?"
        out.append({"pid": pid, "command": command, "reason": ", ".join(reasons)})
    return out


def describe(found: list[dict]) -> str:
    """'pid 12 (sleep), pid 40 (bash)' for messages."""
    return ", ".join(f"pid {h['pid']} ({h['command']})" for h in found)


def _own_device(path: str, st: os.stat_result) -> bool:
    try:
        parent = os.stat(os.path.join(path, ".."))
    except OSError:
        return True
    return parent.st_dev != st.st_dev or parent.st_ino == st.st_ino  # or it is '/'


def _superblock_dev(real: str) -> tuple[int, int] | None:
    """major:minor of the filesystem holding `real` as /proc/<pid>/maps prints it.

    That is the superblock's device, which on btrfs differs from the
    subvolume's st_dev; mountinfo's third field is the same number.  None
    when unknown (then every mapping is checked).
    """
    best: tuple[int, tuple[int, int]] | None = None
    try:
        table = mounts.mount_table()
    except OSError:
        return None
    for m in table:
        mp = m.mountpoint
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= best[0]:
                best = (len(mp), m.dev)
    return best[1] if best else None


def _scan(
    pid: int, target: tuple[int, int], own_device: bool, real: str,
    sb_dev: tuple[int, int] | None,
) -> list[str]:
    base = f"/proc/{pid}"
    dev = target[0]
    reasons: list[str] = []

    def under_dir(link: str) -> bool:
        st = _stat(link)
        if st is None or st.st_dev != dev:
            return False
        return own_device or _dir_under(link, target)

    def under_file(link: str) -> bool:
        st = _stat(link)
        if st is None or st.st_dev != dev:
            return False
        if own_device or (st.st_dev, st.st_ino) == target:
            return True
        try:
            text = os.readlink(link)
        except OSError:
            return False
        return text.startswith(real.rstrip("/") + "/")

    for what in ("cwd", "root"):
        if under_dir(f"{base}/{what}"):
            reasons.append(what)
    if under_file(f"{base}/exe"):
        reasons.append("exe")
    fds = []
    with os.scandir(f"{base}/fd") as it:
        for entry in it:
            if under_file(entry.path):
                fds.append(entry.name)
    if fds:
        fds.sort(key=int)
        more = f" (+{len(fds) - 5} more)" if len(fds) > 5 else ""
        reasons.append(f"open file{'s' if len(fds) > 1 else ''} fd {','.join(fds[:5])}{more}")
    if _maps_hit(base, under_file, sb_dev):
        reasons.append("mapped file")
    return reasons


def _maps_hit(base: str, under_file, sb_dev: tuple[int, int] | None) -> bool:
    """Whether any file-backed mapping is under the target.

    Only mappings of files on the target's filesystem are stat'ed, once per
    distinct file; a process with none there costs one read of its maps.
    """
    text = _read(f"{base}/maps")
    if not text:
        return False
    if sb_dev is not None:
        dev = b" %02x:%02x " % sb_dev  # as the kernel prints it
        if dev not in text:
            return False
    seen: set[tuple[bytes, bytes]] = set()
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or parts[4] == b"0" or not parts[5].startswith(b"/"):
            continue
        if sb_dev is not None and b" %s " % parts[3] != dev:
            continue
        key = (parts[3], parts[4])
        if key in seen:
            continue
        seen.add(key)
        if under_file(f"{base}/map_files/{parts[0].decode()}"):
            return True
    return False


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _stat(link: str) -> os.stat_result | None:
    try:
        return os.stat(link)
    except (FileNotFoundError, PermissionError, ProcessLookupError, NotADirectoryError):
        return None
    except OSError:
        return None


def _dir_under(link: str, target: tuple[int, int]) -> bool:
    """Whether the directory behind `link` is `target` or inside it, walking `..`."""
    prev: tuple[int, int] | None = None
    walk = link
    for _ in range(_MAX_DEPTH):
        st = _stat(walk)
        if st is None:
            return False
        here = (st.st_dev, st.st_ino)
        if here == target:
            return True
        if here == prev:
            return False  # reached the root
        prev = here
        walk += "/.."
    return False


def refuse_held(cid: str, paths: list[str], busy: type[Exception], *, log: object = None) -> None:
    """Raise `busy(message, details)` (ContainerBusy) when any process holds files under `paths`.

    Each holder is one detail: {"field": "container", "reason": "in use by pid N (cmd): why",
    "value": "N"}.  A scan that cannot run (no /proc) refuses nothing.
    """
    found: dict[int, dict] = {}
    for path in paths:
        try:
            for h in holders(path):
                found.setdefault(h["pid"], h)
        except OSError as e:
            if log is not None:
                log.debug("cannot scan processes holding %s: %s", path, e)  # type: ignore[attr-defined]
    if found:
        held = [found[p] for p in sorted(found)]
        raise busy(
            f"cannot restore container {cid}: in use by {describe(held)}; stop it first",
            [
                {
                    "field": "container",
                    "reason": f"in use by pid {h['pid']} ({h['command']}): {h['reason']}",
                    "value": str(h["pid"]),
                }
                for h in held
            ],
        )
