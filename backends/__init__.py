"""Filesystem backends: one module per kind, chosen by name or detected."""

from __future__ import annotations

import importlib

from .base import Backend, PoolError
from .fsops import fs_type

KINDS: dict[str, str] = {
    "overlay": "backends.overlay:OverlayBackend",
    "btrfs": "backends.btrfs:BtrfsBackend",
    "zfs": "backends.zfs:ZfsBackend",
}
"""Backend kind -> 'module:Class' (imported only when a pool uses it)."""


def detect(root: str) -> str:
    """The backend kind for `root`: a ZFS dataset name, or a directory's filesystem."""
    if not root.startswith("/"):
        return "zfs"
    fstype = fs_type(root)
    if fstype == "btrfs":
        return "btrfs"
    if fstype == "zfs":
        raise PoolError(f"{root} is on ZFS: name the dataset (zfs:pool/dataset), not its mountpoint")
    return "overlay"


def make_backend(kind: str, root: str) -> Backend:
    """A backend instance for pool `kind:root` (`auto` detects the kind)."""
    if kind == "auto":
        kind = detect(root)
    if kind not in KINDS:
        raise PoolError(f"unknown backend {kind!r} (expected one of: auto, {', '.join(KINDS)})")
    module, _, cls = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(root)
