"""POST /api/v1/admin/reconcile: make the store agree with the pools, on demand (admin).

Body `{"dry_run": true}` computes and returns the plan and changes nothing;
`{"dry_run": false}` (or no body) applies it.  Runs with no mutation in
flight and holds new ones back until it is done (SnapshotService.exclusive),
so an operation's half-recorded state is never mistaken for drift.  A real
run first settles journal entries still pending (left by a start-up that
could not settle them), then reconciles every pool; each action is logged
by snapd.core.reconcile with what and why.  `snapd reconcile [--dry-run]` calls it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from snapd.http.auth import require_admin
from snapd.http.envelope import ApiError, ok, read_body
from snapd.http.keys import SERVICE_KEY
from snapd.core.settle import PoolSettlement
from snapd.http.validation import InvalidInput, parse_body

ROUTE = "/api/v1/admin/reconcile"


def _pool_json(s: PoolSettlement) -> dict[str, Any]:
    """Every kind of action the plan holds, each with what and why."""
    p = s.plan
    if p is None:
        return {"pool": s.pool, "adopt": [], "forget": [], "update_ref": [], "rehome": [], "conflict": [],
                "update_hold": [], "name_mark": [], "refused": None, "error": s.error}
    return {
        "pool": p.pool,
        "adopt": [{"container_id": r.container_id, "snapshot": r.name, "why": "on disk, not in store"}
                  for r in p.adopt],
        "forget": [{"container_id": r.container_id, "snapshot": r.name, "why": "in store, not on disk"}
                   for r in p.forget],
        "update_ref": [{"container_id": r.container_id, "snapshot": r.name, "ref": ref, "why": "moved on disk"}
                       for r, ref in p.moved],
        "rehome": [{"container_id": r.container_id, "snapshot": r.name, "ref": ref,
                    "why": f"recorded under pool {r.pool}, which is no longer configured by that name"}
                   for r, ref in p.rehomed],
        "conflict": [{"container_id": r.container_id, "snapshot": r.name,
                      "why": f"pool {r.pool} holds it too; left alone"} for r in p.conflicts],
        "update_hold": [{"container_id": r.container_id, "snapshot": r.name,
                         "why": f"held on disk: {reason}" if reason is not None else "not held on disk"}
                        for r, reason, _since in p.holds],
        "name_mark": [{"container_id": cid, "snapshot": mark,
                       "why": "names up to it were given; none is given again"} for cid, mark in p.marks.items()],
        "refused": p.refused,
        "error": None,
    }


async def reconcile_route(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        body = parse_body(await read_body(request), {"dry_run"})
    except InvalidInput as exc:
        raise ApiError(400, "Invalid request payload", exc.details) from None
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ApiError(400, "Invalid request payload", [{"field": "dry_run", "reason": "must be true or false"}])
    done = await request.app[SERVICE_KEY].settle(dry_run=dry_run)
    data = {
        "dry_run": dry_run,
        "journal": [{"id": e.id, "op": e.op, "container_id": e.container_id, "snapshot": e.snapshot,
                     "pool": e.pool} for e in done.pending],
        "journal_settled": done.settled,
        "pools": [_pool_json(s) for s in done.pools],
    }
    return ok("Reconcile plan computed (dry run)" if dry_run else "Reconcile applied", data)


def add_reconcile_routes(app: web.Application) -> None:
    app.router.add_post(ROUTE, reconcile_route)


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


RECONCILE_SCHEMAS: dict[str, Any] = {
    "ReconcileAction": {
        "type": "object", "additionalProperties": False, "required": ["container_id", "snapshot", "why"],
        "properties": {"container_id": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
                       "snapshot": {"type": "string"},
                       "ref": {"type": "string", "description": "Where the snapshot is now (update_ref and rehome)"},
                       "why": {"type": "string"}},
    },
    "ReconcileJournalEntry": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "op", "container_id", "snapshot", "pool"],
        "properties": {"id": {"type": "integer"}, "op": {"type": "string"},
                       "container_id": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
                       "snapshot": {"type": ["string", "null"]}, "pool": {"type": "string"}},
    },
    "ReconcilePool": {
        "type": "object", "additionalProperties": False,
        "required": ["pool", "adopt", "forget", "update_ref", "rehome", "conflict", "update_hold", "name_mark",
                     "refused", "error"],
        "properties": {
            "pool": {"type": "string"},
            "adopt": {"type": "array", "items": _schema_ref("ReconcileAction")},
            "forget": {"type": "array", "items": _schema_ref("ReconcileAction")},
            "update_ref": {"type": "array", "items": _schema_ref("ReconcileAction")},
            "rehome": {"type": "array", "items": _schema_ref("ReconcileAction")},
            "conflict": {"type": "array", "items": _schema_ref("ReconcileAction")},
            "update_hold": {"type": "array", "items": _schema_ref("ReconcileAction"),
                            "description": "Holds the store takes from the disk (recorded there first)"},
            "name_mark": {"type": "array", "items": _schema_ref("ReconcileAction"),
                          "description": "Raised name marks (snapshot: the mark)"},
            "refused": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"]},
        },
    },
    "ReconcileResult": {
        "type": "object",
        "additionalProperties": False,
        "required": ["dry_run", "journal", "journal_settled", "pools"],
        "properties": {
            "dry_run": {"type": "boolean"},
            "journal": {"type": "array", "description": "Unfinished journal entries found (settled unless dry_run)",
                        "items": _schema_ref("ReconcileJournalEntry")},
            "journal_settled": {"type": "integer", "minimum": 0},
            "pools": {"type": "array", "items": _schema_ref("ReconcilePool")},
        },
    },
    "ReconcileResponse": {
        "type": "object",
        "additionalProperties": False,
        "required": ["statusCode", "message", "data"],
        "properties": {
            "statusCode": {"const": 200},
            "message": {"enum": ["Reconcile plan computed (dry run)", "Reconcile applied"]},
            "data": _schema_ref("ReconcileResult"),
        },
    },
    "ReconcileBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"dry_run": {"type": "boolean", "description": "Compute and return the plan; change nothing"}},
    },
}
"""Named component schemas of the route's body and response, for snapd/http/openapi.py."""
