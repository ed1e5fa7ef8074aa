"""Bearer tokens: issued once, kept only as a hash, checked in constant time.

A token reads `csd_<id>_<secret>`: the id is public (it names the token
in `snapd token list` and `revoke`), the secret is 32 random bytes.  The
store keeps the SHA-256 of the secret; with that much entropy a slow hash
adds nothing.  Revocation and expiry are read from the store on every
request, so they take effect on the next one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from snapd.core.store import Store, _ms, _s

PREFIX = "csd"
_TOKEN = re.compile(r"csd_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
TOUCH_EVERY = 60.0
"""Seconds between last_used_at writes for one token (a write per request would be waste)."""


@dataclass(frozen=True)
class Token:
    """A token's scope and state (never its secret)."""

    id: str
    admin: bool
    project: str | None
    containers: tuple[str, ...]
    read_only: bool
    metrics: bool
    """May read /metrics (and nothing else, unless also scoped to a project)."""
    files: bool
    """May read files in its containers' snapshots (tree, file, diff) even when read-only."""
    replicate: bool
    """May import streams into any container and list and get their snapshots (a
    replication target's token for its senders), nothing else."""
    label: str | None
    created_at: float
    last_used_at: float | None
    expires_at: float | None
    revoked_at: float | None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def as_json(self) -> dict:
        from snapd.core.clock import iso

        return {
            "id": self.id,
            "label": self.label,
            "scope": {
                "admin": self.admin,
                "project": self.project,
                "containers": list(self.containers),
                "read_only": self.read_only,
                "metrics": self.metrics,
                "files": self.files,
                "replicate": self.replicate,
            },
            "created_at": iso(self.created_at),
            "last_used_at": iso(self.last_used_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
        }


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_DUMMY_HASH = _hash("x" * 43)


def _token(row: dict) -> Token:
    return Token(
        id=row["id"],
        admin=bool(row["admin"]),
        project=row["project"],
        containers=tuple(json.loads(row["containers"] or "[]")),
        read_only=bool(row["read_only"]),
        metrics=bool(row["metrics"]),
        files=bool(row.get("files", 0)),
        replicate=bool(row.get("replicate", 0)),
        label=row["label"],
        created_at=row["created_at"] / 1000.0,
        last_used_at=_s(row["last_used_at"]),
        expires_at=_s(row["expires_at"]),
        revoked_at=_s(row["revoked_at"]),
    )


class Tokens:
    """Token records in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._touched: dict[str, float] = {}

    def create(
        self,
        *,
        now: float,
        admin: bool = False,
        project: str | None = None,
        containers: list[str] | None = None,
        read_only: bool = False,
        metrics: bool = False,
        files: bool = False,
        replicate: bool = False,
        label: str | None = None,
        expires_at: float | None = None,
    ) -> tuple[Token, str]:
        """A new token; returns it and the bearer string (shown once, never stored)."""
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        self.store.token_insert(
            {
                "id": token_id,
                "hash": _hash(secret),
                "admin": int(admin),
                "project": project,
                "containers": json.dumps(sorted(set(containers or []))),
                "read_only": int(read_only),
                "metrics": int(metrics),
                "files": int(files),
                "replicate": int(replicate),
                "label": label,
                "created_at": _ms(now),
                "last_used_at": None,
                "expires_at": _ms(expires_at),
                "revoked_at": None,
            }
        )
        return self.get(token_id), f"{PREFIX}_{token_id}_{secret}"  # type: ignore[return-value]

    def get(self, token_id: str) -> Token | None:
        row = self.store.token_row(token_id)
        return _token(row) if row else None

    def list(self) -> list[Token]:
        return [_token(r) for r in self.store.token_rows()]

    def revoke(self, token_id: str, now: float) -> Token | None:
        self.store.token_revoke(token_id, _ms(now))
        return self.get(token_id)

    def verify(self, bearer: str, now: float) -> Token | None:
        """The usable token this bearer string proves, or None.  Constant-time on the secret."""
        m = _TOKEN.fullmatch(bearer)
        token_id, secret = (m.group(1), m.group(2)) if m else ("", "x" * 43)
        row = self.store.token_row(token_id) if m else None
        stored = row["hash"] if row else _DUMMY_HASH
        match = hmac.compare_digest(_hash(secret), stored)
        if not (m and row and match):
            return None
        token = _token(row)
        if not token.usable(now):
            return None
        if now - self._touched.get(token.id, 0.0) >= TOUCH_EVERY:
            self._touched[token.id] = now
            self.store.token_touch(token.id, _ms(now))
        return token
