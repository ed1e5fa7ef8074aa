"""Filesystems mounted inside a container (a tmpfs, a bind mount of a host directory),
on every backend, through the real daemon.

- a snapshot works; a restore is refused with 409 listing both mounts, and the
  container, the mounts and what is in them are untouched; after unmounting, it works
- a snapshot never captures what is inside a mount
- the mountinfo parser: octal escapes, mounts strictly beneath a path
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from backends import mounts

from .aftercheck import HostCheck
from .client import snaps
from .crash import container_digest, snapshot_digest, strays
from .daemon import DaemonProcess
from .digest import tree_digest, write_tree
from .harness import PoolHarness, new_cid
from .rootfs import require_root


@contextlib.contextmanager
def volumes(pool: PoolHarness, cid: str, source_in: str = "beside") -> Iterator[tuple[Path, Path, Path]]:
    """A tmpfs at <container>/scratch and a bind mount at <container>/data of a host
    directory beside the container (same filesystem on overlay and btrfs) or, with
    `source_in="inside"`, of the container's own <container>/vol (on btrfs: its own
    subvolume), each holding a file; always unmounted again.  Yields (tmpfs, bind, bind source)."""
    require_root()
    c = pool.container_path(cid)
    source = c / "vol" if source_in == "inside" else c.parent / f"vol-{cid}"
    write_tree(source, {"host-file": "host data"})
    tmpfs, bind = c / "scratch", c / "data"
    tmpfs.mkdir()
    bind.mkdir()
    mounted: list[Path] = []
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "snapd-vol", str(tmpfs)],
                       check=True, capture_output=True)
        mounted.append(tmpfs)
        subprocess.run(["mount", "--bind", str(source), str(bind)], check=True, capture_output=True)
        mounted.append(bind)
        write_tree(tmpfs, {"in-tmpfs": "volatile"})
        yield tmpfs, bind, source
    finally:
        for m in reversed(mounted):  # not os.path.ismount: it misses a bind of the same filesystem
            subprocess.run(["umount", str(m)], check=True, capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(source)], check=True)


@pytest.fixture
def served(pool: PoolHarness, tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path / "d", [pool.spec], tcp=False).start()
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log_text()[-2000:]


@pytest.mark.parametrize("source_in", ["beside", "inside"])
def test_restore_with_mounts_inside_is_refused(pool: PoolHarness, served: DaemonProcess, source_in: str,
                                               host_unharmed: HostCheck) -> None:
    d = served
    cid = new_cid()
    c = pool.make_container(cid)
    write_tree(c, {"etc/app.conf": "v1"})
    name = None
    with volumes(pool, cid, source_in) as (tmpfs, bind, source):
        r = d.unix.post(snaps(cid))
        assert r.status == 200, r.body
        name = r.data["snapshot"]["name"]
        write_tree(c, {"etc/app.conf": "v2"})
        before = container_digest(pool, cid)
        r = d.unix.patch(snaps(cid, name))
        assert (r.status, r.body["error"]) == (409, "Conflict"), r.body
        reasons = [x["reason"] for x in r.body["details"]]
        assert "mount at /data" in reasons and "mount at /scratch" in reasons, r.body
        assert "/data" in r.body["message"] and "/scratch" in r.body["message"]
        # nothing changed: the container, the mounts, what is in them, the host directory
        assert container_digest(pool, cid) == before
        assert mounts.mounts_under(c) == [bind, tmpfs]
        assert (tmpfs / "in-tmpfs").read_text() == "volatile"
        assert (bind / "host-file").read_text() == "host data"
        assert (source / "host-file").read_text() == "host data"
        assert strays(pool, cid, {name}) == []
    r = d.unix.patch(snaps(cid, name))
    assert r.status == 200, r.body
    assert (c / "etc/app.conf").read_text() == "v1"
    assert strays(pool, cid, {name}) == []
    host_unharmed(d, pool, [cid])


def test_a_snapshot_does_not_capture_what_is_inside_a_mount(pool: PoolHarness, served: DaemonProcess,
                                                            host_unharmed: HostCheck) -> None:
    d = served
    cid = new_cid()
    c = pool.make_container(cid)
    write_tree(c, {"etc/app.conf": "v1"})
    with volumes(pool, cid):
        r = d.unix.post(snaps(cid))
        assert r.status == 200, r.body
        name = r.data["snapshot"]["name"]
    captured = snapshot_digest(pool, cid, name)
    assert "etc/app.conf" in captured
    inside = sorted(p for p in captured if p.startswith(("scratch/", "data/")))
    assert inside == [], f"captured from inside mounts: {inside}"
    host_unharmed(d, pool, [cid])


def test_mountinfo_parsing(tmp_path: Path) -> None:
    base = tmp_path / "c t"
    table = tmp_path / "mountinfo"
    esc = str(base).replace(" ", "\\040")
    table.write_bytes(
        b"22 1 0:21 / / rw shared:1 - ext4 /dev/sda1 rw\n"
        + f"30 22 0:40 / {esc} rw - tmpfs t rw\n".encode()  # the path itself: not beneath it
        + f"31 30 0:41 / {esc}/a\\040b rw shared:7 master:2 - tmpfs x rw,size=4k\n".encode()
        + f"32 30 8:1 /src {esc}/back\\134slash\\012nl rw - ext4 /dev/sda1 rw\n".encode()
        + f"33 22 0:42 / {esc}x/other rw - tmpfs y rw\n".encode()  # a sibling with the same prefix
        + b"garbage line\n"
    )
    parsed = mounts.mount_table(str(table))
    assert [m.mount_id for m in parsed] == [22, 30, 31, 32, 33]
    assert parsed[2].dev == (0, 41) and parsed[2].fstype == "tmpfs" and parsed[2].super_options == "rw,size=4k"
    assert parsed[3].root == "/src"
    base.mkdir()
    assert mounts.mounts_under(base, str(table)) == [base / "a b", base / "back\\slash\nnl"]
    assert mounts.mounts_under(tmp_path / "elsewhere", str(table)) == []
    assert tree_digest(base) == {}
