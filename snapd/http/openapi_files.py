"""The OpenAPI entries of the file routes (snapd/http/files.py): paths and schemas."""

from __future__ import annotations

from typing import Any

from snapd.core.files import MAX_RESTORE_PATHS
from snapd.http.files import DEFAULT_PAGE, NDJSON
from snapd.http.openapi import COMMON, PARAMS, SCHEMAS, TIMESTAMP, _envelope, _object, _op, _ref

TAG = {"name": "files", "description": "Files in snapshots: browse a directory, download a file, diff against "
                                       "the live container or another snapshot, restore single paths. Reading "
                                       "needs a token that may restore the container, or one made with `files`."}
ESCAPE = ("Paths are absolute; names that are not UTF-8 are written with `\\xHH` per byte and a backslash as "
          "`\\\\`. `..`, NUL and other backslash sequences are refused; symlinks on the way are never followed "
          "and mount points never crossed.")
ESCAPED = r"([^\\\x00]|\\\\|\\x(?!00)[0-9a-f]{2})*"
"""Text in the name escape: no NUL, a backslash only as two backslashes or one and xHH."""
PATH_PATTERN = r"^(?!.*/\.\.(/|$))/" + ESCAPED + "$"
ENTRY_PATTERN = r"^(?![/.]*$)" + PATH_PATTERN[1:]
"""A path naming an entry, not the root."""
KINDS = ["file", "dir", "symlink", "device", "fifo", "socket", "unknown"]
CHANGES = ["added", "deleted", "modified", "type_changed"]
FIELDS = ["content", "mode", "owner", "target", "xattrs"]


def _schemas() -> None:
    SCHEMAS["FileEntry"] = _object({
        "name": {"type": "string", "description": "The name, escaped (see the tag)."},
        "type": {"enum": KINDS},
        "size": {"type": "integer", "minimum": 0},
        "mode": {"type": "string", "pattern": "^[0-7]{4}$", "description": "Permission bits, octal."},
        "uid": {"type": "integer", "minimum": 0},
        "gid": {"type": "integer", "minimum": 0},
        "mtime": TIMESTAMP,
        "target": {"type": "string", "description": "A symlink's target, as text, never followed."},
    }, required=["name", "type", "size", "mode", "uid", "gid", "mtime"])
    SCHEMAS["FileTree"] = _object({
        "container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"), "snapshot": _ref("SnapshotName"),
        "path": {"type": "string"},
        "entry": {"anyOf": [_ref("FileEntry"), {"type": "null"}],
                  "description": "The entry itself when the path is not a directory (then `entries` is null)."},
        "entries": {"type": ["array", "null"], "items": _ref("FileEntry"), "description": "Name order (bytes)."},
        "next": {"type": ["string", "null"], "description": "Give as `after` for the next page; null: the last."},
    })
    SCHEMAS["FileChange"] = _object({
        "path": {"type": "string"},
        "change": {"enum": CHANGES},
        "type": {"enum": KINDS},
        "old_type": {"enum": KINDS, "description": "type_changed: what it was."},
        "size": {"type": ["integer", "null"], "minimum": 0},
        "old_size": {"type": ["integer", "null"], "minimum": 0},
        "fields": {"type": "array", "items": {"enum": FIELDS}, "description": "modified: what differs."},
    }, required=["path", "change", "type", "size", "old_size"])
    SCHEMAS["FileDiff"] = _object({
        "container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"), "snapshot": _ref("SnapshotName"),
        "against": {"type": "string"},
        "changes": {"type": "array", "items": _ref("FileChange"), "description": "Walk order."},
        "next": {"type": ["string", "null"], "description": "Give as `after` for the next page; null: the last."},
    })
    SCHEMAS["RestorePathsBody"] = {
        "type": "object", "additionalProperties": False, "required": ["paths"],
        "properties": {"paths": {"type": "array", "minItems": 1, "maxItems": MAX_RESTORE_PATHS,
                                 "items": {"type": "string", "minLength": 2, "maxLength": 4096,
                                           "pattern": ENTRY_PATTERN},
                                 "description": "Absolute paths; a repeat, or a path inside another one given, is restored "
                                                "with it (the answer lists the outer one). " + ESCAPE}},
        "example": {"paths": ["/etc/hostname"]},
    }
    SCHEMAS["RestoredPath"] = _object({
        "path": {"type": "string"}, "type": {"enum": KINDS},
        "replaced": {"type": "boolean", "description": "false: the path was not in the container and was added."},
    })
    SCHEMAS["RestoredPaths"] = _object({
        "container_id": _ref("ContainerId"), "project_id": _ref("ProjectId"), "snapshot": _ref("SnapshotName"),
        "restored": {"type": "array", "items": _ref("RestoredPath")},
    })
    SCHEMAS["FileTreeResponse"] = _envelope("Directory retrieved successfully", "FileTree")
    SCHEMAS["FileDiffResponse"] = _envelope("Differences retrieved successfully", "FileDiff")
    SCHEMAS["RestoredPathsResponse"] = _envelope("Paths restored from snapshot successfully", "RestoredPaths")


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


PATH_PARAM = _query("path", "An absolute path in the snapshot. " + ESCAPE,
                    {"type": "string", "minLength": 2, "maxLength": 4096, "pattern": ENTRY_PATTERN}, required=True)
PATH_PARAM["example"] = "/etc/hostname"
LIMIT = _query("limit", f"At most this many (1-10000; default {DEFAULT_PAGE}).",
               {"type": "integer", "minimum": 1, "maximum": 10000})
AFTER = _query("after", "Continue after this `next` of the previous page (a name).",
               {"type": "string", "maxLength": 4096, "pattern": "^" + ESCAPED + "$"})
DIFF_AFTER = _query("after", "Continue after this `next` of the previous page (a path).",
                    {"type": "string", "maxLength": 4096, "pattern": PATH_PATTERN})


def file_paths(base: str) -> dict[str, Any]:
    """The file routes' path items (their schemas go into SCHEMAS)."""
    _schemas()
    both = [PARAMS["id"], PARAMS["name"]]
    tree = _op("getSnapshotTree", "files", "One directory of the snapshot, a page at a time",
               "FileTreeResponse", COMMON + [409], params=())
    tree["parameters"] = [*both, {**PATH_PARAM, "required": False, "description": "A directory (default /). " + ESCAPE,
                                  "schema": {"type": "string", "minLength": 1, "maxLength": 4096,
                                             "pattern": PATH_PATTERN}}, LIMIT, AFTER]
    download = _op("getSnapshotFile", "files", "The bytes of one regular file (Range, ETag)",
                   "FileTreeResponse", COMMON + [409, 416], params=())
    download["parameters"] = [*both, PATH_PARAM]
    ranges = {"Accept-Ranges": {"schema": {"const": "bytes"}}, "ETag": {"schema": {"type": "string"}}}
    download["responses"]["200"] = {"description": "The whole file", "headers": ranges,
                                    "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                          "format": "binary"}}}}
    download["responses"]["206"] = {"description": "The requested range", "headers": {
        **ranges, "Content-Range": {"schema": {"type": "string"}}},
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    download["responses"]["304"] = {"description": "If-None-Match matched the ETag"}
    diff = _op("getSnapshotDiff", "files", "What differs from the snapshot to the live container or another "
               "snapshot (NDJSON when asked for)", "FileDiffResponse", COMMON + [409], params=())
    diff["parameters"] = [*both, _query("against", "`live` (default) or another snapshot's name",
                                        {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}),
                          LIMIT, DIFF_AFTER]
    diff["responses"]["200"]["content"][NDJSON] = {"schema": {"type": "string",
                                                              "description": "One FileChange object a line."}}
    restore = _op("restoreSnapshotPaths", "files", "Bring single paths back from the snapshot, each atomically",
                  "RestoredPathsResponse", COMMON + [408, 409, 413, 507], "RestorePathsBody", params=("id", "name"))
    restore["requestBody"]["required"] = True
    return {
        base + "/{name}/tree": {"get": tree},
        base + "/{name}/file": {"get": download},
        base + "/{name}/diff": {"get": diff},
        base + "/{name}/restore-paths": {"post": restore},
    }

