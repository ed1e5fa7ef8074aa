"""Settling pools: finish or undo what the journal says was interrupted, then make
the store agree with the disk.

One function serves start-up (every pool, before listening), a reload (the pools
it adds) and `snapd reconcile` (every pool, with no operation in flight).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from backends.base import Backend

from snapd.core.clock import Clock
from snapd.core.journal import recover
from snapd.core.reconcile import Plan, apply, plan
from snapd.core.records import JournalEntry
from snapd.core.store import Store

log = logging.getLogger("snapd.reconcile")


@dataclass
class PoolSettlement:
    """One pool's reconcile: its plan, or why none could be made."""

    pool: str
    plan: Plan | None = None
    error: str | None = None


@dataclass
class Settlement:
    """What settling found and did."""

    dry_run: bool
    pending: list[JournalEntry] = field(default_factory=list)
    """Unfinished journal entries found first (settled unless dry_run)."""
    settled: int = 0
    pools: list[PoolSettlement] = field(default_factory=list)


async def settle(store: Store, backends: list[Backend], clock: Clock, *, configured: set[str] | None = None,
                 every_pool: bool = True, dry_run: bool = False,
                 before_each: Callable[[], None] = lambda: None,
                 journal_problems: dict[int, str] | None = None) -> Settlement:
    """Recover the journal, then reconcile each of `backends` with the store.

    `configured`: every configured pool when `backends` are only some (a reload
    adding pools); `every_pool` False then, so other pools' pending entries (maybe
    operations in flight) are left alone.  `dry_run` computes the plans only.
    `before_each` runs before each step that may take long (systemd's timeout).
    `journal_problems` gets journal id -> why for each entry left pending.  Nothing
    here raises for one bad entry or pool: a pool that cannot be reconciled is
    reported in its PoolSettlement and its rows left as they are.
    """
    configured = configured or {b.pool_id for b in backends}
    mine = {b.pool_id for b in backends}
    result = Settlement(dry_run, [e for e in store.journal_pending() if every_pool or e.pool in mine])
    before_each()
    if result.pending and not dry_run:
        result.settled = await recover(store, backends, clock, every_pool=every_pool,
                                       problems=journal_problems)
    for backend in backends:
        before_each()
        pool = backend.pool_id
        try:
            p = await plan(store, backend, configured)
            if not dry_run:
                apply(store, p)
        except Exception as exc:  # noqa: BLE001 - one pool's trouble is reported, not fatal
            log.error("reconcile pool=%s skipped: %s", pool, exc, exc_info=exc)
            result.pools.append(PoolSettlement(pool, error=f"not reconciled with the store: {exc}"))
            continue
        result.pools.append(PoolSettlement(pool, p))
    return result
