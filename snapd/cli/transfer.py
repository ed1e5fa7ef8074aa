"""`snapd export` and `snapd import`: portable streams to stdout and from stdin."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlencode

from snapd.cli.main import _answer, _request, _snap_path, _endpoint
from snapd.core.text import visible


def cmd_export(args: argparse.Namespace) -> int:
    from snapd.cli.client import ClientError, stream

    if sys.stdout.isatty():
        print("snapd export: the stream is binary; redirect it to a file or a pipe", file=sys.stderr)
        return 2
    query = {k: v for k, v in (("base", args.base), ("compression", args.compression)) if v}
    path = _snap_path(args, "/export") + ("?" + urlencode(query) if query else "")
    try:
        status, envelope = stream(_endpoint(args), path, sys.stdout.buffer)
    except ClientError as exc:
        print(f"snapd: {visible(str(exc))}", file=sys.stderr)
        return 1
    return 0 if status == 200 else _answer(args, status, envelope)


def cmd_import(args: argparse.Namespace) -> int:
    from snapd.cli.client import upload

    if sys.stdin.isatty():
        print("snapd import: give the stream on stdin (snapd import ID < FILE)", file=sys.stderr)
        return 2
    path = _snap_path(args, "/import") + ("?" + urlencode({"pool": args.pool}) if args.pool else "")
    return _request(args, "POST", path, send=lambda endpoint: upload(endpoint, path, sys.stdin.buffer.read))


def add_commands(client: Any, cid: str) -> None:
    """The export and import commands, made by main's `client` helper."""
    export = client("export", "write a snapshot (or its changes since --base) as a portable stream to stdout",
                    cmd_export, f"snapd export {cid} snap-20250115-103000 > web.csnap",
                    f"snapd export {cid} snap-20250116-103000 --base snap-20250115-103000 > web-incr.csnap")
    export.add_argument("--base", metavar="NAME", help="only the changes since this snapshot")
    export.add_argument("--compression", choices=("none", "zstd"), help="zstd needs the zstandard module "
                        "on the daemon (default none)")
    imp = client("import", "make a snapshot from a portable stream on stdin (the container too, if missing)",
                 cmd_import, f"snapd import {cid} < web.csnap",
                 f"snapd import {cid} --pool btrfs:/var/lib/containers < web.csnap", name_arg=False)
    imp.add_argument("--pool", metavar="KIND:ROOT", help="where to make a container this daemon does not have "
                     "(default: the first pool that accepts imports)")
