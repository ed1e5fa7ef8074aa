"""The OpenAPI entries of replication jobs (snapd/http/replication.py)."""

from __future__ import annotations

from typing import Any

from snapd.http.openapi import ADMIN_ERRORS, NULLABLE_TIMESTAMP, SCHEMAS, TIMESTAMP, _object, _op, _ref
from snapd.http.replication import ROUTE

TAG = {"name": "replication", "description": "Replication jobs (admin only): a container's snapshots sent to "
                                             "another container-snapd configured as a `[targets.NAME]`, "
                                             "incrementally from the newest snapshot both hold."}
STATES = ["queued", "running", "done", "failed"]


def _schemas() -> None:
    count = {"type": "integer", "minimum": 0}
    SCHEMAS["ReplicationBody"] = {
        "type": "object", "additionalProperties": False, "required": ["container", "target"],
        "properties": {
            "container": {"type": "string", "pattern": "^[0-9A-Fa-f]{24}$"},
            "target": {"type": "string", "minLength": 1, "description": "A `[targets.NAME]` of the config."},
            "full": {"type": "boolean", "description": "Send the first snapshot in full even when the target "
                                                       "has diverged (default false)."},
        },
    }
    SCHEMAS["ReplicationJob"] = _object({
        "id": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
        "container_id": _ref("ContainerId"),
        "target": {"type": "string"},
        "full": {"type": "boolean"},
        "policy": {"type": ["string", "null"],
                   "description": "The policy whose snapshot started the job (null: started by request)."},
        "attempt": {"type": ["integer", "null"], "minimum": 1,
                    "description": "A policy-driven job: its number among the attempts since the last success."},
        "next_retry_at": {**NULLABLE_TIMESTAMP,
                          "description": "A failed policy-driven job: when the next attempt starts (null: none "
                                         "pending, or superseded by a newer snapshot's job)."},
        "state": {"enum": STATES},
        "snapshots_sent": count,
        "snapshots_total": {**count, "description": "What the plan sends (0 until planned)."},
        "current": {"type": ["string", "null"], "description": "The snapshot being sent."},
        "bytes_sent": count,
        "bytes_expected": {"type": ["integer", "null"], "minimum": 0,
                           "description": "An estimate: what the snapshots to send hold exclusively."},
        "rate": {"type": ["number", "null"], "minimum": 0, "description": "Bytes per second so far."},
        "eta": {"type": ["number", "null"], "minimum": 0, "description": "Seconds left, estimated."},
        "created_at": TIMESTAMP,
        "started_at": NULLABLE_TIMESTAMP,
        "finished_at": NULLABLE_TIMESTAMP,
        "last_error": {"type": ["string", "null"]},
        "diverged": {"type": "array", "items": {"type": "string"},
                     "description": "The target's snapshots that broke the chain (a failed job)."},
        "stream": {"enum": ["btrfs", "zfs", "portable", None],
                   "description": "What the job sends: the filesystems' own send stream (both pools of one "
                                  "kind, the target able to start from the base natively) or the portable "
                                  "one; null before its first send."},
    })
    SCHEMAS["ReplicationJobResult"] = _object({"job": _ref("ReplicationJob")})
    SCHEMAS["ReplicationJobList"] = _object({"jobs": {"type": "array", "items": _ref("ReplicationJob")}})
    SCHEMAS["ReplicationStartedResponse"] = _object({
        "statusCode": {"const": 202},
        "message": {"enum": ["Replication started", "Replication already running for this container and target"]},
        "data": _ref("ReplicationJobResult"),
    })
    SCHEMAS["ReplicationResponse"] = _object({
        "statusCode": {"const": 200}, "message": {"const": "Replication retrieved successfully"},
        "data": _ref("ReplicationJobResult")})
    SCHEMAS["ReplicationListResponse"] = _object({
        "statusCode": {"const": 200}, "message": {"const": "Replications retrieved successfully"},
        "data": _ref("ReplicationJobList")})


def replication_paths() -> dict[str, Any]:
    """The replication routes' path items (their schemas go into SCHEMAS)."""
    _schemas()
    start = _op("startReplication", "replication", "Start a replication job for a container and a target, or "
                "join the one running (admin)", "ReplicationStartedResponse",
                ADMIN_ERRORS + [400, 404, 408, 413], "ReplicationBody", params=())
    start["requestBody"]["required"] = True
    start["responses"]["202"] = start["responses"].pop("200")
    one = _op("getReplication", "replication", "One replication job: state, progress, last error (admin)",
              "ReplicationResponse", ADMIN_ERRORS + [400, 404], params=())
    one["parameters"] = [{"name": "job", "in": "path", "required": True, "description": "Job id",
                          "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"}}]
    return {
        ROUTE: {"post": start,
                "get": _op("listReplications", "replication", "Replication jobs since the daemon started, newest "
                           "first (admin)", "ReplicationListResponse", ADMIN_ERRORS, params=())},
        f"{ROUTE}/{{job}}": {"get": one},
    }
