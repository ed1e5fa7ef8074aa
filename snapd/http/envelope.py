"""HTTP plumbing shared by the route modules: envelopes, errors, body reading.

Every response leaves in the reference's envelope: success
`{statusCode, message, data}`, error `{statusCode, error, message}` with an
optional `details` list of `{field, reason}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from snapd.core.errors import Conflict, InsufficientStorage, InvalidInput, NotFound, OperationFailed, ServiceError
from snapd.host.logsetup import request_id_var
from snapd.http.validation import MAX_BODY

log = logging.getLogger("snapd.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BODY_TIMEOUT = web.AppKey("body_timeout", float)
"""Seconds a client may take to send a request body (config: request_timeout)."""

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    416: "Range Not Satisfiable",
    408: "Request Timeout",
    500: "Internal Server Error",
    507: "Insufficient Storage",
}
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


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def error_response(status: int, message: str, details: list[dict] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"statusCode": status, "error": REASONS[status], "message": message}
    rid = request_id_var.get()
    if rid:
        details = [*(details or []), {"field": "request_id", "reason": "quote it when reporting this error",
                                      "value": rid}]
    if details:
        body["details"] = details
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def ok(message: str, data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(
        {"statusCode": status, "message": message, "data": data}, dumps=dumps, status=status
    )


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "Request body too large (limit 64 KiB)")
    try:
        return await asyncio.wait_for(request.read(), request.app.get(BODY_TIMEOUT, 10.0))
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "Request body too large (limit 64 KiB)") from None
    except asyncio.TimeoutError:
        raise ApiError(408, "Request body not received in time",
                       headers={"Connection": "close"}) from None



@web.middleware
async def envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as the documented envelope; never a traceback.

    An error answered before the body was read closes the connection, so an
    unread (perhaps enormous) body is not drained for long.
    """
    try:
        return await handler(request)
    except Exception as exc:  # every error path, mapped below
        resp = _error_for(request, exc)
    if request.body_exists and not request.content.is_eof():
        resp.force_close()  # then at most httpguard's lingering_time is spent draining it
    return resp


def _error_for(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.details, exc.headers)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return error_response(405, "Method not allowed", headers={"Allow": ",".join(sorted(exc.allowed_methods))})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, "Request body too large (limit 64 KiB)")
    if isinstance(exc, web.HTTPNotFound):
        return error_response(404, "Route not found")
    if isinstance(exc, web.HTTPException):
        status = exc.status if exc.status in REASONS else 400
        return error_response(status, exc.reason or REASONS[status])
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, INTERNAL_MESSAGE)


def route_template(request: web.Request) -> str:
    """The matched route's template (`/api/v1/containers/{id}/snapshots`), or 'unmatched'."""
    try:
        info = request.match_info
        resource = info.route.resource
    except AttributeError:
        return "unmatched"
    if resource is None or info.http_exception is not None:
        return "unmatched"
    return resource.canonical


# -- service errors as responses ---------------------------------------------------


@dataclass(frozen=True)
class Messages:
    """The reference's per-endpoint messages."""

    forbidden: str
    invalid_id: str
    not_found: str


PAYLOAD_MESSAGE = "Invalid request payload"
ALIAS_MESSAGE = "Invalid alias value"


def map_service_error(exc: ServiceError, msgs: Messages) -> ApiError:
    if isinstance(exc, InvalidInput):
        message = {
            "id": msgs.invalid_id,
            "name": msgs.invalid_id,
            "payload": PAYLOAD_MESSAGE,
            "alias": ALIAS_MESSAGE,
            "query": "Invalid query parameter",
            "stream": "Invalid snapshot stream",
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
