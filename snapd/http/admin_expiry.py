"""The expiry plan: what the reaper will delete in the next N hours (admin only).

`GET /api/v1/admin/expiry?hours=N[&limit=M]` lists, earliest first, every
snapshot whose `expires_at` is at or before now + N hours -- including those
already overdue (expired, not yet deleted: a delete that keeps failing, or a
pool that is not configured), so nobody is surprised by a prune.  The CLI's
`snapd expiry plan [--hours N]` prints it as a table.  Served from the store
(the partial expires_at index); nothing here touches a pool.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from snapd.http.auth import AUTH_KEY, require_admin
from snapd.core.clock import iso
from snapd.http.envelope import ApiError, ok
from snapd.http.keys import SERVICE_KEY

ROUTE = "/api/v1/admin/expiry"
DEFAULT_HOURS = 24.0
MAX_HOURS = 24.0 * 36500
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
REAPER_KEY = web.AppKey("reaper", object)
"""Optional: the running snapd.core.reaper.Reaper, so the plan can show failing deletes."""


def _bad(field: str, reason: str) -> ApiError:
    return ApiError(400, "Invalid query parameter", [{"field": field, "reason": reason}])


def _number(query: Any, key: str, default: float, low: float, high: float, integer: bool) -> float:
    if key not in query:
        return default
    raw = query[key]
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or math.isnan(value) or not low <= value <= high:
        raise _bad(key, f"{'an integer' if integer else 'a number'} from {low:g} to {high:g}")
    return value


async def expiry_plan(request: web.Request) -> web.Response:
    require_admin(request)
    query = request.rel_url.query
    hours = _number(query, "hours", DEFAULT_HOURS, 0.0, MAX_HOURS, integer=False)
    limit = int(_number(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, integer=True))
    now = request.app[AUTH_KEY].clock.now()
    until = now + hours * 3600
    rows, total = request.app[SERVICE_KEY].expiring(until, limit)
    reaper = request.app.get(REAPER_KEY)
    failures = getattr(reaper, "failures", {}) if reaper is not None else {}

    def failing(cid: str, name: str) -> dict[str, Any] | None:
        f = failures.get((cid, name))
        if f is None:
            return None
        return {"attempts": f.attempts, "error": f.error, "retry_at": iso(f.retry_at)}

    return ok("Expiry plan retrieved successfully", {
        "now": iso(now),
        "until": iso(until),
        "hours": hours,
        "total": total,
        "truncated": total > len(rows),
        "snapshots": [
            {
                "container_id": r.container_id,
                "name": r.name,
                "alias": r.alias,
                "expires_at": iso(r.expires_at),
                "pool": r.pool,
                "overdue": r.expires_at is not None and r.expires_at <= now,
                "failing": failing(r.container_id, r.name),
            }
            for r in rows
        ],
    })


def add_expiry_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, expiry_plan, allow_head=False)
