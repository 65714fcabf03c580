"""The store's schema as an ordered list of migrations; each one and its bookkeeping row are applied in one
transaction, so a store is always at some version, never between two."""

from __future__ import annotations

import sqlite3
import time


def statements(sql: str) -> list[str]:
    # Not executescript(): it commits first, which would break the one-transaction-per-migration rule.
    return [s for s in sql.split(";") if s.strip()]


M1 = """
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

# Event time per input partition: decisions, held outcomes (and their record offset) and blueprints know their
# input partition (a rebuild
# replaces exactly one partition's rows), and each partition has its own watermark. Rows written before keep
# partition -1, and the single watermark of version 1 becomes partition -1's, so they expire as before.
M2 = """
        ALTER TABLE decisions ADD COLUMN partition INTEGER NOT NULL DEFAULT -1;
        ALTER TABLE held_outcomes ADD COLUMN partition INTEGER NOT NULL DEFAULT -1;
        ALTER TABLE held_outcomes ADD COLUMN "offset" INTEGER NOT NULL DEFAULT -1;
        ALTER TABLE blueprints ADD COLUMN partition INTEGER NOT NULL DEFAULT -1;
        CREATE INDEX decisions_partition ON decisions (partition);
        CREATE TABLE watermarks (partition INTEGER PRIMARY KEY, event_time REAL NOT NULL);
        INSERT INTO watermarks SELECT -1, CAST(value AS REAL) FROM meta WHERE key = 'watermark';
        DELETE FROM meta WHERE key = 'watermark';
        """

# The changelog (seedworker.store.changelog) goes out through the outbox: its records name their partition and a
# tombstone has no value, so the outbox is made again with a nullable value and a partition column (SQLite cannot
# change a column's constraints in place). Pruning resolved decisions by age reads (partition, request_time).
M3 = """
        CREATE TABLE outbox_v3 (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key BLOB, value BLOB,
                                headers BLOB NOT NULL, created_at REAL NOT NULL, sent_at REAL, partition INTEGER);
        INSERT INTO outbox_v3 (id, topic, key, value, headers, created_at, sent_at)
            SELECT id, topic, key, value, headers, created_at, sent_at FROM outbox;
        DROP TABLE outbox;
        ALTER TABLE outbox_v3 RENAME TO outbox;
        CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
        DROP INDEX decisions_partition;
        CREATE INDEX decisions_age ON decisions (partition, request_time);
        """


MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial tables", M1),
    (2, "input partitions and per-partition watermarks", M2),
    (3, "changelog records in the outbox, decisions pruned by age", M3),
]
BOOKKEEPING = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)"
SCHEMA_VERSION = max(version for version, _, _ in MIGRATIONS)


def rollback(db: sqlite3.Connection) -> None:
    # On SQLITE_FULL or an I/O error SQLite has already rolled the transaction back; a second ROLLBACK would fail
    # with "no transaction is active" and hide the real cause.
    if db.in_transaction:
        db.execute("ROLLBACK")


def migrate(db: sqlite3.Connection) -> list[int]:
    """Apply pending migrations, each with its bookkeeping row in one transaction."""
    db.execute(BOOKKEEPING)
    done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in MIGRATIONS:
        if version in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements(sql):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        applied.append(version)
    return applied
