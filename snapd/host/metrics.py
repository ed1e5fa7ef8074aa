"""Prometheus metrics (prometheus_client), one registry per daemon.

What is measured where:

* HTTP requests: `metrics_middleware(metrics)` counts and times every
  request by route *template* (`/api/v1/containers/{id}/snapshots`, never
  the raw path, so labels stay bounded), method and status.
* Operations: `Metrics.operation(backend, kind)` is a context manager the
  service wraps around create/restore/delete/alias (`outcome` label: ok or
  error).
* Filesystem commands: `ZfsStatsCollector` reads backends' `ZfsStats` at
  scrape time (count, errors, seconds per command).
* Snapshots per pool and bytes they hold: `PoolCollector` calls a function
  at scrape time (e.g. one GROUP BY over the store).
* Start-up problems (what was set aside, by source) and freezes (by outcome:
  frozen, abandoned, not running; snapd/core/freeze.py): a `CountsCollector`
  each, reading a function at scrape time.
* Reaper: `ReaperCollector` turns `Reaper.lags` (seconds from expires_at
  to the delete) into a histogram and exposes `Reaper.failures`.
* Policies: `PolicyCollector` reads the scheduler: snapshots taken and
  failed and last success per policy, the schedule lag histogram,
  retention deletes by reason, held snapshots.

`render(metrics)` gives the body and content type of a /metrics response.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol


from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAMESPACE = "container_snapd"

# Request latency: snapshots list in ms, copies may take minutes.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OPERATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
REAPER_LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
SCHEDULE_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The daemon's metrics: its own CollectorRegistry (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests served, by route template, method and status.",
            ["route", "method", "status"], namespace=NAMESPACE, registry=r)
        self.request_seconds = Histogram(
            "http_request_duration_seconds", "Time to answer an HTTP request.",
            ["route", "method", "status"], namespace=NAMESPACE, registry=r, buckets=REQUEST_BUCKETS)
        self.requests_in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being answered now.",
            namespace=NAMESPACE, registry=r)
        self.operations = Counter(
            "operations", "Snapshot operations, by backend, kind and outcome.",
            ["backend", "kind", "outcome"], namespace=NAMESPACE, registry=r)
        self.operation_seconds = Histogram(
            "operation_duration_seconds", "Time a snapshot operation took (lock wait included).",
            ["backend", "kind"], namespace=NAMESPACE, registry=r, buckets=OPERATION_BUCKETS)
        self.operations_in_flight = Gauge(
            "operations_in_flight", "Snapshot operations running now.",
            namespace=NAMESPACE, registry=r)
        self.start_time = Gauge(
            "start_time_seconds", "When the daemon started (Unix time).",
            namespace=NAMESPACE, registry=r)
        self.start_time.set(time.time())

    # -- recording -----------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.request_seconds.labels(*labels).observe(seconds)

    def observe_operation(self, backend: str, kind: str, seconds: float, ok: bool) -> None:
        self.operations.labels(backend, kind, "ok" if ok else "error").inc()
        self.operation_seconds.labels(backend, kind).observe(seconds)

    @contextmanager
    def operation(self, backend: str, kind: str) -> Iterator[None]:
        """Time and count one operation: `with metrics.operation("zfs", "create"): ...`."""
        start = time.monotonic()
        self.operations_in_flight.inc()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.operations_in_flight.dec()
            self.observe_operation(backend, kind, time.monotonic() - start, ok)

    # -- scrape-time sources -------------------------------------------------------

    def add_collector(self, collector: Collector) -> Collector:
        self.registry.register(collector)
        return collector

    def watch_zfs(self, stats_of: Callable[[], Iterable[tuple[str, Any]]]) -> Collector:
        return self.add_collector(ZfsStatsCollector(stats_of))

    def watch_pools(self, usage: Callable[[], Iterable[tuple[str, int, int]]]) -> Collector:
        return self.add_collector(PoolCollector(usage))

    def watch_reaper(self, reaper: ReaperLike) -> Collector:
        return self.add_collector(ReaperCollector(reaper))

    def watch_problems(self, counts: Callable[[], dict[str, int]]) -> Collector:
        return self.add_collector(CountsCollector(
            GaugeMetricFamily, "startup_problems",
            "Items set aside instead of stopping the daemon (leftovers a pool could not remove, "
            "journal entries left pending, pools not reconciled), by source; see `snapd status`.",
            "source", counts))

    def watch_store(self, stats: Callable[[], dict[str, int]]) -> list[Collector]:
        """The store writer's commits and changes (their ratio: changes per fsync) and what
        waits for it now (snapd/core/writer.py)."""
        totals = ("commits", "jobs", "failed_commits")
        return [self.add_collector(CountsCollector(
                    CounterMetricFamily, "store_writes",
                    "The store's writer: commits (one WAL fsync each), jobs (changes: intents, "
                    "outcomes, ...; jobs / commits is the group commit's sharing) and failed commits.",
                    "count", lambda: {k: v for k, v in stats().items() if k in totals})),
                self.add_collector(CountsCollector(
                    GaugeMetricFamily, "store_writer",
                    "The store's writer now: changes queued for it, and the most one commit held.",
                    "figure", lambda: {k: v for k, v in stats().items() if k not in totals}))]

    def watch_recounts(self, stats: Callable[[], dict[str, int]]) -> list[Collector]:
        """Background size recounts asked and run (their ratio: how much coalescing saves),
        and containers waiting for one (snapd/core/recount.py)."""
        return [self.add_collector(CountsCollector(
                    CounterMetricFamily, "size_recounts",
                    "Background size recounts: asked (one per create or delete that changed sizes) "
                    "and counted (one per container per burst of asks).",
                    "count", lambda: {k: v for k, v in stats().items() if k != "pending"})),
                self.add_collector(CountsCollector(
                    GaugeMetricFamily, "size_recounts_waiting",
                    "Containers whose sizes wait for a background recount now.",
                    "figure", lambda: {"pending": stats()["pending"]}))]

    def watch_freezes(self, counts: Callable[[], dict[str, int]]) -> Collector:
        return self.add_collector(CountsCollector(
            CounterMetricFamily, "freezes",
            "Freezes asked for around a snapshot, by outcome: frozen; abandoned (not frozen within "
            "freeze_timeout, or cgroup.freeze not writable: thawed, snapshot taken unfrozen); "
            "not_running (no cgroup).",
            "outcome", counts))

    def watch_lanes(self, projects: Callable[[str], dict[str, int]], waiting: Callable[[], dict[str, int]]
                    ) -> list[Collector]:
        """Long operations per project, running and queued (`projects(state)`), and calls
        waiting for a thread per lane (snapd/core/project_slots.py, snapd/core/lanes.py)."""
        return [self.add_collector(CountsCollector(
                    GaugeMetricFamily, f"project_operations_{state}",
                    f"Long operations (create, restore, restore-paths, delete, import, export) {state} "
                    "per project; beyond max_concurrent_per_project they queue in arrival order.",
                    "project", lambda state=state: projects(state)))  # type: ignore[misc]
                for state in ("running", "queued")] + [self.add_collector(CountsCollector(
                    GaugeMetricFamily, "lane_waiting",
                    "Blocking calls waiting for a thread, per lane: long (filesystem work) or quick "
                    "(lookups).", "lane", waiting))]

    def watch_replications(self, states: Callable[[], dict[str, int]], sent: Callable[[], dict[str, int]]
                           ) -> list[Collector]:
        """Replication jobs kept in memory by state, and bytes sent per target since the start
        (snapd/core/replication.py)."""
        return [self.add_collector(CountsCollector(
                    GaugeMetricFamily, "replication_jobs",
                    "Replication jobs since the daemon started (the last 100 finished), by state: queued, "
                    "running, done, failed.", "state", states)),
                self.add_collector(CountsCollector(
                    CounterMetricFamily, "replication_sent_bytes",
                    "Bytes of snapshot streams sent to each replication target since the daemon started.",
                    "target", sent))]

    def watch_policies(self, scheduler: SchedulerLike) -> Collector:
        return self.add_collector(PolicyCollector(scheduler))


def render(metrics: Metrics) -> tuple[bytes, str]:
    """The text exposition of every metric, and its content type."""
    return generate_latest(metrics.registry), CONTENT_TYPE


# -- collectors read at scrape time ---------------------------------------------------


class ZfsStatsCollector(Collector):
    """Per-command counters of `backends.zfs_cmd.ZfsStats` objects.

    `stats_of()` yields (pool, ZfsStats) pairs, e.g.
    ``lambda: [(b.pool_id, b.stats) for b in backends if b.kind == "zfs"]``.
    """

    def __init__(self, stats_of: Callable[[], Iterable[tuple[str, Any]]]) -> None:
        self.stats_of = stats_of

    def collect(self) -> Iterator:
        count = CounterMetricFamily(
            f"{NAMESPACE}_fs_commands", "Filesystem commands run (zfs/zpool), by pool and command.",
            labels=["pool", "command"])
        errors = CounterMetricFamily(
            f"{NAMESPACE}_fs_command_errors", "Filesystem commands that failed.",
            labels=["pool", "command"])
        seconds = CounterMetricFamily(
            f"{NAMESPACE}_fs_command_seconds", "Total time spent in filesystem commands.",
            labels=["pool", "command"])
        slowest = GaugeMetricFamily(
            f"{NAMESPACE}_fs_command_max_seconds", "Longest single run of a filesystem command.",
            labels=["pool", "command"])
        for pool, stats in self.stats_of():
            for cmd, st in sorted(stats.by_cmd.items()):
                count.add_metric([pool, cmd], st.count)
                errors.add_metric([pool, cmd], st.errors)
                seconds.add_metric([pool, cmd], st.seconds)
                slowest.add_metric([pool, cmd], st.max_seconds)
        yield from (count, errors, seconds, slowest)

    def describe(self) -> Iterator:
        return iter(())  # values are only known at scrape time


class PoolCollector(Collector):
    """Snapshots per pool and the bytes they hold: `usage()` yields (pool, count, bytes)."""

    def __init__(self, usage: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.usage = usage

    def collect(self) -> Iterator:
        count = GaugeMetricFamily(
            f"{NAMESPACE}_snapshots", "Snapshots the store knows, by pool.", labels=["pool"])
        size = GaugeMetricFamily(
            f"{NAMESPACE}_snapshot_bytes",
            "Bytes held exclusively by snapshots (what deleting them would free), by pool.",
            labels=["pool"])
        for pool, n, nbytes in self.usage():
            count.add_metric([pool], n)
            size.add_metric([pool], nbytes or 0)
        yield count
        yield size

    def describe(self) -> Iterator:
        return iter(())


class CountsCollector(Collector):
    """One metric family of counts by one label: `counts()` (label value -> n) at scrape time."""

    def __init__(self, family: type, name: str, documentation: str, label: str,
                 counts: Callable[[], dict[str, int]]) -> None:
        self.family, self.name, self.documentation, self.label = family, name, documentation, label
        self.counts = counts

    def collect(self) -> Iterator:
        metric = self.family(f"{NAMESPACE}_{self.name}", self.documentation, labels=[self.label])
        for value, n in sorted(self.counts().items()):
            metric.add_metric([value], n)
        yield metric

    def describe(self) -> Iterator:
        return iter(())


class ReaperLike(Protocol):
    lags: list[float]
    failures: dict
    deleted: int


class FoldedHistogram:
    """A cumulative histogram fed from a bounded list of recent values and a count of every
    value ever recorded: at each scrape it folds in the values recorded since the previous
    one (`recorded - seen` says how many of the list's last entries are new)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = list(buckets) + [float("inf")]
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self._seen = 0

    def fold(self, values: list[float], recorded: int) -> None:
        recorded = max(recorded, self._seen)
        new = min(recorded - self._seen, len(values))
        for value in values[len(values) - new:] if new > 0 else []:
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    self.counts[i] += 1
                    break
            self.total += value
        self._seen = recorded

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, c in zip(self.bounds, self.counts):
            cumulative += c
            buckets.append(("+Inf" if bound == float("inf") else _fmt(bound), cumulative))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class ReaperCollector(Collector):
    """The reaper's lag histogram (from `Reaper.lags`), deletions and failures.

    `Reaper.lags` is bounded (the oldest half is dropped past 10,000), so
    the collector keeps its own cumulative histogram (FoldedHistogram);
    `Reaper.deleted` counts every recorded lag.
    """

    def __init__(self, reaper: ReaperLike, buckets: tuple[float, ...] = REAPER_LAG_BUCKETS) -> None:
        self.reaper = reaper
        self.lag = FoldedHistogram(buckets)

    def collect(self) -> Iterator:
        self.lag.fold(self.reaper.lags, int(getattr(self.reaper, "deleted", 0)))
        yield self.lag.family(f"{NAMESPACE}_reaper_lag_seconds",
                              "Seconds between a snapshot's expires_at and its deletion.")
        failing = GaugeMetricFamily(
            f"{NAMESPACE}_reaper_failing_snapshots",
            "Expired snapshots whose deletion failed and waits for a retry.")
        failing.add_metric([], len(self.reaper.failures))
        yield failing
        attempts = GaugeMetricFamily(
            f"{NAMESPACE}_reaper_failed_attempts",
            "Failed delete attempts of the snapshots now waiting for a retry.")
        attempts.add_metric([], sum(getattr(f, "attempts", 1) for f in self.reaper.failures.values()))
        yield attempts
        deleted = CounterMetricFamily(
            f"{NAMESPACE}_reaper_deleted", "Expired snapshots the reaper deleted.")
        deleted.add_metric([], getattr(self.reaper, "deleted", 0))
        yield deleted

    def describe(self) -> Iterator:
        return iter(())


class SchedulerLike(Protocol):
    taken: Mapping[str, int]
    failed: Mapping[str, int]
    lags: list[float]
    lag_count: int

    def last_success(self) -> dict[str, float]: ...
    def retention_deletes(self) -> Mapping[str, int]: ...
    def held(self) -> int: ...


class PolicyCollector(Collector):
    """Policies: snapshots taken and failed and the last success, per policy; the schedule
    lag (actual start - planned instant); retention deletes by reason; held snapshots."""

    def __init__(self, scheduler: SchedulerLike, buckets: tuple[float, ...] = SCHEDULE_LAG_BUCKETS) -> None:
        self.scheduler = scheduler
        self.lag = FoldedHistogram(buckets)

    def collect(self) -> Iterator:
        s = self.scheduler
        taken = CounterMetricFamily(f"{NAMESPACE}_policy_snapshots_taken",
                                    "Snapshots a policy took on schedule.", labels=["policy"])
        failed = CounterMetricFamily(f"{NAMESPACE}_policy_snapshots_failed",
                                     "Scheduled snapshots that failed (each attempt).", labels=["policy"])
        for policy in sorted(set(s.taken) | set(s.failed)):
            taken.add_metric([policy], s.taken.get(policy, 0))
            failed.add_metric([policy], s.failed.get(policy, 0))
        yield taken
        yield failed
        last = GaugeMetricFamily(f"{NAMESPACE}_policy_last_success_timestamp_seconds",
                                 "When a policy's newest scheduled snapshot was taken (Unix time).",
                                 labels=["policy"])
        for policy, at in sorted(s.last_success().items()):
            last.add_metric([policy], at)
        yield last
        self.lag.fold(s.lags, s.lag_count)
        yield self.lag.family(f"{NAMESPACE}_policy_schedule_lag_seconds",
                              "Seconds between a scheduled snapshot's planned instant and its start.")
        deletes = CounterMetricFamily(f"{NAMESPACE}_retention_deletes",
                                      "Snapshots retention deleted, by reason.", labels=["reason"])
        for reason, n in sorted(s.retention_deletes().items()):
            deletes.add_metric([reason], n)
        yield deletes
        held = GaugeMetricFamily(f"{NAMESPACE}_held_snapshots", "Snapshots held (no rule deletes them).")
        held.add_metric([], s.held())
        yield held

    def describe(self) -> Iterator:
        return iter(())


def _fmt(bound: float) -> str:
    return repr(float(bound))
