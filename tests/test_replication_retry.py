"""Policy-driven replication without daemons: the retry rule, and the policy's `targets` key."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from snapd.core.clock import Clock, iso
from snapd.core.policy_book import PolicyBook
from snapd.core.store import Store
from snapd.core.policies.spec import PolicyError, check_targets, parse_policy, policy_json
from snapd.core.replication_retry import CAP, FIRST, Streak, retry_delay
from snapd.host.config import ConfigError, build

from .client import snapshot_names
from .clockfile import ClockFile
from .conftest import open_harness
from .daemon import DaemonProcess
from .harness import new_cid
from .waiting import until

POLICY = {"schedule": "0 * * * *", "applies_to": ["project:web"], "keep_last": 3}
TARGET = {"url": "http://10.0.0.9:7070", "token_file": "/etc/t"}


def test_the_backoff_doubles_from_a_minute_to_an_hour_and_stays_there() -> None:
    assert FIRST == 60 and CAP == 3600
    assert [retry_delay(n) for n in range(1, 10)] == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert retry_delay(10_000) == 3600
    with pytest.raises(ValueError):
        retry_delay(0)


def test_a_streak_counts_failures_resets_on_success_and_a_new_snapshot_supersedes_the_retry() -> None:
    s = Streak()
    assert (s.attempt, s.retry_at) == (1, None)
    s = s.after(False, 1000.0)
    assert (s.failures, s.attempt, s.retry_at) == (1, 2, 1060.0)
    s = s.after(False, 1060.5)
    assert (s.attempt, s.retry_at) == (3, 1180.5)
    s = s.superseded()  # a new snapshot's job starts now: no retry pending, the count goes on
    assert (s.attempt, s.retry_at) == (3, None)
    s = s.after(False, 2000.0)
    assert (s.attempt, s.retry_at) == (4, 2240.0)
    assert s.after(True, 2240.0) == Streak()
    for _ in range(20):
        s = s.after(False, 0.0)
    assert s.retry_at == CAP


def test_a_policy_names_its_targets_and_the_json_form_round_trips() -> None:
    spec = parse_policy("hourly", {**POLICY, "targets": ["backup1", "dr.site-2"]}, "api")
    assert spec.targets == ("backup1", "dr.site-2")
    assert policy_json(spec)["targets"] == ["backup1", "dr.site-2"]
    assert parse_policy("hourly", policy_json(spec), "api") == spec
    assert parse_policy("hourly", POLICY, "api").targets == ()
    check_targets(spec, {"backup1", "dr.site-2", "other"})


@pytest.mark.parametrize("value, key, words", [
    ("backup1", "targets", "must be a list"),
    ([7], "targets[0]", "name of a [targets.NAME]"),
    (["ok", "a b"], "targets[1]", "name of a [targets.NAME]"),
    (["", "ok"], "targets[0]", "name of a [targets.NAME]"),
    (["b" * 65], "targets[0]", "1-64"),
    (["b", "b"], "targets[1]", "listed twice"),
])
def test_a_bad_targets_value_is_refused_naming_the_key(value: object, key: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("hourly", {**POLICY, "targets": value}, "api")
    assert caught.value.key == key and words in caught.value.message, caught.value


def test_an_unknown_target_is_an_error_naming_the_key_and_the_known_ones() -> None:
    spec = parse_policy("hourly", {**POLICY, "targets": ["backup1", "nope"]}, "api")
    with pytest.raises(PolicyError) as caught:
        check_targets(spec, {"backup1", "backup2"})
    assert caught.value.key == "targets[1]"
    assert caught.value.message == "no target 'nope' in the config ([targets.NAME]; known: backup1, backup2)"


def test_the_book_refuses_an_unknown_target_and_a_reload_that_drops_one_in_use(tmp_path: Path) -> None:
    book = PolicyBook(Store(tmp_path / "s.db"), Clock())
    book.known_targets = lambda: {"backup1"}
    with pytest.raises(PolicyError) as caught:
        book.proposal("hourly", {**POLICY, "targets": ["nope"]})
    assert caught.value.key == "targets[0]" and "known: backup1" in caught.value.message
    spec, _ = book.proposal("hourly", {**POLICY, "targets": ["backup1"]})
    book.put(spec)
    book.check_api_targets({"backup1", "other"})
    with pytest.raises(PolicyError) as caught:
        book.check_api_targets({"other"})
    assert caught.value.key == "hourly.targets[0]" and "change it first" in caught.value.message


def test_the_config_refuses_a_file_policy_naming_a_target_it_does_not_define() -> None:
    table = {"policies": {"hourly": {**POLICY, "targets": ["backup1"]}}}
    with pytest.raises(ConfigError) as caught:
        build(table, {}, "cfg")
    assert str(caught.value) == ("cfg: policies.hourly.targets[0]: no target 'backup1' in the config "
                                 "([targets.NAME]; known: none configured)")
    cfg = build({**table, "targets": {"backup1": TARGET}}, {}, "cfg")
    assert cfg.policies["hourly"].targets == ("backup1",)


# -- on real daemons ----------------------------------------------------------------------------

BASE = datetime(2025, 6, 15, tzinfo=timezone.utc).timestamp()
"""2025-06-15T00:00:00Z; the policy's slots are at minutes 0 and 2 of each hour."""
JOBS = "/api/v1/admin/replications"
MIB = 1 << 20
POLICIES = "/api/v1/admin/policies"


def _jobs(d: DaemonProcess) -> list[dict]:
    r = d.unix.get(JOBS)
    assert r.status == 200, r.body
    return r.data["jobs"]


def _settled(d: DaemonProcess, count: int, what: str) -> dict:
    """The newest of exactly `count` jobs once it has finished, with its retry decided: done,
    or failed with its next attempt set (each started at another instant of the frozen clock:
    the list's order is theirs)."""
    def look() -> dict | None:
        jobs = _jobs(d)
        if len(jobs) != count:
            return None
        job = jobs[0]
        return job if job["state"] == "done" or (job["state"] == "failed" and job["next_retry_at"]) else None
    return until(look, what, timeout=60)


def test_a_policy_snapshot_is_replicated_and_a_failed_job_retried_with_backoff(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:  # closed in reverse: the daemons, then the pools
        receiver_pool = open_harness("btrfs", tmp_path / "rpool")
        stack.callback(receiver_pool.close)
        sender_pool = open_harness("overlay", tmp_path / "spool")
        stack.callback(sender_pool.close)
        receiver = DaemonProcess(tmp_path / "r", [receiver_pool.spec], tcp=True)  # started later: down at first
        stack.callback(receiver.close)
        token = tmp_path / "token"
        token.write_text("csd_not_issued_yet\n")
        cfg = tmp_path / "sender.toml"
        cfg.write_text(f'stream_idle_timeout = 10\n[targets.backup1]\nurl = "http://127.0.0.1:{receiver.port}"\n'
                       f'token_file = "{token}"\nbandwidth = "2MiB"\n')
        clock = ClockFile(tmp_path / "clock", BASE - 600)
        cid = new_cid()
        (sender_pool.make_container(cid) / "data").write_text("one\n")
        sender = DaemonProcess(tmp_path / "s", [sender_pool.spec], tcp=False, env=clock.env,
                               extra=["--config", str(cfg)])
        stack.callback(sender.close)
        sender.start()
        body = {"schedule": "0,2 * * * *", "applies_to": [f"container:{cid}"], "keep_last": 10}
        r = sender.unix.request("PUT", f"{POLICIES}/hourly", {**body, "targets": ["backup1", "nope"]})
        assert (r.status, r.body["details"][0]["field"]) == (400, "targets[1]"), r.body
        assert "no target 'nope'" in r.body["details"][0]["reason"], r.body
        r = sender.unix.request("PUT", f"{POLICIES}/hourly", {**body, "targets": ["backup1"]})
        assert r.status == 200 and r.data["policy"]["policy"]["targets"] == ["backup1"], r.body
        until(lambda: sender.unix.get(f"{POLICIES}/hourly").data["status"]["next"],
              "the scheduler planned the container's first snapshot")

        # 00:00 the policy's snapshot; the target does not answer: attempt 1 fails, retry in a minute
        clock.set(BASE + 1)
        job = _settled(sender, 1, "the first policy job failed")
        assert (job["state"], job["policy"], job["attempt"], job["container_id"], job["target"]) == (
            "failed", "hourly", 1, cid, "backup1"), job
        assert "did not answer" in job["last_error"], job
        assert (job["finished_at"], job["next_retry_at"]) == (iso(BASE + 1), iso(BASE + 61)), job
        first = snapshot_names(sender.unix, cid)
        assert len(first) == 1

        # 00:01:01 the retry, no new snapshot: attempt 2 fails, the next one two minutes later
        clock.set(BASE + 61)
        job = _settled(sender, 2, "the retry failed")
        assert (job["attempt"], job["next_retry_at"]) == (2, iso(BASE + 181)), job
        assert snapshot_names(sender.unix, cid) == first

        # 00:02 the next slot, before that retry: its job supersedes the retry and starts now
        clock.set(BASE + 121)
        job = _settled(sender, 3, "the new snapshot's job failed")
        assert (job["attempt"], job["finished_at"], job["next_retry_at"]) == (3, iso(BASE + 121),
                                                                             iso(BASE + 361)), job
        assert _jobs(sender)[1]["next_retry_at"] is None  # the superseded retry is off
        assert len(snapshot_names(sender.unix, cid)) == 2
        listed = subprocess.run([sys.executable, "-m", "snapd", "replications", "--socket", str(sender.socket)],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "NEXT RETRY" in listed.stdout, listed
        assert "hourly #3" in listed.stdout and "2025-06-15 00:06:01Z" in listed.stdout, listed.stdout

        # the target comes up; 00:06:01 the retry sends both snapshots
        receiver.start()
        token.write_text(receiver.unix.post("/api/v1/admin/tokens", {"replicate": True}).data["secret"])
        clock.set(BASE + 361)
        job = _settled(sender, 4, "the retry once the target is up")
        assert (job["state"], job["attempt"], job["next_retry_at"], job["snapshots_sent"]) == (
            "done", 4, None, 2), job
        assert snapshot_names(receiver.unix, cid) == snapshot_names(sender.unix, cid)

        # 01:00 the next snapshot: attempt 1 again (reset by the success), sent at once
        (sender_pool.container_path(cid) / "data").write_text("two\n")
        clock.set(BASE + 3601)
        job = _settled(sender, 5, "the next policy job")
        assert (job["state"], job["attempt"], job["snapshots_sent"]) == ("done", 1, 1), job
        received = snapshot_names(receiver.unix, cid)
        assert received == snapshot_names(sender.unix, cid) and len(received) == 3
        # a job started by request is no policy's; the policy's next snapshot, taken while that job
        # sends, joins it (it planned before the snapshot) and sends the snapshot once it has ended
        (sender_pool.container_path(cid) / "big.bin").write_bytes(os.urandom(16 * MIB))  # 8 s at 2 MiB/s
        assert sender.unix.post(f"/api/v1/containers/{cid}/snapshots", {}).status == 200
        r = sender.unix.post(JOBS, {"container": cid, "target": "backup1"})
        assert r.status == 202 and (r.data["job"]["policy"], r.data["job"]["attempt"]) == (None, None), r.body

        def by_request() -> dict:
            return sender.unix.get(f"{JOBS}/{r.data['job']['id']}").data["job"]

        until(lambda: by_request()["bytes_sent"] > 0, "the request's job is sending")
        clock.set(BASE + 3721)
        until(lambda: len(snapshot_names(sender.unix, cid)) == 5, "the policy took its 01:02 snapshot")
        assert by_request()["state"] == "running" and len(_jobs(sender)) == 6
        job = _settled(sender, 7, "the policy's job after the request's")
        assert (job["state"], job["policy"], job["attempt"], job["snapshots_sent"]) == ("done", "hourly", 1, 1), job
        manual = by_request()
        assert (manual["state"], manual["policy"], manual["snapshots_sent"]) == ("done", None, 1), manual
        assert snapshot_names(receiver.unix, cid) == snapshot_names(sender.unix, cid)

        # a reload that drops the target the policy names is refused; the running config stays
        cfg.write_text("stream_idle_timeout = 10\n")
        assert sender.proc is not None
        sender.proc.send_signal(signal.SIGHUP)
        until(lambda: "reload rejected" in sender.log_text(), "the reload was rejected")
        assert "targets: policy hourly.targets[0]: no target 'backup1' in the config" in sender.log_text()
        assert sender.unix.post(JOBS, {"container": cid, "target": "backup1"}).status == 202
