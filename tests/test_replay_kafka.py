"""`seedworker replay` against a real Kafka broker (see tests/kafka_broker.py).

* disaster recovery: a live worker handles a mixed stream (several blueprints and strategies, a contextual one,
  decay, a warm-started new seed, outcomes produced before their request, duplicate and mismatched outcomes, bad
  input, a retried request, a strategy switch, an expired decision with a late outcome, an orphan outcome, and
  selections published twice as after a crash); its store is deleted; the replay rebuilds it from the topics, and
  every arm array, counter, decision row, held outcome and input offset equals the live store's; a worker started
  on the rebuilt store answers only new requests;
* retention: records deleted from the start of seed.selected are named in the report, and the rest is rebuilt;
* from a timestamp: only the records from then on are replayed.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from seedworker.contract import events as ev
from seedworker.core.config import Settings
from seedworker.engine.replay import replay
from seedworker.store.readers import read_all
from seedworker.tools.cli import main
from tests.kafka_broker import unique_topic
from tests.support import (  # noqa: F401 (fixture)
    T0,
    assert_same,
    assert_same_store,
    eventually,
    outcome,
    root_logging,
    running_worker,
    snapshot,
)
from tests.support import training_request as request
from tests.support_kafka import PARTITIONS, Reader, create_topics

pytestmark = [pytest.mark.asyncio, pytest.mark.kafka]

STRATEGIES = {"bp-lin": "linucb", "bp-ucb": "ucb", "bp-dis": "discounted-ucb", "bp-eps": "epsilon-greedy"}
BLUEPRINTS = [*STRATEGIES, "bp-ts"]  # bp-ts: the default strategy (thompson)


def settings_for(bootstrap: str, db: Path, topics: dict[str, str]) -> Settings:
    return Settings(
        db=str(db),
        decay={"half_life_s": 900.0},
        default_strategy="thompson",
        blueprint_strategies=STRATEGIES,
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": unique_topic("group"),
            "topics": topics,
            "partitions": PARTITIONS,
            "output_partitions": PARTITIONS,
        },
    )


def delete_store(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    assert not db.exists()


def outcome_for(request_id: str, bp: str, seed_id: str, gain: float, at: float) -> bytes:
    return ev.encode(
        ev.AdaptationOutcome(
            request_id=request_id,
            blueprint_id=bp,
            seed_id=seed_id,
            accuracy_delta=gain,
            occurred_at=T0 + timedelta(seconds=at),
        )
    )


def gain(s: ev.SeedSelected) -> float:
    return 0.04 * s.seed_idx + (0.05 if s.blueprint_id == "bp-lin" else 0.0)


class Tamiyo:
    """Sends requests and outcomes, and reads the answers."""

    def __init__(self, producer: AIOKafkaProducer, topics: dict[str, str], answers: Reader):
        self.producer, self.topics, self.answers = producer, topics, answers

    async def send(self, kind: str, value: bytes, key: str) -> None:
        await self.producer.send_and_wait(self.topics[kind], value, key=key.encode())

    async def answered(self, request_ids) -> dict[str, ev.SeedSelected]:
        want = set(request_ids)
        records = await self.answers.until(
            lambda rs: want <= {orjson.loads(r.value)["request_id"] for r in rs}, f"answers to {len(want)} requests"
        )
        out: dict[str, ev.SeedSelected] = {}
        for r in records:
            s = ev.decode(r.value, ev.SEED_SELECTED)
            if s.request_id in want:
                out.setdefault(s.request_id, s)  # type: ignore[union-attr]
        return out


@pytest.mark.timeout(240)
async def test_replay_rebuilds_the_live_state_after_the_store_is_lost(kafka_bootstrap, kafka_topic_factory, tmp_path):
    topics = await create_topics(kafka_topic_factory, "replay")
    live_db = tmp_path / "live.sqlite"
    settings = settings_for(kafka_bootstrap, live_db, topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        async with running_worker(settings) as (worker, _task), Reader(kafka_bootstrap, topics["selections"]) as sel:
            tamiyo = Tamiyo(producer, topics, sel)
            c = worker.counters
            # 1. outcomes BEFORE their request: single-seed requests (so the outcome names the chosen seed), and
            #    one naming a seed that is not offered (mismatched once joined). The worker holds them.
            early = {f"req-{300 + j}": "bp-one" for j in range(3)}
            for j, rid in enumerate(early):
                await tamiyo.send("outcomes", outcome_for(rid, "bp-one", "layer3:0", 0.1 * j, 300 + j + 2), "bp-one")
            await tamiyo.send("outcomes", outcome_for("req-310", "bp-ts", "layer3:99", 0.5, 312), "bp-ts")
            await eventually(lambda: c["held_outcomes"] == 4, "4 held outcomes", detail=lambda: repr(worker))

            # 2. the first wave: requests for every blueprint, the early ones, bad input, a retry
            wave = {f"req-{i}": BLUEPRINTS[i % len(BLUEPRINTS)] for i in range(60)}
            for rid, bp in wave.items():
                await tamiyo.send("requests", request(int(rid[4:]), bp), bp)
            for j, _rid in enumerate(early):
                await tamiyo.send("requests", request(300 + j, "bp-one", k=1), "bp-one")
            await tamiyo.send("requests", request(310, "bp-ts"), "bp-ts")
            await tamiyo.send("requests", b'{"event_type": "graft.requested", "request_id": ', "bp-bad")
            await tamiyo.send("requests", request(3, wave["req-3"]), wave["req-3"])  # a client retry
            chosen = await tamiyo.answered([*wave, *early, "req-310"])
            await eventually(
                lambda: c["outcomes_learned"] == 3 and c["mismatched_outcomes"] == 1,
                "the early outcomes joined",
                detail=lambda: repr(worker),
            )

            # 3. their outcomes, some twice (the same bytes, or a new event id), and a bad one
            for n, rid in enumerate(wave):
                s = chosen[rid]
                value = outcome(s, gain(s), dt=1 + n % 5)
                await tamiyo.send("outcomes", value, s.blueprint_id)
                if n % 9 == 0:
                    await tamiyo.send("outcomes", value, s.blueprint_id)
                if n % 13 == 0:
                    await tamiyo.send("outcomes", outcome(s, gain(s), dt=1 + n % 5), s.blueprint_id)
            await tamiyo.send("outcomes", b'{"event_type": "adaptation.outcome", "seed_id": "x"}', "bp-bad")
            await eventually(lambda: c["outcomes_learned"] == 63, "63 outcomes learned", detail=lambda: repr(worker))

            # 4. a strategy switch, then a second wave in which bp-ucb offers a fifth seed (warm-started)
            await tamiyo.send(
                "control",
                ev.encode(
                    ev.StrategySwitch(strategy="ucb-v", blueprint_id="bp-ts", occurred_at=T0 + timedelta(seconds=60))
                ),
                "bp-ts",
            )
            await eventually(lambda: c["strategy_switches"] == 1, "the switch", detail=lambda: repr(worker))
            second = {f"req-{i}": BLUEPRINTS[i % len(BLUEPRINTS)] for i in range(60, 100)}
            for rid, bp in second.items():
                await tamiyo.send("requests", request(int(rid[4:]), bp, k=5 if bp == "bp-ucb" else 4), bp)
            chosen.update(await tamiyo.answered(second))
            for rid in second:
                s = chosen[rid]
                await tamiyo.send("outcomes", outcome(s, gain(s), dt=2), s.blueprint_id)
            await eventually(lambda: c["outcomes_learned"] == 103, "103 outcomes learned", detail=lambda: repr(worker))

            # 5. a decision without outcome, an orphan outcome, then event time jumps by 5000 s: the decision
            #    expires and the orphan dangles; the late outcome comes after that; one outcome stays held
            await tamiyo.send("requests", request(120, "bp-ts"), "bp-ts")
            lonely = (await tamiyo.answered(["req-120"]))["req-120"]
            await tamiyo.send("outcomes", outcome_for("nobody", "bp-ts", "layer3:0", 0.2, 121), "bp-ts")
            await eventually(lambda: c["held_outcomes"] == 5, "the orphan held", detail=lambda: repr(worker))
            await tamiyo.send("requests", request(5120, "bp-lin"), "bp-lin")
            await tamiyo.answered(["req-5120"])  # published: its timestamp is before the late outcome's
            await eventually(
                lambda: c["expired_decisions"] == 1 and c["dangling_outcomes"] == 1,
                "the expiry",
                detail=lambda: repr(worker),
            )
            await tamiyo.send("outcomes", outcome(lonely, 0.3, dt=4500), "bp-ts")
            await tamiyo.send("outcomes", outcome_for("req-9999", "bp-lin", "layer3:1", 0.1, 5121), "bp-lin")
            await eventually(
                lambda: c["late_outcomes"] == 1 and c["held_outcomes"] == 6,
                "the late outcome",
                detail=lambda: repr(worker),
            )
        live = snapshot(live_db)
        # a worker killed after publishing a batch but before marking it sent publishes it again at its next start:
        # the same records once more (key, value, headers), which the live store does not count
        async with Reader(kafka_bootstrap, topics["selections"]) as sel:
            for r in (await sel.to_end())[:3]:
                await producer.send_and_wait(
                    topics["selections"], r.value, key=r.key, partition=r.partition, headers=list(r.headers)
                )
            published = await sel.to_end()
    finally:
        await producer.stop()

    lc = live["counters"]
    assert lc["decisions"] == 60 + 3 + 1 + 40 + 2
    assert (
        lc["duplicate_requests"],
        lc["dead_letters"],
        lc["expired_decisions"],
        lc["late_outcomes"],
        lc["dangling_outcomes"],
        lc["mismatched_outcomes"],
    ) == (1, 3, 1, 1, 1, 1)  # dead letters: the two bad records and the dangling outcome
    assert lc["duplicate_outcomes"] == 7 + 5
    assert live["blueprints"]["bp-ucb"]["arms"]["prior_w"][4] == 1.0  # the fifth seed was warm-started
    statuses = Counter(row[0] for row in live["decisions"].values())
    assert statuses["pending"] == 1 and statuses["expired"] == 1

    # the disaster: the store is gone
    delete_store(live_db)
    rebuilt = tmp_path / "rebuilt.sqlite"
    summary = await replay(settings, rebuilt)
    assert summary.complete and not summary.retention
    assert summary.decisions == lc["decisions"] and summary.resent_selections == 1 + 3  # the retry, the copies
    assert summary.blueprints == len(BLUEPRINTS) + 1 and summary.pending_decisions == 1 and summary.held_outcomes == 1
    assert_same_store(rebuilt, live)  # arms, features, counters, decisions, held outcomes, input offsets

    # a worker continues from the rebuilt store: it answers the new requests only
    async with running_worker(settings_for(kafka_bootstrap, rebuilt, topics)) as (worker, _task):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            async with Reader(kafka_bootstrap, topics["selections"]) as sel:
                new = {f"req-{i}": BLUEPRINTS[i % len(BLUEPRINTS)] for i in range(5200, 5210)}
                for rid, bp in new.items():
                    await producer.send_and_wait(topics["requests"], request(int(rid[4:]), bp), key=bp.encode())
                await Tamiyo(producer, topics, sel).answered(new)
                await eventually(lambda: worker.counters["decisions"] == lc["decisions"] + 10, "10 new decisions")
        finally:
            await producer.stop()
    async with Reader(kafka_bootstrap, topics["selections"]) as sel:
        after = await sel.to_end()

    def per_request(records) -> Counter:
        return Counter(orjson.loads(r.value)["request_id"] for r in records)

    # one answer per new request, and nothing else: no old request decided or answered again
    assert len(after) == len(published) + 10
    assert per_request(after) - per_request(published) == Counter(list(new))
    c = read_all(rebuilt)["counters"]
    assert c["decisions"] == lc["decisions"] + 10 and c["duplicate_requests"] == 1
    print(f"replay: {summary.decisions} decisions, counters {summary.counters}")


async def _produce_and_learn(tamiyo: Tamiyo, worker, ids: dict[str, str], learned: int) -> None:
    for rid, bp in ids.items():
        await tamiyo.send("requests", request(int(rid[4:]), bp), bp)
    chosen = await tamiyo.answered(ids)
    for rid in ids:
        s = chosen[rid]
        await tamiyo.send("outcomes", outcome(s, gain(s)), s.blueprint_id)
    await eventually(
        lambda: worker.counters["outcomes_learned"] == learned,
        f"{learned} outcomes learned",
        detail=lambda: repr(worker),
    )


def write_config(path: Path, bootstrap: str, topics: dict[str, str]) -> Path:
    lines = [
        'default_strategy = "thompson"',
        "[decay]",
        "half_life_s = 900.0",
        "[blueprint_strategies]",
        *(f'"{bp}" = "{name}"' for bp, name in STRATEGIES.items()),
        "[kafka]",
        f'bootstrap_servers = "{bootstrap}"',
        f"partitions = {PARTITIONS}",
        f"output_partitions = {PARTITIONS}",
        "[kafka.topics]",
        *(f'{kind} = "{name}"' for kind, name in topics.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_replay_says_what_retention_deleted(kafka_bootstrap, kafka_topic_factory, tmp_path, capsys, root_logging):
    topics = await create_topics(kafka_topic_factory, "retention")
    settings = settings_for(kafka_bootstrap, tmp_path / "live.sqlite", topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with running_worker(settings) as (worker, _task), Reader(kafka_bootstrap, topics["selections"]) as sel:
            await _produce_and_learn(
                Tamiyo(producer, topics, sel), worker, {f"req-{i}": BLUEPRINTS[i % 3] for i in range(45)}, 45
            )
    finally:
        await producer.stop()

    # retention: delete the first half of every (non-empty) seed.selected partition
    tps = [TopicPartition(topics["selections"], p) for p in range(PARTITIONS)]
    async with Reader(kafka_bootstrap, topics["selections"]) as sel:
        ends = await sel.consumer.end_offsets(tps)
        records = await sel.to_end()
    cut = {tp: end // 2 for tp, end in ends.items() if end >= 2}  # the partitions the blueprints hash to
    assert cut, ends
    # The decisions deleted: the records before the cut. Not the cut itself: the worker's transactions leave a
    # commit marker in each partition they wrote to, which takes an offset of its own (how many fall before the
    # cut depends on how the worker batched the requests).
    deleted = sum(1 for r in records if r.offset < cut.get(TopicPartition(r.topic, r.partition), 0))
    assert 0 < deleted < 45
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=n) for tp, n in cut.items()})
    finally:
        await admin.close()

    config = write_config(tmp_path / "seedworker.toml", kafka_bootstrap, topics)
    args = ["replay", "--config", str(config), "--no-progress"]
    assert await asyncio.to_thread(main, [*args, "--db", str(tmp_path / "a.sqlite"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["complete"] is False
    assert {(g["topic"], g["partition"], g["first_offset"]) for g in report["retention"]} == {
        (tp.topic, tp.partition, n) for tp, n in cut.items()
    }
    assert report["decisions"] == 45 - deleted
    # the outcomes of the deleted decisions have no decision to join: held (their event time has not moved on)
    assert report["counters"]["outcomes_learned"] == 45 - deleted
    assert report["held_outcomes"] == deleted

    assert await asyncio.to_thread(main, [*args, "--db", str(tmp_path / "b.sqlite")]) == 0
    text = capsys.readouterr().out
    for tp, n in cut.items():
        assert f"WARNING: {tp.topic}[{tp.partition}]: offsets 0-{n - 1} were deleted (retention)" in text
    assert "INCOMPLETE" in text and f"{45 - deleted} decisions" in text
    print(text)


async def test_replay_from_a_timestamp(kafka_bootstrap, kafka_topic_factory, tmp_path):
    topics = await create_topics(kafka_topic_factory, "since")
    live_db = tmp_path / "live.sqlite"
    settings = settings_for(kafka_bootstrap, live_db, topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with running_worker(settings) as (worker, _task), Reader(kafka_bootstrap, topics["selections"]) as sel:
            tamiyo = Tamiyo(producer, topics, sel)
            await _produce_and_learn(tamiyo, worker, {f"req-{i}": "bp-old" for i in range(20)}, 20)
            await asyncio.sleep(0.05)
            since = datetime.now(UTC)
            await asyncio.sleep(0.05)
            await _produce_and_learn(tamiyo, worker, {f"req-{i}": BLUEPRINTS[i % 2] for i in range(20, 50)}, 50)
    finally:
        await producer.stop()
    live = snapshot(live_db)
    delete_store(live_db)

    rebuilt = tmp_path / "since.sqlite"
    summary = await replay(settings, rebuilt, since=since)
    assert summary.complete and summary.decisions == 30
    assert summary.counters["outcomes_learned"] == 30 and summary.held_outcomes == 0
    assert datetime.fromisoformat(summary.first_record) >= since - timedelta(milliseconds=1)
    state = read_all(rebuilt)
    assert set(state["blueprints"]) == set(BLUEPRINTS[:2])  # nothing of bp-old, which only had earlier records
    for bp in BLUEPRINTS[:2]:
        assert_same(state["blueprints"][bp], live["blueprints"][bp], bp)
    # the requests continue where the live worker stopped; the outcomes too
    for kind in ("requests", "outcomes"):
        name = topics[kind]
        assert {tp: o for tp, o in state["offsets"].items() if tp[0] == name} == {
            tp: o for tp, o in live["offsets"].items() if tp[0] == name
        }
