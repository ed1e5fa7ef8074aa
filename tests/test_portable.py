"""The portable stream on its own (backends/portable.py): exact round trips of hostile trees,
and hostile streams that must be refused without writing outside the destination."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Callable

import pytest

from backends import portable
from backends.base import Backend, SnapshotFacts
from backends.overlay import OverlayBackend
from backends.portable import Header, StreamError, StreamReader, write_stream
from snapd.core.errors import Conflict
from snapd.core.service import SnapshotService
from snapd.core.store import Store

from .digest import walk_digest, write_tree

HEADER = Header(container="a" * 24, snapshot="s1", created_at=1.5)


def stream_of(tree: Path, base: Path | None = None, **header: object) -> bytes:
    out = io.BytesIO()
    h = Header(**{**HEADER.__dict__, **({"base": "s0"} if base else {}), **header})  # type: ignore[arg-type]
    write_stream(out.write, h, str(tree), str(base) if base else None)
    return out.getvalue()


def apply(stream: bytes, dest: Path, incremental: bool = False) -> portable.Stats:
    return StreamReader(io.BytesIO(stream)).apply(str(dest), incremental=incremental)


def crafted(members: Callable[[tarfile.TarFile], None], deletions: bytes = b"") -> bytes:
    """A well-framed stream with a valid checksum around tar members a hostile sender chose."""
    out = io.BytesIO()
    frames = portable._FrameWriter(out.write, "none")
    frames.raw(portable.MAGIC)
    frames.frame(portable.HEADER, HEADER.encode())
    with tarfile.open(fileobj=frames, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        members(tar)
    frames.flush_tar()
    if deletions:
        frames.frame(portable.DELETIONS, deletions)
    frames.frame(portable.END, frames.hash.digest())
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> Callable:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size, info.mode = kind, linkname, len(data), 0o644
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return add


def members(*adds: Callable) -> Callable[[tarfile.TarFile], None]:
    def all_(tar: tarfile.TarFile) -> None:
        for add in adds:
            add(tar)
    return all_


ROOT = member(".", tarfile.DIRTYPE)
HOSTILE = {
    "absolute": members(ROOT, member("/etc/evil")),
    "dot-dot": members(ROOT, member("../evil")),
    "dot-dot-inside": members(ROOT, member("a/../../evil")),
    "through-a-symlink": members(ROOT, member("out", tarfile.SYMTYPE, linkname="{outside}"), member("out/evil")),
    "hard-link-through-a-symlink": members(ROOT, member("out", tarfile.SYMTYPE, linkname="{outside}"),
                                           member("stolen", tarfile.LNKTYPE, linkname="out/secret")),
    "hard-link-outside": members(ROOT, member("stolen", tarfile.LNKTYPE, linkname="../outside/secret")),
    "hard-link-to-nothing": members(ROOT, member("stolen", tarfile.LNKTYPE, linkname="nothing")),
    "before-its-directory": members(ROOT, member("d/e/f")),
    "name-too-long": members(ROOT, member("x" * 300)),
    "root-not-a-directory": members(member(".", tarfile.REGTYPE)),
    "unsupported-type": members(ROOT, member("weird", b"Z")),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_members_are_refused_and_nothing_leaves_the_tree(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    dest = tmp_path / "dest"
    dest.mkdir()

    def patched(tar: tarfile.TarFile) -> None:
        real = tar.addfile

        def addfile(info: tarfile.TarInfo, fileobj=None) -> None:  # type: ignore[no-untyped-def]
            info.linkname = info.linkname.replace("{outside}", str(outside))
            real(info, fileobj)
        tar.addfile = addfile  # type: ignore[method-assign]
        HOSTILE[case](tar)

    with pytest.raises(StreamError):
        apply(crafted(patched), dest)
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "secret"
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    for entry in dest.rglob("*"):  # nothing in dest shares an inode with the outside file
        assert entry.is_symlink() or os.lstat(entry).st_ino != os.lstat(outside / "secret").st_ino


def test_a_deletion_the_base_lacks_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(StreamError, match="not the same base"):
        apply(crafted(members(ROOT), deletions=b"missing\0"), dest, incremental=True)
    for bad in (b"../x\0", b"/etc/passwd\0", b".\0"):
        with pytest.raises(StreamError):
            apply(crafted(members(ROOT), deletions=bad), dest, incremental=True)


@pytest.mark.parametrize("header,reason", [
    ({"container": "A" * 24}, "container"), ({"snapshot": "../x"}, "snapshot"), ({"base": ""}, "base"),
    ({"created_at": float("nan")}, "created_at"), ({"created_at": True}, "created_at"),
    ({"expires_at": "soon"}, "expires_at"), ({"alias": "a\u202eb"}, "alias"), ({"alias": "x" * 101}, "alias"),
    ({"layout": "merged"}, "layout"), ({"compression": "lzma"}, "compression"), ({"project": "a/b"}, "project"),
])
def test_bad_headers_are_refused(header: dict, reason: str) -> None:
    raw = Header(**{**HEADER.__dict__, **header}).encode()  # type: ignore[arg-type]
    framed = portable.MAGIC + portable._FRAME.pack(portable.HEADER, len(raw)) + raw
    with pytest.raises(StreamError, match=reason):
        StreamReader(io.BytesIO(framed))


def test_a_future_format_is_refused_by_name() -> None:
    raw = HEADER.encode().replace(b'"format": 1', b'"format": 3')
    framed = portable.MAGIC + portable._FRAME.pack(portable.HEADER, len(raw)) + raw
    with pytest.raises(StreamError, match="format 3 is not supported"):
        StreamReader(io.BytesIO(framed))


def _framed_header(raw: bytes) -> bytes:
    return portable.MAGIC + portable._FRAME.pack(portable.HEADER, len(raw)) + raw


NATIVE = Header(**{**HEADER.__dict__, "native": "btrfs"})  # type: ignore[arg-type]


def native_stream(chunks: list[bytes], header: Header = NATIVE) -> bytes:
    framer = portable.NativeFramer(header)
    return framer.start() + b"".join(b"".join(framer.frames(c)) for c in chunks) + framer.end()


def test_a_portable_header_is_format_1_without_native_and_a_native_one_format_2() -> None:
    assert b'"format": 1' in HEADER.encode() and b"native" not in HEADER.encode()
    assert b'"format": 2' in NATIVE.encode() and b'"native": "btrfs"' in NATIVE.encode()
    assert StreamReader(io.BytesIO(_framed_header(NATIVE.encode()))).header == NATIVE
    for bad, reason in ((HEADER.encode().replace(b'"format": 1', b'"format": 1, "native": "btrfs"'), "native"),
                        (NATIVE.encode().replace(b'"btrfs"', b'"../x"'), "bad native"),
                        (NATIVE.encode().replace(b'"native": "btrfs", ', b""), "bad native"),
                        (NATIVE.encode().replace(b'"none"', b'"zstd"'), "compression none")):
        with pytest.raises(StreamError, match=reason):
            StreamReader(io.BytesIO(_framed_header(bad)))


def test_a_native_stream_gives_its_bytes_back_and_checks_its_trailer() -> None:
    data = [os.urandom(100), b"", os.urandom(portable.MAX_FRAME + 5), os.urandom(7)]
    stream = native_stream(data)
    reader = StreamReader(io.BytesIO(stream))
    source = reader.native()
    got = b"".join(iter(lambda: source.read(1 << 20), b""))
    assert got == b"".join(data)
    assert source.finish() == len(stream)
    with pytest.raises(StreamError, match="native btrfs stream where a portable"):
        StreamReader(io.BytesIO(stream)).apply("/nonexistent", incremental=False)
    with pytest.raises(StreamError, match="portable stream where a native"):
        StreamReader(io.BytesIO(_framed_header(HEADER.encode()))).native()


@pytest.mark.parametrize("case", ["flip", "truncated", "padded", "unread", "tar-frame"])
def test_a_bad_native_stream_fails_at_finish_at_the_latest(case: str) -> None:
    stream = bytearray(native_stream([b"x" * 1000, b"y" * 1000]))
    if case == "flip":
        stream[len(stream) // 2] ^= 0x10
    elif case == "truncated":
        del stream[-10:]
    elif case == "padded":
        stream += b"\0"
    elif case == "tar-frame":
        stream[-(37 + 1005)] = ord(portable.TAR)  # the second data frame's type byte
    with pytest.raises(StreamError):
        source = StreamReader(io.BytesIO(bytes(stream))).native()
        if case != "unread":  # the filesystem's receive stopped early: bytes left over
            while source.read(1 << 20):
                pass
        else:
            source.read(10)
        source.finish()


def test_every_single_bit_flip_of_a_small_stream_is_caught(tmp_path: Path) -> None:
    """Flip each bit of each byte of a small stream in turn: never accepted."""
    tree = tmp_path / "t"
    write_tree(tree, {"a": "alpha", "d/b": "beta"})
    stream = stream_of(tree)
    for at in range(0, len(stream), max(1, len(stream) // 400)):
        for bit in (0x01, 0x80):
            bad = bytearray(stream)
            bad[at] ^= bit
            dest = tmp_path / f"d{at}-{bit}"
            dest.mkdir()
            with pytest.raises(StreamError):
                apply(bytes(bad), dest)


def test_incremental_round_trip_with_type_changes(tmp_path: Path) -> None:
    base, snap = tmp_path / "base", tmp_path / "snap"
    write_tree(base, {"f": "file", "d/x": "x", "keep": "same", "gone/deep/y": "y"})
    write_tree(snap, {"f/now-a-dir": "z", "keep": "same"})
    os.symlink("target", snap / "d")  # a directory became a symlink
    os.utime(base / "keep", ns=(5, 5))
    os.utime(snap / "keep", ns=(5, 5))
    stream = stream_of(snap, base)
    dest = tmp_path / "dest"
    dest.mkdir()
    apply(stream_of(base), dest)
    stats = apply(stream, dest, incremental=True)
    assert stats.deletions == 1  # gone/
    assert walk_digest(dest) == walk_digest(snap)


class _NoImports(OverlayBackend):
    """A pool that receives no portable streams (as ZFS pools, for now)."""

    accepts_imports = False

    async def receive(self, *args: object, **kwargs: object) -> SnapshotFacts:
        return await Backend.receive(self, *args, **kwargs)  # type: ignore[arg-type]


async def test_pools_that_receive_nothing_are_passed_over_or_named(tmp_path: Path) -> None:
    """A new container goes to the first pool that accepts imports; with none, or with `pool`
    naming one that does not, or into a container living in one, the answer is a 409 naming
    the pool, and nothing is made."""
    cid = "b" * 24
    tree = tmp_path / "tree"
    write_tree(tree, {"f": "x"})
    stream = stream_of(tree, container=cid)
    roots = {k: tmp_path / k for k in ("none", "yes")}
    for root in roots.values():
        root.mkdir()
    refusing, accepting = _NoImports(str(roots["none"])), OverlayBackend(str(roots["yes"]))
    store = Store(tmp_path / "snapd.db")
    try:
        for backends, pool, answer in (([refusing], None, Conflict), ([refusing, accepting], refusing.pool_id, Conflict),
                                       ([refusing, accepting], None, None)):
            service = SnapshotService(store, backends)
            for b in backends:
                await b.open()
            chunks = iter([stream, b""])

            async def pull() -> bytes:
                return next(chunks)

            if answer is None:
                container, row = await service.import_stream(cid, pull, pool, lambda project: True)
                assert container.backend is accepting and row.name == "s1"
            else:
                with pytest.raises(answer) as exc:
                    await service.import_stream(cid, pull, pool, lambda project: True)
                assert exc.value.details[0]["field"] == "pool"
                assert not (roots["none"] / cid).exists()
            await service.drain()
        (roots["none"] / ("c" * 24)).mkdir()  # a container of the refusing pool
        chunks = iter([stream_of(tree, container="c" * 24), b""])

        async def pull_c() -> bytes:
            return next(chunks)

        with pytest.raises(Conflict) as exc:
            await SnapshotService(store, [refusing, accepting]).import_stream("c" * 24, pull_c, None, lambda p: True)
        assert "cannot receive" in exc.value.message
        assert os.listdir(roots["none"] / ".snapshots" / ".tmp") == []
    finally:
        store.close()


def _dir(name: str, mode: int) -> Callable:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        tar.addfile(info)
    return add


@pytest.mark.parametrize("case", ["dir-then-symlink", "parent-then-symlink", "dir-then-hard-link"])
def test_a_directory_replaced_later_in_the_stream_never_passes_its_attributes_on(tmp_path: Path, case: str) -> None:
    """A directory's owner, mode and times are set at the end of the tar.  A stream that
    names a directory, then puts a symlink (to the host) or a hard link (to a base file,
    shared with the base snapshot) at that path, or at its parent, must not have them set
    through it."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    os.chmod(outside, 0o700)
    os.chmod(outside / "sub", 0o700)
    base_file = tmp_path / "base-file"
    base_file.write_text("base")
    os.chmod(base_file, 0o600)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.link(base_file, dest / "f")  # as an overlay incremental's linked copy of the base
    before = {p: os.lstat(p) for p in (outside, outside / "sub", base_file)}
    adds = {
        "dir-then-symlink": [_dir("v", 0o4777), member("v", tarfile.SYMTYPE, linkname=str(outside))],
        "parent-then-symlink": [_dir("v", 0o755), _dir("v/sub", 0o4777),
                                member("v", tarfile.SYMTYPE, linkname=str(outside))],
        "dir-then-hard-link": [_dir("v", 0o4777), member("v", tarfile.LNKTYPE, linkname="f")],
    }[case]
    try:
        apply(crafted(members(ROOT, *adds)), dest, incremental=True)
    except StreamError:
        pass
    for path, st in before.items():
        now = os.lstat(path)
        assert (now.st_mode, now.st_uid, now.st_mtime_ns) == (st.st_mode, st.st_uid, st.st_mtime_ns), path


@pytest.mark.skipif("zstd" not in portable.compressions(), reason="the zstandard module is not installed")
def test_a_compressed_stream_is_decompressed_in_bounded_pieces(tmp_path: Path) -> None:
    """zstd packs 256 MiB of zeros (a sparse file, sent in full) into a few KiB: the reader
    must not inflate a whole read of compressed data into memory at once."""
    import tracemalloc

    tree = tmp_path / "t"
    tree.mkdir()
    with open(tree / "sparse", "wb") as f:
        f.truncate(256 << 20)
    stream = stream_of(tree, compression="zstd")
    assert len(stream) < 1 << 20
    dest = tmp_path / "dest"
    dest.mkdir()
    tracemalloc.start()
    try:
        apply(stream, dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert os.path.getsize(dest / "sparse") == 256 << 20
    assert peak < 32 << 20, f"peak {peak >> 20} MiB"


def _raw_tar(data: bytes) -> bytes:
    """A well-framed stream (valid checksum) around raw tar bytes a hostile sender wrote."""
    out = io.BytesIO()
    frames = portable._FrameWriter(out.write, "none")
    frames.raw(portable.MAGIC)
    frames.frame(portable.HEADER, HEADER.encode())
    frames.write(data + bytes(1024))
    frames.flush_tar()
    frames.frame(portable.END, frames.hash.digest())
    return out.getvalue()


def _tar_bytes(info: tarfile.TarInfo, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return info.tobuf(fmt, "utf-8", "surrogateescape")


@pytest.mark.parametrize("case", ["huge-pax-header", "huge-long-name", "long-name-chain", "global-header",
                                  "gnu-sparse", "gnu-sparse-map"])
def test_tar_headers_that_would_take_unbounded_memory_or_stack_are_refused(tmp_path: Path, case: str) -> None:
    """Python's tarfile reads a PAX or GNU long-name header whole into memory, follows a chain
    of them by recursion, and keeps global headers for the rest of the archive: a stream's
    tar headers are bounded, chained a few deep at most, never global, never GNU sparse maps."""
    import tracemalloc

    plain = tarfile.TarInfo("f")
    if case == "huge-pax-header":
        plain.pax_headers = {"comment": "x" * (48 << 20)}
        raw = _tar_bytes(plain)
    elif case == "huge-long-name":
        raw = tarfile.TarInfo._create_gnu_long_header("n" * (48 << 20), tarfile.GNUTYPE_LONGNAME, "utf-8", "strict")
        raw += _tar_bytes(plain, tarfile.GNU_FORMAT)
    elif case == "long-name-chain":
        one = tarfile.TarInfo._create_gnu_long_header("n" * 10, tarfile.GNUTYPE_LONGNAME, "utf-8", "strict")
        raw = one * 5000 + _tar_bytes(plain, tarfile.GNU_FORMAT)
    elif case == "global-header":
        raw = tarfile.TarInfo.create_pax_global_header({"SCHILY.xattr.user.x": "y"}) + _tar_bytes(plain)
    elif case == "gnu-sparse-map":  # a map read from the header; 10**15 bytes of holes looped forever
        plain.pax_headers = {"GNU.sparse.map": "0,0", "GNU.sparse.realsize": str(1 << 30),
                             "GNU.sparse.major": "0", "GNU.sparse.minor": "1"}
        raw = _tar_bytes(plain)
    else:
        plain.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}
        plain.size = 512
        raw = _tar_bytes(plain) + b"99999999999\n" + b"1\n" * 2000
    dest = tmp_path / "dest"
    dest.mkdir()
    stream = _raw_tar(raw)
    tracemalloc.start()
    try:
        with pytest.raises(StreamError):
            apply(stream, dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(stream) + (16 << 20), f"peak {peak >> 20} MiB"
