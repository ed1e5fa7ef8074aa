"""What a replication job sends: pure logic over two snapshot lists.

Given the sender's snapshots and the target's (name, created_at), the snapshots to
send are the sender's newer than the newest one both hold, oldest first, each as an
incremental from the one before it (the first from that common snapshot; in full
when there is none).  Snapshots older than the common one that the target lacks
are not sent again: the target pruned them, or never needed them.

The chain is broken (Diverged) when the target holds a snapshot newer than the
common one that the sender does not have (it was made there, or sent by someone
else), or holds snapshots but none in common (the base is gone on one side).
`full=True` sends anyway: the first snapshot in full, whatever the target holds.

Each send then goes as the filesystem's own stream when the target's pool takes the
sender's native kind and the send is full or starts from a snapshot the target can use
as a native base (received natively: `stream_kind`); otherwise as a portable stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from backends.portable import PORTABLE


@dataclass(frozen=True)
class Snap:
    """One snapshot as a plan sees it."""

    name: str
    created_at: float


@dataclass(frozen=True)
class Send:
    """Send `name`, as the changes since `base` (None: in full)."""

    name: str
    base: str | None


@dataclass(frozen=True)
class Plan:
    sends: list[Send]
    common: str | None
    """The newest snapshot both sides hold before the job (None: none)."""


class Diverged(Exception):
    """The target's snapshots do not continue the sender's chain; `full=True` resends."""

    def __init__(self, message: str, snapshots: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.snapshots = snapshots


def _order(snaps: Iterable[Snap]) -> list[Snap]:
    return sorted(snaps, key=lambda s: (s.created_at, s.name))


def _ms(t: float) -> int:
    return round(t * 1000)


def plan(sender: Iterable[Snap], target: Iterable[Snap], full: bool = False) -> Plan:
    """The snapshots to send, oldest first, each with its base; Diverged unless `full`.
    A snapshot both hold has one name and one created_at (to the ms) on both sides: a
    name the target gave a snapshot of its own is not common, it is the target's."""
    mine, theirs = _order(sender), _order(target)
    their_times = {s.name: _ms(s.created_at) for s in theirs}
    mine_times = {s.name: _ms(s.created_at) for s in mine}
    common = next((s for s in reversed(mine) if their_times.get(s.name) == _ms(s.created_at)), None)
    if common is None:
        pending = mine
        foreign = theirs
    else:
        pending = [s for s in mine if (s.created_at, s.name) > (common.created_at, common.name)]
        foreign = [s for s in theirs if mine_times.get(s.name) != _ms(s.created_at)
                   and s.created_at >= common.created_at]
    if foreign and not full:
        names = [s.name for s in foreign]
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        if common is None:
            message = (f"the target holds snapshots ({listed}) but none that this daemon holds: there is no "
                       "common snapshot to send changes from; send in full (full: true) to start a new chain")
        else:
            message = (f"the target holds snapshots newer than {common.name}, the newest both hold, that this "
                       f"daemon does not have ({listed}); the chain has diverged: remove them on the target "
                       "or send in full (full: true)")
        raise Diverged(message, names)
    sends = []
    base = None if (full or common is None) else common.name
    for s in pending:
        sends.append(Send(s.name, base))
        base = s.name
    return Plan(sends, common.name if common else None)



@dataclass(frozen=True)
class Accepts:
    """What the target's pool takes for one container (its import-formats answer)."""

    kinds: tuple[str, ...] = (PORTABLE,)
    """Stream kinds, the native one first."""
    native_bases: frozenset[str] = frozenset()
    """Snapshots a native incremental may start from there."""


def stream_kind(native: str | None, accepts: Accepts, base: str | None) -> str:
    """The stream to send one snapshot as: the sender's `native` kind when the target takes
    it and the send is full or `base` is a native base there; else portable."""
    if native is not None and native in accepts.kinds and (base is None or base in accepts.native_bases):
        return native
    return PORTABLE
