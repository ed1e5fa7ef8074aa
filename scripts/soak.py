#!/usr/bin/env python3
"""A long crash soak: operations SIGKILLed at random moments, restarts, full checks.

    sudo .venv/bin/python scripts/soak.py --kind overlay --n 200 [--seed 42] [--max-delay 0.06]
    sudo .venv/bin/python scripts/soak.py --kind btrfs --hostile --n 100

Each round: (sometimes) change the live container, start one create,
restore or delete, SIGKILL the daemon after a random delay, restart it and
check the invariants of tests/crash.py (container as before or after,
every listed snapshot present with unchanged content, nothing on disk the
store does not list, nothing left in scratch or quarantine, no start-up
problem, no unfinished journal entry; the daemon starts every time).

--hostile gives the container a 5,000-level tree (--depth) with hard links
and symlinks beyond PATH_MAX, symlinks to a canary tree outside the pool,
and in phases of a few rounds a tmpfs and a same-filesystem bind mount
inside it: restores must then be refused (409) or killed before answering,
and the mounts and their content, like the canary, must survive.  The
deep tree changes at random between rounds.  Kills land within
--max-delay seconds (default 0.06); with --hostile that is each
operation's first window (default 0.5), which then adapts to how long
the operation takes (tests/crash.py: soak).

The test suite runs the same loop briefly (tests/test_faults.py::test_random_kills).
btrfs and zfs need root (loop device / zfs-fuse), mounts need root;
everything made is unmounted and removed, also on failure.  Exit status 1
on an inconsistency or a failed start, 2 when the backend is unavailable.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crash import SoakFailed, soak  # noqa: E402
from tests.harness import harness_class  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["overlay", "btrfs", "zfs"], default="overlay")
    ap.add_argument("--n", type=int, default=100, help="operations (each killed and recovered)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-delay", type=float, default=None, help="kill within this many seconds")
    ap.add_argument("--hostile", action="store_true", help="deep tree, links beyond PATH_MAX, mounts inside")
    ap.add_argument("--depth", type=int, default=5000, help="levels of the hostile tree")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    max_delay = args.max_delay if args.max_delay is not None else 0.5 if args.hostile else 0.06
    cls = harness_class(args.kind)
    why = cls.unavailable()
    if why:
        print(f"soak: {args.kind} unavailable: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="snapd-soak-") as tmp:
        pool = cls(Path(tmp) / "pool")
        t0 = time.monotonic()
        print(f"soak kind={args.kind} n={args.n} seed={seed} max_delay={max_delay}"
              f"{f' hostile depth={args.depth}' if args.hostile else ''}", flush=True)
        try:
            stats = soak(pool, Path(tmp) / "daemon", args.n, seed, max_delay=max_delay,
                         hostile=args.hostile, depth=args.depth, log=lambda m: print(m, flush=True))
        except SoakFailed as exc:
            log = Path(tmp) / "daemon" / "daemon.log"
            tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
            print("\n".join(["daemon log (last lines):", *tail]))
            print(f"FAILED: {exc}\n{exc.stats} after {time.monotonic() - t0:.1f}s (seed {seed})")
            return 1
        finally:
            pool.close()
        print(f"ok: {stats} in {time.monotonic() - t0:.1f}s (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
