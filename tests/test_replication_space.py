"""Disk full on the receiver, with two real daemons: a replication into a small btrfs pool (a
128 MiB loop image) that runs out of room mid-stream, then into the same pool below its
reserve.  The receiver's import answers 507, the job fails with that reason, nothing of the
snapshot is visible there (no row, and no stray subvolume or scratch after its next start),
and the sender is unchanged."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .client import snapshot_names
from .conftest import open_harness, pool_kinds, unavailable
from .daemon import DaemonProcess
from .harness import harness_class, new_cid
from .waiting import until

MIB = 1 << 20
JOBS = "/api/v1/admin/replications"


def _details(d: DaemonProcess, cid: str) -> list[tuple[str, str | None]]:
    r = d.unix.get(f"/api/v1/containers/{cid}/snapshot-details")
    assert r.status == 200, r.body
    return [(s["name"], (s["hold"] or {}).get("reason")) for s in r.data["snapshots"]]


def _replicate(d: DaemonProcess, cid: str) -> dict:
    r = d.unix.post(JOBS, {"container": cid, "target": "small"})
    assert r.status == 202, r.body
    job_id = r.data["job"]["id"]
    return until(lambda: (j := d.unix.get(f"{JOBS}/{job_id}").data["job"])["state"] in ("done", "failed") and j,
                 f"replication job {job_id} finished", timeout=120)


def _scratch(root: Path) -> list[str]:
    tmp = root / ".snapshots" / ".tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def test_a_full_receiver_answers_507_and_nothing_is_half_visible(tmp_path: Path) -> None:
    if "btrfs" not in pool_kinds():
        unavailable("the small receiver pool is btrfs; SNAPD_TEST_KINDS leaves it out")
    cls = harness_class("btrfs")
    reason = cls.unavailable()
    if reason:
        unavailable(f"btrfs: {reason}")
    with contextlib.ExitStack() as stack:  # closed in reverse: the daemons, then the pools
        small = cls(tmp_path / "rpool", size=128 * MIB)
        stack.callback(small.close)
        sender_pool = open_harness("overlay", tmp_path / "spool")
        stack.callback(sender_pool.close)
        rcfg = tmp_path / "receiver.toml"
        rcfg.write_text('reserve = "0"\nreserve_inodes = "0"\nstream_idle_timeout = 10\n')  # room to run out
        receiver = DaemonProcess(tmp_path / "r", [small.spec], tcp=True, extra=["--config", str(rcfg)])
        stack.callback(receiver.close)
        token = tmp_path / "token"
        scfg = tmp_path / "sender.toml"
        scfg.write_text(f'stream_idle_timeout = 10\n[targets.small]\nurl = "http://127.0.0.1:{receiver.port}"\n'
                        f'token_file = "{token}"\n')
        sender = DaemonProcess(tmp_path / "s", [sender_pool.spec], tcp=False, extra=["--config", str(scfg)])
        stack.callback(sender.close)
        receiver.start()
        token.write_text(receiver.unix.post("/api/v1/admin/tokens", {"replicate": True}).data["secret"])
        cid = new_cid()
        live = sender_pool.make_container(cid)
        (live / "etc").mkdir()
        (live / "etc/hostname").write_text("web\n")
        sender.start()
        first = sender.unix.post(f"/api/v1/containers/{cid}/snapshots", {}).data["snapshot"]["name"]
        assert _replicate(sender, cid)["state"] == "done"

        # a second snapshot larger than the receiver's whole pool
        for i in range(12):
            (live / f"big-{i}.bin").write_bytes(os.urandom(16 * MIB))
        second = sender.unix.post(f"/api/v1/containers/{cid}/snapshots", {}).data["snapshot"]["name"]
        before = _details(sender, cid)
        job = _replicate(sender, cid)
        assert job["state"] == "failed", job
        assert "refused a snapshot stream" in job["last_error"], job
        assert ": 507 no space left in the pool" in job["last_error"], job
        assert job["snapshots_sent"] == 0 and job["current"] is None, job

        # a container the receiver does not have, whose first snapshot does not fit: not made there
        other = new_cid()
        root = sender_pool.make_container(other)
        for big in live.glob("big-*.bin"):
            os.link(big, root / big.name)  # the same 192 MiB, no second copy on the sender's disk
        sender.unix.post(f"/api/v1/containers/{other}/snapshots", {})
        job = _replicate(sender, other)
        assert job["state"] == "failed" and ": 507 no space left" in job["last_error"], job

        # the receiver: only the first snapshot, the scratch gone, and so after a restart
        assert [n for n, _ in snapshot_names(receiver.unix, cid)] == [first]
        assert receiver.unix.get(f"/api/v1/containers/{other}/snapshots").status == 404
        until(lambda: _scratch(small.root) == [], "the receiver removed the failed import's scratch")
        assert receiver.stop() == 0
        receiver.start()
        assert [n for n, _ in snapshot_names(receiver.unix, cid)] == [first]
        assert _scratch(small.root) == []
        assert small.artifacts() == {cid, f".snapshots/{cid}/{first}"}, small.artifacts()

        # the sender: the same snapshots, the first still the chain's held base
        assert _details(sender, cid) == before
        assert dict(before)[first] == "replication to small: the newest snapshot both hold"
        assert dict(before)[second] is None

        # a pool below its reserve is full as well: refused (507) before any data lands
        for i in range(12):
            (live / f"big-{i}.bin").unlink()
        third = sender.unix.post(f"/api/v1/containers/{cid}/snapshots", {}).data["snapshot"]["name"]
        assert sender.unix.delete(f"/api/v1/containers/{cid}/snapshots/{second}").status == 200
        assert receiver.stop() == 0
        rcfg.write_text('reserve = "1GiB"\nstream_idle_timeout = 10\n')
        receiver.start()
        job = _replicate(sender, cid)
        assert job["state"] == "failed" and ": 507 " in job["last_error"] and "reserve" in job["last_error"], job
        assert [n for n, _ in snapshot_names(receiver.unix, cid)] == [first] and _scratch(small.root) == []

        # room again: the next job sends the third snapshot, incrementally from the first
        assert receiver.stop() == 0
        rcfg.write_text('reserve = "0"\nstream_idle_timeout = 10\n')
        receiver.start()
        job = _replicate(sender, cid)
        assert job["state"] == "done" and job["snapshots_sent"] == 1, job
        assert [n for n, _ in snapshot_names(receiver.unix, cid)] == [third, first]
