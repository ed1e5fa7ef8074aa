"""The store's SQL-built snapshot JSON must equal the API's Python encoder, row for row."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from snapd.http.api import snapshot_json
from snapd.core.store import _EXPIRING, SCHEMA_VERSION, SnapshotRow, Store

from .oldstore import store_at

CID = "a" * 24


@pytest.mark.parametrize("row", [
    SnapshotRow(CID, "snap-1", "p", 1_736_937_000.0),
    SnapshotRow(CID, "snap-2", "p", 1_736_937_000.999, alias='quo"te \\ é ☃', last_used_at=1_736_950_000.001,
                expires_at=1_739_615_400.5, size=2_147_483_648),
    SnapshotRow(CID, "snap-3", "p", 0.001, alias="x" * 100, last_used_at=None, expires_at=4_102_444_800.0, size=0),
    SnapshotRow(CID, "snap-4", "p", 1_700_000_000.0005, size=None),
])
def test_list_json_matches_snapshot_json(tmp_path: Path, row: SnapshotRow) -> None:
    store = Store(tmp_path / "s.db")
    try:
        store.insert(row)
        (item,), _ = store.list_json(CID)
        stored = store.get(CID, row.name)
        assert json.loads(item) == snapshot_json(stored)
    finally:
        store.close()


def test_held_and_policy_rows_still_list_the_seven_reference_fields(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        store.insert(SnapshotRow(CID, "snap-1", "p", 1_736_937_000.0, policy="hourly", hold_reason="pre-upgrade",
                                 hold_since=1_736_937_001.5))
        (item,), _ = store.list_json(CID)
        assert json.loads(item) == snapshot_json(store.get(CID, "snap-1"))
        assert set(json.loads(item)) == {"name", "alias", "created_at", "last_used_at", "expires_at",
                                         "stateful", "size"}
    finally:
        store.close()


# -- schema v5 (issue 13: policies, holds) ----------------------------------------------------

V4_ROW = {"container_id": CID, "name": "snap-1", "pool": "btrfs:/p", "alias": "before", "created_at": 1_000,
          "last_used_at": 2_000, "expires_at": 3_000, "size": 4096, "ref": "r1"}


def test_the_v5_migration_keeps_a_v4_stores_rows_and_marks(tmp_path: Path) -> None:
    old = store_at(tmp_path / "s.db", 4)
    old["snapshots"].insert_all([V4_ROW, {**V4_ROW, "name": "snap-2", "expires_at": None, "alias": None}])
    old.execute("INSERT INTO name_marks VALUES (?, 'snap-2')", [CID])
    old.close()
    store = Store(tmp_path / "s.db")
    try:
        assert store.schema_version == SCHEMA_VERSION == 7
        assert store.get(CID, "snap-1") == SnapshotRow(CID, "snap-1", "btrfs:/p", 1.0, alias="before",
                                                       last_used_at=2.0, expires_at=3.0, size=4096, ref="r1")
        assert store.get(CID, "snap-2").policy is None
        assert store.name_mark(CID) == "snap-2"
        assert store.next_expiry() == 3.0
        assert (store.policy_rows(), store.slot_rows()) == ([], [])
    finally:
        store.close()


def test_the_v6_migration_gives_old_tokens_no_file_access(tmp_path: Path) -> None:
    """Issue 15: a token made before file access existed keeps exactly its scope."""
    from snapd.core.tokens import Tokens

    old = store_at(tmp_path / "s.db", 5)
    old["tokens"].insert({"id": "0123456789ab", "hash": "0" * 64, "admin": 0, "project": "web", "containers": "[]",
                          "read_only": 1, "metrics": 0, "label": None, "created_at": 1_000, "last_used_at": None,
                          "expires_at": None, "revoked_at": None})
    old.close()
    store = Store(tmp_path / "s.db")
    try:
        token = Tokens(store).get("0123456789ab")
        assert token is not None and token.files is False and token.read_only is True
        assert token.as_json()["scope"]["files"] is False
    finally:
        store.close()


@pytest.mark.parametrize("row", [
    SnapshotRow(CID, "snap-1", "p", 1.5, policy="hourly"),
    SnapshotRow(CID, "snap-2", "p", 1.5, expires_at=9.0, hold_reason="pre-upgrade ☃", hold_since=2.25),
    SnapshotRow(CID, "snap-3", "p", 1.5, alias="a", policy="daily", hold_reason="x", hold_since=0.001),
])
def test_policy_and_hold_round_trip(tmp_path: Path, row: SnapshotRow) -> None:
    store = Store(tmp_path / "s.db")
    try:
        store.insert(row)
        assert store.get(CID, row.name) == row
        store.insert_many([replace(row, container_id="b" * 24)])
        assert store.list("b" * 24) == [replace(row, container_id="b" * 24)]
    finally:
        store.close()


def _expiry_answers(store: Store) -> tuple:
    return (store.next_expiry(), store.next_expiry_after(0.0), store.due_containers(100.0),
            [r.name for r in store.expired_for(CID, 100.0, 10)],
            [r.name for r in store.expiring(100.0, 10)[0]], store.expiring(100.0, 10)[1])


def test_a_held_snapshot_is_invisible_to_every_expiry_query_until_released(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        store.insert_many([SnapshotRow(CID, "snap-1", "p", 1.0, expires_at=5.0),
                           SnapshotRow(CID, "snap-2", "p", 1.0, expires_at=7.0)])
        store.set_hold(CID, "snap-1", "pre-upgrade", 2_000)
        assert store.get(CID, "snap-1").hold_reason == "pre-upgrade"
        assert store.get(CID, "snap-1").hold_since == 2.0
        assert store.held_count() == 1
        assert _expiry_answers(store) == (7.0, 7.0, [(CID, "p", 1)], ["snap-2"], ["snap-2"], 1)
        store.set_hold(CID, "snap-1", None, None)
        assert store.held_count() == 0
        assert _expiry_answers(store) == (5.0, 5.0, [(CID, "p", 2)], ["snap-1", "snap-2"],
                                          ["snap-1", "snap-2"], 2)
    finally:
        store.close()


@pytest.mark.parametrize("sql", [
    "SELECT MIN(expires_at) FROM snapshots WHERE {e}",
    "SELECT container_id FROM snapshots WHERE {e} AND expires_at <= 5",
])
def test_expiry_queries_are_served_by_the_held_excluding_index(tmp_path: Path, sql: str) -> None:
    store = Store(tmp_path / "s.db")
    try:
        plan = " ".join(r[-1] for r in store.db.execute("EXPLAIN QUERY PLAN " + sql.format(e=_EXPIRING)))
        assert "idx_snapshots_expires" in plan
    finally:
        store.close()


def test_policies_put_replace_and_delete(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        store.policy_put("hourly", '{"schedule": "0 * * * *"}', 1_000)
        store.policy_put("daily", '{"schedule": "0 0 * * *"}', 2_000)
        store.policy_put("hourly", '{"schedule": "5 * * * *"}', 3_000)
        assert store.policy_rows() == [
            {"name": "daily", "body": '{"schedule": "0 0 * * *"}', "updated_at": 2_000},
            {"name": "hourly", "body": '{"schedule": "5 * * * *"}', "updated_at": 3_000},
        ]
        store.policy_delete("daily")
        store.policy_delete("never-there")
        assert [r["name"] for r in store.policy_rows()] == ["hourly"]
    finally:
        store.close()


def test_slots_are_made_on_first_put_and_updated_field_by_field(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        store.slot_put("hourly", CID, last_slot=3_600_000, last_run=3_601_000)
        store.slot_put("hourly", CID, last_ok=3_602_000)
        store.slot_put("hourly", CID, last_error="no space")
        store.slot_put("daily", CID)
        assert store.slot_rows("hourly") == [{"policy": "hourly", "container": CID, "last_slot": 3_600_000,
                                              "last_run": 3_601_000, "last_ok": 3_602_000,
                                              "last_error": "no space"}]
        assert [(r["policy"], r["last_slot"]) for r in store.slot_rows()] == [("daily", None), ("hourly", 3_600_000)]
        with pytest.raises(ValueError, match="next_slot"):
            store.slot_put("hourly", CID, next_slot=1)
    finally:
        store.close()


def test_update_sets_a_snapshots_policy(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        store.insert(SnapshotRow(CID, "snap-1", "p", 1.0))
        store.update(CID, "snap-1", policy="hourly")
        assert store.get(CID, "snap-1").policy == "hourly"
    finally:
        store.close()


def test_the_v7_migration_gives_old_tokens_no_replicate_scope_and_records_no_bases(tmp_path: Path) -> None:
    """Issue 14: a token made before replication keeps its scope; no chain is protected yet."""
    from snapd.core.tokens import Tokens

    old = store_at(tmp_path / "s.db", 6)
    old["tokens"].insert({"id": "0123456789ab", "hash": "0" * 64, "admin": 1, "project": None, "containers": "[]",
                          "read_only": 0, "metrics": 0, "files": 0, "label": None, "created_at": 1_000,
                          "last_used_at": None, "expires_at": None, "revoked_at": None})
    old.close()
    store = Store(tmp_path / "s.db")
    try:
        token = Tokens(store).get("0123456789ab")
        assert token is not None and token.replicate is False and token.admin is True
        assert store.replication_bases(CID) == {}
        store.set_replication_base(CID, "backup1", "snap-1", 5)
        store.set_replication_base(CID, "backup1", "snap-2", 6)
        store.set_replication_base(CID, "b2", "snap-1", 6)
        assert store.replication_bases(CID) == {"backup1": "snap-2", "b2": "snap-1"}
    finally:
        store.close()
