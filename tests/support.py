"""Helpers shared by the test modules: events, draining a worker on the in-memory bus, reading what it published,
comparing stored states, store faults, and a worker's history for the export and inspect tests.

Test modules import their shared helpers from here (or, for the real broker, from tests/support_kafka.py), never
from one another: tests/test_structure.py checks that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from seedworker.broker.base import BusError
from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.config import Settings
from seedworker.engine.merge import in_time_order, ranks
from seedworker.engine.worker import Worker
from seedworker.store.readers import read_all
from seedworker.store.store import Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REQ, OUT, SEL, CTL, DLQ = (
    "graft.requested",
    "adaptation.outcome",
    "seed.selected",
    "seedworker.control",
    "seedworker.dlq",
)


def request(i: int | str, bp: str = "bp", k: int = 4, *, t: float | None = None, **fields) -> bytes:
    rid = i if isinstance(i, str) else f"req-{i}"
    when = T0 + timedelta(seconds=t if t is not None else (i if isinstance(i, int) else 0))
    return ev.encode(
        ev.GraftRequested(
            request_id=rid,
            blueprint_id=bp,
            occurred_at=when,
            seeds=[ev.SeedCandidate(seed_id=f"layer3:{j}", seed_idx=j) for j in range(k)],
            **fields,
        )
    )


def outcome(selected: ev.SeedSelected, gain: float, dt: float = 1.0, *, seed_id: str | None = None, **fields) -> bytes:
    return ev.encode(
        ev.AdaptationOutcome(
            decision_id=selected.decision_id,
            blueprint_id=selected.blueprint_id,
            seed_id=seed_id or selected.seed_id,
            accuracy_delta=gain,
            occurred_at=selected.request_time + timedelta(seconds=dt),
            **fields,
        )
    )


def training_request(i: int, bp: str = "bp", k: int = 4) -> bytes:
    """A request as a training run sends it: ``request(i, bp, k)`` whose context carries the loss and the epoch."""
    return request(i, bp, k, context={"current_loss": 1.0 / (1 + i), "current_epoch": i})


async def new_bus(partitions: int = 2) -> MemoryBus:
    bus = MemoryBus()
    await bus.ensure_topics({REQ: partitions, OUT: partitions})
    return bus


async def drain(settings, bus) -> Worker:
    w = Worker(settings, bus=bus, burst=True, idle_polls=1)
    await w.run()
    return w


def replay_order(bus: MemoryBus, topics, names: tuple[str, ...] | None = None) -> list:
    """The records of the memory bus a replay reads (by default all four topics), in the order it merges them
    (seedworker.engine.merge, with the replay's ranks)."""
    if names is None:
        names = (topics.dead_letters, topics.selections, topics.control, topics.outcomes)
    return in_time_order([m for name in names for m in bus.read(name)], ranks(topics), topics.selections)


def selections(bus) -> list[ev.SeedSelected]:
    return [ev.decode(m.value) for m in bus.read(SEL)]  # type: ignore[misc]


def dead_letters(bus) -> list[tuple[str, str]]:
    """(source topic, reason) of every dead letter."""
    return [(hdr.value(m.headers, hdr.DLQ_TOPIC), hdr.value(m.headers, hdr.DLQ_REASON)) for m in bus.read(DLQ)]


# -- records (a Kafka ConsumerRecord or a MemoryBus Message) ----------------------------------------------------------
def headers_of(record) -> dict[str, bytes]:
    return {k: v for k, v in record.headers or ()}


def distinct_requests(records) -> set[str]:
    return {orjson.loads(r.value)["request_id"] for r in records}


def check_selection(record, request_ids: dict[str, str]) -> ev.SeedSelected:
    """One seed.selected record: the answer to one of our requests, keyed by its blueprint, with its headers."""
    s = ev.decode(record.value, ev.SEED_SELECTED)
    assert s.request_id in request_ids, s.request_id
    assert s.blueprint_id == request_ids[s.request_id]
    assert s.decision_id == ev.decision_id_for(s.request_id)
    assert record.key == s.blueprint_id.encode()
    h = headers_of(record)
    assert h["event_type"] == b"seed.selected"
    assert h["decision_id"] == s.decision_id.encode()
    assert 0.0 < s.propensity <= 1.0
    assert s.seed_id in {c.seed_id for c in s.scores}
    return s


async def eventually(cond, what: str, timeout: float = 60.0, interval: float = 0.05, detail=lambda: ""):
    """Poll ``cond()`` (sync) until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} {detail()}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, timeout: float = 60.0, *, bus=None):
    """Worker(settings).run() as a task, on ``bus`` (by default the real KafkaBus the settings name); stopped with
    worker.stop() and awaited at the end."""
    worker = Worker(settings, bus=bus)
    task = asyncio.create_task(worker.run(), name="worker")
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises what stopped the worker
        raise AssertionError("the worker returned before it was ready")
    if ready not in done:
        ready.cancel()
        task.cancel()
        raise AssertionError(f"the worker was not ready within {timeout}s")
    failed = False
    try:
        yield worker, task
    except BaseException:
        failed = True
        raise
    finally:
        worker.stop()
        try:
            await asyncio.wait_for(task, 60)
        except BaseException:
            if not failed:
                raise


# -- comparing stored states ----------------------------------------------------------------------------------------
EXACT_STATE = frozenset(
    {
        "pulls",
        "selections",
        "success_sum",
        "count",
        "decisions",
        "version",
        "dim",
        "seed_ids",
        "names",
        "by_strategy",
        "strategy",
        "half_life_s",
        "ridge",
        "feature_ridge",
        "clip",
    }
)


def assert_state_equal(got, want, path: str, exact: frozenset[str] = EXACT_STATE) -> None:
    """Blueprint states: the ``exact`` keys (counts, identities) exactly, floating-point statistics to 1e-9."""
    if isinstance(want, dict):
        assert set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_state_equal(got[key], want[key], f"{path}.{key}", exact)
    elif path.rsplit(".", 1)[-1] in exact:
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got, want, err_msg=path)
        else:
            assert got == want, f"{path}: {got!r} != {want!r}"
    else:
        np.testing.assert_allclose(
            np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-9, atol=1e-9, err_msg=path
        )


# Replay must reproduce times, clocks and warm-start weights exactly too, not only the counts.
REPLAY_EXACT = EXACT_STATE | {"t_ref", "last_selected", "clock", "prior_w"}


def assert_same(got, want, path: str) -> None:
    """Counts, times and identities exactly; floating-point statistics within 1e-9."""
    assert_state_equal(got, want, path, REPLAY_EXACT)


def stored_decisions(db: str | Path) -> dict[str, tuple]:
    con = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True)
    try:
        return {
            row[0]: row[1:]
            for row in con.execute(
                "SELECT decision_id, status, reward, outcome_time, seed_id, strategy, payload FROM decisions"
            )
        }
    finally:
        con.close()


def held_outcomes(db: str | Path) -> set[str]:
    con = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True)
    try:
        return {e for (e,) in con.execute("SELECT event_id FROM held_outcomes")}
    finally:
        con.close()


def assert_same_store(rebuilt: str | Path, live: dict, topics: tuple[str, ...] = (REQ, OUT, CTL)):
    """``live``: read_all() of the live store plus its "decisions" and "held"; every blueprint state, counter,
    decision row (status, reward, payload), held outcome and input offset must agree."""
    got = read_all(rebuilt)
    assert set(got["blueprints"]) == set(live["blueprints"])
    for bp, state in live["blueprints"].items():
        assert_same(got["blueprints"][bp], state, bp)
    assert got["counters"] == live["counters"]
    got_decisions, want_decisions = stored_decisions(rebuilt), live["decisions"]
    assert set(got_decisions) == set(want_decisions)
    for did, (status, reward, outcome_time, *rest) in want_decisions.items():
        g_status, g_reward, g_time, *g_rest = got_decisions[did]
        assert (g_status, g_time, g_rest) == (status, outcome_time, rest), did
        assert (g_reward is None) == (reward is None) and (reward is None or abs(g_reward - reward) <= 1e-9), did
    assert held_outcomes(rebuilt) == live["held"]
    want_offsets = {tp: o for tp, o in live["offsets"].items() if tp[0] in topics}
    assert {tp: o for tp, o in got["offsets"].items() if tp[0] in topics} == want_offsets


def snapshot(db: str | Path) -> dict:
    return {**read_all(db), "decisions": stored_decisions(db), "held": held_outcomes(db)}


@pytest.fixture
def root_logging():
    """The CLI configures the root logger (handler on the captured stderr, level): undone after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    root.setLevel(level)


# -- store faults (see tests/test_faults.py for how each is made) ---------------------------------------------------
def disk_full(db: Path):
    async def inject(store: Store) -> None:
        async with store.db.execute("PRAGMA page_count") as cur:
            (pages,) = await cur.fetchone()
        await store.db.execute(f"PRAGMA max_page_count={pages}")

    return inject, lambda: None


def chattr(flag: str, path: Path) -> None:
    res = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(
            f"chattr {flag} {path} failed (needs root and a file system with the immutable flag): {res.stderr.strip()}"
        )


def wal_unwritable(db: Path):
    wal = db.with_name(db.name + "-wal")

    async def inject(store: Store) -> None:
        assert wal.exists(), "the store's connection has its WAL open"
        chattr("+i", wal)

    return inject, lambda: chattr("-i", wal)


def file_deleted(db: Path):
    aside = db.with_name(db.name + ".aside")

    async def inject(store: Store) -> None:
        os.rename(db, aside)

    return inject, lambda: os.rename(aside, db)


class FaultyStore(Store):
    """The worker's store, with a fault injected once it is open."""

    def __init__(self, path, inject):
        super().__init__(path)
        self.inject = inject

    async def open(self) -> FaultyStore:
        await super().open()
        await self.inject(self)
        return self


async def restored(settings: Settings) -> Worker:
    """A worker that has read the store, as at its start: the independent account of pending, held and counters."""
    w = Worker(settings, bus=MemoryBus())
    await w.store.open()
    try:
        await w._restore()
    finally:
        await w.store.close()
    return w


# -- a worker's history on the memory bus (export/import, inspect) ---------------------------------------------------
HISTORY_T0 = datetime(2026, 3, 1, tzinfo=UTC)
HISTORY_BLUEPRINTS = ("bp-thompson", "bp-lin", "bp-eps")
QUALITY = {"layer3:0": 0.0, "layer3:1": 0.03, "layer3:2": 0.01, "layer3:3": 0.02, "layer3:4": -0.01, "layer3:9": 0.04}


class FlakyBus(MemoryBus):
    """A memory bus whose broker can go away: ``send`` then fails after the batch was committed to SQLite."""

    fail_sends = False

    async def send(self, messages, *, owner=None) -> None:
        if self.fail_sends:
            raise BusError("broker gone")
        await super().send(messages, owner=owner)


def history_settings(db, half_life_s: float | None = 600.0) -> Settings:
    return Settings(
        db=str(db),
        kafka={"partitions": 2},
        default_strategy="thompson",
        blueprint_strategies={"bp-lin": "linucb", "bp-eps": "epsilon-greedy"},
        decay={"half_life_s": half_life_s},
        join={"reward_wait_s": 120.0, "hold_unknown_s": 60.0},
    )


def make_request(i: int, bp: str, rng: np.random.Generator, extra_seed: bool = False, at: float | None = None) -> bytes:
    seeds = [ev.SeedCandidate(seed_id=f"layer3:{j}", seed_idx=j) for j in range(5)]
    if extra_seed:  # a new seed, and one that is already grafted: known to the blueprint, never selectable
        seeds += [
            ev.SeedCandidate(seed_id="layer3:8", seed_idx=8, state="grafted"),
            ev.SeedCandidate(seed_id="layer3:9", seed_idx=9),
        ]
    return ev.encode(
        ev.GraftRequested(
            request_id=f"{bp}-req-{i}",
            blueprint_id=bp,
            occurred_at=HISTORY_T0 + timedelta(seconds=i if at is None else at),
            seeds=seeds,
            context={
                "current_loss": float(rng.uniform(0.2, 2.0)),
                "current_epoch": float(i),
                "learning_rate": float(rng.choice([1e-3, 1e-2])),
                "gradient_norm": float(rng.gamma(2.0)),
            },
        )
    )


def make_outcome(s: ev.SeedSelected, rng: np.random.Generator, dt: float = 5.0, **kw) -> bytes:
    gain = QUALITY[s.seed_id] + 0.01 * s.context.get("current_loss", 0.0) + float(rng.normal(0, 0.01))
    return ev.encode(
        ev.AdaptationOutcome(
            decision_id=s.decision_id,
            blueprint_id=s.blueprint_id,
            seed_id=s.seed_id,
            accuracy_delta=gain,
            occurred_at=s.request_time + timedelta(seconds=dt),
            latency_ms=float(rng.uniform(1, 5)),
            **kw,
        )
    )


def decision_order(bus: MemoryBus) -> list[ev.SeedSelected]:
    """In decision order (the topic has several partitions, read one after the other)."""
    sel = [ev.decode(m.value) for m in bus.read("seed.selected")]
    return sorted(sel, key=lambda s: (s.request_time, s.request_id))  # type: ignore[attr-defined]


async def run_history(settings: Settings, *, n: int = 24, seed: int = 7) -> FlakyBus:
    """A worker's life on a memory bus; returns the bus (its topics hold everything that was exchanged)."""
    rng = np.random.default_rng(seed)
    bus = FlakyBus()
    await bus.ensure_topics({REQ: 2, OUT: 2})
    for i in range(n):
        for bp in HISTORY_BLUEPRINTS:
            bus.produce(REQ, bp.encode(), make_request(i, bp, rng))
    await drain(settings, bus)

    sel = decision_order(bus)
    for k, s in enumerate(sel):
        if k % 7 == 3:
            continue  # no outcome: pending now, expired later
        bus.produce(OUT, s.blueprint_id.encode(), make_outcome(s, rng, dt=150.0 if k % 11 == 5 else 5.0))
    bus.produce(OUT, sel[0].blueprint_id.encode(), make_outcome(sel[0], rng))  # a duplicate
    bus.produce(
        OUT,
        b"bp-thompson",
        ev.encode(
            ev.AdaptationOutcome(  # never gets its decision: dangling
                request_id="bp-thompson-req-never",
                blueprint_id="bp-thompson",
                seed_id="layer3:1",
                accuracy_delta=0.1,
                occurred_at=HISTORY_T0 + timedelta(seconds=n),
            )
        ),
    )
    bus.produce(REQ, b"bp-lin", b'{"event_type": "graft.requested", "request_id": ')  # a dead letter
    bus.produce(
        CTL,
        None,
        ev.encode(
            ev.StrategySwitch(strategy="ucb", blueprint_id="bp-eps", occurred_at=HISTORY_T0 + timedelta(seconds=n))
        ),
    )
    for i in range(n, n + 12):  # later requests: time moves on (expiry), and a new seed arrives (warm start)
        for bp in HISTORY_BLUEPRINTS:
            bus.produce(REQ, bp.encode(), make_request(i + 200, bp, rng, extra_seed=i % 3 == 0))
    await drain(settings, bus)

    sel = [s for s in decision_order(bus) if s.decision_id not in {x.decision_id for x in sel}]
    assert len(sel) == 3 * 12
    for s in sel[:-6]:  # the newest few stay pending
        bus.produce(OUT, s.blueprint_id.encode(), make_outcome(s, rng))
    bus.produce(
        OUT,
        b"bp-lin",
        ev.encode(
            ev.AdaptationOutcome(  # its request comes after the export: held
                request_id="bp-lin-req-900",
                blueprint_id="bp-lin",
                seed_id="layer3:2",
                accuracy_delta=0.05,
                occurred_at=HISTORY_T0 + timedelta(seconds=n + 230),
            )
        ),
    )
    await drain(settings, bus)

    # The broker goes away after the next batch is committed: its selections stay in the outbox, unsent.
    for bp in HISTORY_BLUEPRINTS:
        bus.produce(REQ, bp.encode(), make_request(n + 240, bp, rng))
    bus.produce(REQ, b"bp-eps", b"\xff\xfe not json")
    bus.fail_sends = True
    with pytest.raises(BusError):
        await drain(settings, bus)
    bus.fail_sends = False
    return bus
