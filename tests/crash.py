"""Helpers for crash tests: a container with known states, and the post-restart checks.

`Scenario` holds a container with two snapshots (s1, s2) and a live state
different from both, each with its content digest.  `check()` is what every
crash test asserts after the daemon restarts: the API answers, the container
is in an allowed state, every listed snapshot exists with its content
unchanged, the pool holds nothing for the container that the store does
not list, and the journal holds no unfinished operation.
"""

from __future__ import annotations

import http.client
import os
import re
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .client import snaps
from .daemon import DaemonProcess
from .digest import tree_digest, write_tree
from .harness import PoolHarness, new_cid

CONNECTION_ERRORS = (ConnectionError, http.client.HTTPException, OSError)


def container_digest(pool: PoolHarness, cid: str) -> dict:
    return tree_digest(pool.container_path(cid))


def snapshot_digest(pool: PoolHarness, cid: str, name: str) -> dict:
    """Content digest of snapshot `name`, read from the pool itself (not through the daemon)."""
    if pool.kind in ("overlay", "btrfs"):
        path = Path(pool.root) / ".snapshots" / cid / name  # type: ignore[attr-defined]
        assert path.is_dir(), f"snapshot {name} is listed but {path} is missing"
        return tree_digest(path)
    return _zfs_snapshot_digest(pool, cid, name)


def _zfs(*args: str, check: bool = True) -> str:
    from backends.zfs_cmd import find_tool

    res = subprocess.run([find_tool("zfs"), *args], capture_output=True, text=True, timeout=120)
    if check and res.returncode:
        raise AssertionError(f"zfs {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def _zfs_err(*args: str) -> str:
    from backends.zfs_cmd import find_tool

    res = subprocess.run([find_tool("zfs"), *args], capture_output=True, text=True, timeout=120)
    return res.stderr.strip() if res.returncode else ""


def _zfs_snapshots(pool: PoolHarness, cid: str) -> dict[str, str]:
    """Visible snapshot name -> full name, on the container and its hidden holders."""
    root = pool.root  # type: ignore[attr-defined]
    own = re.compile(rf"^{re.escape(root)}/(?:{cid}|\.snapd-hidden/{cid}-\d+)@(.+)$")
    out = {}
    for line in _zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", root).splitlines():
        m = own.match(line)
        if m:
            out[m.group(1)] = line
    return out


def _zfs_snapshot_digest(pool: PoolHarness, cid: str, name: str) -> dict:
    full = _zfs_snapshots(pool, cid).get(name)
    assert full is not None, f"snapshot {name} is listed but not in the pool"
    clone = f"{pool.pool}/verify{os.getpid()}"  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as mnt:
        _zfs("destroy", "-f", clone, check=False)  # a leftover of an earlier failure
        _zfs("clone", "-o", f"mountpoint={mnt}", full, clone)
        try:
            return tree_digest(Path(mnt))
        finally:
            import time

            for attempt in range(20):  # zfs-fuse may hold the mount a moment longer
                if "cannot" not in (err := _zfs_err("destroy", "-f", clone)):
                    break
                time.sleep(0.1 * (attempt + 1))
            else:
                raise AssertionError(f"cannot destroy {clone}: {err}")


def strays(pool: PoolHarness, cid: str, listed: set[str]) -> list[str]:
    """Things on disk for `cid` (or scratch) that the store's list does not account for."""
    found = sorted(pool.artifacts())
    out = []
    if pool.kind == "overlay":
        out += [a for a in found if a.startswith(".tmp/")]
        on_disk = {a.split("/", 1)[1] for a in found if a.startswith(cid + "/")}
        out += [f"{cid}/{n}" for n in on_disk - listed]
        leftovers = [e for e in os.listdir(pool.container_path(cid)) if e.startswith(".snapd-restore-")]
        out += leftovers
    elif pool.kind == "btrfs":
        out += [a for a in found if a.startswith(".snapshots/.tmp/")]
        on_disk = {a.rsplit("/", 1)[1] for a in found if a.startswith(f".snapshots/{cid}/")}
        out += [f".snapshots/{cid}/{n}" for n in on_disk - listed]
    else:
        root = pool.root  # type: ignore[attr-defined]
        out += [a for a in found if a.endswith(f"/{cid}.restoring") or f"/{cid}.restoring@" in a]
        visible = _zfs_snapshots(pool, cid)
        out += [full for n, full in visible.items() if n not in listed]
        holders = {a for a in found if re.fullmatch(rf"{re.escape(root)}/\.snapd-hidden/{cid}-\d+", a)}
        for h in holders:
            if not any(full.startswith(h + "@") for full in visible.values()):
                out.append(f"{h} (holder with no visible snapshot)")
        if f"{root}/{cid}" not in found:
            out.append(f"{root}/{cid} MISSING")
    return out


def missing(pool: PoolHarness, cid: str, listed: set[str]) -> list[str]:
    """Snapshots of `cid` the store lists that the pool does not hold."""
    if pool.kind in ("overlay", "btrfs"):
        base = Path(pool.root) / ".snapshots" / cid  # type: ignore[attr-defined]
        return sorted(n for n in listed if not (base / n).is_dir())
    visible = _zfs_snapshots(pool, cid)
    return sorted(n for n in listed if n not in visible)


def pending_journal(d: DaemonProcess) -> list[tuple]:
    db = sqlite3.connect(str(d.state_dir / "snapd.db"))
    try:
        return db.execute("SELECT id, op, container_id, snapshot FROM journal WHERE state = 'pending'").fetchall()
    finally:
        db.close()


@dataclass
class Scenario:
    """A container with snapshots s1 and s2 and a live state unlike either."""

    pool: PoolHarness
    cid: str
    states: dict[str, dict] = field(default_factory=dict)
    """'s1', 's2', 'live' -> content digest."""
    names: dict[str, str] = field(default_factory=dict)
    """'s1', 's2' -> snapshot name."""

    @classmethod
    def make(cls, pool: PoolHarness, d: DaemonProcess) -> "Scenario":
        cid = new_cid()
        path = pool.make_container(cid)
        sc = cls(pool, cid)
        write_tree(path, {"a": "one", "dir/b": "two", "big": os.urandom(64 * 1024)})
        sc._snap(d, "s1")
        write_tree(path, {"a": "changed", "c": "three"})
        (path / "dir" / "b").unlink()
        sc._snap(d, "s2")
        write_tree(path, {"a": "live", "d/e": "four"})
        sc.states["live"] = container_digest(pool, cid)
        return sc

    def _snap(self, d: DaemonProcess, key: str) -> None:
        r = d.unix.post(snaps(self.cid), {"alias": key})
        assert r.status == 200, r.body
        self.names[key] = r.data["snapshot"]["name"]
        self.states[key] = container_digest(self.pool, self.cid)

    def check(self, d: DaemonProcess, *, container_in: list[str], must_list: list[str],
              may_list: dict[str, str]) -> list[str]:
        """The post-restart invariants.  `may_list`: name -> state key its content must equal.

        Returns the listed names.
        """
        r = d.unix.get(snaps(self.cid))
        assert r.status == 200, r.body
        listed = {s["name"]: s for s in r.data["snapshots"]}
        now = container_digest(self.pool, self.cid)
        assert any(now == self.states[k] for k in container_in), (
            f"container is in none of the states {container_in}:\n{sorted(now)}")
        for key in must_list:
            assert self.names[key] in listed, f"{key} ({self.names[key]}) lost: {sorted(listed)}"
        expected = {self.names[k]: k for k in must_list} | may_list
        for name in listed:
            assert name in expected, f"unexpected snapshot {name} listed"
            assert snapshot_digest(self.pool, self.cid, name) == self.states[expected[name]], (
                f"content of {name} changed")
        assert strays(self.pool, self.cid, set(listed)) == []
        assert pending_journal(d) == []
        return sorted(listed)


# -- random kills (tests/test_faults.py::test_random_kills, scripts/soak.py) -----------


def soak(pool: PoolHarness, workdir: Path, n: int, seed: int, *, max_delay: float = 0.06,
         log: object = None) -> dict[str, int]:
    """`n` operations, each with a SIGKILL at a random moment, a restart and the checks.

    Returns counts of what happened (ops completed before the kill, killed mid-way).
    """
    import random
    import threading
    import time

    rng = random.Random(seed)
    say = log or (lambda *a: None)
    d = DaemonProcess(workdir, [pool.spec], tcp=False).start()
    try:
        sc = Scenario.make(pool, d)
    except BaseException:
        d.kill()
        raise
    known = {sc.names["s1"]: sc.states["s1"], sc.names["s2"]: sc.states["s2"]}
    stats = {"completed": 0, "interrupted": 0}
    try:
        for i in range(n):
            if i:
                d = DaemonProcess(workdir, [pool.spec], tcp=False).start()
            if rng.random() < 0.3:
                write_tree(pool.container_path(sc.cid), {f"f{i}": os.urandom(rng.randrange(1, 256 * 1024))})
            before = container_digest(pool, sc.cid)
            op = rng.choice(["create", "create", "restore", "delete"] if len(known) > 1 else ["create", "restore"])
            target = rng.choice(sorted(known))
            result: dict = {}

            def call() -> None:
                try:
                    if op == "create":
                        r = d.unix.post(snaps(sc.cid))
                    elif op == "restore":
                        r = d.unix.patch(snaps(sc.cid, target))
                    else:
                        r = d.unix.delete(snaps(sc.cid, target))
                    result["response"] = r
                except CONNECTION_ERRORS as exc:
                    result["error"] = exc

            t = threading.Thread(target=call)
            t.start()
            time.sleep(rng.uniform(0, max_delay))
            d.kill()
            t.join(60)
            r = result.get("response")
            done = r is not None and r.status == 200
            stats["completed" if done else "interrupted"] += 1
            say(f"[{i}] {op} {target if op != 'create' else ''}: "
                f"{'completed' if done else 'killed mid-way' if r is None else r.status}")
            d = DaemonProcess(workdir, [pool.spec], tcp=False).start()
            listing = {s["name"] for s in d.unix.get(snaps(sc.cid)).data["snapshots"]}
            now = container_digest(pool, sc.cid)
            if op == "restore":
                allowed = [known[target]] if done else [before, known[target]]
            else:
                allowed = [before]
            assert now in allowed, f"[{i}] {op}: container in neither state"
            if op == "create":
                new = listing - set(known)
                assert len(new) <= 1 and (not done or r.data["snapshot"]["name"] in new), (i, new)
                for name in new:
                    known[name] = before
            if op == "delete":
                if done:
                    assert target not in listing, f"[{i}] deleted {target} is back"
                if target not in listing:
                    del known[target]
            assert set(known) == listing, f"[{i}] {op}: listed {sorted(listing)} != {sorted(known)}"
            for name, digest in known.items():
                assert snapshot_digest(pool, sc.cid, name) == digest, f"[{i}] content of {name} changed"
            assert strays(pool, sc.cid, listing) == [], f"[{i}] strays"
            assert pending_journal(d) == []
            assert d.stop() == 0
    finally:
        d.kill()
    return stats
