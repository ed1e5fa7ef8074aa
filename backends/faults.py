"""Fault injection: named points where the daemon can be made to die (tests only).

    faults.point("overlay.create.after-copy")

does nothing unless the environment variable SNAPD_FAULT, read ONCE when
this module is imported, names that point (comma-separated list).  Then
the process SIGKILLs itself there -- no cleanup, no finally blocks, no
flushing: exactly what a power cut or an OOM kill does to the daemon.

Cost when disabled: one module-global frozenset membership test (and the
set is empty, so `if _ENABLED` short-circuits first).  Nothing is read
from the environment after import.

Holds (cross-process, for tests that must see the daemon in a given state
without sleeping): SNAPD_FAULT_HOLD="point=DIR[,point=DIR]".  When the point
is reached while a FIFO `DIR/hold` exists, the daemon renames it (one hold
per arming), writes the point's name into it (so the test, reading it, knows
the point is reached) and then waits, in the thread that reached it, until
the test opens the FIFO `DIR/release` for writing and closes it.  Arming:
tests/holds.py.  With SNAPD_FAULT_ARMED=DIR, a point SNAPD_FAULT names kills
only once a file of the point's name exists in DIR (a test arms it when the
state it wants is set up).

POINTS lists every compiled-in point with what has happened by then; the
fault-matrix test (tests/test_faults.py) iterates it, and
the README's "Failure behaviour" explains what start-up does for each.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "SNAPD_FAULT"
HOLD_ENV = "SNAPD_FAULT_HOLD"
ARMED_ENV = "SNAPD_FAULT_ARMED"

_ENABLED: frozenset[str] = frozenset(
    p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()
)
_HOLDS: dict[str, str] = dict(
    p.strip().split("=", 1) for p in os.environ.get(HOLD_ENV, "").split(",") if "=" in p
)
_ARMED: str = os.environ.get(ARMED_ENV, "")

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
    "zfs.native.received": "a native stream received and verified into a scratch dataset, not yet a holder",
    "zfs.native.held": "a new container's received snapshot in a holder, the container not yet cloned from it",
    # the store's writer (snapd/core/writer.py): any operation's intent or outcome
    "store.writer.gathering": "a job taken by the writer, the others waiting not yet gathered, nothing written",
    "store.writer.before-commit": "a batch of jobs written in its transaction, not committed",
    "store.writer.committed": "a batch committed (durable), no caller told yet",
}
"""Every fault point and the state on disk when it fires."""


def enabled() -> frozenset[str]:
    return _ENABLED


def point(name: str) -> None:
    """Die here (SIGKILL) when SNAPD_FAULT names this point (and, with SNAPD_FAULT_ARMED,
    it is armed); wait here when SNAPD_FAULT_HOLD holds it; otherwise nothing."""
    if _HOLDS and name in _HOLDS:
        _hold(name, _HOLDS[name])
    if _ENABLED and name in _ENABLED and (not _ARMED or os.path.exists(os.path.join(_ARMED, name))):
        _die(name)


def _hold(name: str, directory: str) -> None:
    """Wait at `name` while a test holds it (see the module's doc and tests/holds.py)."""
    armed, held = os.path.join(directory, "hold"), os.path.join(directory, "held")
    try:
        os.rename(armed, held)  # one hold per arming
    except FileNotFoundError:
        return
    with open(held, "wb") as fifo:  # the test holds it open for reading
        fifo.write(name.encode() + b"\n")
    with open(os.path.join(directory, "release"), "rb") as release:
        release.read()  # until the test's writer closes it
    os.unlink(held)


def _die(name: str) -> None:  # pragma: no cover - the process ends here
    try:
        os.write(2, f"snapd: fault point {name} reached: SIGKILL\n".encode())
    except OSError:
        pass
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
