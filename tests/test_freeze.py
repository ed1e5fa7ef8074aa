"""Freezing running containers for their snapshots, on a real cgroup v2, and the
pre_snapshot / post_snapshot hooks.

- during the snapshot the container's cgroup is frozen (seen from inside the backend
  call), after it thawed, also when the snapshot fails; a per-call `freeze` overrides
  the pool's setting
- a daemon killed while the container is frozen: the next start thaws it first
- a freeze that never settles is abandoned after `freeze_timeout` (thawed at once),
  and the snapshot is taken; a container without a cgroup is snapshotted unfrozen
- hooks run in order with their environment, around the freeze; a failing
  pre_snapshot refuses the snapshot (409) and nothing happens
- config: every freeze and hook key checked, bad values named
"""

from __future__ import annotations

import logging
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from backends import faults, make_backend
from backends.base import BackendError
from snapd.core.errors import OperationFailed
from snapd.core.freeze import Freezer, wait_frozen
from snapd.core.journal import recover
from snapd.core.service import SnapshotService
from snapd.core.settings import PoolPolicy
from snapd.core.store import Store
from snapd.host.config import ConfigError, build, load_file

from .client import snaps
from .clockfile import ClockFile
from .conftest import unavailable
from .crash import killed_at, pending_journal, prepared
from .daemon import DaemonProcess
from .digest import write_tree
from .fakes import FakeClock
from .harness import PoolHarness, is_root, new_cid
from .test_daemon_systemd import scrape
from .waiting import until

STATUS = "/api/v1/admin/status"


# -- a real cgroup v2 with a real process in it -------------------------------------------


def cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted (from /proc/self/mountinfo), or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, fs = line.partition(" - ")
            if fs.split()[0] == "cgroup2":
                return Path(fields.split()[4])
    return None


def events(cgroup: Path) -> dict[str, str]:
    return dict(line.split() for line in (cgroup / "cgroup.events").read_text().splitlines())


@dataclass
class RunningCgroup:
    """A cgroup named after a container id, holding one `sleep`."""

    template: str
    path: Path
    proc: subprocess.Popen

    def frozen(self) -> bool:
        return events(self.path)["frozen"] == "1"


@pytest.fixture
def running_cgroup() -> Iterator[Callable[[str], RunningCgroup]]:
    """Makes, for a container id, a cgroup under the cgroup v2 mount (a name unique to
    this test) with a `sleep` in it; the template that finds it.  Removed afterwards:
    thawed, the sleep killed by its pid, the directory removed."""
    root = cgroup2_mount()
    if root is None or not is_root():
        unavailable("freezing needs root and a cgroup v2 mount")
    made: list[RunningCgroup] = []

    def make(cid: str) -> RunningCgroup:
        template = f"{root}/snapd-test-{secrets.token_hex(4)}-{{id}}"
        path = Path(template.replace("{id}", cid))
        path.mkdir()
        proc = subprocess.Popen(["sleep", "600"])
        cg = RunningCgroup(template, path, proc)
        made.append(cg)
        (path / "cgroup.procs").write_text(str(proc.pid))
        assert events(path) == {"populated": "1", "frozen": "0"}
        return cg

    yield make
    for cg in made:
        (cg.path / "cgroup.freeze").write_text("0")
        cg.proc.kill()
        cg.proc.wait()
        until(lambda: events(cg.path)["populated"] == "0", f"{cg.path} emptied")
        cg.path.rmdir()


def fake_cgroup(directory: Path) -> Path:
    """A directory that looks like a cgroup whose freeze never completes."""
    directory.mkdir()
    (directory / "cgroup.freeze").write_text("0")
    (directory / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    return directory


# -- in-process: what the backend call sees ---------------------------------------------


@dataclass
class World:
    service: SnapshotService
    store: Store
    seen: list[dict]
    """One entry per backend create: what was true while it ran."""
    fail: list[bool]


async def world(pool: PoolHarness, tmp_path: Path, policy: PoolPolicy,
                look: Callable[[], dict]) -> World:
    """A service over the real pool whose backend create records `look()` and the journal's
    pending ops while it runs, and fails once when asked."""
    kind, _, root = pool.spec.partition(":")
    backend = make_backend(kind, root)
    await backend.open()
    store = Store(tmp_path / "snapd.db")
    w = World(SnapshotService(store, [backend], FakeClock()), store, [], [])
    real = backend.create

    async def watched(cid: str, name: str, *args: object, **kw: object):  # type: ignore[no-untyped-def]
        w.seen.append({**look(), "journal": sorted(e.op for e in store.journal_pending())})
        if w.fail and w.fail.pop():
            raise BackendError("disk on fire")
        return await real(cid, name, *args, **kw)  # type: ignore[arg-type]

    backend.create = watched  # type: ignore[method-assign]
    w.service.set_pools([backend], {backend.pool_id: policy})
    return w


def journal_states(store: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.db.execute("SELECT op, state FROM journal ORDER BY id")]


async def test_the_cgroup_is_frozen_while_the_snapshot_is_taken(
        pool: PoolHarness, tmp_path: Path, running_cgroup: Callable[[str], RunningCgroup]) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    cg = running_cgroup(cid)
    w = await world(pool, tmp_path, replace(PoolPolicy(), freeze=True, cgroup_template=cg.template),
                    lambda: {"frozen": cg.frozen()})
    s = w.service
    try:
        _, row = await s.create(cid, None, None)
        assert w.seen == [{"frozen": True, "journal": ["create", "freeze"]}]
        assert not cg.frozen()
        assert journal_states(w.store) == [("create", "done"), ("freeze", "done")]
        assert s.store.get(cid, row.name) is not None

        await s.create(cid, None, None, freeze=False)  # the call overrides the pool
        assert w.seen[-1] == {"frozen": False, "journal": ["create"]}

        w.fail.append(True)  # the snapshot fails: thawed all the same, journal settled
        with pytest.raises(OperationFailed):
            await s.create(cid, None, None)
        assert w.seen[-1] == {"frozen": True, "journal": ["create", "freeze"]}
        assert not cg.frozen() and w.store.journal_pending() == []

        s.set_pools(s.backends, {s.backends[0].pool_id: replace(s.policies[s.backends[0].pool_id], freeze=False)})
        await s.create(cid, None, None)
        assert w.seen[-1]["frozen"] is False  # the pool's setting, off
        await s.create(cid, None, None, freeze=True)
        assert w.seen[-1]["frozen"] is True  # the call asks for it
        assert not cg.frozen()
        assert dict(s.freezer.counts) == {"frozen": 3, "abandoned": 0, "not_running": 0}
        assert len(s.store.list(cid)) == 4
    finally:
        await s.drain()
        w.store.close()


async def test_a_freeze_that_never_settles_is_abandoned_and_the_snapshot_taken(
        pool: PoolHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    stuck = fake_cgroup(tmp_path / f"cg-{cid}")
    policy = replace(PoolPolicy(), freeze=True, cgroup_template=str(tmp_path / "cg-{id}"), freeze_timeout=0.2)
    w = await world(pool, tmp_path, policy, lambda: {"written": (stuck / "cgroup.freeze").read_text()})
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "snapd.freeze"):
            _, row = await w.service.create(cid, None, None)
        assert time.monotonic() - started >= 0.2  # it waited the whole bound
        assert w.seen == [{"written": "0", "journal": ["create"]}]  # thawed before the snapshot
        assert w.store.get(cid, row.name) is not None
        assert journal_states(w.store) == [("create", "done"), ("freeze", "done")]
        assert dict(w.service.freezer.counts) == {"frozen": 0, "abandoned": 1, "not_running": 0}
        (line,) = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
        assert f"container={cid}" in line and "not frozen within freeze_timeout=0.2s" in line
    finally:
        await w.service.drain()
        w.store.close()


async def test_a_container_without_a_cgroup_is_snapshotted_unfrozen(
        pool: PoolHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    policy = replace(PoolPolicy(), freeze=True, cgroup_template=str(tmp_path / "none-{id}"))
    w = await world(pool, tmp_path, policy, dict)
    try:
        with caplog.at_level(logging.DEBUG, "snapd.freeze"):
            _, row = await w.service.create(cid, None, None)
        assert w.store.get(cid, row.name) is not None
        assert journal_states(w.store) == [("create", "done")]  # nothing frozen, nothing journalled
        assert dict(w.service.freezer.counts) == {"frozen": 0, "abandoned": 0, "not_running": 1}
        assert [r.levelname for r in caplog.records if "no such cgroup" in r.getMessage()] == ["DEBUG"]
    finally:
        await w.service.drain()
        w.store.close()


async def test_a_directory_without_the_v2_freezer_is_abandoned_not_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A template naming a cgroup v1 directory (or a kernel before 5.2): a warning that
    says so, not a silent 'not running'."""
    cid = new_cid()
    (tmp_path / f"v1-{cid}").mkdir()
    store = Store(tmp_path / "snapd.db")
    freezer = Freezer(store, FakeClock())
    try:
        with caplog.at_level(logging.WARNING, "snapd.freeze"):
            async with freezer.frozen(cid, "overlay:/p", "snap-1", str(tmp_path / "v1-{id}"), 1.0) as outcome:
                assert outcome == "abandoned"
        assert dict(freezer.counts) == {"frozen": 0, "abandoned": 1, "not_running": 0}
        assert "not a cgroup v2 directory" in caplog.text and store.journal_pending() == []
    finally:
        store.close()


async def test_waiting_for_frozen_polls_up_to_the_bound(tmp_path: Path) -> None:
    cg = fake_cgroup(tmp_path / "cg")
    now, sleeps = [0.0], []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    assert await wait_frozen(str(cg), 5.0, monotonic=lambda: now[0], sleep=sleep) is False
    assert now[0] == pytest.approx(5.0) and sleeps[0] == 0.001 and max(sleeps) == 0.05

    async def settles_on_the_third(seconds: float) -> None:
        await sleep(seconds)
        if len(sleeps) == 3:
            (cg / "cgroup.events").write_text("populated 1\nfrozen 1\n")

    sleeps.clear()
    assert await wait_frozen(str(cg), 5.0, monotonic=lambda: now[0], sleep=settles_on_the_third) is True
    assert sleeps == [0.001, 0.002, 0.004]


async def test_start_up_thaws_what_the_journal_says_was_frozen(tmp_path: Path) -> None:
    """Also when the pool is no longer configured (the cgroup does not depend on it);
    a reload adding other pools leaves it alone (it may be a freeze in flight)."""
    cg = fake_cgroup(tmp_path / "cg")
    (cg / "cgroup.freeze").write_text("1")
    store = Store(tmp_path / "snapd.db")
    try:
        jid = store.journal_begin("freeze", new_cid(), "snap-x", "overlay:/gone", {"cgroup": str(cg)}, 1.0)
        bad = store.journal_begin("freeze", new_cid(), "snap-y", "overlay:/gone", {"cgroup": None}, 1.0)
        assert await recover(store, [], every_pool=False) == 0
        assert (cg / "cgroup.freeze").read_text() == "1"
        problems: dict[int, str] = {}
        assert await recover(store, [], problems=problems) == 1
        assert (cg / "cgroup.freeze").read_text() == "0"
        assert [e.id for e in store.journal_pending()] == [bad] and "without a cgroup" in problems[bad]
        assert jid not in problems
    finally:
        store.close()


# -- a real daemon: a crash while frozen; hooks -------------------------------------------------


def freeze_config(spec: str, template: str, extra: str = "") -> list[str]:
    return [f'[pool_options."{spec}"]\nfreeze = true\ncgroup_template = "{template}"\n{extra}']


def start(work: Path, spec: str, config: list[str], env: dict[str, str] | None = None) -> DaemonProcess:
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.toml").write_text("".join(config))
    return DaemonProcess(work, [spec], tcp=False, extra=["--config", str(work / "config.toml")],
                         env=env).start()


def test_a_crash_while_frozen_ends_thawed(pool: PoolHarness, tmp_path: Path,
                                          running_cgroup: Callable[[str], RunningCgroup]) -> None:
    work = tmp_path / "d"
    sc = prepared(pool, work)
    cg = running_cgroup(sc.cid)
    config = freeze_config(pool.spec, cg.template)

    d = start(work, pool.spec, config, env={faults.ENV: "freeze.create.frozen"})
    killed_at(d, "freeze.create.frozen", lambda: d.unix.post(snaps(sc.cid), {"alias": "crashed"}))
    assert cg.frozen()  # the daemon died with the container frozen

    seen = len(d.log_text())
    d = start(work, pool.spec, config)
    try:
        assert not cg.frozen()
        log = d.log_text()[seen:]
        thawed = re.search(rf"recover journal id=\d+ op=freeze container={sc.cid} .*outcome=thawed {cg.path}",
                           log)
        rolled_back = re.search(rf"recover journal id=\d+ op=create container={sc.cid} .*rolled back", log)
        assert thawed and rolled_back and thawed.start() < rolled_back.start(), log  # thawed first
        sc.check(d, container_in=["live"], must_list=["s1", "s2"], may_list={})
        r = d.unix.post(snaps(sc.cid))  # and it freezes again, normally
        assert r.status == 200, r.body
        assert d.unix.get(STATUS).data["freezes"] == {"frozen": 1, "abandoned": 0, "not_running": 0}
        assert not cg.frozen() and pending_journal(d) == []
    finally:
        assert d.stop() == 0


def test_a_policy_with_freeze_freezes_its_scheduled_snapshots(pool: PoolHarness, tmp_path: Path,
                                                              running_cgroup: Callable[[str], RunningCgroup]) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    cg = running_cgroup(cid)
    slot = 1_750_000_000.0 // 3600 * 3600 + 3600  # an hour's start
    clock = ClockFile(tmp_path / "clock", slot - 60)
    # the pool does not freeze; the policy does, and a request without `freeze` does not
    config = [f'[pool_options."{pool.spec}"]\nfreeze = false\ncgroup_template = "{cg.template}"\n']
    d = start(tmp_path / "d", pool.spec, config, env=clock.env)
    try:
        assert d.unix.post(snaps(cid)).status == 200
        r = d.unix.request("PUT", "/api/v1/admin/policies/frozen",
                           {"schedule": "0 * * * *", "applies_to": [f"container:{cid}"], "keep_last": 5,
                            "freeze": True})
        assert r.status == 200, r.body
        until(lambda: d.unix.get("/api/v1/admin/policies/frozen").data["status"]["next"],
              "the scheduler to plan the container's next snapshot")
        assert d.unix.get(STATUS).data["freezes"]["frozen"] == 0
        clock.set(slot + 1)
        until(lambda: [s for s in d.unix.get(f"/api/v1/containers/{cid}/snapshot-details").data["snapshots"]
                       if s["policy"] == "frozen"], "the scheduled snapshot")
        assert d.unix.get(STATUS).data["freezes"] == {"frozen": 1, "abandoned": 0, "not_running": 0}
        assert not cg.frozen() and pending_journal(d) == []
    finally:
        assert d.stop() == 0


HOOK = """\
import os, sys
events = open(sys.argv[2]).read().split()
frozen = events[events.index("frozen") + 1]
env = [os.environ.get(k, "-") for k in ("SNAPD_HOOK", "SNAPD_CONTAINER_ID", "SNAPD_SNAPSHOT", "SNAPD_POOL",
                                       "SNAPD_OUTCOME")]
open(sys.argv[1], "a").write(" ".join(env + ["frozen=" + frozen]) + "\\n")
if os.environ["SNAPD_HOOK"] == "pre_snapshot" and os.path.exists(sys.argv[1] + ".veto"):
    sys.stderr.write("database will not flush"); sys.exit(3)
"""


def test_snapshot_hooks_run_around_the_freeze(pool: PoolHarness, tmp_path: Path,
                                              running_cgroup: Callable[[str], RunningCgroup]) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    cg = running_cgroup(cid)
    record, hook = tmp_path / "hooks.log", tmp_path / "hook.py"
    hook.write_text(HOOK)
    argv = f'["{sys.executable}", "{hook}", "{record}", "{cg.path / "cgroup.events"}"]'
    hooks = f"pre_snapshot = {argv}\npost_snapshot = {argv}\nhook_timeout = 20\n"
    lines = lambda: record.read_text().splitlines()  # noqa: E731
    d = start(tmp_path / "d", pool.spec, freeze_config(pool.spec, cg.template, hooks))
    try:
        pool_id = d.unix.get(STATUS).data["pools"][0]["pool"]
        r = d.unix.post(snaps(cid))
        assert r.status == 200, r.body
        name = r.data["snapshot"]["name"]
        # pre_snapshot before the freeze (no name yet), post_snapshot after the thaw
        assert lines() == [f"pre_snapshot {cid}  {pool_id} - frozen=0",
                           f"post_snapshot {cid} {name} {pool_id} ok frozen=0"]
        assert d.unix.get(STATUS).data["freezes"]["frozen"] == 1

        Path(f"{record}.veto").touch()
        r = d.unix.post(snaps(cid))
        assert r.status == 409, r.body
        assert r.body["message"] == "The pre_snapshot hook refused the snapshot; nothing was changed"
        assert r.body["details"][0]["field"] == "pre_snapshot"
        assert "exited 3: database will not flush" in r.body["details"][0]["reason"]
        assert lines()[2:] == [f"pre_snapshot {cid}  {pool_id} - frozen=0"]  # no freeze, no post hook
        assert [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]] == [name]
        assert d.unix.get(STATUS).data["freezes"]["frozen"] == 1 and pending_journal(d) == []
        assert scrape(d.unix)["container_snapd_freezes_total"] == {
            (("outcome", "abandoned"),): 0, (("outcome", "frozen"),): 1, (("outcome", "not_running"),): 0}
    finally:
        assert d.stop() == 0
    # a create refused after pre_snapshot agreed (no room): post_snapshot is told it failed
    Path(f"{record}.veto").unlink()
    d = start(tmp_path / "d", pool.spec, freeze_config(pool.spec, cg.template, hooks + 'reserve = "100TiB"\n'))
    try:
        assert d.unix.post(snaps(cid)).status == 507
        assert lines()[3:] == [f"pre_snapshot {cid}  {pool_id} - frozen=0",
                               f"post_snapshot {cid}  {pool_id} failed frozen=0"]
    finally:
        assert d.stop() == 0


# -- configuration -----------------------------------------------------------------------------


def test_freeze_and_hook_keys_are_checked(tmp_path: Path) -> None:
    pool = "overlay:/srv/c"
    good = build({"freeze": True, "cgroup_template": "/sys/fs/cgroup/x/{id}.scope", "freeze_timeout": 2,
                  "pool_options": {pool: {"freeze_timeout": 0.5, "pre_snapshot": ["/bin/true"]}}}, {})
    assert good.defaults.freeze and good.defaults.freeze_timeout == 2.0
    p = good.policy(pool)
    assert (p.freeze, p.cgroup_template, p.freeze_timeout) == (True, "/sys/fs/cgroup/x/{id}.scope", 0.5)
    assert p.pre_snapshot == ("/bin/true",) and p.post_snapshot == ()
    assert PoolPolicy().cgroup_template == "/sys/fs/cgroup/machine.slice/{id}.scope"
    assert PoolPolicy().freeze is False and PoolPolicy().freeze_timeout == 5.0

    bad = {
        "freeze": ("yes", "freeze: must be true or false"),
        "cgroup_template": ("/sys/fs/cgroup/machine.slice/x.scope", "must contain {id}"),
        "freeze_timeout": (0, "freeze_timeout: must be a number of seconds from 0 to 300"),
    }
    for key, (value, needle) in bad.items():
        for where in ("top", "pool"):
            values = {key: value} if where == "top" else {"pool_options": {pool: {key: value}}}
            with pytest.raises(ConfigError, match=re.escape(needle)):
                build(values, {})
    for template, needle in [("sys/{id}", "absolute"), ("/x/{id}/{name}", "no placeholder but {id}"),
                             ("/x/../{id}", "plain path"), ("/x/./{id}", "plain path"), (7, "a string")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            build({"cgroup_template": template}, {})
    for value in (True, 301, -1, "5"):
        with pytest.raises(ConfigError, match="freeze_timeout"):
            build({"pool_options": {pool: {"freeze_timeout": value}}}, {})
    for hook in ("pre_snapshot", "post_snapshot"):
        for value in ("/bin/true", [], ["true"]):
            with pytest.raises(ConfigError, match=hook):
                build({"pool_options": {pool: {hook: value}}}, {})

    f = tmp_path / "c.toml"  # in the file: a TOML boolean, and only there
    f.write_text("freeze = true\n")
    assert load_file(f) == {"freeze": True}
    for text, needle in [("freeze = 1\n", "'freeze' must be true or false"),
                         ("reserve = true\n", "'reserve' must be a number"),
                         ('freeze_timeout = "5s"\n', "'freeze_timeout' must be a number")]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_file(f)
