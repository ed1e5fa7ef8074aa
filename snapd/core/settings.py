"""Per-pool settings the service applies: reserves, snapshot limits, hooks, freezing.

Plain values; snapd/host/config.py reads them from the file and flags.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOOK_TIMEOUT = 60.0
MAX_EXPIRY_DAYS = 36500
"""The longest expiry, in days, a request or the config may give (100 years)."""
DEFAULT_CGROUP_TEMPLATE = "/sys/fs/cgroup/machine.slice/{id}.scope"
DEFAULT_FREEZE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Reserve:
    """What a create must leave free in a pool (bytes or inodes): an amount, a fraction
    of the pool, or the smaller of both (`"1GiB,5%"`).  Zero disables the check."""

    amount: int | None = None
    fraction: float | None = None
    unit: str = "bytes"

    @property
    def off(self) -> bool:
        """A zero amount or fraction: the smaller of the two is always zero."""
        return self.amount == 0 or self.fraction == 0

    def required(self, total: int | None) -> int:
        """The reserve for a pool of `total` bytes or inodes (None: size unknown)."""
        options = []
        if self.amount is not None:
            options.append(self.amount)
        if self.fraction is not None and total is not None:
            options.append(int(total * self.fraction))
        return min(options) if options else 0

    def __str__(self) -> str:
        parts = ([f"{self.amount} {self.unit}"] if self.amount is not None else []) + (
            [f"{self.fraction * 100:g}%"] if self.fraction is not None else [])
        return " or ".join(parts) if parts else "none"


@dataclass(frozen=True)
class PoolPolicy:
    """Per-pool safety settings: free-space and inode reserves, snapshot limits, hooks
    around restores and snapshots, freezing running containers (snapd/core/freeze.py)."""

    reserve: Reserve = Reserve(1 << 30, 0.05)
    """The smaller of 1 GiB and 5% (config: "1GiB,5%")."""
    reserve_inodes: Reserve = Reserve(None, 0.05, "inodes")
    """5% of the pool's inodes (config: "5%")."""
    max_snapshots_per_container: int = 0
    """A create that would give one container more snapshots than this is refused (0: no limit)."""
    max_snapshots_per_project: int = 0
    """The same for all containers of one project in this pool (0: no limit)."""
    manual_expiry: float | None = None
    """Days: the expiry of a snapshot made by request (POST) without an `expiry` key
    (None: such a snapshot never expires, the reference's behaviour)."""
    pre_restore: tuple[str, ...] = ()
    """argv run (no shell) before a restore; failure refuses the restore (409)."""
    post_restore: tuple[str, ...] = ()
    """argv run after a restore (also a failed one, once pre_restore ran); failure is logged."""
    pre_snapshot: tuple[str, ...] = ()
    """argv run before a snapshot (before any freeze); failure refuses the snapshot (409)."""
    post_snapshot: tuple[str, ...] = ()
    """argv run after a snapshot (after the thaw; also after a failed one, once pre_snapshot
    ran); failure is logged."""
    hook_timeout: float = DEFAULT_HOOK_TIMEOUT
    freeze: bool = False
    """Freeze a running container's cgroup while its snapshot is taken."""
    cgroup_template: str = DEFAULT_CGROUP_TEMPLATE
    """A container's cgroup v2 directory; `{id}` is replaced by the container id."""
    freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT
    """Seconds to wait for `frozen 1`; then the freeze is abandoned, the snapshot taken."""
    layout: str = "auto"
    """Overlay pools: what a snapshot of a container without a layout label captures:
    "overlay" (upper/), "whole", or "auto" (decided at its first snapshot, then recorded)."""


@dataclass(frozen=True)
class Target:
    """Another container-snapd that snapshots are replicated to (`[targets.NAME]`)."""

    name: str
    url: str
    """The receiver's TCP listener, `http://` or `https://`, without a path."""
    token_file: str
    """A file holding a token the receiver issued with the `replicate` scope (read per job)."""
    tls_ca: str | None = None
    """A PEM file of the CA that signed the receiver's certificate (None: the system's)."""
    bandwidth: int | None = None
    """Bytes per second a job may send at most (None: no limit)."""
    compression: str = "none"
    """How portable streams to it are compressed ("none" or "zstd"); native streams go as
    the filesystem writes them."""
