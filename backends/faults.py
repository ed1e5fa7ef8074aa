"""Fault injection: named points where the daemon can be made to die (tests only).

    faults.point("overlay.create.after-copy")

does nothing unless the environment variable SNAPD_FAULT, read ONCE when
this module is imported, names that point (comma-separated list).  Then
the process SIGKILLs itself there -- no cleanup, no finally blocks, no
flushing: exactly what a power cut or an OOM kill does to the daemon.

Cost when disabled: one module-global frozenset membership test (and the
set is empty, so `if _ENABLED` short-circuits first).  Nothing is read
from the environment after import.

POINTS lists every compiled-in point with what has happened by then; the
fault-matrix test (tests/test_faults.py) iterates it, and
the README's "Failure behaviour" explains what start-up does for each.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "SNAPD_FAULT"

_ENABLED: frozenset[str] = frozenset(
    p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()
)

POINTS: dict[str, str] = {
    # service (every backend): around the journal and the store
    "service.create.journaled": "intent written, nothing on disk yet",
    "service.create.on-disk": "snapshot made on disk, store row not yet written",
    "service.restore.journaled": "intent written, container untouched",
    "service.restore.on-disk": "container swapped on disk, store not yet updated",
    "service.delete.journaled": "intent written, snapshot still on disk",
    "service.delete.on-disk": "snapshot gone from disk, store row still there",
    # freezing (a pool with freeze = true and a running container)
    "service.import.on-disk": "an imported snapshot made visible on disk, store row not yet written",
    "freeze.create.frozen": "create intent written, the container's cgroup frozen (journalled), no snapshot yet",
    # restore-paths (every backend: backends/pathrestore.py)
    "pathrestore.swapped": "restore-paths: the first path swapped into place, the others not yet",
    # overlay
    "overlay.create.after-copy": "copy complete in .tmp, not yet renamed into place",
    "overlay.restore.after-copy": "new tree built beside the container, not yet swapped",
    "overlay.restore.after-exchange": "swapped; the old tree not yet removed",
    "overlay.delete.after-rename": "snapshot moved into .tmp, not yet removed",
    "overlay.import.received": "an imported tree complete and checked in .tmp, not yet renamed into place",
    # btrfs
    "btrfs.restore.after-copy": "writable snapshot made in .tmp, not yet swapped",
    "btrfs.restore.after-exchange": "swapped; the old subvolume not yet deleted",
    "btrfs.import.received": "an imported tree complete and checked in a scratch subvolume, not yet published",
    # zfs
    "zfs.restore.after-clone": "clone made and promoted, container still in place",
    "zfs.restore.after-rename-old": "container renamed to a holder; NO dataset at the container's name",
    "zfs.restore.after-rename-new": "clone renamed into place, mount settings not yet restored",
}
"""Every fault point and the state on disk when it fires."""


def enabled() -> frozenset[str]:
    return _ENABLED


def point(name: str) -> None:
    """Die here (SIGKILL) when SNAPD_FAULT names this point; otherwise nothing."""
    if _ENABLED and name in _ENABLED:
        _die(name)


def _die(name: str) -> None:  # pragma: no cover - the process ends here
    try:
        os.write(2, f"snapd: fault point {name} reached: SIGKILL\n".encode())
    except OSError:
        pass
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
