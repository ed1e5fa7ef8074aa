"""The store's writer in the real daemon (issue 16): a held commit stalls no read, and a
crash inside the writer with a batch of grouped operations in flight loses no
acknowledged operation and leaves no unacknowledged one half-applied.

The daemon is held and killed at the writer's fault points (backends/faults.py) from
outside, over the Unix socket: no sleeps, only waits for what is then asserted.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from backends import faults

from .client import Response, snaps
from .crash import CONNECTION_ERRORS, STATUS, pending_journal, strays
from .daemon import DaemonProcess
from .harness import PoolHarness, new_cid
from .holds import Hold
from .waiting import until


class Request(threading.Thread):
    """One request sent from a thread: its response, or the error that ended it."""

    def __init__(self, call) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.call = call
        self.response: Response | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.response = self.call()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def result(self) -> Response | BaseException:
        self.join(120)
        assert not self.is_alive(), "the request did not end"
        return self.response if self.response is not None else self.error  # type: ignore[return-value]


def _on_disk(pool: PoolHarness, cid: str) -> set[str]:
    base = Path(pool.root) / ".snapshots" / cid  # type: ignore[attr-defined]
    return set(p.name for p in base.iterdir()) if base.is_dir() else set()


def test_lists_are_answered_while_a_creates_intent_commit_is_held(pool: PoolHarness, tmp_path: Path) -> None:
    if pool.kind == "zfs":
        pytest.skip("the hold is the store's; one file-backed pool shows it")
    hold = Hold(tmp_path / "hold")
    d = DaemonProcess(tmp_path / "d", [pool.spec], tcp=False, env=hold.env("store.writer.before-commit")).start()
    try:
        busy, quiet = new_cid(), new_cid()
        for cid in (busy, quiet):
            pool.make_container(cid)
            assert d.unix.post(snaps(cid), {"alias": "first"}).status == 200
        before = {s["name"] for s in d.unix.get(snaps(busy)).data["snapshots"]}
        hold.arm()
        create = Request(lambda: d.unix.post(snaps(busy), {"alias": "held"}))
        assert hold.reached() == "store.writer.before-commit"
        # the writer waits inside an uncommitted batch; reads are answered all the same
        quiet_list = d.unix.get(snaps(quiet))
        assert quiet_list.status == 200 and [s["alias"] for s in quiet_list.data["snapshots"]] == ["first"]
        busy_list = d.unix.get(snaps(busy))
        assert busy_list.status == 200 and {s["name"] for s in busy_list.data["snapshots"]} == before
        assert d.unix.get(STATUS).status == 200
        # and no disk work started before the intent is durable
        assert create.is_alive() and _on_disk(pool, busy) == before
        hold.release()
        made = create.result()
        assert isinstance(made, Response) and made.status == 200, made
        listed = {s["name"]: s["alias"] for s in d.unix.get(snaps(busy)).data["snapshots"]}
        assert listed[made.data["snapshot"]["name"]] == "held" and set(listed) - before == {made.data["snapshot"]["name"]}
    finally:
        hold.close()
        assert d.stop() == 0


@pytest.mark.parametrize("point", ["store.writer.before-commit", "store.writer.committed"])
def test_a_crash_in_the_writer_with_grouped_operations_in_flight(pool: PoolHarness, tmp_path: Path,
                                                                 point: str) -> None:
    """Acknowledged creates, a delete and an alias change; then creates on six containers
    gathered into one batch, and SIGKILL before its commit or between its commit and the
    acknowledgements.  After a restart: every acknowledged change is there, nothing of
    the burst is (recovery rolls back each committed intent: nothing reached the disk)."""
    if pool.kind == "zfs":
        pytest.skip("the writer is the store's; the file-backed pools show it")
    hold, armed = Hold(tmp_path / "hold"), tmp_path / "armed"
    armed.mkdir()
    work = tmp_path / "d"
    env = {faults.ENV: point, faults.ARMED_ENV: str(armed), **hold.env("store.writer.gathering")}
    d = DaemonProcess(work, [pool.spec], tcp=False, env=env).start()
    cids = [new_cid() for _ in range(6)]
    acked: dict[str, dict[str, str | None]] = {}
    try:
        for cid in cids:
            pool.make_container(cid)
            made = [d.unix.post(snaps(cid), {"alias": f"acked-{i}"}) for i in range(2)]
            assert all(r.status == 200 for r in made), [r.body for r in made]
            acked[cid] = {r.data["snapshot"]["name"]: r.data["snapshot"]["alias"] for r in made}
        gone = next(iter(acked[cids[0]]))
        assert d.unix.delete(snaps(cids[0], gone)).status == 200
        del acked[cids[0]][gone]
        renamed = next(iter(acked[cids[1]]))
        assert d.unix.patch(snaps(cids[1], renamed, "/alias"), {"alias": "renamed"}).status == 200
        acked[cids[1]][renamed] = "renamed"

        hold.arm()
        burst = [Request(lambda cid=cid: d.unix.post(snaps(cid), {"alias": "burst"})) for cid in cids]
        hold.reached()
        until(lambda: d.unix.get(STATUS).data["store"]["queued"] >= len(cids),
              "every create of the burst waits for the writer")
        (armed / point).touch()
        hold.release()
        assert d.proc is not None and d.proc.wait(120) == -9
        for r in burst:
            assert isinstance(r.result(), CONNECTION_ERRORS), "a create of the burst was acknowledged"
    finally:
        hold.close()
        d.kill()
    assert f"fault point {point} reached" in d.log_text()

    d = DaemonProcess(work, [pool.spec], tcp=False).start()
    try:
        for cid in cids:
            listed = {s["name"]: s["alias"] for s in d.unix.get(snaps(cid)).data["snapshots"]}
            assert listed == acked[cid], cid
            assert strays(pool, cid, set(listed)) == []
        assert pending_journal(d) == []
        if point == "store.writer.committed":  # the burst's intents were durable: each rolled back
            assert d.log_text().count("outcome=rolled back") >= len(cids) - 1
    finally:
        assert d.stop() == 0
