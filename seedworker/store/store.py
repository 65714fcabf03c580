"""The worker's SQLite store: decisions, the outbox, learned state, held outcomes, watermarks, counters and the
consumed offsets.

One write connection (aiosqlite runs it on its own thread), and one that writes no rows and only checkpoints the
WAL, off the write path (``CHECKPOINT_BYTES``). Each batch of events is written in ONE transaction
together with the Kafka offsets it consumed, so after a crash the store is either before or after the whole batch —
the stored offsets are the truth the consumer seeks to. WAL mode; ``synchronous=NORMAL`` survives a killed process
(a committed transaction is in the WAL), ``FULL`` also survives power loss. The file is created with mode 0600.

The migrations run on a plain connection before the write connection opens. A batch's statements and parameters
are built on the event loop, then its whole ``BEGIN IMMEDIATE`` ... ``COMMIT`` runs as one function on the write
connection's thread (through aiosqlite's ``Connection._execute``: one hand-off instead of one per statement), rolled
back there on any error, and shielded from cancellation so a cancelled caller never leaves it half done. Reads are
public aiosqlite calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import aiosqlite

from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.join import Known, Resolution
from seedworker.store.migrations import BOOKKEEPING, MIGRATIONS, migrate, statements
from seedworker.store.rows import TP, Batch, DecisionRow, OutboxRow, StoredDecision, UnsentRow

log = logging.getLogger("seedworker.store")

# WAL checkpoints run off the write path, on a connection of their own (Store._checkpoint): SQLite's automatic one runs
# inside the COMMIT that crosses its threshold, and made that batch's transaction 4-8 times as long as the others
# (measured: 30-event batches, p50 2 ms, p99 9-17 ms with it, 3-4 ms without). A passive checkpoint is started once
# this many bytes were written since the last one (about SQLite's default of 1000 pages); the write connection
# still checkpoints by itself past AUTOCHECKPOINT_PAGES, should the background one fall behind or fail.
CHECKPOINT_BYTES = 4 * 1024 * 1024
AUTOCHECKPOINT_PAGES = 10_000


class StoreError(RuntimeError):
    """The store could not write; the worker must stop consuming rather than acknowledge what it did not keep."""


def _cause(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def _migrate_file(path: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=5000")
        migrate(db)
    finally:
        db.close()


def _status(r: Resolution) -> tuple[str, float | None, float | None]:
    return r.status, r.reward, r.outcome_time


class Store:
    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL"):
        self.path = Path(path)
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file this connection writes
        self._checkpointer: aiosqlite.Connection | None = None  # runs the WAL checkpoints, writes no rows
        self._reader: sqlite3.Connection | None = None  # the batch's id lookup, on the event loop's thread
        self._checkpoint_task: asyncio.Task | None = None
        self._unchecked = 0  # bytes written since the last checkpoint started

    async def open(self) -> Store:
        memory = str(self.path) == ":memory:"
        try:
            if not memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Create the file ourselves so it is private from the first byte (sqlite would use the umask).
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
                os.chmod(self.path, 0o600)
                await asyncio.to_thread(_migrate_file, str(self.path))
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
            await self._db.execute("PRAGMA busy_timeout=5000")
            if not memory:
                await self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
                # Opened now, on the file the write connection has: a connection opened later on a path whose file
                # was deleted would create a new one.
                self._checkpointer = await aiosqlite.connect(self.path, isolation_level=None)
                await self._checkpointer.execute(f"PRAGMA synchronous={self.synchronous}")
                self._reader = sqlite3.connect(self.path, isolation_level=None)
                self._reader.execute("PRAGMA busy_timeout=5000")
            if memory:
                # An in-memory database exists only on this connection: its migrations run here, statement by
                # statement, before anyone else can use it.
                await self._migrate_here()
            if not memory:
                st = os.stat(self.path)
                self._file = (st.st_dev, st.st_ino)
        except (OSError, sqlite3.Error) as exc:
            try:
                await self.close()
            except StoreError:
                pass  # the reason it could not open is the one to report
            raise StoreError(f"cannot open {self.path}: {_cause(exc)}") from exc
        return self

    async def _migrate_here(self) -> None:
        db = self.db
        await db.execute(BOOKKEEPING)
        async with db.execute("SELECT version FROM schema_migrations") as cur:
            done = {v for (v,) in await cur.fetchall()}
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            await db.execute("BEGIN IMMEDIATE")
            for statement in statements(sql):
                await db.execute(statement)
            await db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
            await db.execute("COMMIT")

    async def close(self) -> None:
        # The checkpointer first: the last connection to close checkpoints the WAL into the file and removes it.
        if self._checkpoint_task is not None:
            await asyncio.wait([self._checkpoint_task])
            self._checkpoint_task = None
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            with contextlib.suppress(sqlite3.Error):
                await checkpointer.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            with contextlib.suppress(sqlite3.Error):
                reader.close()
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
    async def offsets(self) -> dict[TP, int]:
        return {(t, p): o for t, p, o in await self._all("SELECT topic, partition, next_offset FROM offsets")}

    async def blueprint_rows(self) -> list[tuple[str, bytes, int]]:
        """(blueprint id, pickled state, input partition); decoding is the caller's, so one bad row can be
        reported and skipped."""
        return await self._all("SELECT blueprint_id, state, partition FROM blueprints")

    async def pending_decisions(self) -> list[tuple[str, bytes, int]]:
        """(decision id, payload, input partition) of every pending decision."""
        return await self._all("SELECT decision_id, payload, partition FROM decisions WHERE status = 'pending'")

    async def held_outcomes(self) -> list[tuple[str, float, bytes, int, int]]:
        """(event id, held since, payload, input partition, record offset)."""
        return await self._all(
            'SELECT event_id, held_since, payload, partition, "offset" FROM held_outcomes ORDER BY rowid'
        )

    async def watermarks(self) -> dict[int, float]:
        return dict(await self._all("SELECT partition, event_time FROM watermarks"))

    async def unsent(self) -> list[UnsentRow]:
        rows = await self._all(
            "SELECT id, topic, key, value, headers, partition FROM outbox WHERE sent_at IS NULL ORDER BY id"
        )
        return [UnsentRow(i, OutboxRow(t, k, v, hdr.from_blob(h), p)) for i, t, k, v, h, p in rows]

    async def aged_decisions(self, before: dict[int, float]) -> list[tuple[str, int]]:
        """(decision id, input partition) of the resolved decisions of each input partition requested before its
        event time in ``before`` (to prune): one query for them all (each term a range of decisions_age)."""
        if not before:
            return []
        terms = " OR ".join(["(partition = ? AND request_time < ?)"] * len(before))
        rows = await self._all(
            f"SELECT decision_id, partition FROM decisions WHERE ({terms}) AND status != 'pending'",
            tuple(v for pair in before.items() for v in pair),
        )
        return [(did, p) for did, p in rows]

    async def counters(self) -> dict[str, int]:
        return dict(await self._all("SELECT name, value FROM counters"))

    async def meta(self) -> dict[str, str]:
        return dict(await self._all("SELECT key, value FROM meta"))

    async def decisions(self, partitions: Iterable[int] | None = None) -> list[StoredDecision]:
        """Every decision (of these input partitions), in the order they were written."""
        where, args = "", ()
        if partitions is not None:
            parts = tuple(partitions)
            where, args = f"WHERE partition IN ({','.join('?' * len(parts))})", parts
        rows = await self._all(
            "SELECT decision_id, request_id, blueprint_id, seed_id, seed_idx, strategy, propensity, "
            "explored, state_version, request_time, payload, partition, status, reward, "
            f"outcome_time FROM decisions {where} ORDER BY rowid",
            args,
        )
        return [StoredDecision(DecisionRow(*r[:12]), r[12], r[13], r[14]) for r in rows]

    async def decision_statuses(self, decision_ids: Iterable[str]) -> dict[str, Known]:
        """What became of these decisions, for the ones that exist, in chunks of 500 placeholders.

        Every batch asks this once, before it decides. On a file store it is read on the event loop's own thread,
        from a read connection: lookups by primary key of at most a batch's ids take well under a millisecond,
        while a hand-off to the write connection's thread and back took 3-15 ms per batch on a busy machine (the
        thread waits for the GIL). A WAL reader sees every committed batch and never waits for the writer."""
        ids = list(decision_ids)
        out: dict[str, Known] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            sql = (
                "SELECT decision_id, status, reward, payload, partition, request_time FROM decisions "
                f"WHERE decision_id IN ({marks})"
            )
            rows = None
            if self._reader is not None:
                try:
                    rows = self._reader.execute(sql, chunk).fetchall()
                except sqlite3.Error:
                    # Through the write connection then, as before: a file deleted under the worker fails the
                    # reader's next read (SQLITE_IOERR_FSTAT), and the error to report is the batch write's.
                    rows = None
            if rows is None:
                rows = await self._all(sql, tuple(chunk))
            for did, status, reward, payload, partition, request_time in rows:
                out[did] = Known(status, reward, payload, partition, request_time)
        return out

    # -- writing -------------------------------------------------------------------------------------------------
    async def write(self, batch: Batch) -> list[int]:
        """One transaction for the whole batch. Returns the outbox ids of the rows it added, in order."""
        self._check_file()
        try:
            # Shielded: a cancelled caller must not leave the transaction open on the write connection.
            ids = await asyncio.shield(self._write(batch))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {_cause(exc)}") from exc
        if self._checkpointer is not None:
            self._unchecked += _size(batch)
            if self._unchecked >= CHECKPOINT_BYTES and self._checkpoint_task is None:
                self._unchecked = 0
                self._checkpoint_task = asyncio.create_task(self._checkpoint())
        return ids

    async def _checkpoint(self) -> None:
        """A passive checkpoint on the checkpointer's thread: it copies what it can of the WAL into the file without
        waiting for the writer or blocking it, and the writer starts the WAL over once all of it was copied."""
        try:
            db = self._checkpointer
            if db is not None:
                async with db.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:
                    await cur.fetchall()  # the statement finished: it holds no read snapshot that would keep the WAL
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's connection was closed meanwhile
            log.warning("WAL checkpoint of %s failed (the write connection checkpoints by itself): %s", self.path, exc)
        finally:
            self._checkpoint_task = None

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
        raise StoreError(
            f"cannot write to {self.path}: the file was {how} while the worker had it open "
            f"(its writes would go to a file nobody can read)"
        )

    async def _write(self, b: Batch) -> list[int]:
        db = self.db
        steps = _steps(b)
        # ONE hand-off to the connection's thread for the whole transaction: each await of execute/executemany is a
        # round trip to aiosqlite's thread, and ~14 of them per batch cost twice what the statements themselves do
        # (measured: 12-16 ms per 500-event batch against 6-7 ms for the same statements in one call). aiosqlite has
        # no public way to run a function on that thread; Connection._execute (aiosqlite 0.17-0.22) is the one its
        # own execute/executemany go through, with the same queue, future and error propagation. The write
        # connection stays the only one, and the statements run in the order they always did.
        return await db._execute(_transaction, db._conn, steps)

    async def mark_sent(self, ids: list[int]) -> None:
        if ids:
            await self.write(Batch(sent=ids))


def _size(b: Batch) -> int:
    """Roughly the bytes a batch adds to the WAL: its payloads, outbox values and blueprint states."""
    return (
        sum(len(d.payload) for d in b.decisions)
        + sum(len(m.value) for m in b.outbox if m.value is not None)
        + sum(len(r.state) for r in b.blueprints.values())
    )


_OUTBOX_INSERT = "INSERT INTO outbox (topic, key, value, headers, created_at, partition) VALUES (?,?,?,?,?,?)"


def _steps(b: Batch) -> list[tuple[str, list]]:
    """The batch's statements and their parameters, in the transaction's order, built on the event loop."""
    steps: list[tuple[str, list]] = []
    if b.replaced_partitions:
        parts = [(p,) for p in b.replaced_partitions]
        for table in ("blueprints", "decisions", "held_outcomes", "watermarks"):
            steps.append((f"DELETE FROM {table} WHERE partition = ?", parts))
    if b.superseded:
        steps.append(("DELETE FROM outbox WHERE id = ? AND sent_at IS NULL", [(i,) for i in b.superseded]))
    if b.sent:
        # Acknowledged by Kafka: the topic has the message now, and the decision keeps its payload in `decisions`,
        # so the row is deleted rather than marked (marked rows doubled the file's growth).
        steps.append(("DELETE FROM outbox WHERE id = ?", [(i,) for i in b.sent]))
    if b.pruned:
        # Before the inserts: a replay may prune a decision and fold a later one of the same request id.
        steps.append(("DELETE FROM decisions WHERE decision_id = ?", [(d,) for d in b.pruned]))
    # A decision resolved in its own batch (every resolved one of a restore) is written with what became of it: an
    # insert, then an update of the same row, cost a third more (10,000 restored decisions). One statement, in the
    # batch's order (rowid order is the order decisions are read back in). A decision already stored keeps its row
    # (the insert is ignored, as before) and gets the status of its last resolution in the batch (?16: it has one),
    # as the updates in order left it.
    last = {r.decision_id: r for r in b.resolutions}
    if b.decisions:
        steps.append(
            (
                "INSERT OR IGNORE INTO decisions (decision_id, request_id, blueprint_id, seed_id, seed_idx, "
                "strategy, propensity, explored, state_version, request_time, payload, partition, status, reward, "
                "outcome_time) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15) "
                "ON CONFLICT (decision_id) DO UPDATE SET status = excluded.status, reward = excluded.reward, "
                "outcome_time = excluded.outcome_time WHERE ?16",
                [
                    (*d, *_status(r), 1) if (r := last.get(d.decision_id)) else (*d, "pending", None, None, 0)
                    for d in b.decisions
                ],
            )
        )
    written = {d.decision_id for d in b.decisions}
    later = [r for did, r in last.items() if did not in written]
    if later:
        steps.append(
            (
                "UPDATE decisions SET status = ?, reward = ?, outcome_time = ? WHERE decision_id = ?",
                [(*_status(r), r.decision_id) for r in later],
            )
        )
    if b.outbox:
        now = time.time()
        steps.append(
            (_OUTBOX_INSERT, [(m.topic, m.key, m.value, hdr.to_blob(m.headers), now, m.partition) for m in b.outbox])
        )
    if b.held:
        steps.append(
            (
                "INSERT OR IGNORE INTO held_outcomes (event_id, decision_id, blueprint_id, held_since, "
                'payload, partition, "offset") VALUES (?,?,?,?,?,?,?)',
                [
                    (
                        h.event_id,
                        h.outcome.resolved_decision_id,
                        h.outcome.blueprint_id,
                        h.since,
                        ev.encode(h.outcome),
                        h.partition,
                        h.offset,
                    )
                    for h in b.held
                ],
            )
        )
    if b.released:
        steps.append(("DELETE FROM held_outcomes WHERE event_id = ?", [(e,) for e in b.released]))
    if b.blueprints:
        now = time.time()
        steps.append(
            (
                "INSERT INTO blueprints (blueprint_id, state, version, updated_at, partition) "
                "VALUES (?,?,?,?,?) ON CONFLICT (blueprint_id) DO UPDATE SET state = excluded.state, "
                "version = excluded.version, updated_at = excluded.updated_at, "
                "partition = excluded.partition",
                [(k, r.state, r.version, now, r.partition) for k, r in b.blueprints.items()],
            )
        )
    if b.watermarks:
        steps.append(("INSERT OR REPLACE INTO watermarks VALUES (?, ?)", list(b.watermarks.items())))
    if b.counters:
        steps.append(
            (
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                list(b.counters.items()),
            )
        )
    if b.meta:
        steps.append(("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(b.meta.items())))
    if b.offsets:
        steps.append(
            ("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)", [(t, p, o) for (t, p), o in b.offsets.items()])
        )
    return steps


def _transaction(db: sqlite3.Connection, steps: list[tuple[str, list]]) -> list[int]:
    """BEGIN ... COMMIT of one batch, on the write connection's thread (Store._write); rolled back on any error.
    Returns the outbox ids of the rows it added, in order."""
    ids: list[int] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows in steps:
            db.executemany(sql, rows)
            if sql is _OUTBOX_INSERT:
                # AUTOINCREMENT ids of one transaction (holding the write lock) are consecutive: the last one and
                # the count give them all.
                (last,) = db.execute("SELECT last_insert_rowid()").fetchone()
                ids = list(range(last - len(rows) + 1, last + 1))
        db.execute("COMMIT")
        return ids
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        raise
