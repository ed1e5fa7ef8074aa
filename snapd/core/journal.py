"""Settle operations a crash interrupted: every create, restore, delete and freeze is journalled.

The service writes an operation's intent to the store's `journal` table
(op, container, snapshot, pool and what recovery needs: alias, expiry and
creation time of a create, the refs of a delete) BEFORE it touches the
disk, and marks it done in the same transaction that records its outcome
in the store.  So after a crash an entry still 'pending' is exactly an
operation whose outcome the store does not have.

At start-up, after every pool's open() (which sweeps the pool's scratch
area -- overlay and btrfs `.snapshots/.tmp`, ZFS interrupted restores)
and BEFORE reconcile and before listening, `recover()` settles each
pending entry, oldest first:

create   Roll FORWARD if the snapshot is on disk (every backend makes it
         visible in one atomic step -- rename, snapshot ioctl, `zfs
         snapshot` -- so a visible snapshot is whole): the row is written
         with the alias, expiry and creation time from the journal (what
         reconcile alone could not recover on overlay and btrfs).  Roll
         BACK otherwise: nothing is on disk but scratch, which open() swept.
restore  The container swap is one atomic step (RENAME_EXCHANGE, or the
         ZFS rename pair that ZFS's repair completes or undoes), so the
         container is whole as before or as after; backend.recover()
         removes what the scratch sweep cannot see (ZFS: repair + holder
         GC; overlay: a build beside upper/).  Moved refs are re-read by
         the reconcile that follows.  last_used_at is not set (the disk
         cannot say whether the swap happened).
delete   Always rolled FORWARD (a delete is idempotent): the snapshot is
         deleted on disk if still there, then its row.
freeze   A container frozen for its snapshot (snapd/core/freeze.py): THAWED
         (0 written to the cgroup.freeze the entry names; a cgroup gone
         needs nothing).  Settled before every other entry, so a frozen
         container waits for no other recovery, and also when its pool is
         no longer configured (the cgroup does not depend on the pool).

An entry whose pool is not configured, or whose settling fails in any way
(an exception of any type), stays pending (logged, and reported in
`problems` for `snapd status`) and is tried again at the next start or by
`snapd reconcile`; the other entries are settled all the same.
"""

from __future__ import annotations

import logging

from backends.base import Backend, BackendError, ContainerNotFound, SnapshotRef

from snapd.core.clock import Clock
from snapd.core.freeze import thaw_journalled
from snapd.core.store import JournalEntry, SnapshotRow, Store

log = logging.getLogger("snapd.journal")


async def recover(store: Store, backends: list[Backend], clock: Clock | None = None, *,
                  every_pool: bool = True, problems: dict[int, str] | None = None) -> int:
    """Settle every unfinished operation of these pools; the number settled.

    `every_pool`: `backends` are all the configured pools (start-up), so an
    entry of another pool is reported; False on a reload that opens new pools
    (other pools' pending entries may be operations in flight right now).
    `problems`: filled with journal id -> why, for each entry left pending.
    """
    problems = {} if problems is None else problems
    clock = clock or Clock()
    by_pool = {b.pool_id: b for b in backends}
    settled = 0
    for entry in sorted(store.journal_pending(), key=lambda e: (e.op != "freeze", e.id)):  # thaw first
        backend = by_pool.get(entry.pool)
        what = f"journal id={entry.id} op={entry.op} container={entry.container_id} snapshot={entry.snapshot}"
        if backend is None and not every_pool:
            continue  # another pool's entry: maybe an operation in flight
        if backend is None and entry.op != "freeze":
            log.warning("%s left pending: pool %s is not configured", what, entry.pool)
            problems[entry.id] = f"{what} left pending: pool {entry.pool} is not configured"
            continue
        try:
            if entry.op == "freeze":
                outcome = thaw_journalled(entry.data)
            else:
                await backend.recover(entry.op, entry.container_id, entry.snapshot, entry.data)  # type: ignore[union-attr]
                outcome = await _SETTLE[entry.op](store, backend, entry)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - tried again at the next start
            why = str(exc) or type(exc).__name__
            log.error("%s not settled (tried again at the next start): %s", what, why,
                      exc_info=not isinstance(exc, BackendError))
            problems[entry.id] = f"{what} left pending: {why}"
            continue
        problems.pop(entry.id, None)
        store.journal_end(entry.id, "recovered", clock.now())
        log.info("recover %s pool=%s outcome=%s", what, entry.pool, outcome)
        settled += 1
    store.journal_prune()
    return settled


async def _on_disk(backend: Backend, cid: str) -> dict[str, object]:
    try:
        listed = await backend.list(cid)
    except ContainerNotFound:
        return {}
    return {f.name: f for f in listed.get(cid, [])}


async def _create(store: Store, backend: Backend, e: JournalEntry) -> str:
    cid, name = e.container_id, e.snapshot or ""
    facts = (await _on_disk(backend, cid)).get(name)
    if facts is None:
        return "rolled back (no snapshot on disk; scratch swept)"
    if store.get(cid, name) is not None:
        return "already recorded"
    store.insert(SnapshotRow(
        container_id=cid, name=name, pool=e.pool,
        created_at=float(e.data.get("created_at") or facts.created_at),  # type: ignore[attr-defined]
        alias=e.data.get("alias"), expires_at=e.data.get("expires_at"),
        size=facts.size, ref=facts.ref,  # type: ignore[attr-defined]
        policy=e.data.get("policy"),
    ))
    return "rolled forward (snapshot complete on disk; row written from the journal)"


async def _restore(store: Store, backend: Backend, e: JournalEntry) -> str:
    return "settled on disk (container whole, as before or after the atomic swap)"


async def _delete(store: Store, backend: Backend, e: JournalEntry) -> str:
    cid = e.container_id
    refs: dict[str, str] = e.data.get("refs") or {n: "" for n in (e.snapshot or "").split(",") if n}
    results = await backend.delete(cid, [SnapshotRef(n, r) for n, r in refs.items()])
    kept = {n: err for n, err in results.items() if err is not None}
    for name in refs:
        if name not in kept:
            store.delete(cid, name)
    if kept:
        raise BackendError("; ".join(f"{n}: {err}" for n, err in kept.items()))
    return f"rolled forward (deleted {', '.join(refs)})"


async def _restore_paths(store: Store, backend: Backend, e: JournalEntry) -> str:
    return "settled on disk (each path as before or after its swap; temporaries swept)"


_SETTLE = {"create": _create, "restore": _restore, "delete": _delete, "restore-paths": _restore_paths}
