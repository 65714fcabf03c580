"""The worker's SQLite store: decisions, the outbox, learned state, held outcomes, counters and consumed offsets.

One write connection (aiosqlite runs it on its own thread). Each batch of events is written in ONE transaction
together with the Kafka offsets it consumed, so after a crash the store is either before or after the whole batch —
the stored offsets are the truth the consumer seeks to. WAL mode; ``synchronous=NORMAL`` survives a killed process
(a committed transaction is in the WAL), ``FULL`` also survives power loss. The file is created with mode 0600.

Blueprint state is stored as a pickle of plain dicts of numpy arrays: exact floats (including ±inf), and only this
process writes the file.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiosqlite


def _script(db: sqlite3.Connection, sql: str) -> None:
    # Not executescript(): it commits first, which would break the one-transaction-per-migration rule.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _m1(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                              PRIMARY KEY (topic, partition));
        CREATE TABLE blueprints (blueprint_id TEXT PRIMARY KEY, state BLOB NOT NULL, version INTEGER NOT NULL,
                                 updated_at REAL NOT NULL);
        CREATE TABLE decisions (
            decision_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, blueprint_id TEXT NOT NULL,
            seed_id TEXT NOT NULL, seed_idx INTEGER NOT NULL, strategy TEXT NOT NULL, propensity REAL NOT NULL,
            explored INTEGER NOT NULL, state_version INTEGER NOT NULL, request_time REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending', reward REAL, outcome_time REAL, payload BLOB NOT NULL);
        CREATE INDEX decisions_pending ON decisions (status) WHERE status = 'pending';
        CREATE INDEX decisions_blueprint ON decisions (blueprint_id, request_time);
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL,
                             headers BLOB NOT NULL, created_at REAL NOT NULL, sent_at REAL);
        CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
        CREATE TABLE held_outcomes (event_id TEXT PRIMARY KEY, decision_id TEXT NOT NULL, blueprint_id TEXT NOT NULL,
                                    held_since REAL NOT NULL, payload BLOB NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """
    )


MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "initial tables", _m1),
]


def _migrate(db: sqlite3.Connection) -> list[int]:
    """Apply pending migrations, each with its bookkeeping row in one transaction. Runs on the writer thread."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, fn in MIGRATIONS:
        if version in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            fn(db)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def dump_state(state: dict) -> bytes:
    return pickle.dumps(state, protocol=5)


def load_state(blob: bytes) -> dict:
    return pickle.loads(blob)


@dataclass
class Batch:
    """Everything one batch of events changes, written in one transaction."""

    decisions: list[tuple] = field(default_factory=list)  # rows for the decisions table
    resolutions: list[tuple] = field(default_factory=list)  # (status, reward, outcome_time, decision_id)
    outbox: list[tuple] = field(default_factory=list)  # (topic, key, value, headers_blob)
    held: list[tuple] = field(default_factory=list)  # (event_id, decision_id, blueprint_id, held_since, payload)
    released: list[str] = field(default_factory=list)  # held event ids no longer held
    blueprints: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    sent: list[int] = field(default_factory=list)  # outbox ids acknowledged by Kafka since the last batch

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def empty(self) -> bool:
        return not any((self.decisions, self.resolutions, self.outbox, self.held, self.released, self.blueprints,
                        self.counters, self.offsets, self.meta, self.sent))


class StoreError(RuntimeError):
    """The store could not write; the worker must stop consuming rather than acknowledge what it did not keep."""


class Store:
    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL"):
        self.path = Path(path)
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> "Store":
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create the file ourselves so it is private from the first byte (sqlite would use the umask).
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db._execute(_migrate, self._db._conn)  # the migration runs on the writer thread
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        async with self.db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    # -- reading at start ----------------------------------------------------------------------------------------
    async def offsets(self) -> dict[tuple[str, int], int]:
        return {(t, p): o for t, p, o in await self._all("SELECT topic, partition, next_offset FROM offsets")}

    async def blueprint_states(self) -> dict[str, dict]:
        return {b: load_state(s) for b, s in await self._all("SELECT blueprint_id, state FROM blueprints")}

    async def pending_decisions(self) -> list[bytes]:
        return [p for (p,) in await self._all("SELECT payload FROM decisions WHERE status = 'pending'")]

    async def held_outcomes(self) -> list[tuple[str, float, bytes]]:
        return await self._all("SELECT event_id, held_since, payload FROM held_outcomes")

    async def unsent(self) -> list[tuple[int, str, bytes | None, bytes, bytes]]:
        return await self._all("SELECT id, topic, key, value, headers FROM outbox WHERE sent_at IS NULL ORDER BY id")

    async def counters(self) -> dict[str, int]:
        return dict(await self._all("SELECT name, value FROM counters"))

    async def meta(self) -> dict[str, str]:
        return dict(await self._all("SELECT key, value FROM meta"))

    async def decision_statuses(self, decision_ids) -> dict[str, tuple[str, bytes]]:
        """decision_id -> (status, payload) for the ids that exist, in chunks of 500 placeholders."""
        ids = list(decision_ids)
        out: dict[str, tuple[str, bytes]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for did, status, payload in await self._all(
                    f"SELECT decision_id, status, payload FROM decisions WHERE decision_id IN ({marks})", tuple(chunk)):
                out[did] = (status, payload)
        return out

    # -- writing -------------------------------------------------------------------------------------------------
    async def write(self, batch: Batch) -> list[int]:
        """One transaction for the whole batch. Returns the outbox ids of the rows it added, in order."""
        try:
            return await self.db._execute(self._write_sync, self.db._conn, batch)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    @staticmethod
    def _write_sync(db: sqlite3.Connection, b: Batch) -> list[int]:
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            if b.sent:
                db.executemany("UPDATE outbox SET sent_at = ? WHERE id = ?", [(now, i) for i in b.sent])
            if b.decisions:
                db.executemany("INSERT OR IGNORE INTO decisions (decision_id, request_id, blueprint_id, seed_id, "
                               "seed_idx, strategy, propensity, explored, state_version, request_time, payload) "
                               "VALUES (?,?,?,?,?,?,?,?,?,?,?)", b.decisions)
            if b.resolutions:
                db.executemany("UPDATE decisions SET status = ?, reward = ?, outcome_time = ? WHERE decision_id = ?",
                               b.resolutions)
            ids = []
            for topic, key, value, headers in b.outbox:
                cur = db.execute("INSERT INTO outbox (topic, key, value, headers, created_at) VALUES (?,?,?,?,?)",
                                 (topic, key, value, headers, now))
                ids.append(cur.lastrowid)
            if b.held:
                db.executemany("INSERT OR IGNORE INTO held_outcomes VALUES (?,?,?,?,?)", b.held)
            if b.released:
                db.executemany("DELETE FROM held_outcomes WHERE event_id = ?", [(e,) for e in b.released])
            if b.blueprints:
                db.executemany("INSERT INTO blueprints VALUES (?,?,?,?) ON CONFLICT (blueprint_id) DO UPDATE SET "
                               "state = excluded.state, version = excluded.version, updated_at = excluded.updated_at",
                               [(k, s, v, now) for k, (s, v) in b.blueprints.items()])
            if b.counters:
                db.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                               "value = value + excluded.value", list(b.counters.items()))
            if b.meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(b.meta.items()))
            if b.offsets:
                db.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                               [(t, p, o) for (t, p), o in b.offsets.items()])
            db.execute("COMMIT")
            return ids
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def mark_sent(self, ids: list[int]) -> None:
        if ids:
            await self.write(Batch(sent=ids))


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection for `inspect` and tests: safe while the worker writes (WAL readers do not block)."""
    uri = f"file:{Path(path).resolve()}?mode=ro"
    return sqlite3.connect(uri, uri=True)


def read_all(path: str | Path) -> dict[str, Any]:
    """Blueprint states, counters, offsets and meta from a snapshot, read-only."""
    db = open_readonly(path)
    try:
        states = {b: load_state(s) for b, s in db.execute("SELECT blueprint_id, state FROM blueprints")}
        counters = dict(db.execute("SELECT name, value FROM counters"))
        offsets = {(t, p): o for t, p, o in db.execute("SELECT topic, partition, next_offset FROM offsets")}
        meta = dict(db.execute("SELECT key, value FROM meta"))
        return {"blueprints": states, "counters": counters, "offsets": offsets, "meta": meta}
    finally:
        db.close()
