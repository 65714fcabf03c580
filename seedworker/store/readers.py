"""Read-only access to a store: for inspect, export, evaluate, the demo and tests. Safe while the worker writes
(WAL readers do not block the writer), and without writing the file.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from seedworker.store.rows import load_state
from seedworker.store.store import StoreError


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
