"""The store's one writer: a thread owning the write connection, with group commit.

Every change to the store is a *job* (a function of the store) handed to the
writer.  The writer takes the first job waiting, then every other job queued
by then (up to `max_batch`), and runs them in ONE transaction, each inside its
own savepoint (a job that raises is rolled back alone and its caller gets the
exception).  One COMMIT -- one WAL fsync under synchronous=FULL -- then makes
the whole batch durable, and only after it returns is any job of the batch
acknowledged.  So durability is exactly that of a commit per job (an
acknowledged change survives power loss), while operations in flight share
their fsyncs: the intents and outcomes that queued up during one commit go
together in the next.  No timer: a lone job is committed at once.

The event loop never waits for a commit: `run()` is awaited; `call()` blocks
its caller (start-up, reconcile and other rare paths that are synchronous).
Fault points (backends/faults.py) mark a batch gathered, written and committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from backends import faults

log = logging.getLogger("snapd.store")
T = TypeVar("T")

MAX_BATCH = 256
"""Jobs in one transaction at most (a bound on what one commit holds back)."""


@dataclass
class WriterStats:
    """What the writer has done since it started (`snapd status`, /metrics)."""

    commits: int = 0
    """Transactions committed (each one WAL fsync)."""
    jobs: int = 0
    """Jobs run (each one caller's unit of change)."""
    failed_commits: int = 0
    largest_batch: int = 0
    queued: int = 0
    """Jobs waiting for the writer now (not yet in a batch)."""

    def as_dict(self) -> dict[str, int]:
        return {"commits": self.commits, "jobs": self.jobs, "failed_commits": self.failed_commits,
                "largest_batch": self.largest_batch, "queued": self.queued}


@dataclass
class _Job(Generic[T]):
    fn: Callable[[], T]
    future: concurrent.futures.Future


class WriterClosed(RuntimeError):
    """A job was handed to a writer that has stopped."""


class Writer:
    """A thread that owns `conn` and commits the jobs handed to it in groups."""

    def __init__(self, conn: sqlite3.Connection, max_batch: int = MAX_BATCH) -> None:
        self.conn = conn
        self.max_batch = max_batch
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="store-writer", daemon=True)
        self._thread.start()

    def on_thread(self) -> bool:
        """Whether the caller is the writer itself (inside a job)."""
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], T]) -> "concurrent.futures.Future[T]":
        """Queue `fn`; the future is resolved once the batch holding it has committed."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise WriterClosed("the store is closed")
            self.stats.queued += 1
            self._queue.put(_Job(fn, future))
        return future

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` as a job and wait for its commit (inside a job: run it in place)."""
        if self.on_thread():
            return fn()
        return self.submit(fn).result()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` as a job; return once it is durable, without blocking the event loop.
        Cancelling the caller does not withdraw the job: it still runs and commits."""
        return await asyncio.shield(asyncio.wrap_future(self.submit(fn)))

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if not self.on_thread():
            self._thread.join()

    # -- the thread ---------------------------------------------------------

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            faults.point("store.writer.gathering")
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            with self._lock:
                self.stats.queued -= len(batch)
            self._commit(batch)

    def _commit(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, object, BaseException | None]] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                outcomes.append(self._run_job(job))
            faults.point("store.writer.before-commit")
            self.conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - the whole batch is lost: every caller hears why
            self.stats.failed_commits += 1
            log.error("store commit failed (%d jobs rolled back): %s", len(batch), exc)
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error as again:
                    log.error("store rollback failed: %s", again)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        faults.point("store.writer.committed")
        self.stats.commits += 1
        self.stats.jobs += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for job, value, error in outcomes:
            if error is None:
                job.future.set_result(value)
            else:
                job.future.set_exception(error)

    def _run_job(self, job: _Job) -> tuple[_Job, object, BaseException | None]:
        """One job inside its savepoint; an exception rolls back the job alone."""
        self.conn.execute("SAVEPOINT job")
        try:
            value = job.fn()
        except Exception as exc:  # noqa: BLE001 - handed to the job's caller
            self.conn.execute("ROLLBACK TO job")
            self.conn.execute("RELEASE job")
            return job, None, exc
        self.conn.execute("RELEASE job")
        return job, value, None
