"""backends.treecopy on real directories, a tmpfs and a real overlayfs."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backends import treecopy
from backends.treecopy import copy_tree, reflink_supported, tree_exclusive_bytes

MiB = 1 << 20
SPARSE_SIZE = 100 * MiB
DEEP = 300  # levels of 15-character names: the deepest path exceeds PATH_MAX


def require_root() -> None:
    """Skip (fail under CI=true) when not root."""
    if os.geteuid() != 0:
        msg = "needs root: owners, device nodes, trusted.* xattrs and mounts"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    """Mount something of ours on `target`; always unmount it again."""
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)


@pytest.fixture
def noreflink_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a filesystem without reflinks (tmp_path, or a tmpfs under it)."""
    if not reflink_supported(tmp_path):
        yield tmp_path
        return
    require_root()
    with mounted(tmp_path / "tmpfs", "-t", "tmpfs", "-o", "size=256m", "tmpfs") as d:
        yield d


# -- the digest -----------------------------------------------------------


def _proc(dir_fd: int, name: bytes) -> bytes:
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _content(dir_fd: int, name: bytes) -> str:
    h = hashlib.sha256()
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        while chunk := os.read(fd, 4 * MiB):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def digest(root: Path) -> dict[bytes, tuple]:
    """Everything copy_tree must preserve, per relative path (atime and inode numbers aside)."""
    out: dict[bytes, tuple] = {}
    inodes: dict[int, list[bytes]] = {}
    broot = os.fsencode(root)
    for top, dirs, files, dir_fd in os.fwalk(broot, follow_symlinks=False):
        reltop = os.path.relpath(top, broot)
        entries = [(b".", b".")] if top == broot else []
        entries += [(n, os.path.normpath(os.path.join(reltop, n))) for n in dirs + files]
        for name, rel in entries:
            if name == b".":
                st, ref = os.stat(dir_fd), dir_fd
            else:
                st, ref = os.stat(name, dir_fd=dir_fd, follow_symlinks=False), _proc(dir_fd, name)
            kind = stat.S_IFMT(st.st_mode)
            follow = isinstance(ref, int)
            xattrs = tuple(
                sorted((n, os.getxattr(ref, n, follow_symlinks=follow)) for n in os.listxattr(ref, follow_symlinks=follow))
            )
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = _content(dir_fd, name)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(name, dir_fd=dir_fd)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            size = None if stat.S_ISDIR(st.st_mode) else st.st_size
            out[rel] = (kind, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, extra, xattrs)
            if not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(rel)
    for paths in inodes.values():
        for rel in paths:
            out[rel] += (tuple(sorted(paths)),)
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    da, db = digest(a), digest(b)
    assert sorted(da) == sorted(db)
    diffs = {k: (da[k], db[k]) for k in da if da[k] != db[k]}
    assert not diffs


# -- a rootfs-like source -------------------------------------------------


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """The system.posix_acl_* xattr value for (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


NO_ID = 0xFFFFFFFF
ACL = posix_acl((0x01, 7, NO_ID), (0x02, 5, 1234), (0x04, 5, NO_ID), (0x10, 5, NO_ID), (0x20, 4, NO_ID))
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # VFS_CAP_REVISION_2, effective


def set_times(path: Path | bytes, ns: int, *, dir_fd: int | None = None) -> None:
    os.utime(path, ns=(ns - 7_000_000_123, ns), dir_fd=dir_fd, follow_symlinks=False)


def build_rootfs(root: Path) -> dict[str, bool]:
    """A tree with everything a container root filesystem can hold; returns optional features made."""
    made = {"acl": True, "caps": True}
    root.mkdir()
    for d in ("etc", "usr/bin", "usr/lib", "home/user", "dev", "run", "var/empty", "layer/opaque", "layer/moved"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/shadow").write_text("root:*:1::::::\n")
    os.chown(root / "etc/shadow", 0, 42)
    os.chmod(root / "etc/shadow", 0o640)
    (root / "home/user/notes").write_bytes(os.urandom(5000))
    for p in ("home/user", "home/user/notes"):
        os.chown(root / p, 1234, 1234)
    os.chmod(root / "home/user", 0o2750)
    (root / "usr/bin/su").write_bytes(b"\x7fELF" + os.urandom(20000))
    os.chmod(root / "usr/bin/su", 0o4755)
    (root / "usr/bin/wall").write_bytes(b"\x7fELF wall")
    os.chown(root / "usr/bin/wall", 0, 5)
    os.chmod(root / "usr/bin/wall", 0o2755)
    (root / "usr/bin/ping").write_bytes(b"\x7fELF ping")
    try:
        os.setxattr(root / "usr/bin/ping", "security.capability", CAP_NET_RAW)
    except OSError:
        made["caps"] = False
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    os.setxattr(root, "user.root-label", b"rootfs")
    os.setxattr(root / "etc/passwd", "user.mime", b"text/plain")
    os.setxattr(root / "etc", "user.empty", b"")
    os.setxattr(root / "layer/opaque", "trusted.overlay.opaque", b"y")
    os.setxattr(root / "layer/moved", "trusted.overlay.redirect", b"/layer/original")
    try:
        os.setxattr(root / "home/user/notes", "system.posix_acl_access", ACL)
        os.setxattr(root / "home/user", "system.posix_acl_default", ACL)
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
        made["acl"] = False
    # Whiteouts (overlayfs shares one inode between them), devices, FIFO, socket.
    os.mknod(root / "layer/deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.link(root / "layer/deleted", root / "layer/deleted-too")
    os.setxattr(root / "layer/deleted", "trusted.overlay.origin", b"\x00\xfb\x21")
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "dev/loop99", stat.S_IFBLK | 0o660, os.makedev(7, 99))
    os.chown(root / "dev/loop99", 0, 6)
    os.mkfifo(root / "run/initctl", 0o600)
    os.mknod(root / "run/sock", stat.S_IFSOCK | 0o755)
    # Symlinks: relative, absolute (must not be followed: host's /etc!), dangling, to a dir, odd bytes.
    os.symlink("../etc/passwd", root / "usr/passwd-link")
    os.symlink("/etc/shadow", root / "usr/host-shadow")
    os.symlink("nowhere/at/all", root / "usr/dangling")
    os.symlink("usr/lib", root / "lib")
    os.symlink(b"target-\xff\xfe", os.fsencode(root / "usr/odd-target"))
    os.chown(root / "usr/passwd-link", 1234, 1234, follow_symlinks=False)
    os.setxattr(root / "usr/dangling", "trusted.note", b"symlink xattr", follow_symlinks=False)
    # Hard links: three names across directories, and a hard-linked symlink.
    (root / "usr/lib/libc.so").write_bytes(os.urandom(30000))
    os.link(root / "usr/lib/libc.so", root / "usr/lib/libc.so.6")
    os.link(root / "usr/lib/libc.so", root / "etc/libc-copy")
    os.link(root / "usr/passwd-link", root / "etc/passwd-link-2", follow_symlinks=False)
    # Sparse: 100 MiB with two small data regions; and one that starts and ends with data.
    fd = os.open(root / "var/sparse.img", os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, b"A" * 4096, 1 * MiB)
    os.pwrite(fd, b"B" * 8192, 60 * MiB)
    os.ftruncate(fd, SPARSE_SIZE)
    os.close(fd)
    fd = os.open(root / "var/ends.img", os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, b"head", 0)
    os.pwrite(fd, b"tail", 8 * MiB - 4)
    os.close(fd)
    (root / "var/empty-file").touch()
    Path(os.fsdecode(os.fsencode(root / "etc") + b"/caf\xe9-\xff\x80.conf")).write_bytes(b"latin-1 name")
    os.mkdir(os.fsencode(root / "etc") + b"/dir-\xfe")
    # Deep nesting past PATH_MAX (created relative to descriptors).
    fd = os.open(root / "var", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEEP):
        os.mkdir("deep-directory", dir_fd=fd)
        nfd = os.open("deep-directory", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    os.close(fd)
    # Distinct times everywhere, directories last (their contents are done).
    now = time.time_ns()
    for top, dirs, files, dfd in os.fwalk(os.fsencode(root), topdown=False, follow_symlinks=False):
        for i, name in enumerate(files + dirs):
            set_times(name, now - 10**9 * (i + 1) - 123_457, dir_fd=dfd)
    set_times(root, now - 99_000_000_001)
    return made


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


# -- speed ----------------------------------------------------------------


def test_ten_thousand_small_files_copy_fast(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(100):
        d = src / f"dir{i:03}"
        d.mkdir(parents=True)
        for j in range(100):
            (d / f"file{j:03}").write_bytes(b"x" * (j * 10))
    start = time.monotonic()
    stats = copy_tree(src, tmp_path / "dst")
    elapsed = time.monotonic() - start
    assert stats.files == 10_000 and stats.dirs == 101
    assert elapsed < 15, f"copying 10,000 small files took {elapsed:.1f}s"
