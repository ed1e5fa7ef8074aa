"""The HTTP API: routes, authentication by transport, envelopes, errors.

The same application serves the Unix socket and TCP; only who may call
differs.  Handlers validate input, call the service, and shape the
reference's envelopes; nothing here touches a pool.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from .clock import iso
from .errors import (
    Conflict,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    OperationFailed,
    ServiceError,
)
from .openapi import openapi_document
from .service import Container, SnapshotService
from .store import SnapshotRow
from .validation import (
    MAX_BODY,
    check_snapshot_name,
    parse_alias_body,
    parse_container_id,
    parse_create_body,
    parse_empty_body,
)

log = logging.getLogger("snapd.api")

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    507: "Insufficient Storage",
}
SERVICE_KEY = web.AppKey("service", SnapshotService)
DAEMON_UID = os.getuid()


@dataclass(frozen=True)
class Messages:
    """The reference's per-endpoint messages."""

    forbidden: str
    invalid_id: str
    not_found: str


LIST_MSGS = Messages(
    "You do not have permission to access this container",
    "Invalid container ID format",
    "Container not found",
)
CREATE_MSGS = Messages(
    "You do not have permission to create snapshots for this container",
    "Invalid container ID format",
    "Container not found",
)
GET_MSGS = Messages(
    "You do not have permission to access this container",
    "Invalid snapshot name or container ID",
    "Container or snapshot not found",
)
RESTORE_MSGS = Messages(
    "You do not have permission to restore this container",
    "Invalid snapshot name or container ID",
    "Container or snapshot not found",
)
ALIAS_MSGS = Messages(
    "You do not have permission to update snapshots for this container",
    "Invalid snapshot name or container ID",
    "Container or snapshot not found",
)
DELETE_MSGS = Messages(
    "You do not have permission to delete snapshots for this container",
    "Invalid snapshot name or container ID",
    "Container or snapshot not found",
)
DOC_MSGS = Messages("You do not have permission to read the API document", "", "Not found")
PAYLOAD_MESSAGE = "Invalid request payload"
ALIAS_MESSAGE = "Invalid alias value"
AUTH_MESSAGE = "Authentication required"
INTERNAL_MESSAGE = "An unexpected error occurred"


class ApiError(Exception):
    """An error response: status, message, optional details."""

    def __init__(self, status: int, message: str, details: list[dict] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def error_response(status: int, message: str, details: list[dict] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"statusCode": status, "error": REASONS[status], "message": message}
    if details:
        body["details"] = details
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def ok(message: str, data: dict[str, Any]) -> web.Response:
    return web.json_response(
        {"statusCode": 200, "message": message, "data": data}, dumps=_dumps
    )


def snapshot_json(row: SnapshotRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "alias": row.alias,
        "created_at": iso(row.created_at),
        "last_used_at": iso(row.last_used_at),
        "expires_at": iso(row.expires_at),
        "stateful": False,
        "size": row.size,
    }


# -- who is calling ------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The peer of a request, as far as the transport tells."""

    transport: str  # "unix" | "tcp"
    uid: int | None = None
    pid: int | None = None


def caller_of(request: web.Request) -> Caller:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return Caller("unix", uid=uid, pid=pid)
    return Caller("tcp")


def authorize(request: web.Request) -> Caller:
    """TCP: 401 until tokens exist.  Unix: uid 0 or the daemon's uid, else 403.

    Runs before any route is served, known or not.
    """
    caller = caller_of(request)
    if caller.transport == "tcp":
        raise ApiError(401, AUTH_MESSAGE, headers={"WWW-Authenticate": "Bearer"})
    if caller.uid not in (0, DAEMON_UID):
        msgs: Messages | None = getattr(request.match_info.handler, "msgs", None)
        raise ApiError(403, msgs.forbidden if msgs else "You do not have permission to use this daemon")
    return caller


# -- request plumbing ------------------------------------------------------------


def _service(request: web.Request) -> SnapshotService:
    return request.app[SERVICE_KEY]


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "Request body too large (limit 64 KiB)")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "Request body too large (limit 64 KiB)") from None


def map_service_error(exc: ServiceError, msgs: Messages) -> ApiError:
    if isinstance(exc, InvalidInput):
        message = {
            "id": msgs.invalid_id,
            "name": msgs.invalid_id,
            "payload": PAYLOAD_MESSAGE,
            "alias": ALIAS_MESSAGE,
        }[exc.kind]
        return ApiError(400, message, exc.details)
    if isinstance(exc, NotFound):
        return ApiError(404, msgs.not_found)
    if isinstance(exc, Conflict):
        return ApiError(409, exc.message, exc.details)
    if isinstance(exc, InsufficientStorage):
        return ApiError(507, exc.message)
    if isinstance(exc, OperationFailed):
        log.error("operation failed: %s", exc.message)
        return ApiError(500, INTERNAL_MESSAGE, [{"field": "operation", "reason": exc.message}])
    return ApiError(500, INTERNAL_MESSAGE)


Handler = Callable[[web.Request], Awaitable[web.Response]]


def endpoint(msgs: Messages) -> Callable[[Handler], Handler]:
    """Turn service errors into this endpoint's responses (`msgs` also serve 403s)."""

    def wrap(fn: Handler) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            try:
                return await fn(request)
            except ServiceError as exc:
                raise map_service_error(exc, msgs) from None

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        handler.msgs = msgs  # type: ignore[attr-defined]
        return handler

    return wrap


def _cid(request: web.Request, kind: str = "id") -> str:
    return parse_container_id(request.match_info["id"], kind)


def _cid_name(request: web.Request) -> tuple[str, str]:
    return _cid(request, "name"), check_snapshot_name(request.match_info["name"])


def _container_data(container: Container) -> dict[str, Any]:
    return {"container_id": container.id, "project_id": container.project}


# -- handlers ----------------------------------------------------------------------


@endpoint(LIST_MSGS)
async def list_snapshots(request: web.Request) -> web.Response:
    cid = _cid(request)
    container, rows = await _service(request).list(cid)
    return ok(
        "Snapshots retrieved successfully",
        {**_container_data(container), "snapshots": [snapshot_json(r) for r in rows]},
    )


@endpoint(CREATE_MSGS)
async def create_snapshot(request: web.Request) -> web.Response:
    cid = _cid(request)
    alias, expiry = parse_create_body(await read_body(request))
    container, row = await _service(request).create(cid, alias, expiry)
    return ok(
        "Snapshot created successfully",
        {**_container_data(container), "snapshot": snapshot_json(row)},
    )


@endpoint(GET_MSGS)
async def get_snapshot(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    container, row = await _service(request).get(cid, name)
    return ok(
        "Snapshot retrieved successfully",
        {**_container_data(container), "snapshot": snapshot_json(row)},
    )


@endpoint(RESTORE_MSGS)
async def restore_snapshot(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    parse_empty_body(await read_body(request))
    _container, row = await _service(request).restore(cid, name)
    message = "Container restored from snapshot successfully"
    return ok(message, {"success": True, "message": message, "snapshot": snapshot_json(row)})


@endpoint(ALIAS_MSGS)
async def update_alias(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    alias = parse_alias_body(await read_body(request))
    container, row = await _service(request).set_alias(cid, name, alias)
    return ok(
        "Snapshot alias updated successfully",
        {**_container_data(container), "snapshot": snapshot_json(row)},
    )


@endpoint(DELETE_MSGS)
async def delete_snapshot(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    parse_empty_body(await read_body(request))
    container = await _service(request).delete(cid, name)
    return ok(
        "Snapshot deleted successfully",
        {**_container_data(container), "snapshot_name": name},
    )


@endpoint(DOC_MSGS)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(), dumps=_dumps)


# -- errors as envelopes ---------------------------------------------------------


@web.middleware
async def envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request; every error leaves as the documented envelope."""
    try:
        authorize(request)
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.details, exc.headers)
    except web.HTTPMethodNotAllowed as exc:
        return error_response(405, "Method not allowed", headers={"Allow": ",".join(sorted(exc.allowed_methods))})
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "Request body too large (limit 64 KiB)")
    except web.HTTPNotFound:
        return error_response(404, "Route not found")
    except web.HTTPException as exc:
        status = exc.status if exc.status in REASONS else 400
        return error_response(status, exc.reason or REASONS[status])
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, INTERNAL_MESSAGE)


BASE = "/api/v1/containers/{id}/snapshots"


def make_app(service: SnapshotService) -> web.Application:
    app = web.Application(middlewares=[envelope_errors], client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service
    app.router.add_get(BASE, list_snapshots, allow_head=False)
    app.router.add_post(BASE, create_snapshot)
    app.router.add_get(BASE + "/{name}", get_snapshot, allow_head=False)
    app.router.add_patch(BASE + "/{name}", restore_snapshot)
    app.router.add_delete(BASE + "/{name}", delete_snapshot)
    app.router.add_patch(BASE + "/{name}/alias", update_alias)
    app.router.add_get("/api/v1/openapi.json", openapi, allow_head=False)
    return app
