"""Read-only access to a store: for inspect, export, evaluate, the demo and tests. Safe while the worker writes
(WAL readers do not block the writer), and without writing the file.

Every SQL statement the tools run is here. A reader takes the connection ``read_snapshot`` gives (one read
transaction, so several readers see one consistent snapshot) and returns typed rows, never positional tuples.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from seedworker.contract import headers as hdr
from seedworker.store.rows import BlueprintRow, DecisionRow, OutboxRow, StoredDecision, UnsentRow, load_state
from seedworker.store.store import StoreError

# The tables a worker restores from (schema_migrations and sqlite_sequence are bookkeeping).
STATE_TABLES = ("blueprints", "decisions", "held_outcomes", "outbox", "counters", "offsets", "meta", "watermarks")
_BOOKKEEPING_TABLES = ("schema_migrations", "sqlite_sequence")


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
        db = sqlite3.connect(
            f"file:{urllib.parse.quote(str(p.resolve()))}?mode=rw", uri=True, isolation_level=None, timeout=0
        )
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


# -- the rows the readers return -----------------------------------------------------------------------------------
class OffsetRow(NamedTuple):
    topic: str
    partition: int
    next_offset: int


class WatermarkRow(NamedTuple):
    partition: int
    event_time: float


class HeldRow(NamedTuple):
    """A held outcome as stored: its payload is the encoded adaptation.outcome, byte for byte."""

    event_id: str
    decision_id: str
    blueprint_id: str
    held_since: float
    partition: int
    offset: int  # of its adaptation.outcome record (-1: not known), named when it is dead-lettered later
    payload: bytes


class HistoryRow(NamedTuple):
    """A decision without its payload: when it was made and what became of it."""

    blueprint_id: str
    seed_id: str
    request_time: float
    status: str
    reward: float | None
    outcome_time: float | None


class LastSelected(NamedTuple):
    blueprint_id: str
    seed_id: str
    request_time: float  # of the newest decision that selected the seed


class StatusCount(NamedTuple):
    blueprint_id: str
    status: str
    count: int
    oldest_request_time: float


class HeldCount(NamedTuple):
    blueprint_id: str
    count: int
    oldest_held_since: float


# -- readers: each takes the connection of read_snapshot() ----------------------------------------------------------
def table_names(db: sqlite3.Connection) -> set[str]:
    return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def require_tables(db: sqlite3.Connection, tables: Collection[str]) -> None:
    """Raises StoreError unless these tables and the migrations' bookkeeping exist."""
    if not {*tables, "schema_migrations"} <= table_names(db):
        raise StoreError("not a seedworker store (its tables are missing)")


def holds_state(db: sqlite3.Connection) -> bool:
    """Whether the database has a row a worker would restore, or tables that are not a store's at all."""
    tables = table_names(db)
    if not tables <= {*STATE_TABLES, *_BOOKKEEPING_TABLES}:
        return True
    # The names come from STATE_TABLES, never from the file.
    return any(db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in STATE_TABLES if t in tables)


def schema_version(db: sqlite3.Connection) -> int | None:
    return db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]


def meta(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, value FROM meta ORDER BY key"))


def counters(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT name, value FROM counters ORDER BY name"))


def offsets(db: sqlite3.Connection) -> list[OffsetRow]:
    return [
        OffsetRow(*r) for r in db.execute("SELECT topic, partition, next_offset FROM offsets ORDER BY topic, partition")
    ]


def watermarks(db: sqlite3.Connection) -> list[WatermarkRow]:
    return [WatermarkRow(*r) for r in db.execute("SELECT partition, event_time FROM watermarks ORDER BY partition")]


def _of_blueprint(blueprint_id: str | None) -> tuple[str, tuple]:
    return ("WHERE blueprint_id = ?", (blueprint_id,)) if blueprint_id is not None else ("", ())


def blueprints(db: sqlite3.Connection) -> dict[str, BlueprintRow]:
    """Every blueprint's row, in the order they were first written."""
    return {
        bp: BlueprintRow(state, version, partition)
        for bp, state, version, partition in db.execute(
            "SELECT blueprint_id, state, version, partition FROM blueprints ORDER BY rowid"
        )
    }


def blueprint_states(db: sqlite3.Connection, blueprint_id: str | None = None) -> dict[str, bytes]:
    """Pickled state by blueprint id, in id order. Only the columns of schema version 1, so that a store no worker
    has migrated yet can still be inspected."""
    where, args = _of_blueprint(blueprint_id)
    return dict(db.execute(f"SELECT blueprint_id, state FROM blueprints {where} ORDER BY blueprint_id", args))


_DECISION_COLUMNS = ", ".join((*DecisionRow._fields, "status", "reward", "outcome_time"))
_N_ROW = len(DecisionRow._fields)


def decisions(db: sqlite3.Connection, blueprint_id: str | None = None) -> list[StoredDecision]:
    """Every decision (of this blueprint), in the order they were written: pending ones are restored in that order."""
    where, args = _of_blueprint(blueprint_id)
    return [
        StoredDecision(DecisionRow(*r[:_N_ROW]), *r[_N_ROW:])
        for r in db.execute(f"SELECT {_DECISION_COLUMNS} FROM decisions {where} ORDER BY rowid", args)
    ]


def decision_payloads_newest_first(db: sqlite3.Connection, blueprint_id: str) -> Iterator[bytes]:
    """The blueprint's seed.selected payloads, newest request first, read lazily: a caller that stops early has
    not read the rest."""
    for (payload,) in db.execute(
        "SELECT payload FROM decisions WHERE blueprint_id = ? ORDER BY request_time DESC, rowid DESC", (blueprint_id,)
    ):
        yield payload


def decision_history(db: sqlite3.Connection, blueprint_id: str | None = None) -> list[HistoryRow]:
    """The decisions (of this blueprint) in request-time order, ties in the order they were written."""
    where, args = _of_blueprint(blueprint_id)
    return [
        HistoryRow(*r)
        for r in db.execute(
            f"SELECT blueprint_id, seed_id, request_time, status, reward, outcome_time FROM decisions {where} "
            "ORDER BY request_time, rowid",
            args,
        )
    ]


def last_selected(db: sqlite3.Connection, blueprint_id: str | None = None) -> list[LastSelected]:
    """Per blueprint and seed, the request time of its newest decision."""
    where, args = _of_blueprint(blueprint_id)
    return [
        LastSelected(*r)
        for r in db.execute(
            f"SELECT blueprint_id, seed_id, MAX(request_time) FROM decisions {where} GROUP BY blueprint_id, seed_id",
            args,
        )
    ]


def decisions_by_status(db: sqlite3.Connection, blueprint_id: str | None = None) -> list[StatusCount]:
    """Per blueprint and status, how many decisions and the oldest one's request time."""
    where, args = _of_blueprint(blueprint_id)
    return [
        StatusCount(*r)
        for r in db.execute(
            f"SELECT blueprint_id, status, COUNT(*), MIN(request_time) FROM decisions {where} "
            "GROUP BY blueprint_id, status",
            args,
        )
    ]


def request_statuses(db: sqlite3.Connection, request_id_prefix: str) -> dict[str, int]:
    """Decisions by status, of the requests whose id starts with this prefix (ASCII case ignored, as LIKE does)."""
    pattern = request_id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return dict(
        db.execute(
            "SELECT status, COUNT(*) FROM decisions WHERE request_id LIKE ? ESCAPE '\\' GROUP BY status", (pattern,)
        )
    )


def held_outcomes(db: sqlite3.Connection) -> list[HeldRow]:
    """Every held outcome, in the order they were held."""
    return [
        HeldRow(*r)
        for r in db.execute(
            'SELECT event_id, decision_id, blueprint_id, held_since, partition, "offset", payload FROM held_outcomes '
            "ORDER BY rowid"
        )
    ]


def held_by_blueprint(db: sqlite3.Connection, blueprint_id: str | None = None) -> list[HeldCount]:
    where, args = _of_blueprint(blueprint_id)
    return [
        HeldCount(*r)
        for r in db.execute(
            f"SELECT blueprint_id, COUNT(*), MIN(held_since) FROM held_outcomes {where} GROUP BY blueprint_id", args
        )
    ]


def unsent(db: sqlite3.Connection) -> list[UnsentRow]:
    """The outbox rows Kafka has not acknowledged, in the order they were written (and are published)."""
    return [
        UnsentRow(i, OutboxRow(t, k, v, hdr.from_blob(h), p))
        for i, t, k, v, h, p in db.execute(
            "SELECT id, topic, key, value, headers, partition FROM outbox WHERE sent_at IS NULL ORDER BY id"
        )
    ]


def unsent_by_topic(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT topic, COUNT(*) FROM outbox WHERE sent_at IS NULL GROUP BY topic"))


class ChangelogLag(NamedTuple):
    """Changelog records of one input partition stored but not yet acknowledged by Kafka."""

    partition: int
    records: int
    oldest_created_at: float


def changelog_lag(db: sqlite3.Connection, topic: str) -> list[ChangelogLag]:
    return [
        ChangelogLag(*r)
        for r in db.execute(
            "SELECT partition, COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL AND topic = ? "
            "GROUP BY partition ORDER BY partition",
            (topic,),
        )
    ]


class DecisionSpan(NamedTuple):
    """The request times of the decisions the store keeps (older ones were pruned)."""

    count: int
    first_request_time: float | None
    last_request_time: float | None


def decision_span(db: sqlite3.Connection, blueprint: str | None = None) -> DecisionSpan:
    where, args = ("WHERE blueprint_id = ?", (blueprint,)) if blueprint else ("", ())
    return DecisionSpan(
        *db.execute(f"SELECT COUNT(*), MIN(request_time), MAX(request_time) FROM decisions {where}", args).fetchone()
    )
