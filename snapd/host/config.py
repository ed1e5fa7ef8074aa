"""Daemon configuration: TOML file, command-line flags (which win), validation.

Every problem is a ConfigError whose message names the key or path, so
start-up can stop with one clear line.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backends.portable import compressions

from snapd.core.policies.spec import (REPLICATION_TARGET, PolicyError, PolicySpec, check_policies, check_targets,
                                      parse_policy)
from snapd.core.policy_book import RESERVED
from snapd.core.project_slots import DEFAULT_MAX_CONCURRENT_PER_PROJECT
from snapd.core.settings import DEFAULT_HOOK_TIMEOUT, MAX_EXPIRY_DAYS, PoolPolicy, Reserve, Target

DEFAULT_SOCKET = Path("/run/container-snapd/api.sock")
DEFAULT_STATE_DIR = Path("/var/lib/container-snapd")
DEFAULT_CONFIG = Path("/etc/container-snapd/config.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")
DEFAULT_ADMIN_GROUP = "container-snapd"
DEFAULT_INTERFACE_PORT = 7070
MAX_SOCKET_PATH = 107
MAX_CONCURRENT_PER_PROJECT = 1000


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key or path."""


@dataclass(frozen=True)
class PoolSpec:
    backend: str
    root: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.root}"


DEFAULT_RESERVE = "1GiB,5%"
"""Free space a create must leave: the smaller of 1 GiB and 5% of the pool."""
DEFAULT_RESERVE_INODES = "5%"
"""Free inodes a create must leave: 5% of the pool's inodes."""
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000**4,
          "tib": 1 << 40}


def parse_reserve(value: object, where: str, unit: str = "bytes") -> Reserve:
    """`1073741824`, `"512MiB"`, `"5%"`, `"1GiB,5%"` (the smaller), `0`.

    With unit="inodes", a count instead of a size: `100000`, `"5%"`, `"100000,5%"`.
    """
    sizes = unit == "bytes"
    what = ("bytes, a size like '1GiB', a percentage like '5%' or both ('1GiB,5%')" if sizes
            else "a number of inodes, a percentage like '5%' or both ('100000,5%')")
    if isinstance(value, bool):
        raise ConfigError(f"{where}: reserve must be {what}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: reserve must not be negative")
        return Reserve(value, None, unit)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: reserve must be {what}")
    amount: int | None = None
    fraction: float | None = None
    for part in value.replace(" ", "").lower().split(","):
        try:
            if part.endswith("%"):
                pct = float(part[:-1])
                if not 0 <= pct < 100 or fraction is not None:
                    raise ValueError
                fraction = pct / 100
            else:
                num = part.rstrip("kmgtib") if sizes else part
                suffix = part[len(num):]
                if suffix not in _UNITS or amount is not None:
                    raise ValueError
                amount = int(float(num) * _UNITS[suffix]) if sizes else int(num)
                if amount < 0:
                    raise ValueError
        except ValueError:
            raise ConfigError(f"{where}: reserve {value!r} is not {what}") from None
    return Reserve(amount, fraction, unit)


def parse_manual_expiry(value: object, where: str) -> float | None:
    """Days (fractions allowed) up to MAX_EXPIRY_DAYS; 0 turns it off (None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_EXPIRY_DAYS:
        raise ConfigError(f"{where}: must be a number of days from 0 (off) to {MAX_EXPIRY_DAYS}")
    return float(value) or None


def parse_limit(value: object, where: str) -> int:
    """A snapshot count limit: a whole number, 0 for none."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: must be a whole number of snapshots (0: no limit)")
    return value


def parse_concurrency(value: object, where: str) -> int:
    """A count of operations at once: a whole number up to MAX_CONCURRENT_PER_PROJECT, 0 for no limit."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CONCURRENT_PER_PROJECT:
        raise ConfigError(f"{where}: must be a whole number of operations from 1 to "
                          f"{MAX_CONCURRENT_PER_PROJECT} (0: no limit)")
    return value


@dataclass
class Config:
    socket: Path = DEFAULT_SOCKET
    listen: list[tuple[str, int]] = field(default_factory=list)
    state_dir: Path = DEFAULT_STATE_DIR
    pools: list[PoolSpec] = field(default_factory=list)
    log_level: str = "info"
    log_format: str = "kv"
    admin_group: str | None = DEFAULT_ADMIN_GROUP
    listen_interfaces: list[tuple[str, int]] = field(default_factory=list)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    request_timeout: float = 10.0
    stream_idle_timeout: float = 120.0
    """Seconds a stream (an export, an import, a replication's send) may move no data
    before it is given up."""
    max_concurrent_per_project: int = DEFAULT_MAX_CONCURRENT_PER_PROJECT
    """Long operations (create, restore, delete, import, export) of one project at once;
    more wait in arrival order (snapd/core/project_slots.py).  0: no limit."""
    defaults: PoolPolicy = field(default_factory=PoolPolicy)
    """The global `reserve`, `reserve_inodes` and `max_snapshots_*`: what pools not set
    otherwise in `pool_options` get."""
    pool_options: dict[str, PoolPolicy] = field(default_factory=dict)
    """Pool spec as written in `pools` -> its policy."""
    policies: dict[str, PolicySpec] = field(default_factory=dict)
    """The `[policies.NAME]` tables: snapshot policies (schedules and retention)."""
    targets: dict[str, Target] = field(default_factory=dict)
    """The `[targets.NAME]` tables: daemons snapshots are replicated to."""
    source: str = "flags"
    """Where the values come from (the config file's path): error messages name it."""

    @property
    def reserve(self) -> Reserve:
        return self.defaults.reserve

    def policy(self, spec: "PoolSpec | str") -> PoolPolicy:
        return self.pool_options.get(str(spec)) or self.defaults


BACKENDS = ("auto", "overlay", "btrfs", "zfs")
KEYS: dict[str, type | tuple[type, ...]] = {
    "socket": str,
    "listen": list,
    "state_dir": str,
    "pools": list,
    "log_level": str,
    "log_format": str,
    "admin_group": str,
    "listen_interfaces": list,
    "tls_cert": str,
    "tls_key": str,
    "request_timeout": (int, float),
    "stream_idle_timeout": (int, float),
    "max_concurrent_per_project": int,
    "reserve": (int, str),
    "reserve_inodes": (int, str),
    "max_snapshots_per_container": int,
    "max_snapshots_per_project": int,
    "manual_expiry": (int, float),
    "freeze": bool,
    "cgroup_template": str,
    "freeze_timeout": (int, float),
    "pool_options": dict,
    "policies": dict,
    "targets": dict,
}
LIMIT_KEYS = ("reserve", "reserve_inodes", "max_snapshots_per_container", "max_snapshots_per_project",
              "manual_expiry")
FREEZE_KEYS = ("freeze", "cgroup_template", "freeze_timeout")
"""LIMIT_KEYS and FREEZE_KEYS are set globally and overridable per pool."""
HOOK_KEYS = ("pre_restore", "post_restore", "pre_snapshot", "post_snapshot")
POOL_OPTION_KEYS = (*LIMIT_KEYS, *FREEZE_KEYS, *HOOK_KEYS, "hook_timeout", "layout")
MAX_FREEZE_TIMEOUT = 300
POOL_LAYOUTS = ("auto", "overlay", "whole")


def parse_pool(value: str, where: str) -> PoolSpec:
    backend, sep, root = value.partition(":")
    if not sep or not root:
        raise ConfigError(f"{where}: {value!r} is not BACKEND:ROOT (e.g. overlay:/var/lib/containers)")
    if backend not in BACKENDS:
        raise ConfigError(f"{where}: unknown backend {backend!r} in {value!r} (expected one of {', '.join(BACKENDS)})")
    # one name per pool: "/x/", "/x//", a symlink to /x (or "tank/c/") are the same pool
    root = os.path.realpath(root) if root.startswith("/") else root.strip("/")
    return PoolSpec(backend, root)


def parse_listen(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {value!r} is not HOST:PORT (e.g. 127.0.0.1:7070)")
    return host, int(port)


def parse_interface(value: str, where: str) -> tuple[str, int]:
    name, sep, port = value.partition(":")
    if not name or len(name) > 15 or "/" in name or (sep and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ConfigError(f"{where}: {value!r} is not INTERFACE[:PORT] (e.g. eth1:7070)")
    return name, int(port) if sep else DEFAULT_INTERFACE_PORT


def load_file(path: Path) -> dict[str, Any]:
    """The table of a TOML config file, with its keys and types checked."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"config file {path}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if not isinstance(value, KEYS[key]) or isinstance(value, bool) != (KEYS[key] is bool):
            kind = {list: "a list of strings", str: "a string", dict: "a table", bool: "true or false"}.get(
                KEYS[key], "a number")  # type: ignore[call-overload]
            raise ConfigError(f"config file {path}: {key!r} must be {kind}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config file {path}: {key!r} must be a list of strings")
    build(data, {}, f"config file {path}")  # every value checked, even those flags override
    return data


def build(file_values: dict[str, Any], flags: dict[str, Any], source: str = "config") -> Config:
    """Merge file values and flags (flags win) into a checked Config."""
    merged = {**file_values, **{k: v for k, v in flags.items() if v not in (None, [])}}
    cfg = Config()
    if "socket" in merged:
        cfg.socket = Path(merged["socket"])
    if "state_dir" in merged:
        cfg.state_dir = Path(merged["state_dir"])
    if "log_level" in merged:
        if merged["log_level"] not in LOG_LEVELS:
            raise ConfigError(f"{source}: log_level must be one of {', '.join(LOG_LEVELS)}")
        cfg.log_level = merged["log_level"]
    if "log_format" in merged:
        if merged["log_format"] not in LOG_FORMATS:
            raise ConfigError(f"{source}: log_format must be one of {', '.join(LOG_FORMATS)}")
        cfg.log_format = merged["log_format"]
    cfg.listen = [parse_listen(v, f"{source}: listen") for v in merged.get("listen", [])]
    cfg.listen_interfaces = [
        parse_interface(v, f"{source}: listen_interfaces") for v in merged.get("listen_interfaces", [])
    ]
    if "admin_group" in merged:
        cfg.admin_group = merged["admin_group"] or None
    if bool(merged.get("tls_cert")) != bool(merged.get("tls_key")):
        raise ConfigError(f"{source}: tls_cert and tls_key go together")
    for key in ("request_timeout", "stream_idle_timeout"):
        if key in merged:
            timeout = merged[key]
            if isinstance(timeout, str):
                try:
                    timeout = float(timeout)
                except ValueError:
                    timeout = -1.0
            if not 0 < timeout <= 3600:
                raise ConfigError(f"{source}: {key} must be a number of seconds from 0 to 3600")
            setattr(cfg, key, float(timeout))
    if "max_concurrent_per_project" in merged:
        cfg.max_concurrent_per_project = parse_concurrency(merged["max_concurrent_per_project"],
                                                           f"{source}: max_concurrent_per_project")
    if merged.get("tls_cert"):
        cfg.tls_cert, cfg.tls_key = Path(merged["tls_cert"]), Path(merged["tls_key"])
    cfg.pools = [parse_pool(v, f"{source}: pools") for v in merged.get("pools", [])]
    cfg.defaults = _freezing(merged, _limits(merged, PoolPolicy(), f"{source}: "), f"{source}: ")
    cfg.pool_options = {
        str(parse_pool(spec, f"{source}: pool_options")): _pool_policy(
            opts, cfg.defaults, f"{source}: pool_options.{spec!r}")
        for spec, opts in (merged.get("pool_options") or {}).items()
    }
    cfg.policies = parse_policies(merged.get("policies") or {}, source)
    cfg.targets = parse_targets(merged.get("targets") or {}, source)
    for spec in cfg.policies.values():
        try:
            check_targets(spec, cfg.targets)
        except PolicyError as exc:
            raise ConfigError(f"{source}: {policy_key(spec.name, exc.key)}: {exc.message}") from None
    cfg.source = source
    return cfg


def policy_key(name: str, key: str | None = None) -> str:
    """`policies.NAME.KEY` as the file spells it (a name that is not a bare key, quoted)."""
    bare = name.replace("_", "").replace("-", "").isalnum() and name.isascii()
    head = f"policies.{name if bare else json.dumps(name)}"
    return head if key in (None, "name", "policy") else f"{head}.{key}"


def parse_policies(tables: dict[str, Any], source: str) -> dict[str, PolicySpec]:
    """The `[policies.NAME]` tables, each checked (spec.parse_policy) and together (no two
    claiming one target); ConfigError names the key, `policies.NAME.KEY`."""
    out: dict[str, PolicySpec] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {policy_key(name)}: must be a table ([{policy_key(name)}])")
        if name in RESERVED:
            raise ConfigError(f"{source}: {policy_key(name)}: the name {name!r} is reserved "
                              "(GET /api/v1/admin/policies/plan is the plan)")
        try:
            out[name] = parse_policy(name, table, "file")
        except PolicyError as exc:
            raise ConfigError(f"{source}: {policy_key(name, exc.key)}: {exc.message}") from None
    try:
        check_policies(out.values())
    except PolicyError as exc:
        raise ConfigError(f"{source}: policies: {exc.key}: {exc.message}") from None
    return out


TARGET_KEYS = ("url", "token_file", "tls_ca", "bandwidth", "compression")
TARGET_NAME = REPLICATION_TARGET


def parse_bandwidth(value: object, where: str) -> int:
    """Bytes per second: a whole number or a size like `"50MiB"` (per second implied)."""
    what = "bytes per second: a whole number or a size like '50MiB'"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{where}: must be {what}")
    if isinstance(value, int):
        amount = value
    else:
        text = value.replace(" ", "").lower().removesuffix("/s")
        num = text.rstrip("kmgtib")
        try:
            if text[len(num):] not in _UNITS or not num:
                raise ValueError
            amount = int(float(num) * _UNITS[text[len(num):]])
        except (ValueError, OverflowError):
            raise ConfigError(f"{where}: {value!r} is not {what}") from None
    if amount < 1024:
        raise ConfigError(f"{where}: must be at least 1KiB per second")
    return amount


def parse_targets(tables: dict[str, Any], source: str) -> dict[str, Target]:
    """The `[targets.NAME]` tables; ConfigError names the key, `targets.NAME.KEY`."""
    out: dict[str, Target] = {}
    for name, table in tables.items():
        where = f"{source}: targets.{name if TARGET_NAME.fullmatch(name) else json.dumps(name)}"
        if not TARGET_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a target's name is 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table ([targets.{name}])")
        _only_known(table, TARGET_KEYS, where)
        for key in ("url", "token_file"):
            if key not in table:
                raise ConfigError(f"{where}.{key}: required")
        url = table["url"]
        parts = urlsplit(url) if isinstance(url, str) else None
        try:
            port_ok = parts is not None and (parts.port is None or parts.port > 0)
        except ValueError:
            port_ok = False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok \
                or parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            raise ConfigError(f"{where}.url: must be http(s)://HOST[:PORT] (the receiver's TCP listener), "
                              f"got {url!r}")
        paths = {}
        for key in ("token_file", "tls_ca"):
            value = table.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
                raise ConfigError(f"{where}.{key}: must be an absolute path")
            paths[key] = value
        if "tls_ca" in paths and parts.scheme != "https":
            raise ConfigError(f"{where}.tls_ca: only for an https:// url")
        bandwidth = parse_bandwidth(table["bandwidth"], f"{where}.bandwidth") if "bandwidth" in table else None
        compression = table.get("compression", "none")
        if compression not in ("none", "zstd"):
            raise ConfigError(f"{where}.compression: must be \"none\" or \"zstd\", got {compression!r}")
        if compression not in compressions():
            raise ConfigError(f"{where}.compression: zstd needs the zstandard package "
                              "(pip install 'container-snapd[zstd]')")
        out[name] = Target(name, f"{parts.scheme}://{parts.netloc}", paths["token_file"], paths.get("tls_ca"),
                           bandwidth, compression)
    return out


def _argv(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: must be a command as a non-empty list of strings (argv; no shell)")
    if not os.path.isabs(value[0]):
        raise ConfigError(f"{where}: the command {value[0]!r} must be an absolute path")
    return tuple(value)


def _limits(values: dict[str, Any], base: PoolPolicy, where: str) -> PoolPolicy:
    """`base` with the reserves and snapshot limits `values` sets (LIMIT_KEYS)."""
    changes: dict[str, Any] = {}
    if "reserve" in values:
        changes["reserve"] = parse_reserve(values["reserve"], f"{where}reserve")
    if "reserve_inodes" in values:
        changes["reserve_inodes"] = parse_reserve(values["reserve_inodes"], f"{where}reserve_inodes", "inodes")
    for key in ("max_snapshots_per_container", "max_snapshots_per_project"):
        if key in values:
            changes[key] = parse_limit(values[key], f"{where}{key}")
    if "manual_expiry" in values:
        changes["manual_expiry"] = parse_manual_expiry(values["manual_expiry"], f"{where}manual_expiry")
    return replace(base, **changes)


def _seconds(value: object, where: str, most: float) -> float:
    """A number of seconds in (0, most]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= most:
        raise ConfigError(f"{where}: must be a number of seconds from 0 to {most:g}")
    return float(value)


def cgroup_template_problem(template: object) -> str | None:
    """Why `template` cannot be a cgroup_template (snapd/core/freeze.py), or None."""
    if not isinstance(template, str):
        return "must be a string: a cgroup directory with {id} in it"
    if not template.startswith("/"):
        return f"{template!r} must be an absolute path"
    if "{id}" not in template:
        return f"{template!r} must contain {{id}} (replaced by the container id)"
    rest = template.replace("{id}", "")
    if "{" in rest or "}" in rest:
        return f"{template!r} may hold no placeholder but {{id}}"
    if "\0" in template or any(part in (".", "..") for part in template.split("/")):
        return f"{template!r} must be a plain path (no NUL, no '.' or '..' components)"
    return None


def _freezing(values: dict[str, Any], base: PoolPolicy, where: str) -> PoolPolicy:
    """`base` with the freeze settings `values` sets (FREEZE_KEYS)."""
    changes: dict[str, Any] = {}
    if "freeze" in values:
        if not isinstance(values["freeze"], bool):
            raise ConfigError(f"{where}freeze: must be true or false")
        changes["freeze"] = values["freeze"]
    if "cgroup_template" in values:
        problem = cgroup_template_problem(values["cgroup_template"])
        if problem:
            raise ConfigError(f"{where}cgroup_template: {problem}")
        changes["cgroup_template"] = values["cgroup_template"]
    if "freeze_timeout" in values:
        changes["freeze_timeout"] = _seconds(values["freeze_timeout"], f"{where}freeze_timeout",
                                             MAX_FREEZE_TIMEOUT)
    return replace(base, **changes)


def _only_known(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(known)})")


def _pool_policy(opts: object, defaults: PoolPolicy, where: str) -> PoolPolicy:
    if not isinstance(opts, dict):
        raise ConfigError(f"{where}: must be a table with keys {', '.join(POOL_OPTION_KEYS)}")
    _only_known(opts, POOL_OPTION_KEYS, where)
    timeout = _seconds(opts.get("hook_timeout", DEFAULT_HOOK_TIMEOUT), f"{where}.hook_timeout", 3600)
    layout = opts.get("layout", "auto")
    if layout not in POOL_LAYOUTS:
        raise ConfigError(f"{where}: layout must be one of {', '.join(POOL_LAYOUTS)}")
    hooks = {key: _argv(opts[key], f"{where}.{key}") if key in opts else () for key in HOOK_KEYS}
    return replace(
        _freezing(opts, _limits(opts, defaults, f"{where}."), f"{where}."),
        **hooks,
        hook_timeout=timeout,
        layout=layout,
    )


def check(cfg: Config) -> None:
    """Paths that must exist or be writable before anything starts."""
    if not cfg.pools:
        raise ConfigError("no pools configured: give --pool BACKEND:ROOT or 'pools' in the config file")
    for pool in cfg.pools:
        if pool.root.startswith("/") and not Path(pool.root).is_dir():
            raise ConfigError(f"pool root {pool.root} does not exist or is not a directory")
        if pool.backend in ("overlay", "btrfs") and not pool.root.startswith("/"):
            raise ConfigError(f"pool root {pool.root!r} of a {pool.backend} pool must be an absolute path")
    _no_overlapping_pools(cfg.pools)
    if len(os.fsencode(str(cfg.socket))) > MAX_SOCKET_PATH:
        raise ConfigError(f"socket path {cfg.socket} is longer than {MAX_SOCKET_PATH} bytes")
    for path in (cfg.tls_cert, cfg.tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    for target in cfg.targets.values():
        for key in ("token_file", "tls_ca"):
            path = getattr(target, key)
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"{cfg.source}: targets.{target.name}.{key}: {path} does not exist or "
                                  "is not readable")
    _writable_dir(cfg.socket.parent, "socket directory")
    _writable_dir(cfg.state_dir, "state_dir", mode=0o700)  # token hashes: the daemon's alone


def _no_overlapping_pools(pools: list[PoolSpec]) -> None:
    """Two pools on one tree would sweep each other's scratch space and claim the same
    containers: the same root twice (under any spelling or symlink) or one inside another."""
    seen: list[tuple[str, PoolSpec]] = []
    for pool in pools:
        key = os.path.realpath(pool.root) if pool.root.startswith("/") else pool.root
        sep = "/"
        for other_key, other in seen:
            if key == other_key or key.startswith(other_key.rstrip(sep) + sep) or \
                    other_key.startswith(key.rstrip(sep) + sep):
                raise ConfigError(f"pools {other} and {pool} overlap: give each tree one pool")
        seen.append((key, pool))


def _writable_dir(path: Path, what: str, mode: int = 0o755) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable")
