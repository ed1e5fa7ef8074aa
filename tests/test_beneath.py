"""Paths resolved beneath a root (backends/beneath.py): parsing, the name escape, and
hostile trees, with openat2 and with the component walk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from backends import beneath
from backends.beneath import NotRegular, PathRefused, Unsafe

from .digest import walk_digest
from .mounts import Mounts


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(beneath, "use_openat2", request.param == "openat2")
    return request.param


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """A root holding a hostile tree, and a canary tree outside it; yields root, canary, root fd."""
    canary = tmp_path / "canary"
    (canary / "etc").mkdir(parents=True)
    (canary / "etc" / "passwd").write_text("canary secret\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    os.symlink("/", root / "to-slash")
    os.symlink("../../../../../../..", root / "etc" / "up")
    os.symlink(str(canary), root / "abs")
    os.symlink("../canary", root / "rel")
    os.symlink("hosts", root / "etc" / "hosts-link")
    os.mkfifo(root / "fifo")
    (root / b"caf\xe9".decode("utf-8", "surrogateescape")).write_text("latin-1 name\n")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    before = walk_digest(canary)
    try:
        yield root, canary, fd
    finally:
        os.close(fd)
    assert walk_digest(canary) == before, "the canary tree outside the root changed"


def test_parse_accepts_absolute_paths_and_drops_empty_and_dot() -> None:
    assert beneath.parse("/") == ()
    assert beneath.parse("/etc//nginx/./conf.d/") == (b"etc", b"nginx", b"conf.d")
    assert beneath.parse("/%2e%2e") == (b"%2e%2e",)  # a name, not a traversal: HTTP decoding is the server's
    assert beneath.parse("/a\\x2e\\x2e/b") == (b"a..", b"b")


@pytest.mark.parametrize("text, reason", [
    ("", "required"), ("etc/hosts", "absolute"), ("/etc/../..", "'..'"), ("/..", "'..'"),
    ("/a\x00b", "NUL"), ("/a\\x00b", "NUL"), ("/a\\q", "backslash"),
    ("/\\x2e\\x2e", "'..'"), ("/" + "a" * 5000, "at most"),
])
def test_parse_refuses_hostile_paths(text: str, reason: str) -> None:
    with pytest.raises(PathRefused, match=reason):
        beneath.parse(text)


@pytest.mark.parametrize("raw, shown", [
    (b"hosts", "hosts"), ("caf\u00e9".encode(), "caf\u00e9"), (b"caf\xe9", "caf\\xe9"),
    (b"a\\b", "a\\\\b"), (b"\xff\xfe\\x41", "\\xff\\xfe\\\\x41"),
])
def test_name_escape_round_trips(raw: bytes, shown: str) -> None:
    assert beneath.show(raw) == shown
    assert beneath.unescape(shown) == raw
    assert beneath.parse("/" + shown) == (raw,)


def test_resolves_plain_paths(world: tuple[Path, Path, int], mode: str) -> None:
    _root, _canary, fd = world
    f = beneath.open_regular(fd, beneath.parse("/etc/hosts"))
    try:
        assert os.read(f, 100) == b"127.0.0.1 localhost\n"
    finally:
        os.close(f)
    f = beneath.open_regular(fd, beneath.parse("/caf\\xe9"))
    os.close(f)
    d = beneath.open_dir(fd, ())
    os.close(d)


@pytest.mark.parametrize("path", ["/to-slash/etc/passwd", "/etc/up/etc/passwd", "/abs/etc/passwd",
                                  "/rel/etc/passwd", "/to-slash", "/abs"])
def test_symlinks_are_never_followed(world: tuple[Path, Path, int], mode: str, path: str) -> None:
    _root, _canary, fd = world
    with pytest.raises((Unsafe, NotRegular)):
        os.close(beneath.open_regular(fd, beneath.parse(path)))
    with pytest.raises((Unsafe, NotADirectoryError)):
        os.close(beneath.open_dir(fd, beneath.parse(path)))


def test_a_final_symlink_is_opened_as_itself(world: tuple[Path, Path, int], mode: str) -> None:
    _root, _canary, fd = world
    with pytest.raises(NotRegular, match="symlink"):
        beneath.open_regular(fd, beneath.parse("/etc/hosts-link"))
    p = beneath.open_path(fd, beneath.parse("/etc/up"))
    try:
        assert os.readlink("", dir_fd=p) == "../../../../../../.."
    finally:
        os.close(p)


def test_a_fifo_is_never_opened_for_reading(world: tuple[Path, Path, int], mode: str) -> None:
    _root, _canary, fd = world
    with pytest.raises(NotRegular, match="fifo"):  # would block forever if it were opened
        beneath.open_regular(fd, beneath.parse("/fifo"))


def test_mount_points_are_not_crossed(world: tuple[Path, Path, int], mode: str) -> None:
    root, _canary, fd = world
    with Mounts() as m:
        m.tmpfs(root / "mnt", {"secret": "on another mount\n"})
        with pytest.raises(Unsafe, match="mount"):
            os.close(beneath.open_regular(fd, beneath.parse("/mnt/secret")))
        with pytest.raises(Unsafe):
            os.close(beneath.open_dir(fd, beneath.parse("/mnt")))


def test_a_directory_swapped_for_a_symlink_between_calls(world: tuple[Path, Path, int], mode: str) -> None:
    """A container swaps a directory for a symlink to the canary after the daemon resolved
    it: the descriptor already held still names the moved directory; a new lookup refuses."""
    root, canary, fd = world
    parent, name = beneath.open_parent(fd, beneath.parse("/etc/hosts"))
    try:
        os.rename(root / "etc", root / "etc.moved")
        os.symlink(str(canary / "etc"), root / "etc")
        with pytest.raises(Unsafe):
            beneath.open_parent(fd, beneath.parse("/etc/passwd"))
        os.unlink(name, dir_fd=parent)  # lands in etc.moved, never in the canary
        with open(os.open("passwd", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=parent), "w") as f:
            f.write("written by the daemon\n")
    finally:
        os.close(parent)
    assert (root / "etc.moved" / "passwd").read_text() == "written by the daemon\n"
    assert not (root / "etc.moved" / "hosts").exists()


def test_missing_entries_are_file_not_found(world: tuple[Path, Path, int], mode: str) -> None:
    _root, _canary, fd = world
    with pytest.raises(FileNotFoundError):
        beneath.open_path(fd, beneath.parse("/no/such"))
    with pytest.raises(NotADirectoryError):
        beneath.open_dir(fd, beneath.parse("/etc/hosts"))
