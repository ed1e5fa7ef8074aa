"""Replication jobs: a container's snapshots sent to another container-snapd.

A job (one per container and target at a time; asking again joins the running one)
asks the target which snapshots it holds and which streams it takes, plans what to
send (replication_plan), then streams each snapshot's export -- the filesystem's own
send stream when both pools are of one kind (stream_kind), else the portable one --
incremental from the one before,
straight into the target's import route: no temporary file, at most the target's
bandwidth.  The target makes each snapshot visible only once it is whole, so a job
cut off anywhere leaves it holding whole snapshots, and the next job continues from
the newest one both sides hold.

That newest common snapshot is the chain's base: it is recorded per container and
target in the store and held (SnapshotService.hold, reason "replication to NAME")
so no DELETE, expiry or retention removes it until a newer common one exists; the
old base is then released (unless another target's chain still rests on it).

The target is reached through a `Remote` (snapd/host/remote.py speaks HTTP); jobs
live in memory: the list starts empty with each daemon start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable, Protocol

from snapd.core.clock import Clock, iso
from snapd.core.errors import NotFound, ServiceError
from snapd.core.replication_plan import PORTABLE, Accepts, Diverged, Snap, plan, stream_kind
from snapd.core.service import SnapshotService
from snapd.core.settings import Target

log = logging.getLogger("snapd.replication")

HOLD_PREFIX = "replication to "
KEEP_FINISHED = 100
"""Finished jobs kept for GET (the oldest are forgotten first)."""


def hold_reason(target: str) -> str:
    """The hold that protects the newest snapshot a container and `target` both hold."""
    return f"{HOLD_PREFIX}{target}: the newest snapshot both hold"


class RemoteError(Exception):
    """The target did not answer, or refused; the message says which and why."""


class Remote(Protocol):
    """What a job needs of its target."""

    async def snapshots(self, cid: str) -> list[Snap]:
        """The target's snapshots of `cid` ([] when it does not have the container)."""

    async def formats(self, cid: str) -> Accepts:
        """The streams the target takes for `cid` (portable only from a daemon that cannot say)."""

    async def receive(self, cid: str, body: AsyncIterator[bytes]) -> None:
        """Import the stream `body` yields as a snapshot of `cid` on the target."""


@dataclass
class Job:
    """One replication job and its progress."""

    id: str
    container: str
    target: str
    full: bool
    created_at: float
    state: str = "queued"
    """queued | running | done | failed"""
    policy: str | None = None
    """The policy whose snapshot started the job (None: started by request)."""
    attempt: int | None = None
    """A policy-driven job: its number in the run of attempts since the last success."""
    next_retry_at: float | None = None
    """A failed policy-driven job: when the next attempt starts (None: none pending)."""
    snapshots_total: int = 0
    snapshots_sent: int = 0
    bytes_sent: int = 0
    bytes_expected: int | None = None
    """An estimate: the sizes the snapshots to send hold exclusively (None until planned)."""
    current: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    diverged: list[str] = field(default_factory=list)
    stream: str | None = None
    """The stream kind the job sends ("btrfs", "zfs" or "portable"; None before its first send)."""
    _started_mono: float | None = None
    _finished_mono: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def rate(self) -> float | None:
        """Bytes per second since the first byte was planned (None before)."""
        if self._started_mono is None:
            return None
        elapsed = (self._finished_mono or time.monotonic()) - self._started_mono
        return self.bytes_sent / elapsed if elapsed > 0 else None

    def as_json(self) -> dict:
        rate = self.rate()
        eta = None
        if not self.finished and rate and self.bytes_expected is not None and self.bytes_expected > self.bytes_sent:
            eta = (self.bytes_expected - self.bytes_sent) / rate
        return {
            "id": self.id, "container_id": self.container, "target": self.target, "full": self.full,
            "policy": self.policy, "attempt": self.attempt, "next_retry_at": iso(self.next_retry_at),
            "state": self.state, "snapshots_sent": self.snapshots_sent, "snapshots_total": self.snapshots_total,
            "current": self.current, "bytes_sent": self.bytes_sent, "bytes_expected": self.bytes_expected,
            "rate": None if rate is None else round(rate, 1), "eta": None if eta is None else round(eta, 1),
            "created_at": iso(self.created_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at), "last_error": self.last_error, "diverged": self.diverged,
            "stream": self.stream,
        }


class Throttle:
    """At most `rate` bytes per second on average: `pace(n)` returns once the n bytes may
    go.  Time the sender spent idle is credited for at most one second (a burst after a
    pause stays within one second's worth)."""

    def __init__(self, rate: int | None, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = asyncio.sleep) -> None:
        self.rate = rate
        self._now = monotonic
        self._sleep = sleep
        self._start: float | None = None
        self._sent = 0

    async def pace(self, n: int) -> None:
        if not self.rate:
            return
        now = self._now()
        if self._start is None:
            self._start = now
        if self._start + self._sent / self.rate < now - 1.0:
            self._start = now - 1.0 - self._sent / self.rate
        self._sent += n
        delay = self._start + self._sent / self.rate - now
        if delay > 0:
            await self._sleep(delay)  # type: ignore[misc]


class Replications:
    """Replication jobs: started, joined, listed; each runs as a task of its own."""

    def __init__(self, service: SnapshotService, targets: Callable[[], dict[str, Target]],
                 connect: Callable[[Target], Remote], clock: Clock | None = None) -> None:
        self.service = service
        self.targets = targets
        """The configured targets now (a reload changes them for jobs started later)."""
        self.connect = connect
        self.clock = clock or service.clock
        self.jobs: dict[str, Job] = {}
        self._running: dict[tuple[str, str], Job] = {}
        self._tasks: set[asyncio.Task] = set()
        self.sent: Counter[str] = Counter()
        """Target -> bytes sent to it since the start (for /metrics)."""

    # -- jobs ------------------------------------------------------------------------

    async def start(self, cid: str, target: str, full: bool = False) -> tuple[Job, bool]:
        """The job for `cid` and `target`: the running one, or a new one started now
        (second value: whether it is new).  NotFound("target") naming it when no such
        target is configured; NotFound("container") when the container is not here."""
        spec = self.targets().get(target)
        if spec is None:
            known = ", ".join(sorted(self.targets())) or "none configured"
            raise NotFound("target", [{"field": "target", "reason": f"no target {target[:64]!r} in the config "
                                                                    f"(known: {known})"}])
        await self.service.find(cid)
        running = self._running.get((cid, target))
        if running is not None:
            return running, False
        job = Job(secrets.token_hex(6), cid, target, full, self.clock.now())
        self.jobs[job.id] = job
        self._running[(cid, target)] = job
        self._forget_old()
        task = asyncio.create_task(self._run(job, spec), name=f"replication-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job, True

    async def wait(self, job: Job) -> Job:
        """`job` once it has finished (done or failed)."""
        task = next((t for t in self._tasks if t.get_name() == f"replication-{job.id}"), None)
        if task is not None and not job.finished:
            await asyncio.wait({task})
        return job

    def list(self) -> list[Job]:
        """Every job known, newest first."""
        return sorted(self.jobs.values(), key=lambda j: (j.created_at, j.id), reverse=True)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def states(self) -> dict[str, int]:
        """Jobs kept, by state (every state present)."""
        counts = dict.fromkeys(("queued", "running", "done", "failed"), 0)
        for job in self.jobs.values():
            counts[job.state] += 1
        return counts

    async def stop(self) -> None:
        """Cancel the running jobs (daemon shutdown); the target keeps only whole snapshots."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _forget_old(self) -> None:
        finished = [j for j in self.list() if j.finished]
        for job in finished[KEEP_FINISHED:]:
            del self.jobs[job.id]

    async def _run(self, job: Job, target: Target) -> None:
        job.state, job.started_at, job._started_mono = "running", self.clock.now(), time.monotonic()
        log.info("replication job=%s container=%s target=%s started", job.id, job.container, job.target)
        try:
            await self._replicate(job, target)
            job.state = "done"
            log.info("replication job=%s done: %d snapshots, %d bytes", job.id, job.snapshots_sent, job.bytes_sent)
        except asyncio.CancelledError:
            job.state, job.last_error = "failed", "the daemon stopped"
            raise
        except Diverged as exc:
            job.state, job.last_error, job.diverged = "failed", exc.message, exc.snapshots
        except (RemoteError, ServiceError, OSError) as exc:
            job.state = "failed"
            job.last_error = str(exc) or type(exc).__name__
        except Exception as exc:  # a job must end with its reason, whatever went wrong
            log.exception("replication job=%s failed", job.id)
            job.state, job.last_error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.current = None
            job.finished_at, job._finished_mono = self.clock.now(), time.monotonic()
            self._running.pop((job.container, job.target), None)
            if job.state == "failed":
                log.warning("replication job=%s container=%s target=%s failed: %s", job.id, job.container,
                            job.target, job.last_error)

    async def _replicate(self, job: Job, target: Target) -> None:
        cid = job.container
        remote = self.connect(target)
        theirs = await remote.snapshots(cid)
        accepts = await remote.formats(cid)
        native = (await self.service.find(cid)).backend.native_stream
        rows = self.service.snapshots(cid)
        todo = plan([Snap(r.name, r.created_at) for r in rows], theirs, job.full)
        if todo.common is not None:
            await self._protect(cid, target.name, todo.common)
        sizes = {r.name: r.size or 0 for r in rows}
        job.snapshots_total = len(todo.sends)
        job.bytes_expected = sum(sizes.get(s.name, 0) for s in todo.sends)
        throttle = Throttle(target.bandwidth)
        for send in todo.sends:
            job.current = send.name
            job.stream = stream_kind(native, accepts, send.base)
            try:
                async with self.service.export(
                        cid, send.name, send.base, None, native=job.stream != PORTABLE,
                        compression=target.compression if job.stream == PORTABLE else "none") as export:
                    await self._send(job, remote, export.run, throttle)
                    job.snapshots_sent += 1
                    if job.stream != PORTABLE:  # the next incremental may start from it natively
                        accepts = replace(accepts, native_bases=accepts.native_bases | {send.name})
                    # held while still marked as exported: nothing deletes it in between
                    await self._protect(cid, target.name, send.name)
            except NotFound as exc:
                what = f"container {cid}" if exc.message == "container" else (
                    f"snapshot {send.name}" + (f" or its base {send.base}" if send.base else ""))
                raise RemoteError(f"{what} is gone from this daemon since the job planned; run it again") from None

    async def _send(self, job: Job, remote: Remote, run: Callable, throttle: Throttle) -> None:
        """Stream one export into the target: a producer task fills a short queue, the
        request body drains it; no progress for the service's stream_idle_timeout gives the send up.
        Once the whole stream went out, the target's answer (it verifies and publishes) is
        waited for as long as the HTTP client's answer timeout allows, not the stall's."""
        stall = self.service.stream_idle_timeout
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        progress = [time.monotonic()]
        all_sent = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            while True:
                if queue.empty() and producer.done():
                    failed = None if producer.cancelled() else producer.exception()
                    if failed is not None:  # cut off without its trailer: the target refuses it
                        raise RemoteError(f"the export of {job.current} failed: {failed}")
                    all_sent.set()
                    return
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                item = getter.result()
                await throttle.pace(len(item))
                progress[0] = time.monotonic()
                job.bytes_sent += len(item)
                self.sent[job.target] += len(item)
                yield item

        producer = asyncio.create_task(run(queue.put))
        sender = asyncio.create_task(remote.receive(job.container, body()))
        try:
            while not sender.done():
                await asyncio.wait({sender}, timeout=min(1.0, stall))
                if not sender.done() and not all_sent.is_set() and time.monotonic() - progress[0] > stall:
                    raise RemoteError(f"target {job.target} took no data for {stall:g} s "
                                      f"while receiving {job.current}; given up")
            sender.result()
        finally:
            for task in (sender, producer):
                task.cancel()
            for task in (sender, producer):
                with contextlib.suppress(BaseException):
                    await task

    # -- the chain's base ------------------------------------------------------------

    async def _protect(self, cid: str, target: str, name: str) -> None:
        """Record `name` as the newest snapshot `cid` and `target` both hold, hold it,
        and release the base it replaces (unless another target's chain rests on it)."""
        store = self.service.store
        row = self.service.snapshot(cid, name)
        if row is None:
            return
        if row.hold_reason is None:
            try:
                await self.service.hold(cid, name, hold_reason(target))
            except NotFound:
                return  # deleted meanwhile: the next job plans without it
        old = store.replication_bases(cid).get(target)
        now = self.clock.now()
        await store.write(lambda s: s.set_replication_base(cid, target, name, round(now * 1000)))
        if old is None or old == name:
            return
        old_row = self.service.snapshot(cid, old)
        if old_row is None or old_row.hold_reason != hold_reason(target):
            return  # gone, not held, or held by someone else: theirs to release
        others = [t for t, base in store.replication_bases(cid).items() if base == old and t != target]
        try:
            if others:
                await self.service.hold(cid, old, hold_reason(others[0]))
            else:
                await self.service.release(cid, old)
        except NotFound:
            pass
