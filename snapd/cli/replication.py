"""`snapd replicate ID --to NAME [--wait] [--full]` and `snapd replications` (admin only)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from snapd.cli.main import _connection_options, _human_size, _request, _table, _when
from snapd.core.text import visible

if TYPE_CHECKING:
    from snapd.cli.client import Endpoint

JOBS = "/api/v1/admin/replications"
POLL = 0.5
"""Seconds between looks at a job `--wait` follows."""
BAR = 30


def _progress(job: dict) -> str:
    sent, total = job["snapshots_sent"], job["snapshots_total"]
    expected = job["bytes_expected"]
    done = job["bytes_sent"] / expected if expected and expected > job["bytes_sent"] else (
        sent / total if total else 0.0)
    bar = "#" * round(done * BAR)
    rate = f"{_human_size(int(job['rate']))}/s" if job["rate"] else "-"
    eta = f"eta {job['eta']:.0f}s" if job["eta"] is not None else ""
    return (f"[{bar.ljust(BAR)}] {sent}/{total} snapshots {_human_size(job['bytes_sent'])} {rate} "
            f"{visible(job['current'] or '')} {eta}").rstrip()


def _summary(job: dict) -> str:
    line = (f"job {job['id']}: {job['state']}, {job['snapshots_sent']}/{job['snapshots_total']} snapshots, "
            f"{_human_size(job['bytes_sent'])} to {job['target']}")
    if job["last_error"]:
        line += f"\n  {job['last_error']}"
    if job["diverged"]:
        line += "\n  recover: remove those snapshots on the target, or send in full: snapd replicate " \
                f"{job['container_id']} --to {job['target']} --full"
    return line


def _started_by(job: dict) -> str:
    """`request`, or the policy and the attempt: `hourly #3`."""
    return "request" if job["policy"] is None else f"{visible(job['policy'])} #{job['attempt']}"


def _follow(args: argparse.Namespace, endpoint: Endpoint, body: dict, tty: bool) -> tuple[int, dict]:
    """Start (or join) the job, then poll it until it ends, a progress bar on stderr when
    it is a terminal; the last answer about the job (or the start's refusal)."""
    from snapd.cli.client import call

    status, envelope = call(endpoint, "POST", JOBS, body)
    if status != 202:
        return status, envelope
    job = envelope["data"]["job"]
    while job["state"] in ("queued", "running"):
        if tty:
            print(f"\r{_progress(job)}\x1b[K", end="", file=sys.stderr, flush=True)
        time.sleep(POLL)
        status, envelope = call(endpoint, "GET", f"{JOBS}/{job['id']}")
        if status != 200:
            return status, envelope
        job = envelope["data"]["job"]
    if tty:
        print(f"\r{_progress(job)}\x1b[K", file=sys.stderr)
    args.last_state = job["state"]
    return status, envelope


def cmd_replicate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"container": args.id, "target": args.to}
    if args.full:
        body["full"] = True
    args.render = lambda d: _summary(d["job"])
    if not args.wait:
        return _request(args, "POST", JOBS, body)
    code = _request(args, "POST", JOBS, body, send=lambda endpoint: _follow(args, endpoint, body, sys.stderr.isatty()))
    return code if code else 0 if args.last_state == "done" else 1


def cmd_replications(args: argparse.Namespace) -> int:
    def render(d: dict) -> str:
        if not d["jobs"]:
            return "no replication jobs since the daemon started"
        return _table([[j["id"], j["container_id"], j["target"], _started_by(j), j["state"],
                        f"{j['snapshots_sent']}/{j['snapshots_total']}", _human_size(j["bytes_sent"]),
                        _when(j["started_at"]), _when(j["next_retry_at"]),
                        j["last_error"] or "-"] for j in d["jobs"]],
                      ["JOB", "CONTAINER", "TARGET", "BY", "STATE", "SNAPSHOTS", "SENT", "STARTED", "NEXT RETRY",
                       "LAST ERROR"])

    args.render = render
    return _request(args, "GET", JOBS)


def add_commands(sub: Any, examples: Any, cid: str) -> None:
    """The replication commands, on main's subparsers (`examples` formats an epilog)."""
    def parser(name: str, help_: str, *lines: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_ + " (admin only)", epilog=examples(*lines),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _connection_options(p)
        p.add_argument("--json", action="store_true", help="print the raw JSON envelope")
        return p

    rp = parser("replicate", "send a container's snapshots to a replication target (a [targets.NAME] of the "
                "config), incrementally", f"snapd replicate {cid} --to backup1 --wait",
                f"snapd replicate {cid} --to backup1 --full")
    rp.add_argument("id", help="container id (24 hex characters)")
    rp.add_argument("--to", required=True, metavar="TARGET", help="the target's name")
    rp.add_argument("--wait", action="store_true", help="follow the job to its end (a progress bar on a terminal); "
                    "exit 1 if it fails")
    rp.add_argument("--full", action="store_true", help="send the first snapshot in full, even to a diverged target")
    rp.set_defaults(func=cmd_replicate, last_state=None)
    ls = parser("replications", "list the replication jobs since the daemon started, newest first",
                "snapd replications")
    ls.set_defaults(func=cmd_replications)
