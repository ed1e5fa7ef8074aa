"""`snapd policy list|show|set|delete|plan`: snapshot policies through the admin routes.

`set` reads the policy from a TOML or JSON file (its keys, or one
`[policies.NAME]` table) and/or KEY=VALUE arguments, whose values are read
as TOML values (`keep_last=3`, `keep.hourly=24`, `applies_to=["project:web"]`)
or else taken as text (`schedule=0 * * * *`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from snapd.cli import main as cli

ROUTE = f"{cli.ADMIN}/policies"


class UsageError(Exception):
    """A `policy set` input that cannot be read (exit 2)."""


def _stamp(value: str | None) -> str:
    """`2025-06-15 16:00:00Z`: absolute, as the plan is about the daemon's clock."""
    return "-" if value is None else value[:19].replace("T", " ") + "Z"


def _status_cells(status: dict) -> list[str]:
    return [str(status["containers"]), _stamp(status["last_run"]), _stamp(status["last_ok"]),
            _stamp(status["next"]), str(status["failed"])]


STATUS_HEADERS = ["CONTAINERS", "LAST RUN", "LAST OK", "NEXT", "FAILED"]


def policy_rows(policies: list[dict]) -> str:
    """`snapd policy list` (and the policies of `snapd status`)."""
    return cli._table([[p["name"], p["source"], p["policy"]["schedule"], *_status_cells(p["status"])]
                       for p in policies], ["NAME", "SOURCE", "SCHEDULE", *STATUS_HEADERS])


def policy_status_rows(policies: list[dict]) -> str:
    """The policies of `snapd status`: name, source and runs."""
    return cli._table([[p["name"], p["source"], *_status_cells(p)] for p in policies],
                      ["NAME", "SOURCE", *STATUS_HEADERS])


def _policy_text(entry: dict) -> str:
    body = entry["policy"]
    lines = [f"policy {entry['name']} ({'config file, read-only here' if entry['source'] == 'file' else 'set through the API'}"
             + (f", updated {_stamp(entry['updated_at'])}" if entry["updated_at"] else "") + ")"]
    for key, value in body.items():
        if key == "keep":
            value = ", ".join(f"{k} {n}" for k, n in value.items() if n) or "-"
        elif isinstance(value, list):
            value = ", ".join(value)
        lines.append(f"  {key}: {'-' if value is None else value}")
    st = entry["status"]
    lines.append(f"  containers: {st['containers']}   last run: {_stamp(st['last_run'])}   last ok: "
                 f"{_stamp(st['last_ok'])}   next: {_stamp(st['next'])}")
    lines.append(f"  taken: {st['taken']}   failed: {st['failed']} (since the daemon started)")
    lines += [f"  failing: {f['container_id']}: {f['error']}" for f in st["failing"]]
    return "\n".join(lines)


def plan_text(plan: dict) -> str:
    """The plan as a table: every snapshot with what keeps it or when and why it goes, then
    each container's next snapshots."""
    rows = []
    for c in plan["containers"]:
        for s in c["snapshots"]:
            fate = (f"delete {_stamp(s['delete_at'])} ({s['delete_reason']})" if s["delete_at"]
                    else "kept beyond the horizon")
            rows.append([c["container_id"], c["policy"], s["name"], _stamp(s["created_at"]),
                         ", ".join(s["keep"]) or "-", fate])
    head = f"plan from {_stamp(plan['now'])} to {_stamp(plan['until'])} ({plan['hours']:g} h)"
    if not plan["containers"]:
        return head + "\nno container follows a policy"
    lines = [head, cli._table(rows, ["CONTAINER", "POLICY", "SNAPSHOT", "CREATED", "KEPT BY", "FATE"])
             if rows else "no snapshots yet", "", "next snapshots:"]
    for c in plan["containers"]:
        times = c["next_snapshots"]
        shown = ", ".join(_stamp(t) for t in times[:6]) + (f", ... ({len(times)} in all)" if len(times) > 6 else "")
        lines.append(f"  {c['container_id']} ({c['policy']}): {shown or '-'}")
    return "\n".join(lines)


def _put_text(data: dict) -> str:
    entry = data["policy"]
    verb = "would be " if data["dry_run"] else ""
    lines = [f"policy {entry['name']} {verb}{'created' if data['created'] else 'updated'}"
             + (" (dry run: nothing changed)" if data["dry_run"] else "")]
    lines += [f"  container {m['container_id']}: {m['from'] or 'no policy'} -> {m['to'] or 'no policy'}"
              for m in data["moves"]]
    if data["plan"] is not None:
        lines += ["", plan_text(data["plan"])]
    return "\n".join(lines)


# -- reading a policy for `set` ---------------------------------------------------------------


def _value(text: str) -> Any:
    """A KEY=VALUE argument's value: a TOML value if it reads as one, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def read_policy(name: str, path: str | None, assignments: list[str]) -> dict[str, Any]:
    """The policy body from a file (TOML or JSON: its keys, or a `[policies.NAME]` table) and
    KEY=VALUE arguments (which win; `keep.hourly=24` sets one bucket)."""
    body: dict[str, Any] = {}
    if path is not None:
        try:
            raw = sys.stdin.read() if path == "-" else Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            body = json.loads(raw) if raw.lstrip().startswith("{") else tomllib.loads(raw)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{path} is neither TOML nor JSON: {exc}") from None
        if not isinstance(body, dict):
            raise UsageError(f"{path}: the policy must be a table of keys")
        tables = body.get("policies")
        if isinstance(tables, dict) and set(body) == {"policies"}:
            if name not in tables:
                raise UsageError(f"{path} has no [policies.{name}] table")
            body = tables[name]
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{item!r} is not KEY=VALUE (e.g. keep_last=3, keep.hourly=24)")
        head, dot, bucket = key.partition(".")
        if dot:
            nested = body.setdefault(head, {})
            if not isinstance(nested, dict):
                raise UsageError(f"{key}: {head} is not a table")
            nested[bucket] = _value(text)
        else:
            body[key] = _value(text)
    if not body:
        raise UsageError("give a policy file and/or KEY=VALUE arguments")
    return body


# -- commands ---------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    args.render = lambda d: policy_rows(d["policies"]) if d["policies"] else "no policies"
    return cli._request(args, "GET", ROUTE)


def cmd_show(args: argparse.Namespace) -> int:
    args.render = _policy_text
    return cli._request(args, "GET", f"{ROUTE}/{quote(args.name, safe='')}")


def cmd_set(args: argparse.Namespace) -> int:
    try:
        body = read_policy(args.name, args.file, args.assignments)
    except UsageError as exc:
        print(f"snapd policy set: {exc}", file=sys.stderr)
        return 2
    args.render = _put_text
    query = f"?dry_run=true&hours={args.hours:g}" if args.dry_run else ""
    return cli._request(args, "PUT", f"{ROUTE}/{quote(args.name, safe='')}{query}", body)


def cmd_delete(args: argparse.Namespace) -> int:
    args.render = lambda d: f"deleted policy {d['policy']['name']} (its snapshots stay; their expiry alone governs them)"
    return cli._request(args, "DELETE", f"{ROUTE}/{quote(args.name, safe='')}")


def cmd_plan(args: argparse.Namespace) -> int:
    args.render = plan_text
    query = f"?hours={args.hours:g}" + (f"&container={quote(args.container, safe='')}" if args.container else "")
    return cli._request(args, "GET", f"{ROUTE}/plan{query}")


def add_commands(group: Any, admin_cmd: Any) -> None:
    """The `policy` subcommands, in the group made by build_parser (admin_cmd adds --socket, --json)."""
    admin_cmd(group, "list", "list policies with their last run and next snapshot", cmd_list, "snapd policy list")
    show = admin_cmd(group, "show", "show one policy", cmd_show, "snapd policy show hourly")
    show.add_argument("name", help="policy name")
    put = admin_cmd(group, "set", "create or change a policy set through the API (the config file's are read-only)",
                    cmd_set, "snapd policy set hourly -f policy.toml",
                    "snapd policy set hourly schedule='0 * * * *' 'applies_to=[\"project:web\"]' keep_last=3 "
                    "keep.hourly=24 keep.daily=7",
                    "snapd policy set hourly -f policy.toml keep.daily=14 --dry-run")
    put.add_argument("name", help="policy name (a-z, 0-9, _ and -)")
    put.add_argument("-f", "--file", help="TOML or JSON file with the policy's keys, or with a [policies.NAME] "
                                          "table ('-': standard input)")
    put.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help="keys to set (TOML values)")
    put.add_argument("--dry-run", action="store_true", help="show what would change and the plan; change nothing")
    put.add_argument("--hours", type=float, default=24.0, metavar="N", help="the dry run's plan horizon (default 24)")
    delete = admin_cmd(group, "delete", "delete a policy set through the API (its snapshots stay)", cmd_delete,
                       "snapd policy delete hourly")
    delete.add_argument("name", help="policy name")
    plan = admin_cmd(group, "plan", "per container under a policy: next snapshots, and for every snapshot the rule "
                     "that keeps it or when and why it goes", cmd_plan,
                     "snapd policy plan", "snapd policy plan --hours 168 --container 507f1f77bcf86cd799439011")
    plan.add_argument("--hours", type=float, default=24.0, metavar="N", help="the horizon (default 24)")
    plan.add_argument("--container", metavar="ID", help="only this container")
