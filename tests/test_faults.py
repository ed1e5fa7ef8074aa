"""Crash consistency: the daemon dies (SIGKILL) at every fault point, on every backend.

Each case: a clean daemon prepares a container with snapshots s1, s2 and a
live state unlike both; a daemon started with SNAPD_FAULT=<point> runs one
operation and kills itself at the point (the client sees the connection
drop); a clean daemon starts again and must show a consistent world
(tests/crash.py: Scenario.check) and serve normally.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from backends import faults

from .client import snaps
from .conftest import pool_kinds
from .crash import container_digest, killed_at, prepared, soak
from .daemon import DaemonProcess
from .harness import PoolHarness
from .rootfs import require_root

# What each operation may leave: container states, snapshots that must stay, ones that may go.
OPS = {
    "create": dict(container_in=["live"], must_list=["s1", "s2"]),
    "restore": dict(container_in=["live", "s1"], must_list=["s1", "s2"]),
    "delete": dict(container_in=["live"], must_list=["s2"]),
}


# Every service point on every backend, and each backend's own points on it.
CASES = [
    pytest.param(kind, point, id=f"{kind}-{point}")
    for kind in pool_kinds()
    for point in sorted(faults.POINTS)
    if point.split(".", 1)[0] in ("service", kind) and point.split(".")[1] in OPS  # imports: test_transfer
]


@pytest.mark.parametrize("pool,point", CASES, indirect=["pool"])
def test_crash_at_fault_point(pool: PoolHarness, tmp_path: Path, point: str) -> None:
    _where, op, _ = point.split(".", 2)
    work = tmp_path / "d"
    sc = prepared(pool, work)
    requests = {
        "create": lambda: d.unix.post(snaps(sc.cid), {"alias": "crashed", "expiry": 30}),
        "restore": lambda: d.unix.patch(snaps(sc.cid, sc.names["s1"])),
        "delete": lambda: d.unix.delete(snaps(sc.cid, sc.names["s1"])),
    }
    d = DaemonProcess(work, [pool.spec], tcp=False, env={faults.ENV: point}).start()
    killed_at(d, point, requests[op])

    d = DaemonProcess(work, [pool.spec], tcp=False).start()
    try:
        listed = {s["name"]: s for s in d.unix.get(snaps(sc.cid)).data["snapshots"]}
        may = {}
        if op == "create":
            new = set(listed) - set(sc.names.values())
            assert len(new) <= 1, new
            may = {n: "live" for n in new}
            for n in new:  # rolled forward from the journal: alias and expiry kept
                assert listed[n]["alias"] == "crashed" and listed[n]["expires_at"] is not None
        elif op == "delete":
            may = {sc.names["s1"]: "s1"}
        sc.check(d, **OPS[op], may_list=may)
        assert "recover journal id=" in d.log_text() or op == "create" and point.endswith("journaled")
        # and it serves normally: snapshot, restore, delete
        made = d.unix.post(snaps(sc.cid))
        assert made.status == 200, made.body
        assert d.unix.patch(snaps(sc.cid, sc.names["s2"])).status == 200
        assert container_digest(pool, sc.cid) == sc.states["s2"]
        assert d.unix.delete(snaps(sc.cid, made.data["snapshot"]["name"])).status == 200
    finally:
        assert d.stop() == 0


# Its work is a fixed number of rounds whose cost follows the machine's speed (a 2,500-level
# tree digested through zfs-fuse); 300 s was exceeded on a 2-core machine at load 10.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("hostile", [False, True], ids=["plain", "hostile"])
def test_random_kills(pool: PoolHarness, tmp_path: Path, hostile: bool) -> None:
    """A short soak: operations killed at random moments (scripts/soak.py runs it longer).

    Hostile: a 5,000-level tree (2,500 on zfs-fuse) with links beyond PATH_MAX in the
    container, and from the third round at the latest a tmpfs and a bind mount inside it.
    """
    if hostile:
        require_root()
    slow = pool.kind == "zfs"  # every step through zfs-fuse costs a FUSE round trip
    seed = int(os.environ.get("SNAPD_SOAK_SEED", random.randrange(1 << 30)))
    n = int(os.environ.get("SNAPD_SOAK_N", "5" if not hostile else "3" if slow else "4"))
    depth = 2500 if slow else 5000  # still 5,000 bytes of path: beyond PATH_MAX
    print(f"soak seed={seed} n={n} hostile={hostile} (rerun: SNAPD_SOAK_SEED={seed})")
    stats = soak(pool, tmp_path / "soak", n, seed, hostile=hostile, depth=depth,
                 max_delay=0.5 if hostile else 0.06, log=print)
    print(stats)
    assert stats["rounds"] == stats["completed"] + stats["killed"] + stats["refused_mount"] == n
    assert stats["starts"] == 2 * n + 1 and stats["failed_starts"] == stats["inconsistencies"] == 0
    assert stats["mounted_rounds"] >= (1 if hostile and n >= 3 else 0)
