"""`snapd serve`: configuration, start-up errors, sockets, signals, dev mode."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .client import snaps
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import new_cid
from .waiting import until


def serve(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapd", "serve", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def one_clear_line(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 with exactly one error line (after any start-up log lines), no traceback."""
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("snapd: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert all("level=info" in line for line in lines[:-1]), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    root = tmp_path / "pool"
    root.mkdir()
    return root


def test_bad_config_files_stop_start_up_with_one_line(tmp_path: Path, pool: Path) -> None:
    cases = {
        "bogus = 1\n": ["'bogus'"],
        "listen = '127.0.0.1:1'\n": ["'listen'", "list"],
        "pools = [1]\n": ["'pools'"],
        "state_dir = 5\n": ["'state_dir'"],
        "pools = ['nope:/x']\n": ["nope"],
        "listen = ['no-port']\n": ["no-port"],
        "log_level = 'loud'\n": ["log_level"],
        "this is not toml\n": [str(tmp_path)],
    }
    for i, (text, needles) in enumerate(cases.items()):
        cfg = tmp_path / f"c{i}.toml"
        cfg.write_text(text)
        one_clear_line(serve("--config", str(cfg), "--pool", f"overlay:{pool}",
                             "--socket", str(tmp_path / "s.sock"), "--state-dir", str(tmp_path / "st")), *needles)


def test_bad_paths_stop_start_up_with_one_line(tmp_path: Path, pool: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    common = ["--state-dir", str(tmp_path / "st")]
    one_clear_line(serve("--pool", f"overlay:{tmp_path / 'missing'}", "--socket", str(tmp_path / "s"), *common),
                   str(tmp_path / "missing"))
    one_clear_line(serve("--pool", f"overlay:{pool}", "--socket", str(blocker / "api.sock"), *common),
                   str(blocker))
    one_clear_line(serve("--pool", f"overlay:{pool}", "--socket", str(tmp_path / "s"),
                         "--state-dir", str(blocker / "state")), str(blocker))
    one_clear_line(serve("--socket", str(tmp_path / "s"), *common), "no pools")
    one_clear_line(serve("--config", str(tmp_path / "nope.toml"), "--pool", f"overlay:{pool}"), "nope.toml")
    one_clear_line(serve("--pool", f"overlay:{pool}", "--socket", str(tmp_path / ("x" * 120)), *common),
                   "longer than")


def test_flags_win_over_the_config_file(tmp_path: Path, pool: Path) -> None:
    cid = new_cid()
    write_tree(pool / cid, {"f": "x"})
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'socket = "{tmp_path / "from-file.sock"}"\npools = ["overlay:{pool}"]\n'
                   f'state_dir = "{tmp_path / "state"}"\nlog_level = "info"\n')
    d = DaemonProcess(tmp_path / "d", [], tcp=False, extra=["--config", str(cfg)]).start()
    try:
        assert d.socket.exists() and not (tmp_path / "from-file.sock").exists()
        assert d.unix.get(snaps(cid)).status == 200  # the pool came from the file
    finally:
        assert d.stop() == 0


def test_sigterm_finishes_in_flight_work_then_exits_cleanly(tmp_path: Path, pool: Path) -> None:
    cid = new_cid()
    write_tree(pool / cid, {f"d{i // 100}/f{i}": "x" * 2000 for i in range(4000)})
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    result: dict = {}

    def create() -> None:
        result["r"] = d.unix.post(snaps(cid))

    t = threading.Thread(target=create)
    t.start()
    # wait until the create is under way (its scratch copy exists), then stop the daemon
    until(lambda: any((pool / ".snapshots" / ".tmp").glob("create-*")), "the create's scratch copy appears",
          interval=0.002)
    d.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert d.stop() == 0
    assert result["r"].status == 200, result["r"].body
    name = result["r"].data["snapshot"]["name"]
    assert not d.socket.exists()
    assert "stopping: finishing 1 operations in flight" in d.log_text()
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    try:
        assert [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]] == [name]
        assert len(list((pool / ".snapshots" / cid / name).rglob("f*"))) == 4000
    finally:
        assert d.stop() == 0


def test_sigint_also_stops_cleanly(tmp_path: Path, pool: Path) -> None:
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(30) == 0
    assert not d.socket.exists()


def test_stale_socket_is_replaced_but_nothing_else(tmp_path: Path, pool: Path) -> None:
    sock_path = tmp_path / "d" / "api.sock"
    sock_path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()  # a socket file nobody listens on: what a crash leaves
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    try:
        # a second daemon on the same live socket is refused
        other = serve("--pool", f"overlay:{pool}", "--socket", str(sock_path),
                      "--state-dir", str(tmp_path / "other"))
        one_clear_line(other, "another daemon")
        assert d.unix.get("/api/v1/openapi.json").status == 200
    finally:
        assert d.stop() == 0
    sock_path.write_text("precious")
    one_clear_line(serve("--pool", f"overlay:{pool}", "--socket", str(sock_path),
                         "--state-dir", str(tmp_path / "st")), "not a socket")
    assert sock_path.read_text() == "precious"


def test_socket_is_group_accessible_only(tmp_path: Path, pool: Path) -> None:
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False).start()
    try:
        assert oct(d.socket.stat().st_mode & 0o777) == oct(0o660)
    finally:
        assert d.stop() == 0


def test_dev_mode_prints_a_working_curl_line(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "snapd", "serve", "--dev"], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    try:
        curl_line = None
        deadline = time.monotonic() + 30
        while curl_line is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "daemon exited"
            if line.strip().startswith("try:"):
                curl_line = line.split("try:", 1)[1].strip()
        assert curl_line and curl_line.startswith("curl --unix-socket")
        out = subprocess.run(curl_line.split(), capture_output=True, text=True, timeout=30)
        assert '"message":"Snapshots retrieved successfully"' in out.stdout, out
        assert (tmp_path / ".snapd-dev" / "state" / "snapd.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (tmp_path / ".snapd-dev" / "api.sock").exists()


def test_tcp_listener_on_loopback(tmp_path: Path, pool: Path) -> None:
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=True).start()
    try:
        r = d.tcp.get("/api/v1/openapi.json")
        assert r.status == 401 and r.headers["www-authenticate"] == "Bearer"
    finally:
        assert d.stop() == 0


def test_port_in_use_is_a_clear_error(tmp_path: Path, pool: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--pool", f"overlay:{pool}", "--socket", str(tmp_path / "s.sock"),
                       "--state-dir", str(tmp_path / "st"), "--listen", f"127.0.0.1:{port}")
    one_clear_line(result, f"127.0.0.1:{port}")
    assert not (tmp_path / "s.sock").exists()


def test_auto_backend_picks_overlay_for_a_plain_directory(tmp_path: Path, pool: Path) -> None:
    cid = new_cid()
    write_tree(pool / cid, {"f": "x"})
    d = DaemonProcess(tmp_path / "d", [f"auto:{pool}"], tcp=False).start()
    try:
        assert d.unix.post(snaps(cid)).status == 200
        assert "kind=overlay" in d.log_text()
    finally:
        assert d.stop() == 0


def test_store_schema_is_versioned_and_a_newer_one_is_refused(tmp_path: Path, pool: Path) -> None:
    from snapd.core.store import SCHEMA_VERSION, Store

    state = tmp_path / "state"
    state.mkdir()
    store = Store(state / "snapd.db")
    assert store.schema_version == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.write_now(lambda s: s.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                           [str(SCHEMA_VERSION + 1)]))
    store.close()
    one_clear_line(serve("--pool", f"overlay:{pool}", "--socket", str(tmp_path / "s"),
                         "--state-dir", str(state)), "newer than")
    assert os.path.exists(state / "snapd.db")


def test_overlapping_pools_are_refused(tmp_path: Path, pool: Path) -> None:
    (pool / "inner").mkdir()
    common = ["--socket", str(tmp_path / "s.sock"), "--state-dir", str(tmp_path / "st")]
    one_clear_line(serve("--pool", f"overlay:{pool}", "--pool", f"auto:{pool}/", *common), "overlap")
    one_clear_line(serve("--pool", f"overlay:{pool}", "--pool", f"overlay:{pool}/inner", *common), "overlap")


def _listen_backlog(kind: str, local: str) -> int:
    """The backlog of a listening socket, as `ss` reports it (Send-Q of a LISTEN row)."""
    out = subprocess.run(["ss", f"-{kind}lnH"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if local in line.split()]
    assert len(rows) == 1, out
    return int(rows[0][3] if kind == "x" else rows[0][2])


def test_listeners_queue_a_burst_of_connections(tmp_path: Path, pool: Path) -> None:
    """A burst of clients is queued, not refused: aiohttp's default backlog (128) made a
    200-client burst fail with EAGAIN on the Unix socket under load."""
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=True).start()
    try:
        assert _listen_backlog("x", str(d.socket)) >= 1024
        assert _listen_backlog("t", f"127.0.0.1:{d.port}") >= 1024
    finally:
        assert d.stop() == 0
