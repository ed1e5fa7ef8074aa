"""The `snapd` CLI against a real daemon over its Unix socket."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon import DaemonProcess
from .digest import write_tree
from .harness import new_cid


@pytest.fixture(scope="module")
def env(overlay_env: tuple[DaemonProcess, Path]) -> tuple[DaemonProcess, Path]:
    return overlay_env


def snapd(d: DaemonProcess, *args: str, socket_flag: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "SNAPD_SOCKET": str(d.socket)}
    extra = ["--socket", str(d.socket)] if socket_flag else []
    if socket_flag:
        env.pop("SNAPD_SOCKET")
    cmd = [sys.executable, "-m", "snapd", *args[:1], *extra, *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def cid(env) -> str:
    _d, pool = env
    c = new_cid()
    write_tree(pool / c, {"file": "v1"})
    return c


def test_a_whole_session(env, cid: str) -> None:
    d, pool = env
    out = snapd(d, "list", cid)
    assert out.returncode == 0 and "no snapshots" in out.stdout
    out = snapd(d, "create", cid, "--alias", "before-upgrade", "--expiry", "7")
    assert out.returncode == 0, out.stderr
    assert "before-upgrade" in out.stdout and "in 7d" in out.stdout
    name = out.stdout.splitlines()[1].split()[0]
    assert name.startswith("snap-")
    out = snapd(d, "list", cid)
    header, row = out.stdout.splitlines()[1:3]
    assert header.split()[:2] == ["NAME", "ALIAS"] and row.startswith(name)
    assert "ago)" in row and ("B" in row.split()[-1] or "KiB" in row)
    (pool / cid / "file").write_text("v2")
    out = snapd(d, "restore", cid, name, socket_flag=True)
    assert out.returncode == 0 and f"restored {cid} from {name}" in out.stdout
    assert (pool / cid / "file").read_text() == "v1"
    assert snapd(d, "alias", cid, name, "production").returncode == 0
    assert "production" in snapd(d, "show", cid, name).stdout
    assert snapd(d, "alias", cid, name, "--clear").returncode == 0
    shown = json.loads(snapd(d, "show", "--json", cid, name).stdout)
    assert shown["statusCode"] == 200 and shown["data"]["snapshot"]["alias"] is None
    assert shown["data"]["snapshot"]["last_used_at"] is not None
    out = snapd(d, "delete", cid, name)
    assert out.returncode == 0 and f"deleted {name}" in out.stdout


def test_api_errors_exit_1_with_the_message(env, cid: str) -> None:
    d, _ = env
    out = snapd(d, "show", cid, "snap-20200101-000000")
    assert out.returncode == 1 and "404 Container or snapshot not found" in out.stderr
    out = snapd(d, "create", cid, "--expiry", "-1")
    assert out.returncode == 1 and "Invalid request payload" in out.stderr and "expiry" in out.stderr
    out = snapd(d, "list", "not-an-id")
    assert out.returncode == 1 and "Invalid container ID format" in out.stderr
    raw = json.loads(snapd(d, "list", "--json", new_cid()).stdout)
    (rid,) = [x["value"] for x in raw.pop("details") if x["field"] == "request_id"]
    assert raw == {"statusCode": 404, "error": "Not Found", "message": "Container not found"}
    out = snapd(d, "list", new_cid())
    assert out.stderr.startswith("snapd: 404 Container not found (request ") and "request_id" not in out.stderr


def cells(line: str) -> list[str]:
    """A table line's cells (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def test_hold_release_and_the_wide_list(env, cid: str) -> None:
    d, _pool = env
    name = json.loads(snapd(d, "create", "--json", cid).stdout)["data"]["snapshot"]["name"]
    other = json.loads(snapd(d, "create", "--json", cid).stdout)["data"]["snapshot"]["name"]
    out = snapd(d, "hold", cid, name, "--reason", "pre-upgrade")
    assert out.returncode == 0, out.stderr
    assert cells(out.stdout.splitlines()[0])[-3:] == ["POLICY", "HOLD", "KEPT BY"]
    row = cells(out.stdout.splitlines()[1])
    assert (row[0], row[-3:]) == (name, ["-", "pre-upgrade", "hold: pre-upgrade"])
    header, *rows = snapd(d, "list", "--wide", cid).stdout.splitlines()[1:]
    assert cells(header)[-3:] == ["POLICY", "HOLD", "KEPT BY"]
    assert [(cells(r)[0], cells(r)[-2]) for r in rows] == [(other, "-"), (name, "pre-upgrade")]
    assert "POLICY" not in snapd(d, "list", cid).stdout  # the plain list keeps the reference's columns
    out = snapd(d, "delete", cid, name)
    assert out.returncode == 1 and f"409 snapshot {name} is held: pre-upgrade" in out.stderr
    out = snapd(d, "release", cid, name)
    assert out.returncode == 0 and cells(out.stdout.splitlines()[1])[-3:] == ["-", "-", "manual"]
    assert snapd(d, "delete", cid, name).returncode == 0
    out = snapd(d, "hold", cid, other, "--reason", "")
    assert out.returncode == 1 and "reason: must be 1 to 200 characters" in out.stderr
    assert snapd(d, "hold", cid, other).returncode == 2  # --reason is required


def test_usage_errors_exit_2(env, cid: str) -> None:
    d, _ = env
    assert snapd(d, "alias", cid, "snap-1").returncode == 2  # neither ALIAS nor --clear
    assert snapd(d, "alias", cid, "snap-1", "x", "--clear").returncode == 2
    assert snapd(d, "create", cid, "--expiry", "soon").returncode == 2
    assert snapd(d, "frobnicate").returncode == 2


def test_unreachable_daemon_exits_1(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "snapd", "list", "--socket", str(tmp_path / "none.sock"), new_cid()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "cannot reach the daemon" in out.stderr and "Traceback" not in out.stderr


def test_a_remote_daemon_by_url_and_token_file(tmp_path: Path) -> None:
    """--url and --token-file (or $SNAPD_URL, $SNAPD_TOKEN_FILE) reach a daemon's TCP listener."""
    pool = tmp_path / "pool"
    c = new_cid()
    write_tree(pool / c, {"f": "1"})
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=True).start()
    try:
        secret = d.unix.post("/api/v1/admin/tokens", {"admin": True}).data["secret"]
        (tmp_path / "token").write_text(secret + "\n")
        url, token = f"http://127.0.0.1:{d.port}", str(tmp_path / "token")
        bare = {k: v for k, v in os.environ.items() if not k.startswith("SNAPD_")}

        def run(*args: str, **env: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "snapd", *args], capture_output=True, text=True,
                                  timeout=60, env={**bare, **env})

        made = run("create", "--url", url, "--token-file", token, "--json", c)
        assert made.returncode == 0, made.stderr
        name = json.loads(made.stdout)["data"]["snapshot"]["name"]
        listed = run("list", "--json", c, SNAPD_URL=url, SNAPD_TOKEN_FILE=token, SNAPD_SOCKET="/nonexistent")
        assert [s["name"] for s in json.loads(listed.stdout)["data"]["snapshots"]] == [name], listed.stderr
        assert f"(pid {d.proc.pid})" in run("status", "--url", url, "--token-file", token).stdout
        anonymous = run("list", "--url", url, c)
        assert anonymous.returncode == 1 and "401" in anonymous.stderr, anonymous.stderr
        wrong = tmp_path / "wrong"
        wrong.write_text("snapd_000000000000_" + "0" * 43)
        assert run("list", "--url", url, "--token-file", str(wrong), c).returncode == 1
        for bad in ("ftp://127.0.0.1", "http://", "http://u:p@127.0.0.1", f"{url}/api", f"{url}?x=1",
                    "http://127.0.0.1:99999", "127.0.0.1:7070"):
            out = run("list", "--url", bad, "--token-file", token, c)
            assert out.returncode == 2 and "--url" in out.stderr and "Traceback" not in out.stderr, (bad, out.stderr)
        (tmp_path / "empty").write_text("\n")
        for token_file in (str(tmp_path / "missing"), str(tmp_path / "empty"), str(tmp_path)):
            out = run("list", "--url", url, "--token-file", token_file, c)
            assert out.returncode == 2 and "--token-file" in out.stderr and "Traceback" not in out.stderr, out.stderr
        both = run("list", "--url", url, "--socket", str(d.socket), c)
        assert both.returncode == 2 and "not both" in both.stderr
        assert run("list", "--socket", str(d.socket), c, SNAPD_URL="http://127.0.0.1:1").returncode == 0
    finally:
        assert d.stop() == 0


def test_every_subcommand_help_has_an_example() -> None:
    for sub in ("serve", "list", "create", "show", "restore", "alias", "delete", "hold", "release"):
        out = subprocess.run([sys.executable, "-m", "snapd", sub, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "examples:" in out.stdout and f"snapd {sub}" in out.stdout
    out = subprocess.run([sys.executable, "-m", "snapd", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("snapd ")


def test_admin_commands_tokens_and_projects(env, cid: str) -> None:
    d, _pool = env
    out = snapd(d, "container", "set-project", cid, "web")
    assert out.returncode == 0 and "project_id: web" in out.stdout
    shown = snapd(d, "container", "show", cid)
    assert "project_id: web" in shown.stdout and "backend: overlay" in shown.stdout
    out = snapd(d, "token", "create", "--project", "web", "--label", "ci", "--expires", "30", "--read-only")
    assert out.returncode == 0, out.stderr
    secret = out.stdout.splitlines()[0]
    assert secret.startswith("csd_") and "shown once" in out.stdout
    token_id = secret.split("_")[1]
    listed = snapd(d, "token", "list").stdout
    assert token_id in listed and "project=web read-only" in listed and "active" in listed
    assert secret not in listed and secret.split("_", 2)[2] not in listed
    assert snapd(d, "token", "revoke", token_id).returncode == 0
    assert "revoked" in snapd(d, "token", "list").stdout
    assert snapd(d, "token", "revoke", "000000000000").returncode == 1
    assert snapd(d, "token", "create").returncode == 2  # neither --project nor --admin
    assert snapd(d, "container", "set-project", cid, "--clear").returncode == 0
    assert "project_id: -" in snapd(d, "container", "show", cid).stdout


def test_container_set_layout(env, cid: str) -> None:
    d, pool = env
    (pool / cid / "upper").mkdir()
    (pool / cid / "work").mkdir()
    assert "layout: overlay\nlayout_label: -" in snapd(d, "container", "show", cid).stdout
    out = snapd(d, "container", "set-layout", cid, "whole")
    assert out.returncode == 0 and "layout: whole\nlayout_label: whole" in out.stdout, out.stderr
    assert "layout_label: whole" in snapd(d, "container", "show", cid).stdout
    assert snapd(d, "container", "set-layout", cid, "upper").returncode == 2  # not a layout
    assert snapd(d, "container", "set-layout", cid).returncode == 2  # neither LAYOUT nor --clear
    out = snapd(d, "container", "set-layout", cid, "--clear")
    assert out.returncode == 0 and "layout_label: -" in out.stdout


def test_token_create_with_containers(env, cid: str) -> None:
    """`--container` (repeatable) scopes a token to those containers; a bad id is refused."""
    d, _pool = env
    out = snapd(d, "token", "create", "--project", "web", "--container", cid, "--container", cid.upper())
    assert out.returncode == 0, out.stderr
    token_id = out.stdout.splitlines()[0].split("_")[1]
    row = next(line for line in snapd(d, "token", "list").stdout.splitlines() if line.startswith(token_id))
    assert f"project=web containers={cid} " in row
    bad = snapd(d, "token", "create", "--project", "web", "--container", "nope")
    assert bad.returncode == 1 and "containers" in bad.stdout + bad.stderr
    assert snapd(d, "token", "revoke", token_id).returncode == 0
