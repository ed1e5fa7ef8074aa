"""Stores as an older daemon left them, for migration tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from snapd.core.store import MIGRATIONS


def store_at(path: Path, version: int) -> sqlite_utils.Database:
    """A store file at schema `version` (the migrations up to it, nothing newer);
    the caller fills it and closes it, then opens it with Store to migrate."""
    db = sqlite_utils.Database(sqlite3.connect(str(path), isolation_level=None))
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for migrate in MIGRATIONS[:version]:
        migrate(db)
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", [str(version)])
    return db
