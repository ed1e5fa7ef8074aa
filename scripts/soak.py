#!/usr/bin/env python3
"""A long crash soak: operations SIGKILLed at random moments, restarts, full checks.

    sudo .venv/bin/python scripts/soak.py --kind overlay --n 200 [--seed 42] [--max-delay 0.06]

Each round: (sometimes) change the live container, start one create,
restore or delete, SIGKILL the daemon after a random delay, restart it and
check the invariants of tests/crash.py (container as before or after,
every listed snapshot present with unchanged content, nothing on disk the
store does not list, no unfinished journal entry).  The test suite runs
the same loop briefly (tests/test_faults.py::test_random_kills).
btrfs and zfs need root (loop device / zfs-fuse); everything made is removed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crash import soak  # noqa: E402
from tests.harness import harness_class  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["overlay", "btrfs", "zfs"], default="overlay")
    ap.add_argument("--n", type=int, default=100, help="operations (each killed and recovered)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-delay", type=float, default=0.06, help="kill within this many seconds")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    cls = harness_class(args.kind)
    why = cls.unavailable()
    if why:
        print(f"soak: {args.kind} unavailable: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="snapd-soak-") as tmp:
        pool = cls(Path(tmp) / "pool")
        try:
            t0 = time.monotonic()
            print(f"soak kind={args.kind} n={args.n} seed={seed}")
            stats = soak(pool, Path(tmp) / "daemon", args.n, seed, max_delay=args.max_delay, log=print)
            print(f"ok: {stats} in {time.monotonic() - t0:.1f}s (seed {seed})")
        finally:
            pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
