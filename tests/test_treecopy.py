"""backends.treecopy on real directories, a tmpfs and a real overlayfs."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import treecopy
from backends.treecopy import copy_tree, reflink_supported, tree_exclusive_bytes

from .hostiletree import bottom, build_deep, flip_on_every_visit, remove_deep
from .digest import walk_digest, write_tree
from .rootfs import (
    ACL,
    CAP_NET_RAW,
    SPARSE_SIZE,
    MiB,
    assert_same_tree,
    build_rootfs,
    digest,
    mounted,
    require_root,
)


@pytest.fixture
def noreflink_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a filesystem without reflinks (tmp_path, or a tmpfs under it)."""
    if not reflink_supported(tmp_path):
        yield tmp_path
        return
    require_root()
    with mounted(tmp_path / "tmpfs", "-t", "tmpfs", "-o", "size=256m", "tmpfs") as d:
        yield d


# -- the copy itself ------------------------------------------------------


def test_copy_is_exact(tmp_path: Path) -> None:
    require_root()
    src, dst = tmp_path / "src", tmp_path / "dst"
    made = build_rootfs(src)
    atime = os.stat(src / "usr/bin/su").st_atime_ns
    stats = copy_tree(src, dst)
    # Access times are copied, and the source's are left alone (O_NOATIME).
    assert os.stat(src / "usr/bin/su").st_atime_ns == atime == os.stat(dst / "usr/bin/su").st_atime_ns

    assert_same_tree(src, dst)
    sparse = os.stat(dst / "var/sparse.img")
    assert sparse.st_size == SPARSE_SIZE and sparse.st_blocks * 512 <= 1 * MiB
    assert os.stat(dst / "var/ends.img").st_blocks * 512 <= 1 * MiB
    assert stat.S_IMODE(os.stat(dst / "usr/bin/su").st_mode) == 0o4755
    assert os.lstat(dst / "usr/host-shadow").st_size == len("/etc/shadow")  # a link, not the host file
    if made["caps"]:
        assert os.getxattr(dst / "usr/bin/ping", "security.capability") == CAP_NET_RAW
    if made["acl"]:
        assert os.getxattr(dst / "home/user", "system.posix_acl_default") == ACL
    assert stats.mount_points == [] and stats.vanished == 0 and stats.linked == 0
    assert stats.dirs == sum(1 for v in digest(dst).values() if v[0] == stat.S_IFDIR)
    assert stats.bytes_copied < 1 * MiB  # holes are not written
    assert stats.exclusive_bytes == tree_exclusive_bytes(dst)


def test_dst_must_not_exist(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with pytest.raises(FileExistsError):
        copy_tree(tmp_path / "src", tmp_path / "dst")


def test_enospc_raises_and_leaves_dst(tmp_path: Path) -> None:
    require_root()
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(4 * MiB))
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as small:
        with pytest.raises(OSError) as info:
            copy_tree(src, small / "dst")
        assert info.value.errno == errno.ENOSPC
        assert info.value.filename == str(src / "big")
        assert (small / "dst").is_dir()  # left for the caller to remove


def test_reflink_failure_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(10000))
    calls = []

    def no_clone(fd: int, request: int, arg: int) -> None:
        calls.append(request)
        raise OSError(errno.EOPNOTSUPP, "no")

    monkeypatch.setattr(treecopy, "reflink_supported", lambda _: True)
    monkeypatch.setattr(treecopy.fcntl, "ioctl", no_clone)
    stats = copy_tree(src, tmp_path / "dst")
    assert calls == [treecopy.FICLONE]  # tried once, then copied the rest
    assert stats.reflinked == 0 and stats.bytes_copied == 30000
    assert_same_tree(src, tmp_path / "dst")


def test_reflink_supported_on_tmpfs(tmp_path: Path) -> None:
    require_root()
    with mounted(tmp_path / "t", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as t:
        assert reflink_supported(t) is False
        assert list(t.iterdir()) == []


def test_mount_point_inside_is_not_crossed(tmp_path: Path) -> None:
    require_root()
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept").write_text("x")
    with mounted(src / "mnt", "-t", "tmpfs", "-o", "size=4m,mode=0750", "tmpfs") as mnt:
        (mnt / "inside").write_bytes(b"y" * 100_000)
        stats = copy_tree(src, tmp_path / "dst")
        assert stats.mount_points == [b"mnt"]
        assert list((tmp_path / "dst/mnt").iterdir()) == []
        assert stat.S_IMODE(os.stat(tmp_path / "dst/mnt").st_mode) == 0o750
        assert (tmp_path / "dst/kept").read_text() == "x"


def test_bind_mounts_of_the_same_filesystem_are_not_crossed(tmp_path: Path) -> None:
    """Same st_dev as the tree, yet a mount: mount ids tell, and nothing inside is copied."""
    require_root()
    src, outside = tmp_path / "src", tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir/secret").write_text("host data")
    (outside / "file").write_text("host file")
    src.mkdir()
    (src / "kept").write_text("x")
    (src / "file").write_text("covered")
    with mounted(src / "dir", "--bind", str(outside / "dir")), \
            mounted(src / "file", "--bind", str(outside / "file")):
        assert os.stat(src / "dir").st_dev == os.stat(src).st_dev
        stats = copy_tree(src, tmp_path / "dst")
        assert sorted(stats.mount_points) == [b"dir", b"file"]
    assert list((tmp_path / "dst/dir").iterdir()) == []
    assert (tmp_path / "dst/file").read_bytes() == b""
    assert (tmp_path / "dst/kept").read_text() == "x"


def copy_as_nobody(src: Path, dst: Path) -> str:
    """Run copy_tree in a forked child with uid/gid 65534; what it raised (or 'copied')."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                copy_tree(src, dst)
                msg = "copied"
            except PermissionError as e:
                msg = str(e)
            os.write(w, msg.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, msg
    return msg


def test_non_root_gets_clear_errors(tmp_path: Path) -> None:
    require_root()
    base = Path(tempfile.mkdtemp(prefix="treecopy-nonroot-"))
    try:
        os.chmod(base, 0o777)
        for case in ("owner", "device"):
            src = base / case
            src.mkdir()
            if case == "owner":
                (src / "f").write_text("x")
                os.chown(src, 65534, 65534)
                os.chown(src / "f", 1234, 1234)
            else:
                os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
                os.chown(src / "null", 65534, 65534)
                os.mknod(src / "whiteout", stat.S_IFCHR, os.makedev(0, 0))
                os.chown(src / "whiteout", 65534, 65534)
                os.chown(src, 65534, 65534)
        out = {case: copy_as_nobody(base / case, base / f"{case}-dst") for case in ("owner", "device")}
    finally:
        shutil.rmtree(base)
    assert "1234:1234" in out["owner"] and "needs root" in out["owner"] and "owner/f" in out["owner"]
    assert "1:3" in out["device"] and "needs root" in out["device"]


# -- link_dest ------------------------------------------------------------


def allocated_bytes(root: Path) -> int:
    """st_blocks*512 of every inode under root, each once."""
    seen: dict[int, int] = {os.lstat(root).st_ino: os.lstat(root).st_blocks * 512}
    for p in root.rglob("*"):
        st = os.lstat(p)
        seen[st.st_ino] = st.st_blocks * 512
    return sum(seen.values())


def _inode(p: Path) -> int:
    return os.lstat(p).st_ino


def test_link_dest_shares_unchanged_files(noreflink_dir: Path) -> None:
    base = noreflink_dir
    src = base / "src"
    (src / "sub/deeper").mkdir(parents=True)
    names = ["same", "content", "mode", "xattr", "mtime", "sub/same", "sub/deeper/same", "sub/grows"]
    for i, n in enumerate(names):
        (src / n).write_bytes(os.urandom(3000 + i))
    os.setxattr(src / "same", "user.k", b"v")
    s1, s2 = base / "s1", base / "s2"
    copy_tree(src, s1)
    before = digest(s1)

    t = os.stat(src / "content").st_mtime_ns
    (src / "content").write_bytes(os.urandom(3001))
    os.utime(src / "content", ns=(t, t + 1))
    os.chmod(src / "mode", 0o600)
    os.setxattr(src / "xattr", "user.new", b"1")
    os.utime(src / "mtime", ns=(t, t - 5))
    with open(src / "sub/grows", "ab") as f:
        f.write(b"more")
    (src / "new").write_bytes(b"new file")
    (src / "sub/same2").symlink_to("same")

    stats = copy_tree(src, s2, link_dest=s1)
    assert_same_tree(src, s2)
    assert digest(s1) == before  # the previous snapshot is untouched
    shared = {n for n in names if _inode(s1 / n) == _inode(s2 / n)}
    assert shared == {"same", "sub/same", "sub/deeper/same"}
    assert stats.linked == 3 and stats.reflinked == 0
    assert stats.exclusive_bytes == tree_exclusive_bytes(s2)
    shared_bytes = sum(os.stat(s2 / n).st_blocks * 512 for n in shared)
    assert tree_exclusive_bytes(s2) == allocated_bytes(s2) - shared_bytes > 0
    # A third copy against s2 links the files s1 and s2 share too: no chain breaks.
    stats3 = copy_tree(src, base / "s3", link_dest=s2)
    assert stats3.linked == len(names) + 1 and stats3.bytes_copied == 0


def test_link_dest_keeps_hard_link_structure(noreflink_dir: Path) -> None:
    base = noreflink_dir
    src = base / "src"
    src.mkdir()
    (src / "a").write_bytes(b"shared content" * 100)
    os.link(src / "a", src / "b")  # linked now, split later
    (src / "c").write_bytes(b"other content" * 100)
    (src / "d").write_bytes(b"other content" * 100)  # separate now, linked later
    t = time.time_ns() - 10**10
    for n in "abcd":
        os.utime(src / n, ns=(t, t))
    s1 = base / "s1"
    copy_tree(src, s1)
    assert _inode(s1 / "a") == _inode(s1 / "b") != _inode(s1 / "c")

    # Split a/b into identical twins (same size, mtime, mode, owner): only one may link to s1's inode.
    shutil.copyfile(src / "a", src / "b.tmp")
    os.utime(src / "b.tmp", ns=(t, t))
    os.replace(src / "b.tmp", src / "b")
    os.unlink(src / "d")
    os.link(src / "c", src / "d")

    s2 = base / "s2"
    stats = copy_tree(src, s2, link_dest=s1)
    assert_same_tree(src, s2)
    assert _inode(s2 / "a") != _inode(s2 / "b")
    assert {_inode(s2 / "a"), _inode(s2 / "b")} & {_inode(s1 / "a")}
    assert _inode(s2 / "c") == _inode(s2 / "d")
    assert stats.linked == 2  # one of a/b, and whichever of c/d came first
    assert _inode(s1 / "a") == _inode(s1 / "b")


# -- tree_exclusive_bytes -------------------------------------------------


def test_tree_exclusive_bytes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "own").write_bytes(os.urandom(64 * 1024))
    (root / "twice").write_bytes(os.urandom(32 * 1024))
    os.link(root / "twice", root / "sub/twice")
    (root / "shared").write_bytes(os.urandom(128 * 1024))
    os.link(root / "shared", tmp_path / "outside")
    os.symlink("own", root / "link")

    def blocks(*paths: Path) -> int:
        return sum(os.lstat(p).st_blocks * 512 for p in paths)

    expected = blocks(root, root / "sub", root / "own", root / "twice", root / "link")
    assert tree_exclusive_bytes(root) == expected
    os.unlink(tmp_path / "outside")
    assert tree_exclusive_bytes(root) == expected + blocks(root / "shared")


# -- overlayfs ------------------------------------------------------------


def test_overlay_upper_copy_round_trips(tmp_path: Path) -> None:
    require_root()
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower / "etc/conf.d", lower / "opt/app/data", lower / "srv/old", upper, work):
        d.mkdir(parents=True)
    (lower / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (lower / "etc/remove-me").write_text("bye\n")
    (lower / "etc/conf.d/a.conf").write_text("a=1\n")
    (lower / "opt/app/data/old.db").write_bytes(os.urandom(4096))
    (lower / "srv/old/page.html").write_text("<p>old</p>")
    (lower / "bin-tool").write_bytes(os.urandom(100_000))
    opts = "redirect_dir=on,metacopy=on"

    def overlay(upper: Path, work: Path, target: Path):
        return mounted(target, "-t", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work},{opts}", "overlay")

    with overlay(upper, work, merged):
        os.unlink(merged / "etc/remove-me")  # whiteout
        shutil.rmtree(merged / "opt/app/data")  # opaque directory
        (merged / "opt/app/data").mkdir()
        (merged / "opt/app/data/new.db").write_bytes(b"fresh")
        os.rename(merged / "srv/old", merged / "srv/new")  # redirect
        os.chown(merged / "bin-tool", 1234, 1234)  # metacopy: no data in upper
        (merged / "etc/hosts").write_text("127.0.0.1 localhost container\n")
        os.setxattr(merged / "etc/hosts", "user.origin", b"container")
        (merged / "etc/conf.d/b.conf").write_text("b=2\n")
        view = digest(merged)

    upper_xattrs = {n for p in upper.rglob("*") for n in os.listxattr(p, follow_symlinks=False)}
    assert {"trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.metacopy"} <= upper_xattrs
    assert stat.S_ISCHR(os.lstat(upper / "etc/remove-me").st_mode)

    copy_tree(upper, tmp_path / "upper2")
    assert_same_tree(upper, tmp_path / "upper2")
    (tmp_path / "work2").mkdir()
    with overlay(tmp_path / "upper2", tmp_path / "work2", tmp_path / "merged2") as merged2:
        assert digest(merged2) == view
        assert not (merged2 / "etc/remove-me").exists()
        assert [p.name for p in (merged2 / "opt/app/data").iterdir()] == ["new.db"]
        assert (merged2 / "srv/new/page.html").read_text() == "<p>old</p>"


# -- many files ----------------------------------------------------------------


def test_ten_thousand_small_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(100):
        d = src / f"dir{i:03}"
        d.mkdir(parents=True)
        for j in range(100):
            (d / f"file{j:03}").write_bytes(b"x" * (j * 10))
    stats = copy_tree(src, tmp_path / "dst")
    assert stats.files == 10_000 and stats.dirs == 101
    assert_same_tree(src, tmp_path / "dst")


def test_link_dest_never_trusts_a_file_changed_since_it_was_taken(noreflink_dir: Path) -> None:
    """A rewrite that keeps size and mtime (touch -r, tar -x) is still copied: ctime tells."""
    src = noreflink_dir / "src"
    src.mkdir()
    (src / "same").write_bytes(b"A" * 100)
    (src / "sneaky").write_bytes(b"B" * 100)
    first = noreflink_dir / "first"
    started = time.time_ns()
    copy_tree(src, first)
    mtime = os.stat(src / "sneaky").st_mtime_ns
    time.sleep(0.01)
    (src / "sneaky").write_bytes(b"C" * 100)  # same size ...
    os.utime(src / "sneaky", ns=(mtime, mtime))  # ... and mtime put back
    second = noreflink_dir / "second"
    stats = copy_tree(src, second, link_dest=first, unchanged_since_ns=started)
    assert (second / "sneaky").read_bytes() == b"C" * 100
    assert os.stat(second / "same").st_ino == os.stat(first / "same").st_ino
    assert stats.linked == 1
    # without the ctime rule the old quick check would have linked the stale copy
    third = noreflink_dir / "third"
    copy_tree(src, third, link_dest=first)
    assert (third / "sneaky").read_bytes() == b"B" * 100


# -- depth, links beyond PATH_MAX, a tree that changes ---------------------------


def _same_inode(fd: int, a: str, b: str) -> bool:
    return os.stat(a, dir_fd=fd, follow_symlinks=False).st_ino == os.stat(b, dir_fd=fd, follow_symlinks=False).st_ino


def test_hard_links_beyond_path_max(tmp_path: Path) -> None:
    src, snap, back = tmp_path / "src", tmp_path / "snap", tmp_path / "back"
    long = b"a-longish-name"  # 300 levels of 15 bytes: the pairs at the bottom lie beyond PATH_MAX
    build_deep(src, 300, long, every=100)
    copy_tree(src, snap)
    copy_tree(snap, back)
    for tree in (snap, back):
        fd, depth = bottom(tree, long)
        try:
            assert depth == 300
            assert _same_inode(fd, "a", "b") and _same_inode(fd, "s1", "s2")
        finally:
            os.close(fd)
    assert walk_digest(src) == walk_digest(snap) == walk_digest(back)


def test_hard_links_past_the_descriptor_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More pending link groups than LINK_FDS: the rest link by a component-wise path walk."""
    monkeypatch.setattr(treecopy, "LINK_FDS", 2)
    src = tmp_path / "src"
    long = b"a-longish-name"
    build_deep(src, 300, long, every=100)
    fd, _ = bottom(src, long)
    try:
        for i in range(5):  # first names here, second names in the parent, visited after
            os.close(os.open(f"g{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            os.link(f"g{i}", f"../z{i}", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    walks: list[bytes] = []
    by_path = treecopy._Copier._link_by_path
    monkeypatch.setattr(treecopy._Copier, "_link_by_path",
                        lambda self, rel, d, name: (walks.append(rel), by_path(self, rel, d, name)))
    copy_tree(src, tmp_path / "snap")
    assert len(walks) >= 3 and all(len(rel) > 4096 for rel in walks)
    assert walk_digest(src) == walk_digest(tmp_path / "snap")


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs: 10,000 mkdirs take seconds on a busy ext4, milliseconds here; unmounting removes all."""
    require_root()
    with mounted(tmp_path / "tmpfs", "-t", "tmpfs", "-o", "size=256m", "tmpfs") as d:
        yield d


@pytest.fixture
def low_fd_limit() -> Iterator[int]:
    """The default soft limit of 1024 descriptors, as a daemon started by hand has it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        yield 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_ten_thousand_levels_copy_with_1024_descriptors(tmpfs_dir: Path, low_fd_limit: int) -> None:
    src, snap, back = tmpfs_dir / "src", tmpfs_dir / "snap", tmpfs_dir / "back"
    build_deep(src, 10_000)
    stats = copy_tree(src, snap)
    assert stats.dirs == 10_001
    copy_tree(snap, back)
    assert stats.exclusive_bytes == tree_exclusive_bytes(snap)
    assert walk_digest(src) == walk_digest(snap) == walk_digest(back)
    fd, depth = bottom(back)
    try:
        assert depth == 10_000 and _same_inode(fd, "a", "b") and _same_inode(fd, "s1", "s2")
    finally:
        os.close(fd)
    remove_deep(back)  # the test helper itself, on the same tree
    assert not back.exists()


def test_an_entry_that_changes_once_is_copied_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "flip").mkdir(parents=True)
    (src / "flip/inside").write_text("a dir")
    (src / "other").write_text("stays")
    calls = flip_on_every_visit(monkeypatch, src, times=1)
    stats = copy_tree(src, tmp_path / "dst")
    assert calls[0] == 1 and stats.retried == 1
    assert (tmp_path / "dst/flip").read_text() == "now a file"
    after = digest(tmp_path / "dst")
    # the flip touched src's own mtime after the copier read it; everything else is exact
    assert {k: v for k, v in digest(src).items() if k != b"."} == {k: v for k, v in after.items() if k != b"."}


def test_an_entry_that_keeps_changing_gives_tree_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "flip").mkdir(parents=True)
    (src / "flip/inside").write_text("a dir")
    flip_on_every_visit(monkeypatch, src, times=1000)
    with pytest.raises(treecopy.TreeChanged) as err:
        copy_tree(src, tmp_path / "dst")
    assert err.value.path == b"flip"
    # what was built for it is gone again: the caller removes dst, nothing else is half-made
    assert os.listdir(tmp_path / "dst") == []


def test_a_genuine_error_is_not_taken_for_a_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("target", src / "link")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(treecopy.os, "symlink", broken)
    with pytest.raises(OSError) as err:
        copy_tree(src, tmp_path / "dst")
    assert err.value.errno == errno.EINVAL and not isinstance(err.value, treecopy.TreeChanged)


def test_a_directory_moved_away_while_copied_deep_down_gives_tree_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below KEEP_OPEN a parent is re-opened through "..": if that is another directory now, stop."""
    monkeypatch.setattr(treecopy, "KEEP_OPEN", 1)
    src = tmp_path / "src"
    write_tree(src, {"a/b/c/leaf": "x"})
    copy_regular = treecopy._Copier._copy_regular

    def move_b_out(self, d, name):  # type: ignore[no-untyped-def]
        if name == b"leaf":
            os.rename(src / "a/b", src / "b-moved")
        return copy_regular(self, d, name)

    monkeypatch.setattr(treecopy._Copier, "_copy_regular", move_b_out)
    with pytest.raises(treecopy.TreeChanged, match="a directory was moved while it was copied"):
        copy_tree(src, tmp_path / "dst")
