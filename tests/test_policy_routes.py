"""The policy routes on a real daemon: set, show, dry run, delete, bad input, the config file's
policies (read-only here, re-read on SIGHUP) and the policies kept across a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .client import Client, Response
from .clockfile import ClockFile
from .daemon import DaemonProcess
from .digest import write_tree
from .waiting import until

ROUTE = "/api/v1/admin/policies"
WEB, DB, LONE = "aaaaaaaaaaaaaaaaaaaaaaa1", "bbbbbbbbbbbbbbbbbbbbbbb2", "ccccccccccccccccccccccc3"
T0 = 1_750_003_000.0  # 2025-06-15T15:56:40Z: a few minutes before an hour


def _config(pool: Path, policies: str) -> str:
    return f'pools = ["overlay:{pool}"]\n\n{policies}'


FILE_POLICY = f"""[policies.nightly]
schedule = "30 2 * * *"
timezone = "Europe/Berlin"
applies_to = ["container:{DB}"]
keep = {{ daily = 7 }}
"""


@dataclass
class Env:
    d: DaemonProcess
    pool: Path
    config: Path
    clock: ClockFile

    @property
    def api(self) -> Client:
        return self.d.unix

    def put(self, name: str, body: Any, query: str = "") -> Response:
        return self.api.request("PUT", f"{ROUTE}/{name}{query}", body)

    def names(self) -> list[str]:
        r = self.api.get(ROUTE)
        assert r.status == 200, r.body
        return [p["name"] for p in r.data["policies"]]


def _start(base: Path, pool: Path, config: Path, clock: ClockFile, tcp: bool = False) -> DaemonProcess:
    return DaemonProcess(base / "d", [f"overlay:{pool}"], tcp=tcp, extra=["--config", str(config)],
                         env=clock.env).start()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("policy-routes")
    pool = base / "pool"
    for cid in (WEB, DB, LONE):
        write_tree(pool / cid, {"etc/hostname": f"{cid}\n"})
    config = base / "config.toml"
    config.write_text(_config(pool, FILE_POLICY))
    clock = ClockFile(base / "clock", T0)
    d = _start(base, pool, config, clock, tcp=True)
    try:
        r = d.unix.request("PUT", f"/api/v1/admin/containers/{WEB}/project", {"project": "web"})
        assert r.status == 200, r.body
        yield Env(d, pool, config, clock)
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]


HOURLY = {"schedule": "0 * * * *", "applies_to": ["project:web"], "keep_last": 2,
          "keep": {"hourly": 24, "daily": 7}, "jitter": "5m", "alias": "auto-{policy}"}


def test_a_policy_set_through_the_api_is_listed_shown_and_deleted(env: Env) -> None:
    r = env.put("hourly", HOURLY)
    assert (r.status, r.body["message"], r.data["created"], r.data["dry_run"]) == (
        200, "Policy created successfully", True, False)
    assert r.data["moves"] == [{"container_id": WEB, "from": None, "to": "hourly"}]
    shown = env.api.get(f"{ROUTE}/hourly").data
    assert shown["source"] == "api" and shown["updated_at"] == "2025-06-15T15:56:40.000Z"
    assert shown["policy"]["keep"] == {"hourly": 24, "daily": 7, "weekly": 0, "monthly": 0, "yearly": 0}
    assert shown["policy"]["jitter"] == "5m"
    assert shown["status"]["containers"] == 1
    assert shown["status"]["next"] is not None and shown["status"]["next"] > "2025-06-15T16:00:00.000Z"
    assert env.names() == ["hourly", "nightly"]
    again = env.put("hourly", shown["policy"])  # the canonical form round-trips
    assert (again.status, again.body["message"], again.data["moves"]) == (200, "Policy updated successfully", [])
    gone = env.api.delete(f"{ROUTE}/hourly")
    assert (gone.status, gone.data["policy"]["name"]) == (200, "hourly")
    assert env.names() == ["nightly"]
    assert env.api.get(f"{ROUTE}/hourly").status == 404
    assert env.api.delete(f"{ROUTE}/hourly").status == 404


def test_a_dry_run_returns_the_plan_and_changes_nothing(env: Env) -> None:
    r = env.put("hourly", HOURLY, "?dry_run=true&hours=3")
    assert (r.status, r.body["message"], r.data["dry_run"]) == (200, "Policy dry run: nothing was changed", True)
    plan = r.data["plan"]
    assert plan["hours"] == 3 and [c["container_id"] for c in plan["containers"]] == [WEB]
    planned = plan["containers"][0]["next_snapshots"]
    assert len(planned) == 3 and planned[0].startswith("2025-06-15T16:0")  # 16:00 + its jitter (< 5 min)
    assert env.names() == ["nightly"]
    assert env.api.get(f"{ROUTE}/hourly").status == 404


def test_the_config_files_policies_are_read_only_here(env: Env) -> None:
    shown = env.api.get(f"{ROUTE}/nightly").data
    assert (shown["source"], shown["updated_at"]) == ("file", None)
    for r in (env.put("nightly", HOURLY), env.api.delete(f"{ROUTE}/nightly")):
        assert r.status == 409, r.body
        assert str(env.config) in r.body["message"]
    assert env.api.get(f"{ROUTE}/nightly").data["policy"] == shown["policy"]


BAD = [
    ({}, "schedule"),
    ({**HOURLY, "schedule": "0 * * *"}, "schedule"),
    ({**HOURLY, "schedule": "every 0s"}, "schedule"),
    ({**HOURLY, "schedule": "61 * * * *"}, "schedule"),
    ({**HOURLY, "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({**HOURLY, "keep": {"hourly": -1}}, "keep.hourly"),
    ({**HOURLY, "keep": {"hourly": 1.5}}, "keep.hourly"),
    ({**HOURLY, "keep": {"hourly": True}}, "keep.hourly"),
    ({**HOURLY, "keep": {"fortnightly": 2}}, "keep.fortnightly"),
    ({**HOURLY, "keep_last": "3"}, "keep_last"),
    ({**HOURLY, "keep_last": 0, "keep": {}}, "keep_last"),
    ({**HOURLY, "jitter": "5 minutes"}, "jitter"),
    ({**HOURLY, "max_age": "0d"}, "max_age"),
    ({**HOURLY, "alias": "{nope}"}, "alias"),
    ({**HOURLY, "min_free": "200%"}, "min_free"),
    ({**HOURLY, "freeze": "yes"}, "freeze"),
    ({**HOURLY, "colour": "blue"}, "colour"),
    ({**HOURLY, "applies_to": []}, "applies_to"),
    ({**HOURLY, "applies_to": ["web"]}, "applies_to[0]"),
    ({**HOURLY, "applies_to": ["project:nobody-has-this"]}, "applies_to"),
    ({**HOURLY, "applies_to": ["container:dddddddddddddddddddddddd"]}, "applies_to"),
    ({**HOURLY, "applies_to": ["project:web", "pool:overlay:/no/such/pool"]}, "applies_to[1]"),
    ({**HOURLY, "applies_to": [f"container:{DB}"]}, "applies_to"),  # the file's nightly claims it
]


@pytest.mark.parametrize("body, field", BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_a_bad_policy_is_a_400_naming_the_key_and_changes_nothing(env: Env, body: dict, field: str) -> None:
    r = env.put("hourly", body)
    assert r.status == 400, r.body
    assert [d["field"] for d in r.body["details"]] == [field], r.body
    assert env.names() == ["nightly"]


@pytest.mark.parametrize("method, path, raw, field", [
    ("PUT", f"{ROUTE}/Hourly", json.dumps(HOURLY).encode(), "policy"),
    ("GET", f"{ROUTE}/-x", None, "policy"),
    ("PUT", f"{ROUTE}/hourly", b"{not json", "body"),
    ("PUT", f"{ROUTE}/hourly", b"[1]", "body"),
    ("PUT", f"{ROUTE}/hourly?dry_run=yes", json.dumps(HOURLY).encode(), "dry_run"),
    ("GET", f"{ROUTE}/plan?hours=0", None, "hours"),
    ("GET", f"{ROUTE}/plan?hours=nan", None, "hours"),
    ("GET", f"{ROUTE}/plan?hours=1e9", None, "hours"),
    ("GET", f"{ROUTE}/plan?container=xyz", None, "container"),
])
def test_bad_names_bodies_and_queries_are_400s(env: Env, method: str, path: str, raw: bytes | None,
                                               field: str) -> None:
    r = env.api.request(method, path, raw=raw)
    assert r.status == 400, r.body
    assert [d["field"] for d in r.body["details"]] == [field], r.body
    assert env.names() == ["nightly"]


def test_no_policy_is_named_plan(env: Env) -> None:
    for method in ("PUT", "DELETE"):
        r = env.api.request(method, f"{ROUTE}/plan", HOURLY if method == "PUT" else None)
        assert (r.status, r.headers["allow"]) == (405, "GET"), r.body
    assert env.names() == ["nightly"]


def test_the_plan_of_one_container_and_of_one_under_no_policy(env: Env) -> None:
    r = env.api.get(f"{ROUTE}/plan?hours=48&container={DB.upper()}")
    assert r.status == 200, r.body
    [plan] = r.data["containers"]
    assert (plan["container_id"], plan["policy"], plan["snapshots"]) == (DB, "nightly", [])
    # 02:30 Europe/Berlin (CEST, UTC+2) is 00:30Z: the next two nights
    assert plan["next_snapshots"] == ["2025-06-16T00:30:00.000Z", "2025-06-17T00:30:00.000Z"]
    assert env.api.get(f"{ROUTE}/plan?container={LONE}").status == 404


def test_a_project_token_may_not_touch_policies(env: Env) -> None:
    secret = env.api.post("/api/v1/admin/tokens", {"project": "web"}).data["secret"]
    client = Client(tcp=("127.0.0.1", env.d.port), headers={"Authorization": f"Bearer {secret}"})
    for method, path in (("GET", ROUTE), ("GET", f"{ROUTE}/nightly"), ("PUT", f"{ROUTE}/x"),
                         ("DELETE", f"{ROUTE}/nightly"), ("GET", f"{ROUTE}/plan")):
        assert client.request(method, path, HOURLY if method == "PUT" else None).status == 403, (method, path)


def test_sighup_rereads_the_files_policies_and_keeps_them_when_the_file_is_bad(env: Env) -> None:
    try:
        env.config.write_text(_config(env.pool, FILE_POLICY.replace("daily = 7", "daily = 14")))
        env.d.proc.send_signal(signal.SIGHUP)
        until(lambda: env.api.get(f"{ROUTE}/nightly").data["policy"]["keep"]["daily"] == 14,
              "the reload to show nightly keeping 14 dailies")
        env.config.write_text(_config(env.pool, FILE_POLICY.replace("daily = 7", "daily = -1")))
        env.d.proc.send_signal(signal.SIGHUP)
        until(lambda: "policies.nightly.keep.daily" in env.d.log_text(), "the bad reload to be rejected")
        assert env.api.get(f"{ROUTE}/nightly").data["policy"]["keep"]["daily"] == 14
    finally:
        env.config.write_text(_config(env.pool, FILE_POLICY))
        env.d.proc.send_signal(signal.SIGHUP)
        until(lambda: env.api.get(f"{ROUTE}/nightly").data["policy"]["keep"]["daily"] == 7,
              "the reload to bring the file back")


def test_policies_set_through_the_api_survive_a_restart(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    write_tree(pool / WEB, {"f": "x"})
    config = tmp_path / "config.toml"
    config.write_text(_config(pool, ""))
    clock = ClockFile(tmp_path / "clock", T0)
    d = _start(tmp_path, pool, config, clock)
    try:
        assert d.unix.request("PUT", f"{ROUTE}/every-day", {
            "schedule": "every 1d", "applies_to": [f"container:{WEB}"], "keep_last": 3}).status == 200
        before = d.unix.get(f"{ROUTE}/every-day").data
    finally:
        assert d.stop() == 0
    d = _start(tmp_path, pool, config, clock)
    try:
        after = d.unix.get(f"{ROUTE}/every-day").data
        assert (after["policy"], after["updated_at"], after["source"]) == (
            before["policy"], before["updated_at"], "api")
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("policies, key", [
    ('[policies.hourly]\nschedule = "0 * * * *"\napplies_to = ["container:' + WEB + '"]\n'
     'keep = { hourly = -2 }\n', "policies.hourly.keep.hourly"),
    ('[policies.hourly]\nschedule = "0 * * * *"\napplies_to = ["container:' + WEB + '"]\nkeep_last = 1\n'
     'colour = "blue"\n', "policies.hourly.colour"),
    ('[policies.hourly]\nschedule = "0 * * * *"\napplies_to = ["project:nobody"]\nkeep_last = 1\n',
     "policies.hourly.applies_to"),
    ('[policies.a]\nschedule = "0 * * * *"\napplies_to = ["container:' + WEB + '"]\nkeep_last = 1\n'
     '[policies.b]\nschedule = "0 * * * *"\napplies_to = ["container:' + WEB + '"]\nkeep_last = 1\n',
     "policies: applies_to"),
    ('[policies.plan]\nschedule = "0 * * * *"\napplies_to = ["container:' + WEB + '"]\nkeep_last = 1\n',
     "policies.plan"),
    ('policies = 3\n', "'policies' must be a table"),
])
def test_a_bad_policy_in_the_file_stops_start_up_with_one_line_naming_the_key(
        tmp_path: Path, policies: str, key: str) -> None:
    pool = tmp_path / "pool"
    write_tree(pool / WEB, {"f": "x"})
    config = tmp_path / "config.toml"
    config.write_text(_config(pool, policies))
    proc = subprocess.run([sys.executable, "-m", "snapd", "serve", "--config", str(config),
                           "--socket", str(tmp_path / "api.sock"), "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("snapd: ")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert key in lines[0], lines
