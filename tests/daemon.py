"""Run the real daemon as a child process for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

from .client import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """`python -m snapd serve ...` with its own socket and state dir."""

    # every daemon a test started: killed at the end of the session, so an interrupted run
    # (Ctrl-C, the stress script's TERM) leaves no `snapd serve` behind
    started: "weakref.WeakSet[DaemonProcess]" = weakref.WeakSet()

    def __init__(self, workdir: Path, pools: list[str], *, tcp: bool = True,
                 extra: list[str] | None = None, env: dict[str, str] | None = None,
                 state_dir: Path | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "api.sock"
        self.state_dir = state_dir or workdir / "state"
        self.port = free_port() if tcp else None
        self.pools = pools
        self.extra = extra or []
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "daemon.log"

    def args(self) -> list[str]:
        args = [sys.executable, "-m", "snapd", "serve", "--socket", str(self.socket),
                "--state-dir", str(self.state_dir), "--log-level", "debug"]
        for p in self.pools:
            args += ["--pool", p]
        if self.port:
            args += ["--listen", f"127.0.0.1:{self.port}"]
        return args + self.extra

    def start(self, timeout: float = 60) -> "DaemonProcess":
        env = {**os.environ, **self.env}
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        DaemonProcess.started.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            if self.socket.exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(self.socket))
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"daemon did not start in {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def unix(self) -> Client:
        return Client(unix=self.socket)

    @property
    def tcp(self) -> Client:
        assert self.port
        return Client(tcp=("127.0.0.1", self.port))

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log_file.close()
        return code

    def close(self) -> None:
        """Stop it if it was started and still runs (teardown, whatever the test did with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        elif self.proc is not None:
            self.kill()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_log_file"):
            self._log_file.close()


def kill_leftover_daemons() -> int:
    """Kills (SIGKILL, by pid) every daemon a test started that still runs; returns how many."""
    left = [d for d in list(DaemonProcess.started) if d.proc and d.proc.poll() is None]
    for d in left:
        d.kill()
    return len(left)


def refused_start(workdir: Path, config: str) -> str:
    """`snapd serve` with `config` as its file (and an empty overlay pool) must refuse to start
    with one line, exit 2 and no traceback; its stderr."""
    cfg = workdir / "c.toml"
    cfg.write_text(config)
    (workdir / "pool").mkdir()
    out = subprocess.run([sys.executable, "-m", "snapd", "serve", "--config", str(cfg), "--pool",
                          f"overlay:{workdir / 'pool'}", "--socket", str(workdir / "s"), "--state-dir",
                          str(workdir / "st")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("snapd: "), out.stderr
    assert "Traceback" not in out.stderr
    return out.stderr
