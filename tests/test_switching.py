"""Switching strategy at run time through the control topic: in order with the other events, persisted, and without
losing what was learned. Memory-bus scenarios first, then one that runs on both buses (the ``bus`` fixture of
tests/support_buses.py: the memory bus and the real broker)."""

from __future__ import annotations

import numpy as np
import pytest

from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.core.config import Settings
from seedworker.engine.worker import Worker
from seedworker.store.readers import read_all
from tests.support import T0, check_selection, distinct_requests, drain, eventually, outcome, selections
from tests.support import training_request as request
from tests.support_buses import bus, bus_backend  # noqa: F401 (fixtures)

CONTROL = "seedworker.control"


def switch(strategy: str, blueprint_id: str | None = None, logging_only: bool | None = None) -> bytes:
    return ev.encode(
        ev.StrategySwitch(strategy=strategy, blueprint_id=blueprint_id, logging_only=logging_only, occurred_at=T0)
    )


def arm_arrays(db: str, bp: str) -> dict[str, np.ndarray]:
    state = read_all(db)["blueprints"][bp]
    return {k: np.asarray(v) for k, v in state["arms"].items() if isinstance(v, (list, np.ndarray))}


@pytest.fixture
def settings(tmp_path):
    return Settings(db=str(tmp_path / "state.sqlite"), kafka={"partitions": 2})


@pytest.fixture
async def memory_bus():
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


async def test_switch_is_persisted_and_survives_a_restart(settings, memory_bus):
    memory_bus.produce(CONTROL, None, switch("epsilon-greedy"))  # the default
    memory_bus.produce(CONTROL, None, switch("ucb", blueprint_id="bp-u"))
    await drain(settings, memory_bus)
    snap = read_all(settings.db)
    assert snap["meta"]["default_strategy"] == "epsilon-greedy"
    assert load_state_strategy(settings.db, "bp-u") == "ucb"
    # A new worker (new process) reads the switches back from SQLite, not from the control topic again.
    memory_bus.produce("graft.requested", b"bp-u", request(1, "bp-u"))
    memory_bus.produce("graft.requested", b"bp-e", request(2, "bp-e"))
    w = await drain(settings, memory_bus)
    assert w.counters["strategy_switches"] == 2  # counted once, not re-applied
    by_bp = {s.blueprint_id: s.strategy for s in selections(memory_bus)}
    assert by_bp == {"bp-u": "ucb", "bp-e": "epsilon-greedy"}


def load_state_strategy(db: str, bp: str) -> str | None:
    return read_all(db)["blueprints"][bp]["strategy"]


async def test_control_messages_are_processed_in_order_with_requests(settings, memory_bus):
    """One fetch holding request, switch, request: the first request is decided before the switch, the second after."""
    settings.default_strategy = "round-robin"
    settings.min_samples = 0
    w = Worker(settings, bus=memory_bus)
    await w.start()
    try:
        fetch = [
            memory_bus.produce("graft.requested", b"bp", request(1)),
            memory_bus.produce(CONTROL, None, switch("seed0")),
            memory_bus.produce("graft.requested", b"bp", request(2)),
        ]
        await w.process(fetch)
    finally:
        await w.close()
    assert [s.strategy for s in selections(memory_bus)] == ["round-robin", "seed0"]
    assert read_all(settings.db)["meta"]["default_strategy"] == "seed0"


async def test_logging_only_switch_chooses_seed0_logs_propensities_and_learns(settings, memory_bus):
    memory_bus.produce(CONTROL, None, switch("thompson", logging_only=True))
    await drain(settings, memory_bus)
    await _learn_some(settings, memory_bus, 8, gains=(0.0, 0.4, 0.1, 0.1))
    logged = selections(memory_bus)
    assert all(s.seed_idx == 0 and s.strategy == "seed0" and s.propensity == 1.0 for s in logged)
    assert all("logging-only" in s.selection_reason for s in logged)
    snap = read_all(settings.db)
    assert snap["meta"]["logging_only"] == "1"
    pulls = arm_arrays(settings.db, "bp")["pulls"]
    assert pulls.sum() == 8  # it learned from every outcome while acting as Tamiyo did

    # Switching logging-only off: the learned strategy acts from then on.
    memory_bus.produce(CONTROL, None, switch("thompson", logging_only=False))
    await drain(settings, memory_bus)
    for i in range(50, 54):
        memory_bus.produce("graft.requested", b"bp", request(i))
    await drain(settings, memory_bus)
    assert {s.strategy for s in selections(memory_bus)[-4:]} == {"thompson"}


async def test_unknown_strategy_in_a_control_message_is_a_dead_letter(settings, memory_bus):
    memory_bus.produce(CONTROL, None, switch("no-such-strategy"))
    memory_bus.produce("graft.requested", b"bp", request(1))
    w = await drain(settings, memory_bus)
    assert w.counters["dead_letters"] == 1 and w.counters["strategy_switches"] == 0
    dlq = memory_bus.read("seedworker.dlq")
    assert len(dlq) == 1 and b"no-such-strategy" in dict(dlq[0].headers)["dlq.reason"]
    assert len(selections(memory_bus)) == 1  # good traffic keeps flowing


# -- on both buses --------------------------------------------------------------------------------------------------
async def test_switch_keeps_statistics_and_later_decisions_log_the_new_strategy(bus):
    """A switch for one blueprint through the control topic, on the memory bus and on the real broker: what was
    learned stays as it was, the blueprint's later decisions use (and log) the new strategy, which is stored; another
    blueprint keeps the default."""
    await bus.create_topics()
    settings = bus.settings(default_strategy="thompson")
    sent: dict[str, str] = {}

    def stored(name: str) -> int:
        return read_all(settings.db)["counters"].get(name, 0)

    async with bus.running(settings) as (worker, _task):

        async def ask(indices, bp: str = "bp") -> list[ev.SeedSelected]:
            for i in indices:
                await bus.send("requests", request(i, bp), bp.encode())
                sent[f"req-{i}"] = bp
            await bus.flush()
            want = [f"req-{i}" for i in indices]
            records = await bus.until(
                "selections", lambda rs: set(want) <= distinct_requests(rs), f"answers to {len(want)} requests"
            )
            answers = {s.request_id: s for s in (check_selection(r, sent) for r in records)}
            return [answers[rid] for rid in want]

        learned = await ask(range(12))
        assert [s.strategy for s in learned] == ["thompson"] * 12
        gains = (0.1, 0.5, 0.2, 0.0)
        for s in learned:
            await bus.send("outcomes", outcome(s, gains[s.seed_idx]), b"bp")
        await bus.flush()
        await eventually(lambda: stored("outcomes_learned") == 12, "12 outcomes learned and stored")
        before = arm_arrays(settings.db, "bp")

        await bus.send("control", switch("ucb", blueprint_id="bp"))
        await bus.flush()
        await eventually(
            lambda: worker.counters["strategy_switches"] == 1 and stored("strategy_switches") == 1,
            "the switch to be applied and stored",
        )
        after = arm_arrays(settings.db, "bp")
        assert before.keys() == after.keys()
        for k in before:  # the switch changed nothing that was learned
            np.testing.assert_array_equal(before[k], after[k])

        new = await ask(range(12, 16))
        assert [s.strategy for s in new] == ["ucb"] * 4
        # UCB on the learned statistics (seed 1 pays most, every seed tried three times): it exploits seed 1.
        assert [s.seed_idx for s in new].count(1) >= 3
        # Another blueprint still uses the default.
        (other,) = await ask([100], bp="other")
        assert other.strategy == "thompson"
    assert read_all(settings.db)["blueprints"]["bp"]["strategy"] == "ucb"


async def test_a_worker_started_after_a_switch_answers_its_backlog_with_the_new_strategy(settings, memory_bus):
    """Requests waiting on the topic, then a switch, then a new worker: the switch is on the control topic before the
    worker reads anything, so every answer uses it — also for the requests older than the switch, which the batch
    (taken in time order) would otherwise decide first, with the strategy the switch replaced."""
    settings.default_strategy = "round-robin"
    for i in range(6):
        memory_bus.produce("graft.requested", b"bp", request(i))
    memory_bus.produce(CONTROL, None, switch("epsilon-greedy"))
    memory_bus.produce(CONTROL, None, switch("ucb", blueprint_id="bp"))
    w = await drain(settings, memory_bus)
    assert w.counters["strategy_switches"] == 2
    assert [s.strategy for s in selections(memory_bus)] == ["ucb"] * 6
    assert read_all(settings.db)["meta"]["default_strategy"] == "epsilon-greedy"


async def test_switches_on_the_topic_before_a_worker_starts_apply_to_its_first_decisions(bus):
    """On the memory bus and on the real broker: switches sent before the worker starts, and requests sent before
    and after them; the worker's every answer uses the switched strategies (they are read before any input)."""
    await bus.create_topics()
    settings = bus.settings(default_strategy="round-robin")
    sent: dict[str, str] = {}
    for i in range(4):
        await bus.send("requests", request(i), b"bp")
        sent[f"req-{i}"] = "bp"
    await bus.send("control", switch("ucb", blueprint_id="bp"))
    await bus.send("control", switch("epsilon-greedy"))
    for i in range(4, 8):
        await bus.send("requests", request(i, "other"), b"other")
        sent[f"req-{i}"] = "other"
    await bus.flush()
    async with bus.running(settings) as (worker, _task):
        records = await bus.until("selections", lambda rs: set(sent) <= distinct_requests(rs), "answers to 8 requests")
        answers = {s.request_id: s for s in (check_selection(r, sent) for r in records)}
        assert worker.counters["strategy_switches"] == 2
    assert {rid: s.strategy for rid, s in answers.items()} == {
        rid: "ucb" if bp == "bp" else "epsilon-greedy" for rid, bp in sent.items()
    }
