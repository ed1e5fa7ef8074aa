"""Admin-only routes, all under /api/v1/admin/: status, tokens and container labels.

Never reachable with a project token (403); the CLI's `snapd token` and
`snapd container` commands use them over the Unix socket.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

from aiohttp import web

from backends.base import LAYOUTS
from snapd.core.errors import NotFound, ServiceError
from snapd.http.admin_expiry import add_expiry_routes
from snapd.http.admin_policies import add_policy_routes
from snapd.http.admin_reconcile import add_reconcile_routes
from snapd.http.auth import AUTH_KEY, require_admin
from snapd.http.envelope import ApiError, Messages, map_service_error, ok, read_body
from snapd.http.keys import SERVICE_KEY
from snapd.http.replication import add_replication_routes
from snapd.http.validation import (
    InvalidInput,
    parse_body,
    parse_container_id,
    parse_container_ids,
    parse_expiry,
    parse_label,
)

STATUS_KEY = web.AppKey("status", Callable[[], Awaitable[dict]])
"""The running daemon's status report (snapd.server.Daemon.status)."""
PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TOKEN_ID = re.compile(r"[0-9a-f]{12}")
DAY = 86400.0
ADMIN = "/api/v1/admin"
CONTAINER_MSGS = Messages("Admin access required", "Invalid container ID format", "Container not found")
"""Service errors on the admin container routes: the main API's mapping (409, 507, ...)."""


def _invalid(field: str, reason: str) -> ApiError:
    return ApiError(400, "Invalid request payload", [{"field": field, "reason": reason}])


def _body(raw: bytes, allowed: set[str]) -> dict[str, Any]:
    try:
        return parse_body(raw, allowed)
    except InvalidInput as exc:
        raise ApiError(400, "Invalid request payload", exc.details) from None


def _project(value: Any, field: str = "project") -> str:
    if not isinstance(value, str) or not PROJECT.fullmatch(value):
        raise _invalid(field, "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise _invalid(key, "must be true or false")
    return value


def _cid(raw: str) -> str:
    try:
        return parse_container_id(raw)
    except InvalidInput as exc:
        raise ApiError(400, "Invalid container ID format", exc.details) from None


async def create_token(request: web.Request) -> web.Response:
    """Issue a token.  Every field is checked for its exact type: a missing
    key takes its default, a wrong value is a 400 naming it (never coerced)."""
    require_admin(request)
    body = _body(await read_body(request), {"admin", "project", "containers", "read_only", "metrics",
                                            "files", "replicate", "label", "expires"})
    admin, read_only, metrics = _flag(body, "admin"), _flag(body, "read_only"), _flag(body, "metrics")
    files, replicate = _flag(body, "files"), _flag(body, "replicate")
    project = _project(body["project"]) if body.get("project") is not None else None
    try:
        # absent: every container of the project; present: exactly a non-empty list of ids
        containers = parse_container_ids(body["containers"], "containers") if "containers" in body else []
        label = parse_label(body.get("label"), "label")
        expires = parse_expiry(body.get("expires"), "expires")
    except InvalidInput as exc:
        raise ApiError(400, "Invalid request payload", exc.details) from None
    if admin and (project is not None or containers or read_only):
        raise _invalid("admin", "an admin token has no project, containers or read-only scope")
    if replicate and (admin or project is not None or containers or read_only or metrics or files):
        raise _invalid("replicate", "a replicate token has no other scope: it may import into any container "
                                    "and read their snapshot lists, nothing else")
    if not admin and project is None and not metrics and not replicate:
        raise _invalid("project", "required unless the token is an admin, metrics or replicate token")
    if files and (admin or project is None):
        raise _invalid("files", "file access is a scope of a project token (an admin has it already)")
    if containers and project is None:
        raise _invalid("containers", "a container scope needs a project")
    ctx = request.app[AUTH_KEY]
    now = ctx.clock.now()
    token, secret = ctx.tokens.create(
        now=now, admin=admin, project=project, containers=containers, read_only=read_only,
        metrics=metrics, files=files, replicate=replicate, label=label, expires_at=now + expires * DAY if expires is not None else None,
    )
    return ok("Token created successfully", {"token": token.as_json(), "secret": secret})


async def list_tokens(request: web.Request) -> web.Response:
    require_admin(request)
    return ok("Tokens retrieved successfully",
              {"tokens": [t.as_json() for t in request.app[AUTH_KEY].tokens.list()]})


async def revoke_token(request: web.Request) -> web.Response:
    require_admin(request)
    token_id = request.match_info["token_id"]
    ctx = request.app[AUTH_KEY]
    if not TOKEN_ID.fullmatch(token_id):
        raise ApiError(400, "Invalid token ID", [{"field": "token_id", "reason": "12 hexadecimal characters"}])
    token = ctx.tokens.revoke(token_id, ctx.clock.now())
    if token is None:
        raise ApiError(404, "Token not found")
    return ok("Token revoked successfully", {"token": token.as_json()})


async def _container_json(request: web.Request, cid: str) -> dict[str, Any]:
    service = request.app[SERVICE_KEY]
    try:
        container = await service.find(cid)
    except NotFound:
        raise ApiError(404, "Container not found") from None
    try:
        layout, label = await service.layout(container)
    except ServiceError as exc:
        raise map_service_error(exc, CONTAINER_MSGS) from None
    return {
        "container_id": cid,
        "project_id": container.project,
        "pool": container.pool,
        "backend": container.backend.kind,
        "layout": layout,
        "layout_label": label,
        "snapshot_count": service.count(cid),
    }


async def show_container(request: web.Request) -> web.Response:
    require_admin(request)
    cid = _cid(request.match_info["id"])
    return ok("Container retrieved successfully", await _container_json(request, cid))


def _layout(value: object) -> str:
    if value not in LAYOUTS:
        raise _invalid("layout", f"must be one of {', '.join(LAYOUTS)}, or null to remove the label")
    return value  # type: ignore[return-value]


LABELS: dict[str, Callable[[Any], str]] = {"project": _project, "layout": _layout}
"""Container label -> the check of a new value (null always removes the label)."""


async def set_label(request: web.Request) -> web.Response:
    """PUT /api/v1/admin/containers/{id}/{label}: set or remove a project or layout label."""
    require_admin(request)
    cid = _cid(request.match_info["id"])
    label = request.match_info.route.resource.canonical.rsplit("/", 1)[1]  # type: ignore[union-attr]
    body = _body(await read_body(request), {label})
    if label not in body:
        raise _invalid(label, "required (null removes the label)")
    value = None if body[label] is None else LABELS[label](body[label])
    service = request.app[SERVICE_KEY]
    try:
        await (service.set_project(cid, value) if label == "project" else service.set_layout(cid, value))
    except ServiceError as exc:
        raise map_service_error(exc, CONTAINER_MSGS) from None
    return ok(f"Container {label} updated successfully", await _container_json(request, cid))


async def status(request: web.Request) -> web.Response:
    require_admin(request)
    report = request.app.get(STATUS_KEY)
    if report is None:
        raise ApiError(404, "Status is not available in this application")
    return ok("Status retrieved successfully", await report())


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(f"{ADMIN}/status", status, allow_head=False)
    app.router.add_post(f"{ADMIN}/tokens", create_token)
    app.router.add_get(f"{ADMIN}/tokens", list_tokens, allow_head=False)
    app.router.add_delete(f"{ADMIN}/tokens/{{token_id}}", revoke_token)
    app.router.add_get(f"{ADMIN}/containers/{{id}}", show_container, allow_head=False)
    for label in LABELS:
        app.router.add_put(f"{ADMIN}/containers/{{id}}/{label}", set_label)
    add_reconcile_routes(app)  # POST /api/v1/admin/reconcile (snapd/http/admin_reconcile.py)
    add_expiry_routes(app)  # GET /api/v1/admin/expiry (snapd/http/admin_expiry.py)
    add_policy_routes(app)  # /api/v1/admin/policies... (snapd/http/admin_policies.py)
    add_replication_routes(app)  # /api/v1/admin/replications... (snapd/http/replication.py)
