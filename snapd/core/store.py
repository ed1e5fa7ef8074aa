"""Snapshot metadata in SQLite (through sqlite-utils): schema, migrations, queries.

Times are stored as integer milliseconds since the epoch and handed out as
float seconds.  Every query a request makes is served by an index; nothing
here touches a pool.

Writes go through one writer thread that owns the write connection and commits
in groups (snapd/core/writer.py): `await store.write(fn)` runs `fn(store)` there
as one atomic unit, durable when it returns; a write method called outside the
writer runs as a job of its own and waits for its commit.  Reads use a
read-only connection of the calling thread (WAL: they see every committed
change and never wait for the writer); inside a job they use the writer's
connection and see the job's own changes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import sqlite_utils

from snapd.core.names import highest, name_key
from snapd.core.records import JournalEntry, SnapshotRow
from snapd.core.writer import Writer

T = TypeVar("T")

log = logging.getLogger("snapd.store")

SCHEMA_VERSION = 7

_EXPIRING = "expires_at IS NOT NULL AND hold_reason IS NULL"
"""Snapshots the reaper may delete when their time comes: never a held one (the
condition of the partial expiry index, so every expiry query is served by it)."""


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
        policy=d["policy"],
        hold_reason=d["hold_reason"],
        hold_since=_s(d["hold_since"]),
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
        "policy": r.policy,
        "hold_reason": r.hold_reason,
        "hold_since": _ms(r.hold_since),
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


def _migrate_v3(db: sqlite_utils.Database) -> None:
    """The operation journal (snapd/core/journal.py): one row per create, restore, delete."""
    db.execute(
        "CREATE TABLE journal ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " op TEXT NOT NULL,"             # create | restore | delete | freeze
        " container_id TEXT NOT NULL,"
        " snapshot TEXT,"                # name (delete: comma-separated names)
        " pool TEXT NOT NULL,"
        " data TEXT NOT NULL,"           # JSON: what recovery needs (alias, expiry, refs, ...)
        " state TEXT NOT NULL,"          # pending | done | failed | recovered
        " started_at INTEGER NOT NULL,"
        " finished_at INTEGER)"
    )
    db.execute("CREATE INDEX idx_journal_pending ON journal(id) WHERE state = 'pending'")


def _migrate_v4(db: sqlite_utils.Database) -> None:
    """Per-container high-water marks of snapshot names (snapd/core/names.py),
    seeded with the greatest name each container has now."""
    db.execute("CREATE TABLE name_marks (container_id TEXT PRIMARY KEY, last_name TEXT NOT NULL)")
    by_cid: dict[str, list[str]] = {}
    for cid, name in db.execute("SELECT container_id, name FROM snapshots"):
        by_cid.setdefault(cid, []).append(name)
    db.conn.executemany(
        "INSERT INTO name_marks (container_id, last_name) VALUES (?, ?)",
        [(cid, top) for cid, names in by_cid.items() if (top := highest(names)) is not None],
    )


def _migrate_v5(db: sqlite_utils.Database) -> None:
    """Policies (issue 13): which policy made a snapshot, holds, stored policies and
    each policy's schedule position per container.  The expiry index leaves held
    snapshots out: the reaper's queries never see them."""
    for column, kind in (("policy", "TEXT"), ("hold_reason", "TEXT"), ("hold_since", "INTEGER")):
        db.execute(f"ALTER TABLE snapshots ADD COLUMN {column} {kind}")
    db.execute("DROP INDEX idx_snapshots_expires")
    db.execute("CREATE INDEX idx_snapshots_expires ON snapshots(expires_at) "
               "WHERE expires_at IS NOT NULL AND hold_reason IS NULL")
    db.execute("CREATE INDEX idx_snapshots_held ON snapshots(container_id) WHERE hold_reason IS NOT NULL")
    db.execute("CREATE TABLE policies (name TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at INTEGER)")
    db.execute(
        "CREATE TABLE policy_slots ("
        " policy TEXT NOT NULL,"
        " container TEXT NOT NULL,"
        " last_slot INTEGER,"            # ms: the nominal slot last taken
        " last_run INTEGER,"             # ms
        " last_ok INTEGER,"              # ms
        " last_error TEXT,"
        " PRIMARY KEY (policy, container))"
    )


def _migrate_v6(db: sqlite_utils.Database) -> None:
    """Tokens may read files in snapshots (issue 15): `snapd token create --files`."""
    db.execute("ALTER TABLE tokens ADD COLUMN files INTEGER NOT NULL DEFAULT 0")


def _migrate_v7(db: sqlite_utils.Database) -> None:
    """Replication (issue 14): tokens with the `replicate` scope, and per container and
    target the newest snapshot both sides hold (the chain's base, protected here)."""
    db.execute("ALTER TABLE tokens ADD COLUMN replicate INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE TABLE replication_bases ("
        " container_id TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " snapshot TEXT NOT NULL,"
        " updated_at INTEGER NOT NULL,"   # ms
        " PRIMARY KEY (container_id, target))"
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migrate_v1, _migrate_v2, _migrate_v3,
                                                             _migrate_v4, _migrate_v5, _migrate_v6,
                                                             _migrate_v7]
"""MIGRATIONS[i] brings the schema from version i to i + 1."""


class StoreError(Exception):
    """The store cannot be opened or is from a newer version."""


STORE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""The database and the files SQLite keeps beside it."""


def private_dir(path: Path) -> None:
    """Make the state directory, or tighten an existing one we own, to mode 0700: the
    store holds token hashes, projects and aliases that no other local user may read."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_mode & 0o077 == 0:
        return
    if st.st_uid != os.geteuid():
        log.warning("state directory %s (mode %o) is not ours to tighten: other users may read it",
                    path, stat.S_IMODE(st.st_mode))
        return
    log.info("state directory %s was mode %o; made 0700", path, stat.S_IMODE(st.st_mode))
    os.chmod(path, 0o700)


def _private_files(db: Path) -> None:
    """The store's files, those there now, mode 0600 (SQLite gives the -wal and -shm
    files it makes later the database's own mode)."""
    for suffix in STORE_FILE_SUFFIXES:
        try:
            os.chmod(f"{db}{suffix}", 0o600, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except NotImplementedError:  # no lchmod: the state directory is ours alone anyway
            os.chmod(f"{db}{suffix}", 0o600)


def _writes(method: Callable[..., T]) -> Callable[..., T]:
    """A write method: in place inside a writer job, else as a job of its own (waiting
    for its commit)."""
    @functools.wraps(method)
    def run(self: "Store", *args: object, **kwargs: object) -> T:
        if self._writer is None or self._writer.on_thread():
            return method(self, *args, **kwargs)
        return self._writer.call(lambda: method(self, *args, **kwargs))
    return run


class Store:
    """The daemon's SQLite database (WAL mode) in the state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Writer | None = None
        self._readers = threading.local()
        self._reader_dbs: list[sqlite_utils.Database] = []
        self._reader_lock = threading.Lock()
        self._savepoints = itertools.count()
        old_umask = os.umask(0o077)  # files SQLite creates now: 0600 from the start
        conn: sqlite3.Connection | None = None
        try:
            _private_files(path)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._wdb = sqlite_utils.Database(conn)
            self._wdb.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: in WAL mode NORMAL survives a process crash but may
            # lose the last commits on power loss -- and a journal intent lost
            # while its disk work survived would leave reconcile guessing (an
            # adopted snapshot without its alias and expiry).  The cost is one
            # WAL fsync per commit; an operation commits twice (intent; outcome
            # together with its store change), and operations in flight share
            # those fsyncs (snapd/core/writer.py: group commit).
            self._wdb.execute("PRAGMA synchronous=FULL")
            self._wdb.execute("PRAGMA busy_timeout=5000")
            self._migrate()
            _private_files(path)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        self._writer = Writer(self._wdb.conn)

    @property
    def db(self) -> sqlite_utils.Database:
        """The connection for the calling thread: the writer's inside a job (and before
        the writer starts), else this thread's read-only one."""
        if self._writer is None or self._writer.on_thread():
            return self._wdb
        reader = getattr(self._readers, "db", None)
        if reader is None:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")  # every change goes through the writer
            conn.execute("PRAGMA busy_timeout=5000")
            reader = self._readers.db = sqlite_utils.Database(conn)
            with self._reader_lock:
                self._reader_dbs.append(reader)
        return reader

    async def write(self, fn: Callable[["Store"], T]) -> T:
        """Run `fn(self)` in the writer as one atomic unit; its result once it is durable
        (committed together with whatever else was queued)."""
        assert self._writer is not None
        return await self._writer.run(lambda: fn(self))

    def write_now(self, fn: Callable[["Store"], T]) -> T:
        """write(), waiting in the calling thread (start-up, reconcile and other rare paths)."""
        assert self._writer is not None
        return self._writer.call(lambda: fn(self))

    def writer_stats(self) -> dict[str, int]:
        """Commits, jobs, the largest batch and what waits now (snapd/core/writer.py)."""
        return self._writer.stats.as_dict() if self._writer is not None else {}

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {version}, newer than this daemon's {SCHEMA_VERSION}"
            )
        for target in range(version, SCHEMA_VERSION):
            with self.transaction():
                MIGRATIONS[target](self.db)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    [str(target + 1)],
                )

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        if self._writer is not None:
            self._writer.close()
        with self._reader_lock:
            for reader in self._reader_dbs:
                reader.close()
            self._reader_dbs.clear()
        self._wdb.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit inside a writer job (a savepoint of the writer's batch), or
        BEGIN ... COMMIT before the writer starts (migrations).  Elsewhere: use write().

        Writes inside use plain SQL: sqlite-utils' table helpers commit on their own.
        """
        if self._writer is not None and not self._writer.on_thread():
            raise RuntimeError("Store.transaction() outside the writer: use Store.write()")
        conn = self._wdb.conn
        if not conn.in_transaction:
            with conn:
                conn.execute("BEGIN")
                yield
            return
        name = f"unit{next(self._savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")

    # -- tokens --------------------------------------------------------------

    @_writes
    def token_insert(self, row: dict) -> None:
        columns = ", ".join(row)  # keys: the tokens table's columns (snapd/core/tokens.py)
        self.db.execute(f"INSERT INTO tokens ({columns}) VALUES ({', '.join('?' * len(row))})",
                        list(row.values()))

    def token_row(self, token_id: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM tokens WHERE id = ?", [token_id]))
        return rows[0] if rows else None

    def token_rows(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM tokens ORDER BY created_at, id"))

    @_writes
    def token_revoke(self, token_id: str, at_ms: int | None) -> None:
        self.db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                        [at_ms, token_id])

    @_writes
    def token_touch(self, token_id: str, at_ms: int | None) -> None:
        self.db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", [at_ms, token_id])

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

    def list_after(self, cid: str, after: tuple[int, str] | None, limit: int) -> list[SnapshotRow]:
        """A page of a container's snapshots in list order (newest first), after the position
        `after` ((created_at in ms, name), as position() gives; None: from the newest)."""
        sql, params = "SELECT * FROM snapshots WHERE container_id = ?", [cid]
        if after is not None:
            sql += " AND (created_at, name) < (?, ?)"
            params += [after[0], after[1]]
        return [_row(d) for d in self.db.query(sql + " ORDER BY created_at DESC, name DESC LIMIT ?",
                                                [*params, limit])]

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

    def name_mark(self, cid: str) -> str | None:
        """The greatest snapshot name ever given for container `cid` (None: none known)."""
        row = self.db.execute("SELECT last_name FROM name_marks WHERE container_id = ?", [cid]).fetchone()
        return row[0] if row else None

    _GENERATED = "snap-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-[0-9][0-9][0-9][0-9][0-9][0-9]"

    def top_name(self, cid: str) -> str | None:
        """The greatest generated name among the container's snapshots (two index reads:
        the latest second by name order, then the greatest suffix within it)."""
        row = self.db.execute(
            "SELECT name FROM snapshots WHERE container_id = ? AND (name GLOB ? OR name GLOB ?) "
            "ORDER BY name DESC LIMIT 1", [cid, self._GENERATED, self._GENERATED + "-[1-9]*"],
        ).fetchone()
        return highest(self.names_like(cid, row[0][:20])) if row else None

    def next_expiry(self) -> float | None:
        row = self.db.execute(
            f"SELECT MIN(expires_at) FROM snapshots WHERE {_EXPIRING}"
        ).fetchone()
        return _s(row[0])

    def pool_rows(self, pool: str) -> list[SnapshotRow]:
        return [_row(d) for d in self.db.query("SELECT * FROM snapshots WHERE pool = ?", [pool])]

    def pool_usage(self) -> list[tuple[str, int, int]]:
        """(pool, snapshots, bytes held) for every pool with snapshots: one GROUP BY."""
        rows = self.db.execute(
            "SELECT pool, COUNT(*), COALESCE(SUM(size), 0) FROM snapshots GROUP BY pool ORDER BY pool"
        ).fetchall()
        return [(pool, int(n), int(size)) for pool, n, size in rows]

    def count(self, cid: str | None = None) -> int:
        """Snapshots in the store, or of one container (an index count, no rows read)."""
        if cid is None:
            return self.db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM snapshots WHERE container_id = ?", [cid]).fetchone()[0]

    def containers(self, pool: str) -> list[str]:
        """Ids of the containers with snapshots in `pool`."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT container_id FROM snapshots WHERE pool = ?", [pool])]

    def count_of(self, pool: str, cids: list[str]) -> int:
        """Snapshots of containers `cids` in `pool`, counting creates journalled and not yet
        finished (one index search per container)."""
        ids = json.dumps(cids)
        return self.db.execute(
            "SELECT (SELECT COUNT(*) FROM snapshots WHERE pool = ? AND container_id IN "
            "(SELECT value FROM json_each(?))) + (SELECT COUNT(*) FROM journal WHERE state = 'pending' "
            "AND op = 'create' AND pool = ? AND container_id IN (SELECT value FROM json_each(?)))",
            [pool, ids, pool, ids]).fetchone()[0]

    # -- writes --------------------------------------------------------------

    _INSERT = (
        "INSERT INTO snapshots (container_id, name, pool, alias, created_at, last_used_at, "
        "expires_at, size, ref, policy, hold_reason, hold_since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    @_writes
    def insert(self, row: SnapshotRow) -> None:
        """One row, in plain SQL so it can share a transaction()."""
        self.db.execute(self._INSERT, list(_to_dict(row).values()))

    @_writes
    def insert_many(self, rows: Iterable[SnapshotRow]) -> None:
        """Bulk insert in one transaction; for reconcile and generated stores."""
        with self.transaction():
            self.db.conn.executemany(self._INSERT, (tuple(_to_dict(r).values()) for r in rows))

    _UPDATABLE = {"alias", "last_used_at", "size", "ref", "expires_at", "policy"}
    _TIME_FIELDS = {"last_used_at", "expires_at"}

    @_writes
    def update(self, cid: str, name: str, **fields: object) -> None:
        """Set some of alias, last_used_at, expires_at, size, ref and policy of one snapshot."""
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

    @_writes
    def rehome(self, cid: str, name: str, pool: str, ref: str) -> None:
        """Move a snapshot's row to another pool name (its pool was renamed)."""
        self.db.execute(
            "UPDATE snapshots SET pool = ?, ref = ? WHERE container_id = ? AND name = ?",
            [pool, ref, cid, name],
        )

    @_writes
    def update_sizes(self, cid: str, sizes: dict[str, int]) -> None:
        with self.transaction():
            self.db.conn.executemany(
                "UPDATE snapshots SET size = ? WHERE container_id = ? AND name = ?",
                [(size, cid, name) for name, size in sizes.items()],
            )

    @_writes
    def raise_name_mark(self, cid: str, name: str) -> bool:
        """Make `name` the container's mark if it is greater (plain SQL: shares a
        transaction()); whether the mark changed.  Names not of the generated
        form are ignored."""
        key = name_key(name)
        current = self.name_mark(cid)
        if key is None or (current is not None and (name_key(current) or ("", 0)) >= key):
            return False
        self.db.execute(
            "INSERT INTO name_marks (container_id, last_name) VALUES (?, ?) "
            "ON CONFLICT(container_id) DO UPDATE SET last_name = excluded.last_name",
            [cid, name],
        )
        return True

    @_writes
    def delete(self, cid: str, name: str) -> None:
        self.db.execute("DELETE FROM snapshots WHERE container_id = ? AND name = ?", [cid, name])

    @_writes
    def set_hold(self, cid: str, name: str, reason: str | None, since_ms: int | None) -> None:
        """Hold one snapshot (`reason`, since `since_ms`), or release it (None, None)."""
        self.db.execute("UPDATE snapshots SET hold_reason = ?, hold_since = ? WHERE container_id = ? AND name = ?",
                        [reason, since_ms, cid, name])

    @_writes
    def set_replication_base(self, cid: str, target: str, name: str, at_ms: int) -> None:
        """Record `name` as the newest snapshot of `cid` that `target` holds too."""
        self.db.execute(
            "INSERT INTO replication_bases (container_id, target, snapshot, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(container_id, target) DO UPDATE SET snapshot = excluded.snapshot, "
            "updated_at = excluded.updated_at", [cid, target, name, at_ms])

    def replication_bases(self, cid: str) -> dict[str, str]:
        """Target -> the newest snapshot of `cid` it holds too, as last recorded."""
        return dict(self.db.execute("SELECT target, snapshot FROM replication_bases WHERE container_id = ?",
                                    [cid]).fetchall())

    def held_count(self) -> int:
        """Held snapshots in the store (the partial index on held rows)."""
        return self.db.execute("SELECT COUNT(*) FROM snapshots WHERE hold_reason IS NOT NULL").fetchone()[0]

    # -- policies (issue 13) -----------------------------------------------------

    def policy_rows(self) -> list[dict]:
        """Policies set through the API: name, body (JSON), updated_at (ms); by name."""
        return list(self.db.query("SELECT name, body, updated_at FROM policies ORDER BY name"))

    @_writes
    def policy_put(self, name: str, body: str, at_ms: int | None) -> None:
        self.db.execute(
            "INSERT INTO policies (name, body, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            [name, body, at_ms])

    @_writes
    def policy_delete(self, name: str) -> None:
        self.db.execute("DELETE FROM policies WHERE name = ?", [name])

    _SLOT_FIELDS = ("last_slot", "last_run", "last_ok", "last_error")

    def slot_rows(self, policy: str | None = None) -> list[dict]:
        """Schedule positions (policy, container, last_slot, last_run, last_ok in ms,
        last_error), of one policy or all; by policy, container."""
        sql = "SELECT policy, container, last_slot, last_run, last_ok, last_error FROM policy_slots"
        params: list = []
        if policy is not None:
            sql += " WHERE policy = ?"
            params.append(policy)
        return list(self.db.query(sql + " ORDER BY policy, container", params))

    @_writes
    def slot_put(self, policy: str, container: str, **fields: object) -> None:
        """Set some of last_slot, last_run, last_ok (ms) and last_error of one
        (policy, container), making the row if there is none (plain SQL: shares a
        transaction())."""
        unknown = set(fields) - set(self._SLOT_FIELDS)
        if unknown:
            raise ValueError(f"not a slot field: {sorted(unknown)}")
        columns = ", ".join(["policy", "container", *fields])
        marks = ", ".join("?" * (2 + len(fields)))
        sets = ", ".join(f"{k} = excluded.{k}" for k in fields)
        self.db.execute(
            f"INSERT INTO policy_slots ({columns}) VALUES ({marks}) ON CONFLICT(policy, container) "
            + (f"DO UPDATE SET {sets}" if fields else "DO NOTHING"),
            [policy, container, *fields.values()])

    def policy_newest(self) -> list[tuple[str, str, float]]:
        """(policy, container, created_at of its newest snapshot of that policy): where the
        scheduler stands even if it stopped between a snapshot and recording its slot."""
        return [(r[0], r[1], r[2] / 1000.0) for r in self.db.execute(
            "SELECT policy, container_id, MAX(created_at) FROM snapshots WHERE policy IS NOT NULL "
            "GROUP BY policy, container_id")]

    def next_expiry_after(self, now: float) -> float | None:
        """The earliest expires_at strictly after `now`."""
        row = self.db.execute(
            f"SELECT MIN(expires_at) FROM snapshots WHERE {_EXPIRING} AND expires_at > ?", [_ms(now)]
        ).fetchone()
        return _s(row[0])

    # -- journal (snapd/core/journal.py) --------------------------------------------

    @_writes
    def journal_begin(self, op: str, cid: str, snapshot: str | None, pool: str, data: dict,
                      now: float) -> int:
        """Record an operation's intent (durable before the disk is touched); its id."""
        cur = self.db.execute(
            "INSERT INTO journal (op, container_id, snapshot, pool, data, state, started_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            [op, cid, snapshot, pool, json.dumps(data, sort_keys=True), _ms(now)],
        )
        return int(cur.lastrowid)

    @_writes
    def journal_end(self, jid: int, state: str, now: float) -> None:
        self.db.execute("UPDATE journal SET state = ?, finished_at = ? WHERE id = ?",
                        [state, _ms(now), jid])

    def journal_pending(self) -> list[JournalEntry]:
        """Unfinished operations, oldest first."""
        return [
            JournalEntry(d["id"], d["op"], d["container_id"], d["snapshot"], d["pool"],
                         _json_or_none(d["data"]), d["state"], d["started_at"] / 1000.0)
            for d in self.db.query("SELECT * FROM journal WHERE state = 'pending' ORDER BY id")
        ]

    @_writes
    def journal_prune(self, keep: int = 1000) -> None:
        """Drop finished entries but the newest `keep` (kept for post-mortems)."""
        self.db.execute(
            "DELETE FROM journal WHERE state != 'pending' AND id <= "
            "(SELECT COALESCE(MAX(id), 0) FROM journal) - ?", [keep])

    # -- read-only queries for scale (#8): list route, reaper, expiry plan -------------

    _ISO_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ', {0} / 1000.0, 'unixepoch')"
    _SNAPSHOT_JSON_SQL = (
        "json_object('name', name, 'alias', alias, "
        f"'created_at', {_ISO_SQL.format('created_at')}, "
        f"'last_used_at', {_ISO_SQL.format('last_used_at')}, "
        f"'expires_at', {_ISO_SQL.format('expires_at')}, "
        "'stateful', json('false'), 'size', size)"
    )

    def list_json(
        self, cid: str, limit: int | None = None, after: tuple[int, str] | None = None
    ) -> tuple[list[str], tuple[int, str] | None]:
        """A container's snapshots, newest first, each already encoded as the API's
        snapshot object (by SQLite's json_object: no Python object per row).

        `after` is a position (created_at in ms, name): only snapshots after it in
        list order.  With `limit`, at most that many, and the position of the last
        one when more follow (else None).  One range scan of the
        (container_id, created_at, name) index.
        """
        sql = f"SELECT {self._SNAPSHOT_JSON_SQL}, created_at, name FROM snapshots WHERE container_id = ?"
        params: list = [cid]
        if after is not None:
            sql += " AND (created_at, name) < (?, ?)"
            params += [after[0], after[1]]
        sql += " ORDER BY created_at DESC, name DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit + 1)
        rows = self.db.execute(sql, params).fetchall()
        more = limit is not None and len(rows) > limit
        if more:
            rows = rows[:limit]
        return [r[0] for r in rows], ((rows[-1][1], rows[-1][2]) if more and rows else None)

    def neighbours(self, cid: str, created_at: float, name: str) -> list[str]:
        """The snapshots just older and just newer than the position (created_at, name) --
        which need not be a row any more -- in the container's order (two index seeks)."""
        at = _ms(created_at)
        out = []
        for cmp, order in (("<", "DESC"), (">", "ASC")):
            row = self.db.execute(
                f"SELECT name FROM snapshots WHERE container_id = ? AND (created_at {cmp} ? OR "
                f"(created_at = ? AND name {cmp} ?)) ORDER BY created_at {order}, name {order} LIMIT 1",
                [cid, at, at, name]).fetchone()
            if row:
                out.append(row[0])
        return out

    def position(self, cid: str, name: str) -> tuple[int, str] | None:
        """(created_at in ms, name) of one snapshot: a list cursor."""
        row = self.db.execute(
            "SELECT created_at, name FROM snapshots WHERE container_id = ? AND name = ?", [cid, name]
        ).fetchone()
        return (row[0], row[1]) if row else None

    def due_containers(self, now: float) -> list[tuple[str, str, int]]:
        """(container_id, pool, how many) with snapshots expired at `now`, earliest expiry first."""
        return [
            (r[0], r[1], r[2])
            for r in self.db.execute(
                "SELECT container_id, pool, COUNT(*), MIN(expires_at) AS first FROM snapshots "
                f"WHERE {_EXPIRING} AND expires_at <= ? "
                "GROUP BY container_id, pool ORDER BY first",
                [_ms(now)],
            )
        ]

    def expired_for(self, cid: str, now: float, limit: int) -> list[SnapshotRow]:
        """One container's snapshots expired at `now`, earliest first."""
        return [
            _row(d)
            for d in self.db.query(
                f"SELECT * FROM snapshots WHERE container_id = ? AND {_EXPIRING} "
                "AND expires_at <= ? ORDER BY expires_at, name LIMIT ?",
                [cid, _ms(now), limit],
            )
        ]

    def expiring(self, until: float, limit: int) -> tuple[list[SnapshotRow], int]:
        """Snapshots whose expiry is at or before `until` (earliest first, at most
        `limit`), and how many there are in all."""
        rows = [
            _row(d)
            for d in self.db.query(
                f"SELECT * FROM snapshots WHERE {_EXPIRING} AND expires_at <= ? "
                "ORDER BY expires_at, container_id, name LIMIT ?",
                [_ms(until), limit],
            )
        ]
        total = self.db.execute(
            f"SELECT COUNT(*) FROM snapshots WHERE {_EXPIRING} AND expires_at <= ?", [_ms(until)]
        ).fetchone()[0]
        return rows, total


def _json_or_none(text: str | None) -> dict | None:
    """A journal entry's data; None when unreadable (its settling then fails: left pending)."""
    try:
        data = json.loads(text or "")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
