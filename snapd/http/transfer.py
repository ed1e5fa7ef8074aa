"""Export and import of snapshots as portable streams (backends/portable.py).

    GET  /api/v1/containers/{id}/snapshots/{name}/export[?base=NAME][&compression=zstd]
         the stream, chunked, in constant memory (needs the right to restore the container)
    POST /api/v1/containers/{id}/snapshots/import[?pool=KIND:ROOT]
         the stream as the body, read as it arrives; answers with the new snapshot in the
         reference's seven fields (an admin or a `replicate` token)
    GET  /api/v1/containers/{id}/import-formats[?pool=KIND:ROOT]
         the stream kinds the pool holding (or that would hold) the container accepts, the
         native one first, and the snapshots a native incremental may start from (an admin
         or a `replicate` token: what a replication sender asks before it sends)

Errors before the stream starts are the documented envelope.  An export that fails once
the stream has begun is cut off without its trailer, so no importer accepts it.
"""

from __future__ import annotations

import logging

from aiohttp import web

from backends.portable import MEDIA_TYPE

from snapd.core.errors import InvalidInput
from snapd.http.api import GUARD, _cid, _cid_name, _service, _snapshot_ok, endpoint
from snapd.http.auth import Principal, principal_of
from snapd.http.envelope import ApiError, Messages, ok
from snapd.http.validation import check_snapshot_name

log = logging.getLogger("snapd.api")

CHUNK = 1 << 20
EXPORT_MSGS = Messages(
    "You do not have permission to export snapshots of this container",
    "Invalid snapshot name or container ID",
    "Container or snapshot not found",
)
IMPORT_MSGS = Messages(
    "You do not have permission to import snapshots into this container",
    "Invalid container ID format",
    "Container not found",
)
EXPORT_ROUTE = "/api/v1/containers/{id}/snapshots/{name}/export"
IMPORT_ROUTE = "/api/v1/containers/{id}/snapshots/import"
FORMATS_ROUTE = "/api/v1/containers/{id}/import-formats"


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and all known (else 400 naming it)."""
    out: dict[str, str] = {}
    for key, value in request.rel_url.query.items():
        if key not in allowed or key in out:
            reason = "given twice" if key in out else f"unknown; known: {', '.join(allowed)}"
            raise ApiError(400, "Invalid query parameter", [{"field": key[:64], "reason": reason}])
        out[key] = value
    return out


@endpoint(EXPORT_MSGS, write=True)
async def export_snapshot(request: web.Request) -> web.StreamResponse:
    """The portable stream of the snapshot, or of its changes since `base`."""
    cid, name = _cid_name(request)
    query = _query(request, ("base", "compression"))
    base = query.get("base")
    if base is not None:
        try:
            check_snapshot_name(base)
        except InvalidInput:
            raise ApiError(400, "Invalid query parameter",
                           [{"field": "base", "reason": "a snapshot name"}]) from None
    async with _service(request).export(cid, name, base, request[GUARD],
                                        query.get("compression", "none")) as export:
        resp = web.StreamResponse(headers={
            "Content-Type": MEDIA_TYPE,
            "Content-Disposition": f'attachment; filename="{cid}-{name}{"-from-" + base if base else ""}.csnap"'})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            stats = await export.run(resp.write)
        except Exception as exc:  # noqa: BLE001 - the answer has begun: cut it off, trailer-less
            log.warning("export of %s@%s stopped: %s", cid, name, exc)
            if request.transport is not None:
                request.transport.abort()
            return resp
        log.info("export container=%s snapshot=%s base=%s bytes=%d entries=%d deletions=%d",
                 cid, name, base, stats.bytes, stats.entries, stats.deletions)
        await resp.write_eof()
        return resp


def _importer(request: web.Request) -> Principal:
    """The caller, when it may import (403 otherwise)."""
    principal = principal_of(request)
    if not principal.may_import:  # a stream sets owners, set-id bits and device nodes: root's power
        raise ApiError(403, "Admin access required", [{
            "field": "token", "reason": "an import writes owners, set-id bits and device nodes as the stream "
                                        "says; only an admin or a token with the replicate scope may import"}])
    return principal


@endpoint(IMPORT_MSGS, write=True)
async def import_snapshot(request: web.Request) -> web.Response:
    """Make a snapshot (and, if needed, the container) from the stream in the body."""
    principal = _importer(request)
    cid = _cid(request)
    pool = _query(request, ("pool",)).get("pool")

    async def pull() -> bytes:  # up to CHUNK bytes at a time: fewer hops to the receiving thread
        parts, size = [], 0
        while size < CHUNK and (data := await request.content.read(CHUNK - size)):
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    container, row = await _service(request).import_stream(
        cid, pull, pool,
        lambda project: principal.may_import)
    return _snapshot_ok("Snapshot imported successfully", container, row)


@endpoint(IMPORT_MSGS)
async def import_formats(request: web.Request) -> web.Response:
    """What an import of the container accepts here: stream kinds and native bases."""
    _importer(request)
    cid = _cid(request)
    pool = _query(request, ("pool",)).get("pool")
    formats = await _service(request).import_formats(cid, pool, request[GUARD])
    return ok("Import formats", {"container_id": cid, **formats.as_json()})


def add_transfer_routes(app: web.Application) -> None:
    app.router.add_get(EXPORT_ROUTE, export_snapshot, allow_head=False)
    app.router.add_post(IMPORT_ROUTE, import_snapshot)
    app.router.add_get(FORMATS_ROUTE, import_formats, allow_head=False)
