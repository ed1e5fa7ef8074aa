"""The one path for every mutation: naming, per-container order, backend + store.

Handlers, the reaper, the CLI (through the API) and tests all go through
`SnapshotService`.  Operations on one container are serialised in arrival
order; different containers proceed concurrently.  A mutation, once
started, runs to its end even if the client that asked goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, TypeVar

from backends.base import (
    Backend,
    BackendError,
    ContainerBusy,
    ContainerNotFound,
    NoSpace,
    SnapshotNotFound,
    SnapshotRef,
)

from backends import beneath, faults
from backends.pathrestore import PathProblem
from snapd.core.clock import Clock, snapshot_stamp
from snapd.core.names import highest, next_name
from snapd.core.errors import Conflict, InsufficientStorage, InvalidInput, NotFound, OperationFailed, PathNotFound
from snapd.core.freeze import Freezer
from snapd.core import lanes, pipe
from snapd.core.project_slots import ProjectSlots
from snapd.core.recount import Recounter, Timer
from snapd.core.oplog import OperationLog
from snapd.core.settle import Settlement, settle
from snapd.core.store import SnapshotRow, Store
from snapd.core.text import human_size
from snapd.core.transfer import Transfers
from snapd.core.settings import PoolPolicy, Reserve

log = logging.getLogger("snapd.service")
oplog = logging.getLogger("snapd.operation")
T = TypeVar("T")
Guard = Callable[["Container"], None]
"""Sees a found container before anything else happens; raises to refuse."""
DAY = 86400.0
QUICK_OPERATIONS = frozenset({"alias", "hold", "release", "set-project", "set-layout"})
"""Backend operations that write a label or a sidecar: threads of the quick lane (snapd/core/lanes.py)."""


@dataclass(frozen=True)
class Container:
    """A container found in a pool."""

    id: str
    backend: Backend
    project: str | None

    @property
    def pool(self) -> str:
        return self.backend.pool_id


@dataclass
class _HookRun:
    """What a post hook is told: the snapshot (a create names it once pre_snapshot agreed)."""

    snapshot: str


class _Locks:
    """One FIFO lock per container, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = defaultdict(int)

    def busy(self, cid: str) -> bool:
        """Whether an operation on `cid` is running (or queued)."""
        lock = self._locks.get(cid)
        return lock is not None and lock.locked()

    async def run(self, cid: str, fn: Callable[[], Awaitable[T]]) -> T:
        lock = self._locks.setdefault(cid, asyncio.Lock())
        self._users[cid] += 1
        try:
            async with lock:
                return await fn()
        finally:
            self._users[cid] -= 1
            if not self._users[cid]:
                del self._users[cid]
                del self._locks[cid]


class SnapshotService(Transfers):
    """Snapshot operations over a set of pools and one store (export and import: Transfers)."""

    def __init__(self, store: Store, backends: list[Backend], clock: Clock | None = None,
                 metrics: Any = None, recount_timer: Timer | None = None) -> None:
        self.store = store
        self.metrics = metrics
        """Anything with an `operation(backend_kind, kind)` context manager (snapd.host.metrics.Metrics)."""
        self.backends = backends
        self.clock = clock or Clock()
        self._locks = _Locks()
        self._inflight: set[asyncio.Task] = set()
        self.on_expiry_set: Callable[[float], None] = lambda when: None
        """Called with a new expires_at (the reaper wakes if it is sooner)."""
        self.recounts = Recounter(self._count_sizes, busy=lambda: bool(self._inflight), timer=recount_timer)
        """Background size recounts, coalesced per container (snapd/core/recount.py)."""
        self.policies: dict[str, PoolPolicy] = {}
        """backend.pool_id -> reserve and restore hooks (the server sets them)."""
        self.default_policy = PoolPolicy()
        self._open_gate = asyncio.Event()
        self._open_gate.set()
        self._exclusive_lock = asyncio.Lock()
        self._totals: dict[tuple[str, str], tuple[float, int | None]] = {}
        self._labels: dict[str, dict[str, str | None]] = {}
        """pool -> container id -> project, for max_snapshots_per_project (loaded on first use)."""
        self._journal_problems: dict[int, str] = {}
        """Journal id -> why, for entries a settle left pending."""
        self._reconcile_problems: dict[str, str] = {}
        """Pool -> why, for pools the last settle could not reconcile."""
        self.keep_source: Callable[[Container, list[SnapshotRow]], dict[str, list[str]]] | None = None
        """What keeps each snapshot now (policy_service.PolicyService.keep_reasons)."""
        self.freezer = Freezer(store, self.clock)
        """Freezes running containers around their snapshots; `.counts` by outcome."""
        self._exporting: Counter[tuple[str, str]] = Counter()
        """(container, snapshot) -> streams reading it now (snapd/core/transfer.py)."""
        self.slots = ProjectSlots()
        self.stream_idle_timeout = pipe.IDLE_TIMEOUT
        """Seconds an export, import or replication send may move no data (config: stream_idle_timeout)."""
        """Long operations running and queued per project (max_concurrent_per_project)."""

    def policy(self, backend: Backend) -> PoolPolicy:
        return self.policies.get(backend.pool_id, self.default_policy)

    def set_pools(self, backends: list[Backend], policies: dict[str, PoolPolicy],
                  default: PoolPolicy | None = None) -> None:
        """The pools to serve and their policies (keyed by `backend.pool_id`; others
        get `default`); a reload swaps them at once, between requests."""
        self.backends = list(backends)
        self.policies = dict(policies)
        if default is not None:
            self.default_policy = default

    async def settle(self, new: list[Backend] | None = None, *, dry_run: bool = False,
                     before_each: Callable[[], None] = lambda: None) -> Settlement:
        """Recover the journal, then reconcile pools with the store (core.settle).

        Without `new`: every pool, with no operation in flight (start-up and
        `snapd reconcile`).  With `new`: pools a reload is about to add, not yet
        served, beside the ones that are.
        """
        if new is not None:
            configured = {b.pool_id for b in [*self.backends, *new]}
            done = await settle(self.store, new, self.clock, configured=configured, every_pool=False,
                                before_each=before_each, journal_problems=self._journal_problems)
        else:
            async def run() -> Settlement:
                return await settle(self.store, list(self.backends), self.clock, dry_run=dry_run,
                                    before_each=before_each, journal_problems=self._journal_problems)

            done = await self.exclusive(run)
        if not dry_run:
            for s in done.pools:
                if s.error:
                    self._reconcile_problems[s.pool] = s.error
                else:
                    self._reconcile_problems.pop(s.pool, None)
        return done

    def problems(self) -> list[dict[str, str]]:
        """What was set aside and is still unresolved, one entry each: leftovers and
        unreadable values a pool reports, journal entries left pending, pools not
        reconciled (`snapd status`)."""
        out = [{"source": "pool", "pool": b.pool_id, "problem": p} for b in self.backends for p in b.problems]
        if self._journal_problems:
            pending = {e.id for e in self.store.journal_pending()}
            for jid in [j for j in self._journal_problems if j not in pending]:
                del self._journal_problems[jid]  # settled since, by `snapd reconcile`
            out += [{"source": "journal", "pool": "", "problem": p} for p in self._journal_problems.values()]
        out += [{"source": "reconcile", "pool": pool, "problem": p} for pool, p in self._reconcile_problems.items()]
        return out

    def writer_stats(self) -> dict[str, int]:
        """The store writer's commits, jobs, largest batch and queue (snapd/core/writer.py)."""
        return self.store.writer_stats()

    def problem_counts(self) -> dict[str, int]:
        """problems() counted by source, every source present (for /metrics)."""
        counts = dict.fromkeys(("pool", "journal", "reconcile"), 0)
        for p in self.problems():
            counts[p["source"]] += 1
        return counts

    # -- finding containers ------------------------------------------------

    async def find(self, cid: str, guard: Guard | None = None) -> Container:
        """The container `cid` in whichever pool holds it, or NotFound.

        `guard`, when given, sees the container first and raises to refuse.
        """
        for backend in self.backends:
            with lanes.quick():
                exists, project = await backend.lookup(cid)
            if exists:
                container = Container(cid, backend, project)
                if guard is not None:
                    guard(container)
                return container
        raise NotFound("container")

    async def containers(self) -> list[Container]:
        """Every container in every pool, with its project (one batched read per pool).  An id
        in two pools is the first pool's, as find() sees it; a pool that cannot be read is
        logged and left out this time."""
        seen: dict[str, Container] = {}
        for backend in list(self.backends):
            try:
                with lanes.quick():
                    found = await backend.containers()
            except Exception as exc:  # one bad pool must not hide the others' containers
                log.warning("cannot list the containers of pool %s: %s", backend.pool_id, exc)
                continue
            for cid, project in found.items():
                seen.setdefault(cid, Container(cid, backend, project))
        return sorted(seen.values(), key=lambda c: c.id)

    def backend_for_pool(self, pool: str) -> Backend | None:
        return next((b for b in self.backends if b.pool_id == pool), None)

    # -- reads -------------------------------------------------------------

    async def list_json(
        self, cid: str, guard: Guard | None = None, limit: int | None = None,
        after: tuple[int, str] | str | None = None,
    ) -> tuple[Container, list[str], tuple[int, str] | None]:
        """The container and a page of its snapshots, newest first, already JSON-encoded
        (Store.list_json); the position after the page when more follow.  `after` is a
        position or a snapshot name (looked up only once the guard let the caller in)."""
        container = await self.find(cid, guard)
        if isinstance(after, str):
            position = self.store.position(cid, after)
            if position is None:
                raise InvalidInput("query", [{"field": "after",
                                              "reason": "no such snapshot; pass the cursor from data.next"}])
            after = position
        items, last = self.store.list_json(cid, limit, after)
        return container, items, last

    async def get(self, cid: str, name: str, guard: Guard | None = None) -> tuple[Container, SnapshotRow]:
        container = await self.find(cid, guard)
        row = self.store.get(cid, name)
        if row is None:
            raise NotFound("snapshot")
        return container, row

    def snapshots(self, cid: str) -> list[SnapshotRow]:
        """Every snapshot of `cid` the store knows, newest first (no container lookup, no guard)."""
        return self.store.list(cid)

    async def snapshots_paced(self, cid: str, page: int = 1000) -> list[SnapshotRow]:
        """snapshots(), read a page at a time with the event loop running between pages (a
        container with tens of thousands of snapshots takes tens of milliseconds to read)."""
        rows: list[SnapshotRow] = []
        while True:
            last = rows[-1] if rows else None
            got = self.store.list_after(cid, None if last is None else (round(last.created_at * 1000), last.name),
                                        page)
            rows += got
            if len(got) < page:
                return rows
            await asyncio.sleep(0)

    async def rows(self, cid: str, guard: Guard | None = None) -> tuple[Container, list[SnapshotRow]]:
        """The container and all its snapshots, newest first."""
        container = await self.find(cid, guard)
        return container, self.store.list(cid)

    def keep_reasons(self, container: Container, rows: list[SnapshotRow]) -> dict[str, list[str]]:
        """Snapshot name -> every rule that keeps it now (the policy plan's `keep`), for
        those of `rows` the plan covers (from `keep_source`, which the daemon sets)."""
        return self.keep_source(container, rows) if self.keep_source is not None else {}

    def snapshot(self, cid: str, name: str) -> SnapshotRow | None:
        """The store's row for one snapshot (no container lookup, no guard)."""
        return self.store.get(cid, name)

    def count(self, cid: str | None = None) -> int:
        """Snapshots the store knows, of one container or in all."""
        return self.store.count(cid)

    def pool_usage(self) -> list[tuple[str, int, int]]:
        """(pool, snapshots, bytes held) per pool."""
        return self.store.pool_usage()

    def next_expiry(self, after: float | None = None) -> float | None:
        """The earliest expires_at (later than `after` when given)."""
        return self.store.next_expiry() if after is None else self.store.next_expiry_after(after)

    def due_containers(self, now: float) -> list[tuple[str, str, int]]:
        """(container, pool, count) with snapshots expired at `now`."""
        return self.store.due_containers(now)

    def expired(self, cid: str, now: float, limit: int) -> list[SnapshotRow]:
        """Up to `limit` of the container's snapshots expired at `now`, earliest first."""
        return self.store.expired_for(cid, now, limit)

    def expiring(self, until: float, limit: int) -> tuple[list[SnapshotRow], int]:
        """Snapshots expiring by `until` (at most `limit`), and how many there are in all."""
        return self.store.expiring(until, limit)

    # -- mutations ---------------------------------------------------------

    async def _run(self, kind: str, backend: Backend, cid: str, snapshot: str | None,
                   call: Awaitable[T]) -> T:
        """One backend operation: timed into metrics, one log line, errors mapped."""
        what = f"{kind} {cid}" + (f"@{snapshot}" if snapshot else "")
        fields = {"backend": backend.kind, "container": cid, "snapshot": snapshot}
        timer = self.metrics.operation(backend.kind, kind) if self.metrics else contextlib.nullcontext()
        lane = lanes.quick() if kind in QUICK_OPERATIONS else contextlib.nullcontext()
        with OperationLog(oplog, kind, **{k: v for k, v in fields.items() if v}), timer, lane:
            return await map_backend_errors(call, what)

    async def _mutate(self, cid: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` under the container's lock, shielded from the caller's cancellation."""
        while not self._open_gate.is_set():  # an exclusive() run (reconcile) is on
            await self._open_gate.wait()
        task = asyncio.ensure_future(self._locks.run(cid, fn))
        self._inflight.add(task)
        task.add_done_callback(self._ended)
        return await asyncio.shield(task)

    def _ended(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        if not self._inflight:
            self.recounts.poke()

    def _slot(self, container: Container, kind: str) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the container's project's slots for a long operation (snapd/core/project_slots.py)."""
        return self.slots.slot(container.project, container.id, kind)

    async def exclusive(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` with no mutation in flight and none starting until it ends (reconcile)."""
        async with self._exclusive_lock:
            self._open_gate.clear()
            try:
                while self._inflight:
                    await asyncio.gather(*list(self._inflight), return_exceptions=True)
                self._labels.clear()  # reconcile may adopt containers: re-read labels after it
                return await fn()
            finally:
                self._open_gate.set()

    # -- journal, space, hooks -------------------------------------------------

    def _journal(self, op: str, container: Container | Backend, cid: str, snapshot: str | None,
                 data: dict) -> int:
        """Record an intent (inside a writer job: durable with the job's batch)."""
        pool = container.pool if isinstance(container, Container) else container.pool_id
        return self.store.journal_begin(op, cid, snapshot, pool, data, self.clock.now())

    async def _intent(self, op: str, container: Container | Backend, cid: str, snapshot: str | None,
                      data: dict) -> int:
        """Record an operation's intent; its journal id once it is durable."""
        return await self.store.write(lambda _: self._journal(op, container, cid, snapshot, data))

    async def _journal_failed(self, jid: int) -> None:
        now = self.clock.now()
        try:
            await self.store.write(lambda s: s.journal_end(jid, "failed", now))
        except Exception as exc:  # the next start sees it pending and settles it
            log.warning("cannot record failure of journal entry %d: %s", jid, exc)

    async def _check_room(self, container: Container) -> Callable[[], None]:
        """Refuse (507) a create beyond the pool's reserves (bytes, inodes); changes
        nothing.  Returns the check of the snapshot limits, for the caller to run in
        the writer job that records its intent: the counts include pending create
        intents, and jobs run one at a time, so creates in other containers of the
        project cannot overshoot the limit together."""
        policy = self.policy(container.backend)
        await self._check_reserve(container, policy.reserve)
        await self._check_reserve(container, policy.reserve_inodes)
        if policy.max_snapshots_per_project and container.project is not None:
            await self._load_labels(container.backend)
        self._label_seen(container)
        members = ([c for c, p in self._labels[container.pool].items() if p == container.project]
                   if policy.max_snapshots_per_project and container.project is not None else [])
        return lambda: self._check_limits(container, policy, members)

    def _check_limits(self, container: Container, policy: PoolPolicy, members: list[str]) -> None:
        """In a writer job: 507 when the container or its project (`members`) is at its limit."""
        limit = policy.max_snapshots_per_container
        if limit and (n := self.store.count(container.id)) >= limit:
            log.warning("create refused container=%s snapshots=%d max_snapshots_per_container=%d",
                        container.id, n, limit)
            raise InsufficientStorage(
                f"Container {container.id} has {n} snapshots, its limit (max_snapshots_per_container "
                f"= {limit}); delete some or raise the limit; no snapshot was created.")
        limit = policy.max_snapshots_per_project
        if not limit or container.project is None:
            return
        n = self.store.count_of(container.pool, members)
        if n >= limit:
            log.warning("create refused container=%s project=%s pool=%s snapshots=%d "
                        "max_snapshots_per_project=%d", container.id, container.project, container.pool,
                        n, limit)
            raise InsufficientStorage(
                f"Project {container.project} has {n} snapshots in pool {container.pool}, its limit "
                f"(max_snapshots_per_project = {limit}); delete some or raise the limit; "
                "no snapshot was created.")

    async def _load_labels(self, backend: Backend) -> None:
        """The project of every container with snapshots in the pool, read once (one
        batched backend call) and then kept current by creates and set-project."""
        pool = backend.pool_id
        if pool not in self._labels:
            with lanes.quick():
                labels = await backend.projects(self.store.containers(pool))
            self._labels.setdefault(pool, labels)

    def _label_seen(self, container: Container) -> None:
        labels = self._labels.get(container.pool)
        if labels is not None:
            labels[container.id] = container.project

    async def _check_reserve(self, container: Container, reserve: Reserve) -> None:
        """507 when the pool's free bytes or inodes (as `reserve.unit` says) are below
        `reserve`; an unknown or unreadable figure lets the create through."""
        if reserve.off:
            return
        backend = container.backend
        inodes = reserve.unit == "inodes"
        try:
            with lanes.quick():
                free = await (backend.free_inodes() if inodes else backend.free_bytes())
                total = await self._total(backend, reserve.unit) if reserve.fraction is not None else None
        except Exception as exc:  # an unreadable figure must not block snapshots
            log.warning("cannot read free %s of pool %s: %s", reserve.unit, container.pool, exc)
            return
        if free is None:
            return
        need = reserve.required(total)
        if free < need:
            log.warning("create refused container=%s pool=%s free_%s=%d reserve=%d",
                        container.id, container.pool, reserve.unit, free, need)
            have, keep = (f"{free} free inodes", str(need)) if inodes else (f"{human_size(free)} free", human_size(need))
            raise InsufficientStorage(
                f"Pool {container.pool} has {have}, below its reserve of {keep} ({reserve}); "
                f"no snapshot was created. Free {'inodes' if inodes else 'space'} or delete snapshots first."
            )

    async def _total(self, backend: Backend, unit: str) -> int | None:
        """A pool's size in bytes or inodes, re-read at most once a minute (it rarely
        changes; ZFS pays a process)."""
        key = (backend.pool_id, unit)
        now = asyncio.get_running_loop().time()
        hit = self._totals.get(key)
        if hit is None or now - hit[0] > 60:
            hit = (now, await (backend.total_inodes() if unit == "inodes" else backend.total_bytes()))
            self._totals[key] = hit
        return hit[1]

    @contextlib.asynccontextmanager
    async def _hooks(self, kind: str, container: Container, name: str = "") -> AsyncIterator[_HookRun]:
        """The pool's `pre_<kind>` hook, then the body, then its `post_<kind>` hook (kind:
        "restore" or "snapshot").  A failing pre hook refuses the operation (409, nothing
        done, no post hook); the post hook runs also after a failed body, told so by
        SNAPD_OUTCOME, and its failure is only logged.  The body may name the snapshot
        for the post hook (`run.snapshot`: a create learns it after pre_snapshot)."""
        policy = self.policy(container.backend)
        pre, post = getattr(policy, f"pre_{kind}"), getattr(policy, f"post_{kind}")
        run = _HookRun(name)
        if pre:
            failed = await self._hook(f"pre_{kind}", pre, container, name, policy.hook_timeout)
            if failed:
                log.warning("%s refused container=%s snapshot=%s: pre_%s hook failed: %s",
                            kind, container.id, name, kind, failed)
                raise Conflict(f"The pre_{kind} hook refused the {kind}; nothing was changed",
                               [{"field": f"pre_{kind}", "reason": failed}])
        ok = False
        try:
            yield run
            ok = True
        finally:
            if post:
                failed = await self._hook(f"post_{kind}", post, container, run.snapshot, policy.hook_timeout,
                                          outcome="ok" if ok else "failed")
                if failed:  # the operation's answer stands; the operator sees this in logs and status
                    log.error("post_%s hook failed container=%s snapshot=%s: %s", kind, container.id,
                              run.snapshot, failed)

    async def _hook(self, which: str, argv: tuple[str, ...], container: Container, name: str,
                    timeout: float, outcome: str | None = None) -> str | None:
        """Run a hook (no shell); None when it succeeded, else why it did not."""
        env = {k: v for k, v in os.environ.items() if k != faults.ENV}
        env.update(SNAPD_CONTAINER_ID=container.id, SNAPD_SNAPSHOT=name, SNAPD_POOL=container.pool,
                   SNAPD_HOOK=which)
        if outcome is not None:
            env["SNAPD_OUTCOME"] = outcome
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return f"cannot run {argv[0]}: {exc.strerror or exc}"
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return f"{argv[0]} timed out after {timeout:g}s"
        text = err.decode(errors="replace").strip()[-2000:]
        if proc.returncode:
            return f"{argv[0]} exited {proc.returncode}" + (f": {text}" if text else "")
        oplog.info("hook=%s container=%s snapshot=%s ok%s", which, container.id, name,
                   f" stderr={text!r}" if text else "")
        return None

    async def drain(self) -> None:
        """Wait for every operation in flight to finish; stop the size recounts."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        await self.recounts.close()

    async def recounted(self) -> None:
        """Return once every size recount asked for so far has run (at once: no debounce)."""
        await self.recounts.flush()

    def _recount_later(self, backend: Backend, cid: str, names: Iterable[str]) -> None:
        """Recount these snapshots' sizes off the request path (snapd/core/recount.py:
        coalesced per container, after a burst, one at a time, in the long lane).

        A snapshot's exclusive bytes change only when a neighbour in time comes or
        goes (what it shares, it shares with them), so the service names exactly
        those and the backend counts just them.
        """
        self.recounts.ask(backend.pool_id, backend, cid, names)

    async def _count_sizes(self, backend: Backend, cid: str, names: list[str]) -> None:
        sizes = await backend.sizes(cid, names)
        wanted = set(names)
        await self.store.write(lambda s: s.update_sizes(cid, {n: z for n, z in sizes.items() if n in wanted}))

    def busy(self, cid: str) -> bool:
        """Whether an operation on container `cid` is running or queued."""
        return self._locks.busy(cid)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _new_name(self, cid: str, now: float) -> str:
        """A name never given to a snapshot of `cid` before (snapd/core/names.py)."""
        base = snapshot_stamp(now)
        return next_name(base, highest([self.store.name_mark(cid), *self.store.names_like(cid, base)]))

    async def create(
        self, cid: str, alias: str | None = None, expiry: float | None = None, guard: Guard | None = None,
        *, policy: str | None = None, freeze: bool | None = None, manual_default: bool = False,
    ) -> tuple[Container, SnapshotRow]:
        """Take a snapshot of `cid`; `expiry` in days (None: none; with `manual_default`,
        the pool's manual_expiry).  `policy` names the policy taking it (None: by
        request); `freeze` overrides the pool's freeze setting."""
        async def op() -> tuple[Container, SnapshotRow]:
            container = await self.find(cid, guard)
            async with self._slot(container, "create"), self._hooks("snapshot", container) as run:
                return await take(container, run)

        async def take(container: Container, run: _HookRun) -> tuple[Container, SnapshotRow]:
            limits = await self._check_room(container)
            now = self.clock.now()
            days = self.policy(container.backend).manual_expiry if expiry is None and manual_default else expiry
            expires_at = now + days * DAY if days is not None else None

            def intent(store: Store) -> tuple[int, str]:  # in the writer: limits, name, intent at once
                limits()
                name = self._new_name(cid, now)
                jid = self._journal("create", container, cid, name,
                                    {"alias": alias, "expires_at": expires_at, "created_at": now,
                                     "policy": policy})
                store.raise_name_mark(cid, name)  # the name is spent once the intent is recorded
                return jid, name

            jid, name = await self.store.write(intent)
            run.snapshot = name
            faults.point("service.create.journaled")
            try:
                async with self._frozen(container, name, freeze):
                    facts = await self._run("create", container.backend, cid, name,
                                            container.backend.create(cid, name, alias, expires_at, created_at=now,
                                                                     policy=policy))
            except BaseException:
                await self._journal_failed(jid)
                raise
            faults.point("service.create.on-disk")
            row = SnapshotRow(
                container_id=cid,
                name=name,
                pool=container.pool,
                created_at=now,
                alias=alias,
                expires_at=expires_at,
                size=facts.size,
                ref=facts.ref,
                policy=policy,
            )

            def outcome(store: Store) -> list[str]:  # and the older neighbour, read in the writer
                store.insert(row)
                store.journal_end(jid, "done", now)
                return store.neighbours(cid, now, name)[:1]

            older = await self.store.write(outcome)
            self._recount_later(container.backend, cid, [*older, *([name] if facts.size is None else [])])
            if expires_at is not None:
                self.on_expiry_set(expires_at)
            return container, row

        return await self._mutate(cid, op)

    @contextlib.asynccontextmanager
    async def _frozen(self, container: Container, name: str, freeze: bool | None) -> AsyncIterator[None]:
        """The container frozen for the body when `freeze` (None: the pool's setting) says so
        (snapd/core/freeze.py: journalled, bounded, always thawed)."""
        policy = self.policy(container.backend)
        if not (policy.freeze if freeze is None else freeze):
            yield
            return
        async with self.freezer.frozen(container.id, container.pool, name, policy.cgroup_template,
                                       policy.freeze_timeout):
            faults.point("freeze.create.frozen")
            yield

    async def restore_paths(self, cid: str, name: str, paths: list[tuple[bytes, ...]],
                            guard: Guard | None = None) -> tuple[Container, list[dict]]:
        """Bring `paths` (components, see backends.beneath) back from the snapshot, each in
        one atomic step (backends.pathrestore): journalled, under the container's lock and
        the restore hooks, refused (409) while the container is in use.  What was restored,
        one dict per path."""
        async def op() -> tuple[Container, list[dict]]:
            container, row = await self.get(cid, name, guard)
            async with self._slot(container, "restore-paths"), self._hooks("restore", container, name):
                token = secrets.token_hex(6)
                shown = [beneath.show_path(p) for p in paths]
                jid = await self._intent("restore-paths", container, cid, name, {"paths": shown, "token": token})
                try:
                    done = await self._run("restore-paths", container.backend, cid, name, _path_errors(
                        container.backend.restore_paths(cid, SnapshotRef(row.name, row.ref), paths, token)))
                except BaseException:
                    await self._journal_failed(jid)
                    raise
                now = self.clock.now()
                await self.store.write(lambda s: (s.update(cid, name, last_used_at=now),
                                                  s.journal_end(jid, "done", now)))
                return container, done

        return await self._mutate(cid, op)

    async def restore(self, cid: str, name: str, guard: Guard | None = None) -> tuple[Container, SnapshotRow]:
        async def op() -> tuple[Container, SnapshotRow]:
            container, row = await self.get(cid, name, guard)
            async with self._slot(container, "restore"), self._hooks("restore", container, name):
                return await self._restore(container, row)

        return await self._mutate(cid, op)

    async def _restore(self, container: Container, row: SnapshotRow) -> tuple[Container, SnapshotRow]:
        cid, name = container.id, row.name
        others = ([SnapshotRef(r.name, r.ref) for r in self.store.list(cid) if r.name != name]
                  if container.backend.restore_moves_others else [])  # no read of every row on the loop
        jid = await self._intent("restore", container, cid, name, {"ref": row.ref})
        faults.point("service.restore.journaled")
        try:
            moved = await self._run("restore", container.backend, cid, name,
                                    container.backend.restore(cid, SnapshotRef(row.name, row.ref), others))
        except BaseException:
            await self._journal_failed(jid)
            raise
        faults.point("service.restore.on-disk")
        now = self.clock.now()

        def outcome(store: Store) -> None:
            for moved_name, ref in moved.items():
                store.update(cid, moved_name, ref=ref)
            store.update(cid, name, last_used_at=now)
            store.journal_end(jid, "done", now)

        await self.store.write(outcome)
        return container, replace(row, last_used_at=now, ref=moved.get(name, row.ref))

    async def set_alias(
        self, cid: str, name: str, alias: str | None, guard: Guard | None = None
    ) -> tuple[Container, SnapshotRow]:
        async def op() -> tuple[Container, SnapshotRow]:
            container, row = await self.get(cid, name, guard)
            await self._run("alias", container.backend, cid, name,
                            container.backend.set_alias(cid, SnapshotRef(row.name, row.ref), alias))
            await self.store.write(lambda s: s.update(cid, name, alias=alias))
            return container, replace(row, alias=alias)

        return await self._mutate(cid, op)

    async def hold(self, cid: str, name: str, reason: str, guard: Guard | None = None
                   ) -> tuple[Container, SnapshotRow]:
        """Hold a snapshot: no rule, no expiry and no delete request removes it until it is
        released.  Holding a held snapshot again replaces the reason; `since` stays."""
        async def op() -> tuple[Container, SnapshotRow]:
            container, row = await self.get(cid, name, guard)
            if row.hold_reason == reason:
                return container, row
            since = row.hold_since if row.hold_reason is not None else self.clock.now()
            await self._run("hold", container.backend, cid, name,
                            container.backend.hold(cid, SnapshotRef(row.name, row.ref), reason, since))
            await self.store.write(lambda s: s.set_hold(cid, name, reason, round(since * 1000)))
            oplog.info("hold container=%s snapshot=%s reason=%r", cid, name, reason)
            return container, replace(row, hold_reason=reason, hold_since=round(since * 1000) / 1000)

        return await self._mutate(cid, op)

    async def release(self, cid: str, name: str, guard: Guard | None = None) -> tuple[Container, SnapshotRow]:
        """Release a snapshot's hold (one not held: nothing changes); it is governed by
        its expiry and its policy again."""
        async def op() -> tuple[Container, SnapshotRow]:
            container, row = await self.get(cid, name, guard)
            if row.hold_reason is None:
                return container, row
            await self._run("release", container.backend, cid, name,
                            container.backend.release(cid, SnapshotRef(row.name, row.ref)))
            await self.store.write(lambda s: s.set_hold(cid, name, None, None))
            oplog.info("release container=%s snapshot=%s", cid, name)
            if row.expires_at is not None:
                self.on_expiry_set(row.expires_at)  # overdue already: the reaper takes it now
            return container, replace(row, hold_reason=None, hold_since=None)

        return await self._mutate(cid, op)

    async def delete(self, cid: str, name: str, guard: Guard | None = None) -> Container:
        async def op() -> Container:
            container, row = await self.get(cid, name, guard)
            if row.hold_reason is not None:
                raise Conflict(f"snapshot {name} is held: {row.hold_reason}",
                               [{"field": "hold", "reason": f"held: {row.hold_reason}; release it first"}])
            if self.exporting(cid, name):
                raise Conflict(f"snapshot {name} is being exported; delete it when the stream has ended",
                               [{"field": "snapshot", "reason": "being exported"}])
            async with self._slot(container, "delete"):
                error = (await self._delete_rows(container.backend, cid, [row]))[name]
            if isinstance(error, ContainerBusy):  # e.g. a mount inside: kept whole, 409
                raise Conflict(f"snapshot {name} was not deleted: {error}", error.details)
            if error is not None:
                raise OperationFailed(f"snapshot {name} was not deleted: {error}")
            return container

        return await self._mutate(cid, op)

    async def set_project(self, cid: str, project: str | None) -> Container:
        """Label the container with `project` (None removes the label)."""

        async def op() -> Container:
            container = await self.find(cid)
            await self._run("set-project", container.backend, cid, None,
                            container.backend.set_project(cid, project))
            labelled = Container(cid, container.backend, project)
            self._label_seen(labelled)
            return labelled

        return await self._mutate(cid, op)

    async def set_layout(self, cid: str, layout: str | None) -> Container:
        """Label the container with `layout` (overlay pools; None removes the label)."""

        async def op() -> Container:
            container = await self.find(cid)
            await self._run("set-layout", container.backend, cid, None,
                            container.backend.set_layout(cid, layout))
            return container

        return await self._mutate(cid, op)

    async def layout(self, container: Container) -> tuple[str, str | None]:
        """What a snapshot of the container captures, and its layout label (or None)."""
        with lanes.quick():
            return await map_backend_errors(container.backend.get_layout(container.id),
                                            f"layout of {container.id}")

    async def _delete_rows(
        self, backend: Backend, cid: str, rows: list[SnapshotRow]
    ) -> dict[str, BackendError | None]:
        """Delete snapshots on disk (batched), then drop the rows of those gone.  A held
        snapshot is never deleted, whoever asks: its result is an error naming the hold."""
        held: dict[str, BackendError | None] = {
            r.name: BackendError(f"snapshot {r.name} is held: {r.hold_reason}") for r in rows if r.hold_reason}
        held.update({r.name: BackendError(f"snapshot {r.name} is being exported") for r in rows
                     if not r.hold_reason and self.exporting(cid, r.name)})
        rows = [r for r in rows if r.name not in held]
        if not rows:
            return held
        names = ",".join(r.name for r in rows)
        await self._mirror_name_mark(backend, cid, [r.name for r in rows])
        jid = await self._intent("delete", backend, cid, names, {"refs": {r.name: r.ref for r in rows}})
        faults.point("service.delete.journaled")
        try:
            results = await self._run("delete", backend, cid, names,
                                      backend.delete(cid, [SnapshotRef(r.name, r.ref) for r in rows]))
        except BaseException:
            await self._journal_failed(jid)
            raise
        faults.point("service.delete.on-disk")
        now = self.clock.now()

        def outcome(store: Store) -> None:
            for row in rows:
                if results.get(row.name, BackendError("backend gave no result")) is None:
                    store.delete(cid, row.name)
            store.journal_end(jid, "done", now)

        for row in rows:
            if (error := results.get(row.name, BackendError("backend gave no result"))) is not None:
                log.warning("snapshot not deleted container=%s snapshot=%s error=%s", cid, row.name, error)
        await self.store.write(outcome)
        gone = [r for r in rows if r.name in results and results[r.name] is None]
        self._recount_later(backend, cid, {n for r in gone for n in self.store.neighbours(cid, r.created_at, r.name)})
        return {**held, **{r.name: results.get(r.name, BackendError("backend gave no result")) for r in rows}}

    async def _mirror_name_mark(self, backend: Backend, cid: str, names: list[str]) -> None:
        """Before names leave the disk, make sure a store rebuilt from the pool (whose
        mark is the greater of the disk's mark and the names still there) would
        never give them again: write the store's mark to the disk, unless a newer
        snapshot stays and covers them.  So creates need no disk write (a snapshot
        on disk speaks for its own name), and neither does pruning the oldest."""
        mark = highest([self.store.name_mark(cid), *names])
        if mark is None:
            return
        if await self.store.write(lambda s: s.raise_name_mark(cid, mark)):
            log.debug("name mark of container=%s raised to %s", cid, mark)  # the store had lost track
        top = self.store.top_name(cid)
        if top is not None and top not in names:
            return
        try:
            with lanes.quick():
                await backend.set_name_mark(cid, mark)
        except (BackendError, OSError) as exc:  # the store's mark still holds; only a rebuild could miss it
            log.warning("cannot record name mark on disk container=%s mark=%s error=%s", cid, mark, exc)

    async def delete_expired(
        self, cid: str, pool: str, names: list[str], now: float
    ) -> dict[str, BackendError | None]:
        """Delete those of `names` that are still expired at `now` (for the reaper).

        The container may be gone; its snapshots are still removed from their pool.
        """

        async def op() -> dict[str, BackendError | None]:
            rows = [
                r
                for n in names
                if (r := self.store.get(cid, n)) is not None
                and r.expires_at is not None
                and r.expires_at <= now
                and r.hold_reason is None
            ]
            backend = self.backend_for_pool(pool)
            if not rows or backend is None:
                return {}
            return await self._delete_rows(backend, cid, rows)

        return await self._mutate(cid, op)


    async def delete_pruned(
        self, cid: str, pool: str, names: list[str], policy: str
    ) -> dict[str, BackendError | None]:
        """Delete those of `names` that policy `policy` took and nobody holds (for the
        pruner).  Checked again here, under the container's lock, whatever the caller
        computed: a manual snapshot, another policy's or a held one is never deleted."""

        async def op() -> dict[str, BackendError | None]:
            rows = [r for n in names if (r := self.store.get(cid, n)) is not None
                    and r.policy == policy and r.hold_reason is None and r.pool == pool]
            backend = self.backend_for_pool(pool)
            if not rows or backend is None:
                return {}
            return await self._delete_rows(backend, cid, rows)

        return await self._mutate(cid, op)


async def map_backend_errors(call: Awaitable[T], what: str) -> T:
    """Await a backend call, mapping its errors to service errors."""
    try:
        return await call
    except ContainerNotFound:
        raise NotFound("container") from None
    except SnapshotNotFound:
        raise NotFound("snapshot") from None
    except ContainerBusy as exc:
        raise Conflict(str(exc), exc.details) from None
    except NoSpace as exc:
        raise InsufficientStorage(str(exc)) from None
    except BackendError as exc:
        raise OperationFailed(f"{what} failed: {exc}") from None
    except OSError as exc:
        log.exception("%s failed", what)
        if exc.errno == 28:  # ENOSPC
            raise InsufficientStorage(f"{what}: no space left in the pool") from None
        raise OperationFailed(f"{what} failed: {exc.strerror or exc}") from None


async def _path_errors(call: Awaitable[T]) -> T:
    """A path the client named wrongly is its mistake (400, or 404 when it is not in the
    snapshot), not a failed operation."""
    try:
        return await call
    except PathProblem as exc:
        if exc.missing:
            raise PathNotFound(str(exc), exc.details) from None
        raise InvalidInput("payload", exc.details) from None
