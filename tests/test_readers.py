"""store.readers: what the tools read, written through Store.write(Batch(...)) and read back as typed rows."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime

import pytest

from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.join import HeldOutcome, Resolution
from seedworker.store import readers
from seedworker.store.migrations import SCHEMA_VERSION
from seedworker.store.readers import (
    HeldCount,
    HeldRow,
    HistoryRow,
    LastSelected,
    OffsetRow,
    StatusCount,
    WatermarkRow,
    read_snapshot,
)
from seedworker.store.rows import Batch, BlueprintRow, DecisionRow, OutboxRow, StoredDecision, UnsentRow, dump_state
from seedworker.store.store import Store, StoreError

T0 = 1_700_000_000.0


def decision(n: int, bp: str, seed: str, t: float, partition: int, request_id: str | None = None) -> DecisionRow:
    return DecisionRow(
        f"d{n}",
        request_id or f"run-1-{bp}-{n}",
        bp,
        seed,
        int(seed[-1]),
        "ucb",
        0.5,
        n % 2,
        n,
        t,
        b'{"decision_id": "d%d"}' % n,
        partition,
    )


# Written in this order (rowid order); d3 shares d1's request time, so ties fall back to the order written.
DECISIONS = [
    decision(0, "bp-b", "s1", T0 + 30, 1),
    decision(1, "bp-a", "s0", T0 + 10, 0),
    decision(2, "bp-a", "s1", T0 + 20, 0),
    decision(3, "bp-a", "s0", T0 + 10, 0),
    decision(4, "bp-a", "s1", T0 + 40, 0, request_id="runX1-bp-a-4"),
]
RESOLUTIONS = [
    Resolution("d1", "resolved", 0.25, T0 + 15),
    Resolution("d2", "expired", 0.0, None),
    Resolution("d4", "late", 0.75, T0 + 90),
]
OUTCOMES = [
    ev.AdaptationOutcome(
        event_id=f"o{i}",
        decision_id=f"missing-{i}",
        blueprint_id=bp,
        seed_id="s0",
        accuracy_delta=0.1 * i,
        occurred_at=datetime.fromtimestamp(T0, UTC),
    )
    for i, bp in enumerate(["bp-a", "bp-b", "bp-a"])
]
OUTBOX = [
    OutboxRow("seed.selected", b"bp-a", b"first", ((hdr.DECISION_ID, b"d1"),)),
    OutboxRow("seedworker.dlq", None, b"\xff\x00raw", ((hdr.DLQ_REASON, b"bad"), ("bin", b"\x00\xff\x80"))),
    OutboxRow("seed.selected", b"bp-b", b"third", ((hdr.DECISION_ID, b"d0"),)),
]
STATES = {"bp-b": BlueprintRow(dump_state({"v": 1}), 3, 1), "bp-a": BlueprintRow(dump_state({"v": 2}), 5, 0)}


@pytest.fixture
async def db(tmp_path):
    """A store two batches wrote: every kind of row, one outbox row acknowledged, one outcome released."""
    path = tmp_path / "state.sqlite"
    store = await Store(path).open()
    try:
        ids = await store.write(
            Batch(
                decisions=list(DECISIONS),
                outbox=list(OUTBOX),
                blueprints=dict(STATES),
                held=[HeldOutcome(o, p, T0 + 50 + i) for i, (o, p) in enumerate(zip(OUTCOMES, [0, 1, 0]))],
                counters={"decisions": 5, "dead_letters": 1},
                offsets={("requests", 1): 7, ("requests", 0): 12},
                watermarks={1: T0 + 30, 0: T0 + 40, -1: T0},
                meta={"worker_id": "w1", "default_strategy": "ucb"},
            )
        )
        await store.write(
            Batch(
                resolutions=list(RESOLUTIONS),
                sent=[ids[0]],
                released=["o2"],
                counters={"decisions": 2, "outcomes_learned": 3},
            )
        )
    finally:
        await store.close()
    return path


def test_decisions_come_back_in_the_order_written_with_what_became_of_them(db):
    resolved = {r.decision_id: r for r in RESOLUTIONS}
    want = [
        StoredDecision(d, *(resolved[d.decision_id][1:4] if d.decision_id in resolved else ("pending", None, None)))
        for d in DECISIONS
    ]
    assert read_snapshot(db, readers.decisions) == want
    assert read_snapshot(db, lambda c: readers.decisions(c, "bp-a")) == [
        d for d in want if d.row.blueprint_id == "bp-a"
    ]
    assert read_snapshot(db, lambda c: readers.decisions(c, "nope")) == []
    got = read_snapshot(db, readers.decisions)[1]
    assert isinstance(got, StoredDecision) and isinstance(got.row, DecisionRow)
    assert [type(v) for v in got.row] == [type(v) for v in DECISIONS[1]]  # SQLite gives back what was written


def test_decision_statuses_per_blueprint(db):
    assert sorted(read_snapshot(db, readers.decisions_by_status)) == [
        StatusCount("bp-a", "expired", 1, T0 + 20),
        StatusCount("bp-a", "late", 1, T0 + 40),
        StatusCount("bp-a", "pending", 1, T0 + 10),
        StatusCount("bp-a", "resolved", 1, T0 + 10),
        StatusCount("bp-b", "pending", 1, T0 + 30),
    ]
    assert read_snapshot(db, lambda c: readers.decisions_by_status(c, "bp-b")) == [
        StatusCount("bp-b", "pending", 1, T0 + 30)
    ]


def test_history_is_in_request_time_order_and_last_selected_is_per_seed(db):
    assert read_snapshot(db, readers.decision_history) == [
        HistoryRow("bp-a", "s0", T0 + 10, "resolved", 0.25, T0 + 15),
        HistoryRow("bp-a", "s0", T0 + 10, "pending", None, None),
        HistoryRow("bp-a", "s1", T0 + 20, "expired", 0.0, None),
        HistoryRow("bp-b", "s1", T0 + 30, "pending", None, None),
        HistoryRow("bp-a", "s1", T0 + 40, "late", 0.75, T0 + 90),
    ]
    assert [h.request_time for h in read_snapshot(db, lambda c: readers.decision_history(c, "bp-b"))] == [T0 + 30]
    assert sorted(read_snapshot(db, readers.last_selected)) == [
        LastSelected("bp-a", "s0", T0 + 10),
        LastSelected("bp-a", "s1", T0 + 40),
        LastSelected("bp-b", "s1", T0 + 30),
    ]
    assert read_snapshot(db, lambda c: readers.last_selected(c, "bp-b")) == [LastSelected("bp-b", "s1", T0 + 30)]


def test_payloads_newest_first_and_read_only_as_far_as_wanted(db):
    assert read_snapshot(db, lambda c: list(readers.decision_payloads_newest_first(c, "bp-a"))) == [
        b'{"decision_id": "d4"}',
        b'{"decision_id": "d2"}',
        b'{"decision_id": "d3"}',
        b'{"decision_id": "d1"}',
    ]
    assert (
        read_snapshot(db, lambda c: next(readers.decision_payloads_newest_first(c, "bp-b"))) == b'{"decision_id": "d0"}'
    )


def test_request_statuses_match_a_prefix_with_like_wildcards_taken_literally(db):
    assert read_snapshot(db, lambda c: readers.request_statuses(c, "run-1-")) == {
        "pending": 2,
        "resolved": 1,
        "expired": 1,
    }
    assert read_snapshot(db, lambda c: readers.request_statuses(c, "run-1-bp-a-")) == {
        "pending": 1,
        "resolved": 1,
        "expired": 1,
    }
    assert read_snapshot(db, lambda c: readers.request_statuses(c, "run_1-")) == {}  # '_' is not "any character"
    assert read_snapshot(db, lambda c: readers.request_statuses(c, "%")) == {}
    assert read_snapshot(db, lambda c: readers.request_statuses(c, "runX1-")) == {"late": 1}


def test_held_outcomes_are_the_stored_events_and_released_ones_are_gone(db):
    held = read_snapshot(db, readers.held_outcomes)
    assert held == [
        HeldRow("o0", "missing-0", "bp-a", T0 + 50, 0, -1, ev.encode(OUTCOMES[0])),
        HeldRow("o1", "missing-1", "bp-b", T0 + 51, 1, -1, ev.encode(OUTCOMES[1])),
    ]
    assert ev.decode(held[1].payload, ev.ADAPTATION_OUTCOME) == OUTCOMES[1]
    assert sorted(read_snapshot(db, readers.held_by_blueprint)) == [
        HeldCount("bp-a", 1, T0 + 50),
        HeldCount("bp-b", 1, T0 + 51),
    ]
    assert read_snapshot(db, lambda c: readers.held_by_blueprint(c, "bp-b")) == [HeldCount("bp-b", 1, T0 + 51)]


def test_unsent_outbox_rows_only_in_the_order_written_with_binary_headers_intact(db):
    unsent = read_snapshot(db, readers.unsent)
    assert [u.message for u in unsent] == OUTBOX[1:]  # the first was acknowledged by Kafka
    assert all(isinstance(u, UnsentRow) for u in unsent) and unsent[0].id < unsent[1].id
    assert unsent[1].decision_id == "d0"
    assert read_snapshot(db, readers.unsent_by_topic) == {"seed.selected": 1, "seedworker.dlq": 1}


def test_watermarks_offsets_counters_meta_and_blueprints(db):
    assert read_snapshot(db, readers.watermarks) == [
        WatermarkRow(-1, T0),
        WatermarkRow(0, T0 + 40),
        WatermarkRow(1, T0 + 30),
    ]
    assert read_snapshot(db, readers.offsets) == [OffsetRow("requests", 0, 12), OffsetRow("requests", 1, 7)]
    counters = read_snapshot(db, readers.counters)
    assert counters == {"dead_letters": 1, "decisions": 7, "outcomes_learned": 3} and list(counters) == sorted(counters)
    assert list(read_snapshot(db, readers.meta).items()) == [("default_strategy", "ucb"), ("worker_id", "w1")]
    assert read_snapshot(db, readers.schema_version) == SCHEMA_VERSION
    blueprints = read_snapshot(db, readers.blueprints)
    assert blueprints == STATES and list(blueprints) == ["bp-b", "bp-a"]  # the order they were first written
    states = read_snapshot(db, readers.blueprint_states)
    assert list(states.items()) == [("bp-a", STATES["bp-a"].state), ("bp-b", STATES["bp-b"].state)]  # by id
    assert read_snapshot(db, lambda c: readers.blueprint_states(c, "bp-b")) == {"bp-b": STATES["bp-b"].state}


async def test_tables_and_state(db, tmp_path):
    assert read_snapshot(db, readers.holds_state)
    read_snapshot(db, lambda c: readers.require_tables(c, readers.STATE_TABLES))

    empty = tmp_path / "empty.sqlite"
    await (await Store(empty).open()).close()
    assert not read_snapshot(empty, readers.holds_state)  # migrated, no rows
    assert read_snapshot(empty, readers.schema_version) == SCHEMA_VERSION

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert read_snapshot(other, readers.holds_state)  # some other database: state, not ours to overwrite
    with pytest.raises(StoreError, match="not a seedworker store"):
        read_snapshot(other, lambda c: readers.require_tables(c, ("decisions",)))


def test_the_readers_together_leave_the_file_and_its_directory_as_they_were(db):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in db.parent.iterdir()}

    def everything(c: sqlite3.Connection) -> list:
        return [
            f(c)
            for f in (
                readers.decisions,
                readers.decisions_by_status,
                readers.decision_history,
                readers.last_selected,
                readers.held_outcomes,
                readers.held_by_blueprint,
                readers.unsent,
                readers.unsent_by_topic,
                readers.watermarks,
                readers.offsets,
                readers.counters,
                readers.meta,
                readers.blueprints,
                readers.blueprint_states,
            )
        ]

    assert all(read_snapshot(db, everything))
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in db.parent.iterdir()} == before
    assert os.listdir(db.parent) == ["state.sqlite"]
