"""Validation of everything a client sends: ids, names, JSON bodies."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from snapd.core.errors import InvalidInput
from snapd.core.settings import MAX_EXPIRY_DAYS
from snapd.core.text import describe_char, first_refused

CONTAINER_ID = re.compile(r"[0-9A-Fa-f]{24}")
SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_BODY = 64 * 1024
MAX_DEPTH = 32
MAX_ALIAS = 100
MAX_HOLD_REASON = 200

_MISSING = object()


def parse_container_id(raw: str, kind: str = "id") -> str:
    """The id in lower case, or InvalidInput (`kind` picks the API message)."""
    if not CONTAINER_ID.fullmatch(raw):
        raise InvalidInput(kind, [_detail("id", "must be 24 hexadecimal characters", raw)])
    return raw.lower()


def parse_container_ids(value: Any, field: str) -> list[str]:
    """A non-empty JSON list of container ids: lower-cased, duplicates dropped, in order.

    Anything else -- null, an object, a string, an empty list, an item that is
    not an id -- is InvalidInput("payload") naming `field`: a scope that cannot
    be read must never widen to "every container".
    """
    if not isinstance(value, list) or not value:
        raise InvalidInput("payload", [_detail(field, "must be a non-empty list of container ids")])
    out: dict[str, None] = {}
    for i, item in enumerate(value):
        if not isinstance(item, str) or not CONTAINER_ID.fullmatch(item):
            raise InvalidInput(
                "payload", [_detail(field, f"item {i}: must be 24 hexadecimal characters", item)])
        out[item.lower()] = None
    return list(out)


def check_snapshot_name(raw: str) -> str:
    if not SNAPSHOT_NAME.fullmatch(raw):
        raise InvalidInput(
            "name",
            [_detail("name", "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", raw)],
        )
    return raw


def _detail(field: str, reason: str, value: Any = _MISSING) -> dict:
    d: dict[str, Any] = {"field": field, "reason": reason}
    if isinstance(value, str):
        d["value"] = value[:80]
    return d


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes, allowed: set[str]) -> dict[str, Any]:
    """A JSON object with only `allowed` keys; empty body means `{}`.

    Duplicate keys, NaN/Infinity, invalid UTF-8, nesting deeper than
    MAX_DEPTH, non-objects and unknown keys are InvalidInput("payload").
    """
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
        if _too_deep(text):  # before the parser, so deep input never recurses in it
            raise ValueError(f"nesting deeper than {MAX_DEPTH}")
        value = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInput("payload", [_detail("body", f"not valid JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise InvalidInput("payload", [_detail("body", "must be a JSON object")])
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidInput(
            "payload", [_detail(k, "unknown field") for k in unknown]
        )
    return value


def _too_deep(text: str) -> bool:
    """Bracket depth over MAX_DEPTH, strings ignored: one linear pass over at most 64 KiB."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "]}":
            depth -= 1
    return False


TEXT_RULE = (f"1 to {MAX_ALIAS} characters, none of them a Unicode control, format or separator "
             "character (categories Cc, Cf, Zl, Zp: C0/C1 controls, DEL, U+2028, U+2029, "
             "bidirectional marks and overrides, zero-width characters, U+FEFF)")
"""The rule for free text the daemon stores and prints (aliases, token labels)."""


def text_problem(value: Any, longest: int = MAX_ALIAS) -> str | None:
    """Why `value` breaks TEXT_RULE (a reason naming the character), or None; `longest`:
    the most characters allowed (MAX_ALIAS unless the field says otherwise)."""
    if not isinstance(value, str):
        return "must be a string or null"
    if not 1 <= len(value) <= longest:
        return f"must be 1 to {longest} characters"
    if not is_utf8(value):
        return "must be valid Unicode (no lone surrogates)"
    bad = first_refused(value)
    if bad is not None:
        return (f"contains {describe_char(bad)}; control, format and separator characters "
                "(categories Cc, Cf, Zl, Zp) are not allowed")
    return None


def parse_label(value: Any, field: str, field_kind: str = "payload") -> str | None:
    """Free text the daemon stores and prints (alias, token label): a string following
    TEXT_RULE, or None; InvalidInput(field_kind) naming `field` otherwise."""
    if value is None:
        return None
    problem = text_problem(value)
    if problem is not None:
        raise InvalidInput(field_kind, [_detail(field, problem)])
    return value


def parse_alias(value: Any, field_kind: str) -> str | None:
    """An alias: a string following TEXT_RULE, or None."""
    return parse_label(value, "alias", field_kind)


def is_utf8(value: str) -> bool:
    """Whether a decoded JSON string can be stored: JSON allows lone surrogates (\\ud800)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_expiry(value: Any, field: str = "expiry") -> float | None:
    """Days until expiry: a positive number up to MAX_EXPIRY_DAYS, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput("payload", [_detail(field, "must be a number of days")])
    # compare before isfinite: a huge JSON integer is an int that float() cannot hold
    if value <= 0 or value > MAX_EXPIRY_DAYS or not math.isfinite(value):
        raise InvalidInput(
            "payload",
            [_detail(field, f"must be greater than 0 and at most {MAX_EXPIRY_DAYS} days")],
        )
    return float(value)


def parse_create_body(raw: bytes) -> tuple[str | None, float | None, bool]:
    """(alias, expiry in days, whether `expiry` was given at all: absent, the pool's
    manual_expiry applies; null, the snapshot never expires)."""
    body = parse_body(raw, {"alias", "expiry"})
    return parse_alias(body.get("alias"), "payload"), parse_expiry(body.get("expiry")), "expiry" in body


def parse_alias_body(raw: bytes) -> str | None:
    body = parse_body(raw, {"alias"})
    if "alias" not in body:
        raise InvalidInput("alias", [_detail("alias", "required (use null to remove)")])
    return parse_alias(body["alias"], "alias")


def parse_hold_body(raw: bytes) -> str:
    """`{"reason": "..."}`: why a snapshot is held, TEXT_RULE's characters, 1 to
    MAX_HOLD_REASON of them; InvalidInput("payload") naming `reason` otherwise."""
    body = parse_body(raw, {"reason"})
    if "reason" not in body:
        raise InvalidInput("payload", [_detail("reason", "required: why the snapshot is held")])
    problem = "must be a string" if body["reason"] is None else text_problem(body["reason"], MAX_HOLD_REASON)
    if problem is not None:
        raise InvalidInput("payload", [_detail("reason", problem)])
    return body["reason"]


def parse_empty_body(raw: bytes) -> None:
    """Routes without a body accept nothing, or `{}`."""
    parse_body(raw, set())
