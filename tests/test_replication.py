"""Replication between two real daemons in two network namespaces, each on real pools.

The senders run in this namespace, the receivers in another one joined by a veth pair;
each sender names every receiver as a target (`[targets.btrfs]`, `[targets.overlay]`,
`[targets.zfs]`) and reaches it over TCP with a token of the receiver's `replicate` scope.  A snapshot
is compared by restoring it on the receiver and digesting both live trees.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends import faults

from .client import Client, snaps
from .clockfile import ClockFile
from .crash import killed_at
from .certs import self_signed
from .conftest import open_harness
from .daemon import DaemonProcess, free_port
from .digest import walk_digest, write_tree
from .harness import PoolHarness, new_cid
from .holds import Hold
from .nativestream import enveloped, escaping_btrfs_stream, native_stream, when
from .netns import Link, veth_namespace
from .waiting import until

ADMIN = "/api/v1/admin"
JOBS = f"{ADMIN}/replications"
KINDS = ("btrfs", "overlay", "zfs")
EAGER = ("btrfs", "overlay")
"""Kinds whose two daemons the module starts up front (the others on first use)."""
PAIRS = [("btrfs", "btrfs"), ("zfs", "zfs"), ("overlay", "btrfs"), ("btrfs", "overlay")]
SAME = ("btrfs", "zfs")
"""Kinds the interruption and corruption tests run on, sender and receiver alike."""
SENDER_CONFIG = "sender.toml"
IDLE = 10
"""stream_idle_timeout of every daemon here: a cut link fails the send, and the receiver drops
the stalled stream, after this many seconds (120 by default)."""
SLOW = 4 << 20
"""Bytes per second of the `slow-*` targets: a 48 MiB snapshot takes seconds to send."""


class NetnsDaemon(DaemonProcess):
    """A daemon started inside a network namespace, and only that (`ip netns exec` would give
    it a mount namespace too, whose copy of a pool's mount outlives the daemon for a while);
    its Unix socket is a path: reachable from here."""

    def __init__(self, netns: str, *args, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.netns = netns

    def args(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *super().args()]


@dataclass
class Side:
    d: DaemonProcess
    pool: PoolHarness


@dataclass
class World:
    """The link and the daemons on both ends, each side made on first use (a kind the run
    leaves out, or cannot run, skips only the tests that ask for it)."""

    link: Link
    base: Path
    ports: dict[str, int]
    """Each receiver kind's TCP port in the namespace (fixed up front: the senders' config names them)."""
    sides: dict[tuple[str, str], Side] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    clocks: dict[str, ClockFile] = field(default_factory=dict)
    """The senders' clocks: running, at an offset a test may move."""
    made: list[Side] = field(default_factory=list)

    def receiver(self, kind: str) -> Side:
        """The receiving daemon on a `kind` pool, in the namespace (started now if need be);
        it issues the tokens the sender's targets for it read."""
        if ("receiver", kind) not in self.sides:
            where = self.base / f"receiver-{kind}"
            pool = open_harness(kind, where / "pool")
            cfg = where / "receiver.toml"
            cfg.write_text(f"stream_idle_timeout = {IDLE}\n")
            d = NetnsDaemon(self.link.netns, where / "d", [pool.spec], tcp=False,  # another host, its clock an hour ahead
                            extra=["--listen", f"{self.link.ns_addr}:{self.ports[kind]}", "--config", str(cfg)],
                            env={"SNAPD_CLOCK_OFFSET": "3600"})
            self.made.append(side := Side(d, pool))
            d.start()
            for scope, body in (("replicate", {"replicate": True}), ("project", {"project": "web"})):
                r = d.unix.post(f"{ADMIN}/tokens", body)
                assert r.status == 200, r.body
                (self.base / f"{scope}-{kind}").write_text(r.data["secret"] + "\n")
                self.tokens[f"{scope}-{kind}"] = r.data["secret"]
            self.sides[("receiver", kind)] = side
        return self.sides[("receiver", kind)]

    def sender(self, kind: str) -> Side:
        """The sending daemon on a `kind` pool, here (started now if need be)."""
        if ("sender", kind) not in self.sides:
            pool = open_harness(kind, self.base / f"sender-{kind}" / "pool")
            clock = self.clocks[kind] = ClockFile(self.base / f"clock-{kind}", time.time())
            clock.run_offset(0)
            d = DaemonProcess(self.base / f"sender-{kind}" / "d", [pool.spec], tcp=False,
                              extra=["--config", str(self.base / SENDER_CONFIG)], env=clock.env)
            self.made.append(side := Side(d, pool))
            d.start()
            self.sides[("sender", kind)] = side
        return self.sides[("sender", kind)]

    def pair(self, sender: str, receiver: str) -> tuple[Side, Side]:
        return self.sender(sender), self.receiver(receiver)


def _sender_config(world: World) -> None:
    lines = [f"stream_idle_timeout = {IDLE}\n"]
    where = world.base
    for kind, port in world.ports.items():
        for scope in ("replicate", "project"):  # until the receiver starts and issues the real ones
            (where / f"{scope}-{kind}").write_text("not-issued-yet\n")
        for name, token, extra in ((kind, "replicate", ""), (f"slow-{kind}", "replicate", f"bandwidth = {SLOW}\n"),
                                   (f"zstd-{kind}", "replicate", 'compression = "zstd"\n'),
                                   (f"noscope-{kind}", "project", "")):
            lines.append(f'[targets.{name}]\nurl = "http://{world.link.ns_addr}:{port}"\n'
                         f'token_file = "{where / (token + "-" + kind)}"\n{extra}')
    # an address of the link's subnet that nobody holds: nothing answers there
    (where / "nowhere-token").write_text("no-one-reads-this\n")
    lines.append(f'[targets.nowhere]\nurl = "http://{world.link.extra_addr}:7070"\n'
                 f'token_file = "{where / "nowhere-token"}"\n')
    (where / SENDER_CONFIG).write_text("\n".join(lines))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("replication")
    with veth_namespace() as link:
        w = World(link, base, {kind: free_port() for kind in KINDS})
        try:
            _sender_config(w)
            for kind in EAGER:
                w.receiver(kind)
                w.sender(kind)
            yield w
        finally:
            with contextlib.ExitStack() as stack:  # every side closed, whatever fails
                for side in w.made:
                    stack.callback(side.pool.close)
                    stack.callback(side.d.stop if side.d.proc and side.d.proc.poll() is None else side.d.kill)


# -- helpers ---------------------------------------------------------------------------------


def snapshot(d: DaemonProcess, cid: str) -> str:
    r = d.unix.post(snaps(cid), {})
    assert r.status == 200, r.body
    return r.data["snapshot"]["name"]


def start(d: DaemonProcess, cid: str, target: str, **body: object) -> dict:
    r = d.unix.post(JOBS, {"container": cid, "target": target, **body})
    assert r.status == 202, r.body
    return r.data["job"]


def finished(d: DaemonProcess, job: dict, timeout: float = 120) -> dict:
    """The job once it is done or failed (GET, polled)."""
    def look() -> dict | None:
        r = d.unix.get(f"{JOBS}/{job['id']}")
        assert r.status == 200, r.body
        return r.data["job"] if r.data["job"]["state"] in ("done", "failed") else None

    return until(look, f"replication job {job['id']} finished", timeout=timeout, interval=0.05)


def replicate(d: DaemonProcess, cid: str, target: str, **body: object) -> dict:
    job = finished(d, start(d, cid, target, **body))
    assert job["state"] == "done", job["last_error"]
    return job


def names(d: DaemonProcess, cid: str) -> list[tuple[str, str]]:
    r = d.unix.get(snaps(cid))
    if r.status == 404:
        return []
    assert r.status == 200, r.body
    return [(s["name"], s["created_at"]) for s in r.data["snapshots"]]


def hold_of(d: DaemonProcess, cid: str, name: str) -> str | None:
    r = d.unix.get(snaps(cid, name, "/detail"))
    assert r.status == 200, r.body
    return (r.data["snapshot"]["hold"] or {}).get("reason")


def same_trees(a: Path, b: Path) -> None:
    """Equal below the root (and the root's mode and owner: its xattrs are the pool's labels)."""
    da, db = walk_digest(a), walk_digest(b)
    assert da[0][2:5] == db[0][2:5]
    assert da[1:] == db[1:]


def container(side: Side, files: dict[str, str | bytes]) -> str:
    cid = new_cid()
    root = side.pool.make_container(cid)
    write_tree(root, files)
    os.symlink("etc/hostname", root / "link")
    os.link(root / "etc/hostname", root / "hard")
    return cid


NATIVE = ("btrfs", "zfs")
"""The kinds whose pools send each other their own streams (the others: portable ones)."""


def stream(sender: str, receiver: str) -> str:
    """The stream a job from a `sender` pool to a `receiver` pool sends."""
    return sender if sender == receiver and sender in NATIVE else "portable"


def stream_of(src: Side, dst: Side) -> str:
    return stream(src.pool.kind, dst.pool.kind)


def on_disk(side: Side, cid: str) -> list[tuple[str, str]]:
    """The snapshots of `cid` on the side's disk, as names() gives them (every snapshot there
    must be a listed one: nothing stray, nothing half).  ZFS: the snapshots of the container's
    dataset and of its hidden holders (a restore moved the newer ones there)."""
    listed = dict(names(side.d, cid))
    if side.pool.kind == "zfs":
        ds = side.pool.dataset(cid)  # type: ignore[attr-defined]
        holder = f"{side.pool.root}/.snapd-hidden/{cid}-"  # type: ignore[attr-defined]
        found = sorted(n.partition("@")[2] for n in side.pool.artifacts()
                       if n.startswith((f"{ds}@", holder)) and "@" in n)
    else:
        where = Path(side.pool.spec.partition(":")[2]) / ".snapshots" / cid
        found = sorted(p.name for p in where.iterdir() if not p.name.startswith(".")) if where.is_dir() else []
    assert found == sorted(listed), (found, listed)
    return names(side.d, cid)


def scratch(side: Side) -> list[str]:
    """Import scratch left in the receiver's pool (ZFS: the datasets received into)."""
    if side.pool.kind == "zfs":  # and what an interrupted `zfs receive` might leave (%recv)
        return sorted(n for n in side.pool.artifacts() if ".receiving-" in n or "%" in n)
    tmp = Path(side.pool.spec.partition(":")[2]) / ".snapshots" / ".tmp"
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("import-")) if tmp.is_dir() else []


def export_scratch(side: Side) -> list[str]:
    """What exports left in the sender's pool: ZFS without `.zfs/snapshot` (zfs-fuse) reads a
    snapshot through a read-only clone; the other kinds read the snapshot itself."""
    return sorted(n for n in side.pool.artifacts() if ".files-" in n) if side.pool.kind == "zfs" else []


# -- the pairs -------------------------------------------------------------------------------


@pytest.mark.parametrize("sender, receiver", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_replicate_change_replicate_again_and_restore_on_the_receiver(world: World, sender: str,
                                                                      receiver: str) -> None:
    src, dst = world.pair(sender, receiver)
    cid = container(src, {"etc/hostname": "web\n", "data/big.bin": os.urandom(1 << 20), "gone/x": "x"})
    first = snapshot(src.d, cid)
    (src.pool.container_path(cid) / "data/more.txt").write_text("more")
    second = snapshot(src.d, cid)

    job = replicate(src.d, cid, receiver)
    assert (job["snapshots_sent"], job["snapshots_total"]) == (2, 2) and job["bytes_sent"] > 1 << 20
    assert job["stream"] == stream(sender, receiver), job
    assert names(dst.d, cid) == names(src.d, cid) == on_disk(dst, cid)
    # the newest common snapshot is held for the target; a DELETE of it is refused with the reason
    assert hold_of(src.d, cid, second) == f"replication to {receiver}: the newest snapshot both hold"
    assert hold_of(src.d, cid, first) is None
    r = src.d.unix.delete(snaps(cid, second))
    assert r.status == 409 and f"replication to {receiver}" in r.body["message"], r.body

    # change one small file, remove a directory: the next job sends only that, from `second`
    live = src.pool.container_path(cid)
    (live / "etc/hostname").write_text("web-2\n")
    (live / "gone/x").unlink()
    (live / "gone").rmdir()
    third = snapshot(src.d, cid)
    job = replicate(src.d, cid, receiver)
    assert (job["snapshots_sent"], job["snapshots_total"], job["stream"]) == (1, 1, stream(sender, receiver))
    assert job["bytes_sent"] < 256 << 10, job  # the 1 MiB file is not sent again
    assert names(dst.d, cid) == names(src.d, cid) == on_disk(dst, cid)
    assert hold_of(src.d, cid, third) is not None and hold_of(src.d, cid, second) is None
    assert src.d.unix.delete(snaps(cid, second)).status == 200  # released: deletable again

    # nothing to send: a job that sends nothing is done
    job = replicate(src.d, cid, receiver)
    assert (job["snapshots_sent"], job["snapshots_total"]) == (0, 0)

    metrics = src.d.unix.get("/metrics", binary=True).raw.decode()
    assert f'\ncontainer_snapd_replication_sent_bytes_total{{target="{receiver}"}}' in metrics
    assert '\ncontainer_snapd_replication_jobs{state="done"}' in metrics

    # disaster recovery: the receiver's restore gives the sender's tree of `third`
    r = dst.d.unix.patch(snaps(cid, third))
    assert r.status == 200, r.body
    same_trees(src.pool.container_path(cid), dst.pool.container_path(cid))


def test_a_second_request_joins_the_running_job(world: World) -> None:
    src = world.sender("overlay")
    cid = container(src, {"etc/hostname": "x\n", "big.bin": os.urandom(8 << 20)})
    snapshot(src.d, cid)
    job = start(src.d, cid, "slow-btrfs")
    r = src.d.unix.post(JOBS, {"container": cid, "target": "slow-btrfs"})
    assert r.status == 202 and r.data["job"]["id"] == job["id"], r.body
    assert r.body["message"] == "Replication already running for this container and target"
    assert any(j["id"] == job["id"] for j in src.d.unix.get(JOBS).data["jobs"])
    job = finished(src.d, job)
    assert job["state"] == "done" and job["bytes_sent"] > 8 << 20
    assert job["rate"] <= SLOW * 1.05, job  # the target's bandwidth limit held


@pytest.mark.parametrize("sender, receiver", [("overlay", "btrfs"), ("btrfs", "btrfs")])
def test_a_target_with_compression_gets_portable_streams_compressed_and_native_ones_as_they_are(
        world: World, sender: str, receiver: str) -> None:
    src, dst = world.pair(sender, receiver)
    text = b"".join(b"line %d of a log that compresses well\n" % i for i in range(100000))  # 4.1 MB
    cid = container(src, {"etc/hostname": "x\n", "var/log/app.log": text})
    name = snapshot(src.d, cid)
    job = replicate(src.d, cid, f"zstd-{receiver}")
    if sender == receiver:  # native: zstd is for portable streams only
        assert job["stream"] == receiver and job["bytes_sent"] > len(text), job
    else:
        assert job["stream"] == "portable" and job["bytes_sent"] < len(text) // 10, job
    assert [n for n, _ in names(dst.d, cid)] == [name]
    r = dst.d.unix.patch(snaps(cid, name))
    assert r.status == 200, r.body
    same_trees(src.pool.container_path(cid), dst.pool.container_path(cid))


# -- refusals --------------------------------------------------------------------------------


def test_a_token_without_the_replicate_scope_fails_the_job_with_403(world: World) -> None:
    src = world.sender("btrfs")
    cid = container(src, {"etc/hostname": "x\n"})
    name = snapshot(src.d, cid)
    job = finished(src.d, start(src.d, cid, "noscope-overlay"))
    assert job["state"] == "failed" and "403" in job["last_error"], job
    assert names(world.receiver("overlay").d, cid) == []
    assert hold_of(src.d, cid, name) is None


def test_a_target_that_does_not_answer_fails_the_job_and_changes_nothing(world: World) -> None:
    src = world.sender("btrfs")
    cid = container(src, {"etc/hostname": "x\n"})
    name = snapshot(src.d, cid)
    before = names(src.d, cid)
    job = finished(src.d, start(src.d, cid, "nowhere"))
    assert job["state"] == "failed" and "did not answer" in job["last_error"], job
    assert names(src.d, cid) == before and hold_of(src.d, cid, name) is None


def test_bad_requests_are_400_naming_the_field(world: World) -> None:
    d = world.sender("btrfs").d
    cid = new_cid()
    for body, fieldname in (({"target": "btrfs"}, "container"), ({"container": "x", "target": "btrfs"}, "container"),
                            ({"container": cid}, "target"), ({"container": cid, "target": 7}, "target"),
                            ({"container": cid, "target": "btrfs", "full": "yes"}, "full"),
                            ({"container": cid, "target": "btrfs", "extra": 1}, "extra")):
        r = d.unix.post(JOBS, body)
        assert (r.status, r.body["details"][0]["field"]) == (400, fieldname), (body, r.body)
    assert d.unix.post(JOBS, {"container": cid, "target": "btrfs"}).body["message"] == "Container not found"
    r = d.unix.post(JOBS, {"container": cid, "target": "nope"})
    assert (r.status, r.body["message"], r.body["details"][0]["field"]) == (404, "Replication target not found",
                                                                            "target")
    assert d.unix.get(f"{JOBS}/000000000000").status == 404
    assert d.unix.get(f"{JOBS}/nope").status == 400


def test_a_diverged_target_fails_naming_the_snapshot_until_full_is_asked(world: World) -> None:
    src, dst = world.sender("btrfs"), world.receiver("btrfs")
    cid = container(src, {"etc/hostname": "x\n"})
    snapshot(src.d, cid)
    replicate(src.d, cid, "btrfs")
    foreign = snapshot(dst.d, cid)  # made on the receiver: the sender never had it
    newer = snapshot(src.d, cid)
    job = finished(src.d, start(src.d, cid, "btrfs"))
    assert job["state"] == "failed" and foreign in job["last_error"] and job["diverged"] == [foreign], job
    assert newer not in dict(names(dst.d, cid))
    job = replicate(src.d, cid, "btrfs", full=True)
    assert job["snapshots_sent"] == 1 and newer in dict(names(dst.d, cid))
    # the other way out: remove the foreign snapshot on the target; incrementals go on
    assert dst.d.unix.delete(snaps(cid, foreign)).status == 200
    newest = snapshot(src.d, cid)
    job = replicate(src.d, cid, "btrfs")
    assert job["snapshots_sent"] == 1 and newest in dict(names(dst.d, cid))


@pytest.mark.parametrize("kind", SAME)
def test_a_corrupted_stream_is_refused_and_nothing_is_visible(world: World, kind: str) -> None:
    src, dst = world.pair(kind, kind)
    cid = container(src, {"etc/hostname": "x\n", "f": os.urandom(100000)})
    name = snapshot(src.d, cid)
    stream = bytearray(src.d.unix.get(snaps(cid, name, "/export")).raw)
    stream[len(stream) // 2] ^= 0x01
    client = Client(tcp=(world.link.ns_addr, world.ports[kind]),
                    headers={"Authorization": f"Bearer {world.tokens[f'replicate-{kind}']}"})
    r = until(lambda: _reachable(client, cid, bytes(stream)), "the receiver answers over the link")
    assert r.status == 400 and r.body["message"] == "Invalid snapshot stream", r.body
    assert names(dst.d, cid) == [] and scratch(dst) == []


BAD_NATIVE = [(native, case) for native in NATIVE
              for case in ("flipped", "truncated", "padded", "another-name", "wrong-kind", "escaping")
              if case != "escaping" or native == "btrfs"]
"""Damaged native streams of each kind (a symlink escape is btrfs receive's risk: it writes by
path; zfs receive writes objects of its own dataset)."""


@pytest.mark.parametrize("native, case", BAD_NATIVE, ids=[f"{n}-{c}" for n, c in BAD_NATIVE])
def test_a_bad_native_stream_is_refused_and_nothing_is_visible(world: World, native: str, case: str,
                                                               tmp_path: Path) -> None:
    kind = "overlay" if case == "wrong-kind" else native
    src, dst = world.pair(native, kind)
    cid = container(src, {"etc/hostname": "x\n", "f": os.urandom(300000)})
    name = snapshot(src.d, cid)
    stream = bytearray(native_stream(src.pool.spec, cid, name, time.time(),
                                     **({"snapshot": "other"} if case == "another-name" else {})))
    victim = tmp_path / "victim"
    victim.write_text("the host's own file\n")
    if case == "escaping":  # a symlink to a host file, then a write through it
        stream = bytearray(enveloped(cid, name, time.time(), escaping_btrfs_stream(name, str(victim))))
    if case == "flipped":
        stream[len(stream) // 2] ^= 0x01
    elif case == "truncated":
        del stream[-9:]  # the trailer: frame head and CRC-32
    elif case == "padded":
        stream += b"\0"
    client = Client(tcp=(world.link.ns_addr, world.ports[kind]),
                    headers={"Authorization": f"Bearer {world.tokens['replicate-' + kind]}"})
    r = until(lambda: _reachable(client, cid, bytes(stream)), "the receiver answers over the link")
    if case == "wrong-kind":
        assert r.status == 409 and r.body["details"][0]["field"] == "pool", r.body
    else:
        assert r.status == 400 and r.body["message"] == "Invalid snapshot stream", r.body
    if case == "another-name":
        assert "not 'other'" in r.body["details"][0]["reason"], r.body
    assert victim.read_text() == "the host's own file\n"
    assert names(dst.d, cid) == [] and scratch(dst) == []
    if case != "wrong-kind":
        assert on_disk(dst, cid) == []


def test_a_receiver_killed_between_a_zfs_holder_and_its_container_leaves_nothing(world: World,
                                                                                 tmp_path: Path) -> None:
    """A new container's snapshot received natively into a holder, the container not yet made
    from it: the next start destroys the holder, and the stream goes in again (the other
    stages of a crashed import: tests/test_transfer.py)."""
    point = "zfs.native.held"
    src = world.sender("zfs")
    cid = container(src, {"etc/hostname": "x\n", "f": os.urandom(100000)})
    r = src.d.unix.post(snaps(cid), {"alias": "crash", "expiry": 3})
    assert r.status == 200, r.body
    snap = r.data["snapshot"]
    stream = native_stream(src.pool.spec, cid, snap["name"], when(snap["created_at"]), alias="crash",
                           expires_at=when(snap["expires_at"]))
    harness = open_harness("zfs", tmp_path / "pool")
    try:
        d = DaemonProcess(tmp_path / "d", [harness.spec], tcp=False, env={faults.ENV: point}).start()
        empty = harness.artifacts()
        killed_at(d, point, lambda: d.unix.post(snaps(cid, None, "/import"), stream))
        d = DaemonProcess(tmp_path / "d", [harness.spec], tcp=False).start()
        try:
            assert d.unix.get(snaps(cid)).status == 404 and harness.artifacts() == empty, harness.artifacts()
            assert d.unix.post(snaps(cid, None, "/import"), stream).status == 200  # and it goes in
            got = [(s["name"], s["alias"], s["created_at"], s["expires_at"])
                   for s in d.unix.get(snaps(cid)).data["snapshots"]]
            assert got == [(snap["name"], "crash", snap["created_at"], snap["expires_at"])]
            assert d.unix.get(f"/api/v1/containers/{cid}/import-formats").data["native_bases"] == [snap["name"]]
        finally:
            assert d.stop() == 0
    finally:
        harness.close()


def test_the_receiver_tells_which_streams_it_takes_and_from_which_bases(world: World) -> None:
    src = world.sender("btrfs")
    cid = container(src, {"etc/hostname": "x\n"})
    name = snapshot(src.d, cid)

    def formats(kind: str, token: str = "replicate", query: str = ""):  # type: ignore[no-untyped-def]
        client = Client(tcp=(world.link.ns_addr, world.ports[kind]),
                        headers={"Authorization": f"Bearer {world.tokens[f'{token}-{kind}']}"})
        return until(lambda: client.get(f"/api/v1/containers/{cid}/import-formats{query}"),
                     "the receiver answers over the link")

    spec = world.receiver("btrfs").pool.spec
    r = formats("btrfs")  # a container it does not have yet: what its pools take
    assert r.status == 200 and r.data == {"container_id": cid, "pool": spec, "formats": ["btrfs", "portable"],
                                          "native_bases": []}, r.body
    replicate(src.d, cid, "btrfs")
    assert formats("btrfs").data["native_bases"] == [name]  # received natively: a parent for the next
    assert formats("overlay").data["formats"] == ["portable"]
    r = formats("btrfs", query="?pool=btrfs:/nowhere")
    assert (r.status, r.body["details"][0]["field"]) == (409, "pool"), r.body
    r = formats("btrfs", query="?what=1")
    assert (r.status, r.body["details"][0]["field"]) == (400, "what"), r.body
    assert formats("btrfs", token="project").status == 403  # import's rule: admin or replicate


@pytest.mark.parametrize("kind", NATIVE)
def test_a_chain_begun_portably_goes_on_portably(world: World, kind: str) -> None:
    """The first snapshot arrived as a portable import (an older sender, a file): the receiver
    holds it without the sender's identity, so the next incremental cannot be native."""
    src, dst = world.pair(kind, kind)
    cid = container(src, {"etc/hostname": "x\n"})
    first = snapshot(src.d, cid)
    client = Client(tcp=(world.link.ns_addr, world.ports[kind]),
                    headers={"Authorization": f"Bearer {world.tokens[f'replicate-{kind}']}"})
    r = until(lambda: _reachable(client, cid, src.d.unix.get(snaps(cid, first, "/export")).raw),
              "the receiver answers over the link")
    assert r.status == 200, r.body
    # another size: zfs-fuse keeps whole seconds, and the portable diff, walking, tells a
    # rewrite from an untouched file by size and times (a same-size rewrite within the
    # second of the snapshot would be missed there)
    (src.pool.container_path(cid) / "etc/hostname").write_text("y2\n")
    second = snapshot(src.d, cid)
    job = replicate(src.d, cid, kind)
    assert (job["stream"], job["snapshots_sent"]) == ("portable", 1), job
    assert names(dst.d, cid) == names(src.d, cid) == on_disk(dst, cid)
    r = dst.d.unix.patch(snaps(cid, second))
    assert r.status == 200, r.body
    same_trees(src.pool.container_path(cid), dst.pool.container_path(cid))


def _reachable(client: Client, cid: str, stream: bytes):  # type: ignore[no-untyped-def]
    """The receiver's answer from this namespace (the link is routed)."""
    return client.post(snaps(cid, None, "/import"), stream)


# -- interruptions ---------------------------------------------------------------------------


def slow(side: Side) -> str:
    """The bandwidth-limited target of the receiver `side`."""
    return f"slow-{side.pool.kind}"


def _slow_container(src: Side, dst: Side) -> tuple[str, str, str]:
    """A container with a first snapshot replicated to `dst` and a second of 48 MiB more to send."""
    cid = container(src, {"etc/hostname": "x\n"})
    first = snapshot(src.d, cid)
    replicate(src.d, cid, slow(dst))
    write_tree(src.pool.container_path(cid), {f"big/{i}.bin": os.urandom(4 << 20) for i in range(12)})
    return cid, first, snapshot(src.d, cid)


INTERRUPTED = [("btrfs", "btrfs"), ("overlay", "btrfs"), ("zfs", "zfs")]
"""The pairs of the interruption tests: a native stream of each kind, and a portable one."""
interrupted = pytest.mark.parametrize("sender, receiver", INTERRUPTED,
                                      ids=[f"{a}-to-{b}-{stream(a, b)}" for a, b in INTERRUPTED])


def _mid_stream(src: Side, dst: Side) -> tuple[str, str, str, dict]:
    """A job sending the second snapshot of a _slow_container, once a MiB of it has gone out
    (GET, polled) and the receiver is receiving it into scratch: (cid, first, second, job)."""
    cid, first, second = _slow_container(src, dst)
    job = start(src.d, cid, slow(dst))
    job = until(lambda: (j := src.d.unix.get(f"{JOBS}/{job['id']}").data["job"])["bytes_sent"] > 1 << 20 and j,
                "the job has sent a MiB")
    assert job["stream"] == stream_of(src, dst), job
    until(lambda: receiving(dst), "the receiver is receiving", interval=0.2)
    return cid, first, second, job


def receiving(side: Side) -> bool:
    """Whether the receiver is receiving: into scratch, or (a native zfs incremental, received
    onto the holder of its base) through a `zfs receive` it runs."""
    if scratch(side):
        return True
    pid = side.d.proc.pid if side.d.proc else 0
    children = " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children"))
    for child in children.split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[1:2] == [b"receive"]:
                return True
    return False


def _rerun_continues(src: Side, dst: Side, cid: str, first: str, second: str) -> None:
    """The receiver holds `first` alone (nothing of the cut `second`, on disk either); a rerun
    sends `second` from it and the chain is intact: same snapshots, the newest held, equal
    trees after a restore.  The rerun goes through the receiver's unthrottled target (48 MiB
    at the slow one's 4 MiB/s would be 12 s of waiting); the interrupted job's own target
    then finds nothing left to send and moves its base to `second`."""
    assert [n for n, _ in on_disk(dst, cid)] == [first]
    job = replicate(src.d, cid, dst.pool.kind)
    assert (job["snapshots_sent"], job["stream"]) == (1, stream_of(src, dst)), job
    job = replicate(src.d, cid, slow(dst))
    assert (job["snapshots_total"], job["bytes_sent"]) == (0, 0), job
    assert names(dst.d, cid) == names(src.d, cid) == on_disk(dst, cid)
    assert hold_of(src.d, cid, second) is not None and hold_of(src.d, cid, first) is None
    r = dst.d.unix.patch(snaps(cid, second))
    assert r.status == 200, r.body
    same_trees(src.pool.container_path(cid), dst.pool.container_path(cid))


@interrupted
def test_the_sender_killed_mid_stream_leaves_nothing_half_visible_and_a_rerun_continues(world: World, sender: str, receiver: str) -> None:
    src, dst = world.pair(sender, receiver)
    cid, first, second, _ = _mid_stream(src, dst)
    src.d.kill()
    until(lambda: scratch(dst) == [], "the receiver dropped the cut stream's scratch", interval=0.2)
    src.d.start()
    assert export_scratch(src) == []  # the start swept what the killed export had made
    _rerun_continues(src, dst, cid, first, second)


@interrupted
def test_the_receiver_killed_mid_stream_fails_the_job_and_a_rerun_continues(world: World, sender: str, receiver: str) -> None:
    src, dst = world.pair(sender, receiver)
    cid, first, second, job = _mid_stream(src, dst)
    assert dst.d.proc is not None
    dst.d.proc.send_signal(signal.SIGKILL)
    dst.d.proc.wait()
    job = finished(src.d, job)
    assert job["state"] == "failed" and job["last_error"], job
    assert hold_of(src.d, cid, first) is not None  # the chain's base stays protected
    dst.d.start()
    assert scratch(dst) == []  # the start swept it
    _rerun_continues(src, dst, cid, first, second)


@interrupted
def test_a_cut_link_fails_the_job_and_a_rerun_after_it_mends_continues(world: World, sender: str, receiver: str) -> None:
    src, dst = world.pair(sender, receiver)
    cid, first, second, job = _mid_stream(src, dst)
    world.link.set_state("down")
    try:
        job = finished(src.d, job, timeout=IDLE * 6)
    finally:
        world.link.set_state("up")
    assert job["state"] == "failed" and "took no data" in job["last_error"], job
    # the receiver gives the stalled stream up on its own (pipe.IDLE_TIMEOUT), scratch removed
    until(lambda: scratch(dst) == [], "the receiver dropped the stalled stream", timeout=IDLE * 12, interval=0.5)
    _rerun_continues(src, dst, cid, first, second)


def test_the_reaper_skips_the_protected_snapshot_until_a_newer_common_one_exists(world: World) -> None:
    src = world.sender("overlay")
    cid = container(src, {"etc/hostname": "x\n"})
    first = src.d.unix.post(snaps(cid), {"expiry": 1}).data["snapshot"]["name"]
    second = src.d.unix.post(snaps(cid), {"expiry": 1}).data["snapshot"]["name"]
    replicate(src.d, cid, "overlay")
    world.clocks["overlay"].run_offset(2 * 86400)  # both have expired on the sender
    try:
        # the reaper takes the unprotected one and leaves the chain's base
        until(lambda: first not in dict(names(src.d, cid)), "the reaper deleted the unprotected snapshot")
        assert second in dict(names(src.d, cid))
        third = snapshot(src.d, cid)
        replicate(src.d, cid, "overlay")
        until(lambda: second not in dict(names(src.d, cid)), "the released base went at the reaper's next round")
        assert hold_of(src.d, cid, third) is not None
    finally:
        world.clocks["overlay"].run_offset(0)


def test_the_cli_replicates_waits_and_lists(world: World) -> None:
    import subprocess
    import sys

    src, dst = world.sender("overlay"), world.receiver("btrfs")
    cid = container(src, {"etc/hostname": "x\n"})
    snapshot(src.d, cid)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snapd", *args, "--socket", str(src.d.socket)],
                              capture_output=True, text=True, timeout=120)

    out = cli("replicate", cid, "--to", "btrfs", "--wait")
    assert out.returncode == 0 and ": done, 1/1 snapshots" in out.stdout, out
    assert names(dst.d, cid) == names(src.d, cid)
    out = cli("replicate", cid, "--to", "nowhere", "--wait")
    assert out.returncode == 1 and ": failed" in out.stdout and "did not answer" in out.stdout, out
    listed = cli("replications")
    assert listed.returncode == 0 and "nowhere" in listed.stdout and "btrfs" in listed.stdout, listed
    out = cli("replicate", cid, "--to", "nope")
    assert out.returncode == 1 and "404 Replication target not found" in out.stderr and "target" in out.stderr, out


def test_a_reload_reads_the_targets_again(world: World) -> None:
    src = world.sender("overlay")
    cid = container(src, {"etc/hostname": "x\n"})
    snapshot(src.d, cid)
    assert src.d.unix.post(JOBS, {"container": cid, "target": "late"}).status == 404
    cfg = src.d.workdir.parent.parent / SENDER_CONFIG
    token = src.d.workdir.parent.parent / "replicate-overlay"
    cfg.write_text(cfg.read_text() + f'\n[targets.late]\nurl = "http://{world.link.ns_addr}:{world.ports["overlay"]}"\n'
                                     f'token_file = "{token}"\n')
    assert src.d.proc is not None
    src.d.proc.send_signal(signal.SIGHUP)
    r = until(lambda: (r := src.d.unix.post(JOBS, {"container": cid, "target": "late"})).status == 202 and r,
              "the reloaded daemon knows the new target")
    assert finished(src.d, r.data["job"])["state"] == "done"
    assert names(world.receiver("overlay").d, cid) == names(src.d, cid)


def test_an_https_target_is_trusted_through_its_tls_ca_only(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    receiver = DaemonProcess(tmp_path / "r", [f"overlay:{tmp_path / 'rpool'}"], tcp=True,
                             extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    (tmp_path / "rpool").mkdir()
    receiver.start()
    sender = None
    try:
        (tmp_path / "token").write_text(receiver.unix.post(f"{ADMIN}/tokens", {"replicate": True}).data["secret"])
        url = f"https://localhost:{receiver.port}"
        (tmp_path / "s.toml").write_text(
            f'[targets.tls]\nurl = "{url}"\ntoken_file = "{tmp_path / "token"}"\ntls_ca = "{cert}"\n'
            f'[targets.untrusted]\nurl = "{url}"\ntoken_file = "{tmp_path / "token"}"\n')
        cid = new_cid()
        write_tree(tmp_path / "spool" / cid, {"etc/hostname": "x\n"})
        sender = DaemonProcess(tmp_path / "s", [f"overlay:{tmp_path / 'spool'}"], tcp=False,
                               extra=["--config", str(tmp_path / "s.toml")]).start()
        snapshot(sender, cid)
        job = finished(sender, start(sender, cid, "untrusted"))
        assert job["state"] == "failed" and "certificate" in job["last_error"].lower(), job
        assert names(receiver, cid) == []
        replicate(sender, cid, "tls")
        assert names(receiver, cid) == names(sender, cid)
    finally:
        if sender is not None:
            assert sender.stop() == 0
        assert receiver.stop() == 0


def test_a_target_slow_to_answer_after_the_whole_stream_is_waited_for(tmp_path: Path) -> None:
    """The stall limit is for a stream that stops moving, not for the target's verifying and
    publishing after its last byte: held there three times the sender's limit, the job waits."""
    stall = 1
    hold = Hold(tmp_path / "hold")
    receiver = DaemonProcess(tmp_path / "r", [f"overlay:{tmp_path / 'rpool'}"], tcp=True,
                             env=hold.env("service.import.on-disk"))
    (tmp_path / "rpool").mkdir()
    receiver.start()
    sender = None
    try:
        (tmp_path / "token").write_text(receiver.unix.post(f"{ADMIN}/tokens", {"replicate": True}).data["secret"])
        (tmp_path / "s.toml").write_text(
            f'stream_idle_timeout = {stall}\n[targets.r]\nurl = "http://127.0.0.1:{receiver.port}"\n'
            f'token_file = "{tmp_path / "token"}"\n')
        cid = new_cid()
        write_tree(tmp_path / "spool" / cid, {"etc/hostname": "x\n", "f": os.urandom(1 << 20)})
        sender = DaemonProcess(tmp_path / "s", [f"overlay:{tmp_path / 'spool'}"], tcp=False,
                               extra=["--config", str(tmp_path / "s.toml")]).start()
        snapshot(sender, cid)
        hold.arm()
        job = start(sender, cid, "r")
        hold.reached("the receiver has the whole stream on disk, its answer held")
        time.sleep(3 * stall)  # what is asserted is a limit NOT firing: time has to pass
        job = sender.unix.get(f"{JOBS}/{job['id']}").data["job"]
        assert job["state"] == "running", job
        hold.release()
        job = finished(sender, job)
        assert job["state"] == "done", job
        assert names(receiver, cid) == names(sender, cid)
    finally:
        if sender is not None:
            assert sender.stop() == 0
        assert receiver.stop() == 0


def test_a_base_two_targets_rest_on_stays_held_until_both_moved_on(world: World) -> None:
    src = world.sender("overlay")
    cid = container(src, {"etc/hostname": "x\n"})
    a = snapshot(src.d, cid)
    replicate(src.d, cid, "btrfs")
    replicate(src.d, cid, "overlay")
    assert hold_of(src.d, cid, a) == "replication to btrfs: the newest snapshot both hold"
    b = snapshot(src.d, cid)
    replicate(src.d, cid, "btrfs")  # btrfs moved on; overlay's chain still rests on a
    assert hold_of(src.d, cid, a) == "replication to overlay: the newest snapshot both hold"
    assert hold_of(src.d, cid, b) == "replication to btrfs: the newest snapshot both hold"
    replicate(src.d, cid, "overlay")  # both moved on: a is free again
    assert hold_of(src.d, cid, a) is None
    assert hold_of(src.d, cid, b) is not None
    assert src.d.unix.delete(snaps(cid, a)).status == 200
