"""A policy as written in the config file or sent to the admin routes: parsed, checked, resolved.

The keys (TOML and JSON alike): schedule, timezone, jitter, applies_to,
keep_last, keep {hourly, daily, weekly, monthly, yearly}, max_age, alias,
min_free, freeze, targets.  Every bad value is a PolicyError naming its key.  A policy
must keep something: keep_last >= 1 or some keep bucket > 0.
"""

from __future__ import annotations

import math
import posixpath
import re
import string
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Collection, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from snapd.core.policies.schedule import Schedule, ScheduleError, format_duration, parse_duration, parse_schedule
from snapd.core.text import first_refused

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
CONTAINER_ID = re.compile(r"[0-9A-Fa-f]{24}")
"""The reference's container id rule (snapd.http.validation.CONTAINER_ID)."""
PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""The project label rule (snapd.http.admin.PROJECT)."""
POOL_BACKENDS = ("auto", "overlay", "btrfs", "zfs")
MAX_ALIAS = 100
"""The reference's alias limit (snapd.http.validation.MAX_ALIAS)."""
MAX_KEEP = 100_000
KEYS = ("schedule", "timezone", "jitter", "applies_to", "keep_last", "keep", "max_age", "alias",
        "min_free", "freeze", "targets")
REPLICATION_TARGET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A `[targets.NAME]` name (snapd.host.config.TARGET_NAME)."""
ALIAS_FIELDS = ("policy", "container", "time")
_ZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
_SIZE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*(?:([kmgt])(ib|b)?|b)?", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


class PolicyError(ValueError):
    """A bad policy: `key` is the dotted key at fault ("keep.hourly"), `message` says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Target:
    """What a policy applies to: a container id, a project label or a pool (`backend:root`)."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class Grid:
    """How many periods of each length keep their newest snapshot."""

    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0


@dataclass(frozen=True)
class MinFree:
    """Free space to keep in the pool: a percentage of its size or a byte count."""

    percent: float | None
    bytes: int | None

    def target(self, total: int) -> int:
        """The free bytes wanted in a pool of `total` bytes."""
        return self.bytes if self.bytes is not None else math.ceil(total * (self.percent or 0) / 100)


@dataclass(frozen=True)
class PolicySpec:
    """One policy, parsed; `source` is "file" (read-only through the API) or "api"."""

    name: str
    schedule: Schedule
    timezone: str
    jitter: float
    applies_to: tuple[Target, ...]
    keep_last: int
    keep: Grid
    max_age: float | None
    alias: str | None
    min_free: MinFree | None
    freeze: bool | None
    source: str
    targets: tuple[str, ...] = ()
    """Replication targets (`[targets.NAME]`) each of its snapshots is sent to."""

    @property
    def tz(self) -> ZoneInfo:
        """The zone cron and the retention periods are read in."""
        return ZoneInfo(self.timezone)


def parse_policy(name: str, data: Mapping[str, object], source: str) -> PolicySpec:
    """The policy `name` from its table (TOML) or object (JSON); PolicyError names the bad key."""
    if source not in ("file", "api"):
        raise ValueError(f"source must be 'file' or 'api', not {source!r}")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PolicyError("name", "must match ^[a-z0-9][a-z0-9_-]{0,62}$")
    if not isinstance(data, Mapping):
        raise PolicyError("policy", "must be a table of keys")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise PolicyError(str(unknown[0]), f"unknown key (known: {', '.join(KEYS)})")
    for key in ("schedule", "applies_to"):
        if key not in data:
            raise PolicyError(key, "is required")
    try:
        schedule = parse_schedule(data["schedule"])  # type: ignore[arg-type]
    except ScheduleError as exc:
        raise PolicyError("schedule", str(exc)) from None
    timezone = _timezone(data.get("timezone", "UTC"))
    jitter = _duration(data.get("jitter", 0), "jitter", allow_zero=True)
    if schedule.interval is not None and jitter >= schedule.interval:
        raise PolicyError("jitter", f"must be shorter than the interval ({format_duration(schedule.interval)})")
    keep_last = _count(data.get("keep_last", 0), "keep_last")
    keep = _grid(data.get("keep", {}))
    if keep_last == 0 and not any(asdict(keep).values()):
        raise PolicyError("keep_last", "the policy keeps nothing: set keep_last >= 1 or a keep bucket above 0")
    max_age = data.get("max_age")
    alias = data.get("alias")
    min_free = data.get("min_free")
    freeze = data.get("freeze")
    if freeze is not None and not isinstance(freeze, bool):
        raise PolicyError("freeze", "must be true or false")
    return PolicySpec(
        name=name, schedule=schedule, timezone=timezone, jitter=float(jitter),
        applies_to=_targets(data["applies_to"]), keep_last=keep_last, keep=keep,
        max_age=None if max_age is None else float(_duration(max_age, "max_age")),
        alias=None if alias is None else _alias(alias, name),
        min_free=None if min_free is None else _min_free(min_free),
        freeze=freeze, source=source, targets=_replication_targets(data.get("targets", [])))


def policy_json(spec: PolicySpec) -> dict:
    """The JSON form (the TOML keys): parse_policy(spec.name, policy_json(spec), spec.source) == spec."""
    mf = spec.min_free
    return {
        "schedule": spec.schedule.text,
        "timezone": spec.timezone,
        "jitter": format_duration(spec.jitter),
        "applies_to": [str(t) for t in spec.applies_to],
        "keep_last": spec.keep_last,
        "keep": asdict(spec.keep),
        "max_age": None if spec.max_age is None else format_duration(spec.max_age),
        "alias": spec.alias,
        "min_free": None if mf is None else (
            f"{repr(mf.percent).removesuffix('.0')}%" if mf.percent is not None else mf.bytes),
        "freeze": spec.freeze,
        "targets": list(spec.targets),
    }


def check_policies(specs: Iterable[PolicySpec]) -> None:
    """PolicyError("applies_to") when two policies claim the same container, project or pool."""
    claims: dict[tuple[str, str], str] = {}
    for spec in sorted(specs, key=lambda s: s.name):
        for target in spec.applies_to:
            key = _claim(target)
            other = claims.setdefault(key, spec.name)
            if other != spec.name:
                raise PolicyError("applies_to", f"{target} is claimed by both {other!r} and {spec.name!r}")


def check_targets(spec: PolicySpec, known: Collection[str]) -> None:
    """PolicyError("targets[i]") when the policy names a replication target not configured."""
    for i, name in enumerate(spec.targets):
        if name not in known:
            listed = ", ".join(sorted(known)) or "none configured"
            raise PolicyError(f"targets[{i}]", f"no target {name!r} in the config ([targets.NAME]; known: {listed})")


def resolve(specs: Iterable[PolicySpec], container_id: str, project: str | None,
            pool: str) -> PolicySpec | None:
    """The policy a container follows: a container target over a project over a pool; None: none.

    `pool` is the pool id (`backend:root`); a `pool:auto:ROOT` target matches the pool at ROOT.
    """
    cid = container_id.lower()
    pool_claim = _claim(Target("pool", pool))
    best: tuple[int, str, PolicySpec] | None = None
    for spec in specs:
        for target in spec.applies_to:
            if target.kind == "container":
                rank = 0 if target.value == cid else None
            elif target.kind == "project":
                rank = 1 if project is not None and target.value == project else None
            else:
                rank = 2 if target.value == pool or _claim(target) == pool_claim and \
                    target.value.startswith("auto:") else None
            if rank is not None and (best is None or (rank, spec.name) < best[:2]):
                best = (rank, spec.name, spec)
    return best[2] if best else None


def render_alias(spec: PolicySpec, container_id: str, when: float) -> str | None:
    """The alias of a snapshot the policy takes at `when` (None: the policy sets none).

    `{time}` is the local time in the policy's zone, `2024-05-01T13:00`.
    """
    if spec.alias is None:
        return None
    stamp = datetime.fromtimestamp(when, spec.tz).strftime("%Y-%m-%dT%H:%M")
    return spec.alias.format(policy=spec.name, container=container_id.lower(), time=stamp)[:MAX_ALIAS]


def _claim(target: Target) -> tuple[str, str]:
    """What a target claims: pools by root (one root is one pool whatever the backend)."""
    if target.kind == "pool":
        return "pool", target.value.partition(":")[2]
    return target.kind, target.value


def _timezone(value: object) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _ZONE.fullmatch(value):
        raise PolicyError("timezone", "must be an IANA time zone name like 'Europe/Berlin' or 'UTC'")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise PolicyError("timezone", f"unknown time zone {value!r}") from None
    return value


def _duration(value: object, key: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PolicyError(key, "must be a duration like '90s', '5m', '1h', '400d' or '1w'")
    if isinstance(value, int):
        seconds = value
        if seconds < 0:
            raise PolicyError(key, "must not be negative")
    else:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise PolicyError(key, str(exc)) from None
    if seconds == 0 and not allow_zero:
        raise PolicyError(key, "must be longer than 0s")
    if seconds > 100 * 366 * 86400:
        raise PolicyError(key, "must be at most 100 years")
    return seconds


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_KEEP:
        raise PolicyError(key, f"must be a whole number from 0 to {MAX_KEEP}")
    return value


def _grid(value: object) -> Grid:
    if not isinstance(value, Mapping):
        raise PolicyError("keep", "must be a table like { hourly = 24, daily = 7 }")
    names = [f.name for f in fields(Grid)]
    for key in value:
        if key not in names:
            raise PolicyError(f"keep.{key}", f"unknown bucket (known: {', '.join(names)})")
    return Grid(**{key: _count(n, f"keep.{key}") for key, n in value.items()})


def _targets(value: object) -> tuple[Target, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise PolicyError("applies_to", "must be a non-empty list like ['project:web', 'container:ID']")
    out: list[Target] = []
    for i, item in enumerate(value):
        target = _target(item, f"applies_to[{i}]")
        if target in out:
            raise PolicyError(f"applies_to[{i}]", f"{target} is listed twice")
        out.append(target)
    return tuple(out)


def _target(item: object, key: str) -> Target:
    kind, _, rest = item.partition(":") if isinstance(item, str) else ("", "", "")
    if kind == "container" and CONTAINER_ID.fullmatch(rest):
        return Target(kind, rest.lower())
    if kind == "project" and PROJECT.fullmatch(rest):
        return Target(kind, rest)
    if kind == "pool":
        backend, sep, root = rest.partition(":")
        if backend in POOL_BACKENDS and sep and root and first_refused(root) is None:
            # as the config names a pool (symlinks are the config's to resolve)
            root = posixpath.normpath(root) if root.startswith("/") else root.strip("/")
            if root and root != ".":
                return Target(kind, f"{backend}:{root}")
    raise PolicyError(key, "must be 'container:<24 hex digits>', 'project:<name>' or "
                           f"'pool:<{'|'.join(POOL_BACKENDS)}>:<root>'")


def _replication_targets(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise PolicyError("targets", "must be a list of [targets.NAME] names like ['backup1']")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not REPLICATION_TARGET.fullmatch(item):
            raise PolicyError(f"targets[{i}]", "must be the name of a [targets.NAME] table: 1-64 letters, "
                                               "digits, '.', '_' or '-'")
        if item in out:
            raise PolicyError(f"targets[{i}]", f"{item} is listed twice")
        out.append(item)
    return tuple(out)


def _alias(value: object, policy: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError("alias", "must be a non-empty text with optional {policy}, {container}, {time}")
    try:
        fields_used = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
    except ValueError:
        raise PolicyError("alias", "has an unbalanced '{' or '}' (write '{{' for a brace)") from None
    for f, spec, conv in fields_used:
        if f not in ALIAS_FIELDS or spec or conv:
            raise PolicyError("alias", "may use only the placeholders {policy}, {container} and {time}, "
                                       f"not {{{f}}}")
    sample = value.format(policy=policy, container="0" * 24, time="2024-05-01T13:00")
    refused = first_refused(sample)
    if refused is not None:
        raise PolicyError("alias", f"must not contain U+{ord(refused):04X}")
    if len(value.format(policy="", container="", time="")) == 0:
        raise PolicyError("alias", "must have some text")
    if len(sample) > MAX_ALIAS:
        raise PolicyError("alias", f"renders longer than {MAX_ALIAS} characters")
    return value


def _min_free(value: object) -> MinFree:
    what = "must be a percentage like '10%' or a size like '5G', '500M' or a byte count"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PolicyError("min_free", what)
    if isinstance(value, int):
        if value <= 0:
            raise PolicyError("min_free", "must be above 0 (leave it out for none)")
        return MinFree(None, value)
    text = value.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise PolicyError("min_free", what) from None
        if not 0 < pct < 100:
            raise PolicyError("min_free", "a percentage must be above 0 and below 100")
        return MinFree(pct, None)
    m = _SIZE.fullmatch(text)
    if m is None:
        raise PolicyError("min_free", what)
    unit, suffix = (m.group(2) or "").lower(), (m.group(3) or "").lower()
    base = 1000 if suffix == "b" else 1024  # K, KiB: 1024; KB: 1000 (as the config's sizes)
    size = int(float(m.group(1)) * base ** _SIZE_POWERS[unit])
    if size <= 0:
        raise PolicyError("min_free", "must be above 0 (leave it out for none)")
    return MinFree(None, size)
