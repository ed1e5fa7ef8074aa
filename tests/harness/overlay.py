"""Directory pools for the overlay fallback backend (any local filesystem)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import PoolHarness


class OverlayHarness(PoolHarness):
    """A plain directory pool under the test's temporary directory."""

    kind = "overlay"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.root = workdir / "pool"
        self.root.mkdir(parents=True)

    @classmethod
    def at(cls, root: Path) -> "OverlayHarness":
        """A harness for an existing directory pool `root` (a test's own pool)."""
        harness = cls.__new__(cls)
        PoolHarness.__init__(harness, root.parent)
        harness.root = root
        return harness

    @property
    def spec(self) -> str:
        return f"overlay:{self.root}"

    def make_container(self, cid: str) -> Path:
        path = self.root / cid
        path.mkdir()
        return path

    def container_path(self, cid: str) -> Path:
        return self.root / cid

    def artifacts(self) -> set[str]:
        snapdir = self.root / ".snapshots"
        found: set[str] = set()
        if not snapdir.exists():
            return found
        for top in os.scandir(snapdir):
            if top.name == ".tmp":
                found.update(f".tmp/{e.name}" for e in os.scandir(top.path))
            else:
                found.update(f"{top.name}/{e.name}" for e in os.scandir(top.path))
        return found

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
