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
import urllib.parse
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
            _rollback(db)
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
    # Before anything else: the blueprint states, decisions and held outcomes of these blueprints are deleted (their
    # partition's state is replaced, seedworker.engine.ownership), and these unsent outbox rows are dropped (superseded).
    replaced: list[str] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def empty(self) -> bool:
        return not any((self.decisions, self.resolutions, self.outbox, self.held, self.released, self.blueprints,
                        self.counters, self.offsets, self.meta, self.sent, self.replaced, self.superseded))


class StoreError(RuntimeError):
    """The store could not write; the worker must stop consuming rather than acknowledge what it did not keep."""


def _rollback(db: sqlite3.Connection) -> None:
    # On SQLITE_FULL or an I/O error SQLite has already rolled the transaction back; a second ROLLBACK would fail
    # with "no transaction is active" and hide the real cause.
    if db.in_transaction:
        db.execute("ROLLBACK")


def _cause(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


class Store:
    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL"):
        self.path = Path(path)
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file this connection writes

    async def open(self) -> "Store":
        try:
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
            if str(self.path) != ":memory:":
                st = os.stat(self.path)
                self._file = (st.st_dev, st.st_ino)
        except (OSError, sqlite3.Error) as exc:
            try:
                await self.close()
            except StoreError:
                pass  # the reason it could not open is the one to report
            raise StoreError(f"cannot open {self.path}: {_cause(exc)}") from exc
        return self

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                await db.close()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot close {self.path}: {_cause(exc)}") from exc

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            async with self.db.execute(sql, args) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {_cause(exc)}") from exc

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

    async def decision_rows(self) -> list[tuple]:
        """Every decision as a row of Batch.decisions followed by its (status, reward, outcome_time)."""
        return await self._all("SELECT decision_id, request_id, blueprint_id, seed_id, seed_idx, strategy, propensity, "
                               "explored, state_version, request_time, payload, status, reward, outcome_time "
                               "FROM decisions ORDER BY rowid")

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
        self._check_file()
        try:
            return await self.db._execute(self._write_sync, self.db._conn, batch)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {_cause(exc)}") from exc

    def _check_file(self) -> None:
        """In WAL mode SQLite goes on writing, without an error, to a database file that was deleted or replaced
        under it (measured with SQLite 3.40): the batch would be kept only in a file nobody can open again, and the
        next start would begin from nothing. So the path must still name the file this connection opened."""
        if self._file is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            how = "deleted"
        else:
            if (st.st_dev, st.st_ino) == self._file:
                return
            how = "replaced"
        raise StoreError(f"cannot write to {self.path}: the file was {how} while the worker had it open "
                         f"(its writes would go to a file nobody can read)")

    @staticmethod
    def _write_sync(db: sqlite3.Connection, b: Batch) -> list[int]:
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            if b.replaced:
                gone = [(bp,) for bp in b.replaced]
                for table in ("blueprints", "decisions", "held_outcomes"):
                    db.executemany(f"DELETE FROM {table} WHERE blueprint_id = ?", gone)
            if b.superseded:
                db.executemany("DELETE FROM outbox WHERE id = ? AND sent_at IS NULL", [(i,) for i in b.superseded])
            if b.sent:
                # Acknowledged by Kafka: the topic has the message now, and the decision keeps its payload in
                # `decisions`, so the row is deleted rather than marked (marked rows doubled the file's growth).
                db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in b.sent])
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
            _rollback(db)
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


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def read_snapshot(path: str | Path, read: Callable[[sqlite3.Connection], Any]) -> Any:
    """``read(connection)`` inside ONE read transaction on a read-only connection: one consistent snapshot, taken
    without blocking the worker and without writing the database file.

    While a process has the store open its ``-wal`` and ``-shm`` exist and the read goes through them (a WAL reader
    only marks its read position in the shared-memory file). When there is no ``-wal`` (every commit is in the main
    file, nobody has it open), a ``mode=ro`` connection would still create an empty ``-wal`` and a ``-shm`` and leave
    them behind; so the file is then read as ``immutable`` (no locks, no side files), and that read is kept only if
    the file is unchanged afterwards (inode, size, mtime, ctime) and still has no ``-wal`` — else it is repeated the
    ordinary way.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise StoreError(f"no store at {p}")
    wal, journal = p.with_name(p.name + "-wal"), p.with_name(p.name + "-journal")
    uri = "file:" + urllib.parse.quote(str(p)) + "?mode=ro"
    if not wal.exists() and not journal.exists():
        before = _file_identity(p)
        result = _read_once(uri + "&immutable=1", p, read)
        if _file_identity(p) == before and not wal.exists():
            return result
    return _read_once(uri, p, read)


def _read_once(uri: str, p: Path, read: Callable[[sqlite3.Connection], Any]) -> Any:
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {p} read-only: {exc}") from exc
    try:
        db.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot every later one reads
        return read(db)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read {p}: {exc}") from exc
    finally:
        db.close()  # closing ends the read transaction


def in_use(path: str | Path) -> bool:
    """Whether another connection has the store open (a running worker, an `inspect`). It only asks for the
    exclusive lock, which SQLite refuses while any WAL connection is open, and changes no data (like any opener that
    is the last to close, it may fold a WAL left by a killed process into the file). A file SQLite cannot open as a
    database is in use by no SQLite connection."""
    p = Path(path)
    if not p.is_file():
        return False
    db = None
    try:
        # mode=rw, not ro: a read-only connection in exclusive locking mode reports an I/O error, not "locked".
        db = sqlite3.connect(f"file:{urllib.parse.quote(str(p.resolve()))}?mode=rw", uri=True, isolation_level=None,
                             timeout=0)
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    except sqlite3.DatabaseError:
        return False
    finally:
        if db is not None:
            db.close()
