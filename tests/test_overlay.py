"""The overlay fallback backend through the real daemon: real directories and real overlayfs."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import LAYOUT_XATTR, PROJECT_XATTR

from .aftercheck import HostCheck
from .client import snaps
from .daemon import DaemonProcess
from .digest import tree_digest, walk_digest, write_tree
from .hostiletree import bottom, build_deep, flip_on_every_visit, remove_deep
from .harness import new_cid
from .rootfs import assert_same_tree, build_rootfs, digest, mounted, require_root
from .waiting import until


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
    name = create(d, cid)
    before = digest(pool / cid)  # after the first snapshot, which records the layout label
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
    # sizes: the second holds only what changed; after the background recount (a moment
    # after the burst: snapd/core/recount.py) the first no longer counts the shared megabyte
    def listed() -> dict[str, int]:
        return {s["name"]: s["size"] for s in d.unix.get(snaps(cid)).data["snapshots"]}

    until(lambda: listed()[s1] < (1 << 20), "the first snapshot's size recounted")
    sizes = listed()
    assert sizes[s2] < (1 << 20) and sizes[s1] < (1 << 20), sizes
    # a restore is a real copy: the live tree never shares an inode with a snapshot
    restore(d, cid, s1)
    assert os.lstat(pool / cid / "big.bin").st_ino not in {ino(s1, "big.bin")}
    from backends.overlay import COPY_STARTED_XATTR

    assert COPY_STARTED_XATTR in os.listxattr(snapdir / s1)
    assert COPY_STARTED_XATTR not in os.listxattr(pool / cid)  # the tag stays with the snapshot
    assert (pool / cid / "small.txt").read_text() == "v1"
    # deleting the first makes the shared megabyte the second's own
    assert d.unix.delete(snaps(cid, s1)).status == 200
    until(lambda: d.unix.get(snaps(cid, s2)).data["snapshot"]["size"] >= (1 << 20),
          "the second snapshot's size recounted to hold the shared megabyte")


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



def test_a_plain_container_cannot_make_itself_an_overlay_container(overlay_daemon, host_unharmed: HostCheck) -> None:
    """The attack: a plain container's root runs `mkdir /upper /work` after its first snapshot."""
    d, pool = overlay_daemon
    cid = new_cid()
    c = pool / cid
    write_tree(c, {"etc/app.conf": "v1", "home/user/notes": "n"})
    first = create(d, cid)
    first_view = digest(c)
    write_tree(c, {"upper/planted": "x", "work/w": "", "etc/app.conf": "v2"})
    second = create(d, cid)
    captured = tree_digest(pool / ".snapshots" / cid / second)
    assert {"etc/app.conf", "home/user/notes", "upper/planted", "work/w"} <= set(captured)  # the whole tree
    restore(d, cid, first)
    assert digest(c) == first_view
    assert not (c / "upper").exists()
    host_unharmed(d, pool, [cid])


def test_an_overlay_container_stays_one_when_work_disappears(overlay_daemon) -> None:
    d, pool = overlay_daemon
    cid = new_cid()
    c = pool / cid
    write_tree(c, {"upper/etc/app.conf": "v1", "lower/important": "keep me"})
    (c / "work").mkdir()
    name = create(d, cid)
    (c / "work").rmdir()
    write_tree(c, {"upper/etc/app.conf": "v2"})
    restore(d, cid, name)
    assert (c / "upper/etc/app.conf").read_text() == "v1"
    assert (c / "lower/important").read_text() == "keep me"


def test_in_use_outside_upper_blocks_the_restore_of_an_overlay_container(
        overlay_daemon, host_unharmed: HostCheck) -> None:
    d, pool = overlay_daemon
    cid = new_cid()
    c = pool / cid
    write_tree(c, {"upper/f": "1", "lower/bin/app": "app"})
    (c / "work").mkdir()
    name = create(d, cid)
    child = subprocess.Popen(["sleep", "60"], cwd=c / "lower")
    try:
        r = d.unix.patch(snaps(cid, name))
        assert (r.status, r.body["error"]) == (409, "Conflict"), r.body
        assert any(x.get("value") == str(child.pid) for x in r.body["details"]), r.body
    finally:
        child.kill()
        child.wait()
    restore(d, cid, name)
    host_unharmed(d, pool, [cid])


def test_an_admin_sets_the_layout(overlay_daemon) -> None:
    d, pool = overlay_daemon
    cid = new_cid()
    c = pool / cid
    write_tree(c, {"upper/u": "1", "lower/l": "2"})
    (c / "work").mkdir()
    url = f"/api/v1/admin/containers/{cid}"
    shown = d.unix.get(url).data
    assert (shown["layout"], shown["layout_label"]) == ("overlay", None)  # undecided: as it looks now
    r = d.unix.request("PUT", f"{url}/layout", {"layout": "whole"})
    assert r.status == 200 and (r.data["layout"], r.data["layout_label"]) == ("whole", "whole"), r.body
    whole = create(d, cid)
    assert {"upper/u", "lower/l"} <= set(tree_digest(pool / ".snapshots" / cid / whole))
    r = d.unix.request("PUT", f"{url}/layout", {"layout": "overlay"})
    assert r.status == 200 and r.data["layout"] == "overlay", r.body
    upper = create(d, cid)
    assert set(tree_digest(pool / ".snapshots" / cid / upper)) == {"u"}
    before = digest(c)
    r = d.unix.patch(snaps(cid, whole))  # a whole-tree snapshot never lands in upper/
    assert (r.status, r.body["error"]) == (409, "Conflict"), r.body
    assert "layout changed" in r.body["message"]
    assert digest(c) == before
    for bad in ({"layout": "upper"}, {"layout": 1}, {}, {"layout": "whole", "x": 1}):
        r = d.unix.request("PUT", f"{url}/layout", bad)
        assert r.status == 400 and r.body["details"], (bad, r.body)
    assert d.unix.request("PUT", f"/api/v1/admin/containers/{new_cid()}/layout", {"layout": "whole"}).status == 404
    r = d.unix.request("PUT", f"{url}/layout", {"layout": None})  # unlabelled: the oldest snapshot decides again
    assert r.status == 200 and (r.data["layout"], r.data["layout_label"]) == ("whole", None), r.body


def test_the_pool_setting_whole_captures_everything(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"upper/u": "1", "work/w": "", "etc/app.conf": "v1"})
    (tmp_path / "config.toml").write_text(f'[pool_options."overlay:{pool}"]\nlayout = "whole"\n')
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False,
                      extra=["--config", str(tmp_path / "config.toml")]).start()
    try:
        name = create(d, cid)
        assert {"upper/u", "work/w", "etc/app.conf"} <= set(tree_digest(pool / ".snapshots" / cid / name))
        assert d.unix.get(f"/api/v1/admin/containers/{cid}").data["layout"] == "whole"
    finally:
        assert d.stop() == 0, d.log_text()[-2000:]


# -- what a hostile container's tree holds -----------------------------------------


def _same_inode(fd: int, a: str, b: str) -> bool:
    return os.stat(a, dir_fd=fd, follow_symlinks=False).st_ino == os.stat(b, dir_fd=fd, follow_symlinks=False).st_ino


def test_hard_links_beyond_path_max_survive_create_and_restore(overlay_daemon, host_unharmed: HostCheck) -> None:
    d, pool = overlay_daemon
    cid = new_cid()
    long = b"a-longish-name"  # 300 levels of 15 bytes: the links lie beyond PATH_MAX
    build_deep(pool / cid, 300, long, every=100)
    os.setxattr(pool / cid, LAYOUT_XATTR, b"whole")  # else the first snapshot records it
    before = walk_digest(pool / cid)
    name = create(d, cid)
    fd, depth = bottom(pool / ".snapshots" / cid / name, long)
    try:
        assert depth == 300 and _same_inode(fd, "a", "b") and _same_inode(fd, "s1", "s2")
    finally:
        os.close(fd)
    fd, _ = bottom(pool / cid, long)
    try:  # break the pair in the container, then restore it
        os.unlink("b", dir_fd=fd)
        os.close(os.open("b", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    restore(d, cid, name)
    assert walk_digest(pool / cid) == before
    fd, _ = bottom(pool / cid, long)
    try:
        assert _same_inode(fd, "a", "b") and _same_inode(fd, "s1", "s2")
    finally:
        os.close(fd)
    host_unharmed(d, pool, [cid])


def test_ten_thousand_levels_create_and_restore_with_1024_descriptors(
        tmp_path: Path, host_unharmed: HostCheck) -> None:
    require_root()
    with mounted(tmp_path / "pool", "-t", "tmpfs", "-o", "size=512m", "tmpfs") as pool:
        cid = new_cid()
        build_deep(pool / cid, 10_000)
        os.setxattr(pool / cid, LAYOUT_XATTR, b"whole")  # else the first snapshot records it
        before = walk_digest(pool / cid)
        d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
        try:
            hard = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)[1]
            resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (1024, hard))
            name = create(d, cid)
            # the snapshot's root carries its own tags: compare everything below it
            assert walk_digest(pool / ".snapshots" / cid / name)[1:] == before[1:]
            remove_deep(pool / cid / "d")
            write_tree(pool / cid, {"shallow": "replaced"})
            restore(d, cid, name)
            assert walk_digest(pool / cid) == before
        finally:
            assert d.stop() == 0
        host_unharmed(d, pool, [cid])


SWAPPER = r"""
import ctypes, itertools, os, sys
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
pairs = []
for top in sys.argv[1:]:
    for i in range(8):
        d, f, l = (os.fsencode(os.path.join(top, f"{k}{i}")) for k in ("sd", "sf", "sl"))
        pairs += [(d, f), (f, l), (l, d)]
print("ready", flush=True)
for a, b in itertools.cycle(pairs):
    if libc.renameat2(-100, a, -100, b, RENAME_EXCHANGE) != 0:
        sys.exit(ctypes.get_errno())
"""


def test_a_container_that_keeps_changing_gets_409_never_500(tmp_path: Path, host_unharmed: HostCheck) -> None:
    pool = tmp_path / "pool"
    cid = new_cid()
    files = {f"dir{i}/file{j}": f"content {i} {j}" for i in range(10) for j in range(20)}
    for top in ("", "dir0/"):  # dir/file/symlink triples the swapper exchanges in a tight loop
        files.update({f"{top}sd{i}/inside": "in a dir" for i in range(8)})
        files.update({f"{top}sf{i}": "a file" * 100 for i in range(8)})
    write_tree(pool / cid, files)
    for top in (pool / cid, pool / cid / "dir0"):
        for i in range(8):
            os.symlink("sf0", top / f"sl{i}")
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(pool / cid), str(pool / cid / "dir0")],
                               stdout=subprocess.PIPE, text=True)
    statuses: list[int] = []
    created: set[str] = set()
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == "ready\n"
        for _ in range(10):
            assert swapper.poll() is None, "the swapper stopped"
            r = d.unix.post(snaps(cid))
            statuses.append(r.status)
            if r.status == 409:
                assert r.body["message"] == "container changed during the snapshot; retry or freeze it", r.body
            else:
                assert r.status == 200, r.body
                created.add(r.data["snapshot"]["name"])
        assert os.listdir(pool / ".snapshots" / ".tmp") == []
    finally:
        swapper.kill()
        swapper.wait()
        code = d.stop()
    assert code == 0
    print(f"creates: {statuses.count(200)} made, {statuses.count(409)} refused as changing")
    host_unharmed(d, pool, [cid])  # a clean restart; the store and the disk agree
    assert (set(os.listdir(pool / ".snapshots" / cid)) if created else set()) == created  # on exactly what was made


def test_a_create_that_keeps_seeing_changes_is_refused_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend's side of the 409 (the service maps ContainerBusy to it): the real copier
    on a real tree whose entry changes type every time it is looked at."""
    from backends.base import ContainerChanged
    from backends.overlay import OverlayBackend

    pool = tmp_path / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"flip/inside": "a dir", "other": "stays"})
    backend = OverlayBackend(str(pool))
    backend._open()
    flip_on_every_visit(monkeypatch, pool / cid, times=1000)
    with pytest.raises(ContainerChanged) as err:
        backend._create(cid, "snap-1")
    assert str(err.value) == "container changed during the snapshot; retry or freeze it"
    assert err.value.details == [{"field": "container", "reason": "'flip' kept changing while copied (5 attempts)"}]
    assert os.listdir(pool / ".snapshots" / ".tmp") == []
    assert not (pool / ".snapshots" / cid).exists()


def test_mounts_inside_a_plain_container_are_not_captured(
        overlay_daemon, tmp_path: Path, host_unharmed: HostCheck) -> None:
    """A tmpfs and bind mounts of the same filesystem (same st_dev): mount points, captured empty."""
    require_root()
    d, pool = overlay_daemon
    cid = new_cid()
    c = pool / cid
    write_tree(c, {"kept": "mine", "etc/resolv.conf": "covered"})
    outside = tmp_path / "outside"
    write_tree(outside, {"dir/secret": "host data", "file": "host file"})
    assert os.stat(outside).st_dev == os.stat(pool).st_dev
    with mounted(c / "data", "-t", "tmpfs", "-o", "size=4m,mode=0750", "tmpfs") as data, \
            mounted(c / "bind", "--bind", str(outside / "dir")), \
            mounted(c / "etc/resolv.conf", "--bind", str(outside / "file")):
        write_tree(data, {"volume/db": "volume data"})
        name = create(d, cid)
    snap = pool / ".snapshots" / cid / name
    assert os.listdir(snap / "data") == [] and os.listdir(snap / "bind") == []
    assert stat.S_IMODE(os.stat(snap / "data").st_mode) == 0o750  # the mounted root's own mode
    assert (snap / "etc/resolv.conf").read_bytes() == b""
    assert (snap / "kept").read_text() == "mine"
    host_unharmed(d, pool, [cid])
