"""Helpers for crash tests: a container with known states, and the post-restart checks.

`Scenario` holds a container with two snapshots (s1, s2) and a live state
different from both, each with its content digest.  `check()` is what every
crash test asserts after the daemon restarts: the API answers, the container
is in an allowed state, every listed snapshot exists with its content
unchanged, the pool holds nothing for the container that the store does
not list, scratch is empty, nothing is quarantined, `snapd status` shows
no start-up problem, and the journal holds no unfinished operation.
"""

from __future__ import annotations

import http.client
import os
import re
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .client import snaps
from .daemon import DaemonProcess
from .digest import tree_digest, walk_digest, write_tree
from .harness import PoolHarness, new_cid

CONNECTION_ERRORS = (ConnectionError, http.client.HTTPException, OSError)


Digest = Callable[[Path], Any]
"""A tree's content digest: equal digests, equal content (tree_digest by default)."""


def container_digest(pool: PoolHarness, cid: str, digest: Digest = tree_digest) -> Any:
    return digest(pool.container_path(cid))


def snapshot_digest(pool: PoolHarness, cid: str, name: str, digest: Digest = tree_digest) -> Any:
    """Content digest of snapshot `name`, read from the pool itself (not through the daemon)."""
    if pool.kind in ("overlay", "btrfs"):
        path = Path(pool.root) / ".snapshots" / cid / name  # type: ignore[attr-defined]
        assert path.is_dir(), f"snapshot {name} is listed but {path} is missing"
        return digest(path)
    return _zfs_snapshot_digest(pool, cid, name, digest)


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


def _zfs_snapshot_digest(pool: PoolHarness, cid: str, name: str, digest: Digest) -> Any:
    full = _zfs_snapshots(pool, cid).get(name)
    assert full is not None, f"snapshot {name} is listed but not in the pool"
    clone = f"{pool.pool}/verify{os.getpid()}"  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as mnt:
        _zfs("destroy", "-f", clone, check=False)  # a leftover of an earlier failure
        _zfs("clone", "-o", f"mountpoint={mnt}", full, clone)
        try:
            return digest(Path(mnt))
        finally:
            import time

            for attempt in range(20):  # zfs-fuse may hold the mount a moment longer
                if "cannot" not in (err := _zfs_err("destroy", "-f", clone)):
                    break
                time.sleep(0.1 * (attempt + 1))
            else:
                raise AssertionError(f"cannot destroy {clone}: {err}")


def zfs_snapshot_guids(pool: PoolHarness, cid: str) -> dict[str, str]:
    """Visible snapshot name -> its guid (unchanged while it is the same snapshot, also
    when a restore moves it to a hidden holder)."""
    full = {f: n for n, f in _zfs_snapshots(pool, cid).items()}
    root = pool.root  # type: ignore[attr-defined]
    out = {}
    for line in _zfs("list", "-H", "-o", "name,guid", "-t", "snapshot", "-r", root).splitlines():
        name, guid = line.split("\t")
        if name in full:
            out[full[name]] = guid
    return out


def _zfs_deferred_with_clones(root: str) -> set[str]:
    """Snapshots a delete marked for deferred destruction (`zfs destroy -d`) because a clone
    (a restore's holder) still depends on them: hidden from the list, gone with the clone."""
    deferred = {name for name, flag in (line.split("\t") for line in _zfs(
        "list", "-H", "-o", "name,defer_destroy", "-t", "snapshot", "-r", root).splitlines()) if flag == "on"}
    origins = set(_zfs("list", "-H", "-o", "origin", "-t", "filesystem", "-r", root).split())
    return deferred & origins


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
        pending = _zfs_deferred_with_clones(root)  # deleted, destroyed with their last clone
        out += [full for n, full in visible.items() if n not in listed and full not in pending]
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
    states: dict[str, Any] = field(default_factory=dict)
    """'s1', 's2', 'live' -> content digest."""
    names: dict[str, str] = field(default_factory=dict)
    """'s1', 's2' -> snapshot name."""
    digest: Digest = tree_digest

    @classmethod
    def make(cls, pool: PoolHarness, d: DaemonProcess, *, prepare: Callable[[Path], None] | None = None,
             digest: Digest = tree_digest) -> "Scenario":
        """`prepare` adds content to the new container before s1; `digest` compares trees."""
        cid = new_cid()
        path = pool.make_container(cid)
        sc = cls(pool, cid, digest=digest)
        write_tree(path, {"a": "one", "dir/b": "two", "big": os.urandom(64 * 1024)})
        if prepare:
            prepare(path)
        sc._snap(d, "s1")
        write_tree(path, {"a": "changed", "c": "three"})
        (path / "dir" / "b").unlink()
        sc._snap(d, "s2")
        write_tree(path, {"a": "live", "d/e": "four"})
        sc.states["live"] = container_digest(pool, cid, digest)
        return sc

    def _snap(self, d: DaemonProcess, key: str) -> None:
        r = d.unix.post(snaps(self.cid), {"alias": key})
        assert r.status == 200, r.body
        self.names[key] = r.data["snapshot"]["name"]
        self.states[key] = container_digest(self.pool, self.cid, self.digest)

    def check(self, d: DaemonProcess, *, container_in: list[str], must_list: list[str],
              may_list: dict[str, str]) -> list[str]:
        """The post-restart invariants.  `may_list`: name -> state key its content must equal.

        Returns the listed names.
        """
        r = d.unix.get(snaps(self.cid))
        assert r.status == 200, r.body
        listed = {s["name"]: s for s in r.data["snapshots"]}
        now = container_digest(self.pool, self.cid, self.digest)
        assert any(now == self.states[k] for k in container_in), (
            f"container is in none of the states {container_in}:\n{sorted(now)}")
        for key in must_list:
            assert self.names[key] in listed, f"{key} ({self.names[key]}) lost: {sorted(listed)}"
        expected = {self.names[k]: k for k in must_list} | may_list
        for name in listed:
            assert name in expected, f"unexpected snapshot {name} listed"
            assert snapshot_digest(self.pool, self.cid, name, self.digest) == self.states[expected[name]], (
                f"content of {name} changed")
        assert strays(self.pool, self.cid, set(listed)) == []
        assert pending_journal(d) == []
        assert check_scratch(self.pool, d) == 0  # nothing set aside, no start-up problem
        return sorted(listed)


def prepared(pool: PoolHarness, work: Path) -> Scenario:
    """A Scenario made through a clean daemon in `work`, stopped again."""
    d = DaemonProcess(work, [pool.spec], tcp=False).start()
    try:
        return Scenario.make(pool, d)
    finally:
        assert d.stop() == 0


def killed_at(d: DaemonProcess, point: str, request: Callable[[], object]) -> None:
    """`request` makes `d` (started with SNAPD_FAULT=point) die at the point: the client
    sees the connection drop, the process ends by SIGKILL, its log names the point."""
    try:
        with pytest.raises(CONNECTION_ERRORS):
            request()
        assert d.proc is not None and d.proc.wait(30) == -9
    finally:
        d.kill()
    assert f"fault point {point} reached" in d.log_text()


# -- random kills (tests/test_faults.py::test_random_kills, scripts/soak.py) -----------

STATUS = "/api/v1/admin/status"
MOUNT_REASONS = {"mount at /mnt-bind", "mount at /mnt-tmpfs"}
"""The 409 details of a restore refused for Hostile's two mounts."""


class SoakFailed(AssertionError):
    """An inconsistency or a failed start; `stats` holds the counts up to it."""

    def __init__(self, message: str, stats: dict[str, int]) -> None:
        super().__init__(message)
        self.stats = stats


class Hostile:
    """Hostile content for a soaked container, and the checks it needs.

    The container gets `deep/`, `depth` nested directories (every 1000 levels a
    file and a relative symlink up; at the bottom, beyond PATH_MAX, a hard-link
    pair, a hard-linked symlink pair and an absolute symlink to the canary), a
    symlink to the canary at its top, `volume/`, and two mount points: `mnt-tmpfs`
    (a tmpfs while mounted) and `mnt-bind` (a bind mount of the container's own
    `volume/`: the same filesystem, so only the mount id tells them apart).  The
    canary is a tree outside the pool that nothing may change.
    """

    DEEP, TMPFS, BIND, VOLUME = "deep", "mnt-tmpfs", "mnt-bind", "volume"

    def __init__(self, workdir: Path, rng: Any, depth: int = 5000) -> None:
        from .hostiletree import build_deep
        from .mounts import Mounts

        self.rng = rng
        self.depth = depth
        self.mounts = Mounts()
        self.held: list[tuple[int, Path, dict]] = []
        """(mount id, mount point, content digest) of each mount in place."""
        self.canary = workdir / "canary"
        write_tree(self.canary, {"keep.txt": "precious", "sub/data": rng.randbytes(4096)})
        build_deep(self.canary / "deep", 50, every=10)
        self.canary_digest = walk_digest(self.canary)

    def prepare(self, root: Path) -> None:
        """Add the hostile content to the container at `root` (not mounted yet)."""
        from .hostiletree import bottom, build_deep

        build_deep(root / self.DEEP, self.depth)
        fd, _ = bottom(root / self.DEEP)
        try:
            os.symlink(os.fsencode(self.canary), b"to-canary", dir_fd=fd)
        finally:
            os.close(fd)
        os.symlink(self.canary, root / "canary-link")
        (root / self.TMPFS).mkdir()
        (root / self.BIND).mkdir()
        write_tree(root / self.VOLUME, {"data": "on the volume", "sub/more": "volume too"})

    def digest(self, root: Path) -> tuple:
        """The content of a container or snapshot at `root`, mount points left out;
        the deep tree through walk_digest (one descriptor at a time)."""
        return (tree_digest(root, skip=(self.DEEP, self.TMPFS, self.BIND)), walk_digest(root / self.DEEP))

    def snapshot_digest(self, root: Path) -> tuple:
        """digest(), after checking that nothing from inside a mount was captured."""
        for point in (self.TMPFS, self.BIND):
            inside = os.listdir(root / point)
            assert inside == [], f"{root.name}/{point} holds what was mounted there: {inside}"
        return self.digest(root)

    @property
    def mounted(self) -> bool:
        return bool(self.held)

    def mount(self, root: Path) -> None:
        """A tmpfs with fresh content on mnt-tmpfs, and volume/ bound on mnt-bind."""
        from .mounts import _mountinfo

        tag = self.rng.randbytes(8).hex()
        points = [self.mounts.tmpfs(root / self.TMPFS, {"inside": tag, "sub/more": tag * 100}),
                  self.mounts.bind(root / self.VOLUME, root / self.BIND)]
        table = _mountinfo()
        self.held = [(mid, Path(table[mid]), tree_digest(p)) for mid, p in zip(self.mounts.ids, points)]

    def unmount(self) -> None:
        self.mounts.unmount_all()
        self.held = []

    def check_mounts(self) -> None:
        """Every mount made is in place where it was made, with the content it had."""
        from .mounts import _mountinfo

        table = _mountinfo()
        for mid, point, content in self.held:
            assert table.get(mid) == str(point), f"mount {mid} at {point} moved or gone (now {table.get(mid)})"
            assert tree_digest(point) == content, f"the content of the mount at {point} changed"

    def change_deep(self, root: Path) -> str:
        """Change the bottom of the deep tree; returns what was done: the hard-linked file
        rewritten in place (both names change; same size and mtime, or not), a new file,
        or a new hard-link pair."""
        from .hostiletree import bottom

        what = self.rng.choice(["rewrite", "rewrite-same-size", "file", "pair"])
        fd, _ = bottom(root / self.DEEP)
        try:
            if what.startswith("rewrite"):
                st = os.stat(b"a", dir_fd=fd)
                size = st.st_size if what == "rewrite-same-size" else self.rng.randrange(1, 8192)
                f = os.open(b"a", os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
                try:
                    os.write(f, self.rng.randbytes(size))
                    if what == "rewrite-same-size":
                        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(f)
            else:
                name = b"f-%d" % self.rng.randrange(1 << 40)
                f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
                try:
                    os.write(f, self.rng.randbytes(self.rng.randrange(1, 8192)))
                finally:
                    os.close(f)
                if what == "pair":
                    os.link(name, b"g" + name[1:], src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.close(fd)
        return what

    def check_canary(self) -> None:
        assert walk_digest(self.canary) == self.canary_digest, f"the canary {self.canary} outside the pool changed"

    def close(self, pool: PoolHarness, cid: str | None) -> None:
        """Unmount what is mounted (wherever it was moved), then remove the canary and, in
        an overlay pool, container `cid` and its snapshots: too deep for shutil.rmtree
        (a btrfs or ZFS pool goes whole)."""
        from .hostiletree import remove_deep

        self.unmount()
        remove_deep(self.canary)
        if pool.kind == "overlay" and cid:
            root = Path(pool.root)  # type: ignore[attr-defined]
            remove_deep(root / cid)
            remove_deep(root / ".snapshots" / cid)


def difference(want: Any, got: Any) -> str:
    """The first few differences of two digests (tree_digest dicts, walk_digest lists, tuples of them)."""
    if isinstance(want, tuple) and isinstance(got, tuple) and len(want) == len(got):
        return "; ".join(difference(w, g) for w, g in zip(want, got) if w != g)
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        return ", ".join(f"{k}: {want.get(k)} -> {got.get(k)}" for k in keys[:5])
    if isinstance(want, list) and isinstance(got, list):
        at = [j for j, (w, g) in enumerate(zip(want, got)) if w != g][:3]
        return f"{len(want)} -> {len(got)} entries; " + ", ".join(f"{want[j]} -> {got[j]}" for j in at)
    return f"{want!r:.200} -> {got!r:.200}"


def check_scratch(pool: PoolHarness, d: DaemonProcess) -> int:
    """After a start: scratch is empty, and the quarantine holds only trees with a mount
    inside, each named in `snapd status` problems (no other problem either).
    Returns how many the quarantine holds."""
    from backends.remove import mounts_under

    r = d.unix.get(STATUS)
    assert r.status == 200, r.body
    problems = [p["problem"] for p in r.data["problems"]]
    held: list[str] = []
    if pool.kind in ("overlay", "btrfs"):
        snapdir = Path(pool.root) / ".snapshots"  # type: ignore[attr-defined]
        tmp = snapdir / ".tmp"
        left = os.listdir(tmp) if tmp.exists() else []
        assert left == [], f"left in {tmp} after a start: {left}"
        quarantine = snapdir / ".quarantine"
        for name in os.listdir(quarantine) if quarantine.exists() else []:
            entry = str(quarantine / name)
            assert mounts_under(entry), f"{entry} quarantined with no mount inside"
            assert any(entry in p for p in problems), f"{entry} quarantined but not in status problems"
            held.append(entry)
    unexplained = [p for p in problems if not any(e in p for e in held)]
    assert unexplained == [], f"start-up problems: {unexplained}"
    return len(held)


def soak(pool: PoolHarness, workdir: Path, n: int, seed: int, *, max_delay: float = 0.06,
         hostile: bool = False, depth: int = 5000, log: Callable[[str], None] | None = None) -> dict[str, int]:
    """`n` operations, each with a SIGKILL at a random moment, a restart and the checks.

    With `hostile`, the container holds Hostile's content (a `depth`-level tree, links
    beyond PATH_MAX) and, in every other phase of 2-6 rounds (from the second or third
    round on), a tmpfs and a bind mount: a restore then must not succeed (409, or
    killed before it answers) and the mounts and their content must survive.
    Operations on such a tree take seconds, so each one's kill window starts at
    `max_delay` and adapts (x1.2 after a kill, x0.85 after an answer): about half the
    kills land mid-way, spread over however long the operation takes.

    Raises SoakFailed on the first inconsistency or failed start.  Returns the counts:
    rounds, how each operation ended (completed, killed before it answered,
    refused_mount), mounted_rounds, deep_changes, quarantined (most at once),
    starts, failed_starts, inconsistencies.
    """
    import random
    import threading
    import time

    rng = random.Random(seed)
    say = log or (lambda _: None)
    stats = dict.fromkeys(["rounds", "completed", "killed", "refused_mount", "mounted_rounds", "deep_changes",
                           "quarantined", "starts", "failed_starts", "inconsistencies"], 0)
    hard = Hostile(workdir, rng, depth) if hostile else None
    digest: Digest = hard.digest if hard else tree_digest
    snap_digest: Digest = hard.snapshot_digest if hard else tree_digest
    max_known = 6 if hard else 1 << 30
    window: dict[str, float] = {}
    """Hostile: the kill window of each operation (restores with mounts on their own)."""

    def start() -> DaemonProcess:
        for _attempt in range(2):
            stats["starts"] += 1
            proc = DaemonProcess(workdir, [pool.spec], tcp=False)
            try:
                return proc.start()
            except RuntimeError as exc:
                stats["failed_starts"] += 1
                proc.kill()
                say(f"FAILED START: {str(exc)[-3000:]}")
        raise SoakFailed("the daemon failed to start twice in a row", stats)

    d = start()
    sc: Scenario | None = None
    try:
        sc = Scenario.make(pool, d, prepare=hard.prepare if hard else None, digest=digest)
        assert d.stop() == 0
        container = pool.container_path(sc.cid)
        known = {sc.names["s1"]: sc.states["s1"], sc.names["s2"]: sc.states["s2"]}
        phase = rng.randint(1, 2)  # rounds before the mounts change: first 1-2 without
        now = None  # the container's digest at the end of the last round, if unchanged since
        guids: dict[str, str] = {}  # ZFS: each snapshot's guid when its content was digested
        for i in range(n):
            mounted = False
            if hard:
                if phase == 0:
                    if hard.mounted:
                        hard.unmount()
                    else:
                        hard.mount(container)
                    phase = rng.randint(2, 6)
                phase -= 1
                mounted = hard.mounted
                stats["mounted_rounds"] += mounted
                if rng.random() < 0.25:
                    say(f"[{i}] deep tree: {hard.change_deep(container)}")
                    stats["deep_changes"] += 1
                    now = None
            if rng.random() < 0.3:
                write_tree(container, {f"f{i}": rng.randbytes(rng.randrange(1, 256 * 1024))})
                now = None
            d = start()
            before = now if now is not None else digest(container)
            if len(known) >= max_known:
                ops = ["create", "restore", "delete", "delete"]
            else:
                ops = ["create", "create", "restore", "delete"] if len(known) > 1 else ["create", "restore"]
            op = rng.choice(ops)
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

            key = op + (" mounted" if mounted and op == "restore" else "")
            t = threading.Thread(target=call)
            t.start()
            delay = rng.uniform(0, window.get(key, max_delay))
            time.sleep(delay)
            d.kill()
            t.join(60)
            r = result.get("response")
            stats["rounds"] += 1
            try:
                if r is None:
                    outcome = "killed"
                elif r.status == 200 and not (op == "restore" and mounted):
                    outcome = "completed"
                elif r.status == 409 and op == "restore" and mounted:
                    reasons = {x.get("reason") for x in r.body.get("details", [])}
                    assert reasons == MOUNT_REASONS, f"[{i}] restore refused, not for the mounts: {r.body}"
                    outcome = "refused_mount"
                else:
                    raise AssertionError(f"[{i}] {op} {target} (mounted: {mounted}) answered {r.status}: {r.body}")
                stats[outcome] += 1
                if hard:
                    w = window.get(key, max_delay)
                    window[key] = min(w * 1.2, 30.0) if outcome == "killed" else max(w * 0.85, 0.01)
                say(f"[{i}] {op}{' ' + target if op != 'create' else ''}{' (mounted)' if mounted else ''}, "
                    f"SIGKILL at {delay:.2f}s: {outcome}")
                d = start()
                listing = {s["name"] for s in d.unix.get(snaps(sc.cid)).data["snapshots"]}
                now = digest(container)
                if op == "restore" and not mounted:
                    allowed = [known[target]] if outcome == "completed" else [before, known[target]]
                else:
                    allowed = [before]
                assert now in allowed, f"[{i}] {op}: container in neither state: {difference(allowed[0], now)}"
                if op == "create":
                    new = listing - set(known)
                    assert len(new) <= 1 and (outcome != "completed" or r.data["snapshot"]["name"] in new), (i, new)
                    for name in new:
                        known[name] = before
                if op == "delete":
                    if outcome == "completed":
                        assert target not in listing, f"[{i}] deleted {target} is back"
                    if target not in listing:
                        del known[target]
                assert set(known) == listing, f"[{i}] {op}: listed {sorted(listing)} != {sorted(known)}"
                if pool.kind == "zfs" and hard:
                    # a ZFS snapshot is immutable: the same guid is the same content.  Digest
                    # (through a clone, seconds on zfs-fuse) the new ones and one other a round
                    now_guids = zfs_snapshot_guids(pool, sc.cid)
                    spot = rng.choice(sorted(known))
                    for name in known:
                        if name in guids and name != spot:
                            assert now_guids.get(name) == guids[name], f"[{i}] {name} was replaced"
                        else:
                            got = snapshot_digest(pool, sc.cid, name, snap_digest)
                            assert got == known[name], (
                                f"[{i}] content of {name} changed: {difference(known[name], got)}")
                            guids[name] = now_guids[name]
                else:
                    for name, want in known.items():
                        got = snapshot_digest(pool, sc.cid, name, snap_digest)
                        assert got == want, f"[{i}] content of {name} changed: {difference(want, got)}"
                left = strays(pool, sc.cid, listing)
                assert left == [], f"[{i}] on disk, not listed: {left}"
                assert pending_journal(d) == [], f"[{i}] unfinished journal entries"
                stats["quarantined"] = max(stats["quarantined"], check_scratch(pool, d))
                if hard:
                    hard.check_mounts()
                    hard.check_canary()
                assert d.stop() == 0, f"[{i}] the daemon did not stop cleanly"
            except SoakFailed:
                raise
            except (AssertionError, OSError) as exc:  # OSError: something expected is missing
                stats["inconsistencies"] += 1
                where = ""
                if pool.kind == "zfs":
                    where = "\n" + _zfs("list", "-o", "name,mounted,mountpoint,canmount,origin", "-t", "all",
                                         "-r", pool.root, check=False)  # type: ignore[attr-defined]
                raise SoakFailed(f"{exc!r} (seed {seed}){where}", stats) from exc
        if stats["failed_starts"]:
            raise SoakFailed(f"{stats['failed_starts']} failed start(s) (seed {seed})", stats)
    finally:
        d.kill()
        if hard:
            hard.close(pool, sc.cid if sc else None)
    return stats
