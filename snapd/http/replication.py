"""Replication jobs (admin only): start or join one, list them, show one.

    POST /api/v1/admin/replications        {"container": ID, "target": NAME, "full": false}
                                           202 with the job (the running one for that pair, if any)
    GET  /api/v1/admin/replications        every job this daemon ran since it started, newest first
    GET  /api/v1/admin/replications/{job}  one job: state, snapshots and bytes sent, rate, eta, last error
"""

from __future__ import annotations

import re

from aiohttp import web

from snapd.core.errors import NotFound
from snapd.core.replication import Replications
from snapd.http.auth import require_admin
from snapd.http.envelope import ApiError, ok, read_body
from snapd.http.validation import InvalidInput, parse_body, parse_container_id

REPLICATIONS_KEY = web.AppKey("replications", Replications)
ROUTE = "/api/v1/admin/replications"
JOB_ID = re.compile(r"[0-9a-f]{12}")


def _replications(request: web.Request) -> Replications:
    require_admin(request)
    replications = request.app.get(REPLICATIONS_KEY)
    if replications is None:
        raise ApiError(404, "Replication is not available in this application")
    return replications


def _invalid(field: str, reason: str) -> ApiError:
    return ApiError(400, "Invalid request payload", [{"field": field, "reason": reason}])


async def start_replication(request: web.Request) -> web.Response:
    """Start a job for a container and a target, or join the one running for them."""
    replications = _replications(request)
    try:
        body = parse_body(await read_body(request), {"container", "target", "full"})
    except InvalidInput as exc:
        raise ApiError(400, "Invalid request payload", exc.details) from None
    if "container" not in body:
        raise _invalid("container", "required: the container's id")
    if not isinstance(body["container"], str):
        raise _invalid("container", "must be a container id (24 hexadecimal characters)")
    try:
        cid = parse_container_id(body["container"])
    except InvalidInput:
        raise _invalid("container", "must be a container id (24 hexadecimal characters)") from None
    target = body.get("target")
    if not isinstance(target, str) or not target:
        raise _invalid("target", "required: the name of a [targets.NAME] table of the config")
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise _invalid("full", "must be true or false")
    try:
        job, new = await replications.start(cid, target, full)
    except NotFound as exc:
        if exc.message == "target":
            raise ApiError(404, "Replication target not found", exc.details) from None
        raise ApiError(404, "Container not found") from None
    message = "Replication started" if new else "Replication already running for this container and target"
    return ok(message, {"job": job.as_json()}, status=202)


async def list_replications(request: web.Request) -> web.Response:
    replications = _replications(request)
    return ok("Replications retrieved successfully", {"jobs": [j.as_json() for j in replications.list()]})


async def get_replication(request: web.Request) -> web.Response:
    replications = _replications(request)
    job_id = request.match_info["job"]
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(400, "Invalid job ID", [{"field": "job", "reason": "12 hexadecimal characters"}])
    job = replications.get(job_id)
    if job is None:
        raise ApiError(404, "Replication job not found")
    return ok("Replication retrieved successfully", {"job": job.as_json()})


def add_replication_routes(app: web.Application) -> None:
    app.router.add_post(ROUTE, start_replication)
    app.router.add_get(ROUTE, list_replications, allow_head=False)
    app.router.add_get(ROUTE + "/{job}", get_replication, allow_head=False)
