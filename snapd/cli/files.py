"""CLI commands for files in snapshots: ls, cat, diff, restore-paths."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlencode

from snapd.core.text import visible

if TYPE_CHECKING:
    from snapd.cli.client import Endpoint

PAGE = 10_000


def _entry_line(e: dict) -> str:
    target = f" -> {e['target']}" if "target" in e else ""
    return f"{e['type']:<7} {e['mode']} {e['uid']:>5}:{e['gid']:<5} {e['size']:>12} {e['mtime']}  {e['name']}{target}"


def render_ls(data: dict) -> str:
    if data["entries"] is None:
        return _entry_line(data["entry"])
    lines = [_entry_line(e) for e in data["entries"]]
    if data["next"] is not None:
        lines.append(f"(more: snapd ls ... --after {data['next']!r})")
    return "\n".join(lines) if lines else "(empty directory)"


MARK = {"added": "A", "deleted": "D", "modified": "M", "type_changed": "T"}


def render_diff(data: dict) -> str:
    lines = []
    for c in data["changes"]:
        what = f" ({', '.join(c['fields'])})" if c.get("fields") else ""
        if c["change"] == "type_changed":
            what = f" ({c['old_type']} -> {c['type']})"
        lines.append(f"{MARK[c['change']]} {c['path']}{what}")
    if data["next"] is not None:
        lines.append(f"(more after {data['next']}: use --json with the API's `after`)")
    return "\n".join(lines) if lines else "no differences"


def render_restored(data: dict) -> str:
    return "\n".join(f"restored {r['path']} ({r['type']}, {'replaced' if r['replaced'] else 'added'})"
                     for r in data["restored"])


def add_commands(client: Callable[..., argparse.ArgumentParser], request: Callable[..., int],
                 snap_path: Callable[..., str], endpoint_of: Callable[[argparse.Namespace], Endpoint], cid: str) -> None:
    """Register the file commands on the parser through main's `client` helper."""
    name = "snap-20250115-103000"

    def cmd_ls(args: argparse.Namespace) -> int:
        args.render = render_ls
        query = {"path": args.path, "limit": PAGE, **({"after": args.after} if args.after else {})}
        return request(args, "GET", snap_path(args, "/tree?" + urlencode(query)))

    def cmd_cat(args: argparse.Namespace) -> int:
        from snapd.cli.client import ClientError, stream

        try:
            status, error = stream(endpoint_of(args), snap_path(args, "/file?" + urlencode({"path": args.path})),
                                   sys.stdout.buffer)
        except ClientError as exc:
            print(f"snapd: {visible(str(exc))}", file=sys.stderr)
            return 1
        if status != 200:
            details = "".join(f"\n  {d.get('field')}: {d.get('reason')}" for d in error.get("details", [])
                              if d.get("field") != "request_id")
            print(visible(f"snapd: {status} {error.get('message')}{details}"), file=sys.stderr)
            return 1
        return 0

    def cmd_diff(args: argparse.Namespace) -> int:
        args.render = render_diff
        return request(args, "GET", snap_path(args, "/diff?" + urlencode({"against": args.against, "limit": PAGE})))

    def cmd_restore_paths(args: argparse.Namespace) -> int:
        args.render = render_restored
        return request(args, "POST", snap_path(args, "/restore-paths"), {"paths": args.paths})

    ls = client("ls", "list a directory of a snapshot", cmd_ls, f"snapd ls {cid} {name} /etc")
    ls.add_argument("path", nargs="?", default="/", help="a directory in the snapshot (default /)")
    ls.add_argument("--after", help="continue after this name (from a previous page)")
    cat = client("cat", "write a file of a snapshot to standard output", cmd_cat,
                 f"snapd cat {cid} {name} /etc/nginx/nginx.conf > nginx.conf")
    cat.add_argument("path", help="a regular file in the snapshot")
    diff = client("diff", "what changed since the snapshot (or between two snapshots)", cmd_diff,
                  f"snapd diff {cid} {name}", f"snapd diff {cid} {name} --against snap-20250116-103000")
    diff.add_argument("--against", default="live", help="live (default) or another snapshot's name")
    rp = client("restore-paths", "bring single paths back from a snapshot, each atomically", cmd_restore_paths,
                f"snapd restore-paths {cid} {name} /etc/nginx /srv/app/config.yml")
    rp.add_argument("paths", nargs="+", metavar="PATH", help="absolute paths in the snapshot")

