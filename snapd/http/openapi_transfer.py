"""The OpenAPI entries of export and import (snapd/http/transfer.py)."""

from __future__ import annotations

from typing import Any

from snapd.http.openapi import COMMON, NAME_PATTERN, PARAMS, SCHEMAS, _envelope, _op
from snapd.http.transfer import EXPORT_ROUTE, IMPORT_ROUTE, MEDIA_TYPE

TAG = {"name": "transfer", "description": "Export a snapshot as a portable stream (tar-based, with its metadata "
                                          "and a checksum; optionally only the changes since a base) and "
                                          "import such a stream into any pool."}
STREAM = {"type": "string", "contentMediaType": MEDIA_TYPE,
          "description": "A portable snapshot stream (see the README: Export and import)."}


def transfer_paths() -> dict[str, Any]:
    """The export and import path items (their schemas go into SCHEMAS)."""
    SCHEMAS["SnapshotImportedResponse"] = _envelope("Snapshot imported successfully", "SnapshotResult")
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
    return {EXPORT_ROUTE: {"get": export}, IMPORT_ROUTE: {"post": imp}}
