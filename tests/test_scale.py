"""Scale (#8): a 100,000-row store lists and paginates; mass expiry; many clients.

No timing assertions here (noisy machines): timings are in scripts/bench_*.py
and docs/scale.md.  These tests prove the behaviour holds at scale.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backends.overlay import OverlayBackend
from snapd.core.store import SnapshotRow, Store

from .client import snaps
from .daemon import DaemonProcess
from .digest import write_tree
from .fakes import FakeClock, eventually, reaper_world, settle, step
from .harness import new_cid
from .waiting import until

SECOND = 1 / 86400  # in days
GENERATED = 100_000


# -- a generated store of 100,000 snapshots, plus real ones, on every backend -------------


def _generated_rows(kind: str, cids: list[str], base: float) -> Iterator[SnapshotRow]:
    """100,000 rows over 1,000 containers (the given real ones among them)."""
    others = [secrets.token_hex(12) for _ in range(1000 - len(cids))]
    everyone = cids + others
    for i in range(GENERATED):
        cid = everyone[i % len(everyone)]
        yield SnapshotRow(cid, f"gen-{i:06d}", f"{kind}:generated", base + (i % 5000) * 0.5 + (i % 7) / 1000,
                          alias=f"g{i}" if i % 3 else None, size=i)


def _page_through(client, cid: str, limit: int) -> list[str]:
    names: list[str] = []
    after = None
    while True:
        r = client.get(snaps(cid) + f"?limit={limit}" + (f"&after={after}" if after else ""))
        assert r.status == 200, r.body
        page = r.data["snapshots"]
        assert len(page) <= limit
        names += [s["name"] for s in page]
        after = r.data["next"]
        if after is None:
            return names
        assert len(page) == limit


def test_a_generated_store_of_100000_lists_correctly_and_paginates(pool, daemon) -> None:
    client = daemon.unix
    cids = [new_cid() for _ in range(3)]
    for cid in cids:
        pool.make_container(cid)
    # a few hundred real snapshots, made through the API, several containers at once
    with ThreadPoolExecutor(6) as ex:
        made = list(ex.map(lambda i: client.post(snaps(cids[i % 3]), {"alias": f"real{i}"}), range(150)))
    assert all(r.status == 200 for r in made), [r.body for r in made if r.status != 200][:3]
    real = {cid: {r.data["snapshot"]["name"] for r in made if r.data["container_id"] == cid} for cid in cids}
    store = Store(daemon.state_dir / "snapd.db")
    try:
        base = time.time() - 30 * 86400
        store.insert_many(_generated_rows(pool.kind, cids, base))
        assert store.count() >= GENERATED + 150
        for cid in cids:
            listed = client.get(snaps(cid)).data["snapshots"]
            expected = [r.name for r in store.list(cid)]  # the store's own order
            assert [s["name"] for s in listed] == expected
            assert len(listed) == GENERATED // 1000 + len(real[cid])
            assert {s["name"] for s in listed[: len(real[cid])]} == real[cid]  # the real ones are newest
            assert all(s["name"].startswith("gen-") for s in listed[len(real[cid]):])
            stamps = [(s["created_at"], s["name"]) for s in listed]
            assert stamps == sorted(stamps, reverse=True)
            row = store.get(cid, listed[-1]["name"])
            assert listed[-1]["alias"] == row.alias and listed[-1]["size"] == row.size
            # pages, concatenated, are the list; by cursor and by name
            assert _page_through(client, cid, 7) == [s["name"] for s in listed]
            assert _page_through(client, cid, 10_000) == [s["name"] for s in listed]
            middle = listed[40]["name"]
            after_name = client.get(snaps(cid) + f"?limit=5&after={middle}").data["snapshots"]
            assert [s["name"] for s in after_name] == [s["name"] for s in listed[41:46]]
        # an unknown name, a bad cursor, a bad limit: 400 with details
        for query in ("?after=no-such-snap", "?after=..", "?limit=0", "?limit=10001", "?limit=x", "?limit=%C2%B2", "?limit=" + "9" * 5000):
            r = client.get(snaps(cids[0]) + query)
            assert r.status == 400 and r.body["details"], (query, r.body)
        # without limit nothing changes: no `next`
        assert "next" not in client.get(snaps(cids[0])).data
    finally:
        store.write_now(lambda s: s.db.execute("DELETE FROM snapshots WHERE pool = ?", [f"{pool.kind}:generated"]))
        store.close()
    for cid in cids:
        assert {s["name"] for s in client.get(snaps(cid)).data["snapshots"]} == real[cid]
        for name in real[cid]:
            assert client.delete(snaps(cid, name)).status == 200


# -- the reaper at scale, with an injectable clock ---------------------------------------


@pytest.fixture
async def world(tmp_path: Path):
    async with reaper_world(tmp_path) as w:
        yield w


def _fake_snapshots(backend: OverlayBackend, clock: FakeClock, containers: int, each: int,
                    expires_in: float) -> list[SnapshotRow]:
    """Snapshots made directly on disk and in the store (a real create per row would
    take minutes): a directory with one file each, as the overlay backend keeps them."""
    rows = []
    root = Path(backend.root)
    for _ in range(containers):
        cid = new_cid()
        write_tree(root / cid, {"f": "x"})
        for i in range(each):
            name = f"snap-20250101-{i:06d}"
            d = root / ".snapshots" / cid / name
            d.mkdir(parents=True)
            (d / "f").write_text("x")
            rows.append(SnapshotRow(cid, name, backend.pool_id, clock.now() - 3600 + i,
                                    expires_at=clock.now() + expires_in))
    return rows


async def test_10000_expiring_at_once_are_all_deleted_and_requests_are_answered_meanwhile(world) -> None:
    service, reaper, clock, backend = world
    rows = _fake_snapshots(backend, clock, 100, 100, 1.0)
    service.store.insert_many(rows)
    reaper.notify(rows[0].expires_at)  # rows made directly: tell the reaper, as the service does
    await settle(reaper, clock)
    assert clock.sleeps[-1] == rows[0].expires_at
    other = new_cid()
    write_tree(Path(backend.root) / other, {"f": "y"})
    clock.advance(1.0)
    # requests made during the mass expiry are answered while it is still going on
    answered_during = made_count = 0
    while service.store.count() > 1000:
        await service.list_json(rows[0].container_id)
        _, made = await service.create(other, "during", None)
        await service.set_alias(other, made.name, "still-during")
        made_count += 1
        if service.store.count() > 1000:
            answered_during += 1
        await asyncio.sleep(0.005)
    assert answered_during > 0, "the mass expiry finished before any request: the test proved nothing"
    await settle(reaper, clock)
    assert reaper.deleted == 10_000 and not reaper.failures
    left = {r.container_id for r in service.store.expiring(clock.now() + 86400, 100)[0]}
    assert left == set()
    assert all(not any((Path(backend.root) / ".snapshots" / r.container_id).iterdir()) for r in rows[::100])
    assert [r.alias for r in service.store.list(other)] == ["still-during"] * made_count
    assert len(reaper.lags) == 10_000


async def test_failing_deletes_are_retried_with_backoff_and_block_no_others(world) -> None:
    service, reaper, clock, backend = world
    rows = _fake_snapshots(backend, clock, 20, 50, 1.0)
    service.store.insert_many(rows)
    reaper.notify(rows[0].expires_at)  # rows made directly: tell the reaper, as the service does
    bad = {rows[i].name for i in (0, 7)}  # names repeat across containers: 40 failing snapshots
    backend.fail = set(bad)
    await settle(reaper, clock)
    assert clock.sleeps[-1] == rows[0].expires_at
    await step(reaper, clock, 1.0)
    assert reaper.deleted == len(rows) - 40
    assert len(reaper.failures) == 40
    assert all(f.attempts == 1 and "injected failure" in f.error for f in reaper.failures.values())
    assert {r.name for r in service.store.expiring(clock.now(), 1000)[0]} == bad  # still listed
    await step(reaper, clock, 1.0)  # first retry due
    assert all(f.attempts == 2 for f in reaper.failures.values())
    assert all(f.retry_at - clock.now() == pytest.approx(2.0, abs=0.01) for f in reaper.failures.values())
    # a snapshot made meanwhile still expires on time, failures or not
    cid = rows[0].container_id
    _, late = await service.create(cid, None, SECOND)
    await step(reaper, clock, 1.0)
    assert service.store.get(cid, late.name) is None
    assert all(f.attempts == 2 for f in reaper.failures.values())  # their retry is not due yet
    backend.fail = set()
    await step(reaper, clock, 2.0)
    assert service.store.count() == 0
    assert not reaper.failures and reaper.deleted == len(rows) + 1


async def test_a_snapshot_being_restored_or_created_is_never_reaped_mid_operation(world) -> None:
    service, reaper, clock, backend = world
    cid, elsewhere = new_cid(), new_cid()
    write_tree(Path(backend.root) / cid, {"f": "1"})
    write_tree(Path(backend.root) / elsewhere, {"f": "2"})
    _, doomed = await service.create(cid, None, SECOND)
    _, other = await service.create(elsewhere, None, SECOND)
    # hold a restore from `doomed` mid-operation, then let it expire
    backend.gate, backend.entered = asyncio.Event(), asyncio.Event()
    restoring = asyncio.create_task(service.restore(cid, doomed.name))
    await backend.entered.wait()
    clock.advance(2.0)
    await eventually(lambda: service.store.get(elsewhere, other.name) is None, "others are not blocked")
    await eventually(lambda: cid in reaper.held_back, "the reaper waits for the restore's lock")
    assert service.store.get(cid, doomed.name) is not None
    assert (Path(backend.root) / ".snapshots" / cid / doomed.name).is_dir()
    backend.gate.set()
    _container, restored = await restoring
    assert restored.name == doomed.name
    await settle(reaper, clock)
    assert service.store.get(cid, doomed.name) is None  # reaped after the restore
    # a create in progress: an expired sibling waits for it, the new snapshot is whole
    backend.gate, backend.entered = None, asyncio.Event()
    _, sibling = await service.create(cid, None, SECOND)
    backend.gate = asyncio.Event()
    creating = asyncio.create_task(service.create(cid, "new", 30))
    await backend.entered.wait()
    clock.advance(2.0)
    await eventually(lambda: cid in reaper.held_back, "the reaper waits for the create's lock")
    assert service.store.get(cid, sibling.name) is not None
    backend.gate.set()
    _, new = await creating
    await settle(reaper, clock)
    assert service.store.get(cid, sibling.name) is None
    assert service.store.get(cid, new.name) is not None
    assert (Path(backend.root) / ".snapshots" / cid / new.name / "f").read_text() == "1"


async def test_operations_on_one_container_run_in_arrival_order(world) -> None:
    service, _reaper, _clock, backend = world
    cid = new_cid()
    write_tree(Path(backend.root) / cid, {"f": "1"})
    _, first = await service.create(cid, None, None)
    _, second = await service.create(cid, None, None)
    gate = asyncio.Event()
    backend.gate, backend.entered = gate, asyncio.Event()
    order: list[str] = []

    async def op(label: str, coro) -> None:
        await coro
        order.append(label)

    tasks = [asyncio.create_task(op("restore", service.restore(cid, first.name)))]
    await backend.entered.wait()  # the restore holds the container's lock
    backend.gate = None  # those queued behind it pass the gate
    for label, coro in [
        ("alias", service.set_alias(cid, second.name, "x")),
        ("create", service.create(cid, "c", None)),
        ("delete", service.delete(cid, second.name)),
    ]:
        tasks.append(asyncio.create_task(op(label, coro)))
        queued = len(tasks)  # the restore and those before this one
        await eventually(lambda: service.inflight == queued, f"the {label} is queued behind the restore")
    tasks.append(asyncio.create_task(op("list", service.list_json(cid))))  # reads do not queue
    await eventually(lambda: "list" in order, "the list is answered while the restore holds the lock")
    assert order == ["list"]
    gate.set()
    await asyncio.gather(*tasks)
    assert order == ["list", "restore", "alias", "create", "delete"]
    names = [r.name for r in service.store.list(cid)]
    assert second.name not in names and len(names) == 2


# -- many clients, disconnects, the expiry plan: a real daemon ----------------------------


@pytest.fixture(scope="module")
def served(overlay_env: tuple[DaemonProcess, Path]) -> tuple[DaemonProcess, Path]:
    return overlay_env


def test_200_clients_on_50_containers_get_no_errors_no_duplicates_and_lose_nothing(served) -> None:
    d, pool = served
    cids = [new_cid() for _ in range(50)]
    for cid in cids:
        write_tree(pool / cid, {"f": cid})

    def client(i: int) -> list[tuple[str, int, object]]:
        c, cid = d.unix, cids[i % 50]
        log = []
        a = c.post(snaps(cid), {"alias": f"a{i}"})
        b = c.post(snaps(cid), {"alias": f"b{i}", "expiry": 30})
        log += [("create", a.status, a.body), ("create", b.status, b.body)]
        listed = c.get(snaps(cid))
        log.append(("list", listed.status, None))
        if a.status == b.status == 200:
            mine = {a.data["snapshot"]["name"], b.data["snapshot"]["name"]}
            assert mine <= {s["name"] for s in listed.data["snapshots"]}
            r = c.patch(snaps(cid, a.data["snapshot"]["name"], "/alias"), {"alias": f"kept{i}"})
            log.append(("alias", r.status, r.body))
            r = c.delete(snaps(cid, b.data["snapshot"]["name"]))
            log.append(("delete", r.status, r.body))
            log.append(("name", 200, a.data["snapshot"]["name"]))
        return log

    with ThreadPoolExecutor(200) as ex:
        logs = list(ex.map(client, range(200)))
    errors = [(op, status, body) for log in logs for op, status, body in log if status != 200]
    assert not errors, errors[:5]
    kept = {i: next(body for op, _, body in logs[i] if op == "name") for i in range(200)}
    for n, cid in enumerate(cids):
        listed = d.unix.get(snaps(cid)).data["snapshots"]
        names = [s["name"] for s in listed]
        assert len(names) == len(set(names)) == 4  # no duplicates, no leftovers
        assert {s["name"]: s["alias"] for s in listed} == {kept[i]: f"kept{i}" for i in range(n, 200, 50)}
        assert all(s["expires_at"] is None for s in listed)
        assert sorted(p.name for p in (pool / ".snapshots" / cid).iterdir()) == sorted(names)


def _send_and_hang_up(d: DaemonProcess, method: str, path: str, started, what: str) -> None:
    """Send a request, wait until `started()` (the work has started: `what`), then drop
    the connection without reading the answer (RST)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(d.socket))
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    until(started, what, interval=0.002)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def test_a_client_that_hangs_up_mid_request_leaves_nothing_half_done(served) -> None:
    d, pool = served
    cid = new_cid()
    files = {f"d{i // 100}/f{i}": "x" * 2000 for i in range(3000)}
    write_tree(pool / cid, files)
    tmp = pool / ".snapshots" / ".tmp"
    _send_and_hang_up(d, "POST", snaps(cid), lambda: any(tmp.glob(f"create-{cid}*")),
                      "the create's scratch copy appears")

    def listed() -> list[str]:
        return [s["name"] for s in d.unix.get(snaps(cid)).data["snapshots"]]

    (name,) = until(listed, "the create whose client hung up finishes and is listed")
    snap = pool / ".snapshots" / cid / name
    assert sum(len(f) for _, _, f in os.walk(snap)) == len(files)  # whole, not half-copied
    assert not any(tmp.glob(f"*{cid}*"))
    # a delete whose client hangs up straight away still happens, wholly
    _send_and_hang_up(d, "DELETE", snaps(cid, name), lambda: True, "sent")
    until(lambda: listed() == [], "the delete whose client hung up finishes")
    assert not snap.exists()
    assert not any(tmp.glob(f"*{cid}*"))


def test_the_expiry_plan_lists_what_expires_in_the_next_hours(served) -> None:
    d, pool = served
    c1, c2 = new_cid(), new_cid()
    for cid in (c1, c2):
        write_tree(pool / cid, {"f": "1"})
    soon = d.unix.post(snaps(c1), {"alias": "soon", "expiry": 0.25}).data["snapshot"]
    later = d.unix.post(snaps(c2), {"expiry": 2}).data["snapshot"]
    d.unix.post(snaps(c2), {"alias": "forever"})
    far = d.unix.post(snaps(c1), {"expiry": 30}).data["snapshot"]
    plan = "/api/v1/admin/expiry"
    r = d.unix.get(plan + "?hours=24")
    assert r.status == 200, r.body
    mine = [s for s in r.data["snapshots"] if s["container_id"] in (c1, c2)]
    assert [(s["container_id"], s["name"], s["alias"], s["expires_at"]) for s in mine] == [
        (c1, soon["name"], "soon", soon["expires_at"])]
    assert mine[0]["pool"] == f"overlay:{pool}" and mine[0]["overdue"] is False and mine[0]["failing"] is None
    mine = [s["name"] for s in d.unix.get(plan + "?hours=72").data["snapshots"] if s["container_id"] in (c1, c2)]
    assert mine == [soon["name"], later["name"]]
    everything = d.unix.get(plan + "?hours=876000").data
    assert far["name"] in {s["name"] for s in everything["snapshots"]}
    assert everything["total"] == len(everything["snapshots"]) and not everything["truncated"]
    one = d.unix.get(plan + "?hours=876000&limit=1").data
    assert len(one["snapshots"]) == 1 and one["truncated"] and one["total"] == everything["total"]
    for query in ("?hours=-1", "?hours=nan", "?hours=x", "?limit=0", "?hours=1e9"):
        bad = d.unix.get(plan + query)
        assert bad.status == 400 and bad.body["details"][0]["field"] in ("hours", "limit"), query
    env = {**os.environ, "SNAPD_SOCKET": str(d.socket)}
    out = subprocess.run([sys.executable, "-m", "snapd", "expiry", "plan", "--hours", "72"],
                         check=False, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    # names are per container (far and later may share one): compare (container, name) rows
    rows = [line.split() for line in out.stdout.splitlines()]
    assert {(c, n) for row in rows for c in (c1, c2) for n in row if c in row and n.startswith("snap-")} == {
        (c1, soon["name"]), (c2, later["name"])}, out.stdout
    assert "soon" in out.stdout and "EXPIRES" in out.stdout
