"""The store's SQL-built snapshot JSON must equal the API's Python encoder, row for row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapd.http.api import snapshot_json
from snapd.core.store import SnapshotRow, Store

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
