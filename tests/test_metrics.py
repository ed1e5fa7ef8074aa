"""snapd.host.metrics: parsed with prometheus_client's own parser; counters move."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from backends.zfs_cmd import ZfsStats
from snapd.host.metrics import CONTENT_TYPE, Metrics, render
from snapd.http.observe import METRICS_KEY, metrics_handler, metrics_middleware
from snapd.core.store import SnapshotRow, Store

BASE = "/api/v1/containers/{id}/snapshots"
CID = "507f1f77bcf86cd799439011"


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    body, ctype = render(metrics)
    assert ctype == CONTENT_TYPE
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap: dict, name: str, **labels: str) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


@web.middleware
async def envelope(request: web.Request, handler):
    """Stands in for api.envelope_errors: HTTP errors become responses."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return web.json_response({"statusCode": exc.status}, status=exc.status)


def make_app(metrics: Metrics) -> web.Application:
    async def list_snaps(request: web.Request) -> web.Response:
        with metrics.operation("overlay", "list"):
            return web.json_response({"id": request.match_info["id"]})

    async def create(request: web.Request) -> web.Response:
        try:
            with metrics.operation("overlay", "create"):
                raise RuntimeError("disk on fire")
        except RuntimeError:
            return web.json_response({"statusCode": 500}, status=500)

    app = web.Application(middlewares=[metrics_middleware(metrics), envelope])
    app[METRICS_KEY] = metrics
    app.router.add_get(BASE, list_snaps)
    app.router.add_post(BASE, create)
    app.router.add_get("/metrics", metrics_handler)
    return app


async def test_requests_and_operations_move() -> None:
    metrics = Metrics()
    async with TestClient(TestServer(make_app(metrics))) as client:
        for _ in range(3):
            assert (await client.get(f"/api/v1/containers/{CID}/snapshots")).status == 200
        assert (await client.post(f"/api/v1/containers/{CID}/snapshots")).status == 500
        assert (await client.get("/nowhere/at/all")).status == 404
        assert (await client.delete(f"/api/v1/containers/{CID}/snapshots")).status == 405
        res = await client.get("/metrics")
        assert res.status == 200 and res.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        scraped = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(await res.text()) for s in f.samples}
    snap = samples(metrics)
    req = "container_snapd_http_requests_total"
    assert value(snap, req, route=BASE, method="GET", status="200") == 3
    assert value(snap, req, route=BASE, method="POST", status="500") == 1
    assert value(snap, req, route="unmatched", method="GET", status="404") == 1
    assert value(snap, req, route="unmatched", method="DELETE", status="405") == 1
    assert not any(CID in str(k) for k in snap), "raw paths must not become labels"
    assert value(snap, "container_snapd_http_request_duration_seconds_count",
                 route=BASE, method="GET", status="200") == 3
    assert value(snap, "container_snapd_http_request_duration_seconds_bucket",
                 route=BASE, method="GET", status="200", le="+Inf") == 3
    ops = "container_snapd_operations_total"
    assert value(snap, ops, backend="overlay", kind="list", outcome="ok") == 3
    assert value(snap, ops, backend="overlay", kind="create", outcome="error") == 1
    assert value(snap, "container_snapd_operation_duration_seconds_count", backend="overlay", kind="create") == 1
    assert value(snap, "container_snapd_operations_in_flight") == 0
    # the /metrics response itself counted the three listings already
    assert value(scraped, req, route=BASE, method="GET", status="200") == 3


@dataclass
class FakeFailure:
    attempts: int


@dataclass
class FakeReaper:
    lags: list[float] = field(default_factory=list)
    failures: dict = field(default_factory=dict)
    deleted: int = 0

    def record(self, lag: float) -> None:
        self.deleted += 1
        self.lags.append(lag)


def test_scrape_time_collectors(tmp_path: Path) -> None:
    metrics = Metrics()
    zstats = ZfsStats()
    metrics.watch_zfs(lambda: [("zfs:tank/containers", zstats)])
    store = Store(tmp_path / "snapd.db")
    metrics.watch_pools(store.pool_usage)
    reaper = FakeReaper()
    metrics.watch_reaper(reaper)
    metrics.watch_store(store.writer_stats)
    recounts = {"asked": 5, "counted": 1, "pending": 2}
    metrics.watch_recounts(lambda: recounts)

    snap = samples(metrics)
    assert value(snap, "container_snapd_snapshots", pool="overlay:/p") == 0
    assert value(snap, "container_snapd_reaper_lag_seconds_count") == 0

    zstats.record("zfs snapshot", 0.25, True)
    zstats.record("zfs snapshot", 0.75, False)
    zstats.record("zfs get", 0.01, True)
    store.insert(SnapshotRow(CID, "snap-1", "overlay:/p", 1.0, size=1000))
    store.insert(SnapshotRow(CID, "snap-2", "overlay:/p", 2.0, size=None))
    store.insert(SnapshotRow(CID, "snap-3", "zfs:tank/containers", 3.0, size=4096))
    reaper.record(0.2)
    reaper.record(7.0)
    reaper.failures[(CID, "snap-9")] = FakeFailure(attempts=3)

    snap = samples(metrics)
    cmd = {"pool": "zfs:tank/containers", "command": "zfs snapshot"}
    assert value(snap, "container_snapd_fs_commands_total", **cmd) == 2
    assert value(snap, "container_snapd_fs_command_errors_total", **cmd) == 1
    assert value(snap, "container_snapd_fs_command_seconds_total", **cmd) == pytest.approx(1.0)
    assert value(snap, "container_snapd_fs_command_max_seconds", **cmd) == pytest.approx(0.75)
    assert value(snap, "container_snapd_snapshots", pool="overlay:/p") == 2
    assert value(snap, "container_snapd_snapshot_bytes", pool="overlay:/p") == 1000
    assert value(snap, "container_snapd_snapshot_bytes", pool="zfs:tank/containers") == 4096
    assert value(snap, "container_snapd_reaper_lag_seconds_count") == 2
    assert value(snap, "container_snapd_reaper_lag_seconds_sum") == pytest.approx(7.2)
    assert value(snap, "container_snapd_reaper_lag_seconds_bucket", le="0.5") == 1
    assert value(snap, "container_snapd_reaper_lag_seconds_bucket", le="10.0") == 2
    assert value(snap, "container_snapd_reaper_failing_snapshots") == 1
    assert value(snap, "container_snapd_reaper_failed_attempts") == 3
    assert value(snap, "container_snapd_reaper_deleted_total") == 2
    assert value(snap, "container_snapd_store_writes_total", count="jobs") == 3  # one insert each
    assert value(snap, "container_snapd_store_writes_total", count="commits") == 3
    assert value(snap, "container_snapd_store_writer", figure="queued") == 0
    assert value(snap, "container_snapd_size_recounts_total", count="asked") == 5
    assert value(snap, "container_snapd_size_recounts_total", count="counted") == 1
    assert value(snap, "container_snapd_size_recounts_waiting", figure="pending") == 2

    # the reaper trims its list: the histogram keeps counting, nothing twice
    reaper.lags[:] = reaper.lags[-1:]
    reaper.record(100.0)
    snap = samples(metrics)
    assert value(snap, "container_snapd_reaper_lag_seconds_count") == 3
    assert value(snap, "container_snapd_reaper_lag_seconds_sum") == pytest.approx(107.2)
    store.close()


@dataclass
class FakeScheduler:
    taken: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    lags: list[float] = field(default_factory=list)
    lag_count: int = 0
    deletes: Counter = field(default_factory=Counter)
    held_now: int = 0
    last: dict = field(default_factory=dict)

    def last_success(self) -> dict[str, float]:
        return self.last

    def retention_deletes(self) -> Counter:
        return self.deletes

    def held(self) -> int:
        return self.held_now

    def started(self, policy: str, lag: float, at: float) -> None:
        self.taken[policy] += 1
        self.lags.append(lag)
        self.lag_count += 1
        self.last[policy] = at


def test_policy_metrics() -> None:
    metrics = Metrics()
    sched = FakeScheduler()
    metrics.watch_policies(sched)
    assert value(samples(metrics), "container_snapd_policy_schedule_lag_seconds_count") == 0
    sched.started("hourly", 0.02, 1_750_000_000.0)
    sched.started("hourly", 3.0, 1_750_003_600.0)
    sched.failed["daily"] += 2
    sched.deletes.update({"outside grid": 5, "min_free": 1})
    sched.held_now = 4
    snap = samples(metrics)
    assert value(snap, "container_snapd_policy_snapshots_taken_total", policy="hourly") == 2
    assert value(snap, "container_snapd_policy_snapshots_failed_total", policy="daily") == 2
    assert value(snap, "container_snapd_policy_last_success_timestamp_seconds", policy="hourly") == 1_750_003_600.0
    assert value(snap, "container_snapd_policy_schedule_lag_seconds_bucket", le="0.05") == 1
    assert value(snap, "container_snapd_policy_schedule_lag_seconds_bucket", le="5.0") == 2
    assert value(snap, "container_snapd_retention_deletes_total", reason="outside grid") == 5
    assert value(snap, "container_snapd_retention_deletes_total", reason="min_free") == 1
    assert value(snap, "container_snapd_held_snapshots") == 4
    sched.lags[:] = []  # the scheduler trims its list: counted once, nothing lost
    sched.started("hourly", 0.5, 1_750_007_200.0)
    assert value(samples(metrics), "container_snapd_policy_schedule_lag_seconds_count") == 3


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.observe_request("/x", "GET", 200, 0.1)
    assert value(samples(a), "container_snapd_http_requests_total", route="/x", method="GET", status="200") == 1
    assert value(samples(b), "container_snapd_http_requests_total", route="/x", method="GET", status="200") == 0
