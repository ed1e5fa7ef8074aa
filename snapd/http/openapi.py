"""The OpenAPI 3.1 document describing every route, body, response and error.

Every operation has an operationId (lowerCamel verbNoun), a tag and its
security; every object a client sees is a named component schema, so a
generated client gets `Snapshot`, `ExpiryPlanEntry`, ... rather than names
made up from paths.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from functools import lru_cache
from typing import Any

from snapd import __version__
from snapd.http.validation import MAX_ALIAS, MAX_EXPIRY_DAYS, MAX_HOLD_REASON

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
CONTAINER_ID_PATTERN = "^[0-9a-fA-F]{24}$"
TOKEN_ID_PATTERN = "^[0-9a-f]{12}$"
"""snapd.core.tokens: the public part of `csd_<id>_<secret>`, 6 random bytes in lower-case hex."""

TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
    "description": "UTC, milliseconds, `Z`: `2025-01-15T10:30:00.000Z`.",
}
NULLABLE_TIMESTAMP = {**TIMESTAMP, "type": ["string", "null"],
                      "description": "UTC, milliseconds, `Z`: `2025-01-15T10:30:00.000Z`; null when unset."}

REFUSED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
"""Unicode categories free text (aliases, token labels) may not contain: control, format, separators."""


def _refused_class() -> str:
    """A regex character class of every code point in REFUSED_CATEGORIES (this Python's Unicode).

    BMP ranges as `\\uXXXX` escapes (ECMA-262, Python and Rust engines all read
    them); the few astral ones as literal characters.
    """
    def one(cp: int) -> str:
        return f"\\u{cp:04X}" if cp <= 0xFFFF else chr(cp)

    ranges: list[str] = []
    start: int | None = None
    for cp in range(sys.maxunicode + 2):
        refused = cp <= sys.maxunicode and unicodedata.category(chr(cp)) in REFUSED_CATEGORIES
        if refused and start is None:
            start = cp
        elif not refused and start is not None:
            ranges.append(one(start) if start == cp - 1 else f"{one(start)}-{one(cp - 1)}")
            start = None
    return "".join(ranges)


TEXT_PATTERN = "<text pattern>"
"""Where a schema's pattern is the text rule; filled in when the document is first built (scanning
every code point takes a third of a second: no daemon start should pay it)."""
LONG_TEXT_PATTERN = "<long text pattern>"
"""The text rule's pattern for up to MAX_HOLD_REASON characters (hold reasons)."""
TEXT_RULE = (f"1 to {MAX_ALIAS} characters, none of them a Unicode control (Cc), format (Cf), "
             "line or paragraph separator (Zl, Zp) character or a lone surrogate; "
             "anything else is a 400 naming the character")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(name: str) -> dict[str, Any]:
    return {"anyOf": [_ref(name), {"type": "null"}]}


def _object(properties: dict[str, Any], required: list[str] | None = None,
            description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": list(properties) if required is None else required,
        "properties": properties,
    }
    if description:
        schema["description"] = description
    return schema


def _envelope(message: str | list[str], data: str) -> dict[str, Any]:
    """The success envelope around the named schema `data`."""
    return _object({
        "statusCode": {"const": 200},
        "message": {"const": message} if isinstance(message, str) else {"enum": message},
        "data": _ref(data),
    })


TEXT_IN = {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ALIAS, "pattern": TEXT_PATTERN,
           "description": f"{TEXT_RULE}. null: none."}
"""Free text a client may send (alias, token label)."""

SCHEMAS: dict[str, Any] = {
    "ContainerId": {"type": "string", "pattern": "^[0-9a-f]{24}$",
                    "description": "24 hexadecimal characters, reported lower-case."},
    "SnapshotName": {"type": "string", "pattern": NAME_PATTERN,
                     "description": "Given by the daemon: `snap-YYYYMMDD-HHMMSS` (UTC), `-2`, `-3`, ... "
                                    "within one second; never reused for another snapshot of the container."},
    "ProjectId": {"type": ["string", "null"], "description": "The container's project label; null when unlabelled."},
    "Snapshot": _object({
        "name": _ref("SnapshotName"),
        "alias": {
            "type": ["string", "null"], "minLength": 1, "maxLength": MAX_ALIAS,
            "description": "As sent (see CreateBody); one stored by an older version, or written into a "
                           "ZFS property by hand, may hold characters new aliases may not.",
        },
        "created_at": TIMESTAMP,
        "last_used_at": {**NULLABLE_TIMESTAMP, "description": "When the container was last restored from it."},
        "expires_at": {**NULLABLE_TIMESTAMP, "description": "null: never expires."},
        "stateful": {"const": False, "description": "Always false: no process state is captured."},
        "size": {
            "type": ["integer", "null"],
            "minimum": 0,
            "description": "Bytes the snapshot holds exclusively (what deleting it would free); null while not yet known.",
        },
    }),
    "ErrorDetail": {
        "type": "object",
        "additionalProperties": False,
        "required": ["field", "reason"],
        "properties": {
            "field": {"type": "string", "description": "The input at fault (`request_id`: this request's id)."},
            "reason": {"type": "string"},
            "value": {"type": "string", "description": "The offending value (first 80 characters), or the request id."},
        },
    },
    "Error": {
        "type": "object",
        "additionalProperties": False,
        "required": ["statusCode", "error", "message"],
        "properties": {
            "statusCode": {"type": "integer", "minimum": 400, "maximum": 599},
            "error": {"type": "string", "description": "The status's reason phrase (`Bad Request`, ...)."},
            "message": {"type": "string"},
            "details": {"type": "array", "items": _ref("ErrorDetail")},
        },
    },
    "CreateBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "alias": TEXT_IN,
            "expiry": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "maximum": MAX_EXPIRY_DAYS,
                "description": "Days until the snapshot expires (fractions allowed); null: never; absent: "
                               "the pool's `manual_expiry` (off unless configured: never).",
            },
        },
    },
    "AliasBody": {
        "type": "object",
        "additionalProperties": False,
        "required": ["alias"],
        "properties": {"alias": {**TEXT_IN, "description": f"{TEXT_RULE}. null removes the alias."}},
    },
    "EmptyBody": {"type": "object", "additionalProperties": False, "maxProperties": 0,
                  "description": "Nothing, or `{}`."},
    "SnapshotList": _object({
        "container_id": _ref("ContainerId"),
        "project_id": _ref("ProjectId"),
        "next": {
            "type": ["string", "null"],
            "pattern": r"^\d{1,16}:[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
            "description": "Only with `?limit=`: the cursor of the next page (pass it as `after`); "
                           "null on the last page.",
        },
        "snapshots": {"type": "array", "items": _ref("Snapshot"), "description": "Newest first."},
    }, required=["container_id", "project_id", "snapshots"]),
    "SnapshotResult": _object({
        "container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"), "snapshot": _ref("Snapshot"),
    }),
    "RestoreResult": _object({
        "success": {"const": True},
        "message": {"const": "Container restored from snapshot successfully"},
        "snapshot": _ref("Snapshot"),
    }),
    "DeleteResult": _object({
        "container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"),
        "snapshot_name": _ref("SnapshotName"),
    }),
}
SCHEMAS["HoldBody"] = _object({"reason": {
    "type": "string", "minLength": 1, "maxLength": MAX_HOLD_REASON, "pattern": LONG_TEXT_PATTERN,
    "description": f"Why the snapshot is held: {TEXT_RULE.replace(str(MAX_ALIAS), str(MAX_HOLD_REASON), 1)}."}})
SCHEMAS["SnapshotHold"] = _object({
    "reason": {"type": "string"},
    "since": {**TIMESTAMP, "description": "When it was first held (a new reason keeps this time)."},
})
SCHEMAS["SnapshotDetail"] = _object({
    **SCHEMAS["Snapshot"]["properties"],
    "policy": {"type": ["string", "null"],
               "description": "The policy that took it, and whose rules may delete it; null: taken by request "
                              "(governed by `expires_at` alone)."},
    "hold": {**_nullable("SnapshotHold"),
             "description": "null: not held. A held snapshot is never deleted by expiry, retention or "
                            "space-aware cleanup, and a DELETE of it is a 409, until it is released."},
    "keep": {"type": ["array", "null"], "items": {"type": "string"},
             "description": "Every rule of its policy's plan that keeps it now (`keep_last`, `hourly "
                            "2024-05-01T13`, `hold: ...`, `manual`); null when no plan covers it."},
}, description="A snapshot with what only the detail routes show: the reference's seven fields, then "
               "policy, hold and keep.")
SCHEMAS["SnapshotDetailResult"] = _object({
    "container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"), "snapshot": _ref("SnapshotDetail"),
})
SCHEMAS["SnapshotDetailList"] = _object({
    "container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"),
    "snapshots": {"type": "array", "items": _ref("SnapshotDetail"), "description": "Newest first."},
})
SCHEMAS["SnapshotListResponse"] = _envelope("Snapshots retrieved successfully", "SnapshotList")
SCHEMAS["SnapshotResponse"] = _envelope("Snapshot retrieved successfully", "SnapshotResult")
SCHEMAS["SnapshotCreatedResponse"] = _envelope("Snapshot created successfully", "SnapshotResult")
SCHEMAS["SnapshotAliasResponse"] = _envelope("Snapshot alias updated successfully", "SnapshotResult")
SCHEMAS["RestoreResponse"] = _envelope("Container restored from snapshot successfully", "RestoreResult")
SCHEMAS["DeleteResponse"] = _envelope("Snapshot deleted successfully", "DeleteResult")
SCHEMAS["SnapshotHeldResponse"] = _envelope("Snapshot held successfully", "SnapshotDetailResult")
SCHEMAS["SnapshotReleasedResponse"] = _envelope("Snapshot released successfully", "SnapshotDetailResult")
SCHEMAS["SnapshotDetailResponse"] = _envelope("Snapshot detail retrieved successfully", "SnapshotDetailResult")
SCHEMAS["SnapshotDetailListResponse"] = _envelope("Snapshot details retrieved successfully",
                                                  "SnapshotDetailList")

SCHEMAS["TokenScope"] = _object({
    "admin": {"type": "boolean"},
    "project": _ref("ProjectId"),
    "containers": {"type": "array", "items": _ref("ContainerId"),
                   "description": "Empty: every container of the project."},
    "read_only": {"type": "boolean"},
    "metrics": {"type": "boolean"},
    "files": {"type": "boolean", "description": "May read files in snapshots (tree, file, diff)."},
    "replicate": {"type": "boolean", "description": "A replication sender's token: may import into any "
                                                    "container and list and get their snapshots."},
})
SCHEMAS["Token"] = _object({
    "id": {"type": "string", "pattern": TOKEN_ID_PATTERN},
    "label": {"type": ["string", "null"]},
    "scope": _ref("TokenScope"),
    "created_at": TIMESTAMP,
    "last_used_at": NULLABLE_TIMESTAMP,
    "expires_at": NULLABLE_TIMESTAMP,
    "revoked_at": NULLABLE_TIMESTAMP,
})
SCHEMAS["TokenBody"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "An admin token (`admin: true`, with no project, containers or read_only), a project "
                   "token (`project`, optionally `containers` and `read_only`), or a metrics-only token "
                   "(`metrics: true`), or a replication token (`replicate: true` alone). Flags are JSON booleans; "
                   "anything else is a 400.",
    "properties": {
        "admin": {"type": "boolean"},
        "project": {"type": ["string", "null"], "pattern": NAME_PATTERN,
                    "description": "Required unless `admin`, `metrics` or `replicate` is true."},
        "containers": {"type": "array", "minItems": 1,
                       "items": {"type": "string", "pattern": CONTAINER_ID_PATTERN},
                       "description": "Absent: every container of the project; otherwise a non-empty list of "
                                      "container ids, and a `project` is required. Anything else is a 400."},
        "read_only": {"type": "boolean"},
        "metrics": {"type": "boolean", "description": "May read /metrics."},
        "files": {"type": "boolean", "description": "May read files in its containers' snapshots (tree, file, "
                                                    "diff), also when read_only; needs a project."},
        "replicate": {"type": "boolean", "description": "May import streams into any container and list and "
                                                       "get their snapshots, nothing else (a replication "
                                                       "target's token for its senders); no other scope."},
        "label": TEXT_IN,
        "expires": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_EXPIRY_DAYS,
                    "description": "Days until the token expires (fractions allowed); absent or null: never."},
    },
    # which combinations make a token (if/then/else, which client generators leave alone)
    "if": {"required": ["admin"], "properties": {"admin": {"const": True}}},
    "then": {"properties": {"project": {"type": "null"}, "read_only": {"const": False}, "files": {"const": False},
                            "replicate": {"const": False}},
             "not": {"required": ["containers"]}},
    "else": {"anyOf": [
        {"required": ["project"], "properties": {"project": {"type": "string"}, "replicate": {"const": False}}},
        {"required": ["metrics"], "properties": {"metrics": {"const": True}, "files": {"const": False},
                                                 "replicate": {"const": False}},
         "not": {"required": ["containers"]}},
        {"required": ["replicate"], "properties": {
            "replicate": {"const": True}, "project": {"type": "null"}, "metrics": {"const": False},
            "files": {"const": False}, "read_only": {"const": False}},
         "not": {"required": ["containers"]}},
    ]},
}
SCHEMAS["ProjectBody"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["project"],
    "properties": {"project": {"type": ["string", "null"], "pattern": NAME_PATTERN,
                               "description": "The project label; null removes it."}},
}
SCHEMAS["NewToken"] = _object({
    "token": _ref("Token"),
    "secret": {"type": "string", "pattern": "^csd_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$",
               "description": "The bearer token; shown only here."},
})
SCHEMAS["TokenList"] = _object({"tokens": {"type": "array", "items": _ref("Token")}})
SCHEMAS["RevokedToken"] = _object({"token": _ref("Token")})
SCHEMAS["TokenCreatedResponse"] = _envelope("Token created successfully", "NewToken")
SCHEMAS["TokenListResponse"] = _envelope("Tokens retrieved successfully", "TokenList")
SCHEMAS["TokenRevokedResponse"] = _envelope("Token revoked successfully", "RevokedToken")
SCHEMAS["ContainerInfo"] = _object({
    "container_id": _ref("ContainerId"),
    "project_id": _ref("ProjectId"),
    "pool": {"type": "string"},
    "backend": {"enum": ["overlay", "btrfs", "zfs"]},
    "layout": {"enum": ["overlay", "whole"],
               "description": "What a snapshot captures: upper/ only (overlay) or the whole tree."},
    "layout_label": {"enum": ["overlay", "whole", None],
                     "description": "The container's layout label (overlay pools); null when unlabelled."},
    "snapshot_count": {"type": "integer", "minimum": 0},
})
SCHEMAS["ContainerInfoResponse"] = _envelope("Container retrieved successfully", "ContainerInfo")
SCHEMAS["ContainerProjectResponse"] = _envelope("Container project updated successfully", "ContainerInfo")
SCHEMAS["ContainerLayoutResponse"] = _envelope("Container layout updated successfully", "ContainerInfo")
SCHEMAS["LayoutBody"] = _object({"layout": {"enum": ["overlay", "whole", None],
                                            "description": "overlay: capture upper/; whole: the whole "
                                                           "directory; null removes the label."}})
SCHEMAS["PoolLimits"] = _object({
    "reserve": {"type": "string"}, "reserve_inodes": {"type": "string"},
    "max_snapshots_per_container": {"type": "integer", "minimum": 0},
    "max_snapshots_per_project": {"type": "integer", "minimum": 0},
    "manual_expiry": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_EXPIRY_DAYS,
                      "description": "Days: the expiry of a snapshot created without `expiry`; null: never."},
}, description="What a create must leave free, snapshot counts (0: no limit), and the default expiry "
               "of snapshots made by request.")
SCHEMAS["PoolStatus"] = _object({
    "pool": {"type": "string"}, "spec": {"type": "string"}, "kind": {"enum": ["overlay", "btrfs", "zfs"]},
    "root": {"type": "string"}, "free_bytes": {"type": ["integer", "null"]},
    "free_inodes": {"type": ["integer", "null"],
                    "description": "null where inodes are dynamic (btrfs, ZFS) or not known."},
    "snapshots": {"type": "integer", "minimum": 0}, "bytes": {"type": "integer", "minimum": 0},
    "limits": _ref("PoolLimits"),
})
SCHEMAS["Problem"] = _object({
    "source": {"enum": ["pool", "journal", "reconcile"]},
    "pool": {"type": "string", "description": "The pool (empty for a journal entry)."},
    "problem": {"type": "string"},
}, description="Something set aside instead of stopping the daemon: a leftover a pool could not "
               "remove, a value on disk it could not read, a journal entry left pending, a pool "
               "not reconciled. Retried at the next start (journal entries also by reconcile).")
SCHEMAS["ReaperStatus"] = _object({
    "deleted": {"type": "integer", "minimum": 0},
    "failing": {"type": "integer", "minimum": 0},
    "next_expiry": NULLABLE_TIMESTAMP,
})
SCHEMAS["SchedulerStatus"] = _object({
    "snapshots": {"type": "integer", "minimum": 0, "description": "Scheduled snapshots started since the start."},
    "lag_p50_s": {"type": ["number", "null"], "minimum": 0,
                  "description": "Median seconds from planned instant to start (recent snapshots)."},
    "lag_p99_s": {"type": ["number", "null"], "minimum": 0},
    "lag_max_s": {"type": ["number", "null"], "minimum": 0},
})
SCHEMAS["LogSettings"] = _object({
    "level": {"enum": ["debug", "info", "warning", "error"]},
    "format": {"enum": ["kv", "json"]},
})
SCHEMAS["LogRecord"] = _object({
    "time": TIMESTAMP,
    "logger": {"type": "string"},
    "level": {"type": "string"},
    "message": {"type": "string", "maxLength": 500},
})
SCHEMAS["StoreWriterStatus"] = _object({
    "commits": {"type": "integer", "minimum": 0, "description": "Store transactions committed (one fsync each)."},
    "jobs": {"type": "integer", "minimum": 0, "description": "Changes committed (intents, outcomes, ...)."},
    "failed_commits": {"type": "integer", "minimum": 0},
    "largest_batch": {"type": "integer", "minimum": 0, "description": "Most changes one commit held."},
    "queued": {"type": "integer", "minimum": 0, "description": "Changes waiting for the writer now."},
}, description="The store's writer since start: group commit shares one fsync among the changes queued.")
SCHEMAS["FreezeCounts"] = _object({
    "frozen": {"type": "integer", "minimum": 0},
    "abandoned": {"type": "integer", "minimum": 0,
                  "description": "Not frozen within freeze_timeout (or not writable): thawed, snapshot taken."},
    "not_running": {"type": "integer", "minimum": 0, "description": "No cgroup: nothing to freeze."},
}, description="Freezes since start, by outcome (pools or calls with freeze on).")
SCHEMAS["LaneThreads"] = _object({
    "threads": {"type": "integer", "minimum": 1},
    "waiting": {"type": "integer", "minimum": 0, "description": "Calls waiting for one of the lane's threads."},
})
SCHEMAS["ThreadLanes"] = _object({"long": _ref("LaneThreads"), "quick": _ref("LaneThreads")},
                                 description="Filesystem work (long) and lookups (quick) run in separate "
                                             "thread pools.")
SCHEMAS["ProjectOperation"] = _object({
    "container": _ref("ContainerId"),
    "kind": {"enum": ["create", "restore", "restore-paths", "delete", "import", "export"]},
    "state": {"enum": ["running", "queued"]},
})
SCHEMAS["ProjectLane"] = _object({
    "project": {"type": "string"},
    "running": {"type": "integer", "minimum": 0},
    "queued": {"type": "integer", "minimum": 0},
    "operations": {"type": "array", "items": _ref("ProjectOperation"),
                   "description": "Running ones in start order, then queued ones in the order they will run."},
})
SCHEMAS["Lanes"] = _object({
    "max_concurrent_per_project": {"type": "integer", "minimum": 0, "description": "0: no limit."},
    "projects": {"type": "array", "items": _ref("ProjectLane"),
                 "description": "Projects with long operations running or queued now."},
    "threads": _ref("ThreadLanes"),
}, description="Long operations per project (at most max_concurrent_per_project at once, more queue in "
               "arrival order) and the thread lanes.")
SCHEMAS["Status"] = _object({
    "version": {"type": "string"},
    "pid": {"type": "integer"},
    "uptime_s": {"type": "number", "minimum": 0},
    "pools": {"type": "array", "items": _ref("PoolStatus")},
    "snapshots_total": {"type": "integer", "minimum": 0},
    "inflight": {"type": "integer", "minimum": 0},
    "store": _ref("StoreWriterStatus"),
    "listeners": {"type": "array", "items": {"type": "string"}},
    "reaper": _ref("ReaperStatus"),
    "policies": {"type": "array", "items": _ref("PolicyStatus"),
                 "description": "Every policy with its last run and next snapshot."},
    "scheduler": _ref("SchedulerStatus"),
    "log": _ref("LogSettings"),
    "watchdog_interval_s": {"type": ["number", "null"]},
    "last_errors": {"type": "array", "items": _ref("LogRecord"), "description": "The last warnings and errors."},
    "problems": {"type": "array", "items": _ref("Problem")},
    "freezes": _ref("FreezeCounts"),
    "lanes": _ref("Lanes"),
})
SCHEMAS["StatusResponse"] = _envelope("Status retrieved successfully", "Status")

ERROR_TEXT = {
    400: "Invalid input (see `details`)",
    401: "Authentication required (TCP, or a Unix-socket peer that is not an admin, without a valid token)",
    403: "The caller may not act on this container (or route)",
    404: "Container or snapshot not found",
    405: "Method not allowed on this route",
    408: "The request body did not arrive in time",
    409: "The container is in use or cannot be changed now",
    413: "Request body over 64 KiB",
    416: "The Range asked for is not in the file",
    500: "An unexpected error occurred",
    507: "The pool has no room (free space or inode reserve), or a snapshot count limit is reached",
}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "description": "`Bearer`",
                               "schema": {"const": "Bearer"}}},
    405: {"Allow": {"required": True, "description": "The route's methods, comma-separated",
                    "schema": {"type": "string"}}},
}

BEARER = "bearerAuth"
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "csd_<id>_<secret>",
    "description": "A token from `snapd token create` (`POST /api/v1/admin/tokens`): required on every request "
                   "over TCP. An admin token may do everything; a project token only acts on containers "
                   "labelled with its project (and, if it names containers, only those), and read-only ones only "
                   "list and get. Over the Unix socket, peers identified by SO_PEERCRED as uid 0, the daemon's "
                   "own uid or a member of the admin group are admins without any token; OpenAPI cannot "
                   "express peer-credential authentication, so it is only described here. Other local peers "
                   "present a bearer token as on TCP.",
}
TAGS = [
    {"name": "snapshots", "description": "The reference's snapshot routes: list, create, get, restore, alias, delete."},
    {"name": "holds", "description": "Beyond the reference: hold and release a snapshot, and its details "
                                     "(the policy that took it, its hold, the rules that keep it)."},
    {"name": "admin", "description": "Admin-only routes: tokens, container labels, reconcile, expiry plan, status. "
                                     "Every project token gets 403."},
    {"name": "meta", "description": "About the daemon itself: this document and Prometheus metrics."},
]


def _error_responses(codes: list[int]) -> dict[str, Any]:
    out = {}
    for code in sorted(codes):
        resp: dict[str, Any] = {"description": ERROR_TEXT[code],
                                "content": {"application/json": {"schema": _ref("Error")}}}
        if code in ERROR_HEADERS:
            resp["headers"] = ERROR_HEADERS[code]
        out[str(code)] = resp
    return out


def _op(operation_id: str, tag: str, summary: str, ok: str, errors: list[int], body: str | None = None,
        params: tuple[str, ...] = ("id",), links: dict[str, Any] | None = None) -> dict[str, Any]:
    success: dict[str, Any] = {"description": "Success", "content": {"application/json": {"schema": _ref(ok)}}}
    if links:
        success["links"] = links
    op: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": [{BEARER: []}],
        "parameters": [PARAMS[p] for p in params],
        "responses": {"200": success, **_error_responses(errors)},
    }
    if body:
        op["requestBody"] = {
            "required": body in ("AliasBody", "ProjectBody", "LayoutBody", "TokenBody", "HoldBody"),
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


PARAMS = {
    "id": {
        "name": "id", "in": "path", "required": True,
        "description": "Container id: 24 hexadecimal characters, either case",
        "schema": {"type": "string", "pattern": CONTAINER_ID_PATTERN},
        "example": "507f1f77bcf86cd799439011",
    },
    "name": {
        "name": "name", "in": "path", "required": True,
        "description": "Snapshot name",
        "schema": {"type": "string", "pattern": NAME_PATTERN},
        "example": "snap-20250115-103000",
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
        "schema": {"type": "string",
                   "pattern": r"^(\d{1,16}:)?[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
    },
    "token_id": {
        "name": "token_id", "in": "path", "required": True,
        "description": "Token id (the public part of a token: `csd_<id>_<secret>`)",
        "schema": {"type": "string", "pattern": TOKEN_ID_PATTERN},
    },
}
COMMON = [400, 401, 403, 404, 405, 500]
ADMIN_ERRORS = [401, 403, 405, 500]
ADMIN = "/api/v1/admin"

_SNAPSHOT_LINKS = {
    f"{verb}Snapshot": {
        "operationId": f"{verb}Snapshot",
        "parameters": {"id": "$request.path.id", "name": "$response.body#/data/snapshot/name"},
        "description": f"{verb.capitalize()} the snapshot just made.",
    }
    for verb in ("get", "restore", "delete")
} | {
    op: {"operationId": op, "parameters": {"id": "$request.path.id", "name": "$response.body#/data/snapshot/name"},
         "description": f"{what} the snapshot just made."}
    for op, what in (("getSnapshotTree", "Browse"), ("getSnapshotFile", "Download a file of"),
                     ("getSnapshotDiff", "Diff"), ("restoreSnapshotPaths", "Restore paths from"))
} | {"updateSnapshotAlias": {
    "operationId": "updateSnapshotAlias",
    "parameters": {"id": "$request.path.id", "name": "$response.body#/data/snapshot/name"},
    "description": "Set or clear the alias of the snapshot just made.",
}}


def _expiry_path() -> dict[str, Any]:
    """GET /api/v1/admin/expiry (snapd/http/admin_expiry.py): what the reaper deletes in the next N hours."""
    from snapd.http.admin_expiry import DEFAULT_HOURS, DEFAULT_LIMIT, MAX_HOURS, MAX_LIMIT

    SCHEMAS["ExpiryFailure"] = _object({
        "attempts": {"type": "integer", "minimum": 1},
        "error": {"type": "string"},
        "retry_at": NULLABLE_TIMESTAMP,
    }, description="The reaper's last failed attempt to delete a snapshot.")
    SCHEMAS["ExpiryPlanEntry"] = _object({
        "container_id": _ref("ContainerId"),
        "name": _ref("SnapshotName"),
        "alias": {"type": ["string", "null"]},
        "expires_at": TIMESTAMP,
        "pool": {"type": "string"},
        "overdue": {"type": "boolean", "description": "Expired already, not yet deleted."},
        "failing": {**_nullable("ExpiryFailure"), "description": "The last failed delete, if any."},
    })
    SCHEMAS["ExpiryPlan"] = _object({
        "now": TIMESTAMP,
        "until": TIMESTAMP,
        "hours": {"type": "number", "minimum": 0},
        "total": {"type": "integer", "minimum": 0, "description": "How many expire by `until` in all."},
        "truncated": {"type": "boolean", "description": "True when `total` is more than `limit`."},
        "snapshots": {"type": "array", "items": _ref("ExpiryPlanEntry"), "description": "Earliest first."},
    })
    SCHEMAS["ExpiryPlanResponse"] = _envelope("Expiry plan retrieved successfully", "ExpiryPlan")
    op = _op("getExpiryPlan", "admin", "What the reaper will delete in the next N hours, earliest first (admin)",
             "ExpiryPlanResponse", ADMIN_ERRORS + [400], params=())
    op["parameters"] = [
        {"name": "hours", "in": "query", "required": False,
         "description": f"The window from now, in hours (default {DEFAULT_HOURS:g}); overdue snapshots "
                        "are always included.",
         "schema": {"type": "number", "minimum": 0, "maximum": MAX_HOURS}},
        {"name": "limit", "in": "query", "required": False,
         "description": f"At most this many snapshots, earliest first (default {DEFAULT_LIMIT}).",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
    ]
    return {"get": op}


def _reconcile_path() -> dict[str, Any]:
    """POST /api/v1/admin/reconcile (snapd/http/admin_reconcile.py owns its schemas)."""
    from snapd.http.admin_reconcile import RECONCILE_SCHEMAS

    SCHEMAS.update(RECONCILE_SCHEMAS)
    return {"post": _op("reconcilePools", "admin",
                        "Reconcile pools and store: adopt, forget, update refs; dry_run shows the plan "
                        "and changes nothing (admin)", "ReconcileResponse",
                        ADMIN_ERRORS + [400, 408, 413], "ReconcileBody", params=())}


def _meta_op(operation_id: str, summary: str, description: str, content: dict[str, Any],
             errors: list[int]) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "tags": ["meta"],
        "summary": summary,
        "security": [{BEARER: []}],
        "responses": {"200": {"description": description, "content": content}, **_error_responses(errors)},
    }


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route."""
    refused = _refused_class()
    text = json.dumps(_document())
    for placeholder, longest in ((TEXT_PATTERN, MAX_ALIAS), (LONG_TEXT_PATTERN, MAX_HOLD_REASON)):
        text = text.replace(placeholder, json.dumps(f"^[^{refused}]{{1,{longest}}}$")[1:-1])
    return json.loads(text)


def _document() -> dict[str, Any]:
    from snapd.http import (  # they build on this module's helpers
        openapi_files, openapi_policies, openapi_replication, openapi_transfer)

    base = "/api/v1/containers/{id}/snapshots"
    both = ("id", "name")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "container-snapd",
            "version": __version__,
            "description": "Point-in-time snapshots of containers' filesystems. Served on a Unix socket "
                           "(peer credentials or a bearer token) and on TCP (a bearer token).",
        },
        "tags": [*TAGS, openapi_policies.TAG, openapi_files.TAG, openapi_transfer.TAG, openapi_replication.TAG],
        "security": [{BEARER: []}],
        "paths": {
            base: {
                "get": _op("listSnapshots", "snapshots",
                           "List a container's snapshots, newest first (optionally a page: limit, after)",
                           "SnapshotListResponse", COMMON, params=("id", "limit", "after")),
                "post": _op("createSnapshot", "snapshots", "Create a snapshot", "SnapshotCreatedResponse",
                            COMMON + [408, 409, 413, 507], "CreateBody", links=_SNAPSHOT_LINKS),
            },
            base + "/{name}": {
                "get": _op("getSnapshot", "snapshots", "Get one snapshot", "SnapshotResponse", COMMON,
                           params=both),
                "patch": _op("restoreSnapshot", "snapshots", "Restore the container from the snapshot",
                             "RestoreResponse", COMMON + [408, 409, 413], "EmptyBody", params=both),
                "delete": _op("deleteSnapshot", "snapshots", "Delete the snapshot", "DeleteResponse",
                              COMMON + [408, 409, 413], "EmptyBody", params=both),
            },
            base + "/{name}/alias": {
                "patch": _op("updateSnapshotAlias", "snapshots", "Set or clear the snapshot's alias",
                             "SnapshotAliasResponse", COMMON + [408, 409, 413], "AliasBody", params=both),
            },
            base + "/{name}/hold": {
                "put": _op("holdSnapshot", "holds", "Hold the snapshot: nothing deletes it until it is released",
                           "SnapshotHeldResponse", COMMON + [408, 409, 413], "HoldBody", params=both),
                "delete": _op("releaseSnapshot", "holds", "Release the snapshot's hold (not held: no change)",
                              "SnapshotReleasedResponse", COMMON + [408, 409, 413], "EmptyBody", params=both),
            },
            base + "/{name}/detail": {
                "get": _op("getSnapshotDetail", "holds", "One snapshot with its policy, hold and keep reasons",
                           "SnapshotDetailResponse", COMMON, params=both),
            },
            **openapi_files.file_paths(base),
            "/api/v1/containers/{id}/snapshot-details": {
                "get": _op("listSnapshotDetails", "holds",
                           "A container's snapshots with policy, hold and keep reasons, newest first",
                           "SnapshotDetailListResponse", COMMON),
            },
            f"{ADMIN}/tokens": {
                "get": _op("listTokens", "admin", "List tokens (admin)", "TokenListResponse", ADMIN_ERRORS,
                           params=()),
                "post": _op("createToken", "admin", "Create a token; its secret is shown only here (admin)",
                            "TokenCreatedResponse", ADMIN_ERRORS + [400, 408, 413], "TokenBody", params=(),
                            links={"revokeToken": {"operationId": "revokeToken",
                                                   "parameters": {"token_id": "$response.body#/data/token/id"},
                                                   "description": "Revoke the token just made."}}),
            },
            f"{ADMIN}/tokens/{{token_id}}": {
                "delete": _op("revokeToken", "admin", "Revoke a token (admin)", "TokenRevokedResponse",
                              ADMIN_ERRORS + [400, 404, 408, 413], params=("token_id",)),
            },
            f"{ADMIN}/containers/{{id}}": {
                "get": _op("getContainer", "admin", "A container's pool, backend, project, layout and snapshot "
                           "count (admin)", "ContainerInfoResponse", ADMIN_ERRORS + [400, 404, 409]),
            },
            f"{ADMIN}/containers/{{id}}/project": {
                "put": _op("setContainerProject", "admin", "Set or remove a container's project label (admin)",
                           "ContainerProjectResponse", ADMIN_ERRORS + [400, 404, 408, 409, 413, 507],
                           "ProjectBody"),
            },
            f"{ADMIN}/containers/{{id}}/layout": {
                "put": _op("setContainerLayout", "admin", "Set or remove a container's layout label: overlay "
                           "(capture upper/) or whole (overlay pools; admin)", "ContainerLayoutResponse",
                           ADMIN_ERRORS + [400, 404, 408, 409, 413, 507], "LayoutBody"),
            },
            f"{ADMIN}/reconcile": _reconcile_path(),
            f"{ADMIN}/expiry": _expiry_path(),
            **openapi_policies.policy_paths(),
            **openapi_transfer.transfer_paths(),
            **openapi_replication.replication_paths(),
            f"{ADMIN}/status": {
                "get": _op("getStatus", "admin",
                           "The daemon's status: version, uptime, pools, listeners, reaper, last errors (admin)",
                           "StatusResponse", ADMIN_ERRORS + [404], params=()),
            },
            "/metrics": {
                "get": _meta_op("getMetrics",
                                "Prometheus metrics, text format (admin, or a token with the metrics scope)",
                                "Prometheus text exposition format",
                                {"text/plain": {"schema": {"type": "string"}}}, [401, 403, 405, 500]),
            },
            "/api/v1/openapi.json": {
                "get": _meta_op("getOpenApiDocument", "This document (any authenticated caller)",
                                "The OpenAPI document",
                                {"application/json": {"schema": {"type": "object"}}}, [401, 405, 500]),
            },
        },
        "components": {"schemas": SCHEMAS, "securitySchemes": {BEARER: SECURITY_SCHEME}},
    }
