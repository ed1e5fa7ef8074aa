"""Which container follows which policy: the pools' containers resolved against the policies.

The containers are read from the pools (service.containers(): one pass per
pool) at most every REFRESH seconds of real time, and at once when asked
(a policy change, `snapd policy plan`); between reads the answer is kept.
Most specific wins (spec.resolve: container over project over pool).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from snapd.core.policies.spec import PolicyError, PolicySpec, resolve
from snapd.core.service import Container, SnapshotService

REFRESH = 30.0
"""Seconds (real time) an inventory of the pools' containers is used before it is read again."""


def same_pool(a: str, b: str) -> bool:
    """Whether pool specs `a` and `b` (`backend:root`) name one pool: one root, and the same
    backend unless either says `auto`."""
    kind_a, _, root_a = a.partition(":")
    kind_b, _, root_b = b.partition(":")
    return root_a == root_b and (kind_a == kind_b or "auto" in (kind_a, kind_b))


@dataclass(frozen=True)
class Covered:
    """A container and the policy it follows."""

    container: Container
    spec: PolicySpec


class Coverage:
    """The containers of every pool, and the policy each follows."""

    def __init__(self, service: SnapshotService, refresh: float = REFRESH) -> None:
        self.service = service
        self.refresh_every = refresh
        self._containers: list[Container] = []
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def containers(self, fresh: bool = False) -> list[Container]:
        """Every container of every pool (read again when older than REFRESH, or `fresh`)."""
        async with self._lock:
            stale = self._read_at is None or time.monotonic() - self._read_at > self.refresh_every
            if fresh or stale:
                self._containers = await self.service.containers()
                self._read_at = time.monotonic()
            return self._containers

    def forget(self) -> None:
        """Read the pools again at the next look (pools added or removed)."""
        self._read_at = None

    @staticmethod
    def assign(specs: Iterable[PolicySpec], containers: Iterable[Container]) -> list[Covered]:
        """Each container under a policy, with the policy it follows; by container id."""
        specs = list(specs)
        out = []
        for c in containers:
            spec = resolve(specs, c.id, c.project, c.pool) if specs else None
            if spec is not None:
                out.append(Covered(c, spec))
        return out

    async def check_applies(self, spec: PolicySpec, pools: Iterable[str]) -> None:
        """PolicyError (`applies_to`) unless `spec` names only configured pools and applies to
        at least one pool or container that exists now."""
        pools = sorted(pools)
        for i, target in enumerate(spec.applies_to):
            if target.kind == "pool" and not any(same_pool(target.value, p) for p in pools):
                raise PolicyError(f"applies_to[{i}]",
                                  f"pool {target.value} is not one of the daemon's pools "
                                  f"({', '.join(pools) or 'none'})")
        if any(t.kind == "pool" for t in spec.applies_to):
            return
        if not self.assign([spec], await self.containers(fresh=True)):
            raise PolicyError("applies_to", "applies to no container that exists (no container "
                                            "has that id or project label in any pool)")
