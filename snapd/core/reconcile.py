"""Make the store agree with the pools: adopt what is on disk, forget what is not.

Runs at start-up (before listening).  A snapshot on disk that the store
does not know is adopted, with alias and expiry from metadata mirrored on
disk where the backend keeps it, and with the policy that took it and its
hold (every backend records those on disk); a row whose snapshot is gone is removed;
a ref that moved is updated; a hold the disk records differently is taken from the
disk (a hold is written there first); a container's name mark (snapd/core/names.py)
is raised to the greater of the mark kept on disk and the names on disk, so
a store rebuilt from the pools never gives a name twice.  Every action is
logged with what and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from backends.base import Backend, SnapshotFacts

from snapd.core.names import highest
from snapd.core.store import SnapshotRow, Store

log = logging.getLogger("snapd.reconcile")


@dataclass
class Plan:
    """What reconciling one pool would do."""

    pool: str
    adopt: list[SnapshotRow] = field(default_factory=list)
    forget: list[SnapshotRow] = field(default_factory=list)
    moved: list[tuple[SnapshotRow, str]] = field(default_factory=list)
    rehomed: list[tuple[SnapshotRow, str]] = field(default_factory=list)
    """Rows the store keeps under a pool no longer configured (its spec was renamed)."""
    conflicts: list[SnapshotRow] = field(default_factory=list)
    """Rows another configured pool already holds for the same container and name."""
    refused: str | None = None
    holds: list[tuple[SnapshotRow, str | None, float | None]] = field(default_factory=list)
    """Rows whose hold differs from the one recorded on disk, with the disk's (reason,
    since): the disk is written first, so after a crash between the two it is right."""
    marks: dict[str, str] = field(default_factory=dict)
    """Container id -> a higher name mark for the store: the greater of the mark
    kept on disk and the names on disk (a rebuilt store never reuses a name)."""



def _adopted(pool: str, cid: str, facts: SnapshotFacts) -> SnapshotRow:
    return SnapshotRow(
        container_id=cid,
        name=facts.name,
        pool=pool,
        created_at=round(facts.created_at * 1000) / 1000,
        alias=facts.alias if facts.mirrored else None,
        expires_at=facts.expires_at if facts.mirrored else None,
        size=facts.size,
        ref=facts.ref,
        policy=facts.policy,
        hold_reason=facts.hold_reason,
        hold_since=_ms_round(facts.hold_since),
    )


def _ms_round(ts: float | None) -> float | None:
    """A time as the store keeps it (whole milliseconds)."""
    return None if ts is None else round(ts * 1000) / 1000


async def plan(store: Store, backend: Backend, configured: set[str] | None = None) -> Plan:
    """Compare one pool's snapshots on disk with the store's rows for it.

    `configured`: every configured pool; a row that another, unconfigured
    pool name holds is taken over (alias and expiry kept), one that a
    configured pool holds is a conflict left alone.
    """
    pool = backend.pool_id
    result = Plan(pool)
    on_disk = await backend.list(None)
    rows = {(r.container_id, r.name): r for r in store.pool_rows(pool)}
    disk = {(cid, f.name): f for cid, facts in on_disk.items() for f in facts}
    for key, facts in disk.items():
        row = rows.get(key)
        if row is None:
            elsewhere = store.get(*key)
            if elsewhere is None:
                result.adopt.append(_adopted(pool, key[0], facts))
            elif configured is not None and elsewhere.pool in configured:
                result.conflicts.append(elsewhere)
            else:
                result.rehomed.append((elsewhere, facts.ref))
        else:
            if facts.ref and facts.ref != row.ref:
                result.moved.append((row, facts.ref))
            if facts.hold_reason != row.hold_reason:
                result.holds.append((row, facts.hold_reason, _ms_round(facts.hold_since)))
    result.forget = [row for key, row in rows.items() if key not in disk]
    try:
        disk_marks = await backend.name_marks(None)
    except Exception as exc:  # noqa: BLE001 - names on disk still count
        log.warning("reconcile pool=%s cannot read name marks: %s", pool, exc)
        disk_marks = {}
    for cid in set(on_disk) | set(disk_marks):
        top = highest([disk_marks.get(cid), *(f.name for f in on_disk.get(cid, []))])
        current = store.name_mark(cid)
        if top is not None and highest([current, top]) != current:
            result.marks[cid] = top
    if result.forget and not disk:
        # Every known snapshot gone at once looks like an unmounted pool, not deletions.
        result.refused = (
            f"none of the {len(result.forget)} known snapshots were found on disk; "
            "is the pool mounted? rows kept"
        )
        result.forget = []
    return result


def apply(store: Store, p: Plan) -> None:
    if p.refused:
        log.warning("reconcile pool=%s refused: %s", p.pool, p.refused)
    for row in p.adopt:
        log.info("reconcile pool=%s adopt container=%s snapshot=%s why=on disk, not in store",
                 p.pool, row.container_id, row.name)
    store.insert_many(p.adopt)
    for row, ref in p.rehomed:
        log.info("reconcile pool=%s take-over container=%s snapshot=%s from=%s why=its pool is no longer "
                 "configured under that name", p.pool, row.container_id, row.name, row.pool)
        store.rehome(row.container_id, row.name, p.pool, ref)
    for row in p.conflicts:
        log.warning("reconcile pool=%s conflict container=%s snapshot=%s: pool %s holds it too; left alone",
                    p.pool, row.container_id, row.name, row.pool)
    for row in p.forget:
        log.info("reconcile pool=%s forget container=%s snapshot=%s why=in store, not on disk",
                 p.pool, row.container_id, row.name)
        store.delete(row.container_id, row.name)
    for row, ref in p.moved:
        log.info("reconcile pool=%s update-ref container=%s snapshot=%s ref=%s why=moved on disk",
                 p.pool, row.container_id, row.name, ref)
        store.update(row.container_id, row.name, ref=ref)
    for row, reason, since in p.holds:
        log.info("reconcile pool=%s %s container=%s snapshot=%s why=%s on disk", p.pool,
                 "hold" if reason is not None else "release", row.container_id, row.name,
                 f"held ({reason!r})" if reason is not None else "not held")
        store.set_hold(row.container_id, row.name, reason, None if since is None else round(since * 1000))
    for cid, mark in p.marks.items():
        log.info("reconcile pool=%s name-mark container=%s mark=%s why=names up to it were given",
                 p.pool, cid, mark)
        store.raise_name_mark(cid, mark)

