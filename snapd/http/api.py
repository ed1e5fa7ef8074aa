"""The snapshot API of the reference, and the application serving it.

The same application serves the Unix socket and TCP; only who may call
differs (snapd.http.auth).  Handlers validate input, call the service, and
shape the reference's envelopes; nothing here touches a pool.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

from aiohttp import web

from snapd.http.admin import add_admin_routes
from snapd.http.auth import AuthContext, AUTH_KEY, authentication, principal_of
from snapd.core.clock import iso
from snapd.http.envelope import (
    ApiError,
    Handler,
    Messages,
    dumps,
    envelope_errors,
    map_service_error,
    ok,
    read_body,
)
from snapd.core.errors import InvalidInput, NotFound, ServiceError
from snapd.http.openapi import openapi_document
from snapd.http.guard import mark_busy
from snapd.http.keys import SERVICE_KEY
from snapd.host.metrics import Metrics
from snapd.http.observe import METRICS_KEY, metrics_handler, metrics_middleware, request_log_middleware
from snapd.core.service import Container, SnapshotService
from snapd.core.records import SnapshotRow
from snapd.http.validation import (
    MAX_BODY,
    check_snapshot_name,
    parse_alias_body,
    parse_container_id,
    parse_create_body,
    parse_empty_body,
    parse_hold_body,
)

log = logging.getLogger("snapd.api")


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
HOLD_MSGS = Messages(
    "You do not have permission to hold or release snapshots for this container",
    "Invalid snapshot name or container ID",
    "Container or snapshot not found",
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


def snapshot_detail_json(row: SnapshotRow, keep: list[str] | None = None) -> dict[str, Any]:
    """The reference's seven fields, then what only the detail routes show: the policy that
    took it (null: taken by request), its hold, and the rules that keep it (`keep`)."""
    hold = None if row.hold_reason is None else {"reason": row.hold_reason, "since": iso(row.hold_since)}
    return {**snapshot_json(row), "policy": row.policy, "hold": hold, "keep": keep}


# -- request plumbing ------------------------------------------------------------


def _service(request: web.Request) -> SnapshotService:
    return request.app[SERVICE_KEY]


GUARD = "guard"


def endpoint(msgs: Messages, write: bool = False, files: bool = False) -> Callable[[Handler], Handler]:
    """A container route: access check through the service's guard, errors as documented.
    `files`: reading files in snapshots (Principal.may_read_files).

    A caller that may not see the container gets 403 whether it exists or
    not, so a 404 never tells another project's containers apart.
    """

    def wrap(fn: Handler) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            principal = principal_of(request)

            def guard(container: Container) -> None:
                allowed = (principal.may_read_files(container.id, container.project) if files
                           else principal.may_access(container.id, container.project, write))
                if not allowed:
                    raise ApiError(403, msgs.forbidden)

            request[GUARD] = guard
            try:
                return await fn(request)
            except NotFound as exc:
                if exc.message == "container" and not (principal.admin or principal.replicates):
                    raise ApiError(403, msgs.forbidden) from None
                raise map_service_error(exc, msgs) from None
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


def _snapshot_ok(message: str, container: Container, row: SnapshotRow) -> web.Response:
    return ok(message, {**_container_data(container), "snapshot": snapshot_json(row)})


# -- handlers ----------------------------------------------------------------------


MAX_PAGE = 10_000
CURSOR = re.compile(r"(\d{1,16}):([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
"""A list cursor (`data.next`): created_at in ms, a colon, the snapshot name."""


def _page(request: web.Request) -> tuple[int | None, tuple[int, str] | str | None]:
    """`?limit=` (1..MAX_PAGE) and `?after=` (a cursor from `data.next`, or a snapshot
    name, which the service resolves once the caller may see the container)."""
    query = request.rel_url.query

    def bad(field: str, reason: str) -> ApiError:
        return ApiError(400, "Invalid query parameter", [{"field": field, "reason": reason}])

    limit = None
    if "limit" in query:
        raw = query["limit"]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_PAGE:
            raise bad("limit", f"an integer from 1 to {MAX_PAGE}")
        limit = int(raw)
    after = None
    if "after" in query:
        raw = query["after"]
        if m := CURSOR.fullmatch(raw):
            after = (int(m[1]), m[2])
        else:
            try:
                after = check_snapshot_name(raw)
            except InvalidInput:
                raise bad("after", "a cursor from data.next or a snapshot name") from None
    return limit, after


@endpoint(LIST_MSGS)
async def list_snapshots(request: web.Request) -> web.Response:
    """Newest first, straight from the store's index; each snapshot object is
    encoded by SQLite and the envelope is spliced around them (10,000 rows in
    a few tens of ms, no Python object per row).  Optional pagination:
    `?limit=N[&after=CURSOR]` adds `data.next`, the cursor of the next page
    (null on the last one); without `limit` every snapshot is returned."""
    cid = _cid(request)
    limit, after = _page(request)
    container, items, last = await _service(request).list_json(cid, request[GUARD], limit, after)
    data: dict[str, Any] = _container_data(container)
    if limit is not None:
        data["next"] = f"{last[0]}:{last[1]}" if last else None
    data["snapshots"] = []
    head = dumps({"statusCode": 200, "message": "Snapshots retrieved successfully", "data": data})
    assert head.endswith('"snapshots":[]}}')
    body = "".join((head[:-3], ",".join(items), "]}}"))
    return web.Response(text=body, content_type="application/json")


@endpoint(CREATE_MSGS, write=True)
async def create_snapshot(request: web.Request) -> web.Response:
    cid = _cid(request)
    alias, expiry, given = parse_create_body(await read_body(request))
    container, row = await _service(request).create(cid, alias, expiry, request[GUARD],
                                                    manual_default=not given)
    return _snapshot_ok("Snapshot created successfully", container, row)


@endpoint(GET_MSGS)
async def get_snapshot(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    container, row = await _service(request).get(cid, name, request[GUARD])
    return _snapshot_ok("Snapshot retrieved successfully", container, row)


@endpoint(RESTORE_MSGS, write=True)
async def restore_snapshot(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    parse_empty_body(await read_body(request))
    _container, row = await _service(request).restore(cid, name, request[GUARD])
    message = "Container restored from snapshot successfully"
    return ok(message, {"success": True, "message": message, "snapshot": snapshot_json(row)})


@endpoint(ALIAS_MSGS, write=True)
async def update_alias(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    alias = parse_alias_body(await read_body(request))
    container, row = await _service(request).set_alias(cid, name, alias, request[GUARD])
    return _snapshot_ok("Snapshot alias updated successfully", container, row)


@endpoint(DELETE_MSGS, write=True)
async def delete_snapshot(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    parse_empty_body(await read_body(request))
    container = await _service(request).delete(cid, name, request[GUARD])
    return ok(
        "Snapshot deleted successfully",
        {**_container_data(container), "snapshot_name": name},
    )


def _detail_ok(request: web.Request, message: str, container: Container, row: SnapshotRow) -> web.Response:
    keep = _service(request).keep_reasons(container, [row]).get(row.name)
    return ok(message, {**_container_data(container), "snapshot": snapshot_detail_json(row, keep)})


@endpoint(HOLD_MSGS, write=True)
async def hold_snapshot(request: web.Request) -> web.Response:
    """Hold: never deleted by expiry, retention, space-aware cleanup or a DELETE (409) until
    released.  Holding a held snapshot again replaces the reason."""
    cid, name = _cid_name(request)
    reason = parse_hold_body(await read_body(request))
    container, row = await _service(request).hold(cid, name, reason, request[GUARD])
    return _detail_ok(request, "Snapshot held successfully", container, row)


@endpoint(HOLD_MSGS, write=True)
async def release_snapshot(request: web.Request) -> web.Response:
    """Release a hold; releasing a snapshot that is not held is a 200 that changes nothing."""
    cid, name = _cid_name(request)
    parse_empty_body(await read_body(request))
    container, row = await _service(request).release(cid, name, request[GUARD])
    return _detail_ok(request, "Snapshot released successfully", container, row)


@endpoint(GET_MSGS)
async def get_snapshot_detail(request: web.Request) -> web.Response:
    cid, name = _cid_name(request)
    container, row = await _service(request).get(cid, name, request[GUARD])
    return _detail_ok(request, "Snapshot detail retrieved successfully", container, row)


@endpoint(LIST_MSGS)
async def list_snapshot_details(request: web.Request) -> web.Response:
    cid = _cid(request)
    service = _service(request)
    container, rows = await service.rows(cid, request[GUARD])
    keep = service.keep_reasons(container, rows)
    return ok("Snapshot details retrieved successfully", {
        **_container_data(container),
        "snapshots": [snapshot_detail_json(row, keep.get(row.name)) for row in rows]})


async def openapi(request: web.Request) -> web.Response:
    """Any authenticated caller may read the API document."""
    return web.json_response(openapi_document(), dumps=dumps)


BASE = "/api/v1/containers/{id}/snapshots"


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, for admins and tokens with the metrics scope."""
    if not principal_of(request).may_read_metrics:
        raise ApiError(403, "Metrics access required")
    return await metrics_handler(request)


def make_app(service: SnapshotService, auth: AuthContext, metrics_: Metrics | None = None) -> web.Application:
    """The application: request log (outermost: X-Request-Id on every answer),
    metrics, the slow-client guard, error envelopes, then authentication."""
    metrics_ = metrics_ or Metrics()
    app = web.Application(
        middlewares=[request_log_middleware, metrics_middleware(metrics_), mark_busy, envelope_errors,
                     authentication],
        client_max_size=MAX_BODY,
    )
    app[SERVICE_KEY] = service
    app[AUTH_KEY] = auth
    app[METRICS_KEY] = metrics_
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get(BASE, list_snapshots, allow_head=False)
    app.router.add_post(BASE, create_snapshot)
    # `.../snapshots/import` is the import route (transfer.py): as the OpenAPI document says (a
    # concrete path before a templated one), its other methods are 405, Allow: POST
    one = BASE + "/{name:(?!import$)[^{}/]+}"
    app.router.add_get(one, get_snapshot, allow_head=False)
    app.router.add_patch(one, restore_snapshot)
    app.router.add_delete(one, delete_snapshot)
    app.router.add_patch(BASE + "/{name}/alias", update_alias)
    app.router.add_put(BASE + "/{name}/hold", hold_snapshot)
    app.router.add_delete(BASE + "/{name}/hold", release_snapshot)
    app.router.add_get(BASE + "/{name}/detail", get_snapshot_detail, allow_head=False)
    app.router.add_get("/api/v1/containers/{id}/snapshot-details", list_snapshot_details, allow_head=False)
    app.router.add_get("/api/v1/openapi.json", openapi, allow_head=False)
    from snapd.http.files import add_file_routes  # it builds on this module's endpoint()

    add_file_routes(app, BASE)
    add_admin_routes(app)
    from snapd.http.transfer import add_transfer_routes  # it builds on this module's plumbing

    add_transfer_routes(app)
    return app
