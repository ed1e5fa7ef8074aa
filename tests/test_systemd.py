"""systemd integration: unit files (verify, security), sd_notify, watchdog,
socket activation, scripts/install.sh into a temporary root."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapd.host import systemd

from .client import unix_listening
from .waiting import eventually, until

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
MAX_EXPOSURE = 4.0


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package systemd)")
    return path


def unit_copies(tmp_path: Path) -> tuple[Path, Path]:
    """The units with ExecStart pointing at this venv's snapd (the real path
    /opt/container-snapd/bin/snapd does not exist on a test machine)."""
    snapd_bin = Path(sys.executable).parent / "snapd"
    assert snapd_bin.exists(), snapd_bin
    service = (UNITS / "container-snapd.service").read_text()
    assert "ExecStart=/opt/container-snapd/bin/snapd serve --config /etc/container-snapd/config.toml" in service
    service = service.replace("/opt/container-snapd/bin/snapd", str(snapd_bin))
    (tmp_path / "container-snapd.service").write_text(service)
    shutil.copy(UNITS / "container-snapd.socket", tmp_path / "container-snapd.socket")
    return tmp_path / "container-snapd.service", tmp_path / "container-snapd.socket"


# -- unit files --------------------------------------------------------------------


def test_units_verify(tmp_path: Path) -> None:
    need("systemd-analyze")
    service, sock = unit_copies(tmp_path)
    res = subprocess.run(["systemd-analyze", "verify", str(service), str(sock)],
                         check=False, capture_output=True, text=True, timeout=60)
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "container-snapd" in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr


def test_unit_keeps_the_contract() -> None:
    service = (UNITS / "container-snapd.service").read_text()
    sock = (UNITS / "container-snapd.socket").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "StateDirectory=container-snapd", "RuntimeDirectory=container-snapd",
                 "ConfigurationDirectory=container-snapd", "NotifyAccess=main"):
        assert line in service
    assert re.search(r"^WatchdogSec=\d+", service, re.MULTILINE)
    assert "ListenStream=/run/container-snapd/api.sock" in sock
    assert "SocketGroup=container-snapd" in sock and "FileDescriptorName=api" in sock
    assert re.search(r"^#ListenStream=127\.0\.0\.1:\d+", sock, re.MULTILINE)
    # every kept capability is explained in a comment
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", service, re.MULTILINE).group(1).split()
    comments = "\n".join(line for line in service.splitlines() if line.startswith("#"))
    for cap in caps:
        assert re.search(rf"#\s+{cap}\s", comments), f"{cap} is not explained"


def exposure(unit: Path) -> float:
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                         check=False, capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert m, res.stdout[-2000:] + res.stderr
    return float(m.group(1))


def test_security_exposure(tmp_path: Path) -> None:
    need("systemd-analyze")
    service, _ = unit_copies(tmp_path)
    score = exposure(service)
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}"


# -- sd_notify ---------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting now."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
        sock.settimeout(5)
    return out


async def arrivals(sock: socket.socket, count: int, what: str) -> list[str]:
    """Wait (the event loop running) until `count` more datagrams have arrived; all of them."""
    got: list[str] = []
    await eventually(lambda: got.extend(received(sock)) or len(got) >= count, what)
    return got


def test_notify_ready_status_stopping(notify_socket: socket.socket) -> None:
    assert systemd.ready("serving 2 pools\n(more)")
    msg = notify_socket.recv(4096).decode().split("\n")
    assert msg[0] == "READY=1" and f"MAINPID={os.getpid()}" in msg
    assert "STATUS=serving 2 pools (more)" in msg
    assert systemd.status("x" * 500)
    status = notify_socket.recv(4096).decode()
    assert status.startswith("STATUS=x") and len(status) < 300
    assert systemd.reloading()
    assert notify_socket.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert systemd.stopping("draining")
    assert notify_socket.recv(4096).decode() == "STOPPING=1\nSTATUS=draining"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"snapd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_notify_without_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False  # never raises


async def test_watchdog_pings_from_the_event_loop(notify_socket: socket.socket,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: a ping every 0.05 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    summary = ["1 pool"]
    dog = systemd.Watchdog(status=lambda: summary[0])
    assert dog.enabled and dog.interval == pytest.approx(0.05)
    dog.start()
    first = await arrivals(notify_socket, 4, "four pings")
    assert all(m.startswith("WATCHDOG=1") for m in first)
    assert first[0] == "WATCHDOG=1\nSTATUS=1 pool"
    assert "STATUS" not in "".join(first[1:])  # only sent when it changes
    summary[0] = "2 pools"
    (changed,) = await arrivals(notify_socket, 1, "a ping after the status changed")
    assert changed == "WATCHDOG=1\nSTATUS=2 pools"

    # a blocked event loop sends no pings: that is what gets a hung daemon restarted
    time.sleep(0.4)  # noqa: ASYNC251 -- blocking the loop on purpose, for 8 intervals
    assert received(notify_socket) == []
    await arrivals(notify_socket, 1, "pings resume with the loop")
    pings = dog.pings
    await dog.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "watchdog"]  # nothing left to ping
    assert received(notify_socket) == [] and dog.pings == pings


def test_watchdog_for_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_usec() is None
    assert not systemd.Watchdog().enabled
    monkeypatch.delenv("WATCHDOG_PID")
    assert systemd.Watchdog().interval == pytest.approx(0.5)


# -- socket activation ---------------------------------------------------------------------

CHILD = r"""
import json, os, socket, sys
from snapd.host import systemd
pending = systemd.activation_pending()
found = systemd.listen_fds()
report = {
    "pending": pending,
    "names": {k: [[s.family.name, s.type.name, s.getsockname() if s.family != socket.AF_UNIX else s.getsockname()]
                  for s in v] for k, v in found.items()},
    "env_left": [k for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES") if k in os.environ],
    "blocking": [s.getblocking() for v in found.values() for s in v],
}
api = found["api"][0]
api.setblocking(True)
conn, _ = api.accept()
conn.sendall(json.dumps(report).encode())
conn.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_listen_fds_under_systemd_socket_activate(tmp_path: Path) -> None:
    tool = need("systemd-socket-activate")
    path = tmp_path / "api.sock"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [tool, "-l", str(path), "-l", f"127.0.0.1:{port}", "--fdname=api:tcp",
         sys.executable, "-c", CHILD],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(lambda: unix_listening(path) or proc.poll() is not None, "systemd-socket-activate listens")
        assert proc.poll() is None, proc.stderr.read()  # it exited: its stderr is complete
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(15)
            c.connect(str(path))  # this starts the child, which answers on it
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        report = json.loads(data)
    finally:
        proc.kill()
        proc.wait()
    assert report["pending"] is True
    assert report["names"]["api"] == [["AF_UNIX", "SOCK_STREAM", str(path)]]
    assert report["names"]["tcp"] == [["AF_INET", "SOCK_STREAM", ["127.0.0.1", port]]]
    assert report["env_left"] == []
    assert report["blocking"] == [False, False]


def test_listen_fds_not_for_us(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "2")
    monkeypatch.setenv("LISTEN_FDNAMES", "api:tcp")
    assert not systemd.activation_pending()
    assert systemd.listen_fds() == {}
    assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ


def test_listen_fds_unnamed_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inherited fds 3 and 4 (dup2'ed here), no names: both 'unknown'."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    saved = [os.dup(3) if _fd_open(3) else None, os.dup(4) if _fd_open(4) else None]
    try:
        os.dup2(unix.fileno(), 3)
        os.dup2(tcp.fileno(), 4)
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        monkeypatch.setenv("LISTEN_FDS", "2")
        monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
        found = systemd.ActivatedSockets.take()
        assert [s.fileno() for s in found.unix] == [3] and [s.fileno() for s in found.tcp] == [4]
        assert found.tcp_addresses() == [tcp.getsockname()]
        for s in found.unix + found.tcp:
            s.detach()
    finally:
        for fd, old in zip((3, 4), saved):
            if old is None:
                os.close(fd)
            else:
                os.dup2(old, fd)
                os.close(old)
        unix.close()
        tcp.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# -- scripts/install.sh ----------------------------------------------------------------------


def tree_digest(root: Path) -> str:
    """Names, types, modes, sizes, mtimes and contents of everything under root."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)} {st.st_mode:o} {st.st_size} {st.st_mtime_ns}\n".encode())
            if p.is_file() and not p.is_symlink():
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.timeout(180)
def test_install_script_into_a_prefix(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a frozen copy: the work tree may change under the test
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("snapd", "backends", "systemd", "completion", "scripts"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    root = tmp_path / "root"
    state = root / "var/lib/container-snapd"
    state.mkdir(parents=True)
    (state / "snapd.db").write_text("not touched")
    before = listing(root)

    def install(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run(["bash", str(src / "scripts/install.sh"), "--prefix", str(root),
                              "--python", sys.executable, "--pip-args=--no-deps", *args],
                             check=False, capture_output=True, text=True, timeout=170)
        assert res.returncode == 0, res.stdout + res.stderr
        return res

    install()
    for rel in ("opt/container-snapd/bin/snapd", "etc/systemd/system/container-snapd.service",
                "etc/systemd/system/container-snapd.socket", "etc/container-snapd/config.toml",
                "etc/systemd/system/container-snapd.service.d/50-pools.conf",
                "usr/share/bash-completion/completions/snapd"):
        assert (root / rel).is_file(), rel
    assert (root / "etc/systemd/system/container-snapd.service").read_bytes() == \
        (UNITS / "container-snapd.service").read_bytes()
    config = (root / "etc/container-snapd/config.toml").read_text()
    for key in ("socket", "listen", "state_dir", "pools", "log_level", "log_format"):
        assert re.search(rf"^#{key} = ", config, re.MULTILINE), key
    import tomllib
    assert tomllib.loads(config) == {}  # all commented: the defaults apply
    py = root / "opt/container-snapd/bin/python"
    subprocess.run([str(py), "-c", "import snapd.host.systemd, snapd.cli.completion"], check=True, timeout=30)

    digest = tree_digest(root)
    second = install()
    assert "install.sh: installed" not in second.stdout, second.stdout
    assert tree_digest(root) == digest, "a second install changed the tree"

    install("--uninstall")
    assert listing(root) == before
    assert (state / "snapd.db").read_text() == "not touched"


def test_install_script_keeps_an_edited_config(tmp_path: Path) -> None:
    """Uninstall keeps a config the admin changed (no venv: only the manifest matters)."""
    root = tmp_path / "root"
    share = root / "opt/container-snapd/share/container-snapd"
    share.mkdir(parents=True)
    conf = root / "etc/container-snapd/config.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text("# installed\n")
    unit = root / "etc/systemd/system/container-snapd.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\n")
    digest = hashlib.sha256(b"# installed\n").hexdigest()
    udigest = hashlib.sha256(b"[Service]\n").hexdigest()
    (share / "install-manifest").write_text(
        f"dir etc/container-snapd\nfile {digest} etc/container-snapd/config.toml\n"
        f"file {udigest} etc/systemd/system/container-snapd.service\n")
    conf.write_text('log_level = "debug"\n')
    res = subprocess.run(["bash", str(REPO / "scripts/install.sh"), "--prefix", str(root), "--uninstall"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert conf.read_text() == 'log_level = "debug"\n' and "keeping" in res.stdout
    assert not unit.exists() and not (root / "opt/container-snapd").exists()
