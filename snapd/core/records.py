"""What the store holds, as the rest of the daemon sees it: plain frozen records."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SnapshotRow:
    """One snapshot as the store knows it."""

    container_id: str
    name: str
    pool: str
    created_at: float
    alias: str | None = None
    last_used_at: float | None = None
    expires_at: float | None = None
    size: int | None = None
    ref: str = ""
    policy: str | None = None
    """The policy that took it (None: taken by request, governed by expires_at alone)."""
    hold_reason: str | None = None
    """Why it is held (None: not held); a held snapshot is never deleted by a rule."""
    hold_since: float | None = None


@dataclass(frozen=True)
class JournalEntry:
    """One journalled operation."""

    id: int
    op: str
    container_id: str
    snapshot: str | None
    pool: str
    data: dict | None
    """What recovery needs; None when the stored data cannot be read."""
    state: str
    started_at: float
