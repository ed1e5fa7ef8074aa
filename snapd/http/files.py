"""Routes for files in snapshots: browse (tree), download (file), diff, restore-paths.

tree, file and diff need a caller that may restore the container, or a
token created with `files`; restore-paths needs a write token.  Paths are
given and shown in the name escape (backends.beneath: `\\xHH` for bytes that
are not UTF-8, `\\\\` for a backslash).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from aiohttp import web

from snapd.core.errors import InvalidInput
from snapd.core.files import MAX_RESTORE_PATHS, Files, PathNotFound, parse_path
from snapd.http.api import GUARD, MAX_PAGE, _cid_name, _container_data, _service, endpoint
from snapd.http.envelope import ApiError, Messages, dumps, ok, read_body
from snapd.http.validation import check_snapshot_name, parse_body

FILES_MSGS = Messages(
    "You do not have permission to read files of this container",
    "Invalid snapshot name or container ID",
    "Container or snapshot not found",
)
RESTORE_PATHS_MSGS = Messages(
    "You do not have permission to restore this container",
    "Invalid snapshot name or container ID",
    "Container or snapshot not found",
)
DEFAULT_PAGE = 1000
CHUNK = 1 << 20
NDJSON = "application/x-ndjson"
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def _bad(field: str, reason: str) -> ApiError:
    return ApiError(400, "Invalid query parameter", [{"field": field, "reason": reason}])


def _limit(request: web.Request) -> int:
    raw = request.rel_url.query.get("limit")
    if raw is None:
        return DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_PAGE:
        raise _bad("limit", f"an integer from 1 to {MAX_PAGE}")
    return int(raw)


def _query_path(request: web.Request, default: str | None = None) -> str:
    raw = request.rel_url.query.get("path", default)
    if raw is None:
        raise _bad("path", "required: an absolute path in the snapshot, e.g. /etc/hosts")
    return raw


def _files(request: web.Request) -> Files:
    return Files(_service(request))


def _not_found(exc: PathNotFound) -> ApiError:
    return ApiError(404, "Path not found", exc.details)


@endpoint(FILES_MSGS, files=True)
async def tree(request: web.Request) -> web.Response:
    """One directory of the snapshot, in name order, a page at a time (`limit`, `after`:
    the `next` of the previous page); a path that is not a directory shows the entry."""
    cid, name = _cid_name(request)
    path, limit = _query_path(request, "/"), _limit(request)
    try:
        container, data = await _files(request).tree(cid, name, path, request[GUARD], limit,
                                                     request.rel_url.query.get("after"))
    except PathNotFound as exc:
        raise _not_found(exc) from None
    return ok("Directory retrieved successfully", {**_container_data(container), "snapshot": name, **data})


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single `bytes=` range; None for the whole file.
    Several ranges are answered with the whole file (RFC 9110 allows it)."""
    if header is None or "," in header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m[1] and not m[2]):
        raise ApiError(416, "Range not satisfiable", [{"field": "Range", "reason": "one range, bytes=START-[END] or bytes=-SUFFIX"}],
                       headers={"Content-Range": f"bytes */{size}"})
    if not m[1]:
        suffix = int(m[2])
        if suffix == 0:
            raise ApiError(416, "Range not satisfiable", [{"field": "Range", "reason": "an empty suffix"}],
                           headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - suffix), size
    start = int(m[1])
    end = min(int(m[2]) + 1, size) if m[2] else size
    if start >= size or end <= start:
        raise ApiError(416, "Range not satisfiable",
                       [{"field": "Range", "reason": f"the file has {size} bytes"}],
                       headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def _send(request: web.Request, resp: web.StreamResponse, fd: int, start: int, end: int) -> None:
    """Bytes start..end of `fd` after the headers: sendfile(2) straight from the page cache
    to the socket, as aiohttp's FileResponse does; read and written in chunks where the
    transport cannot (asyncio falls back itself for TLS)."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    with os.fdopen(os.dup(fd), "rb", buffering=0) as fobj:
        try:
            await asyncio.get_running_loop().sendfile(transport, fobj, start, end - start)
            return
        except NotImplementedError:
            pass
    pos = start
    while pos < end:
        chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - pos), pos)
        if not chunk:
            break  # the file shrank: a read-only snapshot does not, a live one might
        await resp.write(chunk)
        pos += len(chunk)


@endpoint(FILES_MSGS, files=True)
async def file(request: web.Request) -> web.StreamResponse:
    """The bytes of one regular file, streamed; `Range` (one range) and `ETag` /
    `If-None-Match` / `If-Range` are honoured.  Anything else than a regular file: 400."""
    cid, name = _cid_name(request)
    path = _query_path(request)
    try:
        async with _files(request).open_file(cid, name, path, request[GUARD]) as f:
            headers = {"ETag": f.etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if request.headers.get("If-None-Match") == f.etag:
                return web.Response(status=304, headers={"ETag": f.etag})
            wanted = request.headers.get("Range")
            if_range = request.headers.get("If-Range")
            span = _range(wanted, f.size) if if_range in (None, f.etag) else None
            start, end = span or (0, f.size)
            resp = web.StreamResponse(status=206 if span else 200, headers=headers)
            if span:
                resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
            resp.content_length = end - start
            await resp.prepare(request)
            await _send(request, resp, f.fd, start, end)
            await resp.write_eof()
            return resp
    except PathNotFound as exc:
        raise _not_found(exc) from None


@endpoint(FILES_MSGS, files=True)
async def diff(request: web.Request) -> web.StreamResponse:
    """Every path that differs from the snapshot to `against` (`live`, the default, or
    another snapshot's name): NDJSON, one change a line, when the client accepts
    application/x-ndjson; else JSON pages (`limit`, `after`: the `next` of the last page)."""
    cid, name = _cid_name(request)
    query = request.rel_url.query
    against = query.get("against", "live")
    if against != "live":
        try:
            against = check_snapshot_name(against)
        except InvalidInput:
            raise _bad("against", "live, or the name of another snapshot of the container") from None
    stream = NDJSON in request.headers.get("Accept", "")
    limit = None if stream else _limit(request)
    after = query.get("after")
    async with _files(request).diff(cid, name, against, request[GUARD], after) as (container, batches):
        if stream:
            resp = web.StreamResponse(headers={"Content-Type": NDJSON})
            await resp.prepare(request)
            async for batch in batches:
                await resp.write("".join(dumps(c) + "\n" for c in batch).encode())
            await resp.write_eof()
            return resp
        changes: list[dict] = []
        more = False
        async for batch in batches:
            changes.extend(batch)
            if len(changes) > limit:  # type: ignore[operator]
                more = True
                break
        changes = changes[:limit]
    data: dict[str, Any] = {**_container_data(container), "snapshot": name, "against": against,
                            "changes": changes, "next": changes[-1]["path"] if more else None}
    return ok("Differences retrieved successfully", data)


def parse_paths_body(raw: bytes) -> list[tuple[bytes, ...]]:
    """`{"paths": [...]}`: 1 to MAX_RESTORE_PATHS absolute paths in the name escape."""
    body = parse_body(raw, {"paths"})
    paths = body.get("paths")
    if not isinstance(paths, list) or not 1 <= len(paths) <= MAX_RESTORE_PATHS:
        raise InvalidInput("payload", [{"field": "paths",
                                        "reason": f"required: a list of 1 to {MAX_RESTORE_PATHS} absolute paths"}])
    out = []
    for i, text in enumerate(paths):
        if not isinstance(text, str):
            raise InvalidInput("payload", [{"field": f"paths[{i}]", "reason": "must be a string"}])
        try:
            out.append(parse_path(text, f"paths[{i}]"))
        except InvalidInput as exc:
            raise InvalidInput("payload", exc.details) from None
    return out


@endpoint(RESTORE_PATHS_MSGS, write=True)
async def restore_paths(request: web.Request) -> web.Response:
    """Bring single paths back from the snapshot, each in one atomic step; everything
    else in the container is left as it is.  The restore rules apply (409 in use, hooks)."""
    cid, name = _cid_name(request)
    paths = parse_paths_body(await read_body(request))
    try:
        container, done = await _files(request).restore_paths(cid, name, paths, request[GUARD])
    except PathNotFound as exc:
        raise _not_found(exc) from None
    return ok("Paths restored from snapshot successfully",
              {**_container_data(container), "snapshot": name, "restored": done})


def add_file_routes(app: web.Application, base: str) -> None:
    app.router.add_get(base + "/{name}/tree", tree, allow_head=False)
    app.router.add_get(base + "/{name}/file", file, allow_head=False)
    app.router.add_get(base + "/{name}/diff", diff, allow_head=False)
    app.router.add_post(base + "/{name}/restore-paths", restore_paths)

