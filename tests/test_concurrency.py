"""Per-container order, cross-container parallelism, a free event loop (real daemon)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .client import snaps
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import new_cid
from .waiting import until


@pytest.fixture(scope="module")
def env(overlay_env: tuple[DaemonProcess, Path]) -> tuple[DaemonProcess, Path]:
    return overlay_env


def test_a_slow_operation_blocks_neither_the_loop_nor_other_containers(env) -> None:
    d, pool = env
    big, small = new_cid(), new_cid()
    write_tree(pool / big, {f"d{i // 200}/f{i}": "x" * 4000 for i in range(8000)})
    write_tree(pool / small, {"f": "1"})
    done = threading.Event()
    result: dict = {}

    def slow() -> None:
        result["big"] = d.unix.post(snaps(big))
        done.set()

    t = threading.Thread(target=slow)
    t.start()
    until(lambda: any((pool / ".snapshots" / ".tmp").glob(f"create-{big}*")) or done.is_set(),
          "the big create's scratch copy appears", interval=0.001)
    assert not done.is_set(), "the big create finished before it was seen under way"
    # while the big copy runs: another container is listed, snapshotted and restored
    assert d.unix.get(snaps(small)).status == 200
    name = d.unix.post(snaps(small)).data["snapshot"]["name"]
    assert d.unix.patch(snaps(small, name)).status == 200
    assert not done.is_set(), "the big create finished first: the test proved nothing"
    # and a request on the busy container itself queues behind it
    listed_during = d.unix.get(snaps(big)).data["snapshots"]
    assert listed_during == []  # reads do not wait; the create is not committed yet
    second = d.unix.post(snaps(big))  # waits for the first create, then runs
    t.join(60)
    assert result["big"].status == 200 and second.status == 200
    names = [s["name"] for s in d.unix.get(snaps(big)).data["snapshots"]]
    assert names == [second.data["snapshot"]["name"], result["big"].data["snapshot"]["name"]]


def test_many_concurrent_creates_on_one_container_get_unique_names(env) -> None:
    d, pool = env
    cid = new_cid()
    write_tree(pool / cid, {"f": "1"})
    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda i: d.unix.post(snaps(cid), {"alias": f"a{i}"}), range(40)))
    assert all(r.status == 200 for r in results)
    names = [r.data["snapshot"]["name"] for r in results]
    assert len(set(names)) == 40
    listed = d.unix.get(snaps(cid)).data["snapshots"]
    assert sorted(s["name"] for s in listed) == sorted(names)
    assert {s["alias"] for s in listed} == {f"a{i}" for i in range(40)}


def test_concurrent_alias_and_delete_lose_nothing(env) -> None:
    d, pool = env
    cid = new_cid()
    write_tree(pool / cid, {"f": "1"})
    names = [d.unix.post(snaps(cid)).data["snapshot"]["name"] for _ in range(20)]
    doomed, kept = names[:10], names[10:]

    def work(i: int):
        if i < 10:
            return d.unix.delete(snaps(cid, doomed[i]))
        return d.unix.patch(snaps(cid, kept[i - 10], "/alias"), {"alias": f"k{i}"})

    with ThreadPoolExecutor(20) as ex:
        results = list(ex.map(work, range(20)))
    assert all(r.status == 200 for r in results)
    listed = {s["name"]: s["alias"] for s in d.unix.get(snaps(cid)).data["snapshots"]}
    assert listed == {n: f"k{i + 10}" for i, n in enumerate(kept)}
    assert sorted(p.name for p in (pool / ".snapshots" / cid).iterdir()) == sorted(kept)
