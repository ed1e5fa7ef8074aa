"""The OpenAPI entries of the policy routes (snapd/http/admin_policies.py): paths and schemas.

The body schema says each key's shape exactly as the server reads it; what
no JSON Schema can say -- a cron expression that parses, a zone in the time
zone database, targets that exist and that no other policy claims, rules
across keys (a policy must keep something, jitter shorter than an interval,
an alias's rendered length) -- is a 400 "Invalid policy" naming the key.
"""

from __future__ import annotations

from typing import Any

from snapd.core.policies.spec import KEYS, MAX_KEEP, POOL_BACKENDS, REPLICATION_TARGET
from snapd.core.policy_book import RESERVED
from snapd.core.policy_service import MAX_HOURS
from snapd.http.admin_policies import DEFAULT_HOURS, ROUTE
from snapd.http.openapi import (
    ADMIN_ERRORS,
    CONTAINER_ID_PATTERN,
    NULLABLE_TIMESTAMP,
    SCHEMAS,
    TIMESTAMP,
    _envelope,
    _nullable,
    _object,
    _op,
    _ref,
)

TAG = {"name": "policies", "description": "Snapshot policies (admin only): schedules, tiered retention, and the "
                                          "plan that says why each snapshot stays or when it goes."}
NAME_PATTERN = "^(?!(?:" + "|".join(RESERVED) + ")$)[a-z0-9][a-z0-9_-]{0,62}$"
"""admin_policies.POLICY_NAME, in ECMA-262 terms."""
MAX_SECONDS = 100 * 366 * 86400
DURATION = r"^\s*[0-9]{1,9}[smhdw]\s*$"
BUCKETS = ("hourly", "daily", "weekly", "monthly", "yearly")
REASONS = ["expires_at", "outside grid", "max_age", "min_free"]


def _duration(description: str, minimum: int) -> dict[str, Any]:
    return {"anyOf": [{"type": "integer", "minimum": minimum, "maximum": MAX_SECONDS},
                      {"type": "string", "pattern": DURATION}],
            "description": f"{description}: seconds, or `90s`, `5m`, `1h`, `400d`, `1w` (at most 100 years)."}


def _count(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": MAX_KEEP, "description": description}


TARGET = ("^(container:[0-9A-Fa-f]{24}|project:[A-Za-z0-9][A-Za-z0-9._-]{0,127}|pool:(" + "|".join(POOL_BACKENDS)
          + "):.+)$")

BODY_PROPERTIES: dict[str, Any] = {
    "schedule": {"type": "string", "minLength": 1, "maxLength": 200,
                 "description": "A 5-field cron expression (`0 * * * *`), read in `timezone`, or an interval "
                                "`every N<s|m|h|d|w>` (`every 15m`)."},
    "timezone": {"type": "string", "maxLength": 64, "pattern": r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$",
                 "description": "IANA zone the cron expression and the retention buckets are read in (default "
                                "UTC)."},
    "jitter": _duration("Each container's snapshots start at a stable offset within this window (default 0)", 0),
    "applies_to": {"type": "array", "minItems": 1, "uniqueItems": True,
                   "items": {"type": "string", "pattern": TARGET},
                   "description": "`container:<id>`, `project:<label>`, `pool:<backend>:<root>`; the most "
                                  "specific policy wins (container over project over pool)."},
    "keep_last": _count("Always keep this policy's newest N snapshots (default 0)."),
    "keep": _ref("PolicyGridBody"),
    "max_age": {"anyOf": [_duration("Never keep one of this policy's snapshots longer", 1), {"type": "null"}]},
    "alias": {"type": ["string", "null"], "minLength": 1,
              "description": "Alias template: `{policy}`, `{container}`, `{time}` (the slot, in the zone)."},
    "min_free": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1},
                           {"type": "null"}],
                 "description": "Below this free space (`10%`, `5G`, bytes), delete this policy's oldest "
                                "snapshots beyond keep_last first."},
    "freeze": {"type": ["boolean", "null"], "description": "Freeze the container for the snapshot (null: the "
                                                           "pool's setting)."},
    "targets": {"type": "array", "uniqueItems": True,
                "items": {"type": "string", "pattern": f"^{REPLICATION_TARGET.pattern}$"},
                "description": "Replication targets (`[targets.NAME]` of the config): after each of its snapshots "
                               "the container is replicated to each; failed jobs are retried with backoff."},
}
assert set(BODY_PROPERTIES) == set(KEYS)
EXAMPLE = {"schedule": "0 * * * *", "timezone": "Europe/Berlin", "jitter": "5m",
           "applies_to": ["container:507f1f77bcf86cd799439011"],
           "keep_last": 3, "keep": {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 12}, "max_age": "400d",
           "alias": "auto-{policy}"}


def _schemas() -> None:
    SCHEMAS["PolicyGridBody"] = {
        "type": "object", "additionalProperties": False,
        "properties": {b: _count(f"Keep the newest snapshot of each of the last N {b} periods.") for b in BUCKETS},
        "description": "The grid, read in the policy's zone (buckets left out: 0)."}
    SCHEMAS["PolicyBody"] = {"type": "object", "additionalProperties": False, "required": ["schedule", "applies_to"],
                             "properties": BODY_PROPERTIES,
                             "description": "A policy: the keys of a `[policies.NAME]` table of the config file.",
                             "example": EXAMPLE}
    SCHEMAS["Policy"] = _object({
        "schedule": {"type": "string"}, "timezone": {"type": "string"}, "jitter": {"type": "string"},
        "applies_to": {"type": "array", "items": {"type": "string"}},
        "keep_last": {"type": "integer", "minimum": 0},
        "keep": _ref("PolicyGrid"),
        "max_age": {"type": ["string", "null"]}, "alias": {"type": ["string", "null"]},
        "min_free": {"type": ["string", "integer", "null"]}, "freeze": {"type": ["boolean", "null"]},
        "targets": {"type": "array", "items": {"type": "string"}},
    }, description="A policy in its canonical form (every key; PUT it back unchanged to keep it).")
    SCHEMAS["PolicyGrid"] = _object({b: {"type": "integer", "minimum": 0} for b in BUCKETS})
    SCHEMAS["PolicyFailure"] = _object({"container_id": _ref("ContainerId"), "error": {"type": "string"}})
    run = {
        "containers": {"type": "integer", "minimum": 0, "description": "Containers following the policy."},
        "last_run": {**NULLABLE_TIMESTAMP, "description": "When its last scheduled snapshot was started."},
        "last_ok": {**NULLABLE_TIMESTAMP, "description": "When its last scheduled snapshot succeeded."},
        "next": {**NULLABLE_TIMESTAMP, "description": "When its next snapshot is planned."},
        "taken": {"type": "integer", "minimum": 0, "description": "Snapshots taken since the daemon started."},
        "failed": {"type": "integer", "minimum": 0, "description": "Failed attempts since the daemon started."},
        "failing": {"type": "array", "items": _ref("PolicyFailure"),
                    "description": "Containers whose last attempt failed (retried with backoff)."},
    }
    SCHEMAS["PolicyRunStatus"] = _object(run)
    SCHEMAS["PolicyStatus"] = _object({"name": {"type": "string"}, "source": {"enum": ["file", "api"]}, **run},
                                      description="A policy's runs (`snapd status`).")
    SCHEMAS["PolicyEntry"] = _object({
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
        "source": {"enum": ["file", "api"], "description": "file: read-only here (change the config file and "
                                                           "reload)."},
        "policy": _ref("Policy"),
        "updated_at": {**NULLABLE_TIMESTAMP, "description": "When it was last set through the API."},
        "status": _ref("PolicyRunStatus"),
    })
    SCHEMAS["PolicyList"] = _object({"policies": {"type": "array", "items": _ref("PolicyEntry")}})
    SCHEMAS["PolicyMove"] = _object({
        "container_id": _ref("ContainerId"),
        "from": {"type": ["string", "null"]}, "to": {"type": ["string", "null"]},
    }, description="A container whose policy the change switches.")
    SCHEMAS["PlanSnapshot"] = _object({
        "name": _ref("SnapshotName"),
        "created_at": NULLABLE_TIMESTAMP,
        "policy": {"type": ["string", "null"], "description": "The policy that took it (null: by request)."},
        "hold": {"type": ["string", "null"], "description": "Why it is held, if it is."},
        "keep": {"type": "array", "items": {"type": "string"},
                 "description": "Every rule that keeps it now: `keep_last`, `hourly 2024-05-01T13`, "
                                "`hold: ...`, `manual`, ..."},
        "delete_at": {**NULLABLE_TIMESTAMP, "description": "When it is deleted within the horizon (null: kept "
                                                           "beyond it)."},
        "delete_reason": {"enum": [*REASONS, None]},
    })
    SCHEMAS["ContainerPlan"] = _object({
        "container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"), "pool": {"type": "string"},
        "policy": {"type": "string"},
        "next_snapshots": {"type": "array", "items": TIMESTAMP, "description": "Planned within the horizon."},
        "snapshots": {"type": "array", "items": _ref("PlanSnapshot"), "description": "Newest first."},
    })
    SCHEMAS["PolicyPlan"] = _object({
        "now": TIMESTAMP, "hours": {"type": "number", "exclusiveMinimum": 0}, "until": TIMESTAMP,
        "containers": {"type": "array", "items": _ref("ContainerPlan")},
    })
    SCHEMAS["PolicyPutResult"] = _object({
        "dry_run": {"type": "boolean"},
        "created": {"type": "boolean", "description": "No policy of that name existed."},
        "policy": _ref("PolicyEntry"),
        "moves": {"type": "array", "items": _ref("PolicyMove")},
        "plan": {**_nullable("PolicyPlan"), "description": "Dry run: the plan of every container the policy "
                                                           "would govern or release; null otherwise."},
    })
    SCHEMAS["PolicyDeleted"] = _object({"policy": _ref("PolicyEntry")})
    SCHEMAS["PolicyListResponse"] = _envelope("Policies retrieved successfully", "PolicyList")
    SCHEMAS["PolicyResponse"] = _envelope("Policy retrieved successfully", "PolicyEntry")
    SCHEMAS["PolicyPutResponse"] = _envelope(["Policy created successfully", "Policy updated successfully",
                                              "Policy dry run: nothing was changed"], "PolicyPutResult")
    SCHEMAS["PolicyDeletedResponse"] = _envelope("Policy deleted successfully", "PolicyDeleted")
    SCHEMAS["PolicyPlanResponse"] = _envelope("Policy plan retrieved successfully", "PolicyPlan")


NAME_PARAM = {"name": "policy", "in": "path", "required": True, "description": "Policy name",
              "schema": {"type": "string", "pattern": NAME_PATTERN}, "example": "hourly"}


def _hours(description: str) -> dict[str, Any]:
    return {"name": "hours", "in": "query", "required": False, "description": description,
            "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_HOURS}}


def policy_paths() -> dict[str, Any]:
    """The policy routes' path items (their schemas go into SCHEMAS)."""
    _schemas()

    def op(operation_id: str, summary: str, ok: str, errors: list[int], body: str | None = None,
           params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out = _op(operation_id, "policies", summary, ok, ADMIN_ERRORS + errors, body, params=())
        out["parameters"] = params or []
        if body:
            out["requestBody"]["required"] = True
        return out

    put = op("putPolicy", "Set a policy (admin); with dry_run=true, the plan it would cause, nothing changed",
             "PolicyPutResponse", [400, 408, 409, 413], "PolicyBody",
             [NAME_PARAM,
              {"name": "dry_run", "in": "query", "required": False, "schema": {"enum": ["true", "false"]},
               "description": "true: change nothing; return the moves and the plan"},
              _hours(f"Dry run: the plan's horizon in hours (default {DEFAULT_HOURS:g})")])
    return {
        ROUTE: {"get": op("listPolicies", "Every policy with its last run and next snapshot (admin)",
                          "PolicyListResponse", [])},
        f"{ROUTE}/plan": {"get": op(
            "getPolicyPlan", "Per container under a policy: next snapshots, and for every snapshot what keeps "
            "it or when and why it is deleted (admin)", "PolicyPlanResponse", [400, 404],
            params=[_hours(f"The horizon in hours (default {DEFAULT_HOURS:g})"),
                    {"name": "container", "in": "query", "required": False,
                     "description": "Only this container (404 when it follows no policy)",
                     "schema": {"type": "string", "pattern": CONTAINER_ID_PATTERN}}])},
        f"{ROUTE}/{{policy}}": {
            "get": op("getPolicy", "One policy (admin)", "PolicyResponse", [400, 404], params=[NAME_PARAM]),
            "put": put,
            "delete": op("deletePolicy", "Forget a policy set through the API; its snapshots stay (admin)",
                         "PolicyDeletedResponse", [400, 404, 409], params=[NAME_PARAM]),
        },
    }
