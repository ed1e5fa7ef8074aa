"""`manual_expiry`: the expiry, in days, of a snapshot made by request without `expiry`
(global and per pool, off by default). `"expiry": null` still means never; snapshots a
policy takes are governed by the policy, not by this default."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from snapd.core.settings import PoolPolicy
from snapd.host.config import ConfigError, build

from .client import snaps
from .daemon import refused_start
from .digest import write_tree
from .fakes import reaper_world
from .harness import PoolHarness, new_cid
from .test_safety import running

DAY = 86400.0


def days_left(snap: dict) -> float | None:
    if snap["expires_at"] is None:
        return None
    def ts(s: str) -> float:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    return round((ts(snap["expires_at"]) - ts(snap["created_at"])) / DAY, 6)


def test_config_reads_it_globally_and_per_pool() -> None:
    cfg = build({"manual_expiry": 30, "pool_options": {"overlay:/a": {"manual_expiry": 0.5},
                                                       "overlay:/b": {"manual_expiry": 0},
                                                       "overlay:/c": {}}}, {})
    assert cfg.defaults.manual_expiry == 30.0
    assert [cfg.policy(p).manual_expiry for p in ("overlay:/a", "overlay:/b", "overlay:/c")] == [0.5, None, 30.0]
    assert build({}, {}).defaults.manual_expiry is None == PoolPolicy().manual_expiry  # off by default


@pytest.mark.parametrize("value", [-1, 36500.5, True, "7", math.nan, math.inf, [7]])
@pytest.mark.parametrize("where", ["global", "pool"])
def test_bad_values_name_the_key(value: object, where: str) -> None:
    data = {"manual_expiry": value} if where == "global" else {"pool_options": {"overlay:/a": {"manual_expiry": value}}}
    with pytest.raises(ConfigError, match="manual_expiry: must be a number of days from 0 .off. to 36500"):
        build(data, {})


def test_a_bad_value_in_the_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    assert "manual_expiry" in refused_start(tmp_path, "manual_expiry = -2\n")


async def test_only_requests_without_expiry_get_it(tmp_path: Path) -> None:
    async with reaper_world(tmp_path) as (service, _reaper, clock, backend):
        service.default_policy = PoolPolicy(manual_expiry=2.0)
        cid = new_cid()
        write_tree(Path(backend.root) / cid, {"f": "x"})
        _, defaulted = await service.create(cid, manual_default=True)
        _, given = await service.create(cid, None, 5.0, manual_default=True)
        _, never = await service.create(cid, None, None)  # "expiry": null
        _, by_policy = await service.create(cid, policy="hourly")
        assert defaulted.expires_at == clock.now() + 2 * DAY
        assert given.expires_at == clock.now() + 5 * DAY
        assert never.expires_at is None and by_policy.expires_at is None


def test_a_post_without_expiry_gets_the_pools_default(pool: PoolHarness, tmp_path: Path) -> None:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"f": "1"})
    config = f'manual_expiry = 30\n[pool_options."{pool.spec}"]\nmanual_expiry = 0.5\n'
    with running(tmp_path / "d", [pool.spec], config) as d:
        made = [d.unix.post(snaps(cid), body).data["snapshot"]
                for body in (None, {}, {"alias": "a"}, {"expiry": None}, {"expiry": 3})]
        assert [days_left(s) for s in made] == [0.5, 0.5, 0.5, None, 3.0]
        limits = d.unix.get("/api/v1/admin/status").data["pools"][0]["limits"]
        assert limits["manual_expiry"] == 0.5
    with running(tmp_path / "d2", [pool.spec], "manual_expiry = 7\n") as d:
        assert days_left(d.unix.post(snaps(cid)).data["snapshot"]) == 7.0
        out = subprocess.run([sys.executable, "-m", "snapd", "status", "--socket", str(d.socket)],
                             capture_output=True, text=True, timeout=60)
        assert "snapshots made by request expire after 7 days" in out.stdout, out.stdout + out.stderr
    with running(tmp_path / "d3", [pool.spec]) as d:  # off by default
        assert d.unix.post(snaps(cid)).data["snapshot"]["expires_at"] is None
