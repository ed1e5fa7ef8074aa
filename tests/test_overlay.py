"""The overlay fallback backend through the real daemon: real directories and real overlayfs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import PROJECT_XATTR

from .client import snaps
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import new_cid
from .rootfs import assert_same_tree, build_rootfs, digest, mounted, require_root


@pytest.fixture(scope="module")
def overlay_daemon(overlay_env: tuple[DaemonProcess, Path]) -> tuple[DaemonProcess, Path]:
    return overlay_env


def create(d: DaemonProcess, cid: str) -> str:
    r = d.unix.post(snaps(cid))
    assert r.status == 200, r.body
    return r.data["snapshot"]["name"]


def restore(d: DaemonProcess, cid: str, name: str) -> None:
    r = d.unix.patch(snaps(cid, name))
    assert r.status == 200, r.body


def test_everything_a_rootfs_holds_survives_snapshot_and_restore(overlay_daemon) -> None:
    require_root()
    d, pool = overlay_daemon
    cid = new_cid()
    build_rootfs(pool / cid)
    os.setxattr(pool / cid, PROJECT_XATTR, b"proj-a")
    before = digest(pool / cid)
    name = create(d, cid)
    from backends.overlay import COPY_STARTED_XATTR, SNAPSHOT_TAGS

    snap = pool / ".snapshots" / cid / name
    assert int(os.getxattr(snap, COPY_STARTED_XATTR)) > 0  # the snapshot's own tags, never restored
    for tag in SNAPSHOT_TAGS:
        os.removexattr(snap, tag)
    assert_same_tree(pool / cid, snap)
    # wreck the container, then restore
    subprocess.run(["rm", "-rf", str(pool / cid / "etc"), str(pool / cid / "usr")], check=True)
    (pool / cid / "home/user/notes").write_text("overwritten")
    os.chmod(pool / cid / "tmp", 0o755)
    restore(d, cid, name)
    assert digest(pool / cid) == before
    assert d.unix.get(snaps(cid)).data["project_id"] == "proj-a"


def test_project_label_is_the_current_one_after_restore(overlay_daemon) -> None:
    d, pool = overlay_daemon
    cid = new_cid()
    write_tree(pool / cid, {"f": "1"})
    os.setxattr(pool / cid, PROJECT_XATTR, b"old-project")
    name = create(d, cid)
    os.setxattr(pool / cid, PROJECT_XATTR, b"new-project")
    restore(d, cid, name)
    assert os.getxattr(pool / cid, PROJECT_XATTR) == b"new-project"
    assert d.unix.get(snaps(cid)).data["project_id"] == "new-project"


def test_unchanged_files_share_inodes_between_consecutive_snapshots(overlay_daemon) -> None:
    d, pool = overlay_daemon
    from backends.treecopy import reflink_supported

    if reflink_supported(pool):
        pytest.skip("this pool's filesystem clones files (reflink): hard-link dedupe is not used")
    cid = new_cid()
    write_tree(pool / cid, {"big.bin": os.urandom(1 << 20), "small.txt": "v1", "sub/keep": "k"})
    # files changed within CTIME_MARGIN_NS of a snapshot's copy are never trusted as unchanged
    import time

    from backends.overlay import CTIME_MARGIN_NS

    time.sleep(CTIME_MARGIN_NS / 1e9 + 0.1)
    s1 = create(d, cid)
    (pool / cid / "small.txt").write_text("v2")
    s2 = create(d, cid)
    snapdir = pool / ".snapshots" / cid

    def ino(name: str, rel: str) -> int:
        return os.lstat(snapdir / name / rel).st_ino

    assert ino(s1, "big.bin") == ino(s2, "big.bin")
    assert ino(s1, "sub/keep") == ino(s2, "sub/keep")
    assert ino(s1, "small.txt") != ino(s2, "small.txt")
    assert (snapdir / s1 / "small.txt").read_text() == "v1"
    # sizes: the second holds only what changed; after the background recount the first
    # no longer counts the shared megabyte as its own
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = {s["name"]: s["size"] for s in d.unix.get(snaps(cid)).data["snapshots"]}
        if listed[s1] < (1 << 20):
            break
        time.sleep(0.05)
    assert listed[s2] < (1 << 20) and listed[s1] < (1 << 20), listed
    # a restore is a real copy: the live tree never shares an inode with a snapshot
    restore(d, cid, s1)
    assert os.lstat(pool / cid / "big.bin").st_ino not in {ino(s1, "big.bin")}
    from backends.overlay import COPY_STARTED_XATTR

    assert COPY_STARTED_XATTR in os.listxattr(snapdir / s1)
    assert COPY_STARTED_XATTR not in os.listxattr(pool / cid)  # the tag stays with the snapshot
    assert (pool / cid / "small.txt").read_text() == "v1"
    # deleting the first makes the shared megabyte the second's own
    assert d.unix.delete(snaps(cid, s1)).status == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        size = d.unix.get(snaps(cid, s2)).data["snapshot"]["size"]
        if size >= (1 << 20):
            break
        time.sleep(0.05)
    assert size >= (1 << 20)


@pytest.fixture
def overlay_container(overlay_daemon) -> Iterator[tuple[DaemonProcess, Path, str, Path]]:
    """An overlay container: lower (the image) outside the pool, upper/work/merged inside."""
    require_root()
    d, pool = overlay_daemon
    cid = new_cid()
    lower = pool.parent / f"image-{cid}"
    write_tree(lower, {"etc/os-release": "ID=test\n", "etc/remove-me": "x", "opt/app/data/a.db": "a",
                       "opt/app/data/b.db": "b", "srv/keep.html": "<p>lower</p>"})
    for sub in ("upper", "work", "merged"):
        (pool / cid / sub).mkdir(parents=True)
    yield d, pool, cid, lower


def mount_overlay(pool: Path, cid: str, lower: Path):
    c = pool / cid
    return mounted(c / "merged", "-t", "overlay", "overlay", "-o",
                   f"lowerdir={lower},upperdir={c / 'upper'},workdir={c / 'work'}")


def test_overlay_container_captures_the_writable_layer_with_whiteouts(overlay_container) -> None:
    d, pool, cid, lower = overlay_container
    with mount_overlay(pool, cid, lower) as merged:
        (merged / "etc/remove-me").unlink()  # a whiteout in upper
        subprocess.run(["rm", "-rf", str(merged / "opt/app/data")], check=True)
        (merged / "opt/app/data").mkdir()  # an opaque directory in upper
        (merged / "opt/app/data/new.db").write_text("new")
        (merged / "srv/keep.html").write_text("<p>changed</p>")
        view = digest(merged)
    name = create(d, cid)
    snap = pool / ".snapshots" / cid / name
    # only the writable layer is captured
    assert not (snap / "etc/os-release").exists()
    assert os.lstat(snap / "etc/remove-me").st_rdev == os.makedev(0, 0)
    assert os.getxattr(snap / "opt/app/data", "trusted.overlay.opaque") == b"y"
    # change more, then restore: the merged view is the one at snapshot time
    with mount_overlay(pool, cid, lower) as merged:
        (merged / "etc/new-file").write_text("later")
        (merged / "etc/os-release").write_text("ID=changed\n")
        (merged / "opt/app/data/new.db").unlink()
        # restoring while the overlay is mounted is refused
        r = d.unix.patch(snaps(cid, name))
        assert (r.status, r.body["error"]) == (409, "Conflict"), r.body
        assert "mounted" in r.body["message"] and r.body["details"]
    restore(d, cid, name)
    with mount_overlay(pool, cid, lower) as merged:
        assert digest(merged) == view
        assert not (merged / "etc/remove-me").exists()
        assert sorted(p.name for p in (merged / "opt/app/data").iterdir()) == ["new.db"]
    assert set(os.listdir(pool / cid)) == {"upper", "work", "merged"}


def test_nothing_is_left_in_scratch_space(overlay_daemon) -> None:
    d, pool = overlay_daemon
    cid = new_cid()
    write_tree(pool / cid, {"a": "1"})
    name = create(d, cid)
    restore(d, cid, name)
    assert d.unix.delete(snaps(cid, name)).status == 200
    assert os.listdir(pool / ".snapshots" / ".tmp") == []
    assert os.listdir(pool / ".snapshots" / cid) == []  # kept for the container's name mark


def test_snapshots_are_private_to_root(overlay_daemon) -> None:
    d, pool = overlay_daemon
    assert oct((pool / ".snapshots").stat().st_mode & 0o777) == oct(0o700)


def test_container_symlink_is_not_followed(overlay_daemon, tmp_path: Path) -> None:
    d, pool = overlay_daemon
    outside = tmp_path / "outside"
    write_tree(outside, {"secret": "s"})
    cid = new_cid()
    os.symlink(outside, pool / cid)
    try:
        r = d.unix.post(snaps(cid))
        assert (r.status, r.body["message"]) == (404, "Container not found")
        assert not (pool / ".snapshots" / cid).exists()
    finally:
        os.unlink(pool / cid)


def test_a_full_pool_answers_507_and_leaves_nothing(tmp_path: Path) -> None:
    require_root()
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=8m", "tmpfs") as pool:
        cid = new_cid()
        write_tree(pool / cid, {"big.bin": os.urandom(6 << 20), "small": "s"})
        d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
        try:
            r = d.unix.post(snaps(cid))
            assert (r.status, r.body["error"]) == (507, "Insufficient Storage"), r.body
            assert "no space" in r.body["message"]
            assert d.unix.get(snaps(cid)).data["snapshots"] == []
            assert os.listdir(pool / ".snapshots" / ".tmp") == []
            assert not (pool / ".snapshots" / cid).exists()
            (pool / cid / "big.bin").unlink()
            assert d.unix.post(snaps(cid)).status == 200
        finally:
            assert d.stop() == 0



@pytest.mark.parametrize("change", ["overlay-becomes-plain", "plain-grows-upper-and-work"])
def test_restore_refuses_when_the_container_layout_changed(overlay_daemon, change: str) -> None:
    """A snapshot of upper/ must never replace a whole directory, nor a whole tree land in upper/."""
    d, pool = overlay_daemon
    cid = new_cid()
    c = pool / cid
    if change == "overlay-becomes-plain":
        write_tree(c, {"upper/etc/app.conf": "v1", "lower/important": "keep me"})
        (c / "work").mkdir()
    else:
        write_tree(c, {"etc/app.conf": "v1"})
    name = create(d, cid)
    if change == "overlay-becomes-plain":
        (c / "work").rmdir()
    else:
        (c / "upper").mkdir()
        (c / "work").mkdir()
    before = digest(c)
    r = d.unix.patch(snaps(cid, name))
    assert (r.status, r.body["error"]) == (409, "Conflict"), r.body
    assert "layout changed" in r.body["message"]
    assert digest(c) == before  # nothing was touched
