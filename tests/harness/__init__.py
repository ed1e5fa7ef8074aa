"""Real pools for tests: one harness per backend kind.

A harness sets up a real pool (a directory, a loop-mounted btrfs, a
zfs-fuse pool) under the test's temporary directory, makes containers in
it, and removes everything it made on close.  `unavailable()` says why a
kind cannot run here (None when it can); under CI=true that is a failure,
not a skip (see conftest).
"""

from __future__ import annotations

import abc
import os
import secrets
from pathlib import Path


def new_cid() -> str:
    """A fresh random container id (24 lower-case hex characters)."""
    return secrets.token_hex(12)


class PoolHarness(abc.ABC):
    """A real pool of one backend kind, made for tests."""

    kind: str = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this kind cannot run on this machine, or None."""
        return None

    @property
    @abc.abstractmethod
    def spec(self) -> str:
        """The `--pool` value for the daemon, e.g. `overlay:/tmp/x/pool`."""

    @abc.abstractmethod
    def make_container(self, cid: str) -> Path:
        """Create an empty container `cid`; return the directory holding its files."""

    @abc.abstractmethod
    def container_path(self, cid: str) -> Path:
        """The directory holding the container's files."""

    @abc.abstractmethod
    def artifacts(self) -> set[str]:
        """Every snapshot-ish thing on disk (for 'nothing stray' checks)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Remove everything made (unmount, detach loop devices, destroy pools)."""


def is_root() -> bool:
    return os.geteuid() == 0


HARNESSES: dict[str, str] = {
    "overlay": "tests.harness.overlay:OverlayHarness",
    "btrfs": "tests.harness.btrfs:BtrfsHarness",
    "zfs": "tests.harness.zfs:ZfsHarness",
}
"""Backend kind -> 'module:Class' of its harness (imported lazily)."""


def harness_class(kind: str) -> type[PoolHarness]:
    import importlib

    module, _, cls = HARNESSES[kind].partition(":")
    return getattr(importlib.import_module(module), cls)
