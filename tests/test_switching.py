"""Switching strategy at run time through the control topic: in order with the other events, persisted, and without
losing what was learned. Memory-bus scenarios first, then one end to end on the real broker."""

from __future__ import annotations

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from seedworker.contract import events as ev
from seedworker.broker.memory import MemoryBus
from seedworker.core.config import Settings
from seedworker.store.store import read_all
from seedworker.engine.worker import Worker
from tests.test_worker import T0, drain, outcome, request, selections

CONTROL = "seedworker.control"


def switch(strategy: str, blueprint_id: str | None = None, logging_only: bool | None = None) -> bytes:
    return ev.encode(ev.StrategySwitch(strategy=strategy, blueprint_id=blueprint_id, logging_only=logging_only,
                                       occurred_at=T0))


def arm_arrays(db: str, bp: str) -> dict[str, np.ndarray]:
    state = read_all(db)["blueprints"][bp]
    return {k: np.asarray(v) for k, v in state["arms"].items() if isinstance(v, (list, np.ndarray))}


@pytest.fixture
def settings(tmp_path):
    return Settings(db=str(tmp_path / "state.sqlite"), kafka={"partitions": 2})


@pytest.fixture
async def bus():
    b = MemoryBus()
    await b.ensure_topics({"graft.requested": 2, "adaptation.outcome": 2})
    return b


async def _learn_some(settings, bus, n: int, start: int = 0, bp: str = "bp", gains=(0.1, 0.5, 0.2, 0.0)) -> None:
    """n requests, drained, then an outcome for each (gain by seed), drained."""
    for i in range(start, start + n):
        bus.produce("graft.requested", bp.encode(), request(i, bp))
    await drain(settings, bus)
    for s in selections(bus)[-n:]:
        bus.produce("adaptation.outcome", bp.encode(), outcome(s, gains[s.seed_idx]))
    await drain(settings, bus)


async def test_switch_keeps_statistics_and_later_decisions_log_the_new_strategy(settings, bus):
    settings.default_strategy = "thompson"
    await _learn_some(settings, bus, 12)
    before = arm_arrays(settings.db, "bp")
    assert {s.strategy for s in selections(bus)} == {"thompson"}

    bus.produce(CONTROL, None, switch("ucb", blueprint_id="bp"))
    w = await drain(settings, bus)
    assert w.counters["strategy_switches"] == 1
    after = arm_arrays(settings.db, "bp")
    assert before.keys() == after.keys()
    for k in before:  # the switch changed nothing that was learned
        np.testing.assert_array_equal(before[k], after[k])

    for i in range(12, 16):
        bus.produce("graft.requested", b"bp", request(i))
    await drain(settings, bus)
    new = selections(bus)[-4:]
    assert [s.strategy for s in new] == ["ucb"] * 4
    # UCB on the learned statistics (seed 1 pays most, every seed tried three times): it exploits seed 1.
    assert [s.seed_idx for s in new].count(1) >= 3
    # Another blueprint still uses the default.
    bus.produce("graft.requested", b"other", request(100, "other"))
    await drain(settings, bus)
    assert selections(bus)[-1].strategy == "thompson"


async def test_switch_is_persisted_and_survives_a_restart(settings, bus):
    bus.produce(CONTROL, None, switch("epsilon-greedy"))  # the default
    bus.produce(CONTROL, None, switch("ucb", blueprint_id="bp-u"))
    await drain(settings, bus)
    snap = read_all(settings.db)
    assert snap["meta"]["default_strategy"] == "epsilon-greedy"
    assert load_state_strategy(settings.db, "bp-u") == "ucb"
    # A new worker (new process) reads the switches back from SQLite, not from the control topic again.
    bus.produce("graft.requested", b"bp-u", request(1, "bp-u"))
    bus.produce("graft.requested", b"bp-e", request(2, "bp-e"))
    w = await drain(settings, bus)
    assert w.counters["strategy_switches"] == 2  # counted once, not re-applied
    by_bp = {s.blueprint_id: s.strategy for s in selections(bus)}
    assert by_bp == {"bp-u": "ucb", "bp-e": "epsilon-greedy"}


def load_state_strategy(db: str, bp: str) -> str | None:
    return read_all(db)["blueprints"][bp]["strategy"]


async def test_control_messages_are_processed_in_order_with_requests(settings, bus):
    """One fetch holding request, switch, request: the first request is decided before the switch, the second after."""
    settings.default_strategy = "round-robin"
    settings.min_samples = 0
    w = Worker(settings, bus=bus)
    await w.start()
    try:
        fetch = [bus.produce("graft.requested", b"bp", request(1)), bus.produce(CONTROL, None, switch("seed0")),
                 bus.produce("graft.requested", b"bp", request(2))]
        await w.process(fetch)
    finally:
        await w.close()
    assert [s.strategy for s in selections(bus)] == ["round-robin", "seed0"]
    assert read_all(settings.db)["meta"]["default_strategy"] == "seed0"


async def test_logging_only_switch_chooses_seed0_logs_propensities_and_learns(settings, bus):
    bus.produce(CONTROL, None, switch("thompson", logging_only=True))
    await drain(settings, bus)
    await _learn_some(settings, bus, 8, gains=(0.0, 0.4, 0.1, 0.1))
    logged = selections(bus)
    assert all(s.seed_idx == 0 and s.strategy == "seed0" and s.propensity == 1.0 for s in logged)
    assert all("logging-only" in s.selection_reason for s in logged)
    snap = read_all(settings.db)
    assert snap["meta"]["logging_only"] == "1"
    pulls = arm_arrays(settings.db, "bp")["pulls"]
    assert pulls.sum() == 8  # it learned from every outcome while acting as Tamiyo did

    # Switching logging-only off: the learned strategy acts from then on.
    bus.produce(CONTROL, None, switch("thompson", logging_only=False))
    await drain(settings, bus)
    for i in range(50, 54):
        bus.produce("graft.requested", b"bp", request(i))
    await drain(settings, bus)
    assert {s.strategy for s in selections(bus)[-4:]} == {"thompson"}


async def test_unknown_strategy_in_a_control_message_is_a_dead_letter(settings, bus):
    bus.produce(CONTROL, None, switch("no-such-strategy"))
    bus.produce("graft.requested", b"bp", request(1))
    w = await drain(settings, bus)
    assert w.counters["dead_letters"] == 1 and w.counters["strategy_switches"] == 0
    dlq = bus.read("seedworker.dlq")
    assert len(dlq) == 1 and b"no-such-strategy" in dict(dlq[0].headers)["dlq.reason"]
    assert len(selections(bus)) == 1  # good traffic keeps flowing


@pytest.mark.kafka
async def test_switch_through_the_control_topic_on_the_real_broker(kafka_bootstrap, kafka_topic_factory, tmp_path):
    from tests.test_worker_kafka import Reader, create_topics, eventually, make_settings, running_worker

    topics = await create_topics(kafka_topic_factory, "switch")
    settings = make_settings(kafka_bootstrap, tmp_path, topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with running_worker(settings) as (worker, _task), Reader(kafka_bootstrap, topics["selections"]) as out:
            for i in range(6):
                await producer.send_and_wait(topics["requests"], request(i, "bp-k"), key=b"bp-k")
            await out.until(lambda r: len(r) >= 6, "6 selections")
            await producer.send_and_wait(topics["control"], switch("ucb", blueprint_id="bp-k"))
            await eventually(lambda: worker.counters["strategy_switches"] == 1, "the switch to be applied")
            for i in range(6, 10):
                await producer.send_and_wait(topics["requests"], request(i, "bp-k"), key=b"bp-k")
            records = await out.until(lambda r: len(r) >= 10, "10 selections")
        strategies = [ev.decode(r.value).strategy for r in records]
        assert strategies[:6] == [settings.default_strategy] * 6 and strategies[6:] == ["ucb"] * 4
        assert read_all(settings.db)["blueprints"]["bp-k"]["strategy"] == "ucb"
    finally:
        await producer.stop()
