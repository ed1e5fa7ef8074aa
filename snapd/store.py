"""Snapshot metadata in SQLite (through sqlite-utils): schema, migrations, queries.

Times are stored as integer milliseconds since the epoch and handed out as
float seconds.  Every query a request makes is served by an index; nothing
here touches a pool.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import sqlite_utils

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class SnapshotRow:
    """One snapshot as the store knows it."""

    container_id: str
    name: str
    pool: str
    created_at: float
    alias: str | None = None
    last_used_at: float | None = None
    expires_at: float | None = None
    size: int | None = None
    ref: str = ""


def _ms(ts: float | None) -> int | None:
    return None if ts is None else int(round(ts * 1000))


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0


def _row(d: dict) -> SnapshotRow:
    return SnapshotRow(
        container_id=d["container_id"],
        name=d["name"],
        pool=d["pool"],
        created_at=d["created_at"] / 1000.0,
        alias=d["alias"],
        last_used_at=_s(d["last_used_at"]),
        expires_at=_s(d["expires_at"]),
        size=d["size"],
        ref=d["ref"] or "",
    )


def _to_dict(r: SnapshotRow) -> dict:
    return {
        "container_id": r.container_id,
        "name": r.name,
        "pool": r.pool,
        "alias": r.alias,
        "created_at": _ms(r.created_at),
        "last_used_at": _ms(r.last_used_at),
        "expires_at": _ms(r.expires_at),
        "size": r.size,
        "ref": r.ref,
    }


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db["snapshots"].create(
        {
            "id": int,
            "container_id": str,
            "name": str,
            "pool": str,
            "alias": str,
            "created_at": int,
            "last_used_at": int,
            "expires_at": int,
            "size": int,
            "ref": str,
        },
        pk="id",
        not_null={"container_id", "name", "pool", "created_at"},
    )
    db["snapshots"].create_index(["container_id", "name"], unique=True)
    db["snapshots"].create_index(["container_id", "created_at", "name"])
    db.execute(
        "CREATE INDEX idx_snapshots_expires ON snapshots(expires_at) WHERE expires_at IS NOT NULL"
    )


def _migrate_v2(db: sqlite_utils.Database) -> None:
    db["tokens"].create(
        {
            "id": str,
            "hash": str,
            "admin": int,
            "project": str,
            "containers": str,
            "read_only": int,
            "metrics": int,
            "label": str,
            "created_at": int,
            "last_used_at": int,
            "expires_at": int,
            "revoked_at": int,
        },
        pk="id",
        not_null={"hash", "admin", "read_only", "metrics", "created_at"},
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migrate_v1, _migrate_v2]
"""MIGRATIONS[i] brings the schema from version i to i + 1."""


class StoreError(Exception):
    """The store cannot be opened or is from a newer version."""


class Store:
    """The daemon's SQLite database (WAL mode) in the state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {version}, newer than this daemon's {SCHEMA_VERSION}"
            )
        for target in range(version, SCHEMA_VERSION):
            with self.db.conn:
                self.db.execute("BEGIN")
                MIGRATIONS[target](self.db)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    [str(target + 1)],
                )

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    # -- reads ---------------------------------------------------------------

    def list(self, cid: str, limit: int | None = None) -> list[SnapshotRow]:
        """A container's snapshots, newest first (created_at, then name)."""
        sql = (
            "SELECT * FROM snapshots WHERE container_id = ? "
            "ORDER BY created_at DESC, name DESC"
        )
        params: list = [cid]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_row(d) for d in self.db.query(sql, params)]

    def get(self, cid: str, name: str) -> SnapshotRow | None:
        rows = list(
            self.db.query("SELECT * FROM snapshots WHERE container_id = ? AND name = ?", [cid, name])
        )
        return _row(rows[0]) if rows else None

    def names_like(self, cid: str, prefix: str) -> set[str]:
        """Names of a container's snapshots that start with `prefix`."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return {
            r["name"]
            for r in self.db.query(
                "SELECT name FROM snapshots WHERE container_id = ? AND name LIKE ? ESCAPE '\\'",
                [cid, pattern],
            )
        }

    def next_expiry(self) -> float | None:
        row = self.db.execute(
            "SELECT MIN(expires_at) FROM snapshots WHERE expires_at IS NOT NULL"
        ).fetchone()
        return _s(row[0])

    def expired(self, now: float, limit: int = 10_000) -> list[SnapshotRow]:
        """Snapshots whose expiry is at or before `now`, earliest first."""
        return [
            _row(d)
            for d in self.db.query(
                "SELECT * FROM snapshots WHERE expires_at IS NOT NULL AND expires_at <= ? "
                "ORDER BY expires_at LIMIT ?",
                [_ms(now), limit],
            )
        ]

    def pool_rows(self, pool: str) -> list[SnapshotRow]:
        return [_row(d) for d in self.db.query("SELECT * FROM snapshots WHERE pool = ?", [pool])]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]

    # -- writes --------------------------------------------------------------

    def insert(self, row: SnapshotRow) -> None:
        self.db["snapshots"].insert(_to_dict(row))

    def insert_many(self, rows: Iterable[SnapshotRow]) -> None:
        """Bulk insert (one transaction); for reconcile and generated stores."""
        with self.db.conn:
            self.db.execute("BEGIN")
            self.db["snapshots"].insert_all((_to_dict(r) for r in rows), batch_size=1000)

    _UPDATABLE = {"alias", "last_used_at", "size", "ref", "expires_at"}
    _TIME_FIELDS = {"last_used_at", "expires_at"}

    def update(self, cid: str, name: str, **fields: object) -> None:
        """Set some of alias, last_used_at, expires_at, size and ref of one snapshot."""
        unknown = set(fields) - self._UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = {
            k: (_ms(v) if k in self._TIME_FIELDS else v)  # type: ignore[arg-type]
            for k, v in fields.items()
        }
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(
            f"UPDATE snapshots SET {sets} WHERE container_id = ? AND name = ?",
            [*values.values(), cid, name],
        )

    def update_sizes(self, cid: str, sizes: dict[str, int]) -> None:
        with self.db.conn:
            self.db.execute("BEGIN")
            self.db.conn.executemany(
                "UPDATE snapshots SET size = ? WHERE container_id = ? AND name = ?",
                [(size, cid, name) for name, size in sizes.items()],
            )

    def delete(self, cid: str, name: str) -> None:
        self.db.execute("DELETE FROM snapshots WHERE container_id = ? AND name = ?", [cid, name])

    def next_expiry_after(self, now: float) -> float | None:
        """The earliest expires_at strictly after `now`."""
        row = self.db.execute(
            "SELECT MIN(expires_at) FROM snapshots WHERE expires_at > ?", [_ms(now)]
        ).fetchone()
        return _s(row[0])
