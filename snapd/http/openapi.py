"""The OpenAPI 3.1 document describing every route, body, response and error."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from snapd import __version__
from snapd.http.validation import MAX_ALIAS, MAX_EXPIRY_DAYS

TIMESTAMP = {
    "type": ["string", "null"],
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
}

SCHEMAS: dict[str, Any] = {
    "Snapshot": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "alias", "created_at", "last_used_at", "expires_at", "stateful", "size"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
            "alias": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ALIAS},
            "created_at": {**TIMESTAMP, "type": "string"},
            "last_used_at": TIMESTAMP,
            "expires_at": TIMESTAMP,
            "stateful": {"const": False},
            "size": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "Bytes the snapshot holds exclusively (what deleting it would free); null while not yet known.",
            },
        },
    },
    "ContainerId": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
    "ProjectId": {"type": ["string", "null"]},
    "Error": {
        "type": "object",
        "additionalProperties": False,
        "required": ["statusCode", "error", "message"],
        "properties": {
            "statusCode": {"type": "integer", "minimum": 400, "maximum": 599},
            "error": {"type": "string"},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "reason"],
                    "properties": {
                        "field": {"type": "string"},
                        "reason": {"type": "string"},
                        "value": {"type": "string"},
                    },
                },
            },
        },
    },
    "CreateBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "alias": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ALIAS},
            "expiry": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "maximum": MAX_EXPIRY_DAYS,
                "description": "Days until the snapshot expires (fractions allowed); absent or null: never.",
            },
        },
    },
    "AliasBody": {
        "type": "object",
        "additionalProperties": False,
        "required": ["alias"],
        "properties": {"alias": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ALIAS}},
    },
}


def _envelope(message: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["statusCode", "message", "data"],
        "properties": {
            "statusCode": {"const": 200},
            "message": {"const": message},
            "data": {"type": "object", "additionalProperties": False, "required": list(data), "properties": data},
        },
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _container(extra: dict[str, Any]) -> dict[str, Any]:
    return {"container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"), **extra}


SCHEMAS["ListResponse"] = _envelope(
    "Snapshots retrieved successfully",
    _container({"snapshots": {"type": "array", "items": _ref("Snapshot")}}),
)
SCHEMAS["ListResponse"]["properties"]["data"]["properties"]["next"] = {
    "type": ["string", "null"],
    "pattern": r"^\d{1,16}:[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
    "description": "Only with `?limit=`: the cursor of the next page (pass it as `after`); "
                   "null on the last page.",
}
SCHEMAS["GetResponse"] = _envelope(
    "Snapshot retrieved successfully", _container({"snapshot": _ref("Snapshot")})
)
SCHEMAS["CreateResponse"] = _envelope(
    "Snapshot created successfully", _container({"snapshot": _ref("Snapshot")})
)
SCHEMAS["AliasResponse"] = _envelope(
    "Snapshot alias updated successfully", _container({"snapshot": _ref("Snapshot")})
)
SCHEMAS["RestoreResponse"] = _envelope(
    "Container restored from snapshot successfully",
    {
        "success": {"const": True},
        "message": {"const": "Container restored from snapshot successfully"},
        "snapshot": _ref("Snapshot"),
    },
)
SCHEMAS["DeleteResponse"] = _envelope(
    "Snapshot deleted successfully", _container({"snapshot_name": {"type": "string"}})
)

SCHEMAS["Token"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "label", "scope", "created_at", "last_used_at", "expires_at", "revoked_at"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
        "label": {"type": ["string", "null"]},
        "scope": {
            "type": "object",
            "additionalProperties": False,
            "required": ["admin", "project", "containers", "read_only", "metrics"],
            "properties": {
                "admin": {"type": "boolean"},
                "project": _ref("ProjectId"),
                "containers": {"type": "array", "items": _ref("ContainerId")},
                "read_only": {"type": "boolean"},
                "metrics": {"type": "boolean"},
            },
        },
        "created_at": {**TIMESTAMP, "type": "string"},
        "last_used_at": TIMESTAMP,
        "expires_at": TIMESTAMP,
        "revoked_at": TIMESTAMP,
    },
}
SCHEMAS["TokenBody"] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "admin": {"type": "boolean"},
        "project": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
        "containers": {
            "type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[0-9A-Fa-f]{24}$"},
            "description": "Only these containers of the project; absent: all of them",
        },
        "read_only": {"type": "boolean"},
        "metrics": {"type": "boolean"},
        "label": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ALIAS},
        "expires": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_EXPIRY_DAYS},
    },
}
SCHEMAS["ProjectBody"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["project"],
    "properties": {"project": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}},
}
SCHEMAS["TokenCreated"] = _envelope(
    "Token created successfully",
    {"token": _ref("Token"), "secret": {"type": "string", "pattern": "^csd_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$"}},
)
SCHEMAS["TokenList"] = _envelope(
    "Tokens retrieved successfully", {"tokens": {"type": "array", "items": _ref("Token")}}
)
SCHEMAS["TokenRevoked"] = _envelope("Token revoked successfully", {"token": _ref("Token")})
_CONTAINER_INFO = _container({
    "pool": {"type": "string"},
    "backend": {"enum": ["overlay", "btrfs", "zfs"]},
    "snapshot_count": {"type": "integer", "minimum": 0},
})
SCHEMAS["StatusResponse"] = _envelope("Status retrieved successfully", {
    "version": {"type": "string"},
    "pid": {"type": "integer"},
    "uptime_s": {"type": "number", "minimum": 0},
    "pools": {"type": "array", "items": {
        "type": "object",
        "required": ["pool", "spec", "kind", "root", "free_bytes", "snapshots", "bytes"],
        "properties": {
            "pool": {"type": "string"}, "spec": {"type": "string"}, "kind": {"type": "string"},
            "root": {"type": "string"}, "free_bytes": {"type": ["integer", "null"]},
            "snapshots": {"type": "integer"}, "bytes": {"type": "integer"},
        },
    }},
    "snapshots_total": {"type": "integer", "minimum": 0},
    "inflight": {"type": "integer", "minimum": 0},
    "listeners": {"type": "array", "items": {"type": "string"}},
    "reaper": {"type": "object", "required": ["deleted", "failing", "next_expiry"],
               "properties": {"deleted": {"type": "integer"}, "failing": {"type": "integer"},
                              "next_expiry": TIMESTAMP}},
    "log": {"type": "object"},
    "watchdog_interval_s": {"type": ["number", "null"]},
    "last_errors": {"type": "array", "items": {"type": "object"}},
})
SCHEMAS["ContainerInfo"] = _envelope("Container retrieved successfully", _CONTAINER_INFO)
SCHEMAS["ContainerProject"] = _envelope("Container project updated successfully", _CONTAINER_INFO)

ERROR_TEXT = {
    400: "Invalid input (see `details`)",
    401: "Authentication required (TCP without a valid token)",
    403: "The caller may not act on this container",
    404: "Container or snapshot not found",
    405: "Method not allowed on this route",
    408: "The request body did not arrive in time",
    409: "The container is in use or cannot be changed now",
    413: "Request body over 64 KiB",
    500: "An unexpected error occurred",
    507: "The pool has no room",
}


def _op(summary: str, ok: str, errors: list[int], body: str | None = None,
        params: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "Success", "content": {"application/json": {"schema": _ref(ok)}}}
    }
    for code in errors:
        responses[str(code)] = {
            "description": ERROR_TEXT[code],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [PARAMS[p] for p in params],
        "responses": responses,
    }
    if body:
        op["requestBody"] = {
            "required": body in ("AliasBody", "ProjectBody"),
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


PARAMS = {
    "id": {
        "name": "id", "in": "path", "required": True,
        "description": "Container id: 24 hexadecimal characters",
        "schema": {"type": "string"},
    },
    "name": {
        "name": "name", "in": "path", "required": True,
        "description": "Snapshot name",
        "schema": {"type": "string"},
    },
    "limit": {
        "name": "limit", "in": "query", "required": False,
        "description": "Return at most this many snapshots (1-10000) and `data.next`, the cursor "
                       "of the next page. Absent: every snapshot, no `next`.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
    },
    "after": {
        "name": "after", "in": "query", "required": False,
        "description": "Start after this position in list order: a cursor from `data.next` "
                       "(stable while snapshots come and go) or the name of a snapshot that exists.",
        "schema": {"type": "string"},
    },
    "token_id": {
        "name": "token_id", "in": "path", "required": True,
        "description": "Token id (the public part of a token)",
        "schema": {"type": "string"},
    },
}
COMMON = [400, 401, 403, 404, 405, 500]
ADMIN_ERRORS = [401, 403, 405, 500]
ADMIN = "/api/v1/admin"


def _expiry_path() -> dict[str, Any]:
    """GET /api/v1/admin/expiry (snapd/admin_expiry.py): what the reaper deletes in the next N hours."""
    from snapd.http.admin_expiry import DEFAULT_HOURS, DEFAULT_LIMIT, MAX_HOURS, MAX_LIMIT

    SCHEMAS["ExpiryPlan"] = _envelope("Expiry plan retrieved successfully", {
        "now": {**TIMESTAMP, "type": "string"},
        "until": {**TIMESTAMP, "type": "string"},
        "hours": {"type": "number", "minimum": 0},
        "total": {"type": "integer", "minimum": 0, "description": "How many expire by `until` in all."},
        "truncated": {"type": "boolean", "description": "True when `total` is more than `limit`."},
        "snapshots": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["container_id", "name", "alias", "expires_at", "pool", "overdue", "failing"],
            "properties": {
                "container_id": _ref("ContainerId"),
                "name": {"type": "string"},
                "alias": {"type": ["string", "null"]},
                "expires_at": {**TIMESTAMP, "type": "string"},
                "pool": {"type": "string"},
                "overdue": {"type": "boolean", "description": "Expired already, not yet deleted."},
                "failing": {
                    "type": ["object", "null"],
                    "description": "The reaper's last failed attempt to delete it, if any.",
                    "required": ["attempts", "error", "retry_at"],
                    "properties": {"attempts": {"type": "integer"}, "error": {"type": "string"},
                                   "retry_at": TIMESTAMP},
                },
            },
        }},
    })
    params = [
        {"name": "hours", "in": "query", "required": False,
         "description": f"The window from now, in hours (default {DEFAULT_HOURS:g}); overdue snapshots "
                        "are always included.",
         "schema": {"type": "number", "minimum": 0, "maximum": MAX_HOURS}},
        {"name": "limit", "in": "query", "required": False,
         "description": f"At most this many snapshots, earliest first (default {DEFAULT_LIMIT}).",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
    ]
    op = _op("What the reaper will delete in the next N hours, earliest first (admin)", "ExpiryPlan",
             ADMIN_ERRORS + [400], params=())
    op["parameters"] = params
    return {"get": op}


def _reconcile_path() -> dict[str, Any]:
    """POST /api/v1/admin/reconcile (snapd/admin_reconcile.py owns its schemas)."""
    from snapd.http.admin_reconcile import RECONCILE_BODY, RECONCILE_SCHEMA

    SCHEMAS["ReconcileResponse"] = RECONCILE_SCHEMA
    SCHEMAS["ReconcileBody"] = RECONCILE_BODY
    return {"post": _op("Reconcile pools and store: adopt, forget, update refs; dry_run shows the plan "
                        "and changes nothing (admin)", "ReconcileResponse",
                        ADMIN_ERRORS + [400, 408, 413], "ReconcileBody", params=())}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    base = "/api/v1/containers/{id}/snapshots"
    both = ("id", "name")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "container-snapd",
            "version": __version__,
            "description": "Point-in-time snapshots of containers' filesystems.",
        },
        "paths": {
            base: {
                "get": _op("List a container's snapshots, newest first (optionally a page: limit, after)",
                           "ListResponse", COMMON, params=("id", "limit", "after")),
                "post": _op("Create a snapshot", "CreateResponse", COMMON + [408, 409, 413, 507], "CreateBody"),
            },
            base + "/{name}": {
                "get": _op("Get one snapshot", "GetResponse", COMMON, params=both),
                "patch": _op("Restore the container from the snapshot", "RestoreResponse",
                             COMMON + [408, 409, 413], params=both),
                "delete": _op("Delete the snapshot", "DeleteResponse", COMMON + [408, 409, 413], params=both),
            },
            base + "/{name}/alias": {
                "patch": _op("Set or clear the snapshot's alias", "AliasResponse",
                             COMMON + [408, 409, 413], "AliasBody", params=both),
            },
            f"{ADMIN}/tokens": {
                "get": _op("List tokens (admin)", "TokenList", ADMIN_ERRORS, params=()),
                "post": _op("Create a token; its secret is shown only here (admin)", "TokenCreated",
                            ADMIN_ERRORS + [400, 408, 413], "TokenBody", params=()),
            },
            f"{ADMIN}/tokens/{{token_id}}": {
                "delete": _op("Revoke a token (admin)", "TokenRevoked", ADMIN_ERRORS + [400, 404, 408, 413],
                              params=("token_id",)),
            },
            f"{ADMIN}/containers/{{id}}": {
                "get": _op("A container's pool, backend, project and snapshot count (admin)", "ContainerInfo",
                           ADMIN_ERRORS + [400, 404]),
            },
            f"{ADMIN}/containers/{{id}}/project": {
                "put": _op("Set or remove a container's project label (admin)", "ContainerProject",
                           ADMIN_ERRORS + [400, 404, 408, 413], "ProjectBody"),
            },
            f"{ADMIN}/reconcile": _reconcile_path(),
            f"{ADMIN}/expiry": _expiry_path(),
            f"{ADMIN}/status": {
                "get": _op("The daemon's status: version, uptime, pools, listeners, reaper, last errors (admin)",
                           "StatusResponse", ADMIN_ERRORS + [404], params=()),
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics, text format (admin, or a token with the metrics scope)",
                    "responses": {
                        "200": {"description": "Prometheus text exposition format",
                                "content": {"text/plain": {"schema": {"type": "string"}}}},
                        **{str(c): {"description": ERROR_TEXT[c],
                                    "content": {"application/json": {"schema": _ref("Error")}}}
                           for c in (401, 403, 405, 500)},
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "The OpenAPI document",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        **{str(c): {"description": ERROR_TEXT[c],
                                    "content": {"application/json": {"schema": _ref("Error")}}}
                           for c in (401, 403, 405, 500)},
                    },
                }
            },
        },
        "components": {"schemas": SCHEMAS},
    }
