"""Separate lanes (issue #16): quick lookups never wait behind long filesystem work, and a
project over max_concurrent_per_project queues in order while other projects go on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from backends import make_backend
from snapd.core import lanes
from snapd.core.project_slots import ProjectSlots
from snapd.core.service import SnapshotService
from snapd.core.store import Store
from snapd.host.config import ConfigError, build, load_file

from .client import snaps
from .clockfile import ClockFile
from .daemon import DaemonProcess, refused_start
from .digest import write_tree
from .harness import new_cid
from .test_daemon_systemd import scrape
from .waiting import eventually, until, within

ADMIN = "/api/v1/admin"


# -- the per-project queue, as logic ------------------------------------------------------------


async def test_a_project_over_its_limit_queues_in_order_and_others_pass() -> None:
    slots = ProjectSlots(limit=2)
    started: list[str] = []
    gates = {c: asyncio.Event() for c in "abcd"}

    async def op(project: str | None, cid: str) -> None:
        async with slots.slot(project, cid, "create"):
            started.append(cid)
            if cid in gates:
                await gates[cid].wait()

    tasks = {}
    for cid in "abcd":
        tasks[cid] = asyncio.create_task(op("p", cid))
        await asyncio.sleep(0)  # each one arrives before the next
    await eventually(lambda: started == ["a", "b"], "a and b run")
    assert slots.counts("running") == {"p": 2} and slots.counts("queued") == {"p": 2}
    assert [(o["container"], o["state"]) for o in slots.status()[0]["operations"]] == [
        ("a", "running"), ("b", "running"), ("c", "queued"), ("d", "queued")]
    await within(op("q", "e"), "another project's operation runs while p's queue waits")
    await within(op(None, "f"), "an unlabelled container's operation runs")
    gates["b"].set()
    await eventually(lambda: started[-1] == "c", "c starts once b is done")
    assert started == ["a", "b", "e", "f", "c"]
    gates["a"].set()
    await eventually(lambda: started[-1] == "d", "d starts once a is done")
    for cid in "cd":
        gates[cid].set()
    await within(asyncio.gather(*tasks.values()), "every operation ends")
    assert slots.status() == [] and slots.counts("queued") == {}


async def test_a_cancelled_waiter_leaves_the_queue_and_a_raised_limit_admits_at_once() -> None:
    slots = ProjectSlots(limit=1)
    hold, started = asyncio.Event(), []

    async def op(cid: str) -> None:
        async with slots.slot("p", cid, "restore"):
            started.append(cid)
            await hold.wait()

    first = asyncio.create_task(op("a"))
    await eventually(lambda: started == ["a"], "a runs")
    gone, kept = asyncio.create_task(op("b")), asyncio.create_task(op("c"))
    await eventually(lambda: slots.counts("queued") == {"p": 2}, "b and c queue")
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert [o["container"] for o in slots.status()[0]["operations"]] == ["a", "c"]
    slots.limit = 0  # no limit: the queue is admitted now
    await eventually(lambda: started == ["a", "c"], "c starts when the limit goes")
    hold.set()
    await within(asyncio.gather(first, kept), "both end")
    assert slots.status() == []


# -- the thread lanes ------------------------------------------------------------------------------


async def test_a_lookup_is_answered_while_the_long_lane_is_full(tmp_path: Path) -> None:
    executor = lanes.install(long_threads=2, quick_threads=2)
    release = threading.Event()
    pool = tmp_path / "pool"
    pool.mkdir()
    backend = make_backend("overlay", str(pool))
    await backend.open()
    service = SnapshotService(Store(tmp_path / "db"), [backend])
    try:
        cid = new_cid()
        write_tree(pool / cid, {"f": "1"})
        await backend.set_project(cid, "web")
        running: list[str] = []

        def long_work() -> None:
            running.append(threading.current_thread().name)
            release.wait()

        parked = [asyncio.create_task(asyncio.to_thread(long_work)) for _ in range(3)]
        await eventually(lambda: len(running) == 2, "long work holds both threads of the long lane")
        assert all(name.startswith("snapd-long") for name in running)
        assert executor.queued()["long"] == 1, "the long lane is not full: the test would prove nothing"
        container, items, _ = await within(service.list_json(cid), "a list answered while the long lane is full")
        assert container.project == "web" and items == []
        assert (await within(service.find(cid), "a lookup")).id == cid
        assert executor.queued() == {"long": 1, "quick": 0}
        release.set()
        await within(asyncio.gather(*parked), "the long work ends")
    finally:
        release.set()
        await backend.close()
        service.store.close()


# -- config -------------------------------------------------------------------------------------


def test_the_limit_is_read_from_config_and_defaults_to_two(tmp_path: Path) -> None:
    assert build({}, {}).max_concurrent_per_project == 2
    assert build({"max_concurrent_per_project": 5}, {}).max_concurrent_per_project == 5
    assert build({"max_concurrent_per_project": 0}, {}).max_concurrent_per_project == 0  # no limit
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_concurrent_per_project = 3\n")
    assert build(load_file(cfg), {}).max_concurrent_per_project == 3


@pytest.mark.parametrize("value", ["2", -1, 1001, True, 2.5, [2]])
def test_a_bad_limit_names_the_key(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match="max_concurrent_per_project"):
        build({"max_concurrent_per_project": value}, {})
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"max_concurrent_per_project = {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match="max_concurrent_per_project"):
        load_file(cfg)


def test_a_bad_limit_stops_start_up_with_one_line(tmp_path: Path) -> None:
    assert "max_concurrent_per_project" in refused_start(tmp_path, "max_concurrent_per_project = -3\n")


# -- a real daemon: one project's burst queues, another project is served ------------------------

HOOK = """#!/bin/sh
# Records that a create of $SNAPD_CONTAINER_ID took its slot, then waits for its gate (a FIFO),
# when there is one, until the test opens it for writing and closes it.
echo "$SNAPD_CONTAINER_ID" >> {log}
gate={gates}/$SNAPD_CONTAINER_ID
if [ -p "$gate" ]; then read -r _ < "$gate"; fi
exit 0
"""


class Gated:
    """A daemon whose creates wait in a pre_snapshot hook for the test to open their gate."""

    def __init__(self, tmp_path: Path, limit: int, env: dict[str, str] | None = None) -> None:
        self.pool = tmp_path / "pool"
        self.pool.mkdir()
        self.gates = tmp_path / "gates"
        self.gates.mkdir()
        self.log = tmp_path / "hook.log"
        self.log.touch()
        hook = tmp_path / "hook.sh"
        hook.write_text(HOOK.format(log=self.log, gates=self.gates))
        hook.chmod(0o755)
        spec = f"overlay:{os.path.realpath(self.pool)}"
        self.config = tmp_path / "config.toml"
        self.write_config(limit, spec, hook)
        self.d = DaemonProcess(tmp_path / "d", [spec], tcp=False, env=env,
                               extra=["--config", str(self.config)]).start()

    def write_config(self, limit: object, spec: str | None = None, hook: Path | None = None) -> None:
        if spec is not None:
            self._tail = f'[pool_options."{spec}"]\npre_snapshot = ["{hook}"]\nhook_timeout = 3600\n'
        self.config.write_text(f"max_concurrent_per_project = {json.dumps(limit)}\n{self._tail}")

    def container(self, project: str | None, gated: bool = True, cid: str | None = None) -> str:
        cid = cid or new_cid()
        write_tree(self.pool / cid, {"f": cid})
        if project is not None:
            r = self.d.unix.request("PUT", f"{ADMIN}/containers/{cid}/project", {"project": project})
            assert r.status == 200, r.body
        if gated:
            os.mkfifo(self.gates / cid)
        return cid

    def started(self) -> list[str]:
        return self.log.read_text().split()

    def release(self, cid: str) -> None:
        with open(self.gates / cid, "w") as gate:  # the hook is reading it: opens at once
            gate.write("go\n")

    def project(self, name: str) -> dict | None:
        lanes_ = self.d.unix.get(f"{ADMIN}/status").data["lanes"]
        return next((p for p in lanes_["projects"] if p["project"] == name), None)

    def queue(self, name: str) -> list[tuple[str, str]]:
        p = self.project(name)
        return [] if p is None else [(o["container"], o["state"]) for o in p["operations"]]


    def close(self) -> None:
        for fifo in self.gates.iterdir():  # whatever a failing test left waiting: released, and no new waits
            fd = os.open(fifo, os.O_RDWR)  # never blocks; a hook waiting to read goes on
            fifo.unlink()
            os.close(fd)
        assert self.d.stop() == 0


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[Gated]:
    g = Gated(tmp_path, limit=2)
    try:
        yield g
    finally:
        g.close()


def test_a_project_over_its_limit_queues_in_order_while_another_is_served(gated: Gated) -> None:
    g, d = gated, gated.d
    a, b, c, e = (g.container("p") for _ in range(4))
    other, plain = g.container("q", gated=False), g.container(None, gated=False)
    with ThreadPoolExecutor(4) as pool:
        results = {a: pool.submit(d.unix.post, snaps(a)), b: pool.submit(d.unix.post, snaps(b))}
        until(lambda: sorted(g.started()) == sorted([a, b]), "the first two creates of p run")
        results[c] = pool.submit(d.unix.post, snaps(c))
        until(lambda: (c, "queued") in g.queue("p"), "the third create of p queues")
        results[e] = pool.submit(d.unix.post, snaps(e))
        until(lambda: g.queue("p")[2:] == [(c, "queued"), (e, "queued")], "the fourth queues behind it")

        # p's queue shows in status, the CLI and the metrics ...
        assert g.project("p")["running"] == 2 and g.project("p")["queued"] == 2
        text = subprocess.run([sys.executable, "-m", "snapd", "status"], capture_output=True, text=True,
                              env={**os.environ, "SNAPD_SOCKET": str(d.socket)}, timeout=60).stdout
        assert f"p: 2 running, 2 queued (create {c}, create {e})" in text, text
        metrics = scrape(d.unix)
        assert metrics["container_snapd_project_operations_queued"][(("project", "p"),)] == 2
        assert metrics["container_snapd_project_operations_running"][(("project", "p"),)] == 2
        # ... and another project, and an unlabelled container, are served meanwhile
        for cid in (other, plain):
            made = d.unix.post(snaps(cid))
            assert made.status == 200, made.body
            assert [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]] == [
                made.data["snapshot"]["name"]]
        assert d.unix.get(snaps(c)).status == 200  # a read of a queued container is not queued
        assert not any(results[x].done() for x in (a, b, c, e))

        g.release(b)
        until(lambda: len(g.started()) == 5 and g.started()[-1] == c, "c, first in the queue, runs next")
        assert g.queue("p") == [(a, "running"), (c, "running"), (e, "queued")]
        g.release(a)
        until(lambda: g.started()[-1] == e, "e runs next")
        for cid in (c, e):
            g.release(cid)
        assert all(results[x].result(60).status == 200 for x in (a, b, c, e))
    assert g.project("p") is None


def test_the_limit_follows_a_reload_and_a_bad_one_is_rejected(gated: Gated) -> None:
    g, d = gated, gated.d
    a, b, c = (g.container("p") for _ in range(3))
    with ThreadPoolExecutor(3) as pool:
        results = [pool.submit(d.unix.post, snaps(x)) for x in (a, b)]
        until(lambda: sorted(g.started()) == sorted([a, b]), "two creates of p run")
        results.append(pool.submit(d.unix.post, snaps(c)))
        until(lambda: (c, "queued") in g.queue("p"), "the third queues")

        g.write_config("three")
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "reload rejected" in d.log_text(), "the bad value is rejected", interval=0.05)
        assert "max_concurrent_per_project" in d.log_text().split("reload rejected")[-1]
        assert d.unix.get(f"{ADMIN}/status").data["lanes"]["max_concurrent_per_project"] == 2

        g.write_config(3)
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: c in g.started(), "the raised limit admits the queued create")
        assert d.unix.get(f"{ADMIN}/status").data["lanes"]["max_concurrent_per_project"] == 3
        for x in (a, b, c):
            g.release(x)
        assert all(r.result(60).status == 200 for r in results)


def test_scheduled_snapshots_of_a_busy_project_do_not_hold_up_another_projects(tmp_path: Path) -> None:
    """Six containers of project p and one of q fall due at the same slot; p's creates
    wait at its limit of two, and q's scheduled snapshot is taken meanwhile (the scheduler
    dispatches p's first: their ids sort first)."""
    hour = 3600.0
    slot = 1_750_000_000 // hour * hour + hour
    clock = ClockFile(tmp_path / "clock", slot - 60)
    g = Gated(tmp_path, limit=2, env=clock.env)
    try:
        busy = [g.container("p", cid=f"0{i}" + new_cid()[2:]) for i in range(6)]
        quiet = g.container("q", gated=False, cid="f" + new_cid()[1:])
        r = g.d.unix.request("PUT", f"{ADMIN}/policies/hourly",
                             {"schedule": "0 * * * *", "keep_last": 5, "applies_to": ["project:p", "project:q"]})
        assert r.status == 200, r.body
        until(lambda: all(p["status"]["next"] for p in g.d.unix.get(f"{ADMIN}/policies").data["policies"]),
              "the scheduler to plan the containers' next snapshots")
        clock.set(slot + 30)
        until(lambda: g.d.unix.get(snaps(quiet)).data["snapshots"], "q's scheduled snapshot while p's wait")
        until(lambda: sorted(state for _, state in g.queue("p")) == ["queued", "queued", "running", "running"],
              "four of p's creates dispatched (the scheduler's four): two running, two queued")
        started = g.started()
        assert quiet in started and len(started) == 3 and set(started) - {quiet} <= set(busy), started
        released: set[str] = set()

        def release_the_running() -> bool:  # in the order p's slots let them run
            for cid in g.started():
                if cid in busy and cid not in released:
                    g.release(cid)
                    released.add(cid)
            return released == set(busy)

        until(release_the_running, "every create of p to run, one slot after another")
        until(lambda: all(g.d.unix.get(snaps(c)).data["snapshots"] for c in busy), "every scheduled snapshot")
    finally:
        g.close()
