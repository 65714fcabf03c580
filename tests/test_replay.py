"""`seedworker replay` on the in-memory bus: the worker runs live, then a Replay rebuilds its state into a new
store from the topics alone, and the two stores must agree. The real-broker version (merge by Kafka timestamp,
retention, from a timestamp, a worker continuing from the rebuilt store) is in test_replay_kafka.py.

The memory bus stamps each record with the wall clock in milliseconds, strictly increasing, like Kafka's
CreateTime; the replay's merge by timestamp is then the order they were produced in.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.contract.headers import SOURCE_OFFSET, SOURCE_PARTITION, WARM_START
from seedworker.core.config import Settings
from seedworker.engine.replay import Replay
from seedworker.store.readers import read_all
from seedworker.store.store import Store
from seedworker.tools.cli import main
from tests.support import (  # noqa: F401 (fixture)
    T0,
    assert_same_store,
    drain,
    outcome,
    replay_order,
    root_logging,
    snapshot,
)
from tests.support import training_request as request

REQUESTS, OUTCOMES, SELECTIONS, CONTROL, DLQ = (
    "graft.requested",
    "adaptation.outcome",
    "seed.selected",
    "seedworker.control",
    "seedworker.dlq",
)


async def rebuild(settings: Settings, bus: MemoryBus, db: Path, order=None) -> Replay:
    """What `seedworker replay` does, with the memory bus's records merged by their stamp."""
    t = settings.kafka.topics
    records = replay_order(bus, t)
    store = await Store(db).open()
    worker = await Replay(settings, store).start()
    try:
        for m in bus.read(t.dead_letters):  # read ahead, as `seedworker replay` does
            worker.read_ahead(m)
        for m in order(records) if order else records:
            await worker.feed(m)
        await worker.finish({(t.requests, p): 0 for p in range(len(bus.topics[t.requests]))})
    finally:
        await store.close()
    return worker


@pytest.fixture
def settings(tmp_path):
    return Settings(
        db=str(tmp_path / "live.sqlite"),
        kafka={"partitions": 2},
        decay={"half_life_s": 900.0},
        default_strategy="thompson",
        blueprint_strategies={"bp-lin": "linucb", "bp-ucb": "ucb", "bp-dis": "discounted-ucb"},
    )


@pytest.fixture
async def bus():
    b = MemoryBus()
    await b.ensure_topics({REQUESTS: 2, OUTCOMES: 2})
    return b


def selections_of(bus) -> dict[str, ev.SeedSelected]:
    out: dict[str, ev.SeedSelected] = {}
    for m in bus.read(SELECTIONS):
        s = ev.decode(m.value)
        out.setdefault(s.request_id, s)  # type: ignore[union-attr]
    return out


def gain(s: ev.SeedSelected) -> float:
    return 0.05 * s.seed_idx + (0.01 if s.blueprint_id == "bp-lin" else 0.0)


# -- tests -------------------------------------------------------------------------------------------------------
async def test_rebuilt_store_equals_the_live_one(settings, bus, tmp_path):
    bps = ["bp-lin", "bp-ucb", "bp-dis", "bp-ts"]
    # an outcome that comes before its request (a single-seed request, so it matches the choice), held live
    early = ev.encode(
        ev.AdaptationOutcome(
            request_id="req-90",
            blueprint_id="bp-one",
            seed_id="layer3:0",
            accuracy_delta=0.3,
            occurred_at=T0 + timedelta(seconds=91),
        )
    )
    bus.produce(OUTCOMES, b"bp-one", early)
    await drain(settings, bus)
    for i in range(40):
        bus.produce(REQUESTS, bps[i % 4].encode(), request(i, bps[i % 4]))
    bus.produce(REQUESTS, b"bp-one", request(90, "bp-one", k=1))
    bus.produce(REQUESTS, b"bad", b"not json")
    await drain(settings, bus)
    chosen = selections_of(bus)
    for i, s in enumerate(chosen.values()):
        if s.request_id == "req-90":
            continue
        value = outcome(s, gain(s), dt=1 + i % 3)
        bus.produce(OUTCOMES, s.blueprint_id.encode(), value)
        if i % 7 == 0:
            bus.produce(OUTCOMES, s.blueprint_id.encode(), value)  # the same outcome again
    bus.produce(OUTCOMES, b"bad", b'{"event_type": "adaptation.outcome", "blueprint_id": "b"}')
    bus.produce(
        CONTROL,
        None,
        ev.encode(
            ev.StrategySwitch(strategy="epsilon-greedy", blueprint_id="bp-ts", occurred_at=T0 + timedelta(seconds=45))
        ),
    )
    bus.produce(REQUESTS, b"bp-ucb", request(1, "bp-ucb"))  # a retry
    await drain(settings, bus)
    for i in range(40, 60):  # bp-ucb now offers a fifth seed: warm-started from what the blueprint learned
        bus.produce(REQUESTS, bps[i % 4].encode(), request(i, bps[i % 4], k=5 if i % 4 == 1 else 4))
    await drain(settings, bus)
    for i in range(40, 60):
        s = selections_of(bus)[f"req-{i}"]
        bus.produce(OUTCOMES, s.blueprint_id.encode(), outcome(s, gain(s)))
    w = await drain(settings, bus)
    c = w.counters
    assert (
        c["decisions"],
        c["outcomes_learned"],
        c["held_outcomes"],
        c["duplicate_outcomes"],
        c["duplicate_requests"],
        c["dead_letters"],
        c["strategy_switches"],
    ) == (61, 61, 1, 6, 1, 2, 1)
    live = snapshot(settings.db)
    assert live["blueprints"]["bp-ucb"]["arms"]["prior_w"][4] == 1.0  # the fifth seed was warm-started

    replayed = await rebuild(settings, bus, tmp_path / "rebuilt.sqlite")
    assert_same_store(tmp_path / "rebuilt.sqlite", live)
    assert replayed.resent == 1 and replayed.processor.unreadable_selections == 0


async def test_warm_start_comes_from_the_log_not_from_the_replay_order(settings, bus, tmp_path):
    """A seed first offered after some outcomes starts from the blueprint's pooled mean at that moment. If the
    replay reads an outcome before that decision although the live worker learned it after, only the logged warm
    start gives the live prior."""
    for i in range(4):
        bus.produce(REQUESTS, b"bp-ucb", request(i, "bp-ucb"))
    await drain(settings, bus)
    first = list(selections_of(bus).values())
    for s in first[:2]:
        bus.produce(OUTCOMES, b"bp-ucb", outcome(s, 0.2))
    await drain(settings, bus)
    bus.produce(REQUESTS, b"bp-ucb", request(4, "bp-ucb", k=5))  # registers layer3:4 with the prior of 2 outcomes
    await drain(settings, bus)
    for s in first[2:]:
        bus.produce(OUTCOMES, b"bp-ucb", outcome(s, 0.9))
    await drain(settings, bus)
    live = snapshot(settings.db)
    assert live["blueprints"]["bp-ucb"]["arms"]["prior_mean"][4] == pytest.approx(0.2)

    def outcomes_first(records):  # as if the last outcomes had an earlier timestamp than the new seed's decision
        return sorted(records, key=lambda m: m.topic == SELECTIONS and ev.decode(m.value).request_id == "req-4")

    await rebuild(settings, bus, tmp_path / "logged.sqlite", order=outcomes_first)
    assert_same_store(tmp_path / "logged.sqlite", live)

    def without_warm_start(records):
        return [replace(m, headers=tuple(h for h in m.headers if h[0] != WARM_START)) for m in outcomes_first(records)]

    await rebuild(settings, bus, tmp_path / "guessed.sqlite", order=without_warm_start)
    guessed = read_all(tmp_path / "guessed.sqlite")["blueprints"]["bp-ucb"]["arms"]["prior_mean"][4]
    assert guessed == pytest.approx((2 * 0.2 + 2 * 0.9) / 4)  # the pooled mean of all four: not the live prior


async def test_expiry_late_and_dangling_outcomes_as_live(settings, bus, tmp_path):
    """Event time jumps past join.reward_wait_s and join.hold_unknown_s: the live worker expires the decision and
    drops the orphan outcome in the batch of the jump, then reads the late outcome. The replay reads all of it in
    one stream, so it has to end its batch where the live worker's expiry happened."""
    bus.produce(REQUESTS, b"bp-ts", request(0, "bp-ts"))
    bus.produce(
        OUTCOMES,
        b"bp-ts",
        ev.encode(
            ev.AdaptationOutcome(
                request_id="nobody", blueprint_id="bp-ts", seed_id="layer3:0", occurred_at=T0 + timedelta(seconds=2)
            )
        ),
    )
    await drain(settings, bus)
    (s,) = selections_of(bus).values()
    bus.produce(REQUESTS, b"bp-ts", request(5000, "bp-ts"))  # 5000 s later
    await drain(settings, bus)
    bus.produce(OUTCOMES, b"bp-ts", outcome(s, 0.4, dt=4000))  # the first decision's outcome, too late
    w = await drain(settings, bus)
    c = w.counters
    assert (c["expired_decisions"], c["late_outcomes"], c["dangling_outcomes"], c["outcomes_learned"]) == (1, 1, 1, 0)
    live = snapshot(settings.db)
    assert live["decisions"][s.decision_id][0] == "expired"

    replayed = await rebuild(settings, bus, tmp_path / "rebuilt.sqlite")
    assert_same_store(tmp_path / "rebuilt.sqlite", live)
    assert replayed.counters["expired_decisions"] == 1


async def test_request_offsets_come_from_the_selections_and_dead_letters(settings, bus, tmp_path):
    for i in range(12):
        bus.produce(REQUESTS, f"bp-{i % 3}".encode(), request(i, f"bp-{i % 3}"))
    bus.produce(REQUESTS, b"bp-0", b"\xff")  # a dead letter: the last record of its partition
    await drain(settings, bus)
    for m in bus.read(SELECTIONS):
        h = dict(m.headers)
        source = bus.topics[REQUESTS][int(h[SOURCE_PARTITION])][int(h[SOURCE_OFFSET])]
        assert ev.decode(source.value).request_id == ev.decode(m.value).request_id  # the header names the request
    live = snapshot(settings.db)
    await rebuild(settings, bus, tmp_path / "rebuilt.sqlite")
    rebuilt = read_all(tmp_path / "rebuilt.sqlite")["offsets"]
    assert {tp: o for tp, o in rebuilt.items() if tp[0] == REQUESTS} == {
        tp: o for tp, o in live["offsets"].items() if tp[0] == REQUESTS
    }
    assert read_all(tmp_path / "rebuilt.sqlite")["counters"]["dead_letters"] == 1


def test_cli_refuses_to_overwrite_a_store(tmp_path, capsys, root_logging):
    db = tmp_path / "exists.sqlite"
    db.write_bytes(b"")
    assert main(["replay", "--db", str(db), "--bootstrap-servers", "127.0.0.1:1", "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err


def test_from_timestamp_accepts_iso_with_a_timezone_or_epoch_milliseconds():
    from seedworker.tools.replay import _timestamp

    assert _timestamp("2026-01-01T00:00:00Z") == T0 == _timestamp(str(int(T0.timestamp() * 1000)))
    assert _timestamp("2026-01-01T01:00:00+01:00") == T0


def test_cli_rejects_a_timestamp_without_timezone(capsys):
    with pytest.raises(SystemExit):
        main(["replay", "--db", "x.sqlite", "--from-timestamp", "2026-01-01T00:00:00"])
    assert "timezone" in capsys.readouterr().err
