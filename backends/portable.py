"""The portable snapshot stream: one snapshot (or the changes since a base) as bytes any
backend can receive.

A stream is a magic string followed by frames, each a type byte, a 4-byte big-endian
length and that many bytes:

    b"CSNAPD\\x00\\x01"  magic
    H  header          JSON: format version, container id, its project label, snapshot
                       name, created_at, alias, expires_at, base snapshot name (null:
                       a full stream),
                       layout (what the snapshot captured: "whole" or "upper"),
                       compression ("none" or "zstd")
    T  tar data ...    a POSIX.1-2001 (PAX) tar of the tree, in frames of at most 1 MiB
                       (zstd-compressed as one stream when the header says so)
    D  deletions ...   NUL-separated paths present in the base and gone from the
                       snapshot (an incremental only)
    E  trailer         SHA-256 of every byte before this frame; nothing may follow

A *native* stream carries a filesystem's own send stream (`btrfs send`, `zfs send`) in the
same envelope, for a receiver whose pool is of that kind:

    b"CSNAPD\x00\x01"  magic
    H  header          as above with "format": 2 and "native": the kind ("btrfs", "zfs");
                       layout "whole", compression "none"
    N  native data ... the filesystem's stream, in frames of at most MAX_FRAME
    E  trailer         SHA-256 of every byte before this frame; nothing may follow

A portable stream keeps format 1 and has no "native" key, so streams written before
native ones existed read as they always did, and a daemon that predates them refuses
a native stream by its format number instead of misreading it.  The receiver hands
the N frames' bytes to the filesystem's receive into scratch and makes the snapshot
visible only once the trailer matched and nothing followed it (NativeSource.finish).

The tar keeps owners, modes, mtimes to the nanosecond (PAX `mtime`), xattrs
(`SCHILY.xattr.*`, binary values included), hard links, symlinks (never followed),
device nodes and FIFOs, and names that are not UTF-8 (PAX `hdrcharset=BINARY`).
Sparse files are sent in full (tarfile cannot write PAX sparse maps) and written
sparse on receive: blocks of zeros become holes.  An incremental holds only the
entries whose type, mode, owner, mtime, size, xattrs, link target or content differ
from the base's (a regular file whose inode and ctime match the base's is
unchanged; otherwise equal metadata is confirmed by comparing content), plus the
deletions.

Writer and reader work in constant memory: the writer emits frames as the tar
grows; the reader extracts each entry as it arrives into a scratch directory the
caller owns, and `StreamReader.apply` returns only after the trailer's checksum
matched and nothing followed it.  The caller makes the tree visible only then, so a
truncated, corrupted or padded stream never becomes a snapshot.

Compression: none by default.  Snapshot data is often already compressed (images,
packages) and the daemon's own streams usually go into something that compresses
(restic, borg, an object store); on a LAN, compression would cap throughput at one
core's speed.  "zstd" is offered when the `zstandard` package (maintained bindings
of the reference zstd library; the `zstd` extra) is installed: fast enough not to
be the bottleneck, and streaming.  Without it a zstd stream is refused, never
misread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import stat
import struct
import tarfile
import unicodedata
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from . import beneath
from .base import BackendError, NoSpace

MAGIC = b"CSNAPD\x00\x01"
MEDIA_TYPE = "application/vnd.container-snapd.stream"
"""The stream's media type over HTTP (export answers, import bodies, replication)."""
FORMAT = 1
NATIVE_FORMAT = 2
"""The format number of a native stream (header key "native")."""
PORTABLE = "portable"
"""The name of the portable stream among stream kinds (beside native kinds: "btrfs", "zfs")."""
_FRAME = struct.Struct(">cI")
HEADER, TAR, DELETIONS, END, NATIVE = b"H", b"T", b"D", b"E", b"N"
CHUNK = 1 << 20
"""Bytes of tar data (or deletion paths) per frame."""
MAX_FRAME = 4 << 20
MAX_HEADER = 64 << 10
MAX_TAIL = 64 << 10
"""Tar data after the end-of-archive blocks tolerated (the tar's own record padding)."""
_BLOCK = 64 << 10
_CID = re.compile(r"[0-9a-f]{24}")
_KIND = re.compile(r"[a-z][a-z0-9]{0,15}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_XATTR = "SCHILY.xattr."
_ENTRY_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                           errno.ELOOP, errno.EMLINK, errno.ERANGE, errno.E2BIG})
"""Errors of writing an entry that come from the stream's content, not from the pool."""
OWN_XATTR_PREFIXES = ("trusted.container-snapd.", "user.container-snapd.")
"""The daemon's own labels and tags on a tree's root: never sent, never received."""
LAYOUTS = ("whole", "upper")
MAX_ALIAS = 100


def compressions() -> tuple[str, ...]:
    """The compressions this host can write and read."""
    return ("none", "zstd") if importlib.util.find_spec("zstandard") is not None else ("none",)


class StreamError(BackendError):
    """The stream is not a valid portable stream (truncated, corrupted, malformed)."""


@dataclass(frozen=True)
class Header:
    """What a stream says about the snapshot it carries."""

    container: str
    snapshot: str
    created_at: float
    alias: str | None = None
    expires_at: float | None = None
    base: str | None = None
    layout: str = "whole"
    compression: str = "none"
    project: str | None = None
    native: str | None = None
    """The filesystem whose own send stream the N frames carry (None: a portable stream)."""

    def encode(self) -> bytes:
        data = {"format": FORMAT, "container": self.container, "project": self.project,
                "snapshot": self.snapshot,
                "created_at": self.created_at, "alias": self.alias, "expires_at": self.expires_at,
                "base": self.base, "layout": self.layout, "compression": self.compression}
        if self.native is not None:
            data.update(format=NATIVE_FORMAT, native=self.native)
        return json.dumps(data, ensure_ascii=True, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        """The header in `raw`; StreamError naming the first bad key."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise StreamError("stream header is not JSON") from None
        if not isinstance(data, dict):
            raise StreamError("stream header is not a JSON object")
        native = data.get("native")
        if data.get("format") == NATIVE_FORMAT:
            if not isinstance(native, str) or not _KIND.fullmatch(native):
                raise StreamError("stream header: bad native")
            if data.get("layout") != "whole" or data.get("compression") != "none":
                raise StreamError("stream header: a native stream has layout whole and compression none")
        elif data.get("format") == FORMAT:
            if "native" in data:
                raise StreamError("stream header: native in a format 1 stream")
        else:
            raise StreamError(f"stream format {data.get('format')!r} is not supported "
                              f"(this daemon reads {FORMAT} and {NATIVE_FORMAT})")

        def text(key: str, pattern: re.Pattern[str], optional: bool = False) -> str | None:
            value = data.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise StreamError(f"stream header: bad {key}")
            return value

        def number(key: str, optional: bool = False) -> float | None:
            value = data.get(key)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 <= value < 1e11:
                raise StreamError(f"stream header: bad {key}")
            return float(value)

        alias = data.get("alias")
        if alias is not None and (not isinstance(alias, str) or not 1 <= len(alias) <= MAX_ALIAS or any(
                unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in alias)):
            raise StreamError("stream header: bad alias")
        layout, compression = data.get("layout"), data.get("compression")
        if layout not in LAYOUTS:
            raise StreamError("stream header: bad layout")
        if compression not in ("none", "zstd"):
            raise StreamError("stream header: bad compression")
        if compression not in compressions():
            raise StreamError("stream is zstd-compressed and this daemon has no zstandard module")
        return cls(container=text("container", _CID), snapshot=text("snapshot", _NAME),  # type: ignore[arg-type]
                   created_at=number("created_at"), alias=alias,  # type: ignore[arg-type]
                   expires_at=number("expires_at", True), base=text("base", _NAME, True),
                   layout=layout, compression=compression, project=text("project", _NAME, True),
                   native=native)


@dataclass
class Stats:
    """What a stream carried."""

    bytes: int = 0
    entries: int = 0
    deletions: int = 0


# -- writing ------------------------------------------------------------------------------


class _FrameWriter:
    """Frames to `out`, hashed as they go; also the file object tarfile writes into."""

    def __init__(self, out: Callable[[bytes], None], compression: str) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.stats = Stats()
        self.buf = bytearray()
        self.compressor = None
        if compression == "zstd":
            import zstandard

            self.compressor = zstandard.ZstdCompressor(level=3).compressobj()

    def frame(self, kind: bytes, payload: bytes) -> None:
        head = _FRAME.pack(kind, len(payload))
        if kind != END:
            self.hash.update(head)
            self.hash.update(payload)
        self.stats.bytes += len(head) + len(payload)
        self.out(head + payload)  # one write per frame: each may be a hop to the event loop

    def raw(self, data: bytes) -> None:
        self.hash.update(data)
        self.stats.bytes += len(data)
        self.out(data)

    def write(self, data: bytes) -> int:  # tarfile's sink
        self.buf += self.compressor.compress(data) if self.compressor else data
        while len(self.buf) >= CHUNK:
            self.frame(TAR, bytes(self.buf[:CHUNK]))
            del self.buf[:CHUNK]
        return len(data)

    def flush_tar(self) -> None:
        if self.compressor:
            self.buf += self.compressor.flush()
        if self.buf:
            self.frame(TAR, bytes(self.buf))
            self.buf.clear()


def _mtime(ns: int) -> str:
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _xattrs(path: bytes, skip_own: bool = False) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOSYS):
            return {}
        raise
    out = {}
    for name in names:
        if skip_own and name.startswith(OWN_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return out


def _same_content(a: bytes, b: bytes) -> bool:
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


def _unchanged(path: bytes, st: os.stat_result, xattrs: dict[str, bytes], bpath: bytes,
               bst: os.stat_result) -> bool:
    """Whether the base's entry `bpath` equals the snapshot's `path` (see the module doc)."""
    if (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) != \
            (stat.S_IFMT(bst.st_mode), bst.st_mode, bst.st_uid, bst.st_gid, bst.st_mtime_ns):
        return False
    if _xattrs(bpath) != xattrs:
        return False
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path) == os.readlink(bpath)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return st.st_rdev == bst.st_rdev
    if stat.S_ISREG(st.st_mode):
        if st.st_size != bst.st_size:
            return False
        if st.st_ino == bst.st_ino and st.st_ctime_ns == bst.st_ctime_ns:
            return True
        return _same_content(path, bpath)
    return True


def _listing(path: bytes) -> list[bytes]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _walk(root: bytes, base: bytes | None) -> Iterator[tuple[bytes, bytes, os.stat_result, bytes | None, bool]]:
    """(relative path, path, stat, the base's path or None, is_deletion) depth first, the
    root as b".".  Directories on another device than the root are not descended."""
    rst = os.lstat(root)
    yield b".", root, rst, base, False
    stack: list[tuple[bytes, bytes | None]] = [(b"", base)]
    while stack:
        rel_dir, base_dir = stack.pop()
        here = os.path.join(root, rel_dir) if rel_dir else root
        names = _listing(here)
        base_names = _listing(base_dir) if base_dir is not None else []
        if base_dir is not None:
            present = set(names)
            for gone in base_names:
                if gone not in present:
                    yield os.path.join(rel_dir, gone), b"", rst, None, True
        in_base = set(base_names)
        subdirs = []
        for name in names:
            rel = os.path.join(rel_dir, name)
            path = os.path.join(here, name)
            st = os.lstat(path)
            bpath = os.path.join(base_dir, name) if base_dir is not None and name in in_base else None
            yield rel, path, st, bpath, False
            if stat.S_ISDIR(st.st_mode) and st.st_dev == rst.st_dev:
                if bpath is not None and not stat.S_ISDIR(os.lstat(bpath).st_mode):
                    bpath = None
                subdirs.append((rel, bpath))
        stack.extend(reversed(subdirs))


def write_stream(out: Callable[[bytes], None], header: Header, tree: str, base_tree: str | None = None) -> Stats:
    """Write the stream of directory `tree` (changes since `base_tree` when the header
    names a base) to `out`, a callable taking bytes; constant memory."""
    if (header.base is None) != (base_tree is None):
        raise ValueError("a base tree goes with a header naming a base, and only then")
    frames = _FrameWriter(out, header.compression)
    frames.raw(MAGIC)
    frames.frame(HEADER, header.encode())
    root, base = os.fsencode(tree), os.fsencode(base_tree) if base_tree is not None else None
    links: dict[tuple[int, int], str] = {}
    deletions = bytearray()
    with tarfile.open(fileobj=frames, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape", bufsize=CHUNK) as tar:
        tar.copybufsize = CHUNK
        for rel, path, st, bpath, gone in _walk(root, base):
            if gone:
                deletions += rel + b"\0"  # top-level gone paths only: small beside the tree
                frames.stats.deletions += 1
                continue
            xattrs = _xattrs(path, skip_own=rel == b".")
            if bpath is not None and _unchanged(path, st, xattrs, bpath, os.lstat(bpath)):
                continue
            if _add(tar, rel, path, st, xattrs, links):
                frames.stats.entries += 1
    frames.flush_tar()
    for start in range(0, len(deletions), CHUNK):
        frames.frame(DELETIONS, bytes(deletions[start:start + CHUNK]))
    frames.frame(END, frames.hash.digest())
    return frames.stats


def _add(tar: tarfile.TarFile, rel: bytes, path: bytes, st: os.stat_result, xattrs: dict[str, bytes],
         links: dict[tuple[int, int], str]) -> bool:
    """One entry into the tar; False for what tar cannot hold (sockets)."""
    info = tarfile.TarInfo(rel.decode("utf-8", "surrogateescape"))
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime_ns // 1_000_000_000
    info.pax_headers = {"mtime": _mtime(st.st_mtime_ns)}
    for name, value in xattrs.items():
        info.pax_headers[_XATTR + name] = value.decode("utf-8", "surrogateescape")
    kind = stat.S_IFMT(st.st_mode)
    if kind != stat.S_IFDIR and st.st_nlink > 1:
        first = links.setdefault((st.st_dev, st.st_ino), info.name)
        if first != info.name:
            info.type, info.linkname = tarfile.LNKTYPE, first
            tar.addfile(info)
            return True
    if kind == stat.S_IFREG:
        info.size = st.st_size
        with open(path, "rb", buffering=0) as f:
            tar.addfile(info, f)
        return True
    if kind == stat.S_IFDIR:
        info.type = tarfile.DIRTYPE
    elif kind == stat.S_IFLNK:
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path).decode("utf-8", "surrogateescape")
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        info.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif kind == stat.S_IFIFO:
        info.type = tarfile.FIFOTYPE
    else:
        return False
    tar.addfile(info)
    return True


# -- reading ------------------------------------------------------------------------------


class _TarSource(io.RawIOBase):
    """The tar bytes of the stream's T frames, as a file tarfile reads; EOF at the first
    other frame (kept for the reader)."""

    def __init__(self, reader: StreamReader) -> None:
        self.reader = reader
        self.left = 0
        self.pending = b""
        self.done = False
        self.inflated = None
        if reader.header.compression == "zstd":
            import zstandard

            # a reader, not a decompressobj: a few KiB of zstd can inflate to GiB, and a read
            # gives at most what was asked for
            self.inflated = zstandard.ZstdDecompressor().stream_reader(
                _Raw(self), read_size=_BLOCK, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def _next_raw(self) -> bytes:
        """The next piece (at most _BLOCK) of the T frames' bytes; b"" after the last."""
        while not self.done:
            if self.left == 0:
                kind, length = self.reader.frame_head()
                if kind != TAR:
                    self.reader.held = (kind, length)
                    self.done = True
                    return b""
                self.left = length
                continue
            data = self.reader.exact(min(self.left, _BLOCK))
            self.left -= len(data)
            return data
        return b""

    def _read(self, n: int) -> bytes:
        """Up to `n` bytes of tar data (decompressed when the stream is)."""
        if self.inflated is None:
            if not self.pending:
                self.pending = self._next_raw()
            out, self.pending = self.pending[:n], self.pending[n:]
            return out
        try:
            return self.inflated.read(n)
        except StreamError:
            raise
        except Exception as exc:  # zstandard.ZstdError: a corrupted stream
            raise StreamError(f"compressed tar data is corrupted: {exc}") from None

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self._read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read the tar's padding after its end; StreamError when there is more than that."""
        extra = 0
        while data := self._read(_BLOCK):
            extra += len(data)
            if extra > MAX_TAIL:
                raise StreamError("data after the end of the tar archive")


class _Raw:
    """The T frames' raw bytes as a file (what the zstd reader reads)."""

    def __init__(self, source: _TarSource) -> None:
        self.source = source

    def read(self, _size: int = -1) -> bytes:
        return self.source._next_raw()


MAX_META = 1 << 20
"""Largest PAX extended header or GNU long name/link accepted (xattrs and a name fit well)."""
MAX_META_CHAIN = 8
"""Most such headers in a row before one member (tarfile follows them by recursion)."""


class _TarInfo(tarfile.TarInfo):
    """Members as the reader accepts them.  tarfile reads a PAX or GNU long-name header whole
    into memory, follows consecutive ones by recursion, keeps global headers for the rest of
    the archive and reads GNU sparse maps of any length: a stream's headers are bounded,
    chained a few deep, never global, never sparse (the writer makes none of those)."""

    def _proc_member(self, tar):  # type: ignore[no-untyped-def]
        if self.type in (tarfile.XGLTYPE, tarfile.GNUTYPE_SPARSE):
            raise tarfile.ReadError("global and GNU sparse headers are not accepted")
        meta = self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                             tarfile.GNUTYPE_LONGLINK)
        if not meta:
            return super()._proc_member(tar)
        if self.size > MAX_META:
            raise tarfile.ReadError(f"a tar header of {self.size} bytes (at most {MAX_META})")
        depth = getattr(tar, "_snapd_meta_depth", 0)
        if depth >= MAX_META_CHAIN:
            raise tarfile.ReadError(f"more than {MAX_META_CHAIN} extended headers before one member")
        tar._snapd_meta_depth = depth + 1
        try:
            return super()._proc_member(tar)
        finally:
            tar._snapd_meta_depth = depth

    def _proc_gnusparse_10(self, next, pax_headers, tar):  # type: ignore[no-untyped-def]
        raise tarfile.ReadError("GNU sparse members are not accepted")


def _clean_name(name: str, what: str) -> bytes:
    """A member's relative path as bytes; StreamError for anything that could leave the tree."""
    raw = name.encode("utf-8", "surrogateescape")
    if raw in (b".", b"./"):
        return b"."
    raw = raw.rstrip(b"/")
    parts = raw.split(b"/")
    if not raw or raw.startswith(b"/") or b"\0" in raw or any(p in (b"", b".", b"..") for p in parts):
        raise StreamError(f"{what} {name!r} is not a plain relative path")
    return raw


def _mtime_ns(info: tarfile.TarInfo) -> int:
    raw = info.pax_headers.get("mtime")
    if raw is not None and re.fullmatch(r"-?\d{1,12}(\.\d{1,9})?", raw):
        sign = -1 if raw.startswith("-") else 1
        sec, _, frac = raw.lstrip("-").partition(".")
        return sign * (int(sec) * 1_000_000_000 + int(frac.ljust(9, "0") or 0))
    return int(info.mtime) * 1_000_000_000


@dataclass
class _Attrs:
    path: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes] = field(default_factory=dict)


class StreamReader:
    """Reads a stream from `src` (a binary file object): the header at once, the rest
    into a directory with `apply`."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.hash = hashlib.sha256()
        self.held: tuple[bytes, int] | None = None
        self.bytes = 0
        magic = self.exact(len(MAGIC))
        if magic != MAGIC:
            raise StreamError("not a container-snapd stream (bad magic)")
        kind, length = self.frame_head()
        if kind != HEADER or length > MAX_HEADER:
            raise StreamError("stream does not start with a header")
        self.header = Header.decode(self.exact(length))

    def exact(self, n: int, *, hashed: bool = True) -> bytes:
        """`n` bytes of the stream; StreamError when it ends first."""
        parts, got = [], 0
        while got < n:
            data = self.src.read(n - got)
            if not data:
                raise StreamError(f"stream truncated after {self.bytes + got} bytes")
            parts.append(data)
            got += len(data)
        out = b"".join(parts)
        self.bytes += n
        if hashed:
            self.hash.update(out)
        return out

    def some(self, n: int) -> bytes:
        """Between 1 and `n` bytes of the stream, as one read of the source gives them (no
        joining of pieces: what a reader that takes any amount wants); StreamError at its end."""
        data = self.src.read(n)
        if not data:
            raise StreamError(f"stream truncated after {self.bytes} bytes")
        self.bytes += len(data)
        self.hash.update(data)
        return data

    def frame_head(self) -> tuple[bytes, int]:
        if self.held is not None:
            held, self.held = self.held, None
            return held
        raw = self.exact(_FRAME.size, hashed=False)
        kind, length = _FRAME.unpack(raw)
        if kind not in (HEADER, TAR, DELETIONS, END, NATIVE) or length > MAX_FRAME:
            raise StreamError(f"stream corrupted at byte {self.bytes - len(raw)} (bad frame)")
        if kind != END:
            self.hash.update(raw)
        return kind, length

    def trailer(self, kind: bytes, length: int) -> None:
        """Check that frame (`kind`, `length`) is the trailer, its checksum matches every byte
        before it, and nothing follows; StreamError otherwise."""
        if kind != END or length != 32:
            raise StreamError("stream corrupted: no trailer where it belongs")
        expected = self.hash.digest()
        if self.exact(32, hashed=False) != expected:
            raise StreamError("stream checksum mismatch: the stream was corrupted in transit")
        if self.src.read(1):
            raise StreamError("data after the stream's trailer")

    def native(self) -> NativeSource:
        """The native stream's data (StreamError for a portable stream)."""
        if self.header.native is None:
            raise StreamError("a portable stream where a native one was expected")
        return NativeSource(self)

    def apply(self, dest: str, *, incremental: bool) -> Stats:
        """Extract the stream's tree into directory `dest` (which holds the base's copy
        for an incremental, or is empty), apply the deletions, and check the trailer.
        Raises StreamError (nothing is promised about `dest` then), NoSpace on ENOSPC."""
        try:
            return self._apply(os.fsencode(dest), incremental)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace("no space left in the pool for the received snapshot") from None
            if exc.errno in _ENTRY_ERRNOS:  # what the stream asked for cannot exist here
                where = os.fsdecode(exc.filename)[len(dest):] if isinstance(exc.filename, (str, bytes)) else ""
                raise StreamError(f"an entry cannot be written: {exc.strerror} ({where[-200:]!r})") from None
            raise
        except (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError) as exc:
            raise StreamError(f"tar data is corrupted: {exc}") from None

    def _apply(self, dest: bytes, incremental: bool) -> Stats:
        if self.header.native is not None:
            raise StreamError(f"a native {self.header.native} stream where a portable one was expected")
        stats = Stats()
        source = _TarSource(self)
        dirs: list[_Attrs] = []
        touched: dict[bytes, tuple[int, int]] = {}
        with tarfile.open(fileobj=io.BufferedReader(source, CHUNK), mode="r|", encoding="utf-8",
                          errors="surrogateescape", tarinfo=_TarInfo) as tar:
            for info in tar:
                rel = _clean_name(info.name, "entry")
                target = dest if rel == b"." else os.path.join(dest, rel)
                if rel != b".":
                    self._prepare(dest, rel, touched if incremental else None)
                self._extract(tar, info, dest, target, rel, dirs)
                stats.entries += 1
        source.drain()
        kind, length = self.frame_head()
        while kind == DELETIONS:
            for raw in self.exact(length).split(b"\0"):
                if raw:
                    self._delete(dest, raw, touched)
                    stats.deletions += 1
            kind, length = self.frame_head()
        self.trailer(kind, length)
        # Through descriptors reached with no symlink on the way: a later entry may have put a
        # symlink (to the host) or a hard link (to a base file) where a directory was.
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for path, (atime, mtime) in touched.items():  # directories changed beneath, not themselves
                with _still_dir(dest_fd, dest, path) as fd:
                    if fd is not None:
                        os.utime(fd, ns=(atime, mtime))
            for attrs in reversed(dirs):  # deepest first: setting a child's times leaves the parent's
                with _still_dir(dest_fd, dest, attrs.path) as fd:
                    if fd is not None:
                        _set_attrs(attrs, fd)
        finally:
            os.close(dest_fd)
        stats.bytes = self.bytes
        return stats

    @staticmethod
    def _prepare(dest: bytes, rel: bytes, touched: dict[bytes, tuple[int, int]] | None) -> None:
        """Check every parent of `rel` is a real directory inside `dest` (never a symlink), and
        remember the times of the directory `rel` is in (when `touched` is given)."""
        parent = dest
        for part in rel.split(b"/")[:-1]:
            parent = os.path.join(parent, part)
            try:
                st = os.lstat(parent)
            except FileNotFoundError:
                raise StreamError(f"entry {rel!r} comes before its directory") from None
            if not stat.S_ISDIR(st.st_mode):
                raise StreamError(f"entry {rel!r} lies beneath a non-directory")
        if touched is not None and parent not in touched:
            st = os.lstat(parent)
            touched[parent] = (st.st_atime_ns, st.st_mtime_ns)

    @staticmethod
    def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, dest: bytes, target: bytes, rel: bytes,
                 dirs: list[_Attrs]) -> None:
        xattrs = {k[len(_XATTR):]: v.encode("utf-8", "surrogateescape")
                  for k, v in info.pax_headers.items() if k.startswith(_XATTR)}
        if rel == b".":
            xattrs = {k: v for k, v in xattrs.items() if not k.startswith(OWN_XATTR_PREFIXES)}
        attrs = _Attrs(target, info.mode & 0o7777, info.uid, info.gid, _mtime_ns(info), xattrs)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
        if info.isdir():
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(target)
                st = None
            if st is None:
                os.mkdir(target, 0o700)
            dirs.append(attrs)
            return
        if rel == b".":
            raise StreamError("the tree's root is not a directory")
        if info.sparse is not None:  # a PAX GNU.sparse map: a size of holes the stream never carries
            raise StreamError(f"entry {rel!r} is a GNU sparse member; they are not accepted")
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(target)
            else:
                os.unlink(target)
        if info.isreg():
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                _write_sparse(fd, tar.extractfile(info), info.size)  # type: ignore[arg-type]
                _set_attrs(attrs, fd)
            finally:
                os.close(fd)
        elif info.issym():
            os.symlink(info.linkname.encode("utf-8", "surrogateescape"), target)
            _set_attrs(attrs, None, symlink=True)
        elif info.islnk():
            linked = _clean_name(info.linkname, "hard link target")
            if linked == b".":
                raise StreamError(f"hard link {rel!r} to the tree's root")
            StreamReader._prepare(dest, linked, None)  # no symlink on the way: the link stays inside
            source = os.path.join(dest, linked)
            if not os.path.lexists(source) or os.path.isdir(source):
                raise StreamError(f"hard link {rel!r} to an entry that is not there")
            os.link(source, target, follow_symlinks=False)
        elif info.ischr() or info.isblk() or info.isfifo():
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK if info.isblk() else stat.S_IFIFO
            os.mknod(target, kind | 0o600, os.makedev(info.devmajor, info.devminor) if kind != stat.S_IFIFO else 0)
            _set_attrs(attrs, None)
        else:
            raise StreamError(f"entry {rel!r} has an unsupported type {info.type!r}")

    @staticmethod
    def _delete(dest: bytes, raw: bytes, touched: dict[bytes, tuple[int, int]]) -> None:
        rel = _clean_name(raw.decode("utf-8", "surrogateescape"), "deletion")
        if rel == b".":
            raise StreamError("a deletion names the tree's root")
        StreamReader._prepare(dest, rel, touched)
        target = os.path.join(dest, rel)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            raise StreamError(f"deletion of {rel!r}, which the base does not hold: not the same base") from None
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(target)
        else:
            os.unlink(target)


class NativeSource:
    """A native stream's data as a blocking file (`read`), what the filesystem's receive is
    fed; `finish()` once that receive is done checks the trailer.  A receiver makes nothing
    visible before finish() returned."""

    def __init__(self, reader: StreamReader) -> None:
        self.reader = reader
        self.left = 0
        self.end: tuple[bytes, int] | None = None

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of the filesystem's stream (at most one frame's rest, and what the
        source has at hand); b"" at its end."""
        while self.left == 0:
            if self.end is not None:
                return b""
            kind, length = self.reader.frame_head()
            if kind == NATIVE:
                self.left = length
            elif kind == END:
                self.end = (kind, length)
            else:
                raise StreamError(f"a {kind.decode()!r} frame in a native stream")
        data = self.reader.some(self.left if size is None or size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def finish(self) -> int:
        """Check that the filesystem's receive took every native byte, then the trailer
        (StreamReader.trailer); the stream's size in bytes."""
        if self.end is None and self.read(1):
            raise StreamError("the filesystem's stream ended before the native data did")
        assert self.end is not None
        self.reader.trailer(*self.end)
        return self.reader.bytes


class NativeFramer:
    """The envelope of a native stream for the sender: `start()`, `frames(data)` for each
    chunk of the filesystem's stream, then `end()`; each gives the bytes to send, hashed
    as they go (the hash releases the GIL: call it from a worker thread)."""

    def __init__(self, header: Header) -> None:
        if header.native is None:
            raise ValueError("a native stream's header names its kind")
        self.header = header
        self.hash = hashlib.sha256()
        self.bytes = 0

    def _hashed(self, *parts: bytes) -> list[bytes]:
        for part in parts:
            self.hash.update(part)
            self.bytes += len(part)
        return list(parts)

    def start(self) -> bytes:
        raw = self.header.encode()
        return b"".join(self._hashed(MAGIC, _FRAME.pack(HEADER, len(raw)), raw))

    def frames(self, data: bytes) -> list[bytes]:
        """`data` as N frames (head, payload, ...): no copy of a chunk up to MAX_FRAME."""
        out: list[bytes] = []
        view = memoryview(data)
        for start in range(0, len(data), MAX_FRAME):
            piece = data if len(data) <= MAX_FRAME else bytes(view[start:start + MAX_FRAME])
            out += self._hashed(_FRAME.pack(NATIVE, len(piece)), piece)
        return out

    def end(self) -> bytes:
        self.bytes += _FRAME.size + 32
        return _FRAME.pack(END, 32) + self.hash.digest()


@contextlib.contextmanager
def _still_dir(dest_fd: int, dest: bytes, path: bytes) -> Iterator[int | None]:
    """The directory at `path` in `dest`, opened beneath it with no symlink followed; None
    when a later entry of the stream put something else there."""
    rel = path[len(dest):].strip(b"/")
    try:
        fd = beneath.open_dir(dest_fd, tuple(rel.split(b"/")) if rel else ())
    except (beneath.Unsafe, FileNotFoundError, NotADirectoryError):
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _write_sparse(fd: int, src: BinaryIO, size: int) -> None:
    """Copy `size` bytes from `src` to `fd`, leaving holes where whole blocks are zero."""
    zero = bytes(_BLOCK)
    done = 0
    while done < size:
        block = src.read(min(_BLOCK, size - done))
        if not block:
            raise StreamError("tar data ends inside a file")
        if block == zero[:len(block)]:
            os.lseek(fd, len(block), os.SEEK_CUR)
        else:
            os.write(fd, block)
        done += len(block)
    os.ftruncate(fd, size)


def _set_attrs(a: _Attrs, fd: int | None, *, symlink: bool = False) -> None:
    """Owner, mode, xattrs, then times (the last change) of `a.path` (or open `fd`)."""
    ref: int | bytes = fd if fd is not None else a.path
    follow = fd is not None  # a path is never followed (the entry was just made, in scratch)
    if os.geteuid() == 0:
        os.chown(ref, a.uid, a.gid, follow_symlinks=follow)
    for name, value in a.xattrs.items():
        try:
            os.setxattr(ref, name, value, follow_symlinks=follow)
        except OSError as exc:  # a pool without xattrs (zfs-fuse), user.* on a symlink: not kept
            if exc.errno not in (errno.ENOTSUP, errno.EPERM) or (exc.errno == errno.EPERM and not symlink):
                raise
    if fd is not None:
        os.fchmod(fd, a.mode)
    elif not symlink:
        os.chmod(ref, a.mode)  # a directory or a device node made in scratch: no symlink to follow
    os.utime(ref, ns=(a.mtime_ns, a.mtime_ns), follow_symlinks=follow)
