"""The after-check every hostile-input finding test ends with (issue 11).

After the test's actions, the daemon it used restarts cleanly (exit 0 on SIGTERM,
answers after start, no traceback in what the new start logs, no journal entry left
pending), the store matches the disk for the test's containers (every listed snapshot
is in the pool, nothing in the pool for them is unlisted, no scratch left; checked
before the restart too when the daemon is running, since start-up adopts strays and
clears scratch), and a
canary tree outside the pool, made before the test's actions, is unchanged.

    def test_x(..., host_unharmed: HostCheck) -> None:
        ...
        host_unharmed(d, pool, [cid])
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from .client import snaps
from .crash import missing, pending_journal, strays
from .daemon import DaemonProcess
from .digest import tree_digest, write_tree
from .harness import PoolHarness
from .harness.overlay import OverlayHarness

STATUS = "/api/v1/admin/status"


def make_canary(root: Path) -> Path:
    """A small tree outside any pool: files, a subdirectory, symlinks to a file and a directory."""
    write_tree(root, {"keep.txt": "precious", "sub/data": "more", "sub/deeper/leaf": "leaf"})
    os.symlink("keep.txt", root / "link-to-file")
    os.symlink("sub/deeper", root / "link-to-dir")
    return root


class HostCheck:
    """Made before the test's actions (it digests the canary then); call it at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.canary = make_canary(tmp_path / "canary")
        self.before = tree_digest(self.canary)

    def __call__(self, daemon: DaemonProcess, pool: PoolHarness | Path, cids: Iterable[str]) -> None:
        """Restart `daemon` and check it, `pool` (a harness, or an overlay pool's directory)
        for `cids`, and the canary.  A daemon found running is left running; one found
        stopped is stopped again (exit 0 required both times)."""
        harness = OverlayHarness.at(pool) if isinstance(pool, Path) else pool
        cids = list(cids)
        was_running = daemon.proc is not None and daemon.proc.poll() is None
        if was_running:  # before start-up's reconciliation could adopt or clear anything
            self._store_matches_disk(daemon, harness, cids)
        code = daemon.stop()
        assert code == 0, f"daemon exited {code}:\n{daemon.log_text()[-3000:]}"
        logged = len(daemon.log_text())
        daemon.start()
        try:
            r = daemon.unix.get(STATUS)
            assert r.status == 200, r.body
            self._store_matches_disk(daemon, harness, cids)
            assert pending_journal(daemon) == []
            started = daemon.log_text()[logged:]
            assert "Traceback" not in started, started[-3000:]
        finally:
            if not was_running:
                code = daemon.stop()
                assert code == 0, f"daemon exited {code}:\n{daemon.log_text()[-3000:]}"
        assert tree_digest(self.canary) == self.before, "the canary outside the pool changed"

    @staticmethod
    def _store_matches_disk(daemon: DaemonProcess, pool: PoolHarness, cids: list[str]) -> None:
        for cid in cids:
            r = daemon.unix.get(snaps(cid))
            assert r.status == 200, r.body
            listed = {s["name"] for s in r.data["snapshots"]}
            assert missing(pool, cid, listed) == [], f"{cid}: listed but not in the pool"
            assert strays(pool, cid, listed) == [], f"{cid}: in the pool but not listed"


@pytest.fixture
def host_unharmed(tmp_path: Path) -> Iterator[HostCheck]:
    """The issue-11 after-check (see the module docstring); the canary is checked again at teardown."""
    check = HostCheck(tmp_path)
    yield check
    assert tree_digest(check.canary) == check.before, "the canary outside the pool changed"
