"""A real zfs-fuse (or OpenZFS) pool on a sparse file, for tests and benchmarks.

Starts `zfs-fuse` when no ZFS daemon answers (and stops only that process
on close), creates pool `snapdtest<random>` on `<workdir>/zpool.img` with
its mountpoint under workdir, and a root dataset `<pool>/containers`.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from backends.zfs_cmd import find_tool

from . import PoolHarness, is_root

_lock = threading.Lock()
_daemon: subprocess.Popen | None = None
_users = 0
_machine: int | None = None
LOCK_PATH = os.path.join(tempfile.gettempdir(), "snapd-test-zfs.lock")
LOCK_WAIT = 1800


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    tool = find_tool(argv[0])
    res = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


def _zfs_answers() -> bool:
    try:
        return _run("zpool", "list", "-H", check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _lock_machine() -> None:
    """One process on the machine uses zfs-fuse at a time: two test runs side by side (a
    stress lane and a targeted run) wedge it, and one stopping its zfs-fuse pulls the
    other's pools away.  A second run waits here (up to LOCK_WAIT seconds)."""
    global _machine
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _machine = fd
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(f"another test run has held {LOCK_PATH} for {LOCK_WAIT} s") from None
            time.sleep(0.5)


def _unlock_machine() -> None:
    global _machine
    if _machine is not None:
        os.close(_machine)  # drops the flock
        _machine = None


def _acquire_daemon() -> None:
    """Make sure a ZFS daemon answers; start zfs-fuse (once per process) if not."""
    global _daemon, _users
    with _lock:
        _users += 1
        if _users == 1:
            try:
                _lock_machine()
            except BaseException:
                _users -= 1
                raise
        if _daemon is not None or _zfs_answers():
            return
        zf = find_tool("zfs-fuse")
        _daemon = subprocess.Popen(
            [zf, "--no-daemon", "-a", "0", "-e", "0", "--no-kstat-mount"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 15
        while not _zfs_answers():
            if _daemon.poll() is not None or time.monotonic() > deadline:
                proc, _daemon = _daemon, None
                _users -= 1
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if _users == 0:
                    _unlock_machine()
                raise RuntimeError("zfs-fuse did not start")
            time.sleep(0.1)


def _release_daemon() -> None:
    """Stop the zfs-fuse this process started, once its last user is done."""
    global _daemon, _users
    with _lock:
        _users -= 1
        if _users > 0:
            return
        if _daemon is not None:
            proc, _daemon = _daemon, None
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _unlock_machine()


class ZfsHarness(PoolHarness):
    kind = "zfs"

    def __init__(self, workdir: Path, size: int = 2 << 30) -> None:
        """`size`: bytes of the pool's sparse file (a benchmark wants more than 2 GiB)."""
        super().__init__(workdir)
        self.pool = f"snapdtest{secrets.token_hex(4)}"
        self.root = f"{self.pool}/containers"
        self.image = workdir / "zpool.img"
        self.mnt = workdir / "zmnt"
        self._made_pool = False
        _acquire_daemon()
        self._holds_daemon = True
        try:
            self.mnt.mkdir(parents=True, exist_ok=True)
            with open(self.image, "wb") as f:
                f.truncate(size)
            _run("zpool", "create", "-m", str(self.mnt), self.pool, str(self.image))
            self._made_pool = True
            _run("zfs", "create", self.root)
        except BaseException:
            self.close()
            raise

    @classmethod
    def unavailable(cls) -> str | None:
        if not is_root():
            return "zfs tests need root"
        for tool in ("zfs", "zpool"):
            if find_tool(tool) == tool:
                return f"`{tool}` not installed (apt install zfs-fuse)"
        if _zfs_answers():
            return None
        if find_tool("zfs-fuse") == "zfs-fuse":
            return "no ZFS daemon answers and zfs-fuse is not installed"
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse missing (zfs-fuse needs FUSE)"
        return None

    @property
    def spec(self) -> str:
        return f"zfs:{self.root}"

    @property
    def snapdir(self) -> bool:
        """True when this ZFS shows `.zfs/snapshot` (OpenZFS); zfs-fuse has none."""
        return os.path.isdir(os.path.join(self.mnt, "containers", ".zfs"))

    def dataset(self, cid: str) -> str:
        return f"{self.root}/{cid}"

    def make_container(self, cid: str) -> Path:
        _run("zfs", "create", self.dataset(cid))
        return self.container_path(cid)

    def container_path(self, cid: str) -> Path:
        res = _run("zfs", "get", "-H", "-o", "value", "mountpoint", self.dataset(cid))
        return Path(res.stdout.strip())

    def artifacts(self) -> set[str]:
        res = _run("zfs", "list", "-H", "-o", "name", "-t", "all", "-r", self.root)
        return {line for line in res.stdout.splitlines() if line}

    def props(self, names: list[str], props: str) -> dict[str, dict[str, str]]:
        """`zfs get -Hp` of some datasets/snapshots (test helper)."""
        res = _run("zfs", "get", "-Hp", "-o", "name,property,value", props, *names)
        out: dict[str, dict[str, str]] = {}
        for line in res.stdout.split("\n"):  # not splitlines(): values may hold U+2028
            if not line:
                continue
            name, prop, value = line.split("\t", 2)
            out.setdefault(name, {})[prop] = value
        return out

    def close(self) -> None:
        try:
            if self._made_pool:
                res = _run("zpool", "destroy", "-f", self.pool, check=False)
                if res.returncode != 0:
                    time.sleep(1)
                    _run("zpool", "destroy", "-f", self.pool, check=False)
                self._made_pool = False
        finally:
            if self.image.exists():
                self.image.unlink()
            shutil.rmtree(self.mnt, ignore_errors=True)
            if self._holds_daemon:
                self._holds_daemon = False
                _release_daemon()
