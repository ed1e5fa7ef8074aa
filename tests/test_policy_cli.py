"""`snapd policy list|show|set|delete|plan` against a real daemon on a test clock, and `snapd status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapd.cli.policy import UsageError, read_policy

from .clockfile import ClockFile
from .daemon import DaemonProcess
from .digest import write_tree
from .waiting import until

CID = "0123456789abcdef01234567"
T0 = 1_750_000_000.0 + 170  # 2025-06-15T15:09:30Z


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, ClockFile]]:
    base = tmp_path_factory.mktemp("policy-cli")
    write_tree(base / "pool" / CID, {"etc/hostname": "web\n"})
    clock = ClockFile(base / "clock", T0)
    daemon = DaemonProcess(base / "d", [f"overlay:{base / 'pool'}"], tcp=False, env=clock.env).start()
    try:
        yield daemon, clock
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def snapd(daemon: DaemonProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SNAPD_SOCKET": str(daemon.socket)}
    return subprocess.run([sys.executable, "-m", "snapd", *args], capture_output=True, text=True, env=env,
                          timeout=60, input=stdin)


def test_set_from_a_file_and_arguments_then_list_show_plan_and_delete(
        d: tuple[DaemonProcess, ClockFile], tmp_path: Path) -> None:
    daemon, clock = d
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[policies.hourly]\nschedule = "0 * * * *"\napplies_to = ["container:{CID}"]\n'
                      'keep_last = 2\nkeep = {{ hourly = 3 }}\n'.replace("{{", "{").replace("}}", "}"))
    dry = snapd(daemon, "policy", "set", "hourly", "-f", str(policy), "keep.daily=2", "--dry-run", "--hours", "2")
    assert dry.returncode == 0, dry.stderr
    assert "would be created (dry run: nothing changed)" in dry.stdout
    assert f"container {CID}: no policy -> hourly" in dry.stdout
    assert "2025-06-15 16:00:00Z, 2025-06-15 17:00:00Z" in dry.stdout
    assert snapd(daemon, "policy", "list").stdout.strip() == "no policies"
    done = snapd(daemon, "policy", "set", "hourly", "-f", str(policy), "keep.daily=2")
    assert (done.returncode, done.stdout.splitlines()[0]) == (0, "policy hourly created"), done.stderr
    listed = snapd(daemon, "policy", "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "SOURCE", "SCHEDULE", "CONTAINERS", "LAST", "RUN", "LAST", "OK", "NEXT",
                                 "FAILED"]
    assert listed[1].split()[:7] == ["hourly", "api", "0", "*", "*", "*", "*"]
    shown = snapd(daemon, "policy", "show", "hourly").stdout
    assert "  keep: hourly 3, daily 2" in shown and "  keep_last: 2" in shown
    for h in (1, 2, 3):
        clock.set(T0 + h * 3600)
        until(lambda: snapd(daemon, "status", "--json").stdout.count('"taken": ') and
              json.loads(snapd(daemon, "status", "--json").stdout)["data"]["policies"][0]["taken"] == h,
              f"snapshot {h} taken")
    plan = snapd(daemon, "policy", "plan", "--hours", "3", "--container", CID)
    assert plan.returncode == 0, plan.stderr
    rows = [line.split() for line in plan.stdout.splitlines() if line.startswith(CID)]
    assert [" ".join(r[3:5]) for r in rows] == [f"2025-06-15 {h}:09:30Z" for h in (18, 17, 16)]  # CREATED
    assert [" ".join(r[5:]) for r in rows] == ["keep_last kept beyond the horizon"] * 2 + [
        "hourly 2025-06-15T16 delete 2025-06-15 21:00:00Z (outside grid)"]  # keep_last 2 + 3 hours
    assert f"  {CID} (hourly): 2025-06-15 19:00:00Z, 2025-06-15 20:00:00Z, 2025-06-15 21:00:00Z" in plan.stdout
    as_json = json.loads(snapd(daemon, "policy", "plan", "--hours", "3", "--json").stdout)["data"]
    route = daemon.unix.get("/api/v1/admin/policies/plan?hours=3").data
    assert as_json == route  # the CLI shows the route's plan, nothing of its own
    status = snapd(daemon, "status").stdout
    # the clock was moved to 9.5 minutes past each slot: that is the lag of each snapshot
    assert "policies (schedule lag p50 570.000s, p99 570.000s, max 570.000s over 3 snapshots)" in status
    assert "hourly  api" in status
    gone = snapd(daemon, "policy", "delete", "hourly")
    assert gone.returncode == 0 and "deleted policy hourly" in gone.stdout
    assert snapd(daemon, "policy", "show", "hourly").returncode == 1


def test_set_reports_the_key_at_fault(d: tuple[DaemonProcess, ClockFile]) -> None:
    daemon, _ = d
    bad = snapd(daemon, "policy", "set", "x", "schedule=every 0s", f'applies_to=["container:{CID}"]', "keep_last=1")
    assert bad.returncode == 1
    assert "400 Invalid policy" in bad.stderr and "  schedule: " in bad.stderr
    usage = snapd(daemon, "policy", "set", "x", "keep_last")
    assert usage.returncode == 2 and "is not KEY=VALUE" in usage.stderr


def test_read_policy_from_toml_json_and_assignments(tmp_path: Path) -> None:
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"schedule": "every 1h", "keep": {"daily": 7}}))
    assert read_policy("p", str(as_json), ["keep.hourly=24", "schedule=0 * * * *", "freeze=true",
                                           'applies_to=["project:web"]', "alias=auto {time}"]) == {
        "schedule": "0 * * * *", "keep": {"daily": 7, "hourly": 24}, "freeze": True,
        "applies_to": ["project:web"], "alias": "auto {time}"}
    top = tmp_path / "p.toml"
    top.write_text('schedule = "every 2h"\nkeep_last = 3\n')
    assert read_policy("p", str(top), []) == {"schedule": "every 2h", "keep_last": 3}
    for text, assignments, error in [
        ("[policies.other]\nkeep_last = 1\n", [], "has no [policies.p] table"),
        ("schedule = \n", [], "neither TOML nor JSON"),
        ("[1, 2]", [], "neither TOML nor JSON"),
        ('keep = 3\n', ["keep.daily=1"], "keep.daily: keep is not a table"),
    ]:
        top.write_text(text)
        with pytest.raises(UsageError, match=error.replace("[", r"\[").replace("]", r"\]")):
            read_policy("p", str(top), assignments)
    with pytest.raises(UsageError, match="give a policy file"):
        read_policy("p", None, [])
    with pytest.raises(UsageError, match="cannot read"):
        read_policy("p", str(tmp_path / "missing.toml"), [])
