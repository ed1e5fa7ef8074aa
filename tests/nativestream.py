"""Native btrfs streams made by hand (`btrfs send` in the envelope), for tests that damage or replay one."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

from backends.portable import Header, NativeFramer


def when(text: str) -> float:
    """Seconds since the epoch of an API timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def native_stream(pool_spec: str, cid: str, name: str, created_at: float, **header: object) -> bytes:
    """The native envelope around `btrfs send` of snapshot `name` of `cid` in btrfs pool
    `pool_spec` (`btrfs:ROOT`); header fields beyond these as given."""
    path = Path(pool_spec.partition(":")[2]) / ".snapshots" / cid / name
    sent = subprocess.run(["btrfs", "send", "-q", str(path)], capture_output=True, check=True).stdout
    framer = NativeFramer(Header(**{"container": cid, "snapshot": name, "created_at": created_at,  # type: ignore[arg-type]
                                    "native": "btrfs", **header}))
    return framer.start() + b"".join(framer.frames(sent)) + framer.end()
