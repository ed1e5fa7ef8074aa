"""The `snapd` command: `serve` runs the daemon; the rest talk to it.

Exit status: 0 success, 1 an API or connection error (message printed),
2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence
from urllib.parse import quote, urlsplit

from snapd import __version__
from snapd.core.clock import Clock
from snapd.host.config import DEFAULT_CONFIG, DEFAULT_SOCKET, Config, ConfigError, build, check, load_file
from snapd.core.text import human_size, visible

if TYPE_CHECKING:
    from snapd.cli.client import Endpoint

DEMO_CONTAINER = "507f1f77bcf86cd799439011"


# -- serve -----------------------------------------------------------------------


def _dev_config(args: argparse.Namespace) -> Config:
    """The embedded default: everything under one local folder, no root needed."""
    base = Path(args.dev_dir).absolute()
    pool = base / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    demo = pool / DEMO_CONTAINER
    if not demo.exists():
        (demo / "etc").mkdir(parents=True)
        (demo / "etc" / "hostname").write_text("demo\n")
        (demo / "README").write_text("A demo container made by `snapd serve --dev`.\n")
    flags = {
        **_serve_flags(args),
        "socket": args.socket or str(base / "api.sock"),
        "state_dir": args.state_dir or str(base / "state"),
        "pools": args.pool or [f"overlay:{pool}"],
    }
    return build({}, flags, "flags")


def _serve_config(args: argparse.Namespace) -> Config:
    if args.dev:
        return _dev_config(args)
    file_values: dict[str, Any] = {}
    if args.config:
        file_values = load_file(Path(args.config))
    elif DEFAULT_CONFIG.exists():
        file_values = load_file(DEFAULT_CONFIG)
    return build(file_values, _serve_flags(args), str(args.config or DEFAULT_CONFIG))


def _serve_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "socket": args.socket,
        "state_dir": args.state_dir,
        "pools": args.pool,
        "listen": args.listen,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "admin_group": args.admin_group,
        "listen_interfaces": args.listen_interface,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "request_timeout": args.request_timeout,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    from snapd.host import logsetup
    from snapd.host import systemd
    from snapd.server import Daemon, clear_socket_path

    def load() -> Config:
        cfg = _serve_config(args)
        check(cfg)
        return cfg

    try:
        cfg = load()
        if not systemd.activation_pending():  # systemd's socket is not ours to probe
            clear_socket_path(cfg.socket)
    except ConfigError as exc:
        print(f"snapd: {exc}", file=sys.stderr)
        return 2
    logsetup.configure(cfg.log_level, cfg.log_format)
    daemon = Daemon(cfg, Clock(), reload_config=load)

    async def run() -> None:
        task = asyncio.create_task(daemon.run())
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if args.dev and daemon.ready.is_set():
            print(
                f"container-snapd {__version__} (dev mode): state, socket and an overlay pool under "
                f"{Path(args.dev_dir).absolute()}\n"
                f"  socket: {cfg.socket}\n"
                f"  pool:   {cfg.pools[0]}  (demo container {DEMO_CONTAINER})\n"
                f"  try:    curl --unix-socket {cfg.socket} "
                f"http://localhost/api/v1/containers/{DEMO_CONTAINER}/snapshots\n"
                f"  Ctrl-C stops it.",
                file=sys.stderr,
                flush=True,
            )
        await task

    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(f"snapd: {exc}", file=sys.stderr)
        return 2
    return 0


# -- client commands ------------------------------------------------------------


def _human_size(n: int | None) -> str:
    return "-" if n is None else human_size(n)


def _relative(seconds: float) -> str:
    future = seconds > 0
    s = abs(seconds)
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= span:
            text = f"{s / span:.0f}{unit}"
            break
    else:
        text = f"{s:.0f}s"
    return f"in {text}" if future else f"{text} ago"


def _when(stamp: str | None) -> str:
    if stamp is None:
        return "-"
    from datetime import datetime

    ts = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=__import__("datetime").timezone.utc)
    return f"{stamp[:19].replace('T', ' ')}Z ({_relative(ts.timestamp() - time.time())})"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _snapshot_rows(snaps: list[dict], wide: bool = False) -> str:
    """A table of snapshots; `wide`: with the detail routes' policy, hold and keep columns."""
    def extra(s: dict) -> list[str]:
        keep = "-" if s.get("keep") is None else ", ".join(s["keep"]) or "goes now"
        return [s["policy"] or "-", s["hold"]["reason"] if s["hold"] else "-", keep] if wide else []

    return _table(
        [
            [s["name"], s["alias"] or "-", _when(s["created_at"]), _when(s["expires_at"]),
             _when(s["last_used_at"]), _human_size(s["size"]), *extra(s)]
            for s in snaps
        ],
        ["NAME", "ALIAS", "CREATED", "EXPIRES", "LAST USED", "SIZE", *(["POLICY", "HOLD", "KEPT BY"] if wide else [])],
    )


def _connection_options(p: argparse.ArgumentParser) -> None:
    """--socket, --url, --token-file and --tls-ca: which daemon a command talks to."""
    p.add_argument("--socket", help="daemon socket (default $SNAPD_SOCKET or /run/container-snapd/api.sock)")
    p.add_argument("--url", help="a daemon's TCP listener instead, http(s)://HOST[:PORT] (default $SNAPD_URL)")
    p.add_argument("--token-file", metavar="FILE",
                   help="send the bearer token in FILE (default $SNAPD_TOKEN_FILE; needed over TCP)")
    p.add_argument("--tls-ca", metavar="FILE", help="PEM certificates to trust for https "
                   "(default $SNAPD_TLS_CA, else the system's)")


def _usage_error(message: str) -> NoReturn:
    print(f"snapd: {visible(message)}", file=sys.stderr)
    raise SystemExit(2)


def _url(text: str) -> str:
    """`text` checked to be http(s)://HOST[:PORT] with nothing after; its canonical form."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        _usage_error(f"--url {text!r}: {exc}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _usage_error(f"--url {text!r}: give http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        _usage_error(f"--url {text!r}: only a scheme, host and port (the token goes in --token-file)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        _usage_error(f"--token-file {path}: {exc.strerror if isinstance(exc, OSError) else 'not text'}")
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        _usage_error(f"--token-file {path}: holds no token (one line, no spaces)")
    return token


def _endpoint(args: argparse.Namespace) -> Endpoint:
    """The daemon this command talks to: flags first, then $SNAPD_URL / $SNAPD_SOCKET, then the
    default socket; exits 2 on a bad value."""
    from snapd.cli.client import Endpoint

    env = os.environ
    socket, url = getattr(args, "socket", None), getattr(args, "url", None)
    if socket and url:
        _usage_error("give --socket or --url, not both")
    if not socket and not url:
        url = env.get("SNAPD_URL") or None
        socket = None if url else env.get("SNAPD_SOCKET")
    token_file = getattr(args, "token_file", None) or env.get("SNAPD_TOKEN_FILE")
    tls_ca = getattr(args, "tls_ca", None) or env.get("SNAPD_TLS_CA")
    if tls_ca and not Path(tls_ca).is_file():
        _usage_error(f"--tls-ca {tls_ca}: no such file")
    return Endpoint(socket=None if url else Path(socket or DEFAULT_SOCKET), url=_url(url) if url else None,
                    token=_token(token_file) if token_file else None, tls_ca=Path(tls_ca) if tls_ca else None)


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None,
             send: Callable[[Endpoint], tuple[int, dict]] | None = None) -> int:
    """One request (or `send(endpoint)`, which makes it), its answer printed."""
    from snapd.cli.client import ClientError, call

    endpoint = _endpoint(args)
    try:
        status, envelope = send(endpoint) if send else call(endpoint, method, path, body)
    except ClientError as exc:
        print(f"snapd: {visible(str(exc))}", file=sys.stderr)
        return 1
    return _answer(args, status, envelope)


def _answer(args: argparse.Namespace, status: int, envelope: dict) -> int:
    if args.json:
        print(json.dumps(envelope, indent=2))  # ensure_ascii: every control character escaped
        return 0 if 200 <= status < 300 else 1
    envelope = _shown(envelope)
    if not 200 <= status < 300:  # 202: a job started
        details = envelope.get("details", [])
        rid = next((d.get("value") for d in details if d.get("field") == "request_id"), None)
        lines = "".join(f"\n  {d.get('field')}: {d.get('reason')}" for d in details if d.get("field") != "request_id")
        suffix = f" (request {rid})" if rid else ""
        print(f"snapd: {status} {envelope.get('message')}{suffix}{lines}", file=sys.stderr)
    else:
        print(_render(args, envelope["data"]))
    return 0 if 200 <= status < 300 else 1


def _shown(value: Any) -> Any:
    """`value` with every string in it made safe for a terminal (text.visible)."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


def _render(args: argparse.Namespace, data: dict) -> str:
    render = getattr(args, "render", None)
    if render is not None:
        return render(data)
    if args.command == "list":
        head = f"container {data['container_id']} (project {data['project_id'] or '-'})"
        if not data["snapshots"]:
            return head + "\nno snapshots"
        return head + "\n" + _snapshot_rows(data["snapshots"], wide=args.wide)
    if args.command == "delete":
        return f"deleted {data['snapshot_name']} of {data['container_id']}"
    if args.command == "restore":
        return f"restored {args.id} from {data['snapshot']['name']}"
    if args.command in ("hold", "release"):
        return _snapshot_rows([data["snapshot"]], wide=True)
    return _snapshot_rows([data["snapshot"]])


def _snap_path(args: argparse.Namespace, suffix: str = "") -> str:
    base = f"/api/v1/containers/{quote(args.id, safe='')}/snapshots"
    if getattr(args, "name", None) is not None:
        base += "/" + quote(args.name, safe="")
    return base + suffix


def cmd_list(args: argparse.Namespace) -> int:
    if args.wide:
        return _request(args, "GET", f"/api/v1/containers/{quote(args.id, safe='')}/snapshot-details")
    return _request(args, "GET", _snap_path(args))


def cmd_show(args: argparse.Namespace) -> int:
    return _request(args, "GET", _snap_path(args))


def cmd_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.alias is not None:
        body["alias"] = args.alias
    if args.expiry is not None:
        body["expiry"] = args.expiry
    return _request(args, "POST", _snap_path(args), body)


def cmd_restore(args: argparse.Namespace) -> int:
    return _request(args, "PATCH", _snap_path(args))


def cmd_alias(args: argparse.Namespace) -> int:
    if args.clear == (args.alias is not None):
        print("snapd alias: give either ALIAS or --clear", file=sys.stderr)
        return 2
    return _request(args, "PATCH", _snap_path(args, "/alias"), {"alias": args.alias})


def cmd_delete(args: argparse.Namespace) -> int:
    return _request(args, "DELETE", _snap_path(args))


def cmd_hold(args: argparse.Namespace) -> int:
    return _request(args, "PUT", _snap_path(args, "/hold"), {"reason": args.reason})


def cmd_release(args: argparse.Namespace) -> int:
    return _request(args, "DELETE", _snap_path(args, "/hold"))


# -- admin commands --------------------------------------------------------------------

ADMIN = "/api/v1/admin"


def _token_rows(tokens: list[dict]) -> str:
    def scope(t: dict) -> str:
        s = t["scope"]
        if s["admin"]:
            return "admin"
        parts = [f"project={s['project']}"] if s["project"] else []
        parts += [f"containers={','.join(s['containers'])}"] if s["containers"] else []
        parts += ["read-only"] if s["read_only"] else []
        parts += ["metrics"] if s["metrics"] else []
        parts += ["files"] if s.get("files") else []
        parts += ["replicate"] if s.get("replicate") else []
        return " ".join(parts)

    def state(t: dict) -> str:
        if t["revoked_at"]:
            return "revoked"
        if t["expires_at"] and _when(t["expires_at"]).endswith("ago)"):
            return "expired"
        return "active"

    return _table(
        [[t["id"], t["label"] or "-", scope(t), state(t), _when(t["created_at"]), _when(t["last_used_at"]),
          _when(t["expires_at"])] for t in tokens],
        ["ID", "LABEL", "SCOPE", "STATE", "CREATED", "LAST USED", "EXPIRES"],
    )


def cmd_token_create(args: argparse.Namespace) -> int:
    if args.admin == bool(args.project) and not args.metrics and not args.replicate:
        print("snapd token create: give --project P, --admin or --replicate", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"admin": args.admin, "read_only": args.read_only, "metrics": args.metrics}
    for flag in ("files", "replicate"):
        if getattr(args, flag):
            body[flag] = True
    for key, value in (("project", args.project), ("label", args.label), ("expires", args.expires)):
        if value is not None:
            body[key] = value
    if args.container:
        body["containers"] = args.container
    args.render = lambda d: (
        f"{d['secret']}\n(token {d['token']['id']}: shown once, store it now; `snapd token revoke "
        f"{d['token']['id']}` ends it)"
    )
    return _request(args, "POST", f"{ADMIN}/tokens", body)


def cmd_token_list(args: argparse.Namespace) -> int:
    args.render = lambda d: _token_rows(d["tokens"]) if d["tokens"] else "no tokens"
    return _request(args, "GET", f"{ADMIN}/tokens")


def cmd_token_revoke(args: argparse.Namespace) -> int:
    args.render = lambda d: f"revoked token {d['token']['id']}"
    return _request(args, "DELETE", f"{ADMIN}/tokens/{quote(args.token_id, safe='')}")


def _limits_text(limits: dict) -> str:
    def most(n: int) -> str:
        return f"at most {n}" if n else "no limit"

    return (f"reserve {limits['reserve']}, inode reserve {limits['reserve_inodes']}; snapshots "
            f"per container {most(limits['max_snapshots_per_container'])}, "
            f"per project {most(limits['max_snapshots_per_project'])}; snapshots made by request expire "
            + (f"after {limits['manual_expiry']:g} days" if limits["manual_expiry"] else "never"))


def _freezes_text(counts: dict) -> str:
    return (f"freezes: {counts.get('frozen', 0)} frozen, {counts.get('abandoned', 0)} abandoned, "
            f"{counts.get('not_running', 0)} not running")


def _lanes_text(lanes: dict) -> list[str]:
    """The thread lanes, then each project's long operations: running, then queued in order."""
    limit = lanes["max_concurrent_per_project"]
    threads = lanes.get("threads") or {}
    lines = ["long operations per project: " + (f"at most {limit} at once" if limit else "no limit")
             + "".join(f"; {lane} lane {t['threads']} threads, {t['waiting']} waiting"
                       for lane, t in sorted(threads.items()))]
    for p in lanes["projects"]:
        queue = [f"{o['kind']} {o['container']}" for o in p["operations"] if o["state"] == "queued"]
        lines.append(f"  {p['project']}: {p['running']} running, {p['queued']} queued"
                     + (f" ({', '.join(queue)})" if queue else ""))
    return lines


def _status_text(d: dict) -> str:
    lines = [f"container-snapd {d['version']}, up {_relative(-d['uptime_s']).replace(' ago', '')}"
             f" (pid {d['pid']})",
             f"snapshots: {d['snapshots_total']}   operations in flight: {d['inflight']}",
             f"next expiry: {_when(d['reaper']['next_expiry'])}   reaper: {d['reaper']['deleted']} deleted, "
             f"{d['reaper']['failing']} failing",
             "listeners: " + (", ".join(d["listeners"]) or "-"),
             _freezes_text(d.get("freezes") or {}),
             *(_lanes_text(d["lanes"]) if d.get("lanes") else []),
             "",
             _table([[p["pool"], p["kind"], _human_size(p["free_bytes"]),
                      "n/a" if p["free_inodes"] is None else str(p["free_inodes"]), str(p["snapshots"]),
                      _human_size(p["bytes"])] for p in d["pools"]],
                    ["POOL", "BACKEND", "FREE", "FREE INODES", "SNAPSHOTS", "HELD"]),
             "",
             "limits (a create beyond one gets 507):"]
    lines += [f"  {p['pool']}: {_limits_text(p['limits'])}" for p in d["pools"]]
    if d.get("policies"):
        from snapd.cli.policy import policy_status_rows

        lag = d["scheduler"]
        lines += ["", f"policies (schedule lag p50 {_seconds(lag['lag_p50_s'])}, p99 {_seconds(lag['lag_p99_s'])}, "
                      f"max {_seconds(lag['lag_max_s'])} over {lag['snapshots']} snapshots):",
                  policy_status_rows(d["policies"])]
    if d.get("problems"):
        lines += ["", f"set aside ({len(d['problems'])}; retried at the next start):"]
        lines += [f"  {p['source']}{' ' + p['pool'] if p['pool'] else ''}: {p['problem']}" for p in d["problems"]]
    if d["last_errors"]:
        lines += ["", "last errors:"] + [f"  {e['time']} {e['logger']}: {e['message']}" for e in d["last_errors"]]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def cmd_status(args: argparse.Namespace) -> int:
    args.render = _status_text
    return _request(args, "GET", f"{ADMIN}/status")


def _container_text(d: dict) -> str:
    return "\n".join(f"{k}: {'-' if v is None else v}" for k, v in d.items())


def cmd_container_show(args: argparse.Namespace) -> int:
    args.render = _container_text
    return _request(args, "GET", f"{ADMIN}/containers/{quote(args.id, safe='')}")


def cmd_container_set_label(args: argparse.Namespace) -> int:
    """`snapd container set-project|set-layout ID VALUE|--clear`."""
    value = getattr(args, args.label)
    if args.clear == (value is not None):
        print(f"snapd container set-{args.label}: give either {args.label.upper()} or --clear", file=sys.stderr)
        return 2
    args.render = _container_text
    return _request(args, "PUT", f"{ADMIN}/containers/{quote(args.id, safe='')}/{args.label}",
                    {args.label: value})


def _reconcile_text(d: dict) -> str:
    verb = "would" if d["dry_run"] else "did"
    lines = ["dry run: nothing changed" if d["dry_run"] else "reconcile applied"]
    for e in d["journal"]:
        lines.append(f"journal: {verb} settle unfinished {e['op']} of {e['container_id']}"
                     f"{'@' + e['snapshot'] if e['snapshot'] else ''} (pool {e['pool']}, entry {e['id']})")
    for p in d["pools"]:
        kinds = ("adopt", "forget", "update_ref", "rehome", "conflict", "update_hold", "name_mark")
        actions = [(kind.replace("_", "-"), a) for kind in kinds
                   for a in p.get(kind, [])]
        head = f"pool {p['pool']}: " + (f"error: {p['error']}" if p["error"] else
                                         f"{len(actions)} action(s)" if actions else "in agreement")
        lines.append(head)
        if p["refused"]:
            lines.append(f"  refused: {p['refused']}")
        for what, a in actions:
            extra = f" -> {a['ref']}" if "ref" in a else ""
            lines.append(f"  {verb} {what} {a['container_id']}/{a['snapshot']}{extra}  (why: {a['why']})")
    return "\n".join(lines)


def cmd_reconcile(args: argparse.Namespace) -> int:
    args.render = _reconcile_text
    return _request(args, "POST", f"{ADMIN}/reconcile", {"dry_run": bool(args.dry_run)})


def _expiry_text(d: dict) -> str:
    if not d["snapshots"]:
        return f"nothing expires by {_when(d['until'])}"
    rows = [[_when(s["expires_at"]) + (" OVERDUE" if s["overdue"] else ""), s["container_id"], s["name"],
             s["alias"] or "-", s["pool"],
             f"failing x{s['failing']['attempts']}: {s['failing']['error']}" if s["failing"] else "-"]
            for s in d["snapshots"]]
    more = f"\n({d['total'] - len(d['snapshots'])} more not shown; raise --limit)" if d["truncated"] else ""
    return (f"{d['total']} snapshots expire by {_when(d['until'])}\n"
            + _table(rows, ["EXPIRES", "CONTAINER", "SNAPSHOT", "ALIAS", "POOL", "FAILING"]) + more)


def cmd_expiry_plan(args: argparse.Namespace) -> int:
    args.render = _expiry_text
    query = f"?hours={args.hours:g}" + (f"&limit={args.limit}" if args.limit is not None else "")
    return _request(args, "GET", f"{ADMIN}/expiry{query}")


# -- argument parsing ----------------------------------------------------------------


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapd",
        description="container-snapd: snapshots of containers' filesystems (ZFS, btrfs, overlay copies).",
        epilog=_examples("snapd serve --dev", "snapd list 507f1f77bcf86cd799439011"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"snapd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, *examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=_examples(*examples),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        return p

    serve = add("serve", "run the daemon",
                "snapd serve --dev",
                "snapd serve --pool zfs:tank/containers --listen 127.0.0.1:7070",
                "snapd serve --config /etc/container-snapd/config.toml")
    serve.add_argument("--config", help=f"TOML config file (default {DEFAULT_CONFIG} if it exists)")
    serve.add_argument("--socket", help=f"Unix socket path (default {DEFAULT_SOCKET})")
    serve.add_argument("--listen", action="append", default=[], metavar="HOST:PORT",
                       help="also serve TCP on HOST:PORT (repeatable)")
    serve.add_argument("--state-dir", help="where the store lives (default /var/lib/container-snapd)")
    serve.add_argument("--pool", action="append", default=[], metavar="BACKEND:ROOT",
                       help="a pool: overlay|btrfs|zfs|auto and its root (repeatable)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["kv", "json"], help="log lines as key=value (default) or JSON")
    serve.add_argument("--admin-group", help="members of this group are admins on the Unix socket "
                       "(default container-snapd; '' for none)")
    serve.add_argument("--listen-interface", action="append", default=[], metavar="NAME[:PORT]",
                       help="serve TCP on every address of interface NAME, following changes (port 7070)")
    serve.add_argument("--tls-cert", help="PEM certificate for the TCP listeners")
    serve.add_argument("--tls-key", help="PEM private key for the TCP listeners")
    serve.add_argument("--request-timeout", type=float, metavar="SECONDS",
                       help="time a client has to send a request's head, and its body (default 10)")
    serve.add_argument("--dev", action="store_true",
                       help="embedded default: socket, state and an overlay pool under --dev-dir")
    serve.add_argument("--dev-dir", default=".snapd-dev", help="folder for --dev (default ./.snapd-dev)")
    serve.set_defaults(func=cmd_serve)

    def client(name: str, help_: str, func: Any, *examples: str, name_arg: bool = True) -> argparse.ArgumentParser:
        p = add(name, help_, *examples)
        _connection_options(p)
        p.add_argument("--json", action="store_true", help="print the raw JSON envelope")
        p.add_argument("id", help="container id (24 hex characters)")
        if name_arg:
            p.add_argument("name", help="snapshot name")
        p.set_defaults(func=func)
        return p

    cid = DEMO_CONTAINER
    listing = client("list", "list a container's snapshots, newest first", cmd_list, f"snapd list {cid}",
                     f"snapd list --wide {cid}", name_arg=False)
    listing.add_argument("--wide", action="store_true",
                         help="also show the policy that took each snapshot and its hold")
    create = client("create", "take a snapshot", cmd_create,
                    f"snapd create {cid} --alias before-upgrade --expiry 7", name_arg=False)
    create.add_argument("--alias", help="a label of 1-100 characters")
    create.add_argument("--expiry", type=float, metavar="DAYS", help="delete after DAYS days (fractions allowed)")
    client("show", "show one snapshot", cmd_show, f"snapd show {cid} snap-20250115-103000")
    client("restore", "restore the container from a snapshot", cmd_restore,
           f"snapd restore {cid} snap-20250115-103000")
    alias = client("alias", "set or clear a snapshot's alias", cmd_alias,
                   f"snapd alias {cid} snap-20250115-103000 production-baseline",
                   f"snapd alias {cid} snap-20250115-103000 --clear")
    alias.add_argument("alias", nargs="?", help="the new alias")
    alias.add_argument("--clear", action="store_true", help="remove the alias")
    client("delete", "delete a snapshot", cmd_delete, f"snapd delete {cid} snap-20250110-080000")
    hold = client("hold", "hold a snapshot: nothing deletes it (expiry, retention, delete) until released",
                  cmd_hold, f"snapd hold {cid} snap-20250115-103000 --reason pre-upgrade")
    hold.add_argument("--reason", required=True, help="why it is held (1-200 characters)")
    client("release", "release a snapshot's hold", cmd_release, f"snapd release {cid} snap-20250115-103000")
    from snapd.cli import files as file_cli

    file_cli.add_commands(client, _request, _snap_path, _endpoint, cid)

    def group(name: str, help_: str) -> Any:
        p = sub.add_parser(name, help=help_, description=help_)
        return p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def admin_cmd(subs: Any, name: str, help_: str, func: Any, *examples: str) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=help_, description=help_ + " (admin only)",
                            epilog=_examples(*examples), formatter_class=argparse.RawDescriptionHelpFormatter)
        _connection_options(p)
        p.add_argument("--json", action="store_true", help="print the raw JSON envelope")
        p.set_defaults(func=func)
        return p

    st = sub.add_parser("status", help="the daemon's state (admin only)",
                        description="version, uptime, pools, listeners, next expiry, operations in flight, "
                                    "last errors (admin only)",
                        epilog=_examples("snapd status", "snapd status --json"),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(st)
    st.add_argument("--json", action="store_true", help="print the raw JSON envelope")
    st.set_defaults(func=cmd_status)

    rc = sub.add_parser("reconcile", help="make the store agree with the pools (admin only)",
                        description="settle unfinished operations, adopt snapshots on disk the store lacks, "
                                    "forget rows whose snapshot is gone (admin only)",
                        epilog=_examples("snapd reconcile --dry-run", "snapd reconcile"),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rc.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    _connection_options(rc)
    rc.add_argument("--json", action="store_true", help="print the raw JSON envelope")
    rc.set_defaults(func=cmd_reconcile)

    token = group("token", "bearer tokens for TCP and non-admin local users (admin only)")
    tc = admin_cmd(token, "create", "issue a token; it is printed once", cmd_token_create,
                   "snapd token create --project web --label ci-deploy --expires 90",
                   f"snapd token create --project web --container {cid} --read-only",
                   "snapd token create --admin --label break-glass",
                   "snapd token create --replicate --label from-host1")
    tc.add_argument("--project", help="the project whose containers the token may use")
    tc.add_argument("--container", action="append", default=[], metavar="ID",
                    help="only this container of the project (repeatable)")
    tc.add_argument("--read-only", action="store_true", help="list and show only")
    tc.add_argument("--admin", action="store_true", help="may do everything, admin routes included")
    tc.add_argument("--metrics", action="store_true", help="may read /metrics")
    tc.add_argument("--files", action="store_true",
                    help="may read files in snapshots (ls, cat, diff), also when --read-only")
    tc.add_argument("--replicate", action="store_true",
                    help="for a replication sender: may import into any container and list their snapshots")
    tc.add_argument("--label", help="what the token is for")
    tc.add_argument("--expires", type=float, metavar="DAYS", help="stop working after DAYS days")
    admin_cmd(token, "list", "list tokens (never their secrets)", cmd_token_list, "snapd token list")
    tr = admin_cmd(token, "revoke", "revoke a token; takes effect on its next request", cmd_token_revoke,
                   "snapd token revoke 3f9a1c0d2b7e")
    tr.add_argument("token_id", help="the token's id (from `snapd token list`)")

    container = group("container", "container project and layout labels (admin only)")
    cs = admin_cmd(container, "show", "show a container's pool, backend, project, layout and snapshot count",
                   cmd_container_show, f"snapd container show {cid}")
    cs.add_argument("id", help="container id")
    cp = admin_cmd(container, "set-project", "label a container with its project", cmd_container_set_label,
                   f"snapd container set-project {cid} web", f"snapd container set-project {cid} --clear")
    cp.add_argument("id", help="container id")
    cp.add_argument("project", nargs="?", help="project label")
    cp.add_argument("--clear", action="store_true", help="remove the label")
    cp.set_defaults(label="project")
    cl = admin_cmd(container, "set-layout", "fix what a snapshot of a directory container captures: "
                   "overlay (its upper/ only) or whole (overlay pools)", cmd_container_set_label,
                   f"snapd container set-layout {cid} whole", f"snapd container set-layout {cid} --clear")
    cl.add_argument("id", help="container id")
    cl.add_argument("layout", nargs="?", choices=("overlay", "whole"), help="the layout")
    cl.add_argument("--clear", action="store_true",
                    help="remove the label (the pool's layout setting decides again)")
    cl.set_defaults(label="layout")

    from snapd.cli import policy, replication, transfer  # they build on this module's helpers

    transfer.add_commands(client, cid)
    replication.add_commands(sub, _examples, cid)

    policy.add_commands(group("policy", "snapshot policies: schedules, retention, the plan (admin only)"), admin_cmd)

    expiry = group("expiry", "what the reaper will delete (admin only)")
    ep = admin_cmd(expiry, "plan", "list the snapshots that expire in the next N hours, earliest first "
                   "(overdue ones too)", cmd_expiry_plan, "snapd expiry plan", "snapd expiry plan --hours 168")
    ep.add_argument("--hours", type=float, default=24.0, metavar="N", help="the window from now (default 24)")
    ep.add_argument("--limit", type=int, metavar="M", help="show at most M snapshots (default 10000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:  # `snapd policy set NAME -f FILE KEY=VALUE`: argparse does not intermix positionals
        if getattr(args, "assignments", None) is None or any(r.startswith("-") for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.assignments += rest
    return args.func(args)
