"""The OpenAPI entries of export and import (snapd/http/transfer.py)."""

from __future__ import annotations

from typing import Any

from snapd.http.openapi import COMMON, NAME_PATTERN, PARAMS, SCHEMAS, _envelope, _object, _op
from snapd.http.transfer import EXPORT_ROUTE, FORMATS_ROUTE, IMPORT_ROUTE, MEDIA_TYPE

TAG = {"name": "transfer", "description": "Export a snapshot as a portable stream (tar-based, with its metadata "
                                          "and a checksum; optionally only the changes since a base) and "
                                          "import such a stream into any pool."}
STREAM = {"type": "string", "contentMediaType": MEDIA_TYPE,
          "description": "A portable snapshot stream (see the README: Export and import)."}


def transfer_paths() -> dict[str, Any]:
    """The export and import path items (their schemas go into SCHEMAS)."""
    SCHEMAS["SnapshotImportedResponse"] = _envelope("Snapshot imported successfully", "SnapshotResult")
    SCHEMAS["ImportFormats"] = _object({
        "container_id": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
        "pool": {"type": "string", "description": "The pool that holds the container (for one not here: "
                                                  "where a portable import would make it, or `pool`)"},
        "formats": {"type": "array", "items": {"type": "string", "pattern": "^[a-z][a-z0-9]{0,15}$"},
                    "description": "Stream kinds accepted, the native one first (`btrfs`, `zfs`); "
                                   "`portable` wherever imports are accepted"},
        "native_bases": {"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN},
                         "description": "Snapshots of the container a native incremental may start from"},
    })
    SCHEMAS["ImportFormatsResponse"] = _envelope("Import formats", "ImportFormats")
    formats = _op("getImportFormats", "transfer", "The stream kinds an import of the container accepts here "
                  "and the snapshots a native incremental may start from (admin or a `replicate` token)",
                  "ImportFormatsResponse", COMMON + [409])
    formats["parameters"].append({
        "name": "pool", "in": "query", "required": False,
        "description": "For a container this daemon does not have: the pool an import would make it in "
                       "(409 when there is no such pool here)",
        "schema": {"type": "string", "minLength": 1}})
    export = _op("exportSnapshot", "transfer", "Stream the snapshot (or its changes since `base`) as a portable "
                 "stream (a token that may restore the container, or admin)", "SnapshotResponse",
                 COMMON, params=("id", "name"))
    export["responses"]["200"] = {"description": "The stream, chunked; cut off without its trailer if it fails "
                                                 "midway", "content": {MEDIA_TYPE: {"schema": STREAM}}}
    export["parameters"] += [
        {"name": "base", "in": "query", "required": False,
         "description": "Send only the changes since this snapshot of the container (the receiver must hold it)",
         "schema": {"type": "string", "pattern": NAME_PATTERN}},
        {"name": "compression", "in": "query", "required": False,
         "description": "`zstd` where the daemon has the zstandard module (default `none`)",
         "schema": {"enum": ["none", "zstd"]}},
    ]
    imp = _op("importSnapshot", "transfer", "Make a snapshot from a portable stream (the container too, if this "
              "daemon does not have it); admin only: a stream sets owners, set-id bits and device nodes",
              "SnapshotImportedResponse", COMMON + [408, 409, 507])
    imp["requestBody"] = {"required": True, "content": {MEDIA_TYPE: {"schema": STREAM},
                                                        "application/octet-stream": {"schema": STREAM}}}
    imp["parameters"] = [PARAMS["id"], {
        "name": "pool", "in": "query", "required": False,
        "description": "For a container this daemon does not have: the pool to make it in (`kind:root`, as "
                       "`snapd status` shows); default the first pool that accepts imports",
        "schema": {"type": "string", "minLength": 1}}]
    return {EXPORT_ROUTE: {"get": export}, IMPORT_ROUTE: {"post": imp}, FORMATS_ROUTE: {"get": formats}}
