"""A real btrfs pool for tests: a sparse file, mkfs.btrfs, mount -o loop.

Loop devices are scarce (/dev/loop0-7): close() unmounts and detaches
whatever is attached to the image, also after a failed set-up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from . import PoolHarness, is_root

IMAGE_SIZE = 1 << 30


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), check=check, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )


class BtrfsHarness(PoolHarness):
    """A loop-mounted btrfs filesystem; the pool root is `<mount>/pool`."""

    kind = "btrfs"

    def __init__(self, workdir: Path, size: int = IMAGE_SIZE) -> None:
        super().__init__(workdir)
        self.image = workdir / "btrfs.img"
        self.mountpoint = workdir / "mnt"
        self.root = self.mountpoint / "pool"
        self._closed = False
        try:
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            with open(self.image, "wb") as f:
                f.truncate(size)
            _run("mkfs.btrfs", "-q", "-f", str(self.image))
            _run("mount", "-o", "loop", str(self.image), str(self.mountpoint))
            self.root.mkdir()
        except BaseException:
            self.close()
            raise

    @classmethod
    def unavailable(cls) -> str | None:
        if not is_root():
            return "btrfs tests need root (mount, loop devices)"
        for tool in ("mkfs.btrfs", "btrfs", "losetup", "mount", "umount"):
            if shutil.which(tool) is None:
                return f"{tool} not found (install btrfs-progs / util-linux)"
        if _run("losetup", "-f", check=False).returncode != 0:
            return "no free loop device"
        return None

    @property
    def spec(self) -> str:
        return f"btrfs:{self.root}"

    def make_container(self, cid: str) -> Path:
        path = self.container_path(cid)
        _run("btrfs", "subvolume", "create", str(path))
        return path

    def container_path(self, cid: str) -> Path:
        return self.root / cid

    def subvolumes(self) -> set[str]:
        """Every subvolume on the filesystem, relative to the mount point."""
        out = _run("btrfs", "subvolume", "list", str(self.mountpoint)).stdout
        return {line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line}

    def artifacts(self) -> set[str]:
        """Subvolumes (containers and snapshots) under the pool root, relative to it."""
        prefix = "pool/"
        return {p[len(prefix):] for p in self.subvolumes() if p.startswith(prefix)}

    def enable_quotas(self) -> None:
        _run("btrfs", "quota", "enable", str(self.mountpoint))
        _run("btrfs", "quota", "rescan", "-w", str(self.mountpoint))

    def disable_quotas(self) -> None:
        _run("btrfs", "quota", "disable", str(self.mountpoint))

    def sync(self) -> None:
        """Commit the transaction so qgroup accounting is current."""
        _run("btrfs", "filesystem", "sync", str(self.mountpoint))

    def loop_devices(self) -> list[str]:
        """Loop devices attached to the image (empty after close)."""
        if not self.image.exists():
            return []
        out = _run("losetup", "-j", str(self.image), check=False).stdout
        return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.path.ismount(self.mountpoint):
            for attempt in range(10):
                if _run("umount", str(self.mountpoint), check=False).returncode == 0:
                    break
                time.sleep(0.2 * (attempt + 1))
            else:
                _run("umount", "-l", str(self.mountpoint), check=False)
        leaked = self.loop_devices()
        for attempt in range(20):  # autoclear after umount may lag a little
            if not leaked:
                break
            for dev in leaked:
                _run("losetup", "-d", dev, check=False)
            time.sleep(0.05 * attempt)
            leaked = self.loop_devices()
        if self.image.exists() and not leaked:
            self.image.unlink()
        if leaked:
            raise RuntimeError(f"loop devices still attached to {self.image}: {leaked}")

    def __enter__(self) -> BtrfsHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
