"""Native streams made by hand (`btrfs send` or `zfs send` in the envelope), for tests that damage or replay one."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

from backends.portable import Header, NativeFramer


def when(text: str) -> float:
    """Seconds since the epoch of an API timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def native_stream(pool_spec: str, cid: str, name: str, created_at: float, **header: object) -> bytes:
    """The native envelope around `btrfs send` or `zfs send` of snapshot `name` of `cid` in
    pool `pool_spec` (`btrfs:ROOT`, `zfs:DATASET`); header fields beyond these as given."""
    kind, _, root = pool_spec.partition(":")
    if kind == "zfs":
        argv = ["zfs", "send", f"{root}/{cid}@{name}"]
    else:
        argv = ["btrfs", "send", "-q", str(Path(root) / ".snapshots" / cid / name)]
    sent = subprocess.run(argv, capture_output=True, check=True).stdout
    framer = NativeFramer(Header(**{"container": cid, "snapshot": name, "created_at": created_at,  # type: ignore[arg-type]
                                    "native": kind, **header}))
    return framer.start() + b"".join(framer.frames(sent)) + framer.end()
