"""The store's writer (snapd/core/writer.py): group commit, per-job atomicity, durability
on return, and no write outside the writer."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from snapd.core.records import SnapshotRow
from snapd.core.store import Store

from .waiting import within

CID = "a" * 24


def _row(name: str) -> SnapshotRow:
    return SnapshotRow(CID, name, "p", 1_736_937_000.0)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "s.db")
    yield s
    s.close()


async def test_concurrent_writes_share_commits(store: Store) -> None:
    """N writes queued while the writer is busy go out in one commit: fewer commits than writes."""
    busy, entered = threading.Event(), threading.Event()

    def hold(_: Store) -> None:  # runs in the writer: everything submitted meanwhile queues
        entered.set()
        busy.wait()

    first = asyncio.ensure_future(store.write(hold))
    await within(asyncio.to_thread(entered.wait), "the writer runs the first job")
    before = store.writer_stats()["commits"]
    n = 20
    writes = [asyncio.ensure_future(store.write(lambda s, i=i: s.insert(_row(f"snap-{i}")))) for i in range(n)]
    await asyncio.sleep(0)  # let every write reach the queue (no waiting on time: one loop turn)
    assert store.writer_stats()["queued"] == n
    busy.set()
    await within(asyncio.gather(first, *writes), "every write committed")
    stats = store.writer_stats()
    assert stats["commits"] - before <= 2 < n  # the first job's batch, then all n together
    assert stats["largest_batch"] >= n
    assert store.count(CID) == n


async def test_a_failing_job_is_rolled_back_alone(store: Store) -> None:
    busy = threading.Event()
    first = asyncio.ensure_future(store.write(lambda _: busy.wait()))

    def half_then_fail(s: Store) -> None:
        s.insert(_row("half"))
        raise ValueError("refused")

    jobs = [asyncio.ensure_future(store.write(lambda s: s.insert(_row("before")))),
            asyncio.ensure_future(store.write(half_then_fail)),
            asyncio.ensure_future(store.write(lambda s: s.insert(_row("after"))))]
    busy.set()
    results = await within(asyncio.gather(first, *jobs, return_exceptions=True), "the batch committed")
    assert isinstance(results[2], ValueError)
    assert {r.name for r in store.list(CID)} == {"before", "after"}


async def test_a_write_is_durable_when_it_returns(store: Store, tmp_path: Path) -> None:
    """Another connection (another process would do the same) sees it at once: committed."""
    await store.write(lambda s: s.insert(_row("one")))
    other = sqlite3.connect(tmp_path / "s.db")
    try:
        assert other.execute("SELECT name FROM snapshots").fetchall() == [("one",)]
    finally:
        other.close()


async def test_a_cancelled_caller_does_not_withdraw_its_write(store: Store) -> None:
    busy = threading.Event()
    first = asyncio.ensure_future(store.write(lambda _: busy.wait()))
    write = asyncio.ensure_future(store.write(lambda s: s.insert(_row("kept"))))
    await asyncio.sleep(0)
    write.cancel()
    busy.set()
    await within(first, "the first job ran")
    await within(store.write(lambda _: None), "a later job committed")  # jobs commit in order
    assert store.get(CID, "kept") is not None


def test_reads_outside_the_writer_cannot_write(store: Store) -> None:
    """Only the writer changes the store: a read connection refuses, and transaction() outside
    a writer job is a programming error."""
    with pytest.raises(sqlite3.OperationalError):
        store.db.execute("DELETE FROM snapshots")
    with pytest.raises(RuntimeError, match="outside the writer"):
        with store.transaction():
            pass


def test_a_write_method_outside_a_job_is_a_job_of_its_own(store: Store) -> None:
    store.insert(_row("sync"))  # start-up, reconcile: waits for its commit in the calling thread
    assert store.get(CID, "sync") is not None and store.writer_stats()["jobs"] >= 1


async def test_reads_are_answered_while_a_commit_is_held(store: Store) -> None:
    """A job holding the writer (as a slow fsync would) does not keep reads waiting, and
    they see only what is committed."""
    await store.write(lambda s: s.insert(_row("committed")))
    busy, entered = threading.Event(), threading.Event()

    def written_not_committed(s: Store) -> None:
        s.insert(_row("pending"))
        entered.set()
        busy.wait()

    held = asyncio.ensure_future(store.write(written_not_committed))
    await within(asyncio.to_thread(entered.wait), "the writer holds an uncommitted change")
    assert [r.name for r in store.list(CID)] == ["committed"]
    busy.set()
    await within(held, "the held job committed")
    assert {r.name for r in store.list(CID)} == {"committed", "pending"}
