"""A snapshot name, once given, never names another snapshot of that container:
not after a delete, not after a restart, not after the store is lost and rebuilt
from the pool -- on every backend.

The daemons here run on a stopped clock (SNAPD_CLOCK_FROZEN), so every create
lands in the same second: the case where the old `-2`, `-3` counting handed a
deleted snapshot's name to the next one.  The instant is in the past, so these
daemons never find anything expired in the shared pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from snapd.core.names import highest, next_name
from snapd.core.store import SCHEMA_VERSION, Store

from .client import snaps
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import PoolHarness, new_cid
from .oldstore import store_at

FROZEN = "1750000000.25"
STAMP = datetime.fromtimestamp(int(float(FROZEN)), tz=timezone.utc).strftime("snap-%Y%m%d-%H%M%S")


class Names:
    """One container, one daemon on a stopped clock, and every name it was given."""

    def __init__(self, pool: PoolHarness, workdir: Path) -> None:
        self.cid = new_cid()
        write_tree(pool.make_container(self.cid), {"f": "1"})
        self.d = DaemonProcess(workdir, [pool.spec], tcp=False, env={"SNAPD_CLOCK_FROZEN": FROZEN})
        self.given: list[str] = []

    def create(self) -> str:
        r = self.d.unix.post(snaps(self.cid))
        assert r.status == 200, r.body
        name = r.data["snapshot"]["name"]
        assert name.startswith(STAMP), name
        assert name not in self.given, f"{name} given again (given before: {self.given})"
        self.given.append(name)
        return name

    def delete(self, *names: str) -> None:
        for name in names:
            r = self.d.unix.delete(snaps(self.cid, name))
            assert r.status == 200, r.body

    def listed(self) -> list[str]:
        return sorted(s["name"] for s in self.d.unix.get(snaps(self.cid)).data["snapshots"])

    def restart(self, lose_store: bool = False) -> None:
        assert self.d.stop() == 0
        if lose_store:
            for f in self.d.state_dir.glob("snapd.db*"):
                f.unlink()
        self.d.start()


@pytest.fixture
def names(pool: PoolHarness, tmp_path: Path) -> Iterator[Names]:
    n = Names(pool, tmp_path / "d")
    n.d.start()
    try:
        yield n
    finally:
        assert n.d.stop() == 0, n.d.log_text()[-3000:]


def test_a_deleted_name_is_not_given_again(names: Names) -> None:
    first = names.create()
    assert first == STAMP
    names.delete(first)
    names.create()  # the same second: not `first` again
    top = names.create()
    names.delete(top)  # the highest suffix, with a lower one still there
    names.create()
    assert names.given == [STAMP, f"{STAMP}-2", f"{STAMP}-3", f"{STAMP}-4"]


def test_names_stay_spent_across_a_restart(names: Names) -> None:
    names.delete(names.create(), names.create())
    names.restart()
    names.create()


def test_names_stay_spent_when_the_store_is_rebuilt(names: Names) -> None:
    a, _b, c = names.create(), names.create(), names.create()
    names.delete(c)
    # to a snapshot that is not the newest: on ZFS the container's dataset is replaced
    assert names.d.unix.patch(snaps(names.cid, a)).status == 200
    names.restart(lose_store=True)
    assert names.listed() == sorted(names.given[:2])  # rebuilt from the pool
    names.create()
    # the oldest deleted: the newer snapshots still on disk speak for its name
    names.delete(a)
    names.restart(lose_store=True)
    names.create()
    # every snapshot deleted: the mark alone remembers
    names.delete(*names.listed())
    names.restart(lose_store=True)
    assert names.listed() == []
    names.create()
    assert "name-mark container=" + names.cid in names.d.log_text()


@pytest.mark.parametrize("floor,want", [
    (None, STAMP),
    ("snap-20200101-000000-7", STAMP),  # an earlier second: the bare stamp
    (STAMP, f"{STAMP}-2"),
    (f"{STAMP}-9", f"{STAMP}-10"),
    ("snap-20991231-235959-3", "snap-20991231-235959-4"),  # the clock stepped back: continue after it
    ("before-upgrade", STAMP),  # a name not of the generated form takes no part
])
def test_the_next_name_is_above_every_name_given(floor: str | None, want: str) -> None:
    assert next_name(STAMP, floor) == want
    assert highest([floor, want]) == want


def test_the_v4_migration_seeds_marks_from_the_snapshots_there(tmp_path: Path) -> None:
    old = store_at(tmp_path / "snapd.db", 3)
    cid, other = new_cid(), new_cid()
    old["snapshots"].insert_all([{"container_id": cid, "name": name, "pool": "p", "created_at": 1000}
                                 for name in (STAMP, f"{STAMP}-9", f"{STAMP}-10", "zz-by-hand")])
    old["snapshots"].insert({"container_id": other, "name": "by-hand", "pool": "p", "created_at": 1000})
    old.close()
    store = Store(tmp_path / "snapd.db")
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert (store.name_mark(cid), store.name_mark(other)) == (f"{STAMP}-10", None)
    finally:
        store.close()
