"""Space-aware cleanup (`min_free`) on a real, nearly full filesystem: a small ext4 image, loop-mounted,
holding an overlay pool.  The policy's oldest snapshots beyond keep_last go until the pool has its
free space back; manual and held snapshots stay."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from .client import UnixHTTPConnection
from .clockfile import ClockFile
from .daemon import DaemonProcess
from .loopfs import ext4
from .waiting import until

CID = "5a5a5a5a5a5a5a5a5a5a5a5a"
MIB = 1 << 20
BASE = datetime(2025, 6, 15, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB ext4 filesystem (no blocks reserved for root), loop-mounted; detached on teardown."""
    with ext4(tmp_path, 64 * MIB, "-m", "0") as mnt:
        yield mnt


def metric(d: DaemonProcess, sample: str) -> float:
    """One sample of the daemon's /metrics (text format)."""
    conn = UnixHTTPConnection(str(d.socket))
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " ")]
    assert len(values) == 1, (sample, text[-3000:])
    return values[0]


def _free_and_total(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def test_min_free_deletes_the_policys_oldest_beyond_keep_last_and_nothing_else(
        small_ext4: Path, tmp_path: Path) -> None:
    pool = small_ext4 / "pool"
    data = pool / CID / "data"
    data.parent.mkdir(parents=True)
    data.write_bytes(os.urandom(4 * MIB))
    clock = ClockFile(tmp_path / "clock", BASE - 600)
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False, env=clock.env).start()
    api = d.unix
    snaps = f"/api/v1/containers/{CID}/snapshots"
    try:
        manual = api.post(snaps, {"alias": "before-upgrade"}).data["snapshot"]["name"]
        r = api.request("PUT", "/api/v1/admin/policies/hourly", {
            "schedule": "every 1h", "applies_to": [f"container:{CID}"], "keep_last": 2,
            "keep": {"hourly": 1000}, "min_free": "50%"})
        assert r.status == 200, r.body

        def details() -> dict[str, dict]:
            return {s["name"]: s for s in api.get(f"/api/v1/containers/{CID}/snapshot-details").data["snapshots"]}

        def enough_room() -> bool:
            free, total = _free_and_total(small_ext4)
            return free >= total // 2

        taken: list[str] = []
        held = None
        for h in range(1, 13):
            data.write_bytes(os.urandom(4 * MIB))  # each snapshot holds 4 MiB of its own
            clock.set(BASE + h * 3600 + 30)
            until(lambda: len([s for s in details().values() if s["policy"]]) and
                  max((s["created_at"], n) for n, s in details().items() if s["policy"])[1] not in taken,
                  f"slot {h} taken")
            taken.append(max((s["created_at"], n) for n, s in details().items() if s["policy"])[1])
            if h == 2:
                held = taken[0]
                assert api.request("PUT", f"{snaps}/{held}/hold", {"reason": "keep me"}).status == 200
            until(enough_room, f"the pool back above 50% free after slot {h}")

        def deletes_listed() -> bool:  # the pruner may finish a delete just after the room is back
            gone = [n for n in taken if n not in details()]
            return metric(d, 'container_snapd_retention_deletes_total{reason="min_free"}') == len(gone)

        until(deletes_listed, "every min_free delete counted is gone from the listing")
        left = details()
        assert manual in left and held in left  # never touched
        assert taken[-2] in left and taken[-1] in left  # keep_last
        gone = [n for n in taken if n not in left]
        assert gone and gone == [n for n in taken if n != held][:len(gone)]  # the oldest went first
        assert enough_room()
        assert metric(d, 'container_snapd_retention_deletes_total{reason="min_free"}') == len(gone)
        assert metric(d, "container_snapd_held_snapshots") == 1
        assert metric(d, 'container_snapd_policy_snapshots_taken_total{policy="hourly"}') == 12
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]
