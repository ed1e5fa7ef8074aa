"""Text hygiene: no character an alias, a label or a URL holds can split a line the daemon
reads (ZFS output) or writes (logs, the CLI's tables), or reach a terminal raw."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import PROJECT_PROPERTY
from backends.zfs import ALIAS_PROPERTY
from backends.zfs_cmd import find_tool
from snapd.core.store import Store

from .aftercheck import HostCheck
from .client import snaps
from .conftest import open_harness
from .harness.zfs import ZfsHarness
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import new_cid

ADMIN = "/api/v1/admin"
RAW = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def raw_chars(text: str, allowed: str = "\n") -> list[str]:
    """Characters of `text` that a terminal or a line reader would act on."""
    return [c for c in text if unicodedata.category(c) in RAW and c not in allowed]


def cli(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SNAPD_SOCKET": str(d.socket), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "snapd", *args], capture_output=True, text=True,
                          encoding="utf-8", env=env, timeout=60)


def zfs(*args: str) -> None:
    subprocess.run([find_tool("zfs"), *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def zpool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsHarness]:
    h = open_harness("zfs", tmp_path_factory.mktemp("text-zfs"))
    assert isinstance(h, ZfsHarness)
    try:
        yield h
    finally:
        h.close()


def test_zfs_aliases_no_line_reader_can_split(zpool: ZfsHarness, tmp_path: Path, host_unharmed: HostCheck) -> None:
    """An alias with U+2028 once took the daemon down at its next start (issue 11, finding 4)."""
    cid = new_cid()
    zpool.make_container(cid)
    ds = zpool.dataset(cid)
    d = DaemonProcess(tmp_path / "d", [zpool.spec], tcp=False).start()
    try:
        r = d.unix.post(snaps(cid), {"alias": "prod\u2028backup"})
        assert (r.status, r.body["details"][0]["field"]) == (400, "alias"), r.body
        assert "U+2028 (LINE SEPARATOR)" in r.body["details"][0]["reason"]
        r = d.unix.post(snaps(cid), {"alias": "café ☕ \U0001f600"})
        assert r.status == 200, r.body
        kept = r.data["snapshot"]["name"]
    finally:
        assert d.stop() == 0
    # the property holds ASCII only: nothing in it can break a line or a field
    value = zpool.props([f"{ds}@{kept}"], ALIAS_PROPERTY)[f"{ds}@{kept}"][ALIAS_PROPERTY]
    assert value.isascii() and value.isprintable() and json.loads(value) == "café ☕ \U0001f600"

    # what an older version wrote (JSON with raw characters), and values set by hand
    zfs("snapshot", "-o", f'{ALIAS_PROPERTY}="prod\u2028backup"', f"{ds}@old-json")
    zfs("snapshot", "-o", f"{ALIAS_PROPERTY}=plain\u0085\ttab\x1c\x0b\x0c\u2029", f"{ds}@old-plain")
    zfs("snapshot", f"{ds}@hand-newline")
    zfs("set", f"{ALIAS_PROPERTY}=line1\nline2\tx\ty", f"{ds}@hand-newline")
    zfs("set", f'{ALIAS_PROPERTY}="prod\u2028backup"', f"{ds}@{kept}")
    labelled = new_cid()
    zpool.make_container(labelled)
    zfs("set", f"{PROJECT_PROPERTY}=web\nops", zpool.dataset(labelled))

    d.start()
    try:
        listed = {s["name"]: s["alias"] for s in d.unix.get(snaps(cid)).data["snapshots"]}
        assert listed == {
            kept: "café ☕ \U0001f600",  # the store's row; the disk is read only to adopt
            "old-json": "prod\u2028backup",  # decoded faithfully
            "old-plain": "plain\u0085\ttab\x1c\x0b\x0c\u2029",  # taken as it is
            "hand-newline": None,  # unreadable: adopted without alias, and reported
        }
        r = d.unix.get(snaps(labelled))  # an unreadable label: the container is unlabelled
        assert (r.status, r.data["project_id"], r.data["snapshots"]) == (200, None, []), r.body
        status = d.unix.get(f"{ADMIN}/status").data
        problems = [p["problem"] for p in status["problems"] if p["source"] == "pool"]
        assert len(problems) == 2, problems
        assert f"{ds}@hand-newline {ALIAS_PROPERTY}" in problems[0]
        assert f"{zpool.dataset(labelled)} {PROJECT_PROPERTY} local" in problems[1]
        assert "spans lines" in d.log_text()

        out = cli(d, "list", cid)
        assert out.returncode == 0, out.stderr
        assert not raw_chars(out.stdout), out.stdout
        assert "prod\\u2028backup" in out.stdout and "plain\\x85\\x09tab\\x1c\\x0b\\x0c\\u2029" in out.stdout
        assert len(out.stdout.strip().split("\n")) == 2 + len(listed)  # head, header, one row each
        out = cli(d, "status")
        assert out.returncode == 0 and "hand-newline" in out.stdout, out
        assert not raw_chars(out.stdout), out.stdout
    finally:
        assert d.stop() == 0
    host_unharmed(d, zpool, [cid, labelled])


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_control_characters_from_the_url_are_escaped_in_the_log(
        tmp_path: Path, fmt: str, host_unharmed: HostCheck) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], extra=["--log-format", fmt]).start()
    path = "/api/v1/containers/%1b[31mred%00nul%e2%80%aertl%c2%9bcsi%e2%80%a8ls/snapshots"
    try:
        r = d.tcp.get(path)  # no token: refused, and still logged
        assert r.status in (400, 401), r.body
    finally:
        assert d.stop() == 0
    log = d.log_text()
    assert not raw_chars(log), [c for c in raw_chars(log)]
    lines = [line for line in log.split("\n") if "red" in line and "snapd.access" in line]
    assert len(lines) == 1, log
    decoded = "/api/v1/containers/\x1b[31mred\x00nul\u202ertl\x9bcsi\u2028ls/snapshots"
    if fmt == "json":
        assert json.loads(lines[0])["path"] == decoded
    else:
        assert 'path="/api/v1/containers/\\x1b[31mred\\x00nul\\u202ertl\\x9bcsi\\u2028ls/snapshots"' \
            in lines[0], lines[0]
    host_unharmed(d, pool, [])


def test_the_cli_never_prints_control_or_bidi_characters(tmp_path: Path, host_unharmed: HostCheck) -> None:
    """An alias and a token label stored before the API refused such characters."""
    pool = tmp_path / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"f": "x"})
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    try:
        name = d.unix.post(snaps(cid), {"alias": "placeholder"}).data["snapshot"]["name"]
        token = d.unix.post(f"{ADMIN}/tokens", {"project": "p", "label": "placeholder"}).data["token"]["id"]
    finally:
        assert d.stop() == 0
    alias = "gpj\u202e.exe\x1b[2J\u2028\u0085\u200d\ufeff"
    store = Store(d.state_dir / "snapd.db")
    store.update(cid, name, alias=alias)
    store.close()
    with sqlite3.connect(d.state_dir / "snapd.db") as db:
        db.execute("UPDATE tokens SET label = ? WHERE id = ?", ("ci\x9b31m\u2066", token))
    db.close()

    d.start()
    try:
        shown = "gpj\\u202e.exe\\x1b[2J\\u2028\\x85\\u200d\\ufeff"
        for args in (["list", cid], ["show", cid, name]):
            out = cli(d, *args)
            assert out.returncode == 0 and shown in out.stdout, out
            assert not raw_chars(out.stdout), out.stdout
        out = cli(d, "list", "--json", cid)
        assert out.stdout.isascii() and json.loads(out.stdout)["data"]["snapshots"][0]["alias"] == alias
        out = cli(d, "token", "list")
        assert out.returncode == 0 and "ci\\x9b31m\\u2066" in out.stdout, out
        assert not raw_chars(out.stdout), out.stdout
    finally:
        assert d.stop() == 0
    host_unharmed(d, pool, [cid])
