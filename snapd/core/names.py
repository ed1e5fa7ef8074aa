"""Snapshot names: `snap-YYYYMMDD-HHMMSS`, then `-2`, `-3`, ... within one second.

A name, once given, never names another snapshot of the same container.
The store keeps a per-container high-water mark (the greatest name ever
given); a new name is the stamp of its creation second unless that is not
above the mark, in which case it continues after the mark.  Names compare
by (second, sequence): any name of a later second is greater; within a
second the suffix decides (`-10` after `-9`).  Names not in this form
(adopted from disk, made by hand) can never collide with one the daemon
makes and take no part.
"""

from __future__ import annotations

import re
from typing import Iterable

_NAME = re.compile(r"snap-(\d{8})-(\d{6})(?:-([1-9]\d{0,8}))?")

NameKey = tuple[str, int]
"""(`YYYYMMDDHHMMSS`, sequence): sequence 1 for the bare stamp."""


def name_key(name: str) -> NameKey | None:
    """Where `name` sits in the order of generated names; None when it is not one."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    return m.group(1) + m.group(2), int(m.group(3) or 1)


def highest(names: Iterable[str | None]) -> str | None:
    """The greatest generated name among `names` (others and None ignored)."""
    best: tuple[NameKey, str] | None = None
    for name in names:
        key = name_key(name) if name else None
        if key is not None and (best is None or key > best[0]):
            best = (key, name)  # type: ignore[assignment]
    return best[1] if best else None


def next_name(stamp: str, floor: str | None) -> str:
    """The first name for creation second `stamp` (`snap-YYYYMMDD-HHMMSS`) above `floor`.

    `floor` is the greatest name already given.  Normally it belongs to an
    earlier second and the bare stamp is returned; within the same second
    the next suffix; and if the clock has stepped back below `floor`,
    the name continues after `floor` (its second, the next suffix) so that
    it is still new.
    """
    key = name_key(stamp)
    assert key is not None and key[1] == 1, stamp
    low = name_key(floor) if floor else None
    if low is None or low < key:
        return stamp
    return f"snap-{low[0][:8]}-{low[0][8:]}-{low[1] + 1}"
