"""Scale-out against a real Kafka broker: ``seedworker run`` processes in ONE consumer group, each with its own SQLite.

Three workers share six partitions. A Tamiyo stand-in sends requests over 16 blueprints (a few retried), keyed by
blueprint, and an outcome for every first answer. Mid-stream one worker is SIGKILLed; later a fourth worker (a new
store) joins, and later still the killed one comes back on its old store. Each change waits until the group has
settled after the previous one (its commits name exactly the live workers) and 150 more requests were answered, so
every worker owns partitions and decides. Every partition that changes hands is restored by its new owner from its
own store when that is current, or rebuilt from the topics (seedworker.engine.ownership). At the end all workers are
stopped with SIGTERM, and:

* every request was answered, and every copy of an answer has the first one's key and value: no decision id was
  answered in two ways (stale unsent answers were not published);
* the group's commits name one worker per partition, whose stored offsets are the ends of that partition's requests
  and outcomes (and equal to the committed ones);
* the union of the owners' states (per blueprint: the store of the worker owning its partition) equals the state
  computed independently from all logged selections (first copy per decision) and outcomes (first per decision):
  nothing lost, nothing counted twice.

Nothing is timed: the phases follow the number of answers, and every wait is for a condition.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from seedworker.contract import events as ev
from seedworker.core.config import load_settings
from seedworker.core.selector import SeedSelector
from seedworker.store.readers import read_all
from tests.kafka_broker import unique_topic
from tests.support import assert_state_equal, check_selection, outcome
from tests.support import training_request as request
from tests.support_kafka import Reader, WorkerProcess

pytestmark = [pytest.mark.asyncio, pytest.mark.kafka]

PARTITIONS = 6
KINDS = ("requests", "outcomes", "selections", "dead_letters", "control")


def worker_process(bootstrap: str, tmp_path: Path, name: str, topics: dict[str, str], group: str) -> WorkerProcess:
    wp = WorkerProcess(bootstrap, tmp_path / f"{name}.sqlite", topics, group, tmp_path / f"{name}.log")
    # Six partitions; a dead worker is noticed after 6 s (the smallest session Kafka allows by default), a joining
    # one within a heartbeat.
    wp.env.update(
        SEEDWORKER_KAFKA__PARTITIONS=str(PARTITIONS),
        SEEDWORKER_KAFKA__OUTPUT_PARTITIONS=str(PARTITIONS),
        SEEDWORKER_KAFKA__SESSION_TIMEOUT_MS="6000",
        SEEDWORKER_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
        SEEDWORKER_KAFKA__CLIENT_ID=f"seedworker-{name}",
    )
    wp.settings = load_settings(
        None, environ=wp.env, overrides={"kafka.bootstrap_servers": bootstrap, "db": str(tmp_path / f"{name}.sqlite")}
    )
    return wp


async def committed_offsets(admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition]) -> dict:
    return await admin.list_consumer_group_offsets(group, partitions=tps)


@pytest.mark.timeout(300)
async def test_workers_in_one_group_lose_nothing_and_count_nothing_twice(
    kafka_bootstrap, kafka_topic_factory, tmp_path
):
    seed = 20260303
    request_rng, kill_rng = random.Random(seed), random.Random(seed + 1)
    window, per_phase = 40, 150  # outstanding requests; answers after the group settled, before the next change
    blueprints = {f"bp-{b:02d}": 3 + b % 3 for b in range(16)}  # blueprint -> number of candidate seeds
    best = {bp: b % k for b, (bp, k) in enumerate(blueprints.items())}

    topics = {
        kind: await kafka_topic_factory(f"scale-{kind.replace('_', '-')}", 1 if kind == "control" else PARTITIONS)
        for kind in KINDS
    }
    group = unique_topic("scale-group")
    workers = {
        name: worker_process(kafka_bootstrap, tmp_path, name, topics, group) for name in ("w1", "w2", "w3", "w4")
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    await admin.start()

    partition_of: dict[str, int] = {}  # blueprint -> the partition its requests went to
    request_bp: dict[str, str] = {}
    request_bytes: dict[str, bytes] = {}
    copies: dict[str, list[tuple]] = defaultdict(list)  # decision id -> [(key, value)]
    first: dict[str, ev.SeedSelected] = {}
    order: dict[int, list[str]] = defaultdict(list)  # selections partition -> first copies in order
    outcomes: list[tuple[str, bytes]] = []
    retries = 0
    live: list[WorkerProcess] = []

    def tails() -> str:
        return "".join(wp.tail(15) for wp in workers.values() if wp.starts)

    async def owners_now() -> set[str]:
        """The workers the group's commits of the input partitions name (a worker claims what it is assigned)."""
        ids = {}
        for name, wp in workers.items():
            try:
                ids[read_all(wp.settings.db)["meta"]["worker_id"]] = name
            except Exception:  # not started yet, or still creating its store
                continue
        tps = [TopicPartition(topics[kind], p) for kind in ("requests", "outcomes") for p in range(PARTITIONS)]
        committed = await committed_offsets(admin, group, tps)
        return {ids.get(om.metadata, om.metadata) for om in committed.values() if om.offset >= 0}

    async def send_request(rid: str) -> None:
        bp = request_bp[rid]
        md = await (await producer.send(topics["requests"], request_bytes[rid], key=bp.encode()))
        assert partition_of.setdefault(bp, md.partition) == md.partition  # keyed: one partition per blueprint

    try:
        for name in ("w1", "w2", "w3"):
            workers[name].start()
            live.append(workers[name])
        # phases: (what changes, the workers the group's commits name once it has settled after the change)
        phases = [
            (None, {"w1", "w2", "w3"}),
            ("kill w2", {"w1", "w3"}),
            ("start w4", {"w1", "w3", "w4"}),
            ("restart w2", {"w1", "w2", "w3", "w4"}),
        ]
        phase, settled_at, last_check = 0, None, 0.0
        while await owners_now() != phases[0][1]:  # the first three have joined and claimed their partitions
            assert all(wp.alive() for wp in live), tails()
            await asyncio.sleep(0.2)
        settled_at = 0
        async with Reader(kafka_bootstrap, topics["selections"], PARTITIONS) as sel:
            next_i = 0
            deadline = time.monotonic() + 200
            while True:
                sending = phase < len(phases) - 1 or settled_at is None or len(first) - settled_at < per_phase
                if not sending and len(first) == next_i:
                    break
                assert time.monotonic() < deadline, (
                    f"phase {phases[phase][0]}: {len(first)} of {next_i} requests answered{tails()}"
                )
                for wp in live:
                    assert wp.alive(), f"a worker died on its own (exit {wp.proc.returncode}){wp.tail()}"
                while sending and next_i - len(first) < window:
                    bp = request_rng.choice(list(blueprints))
                    rid = f"req-{next_i}"
                    request_bp[rid], request_bytes[rid] = bp, request(next_i, bp, blueprints[bp])
                    await send_request(rid)
                    if request_rng.random() < 0.02:  # a client retry, maybe of an earlier request
                        await send_request(f"req-{request_rng.randint(max(0, next_i - 60), next_i)}")
                        retries += 1
                    next_i += 1
                for r in await sel.poll(100):
                    s = check_selection(r, request_bp)
                    copies[s.decision_id].append((r.key, r.value))
                    if s.decision_id in first:
                        continue
                    first[s.decision_id] = s
                    order[r.partition].append(s.decision_id)
                    rng = random.Random(f"{seed}:{s.request_id}")
                    gain = (0.2 if s.seed_idx == best[s.blueprint_id] else 0.05) + rng.gauss(0.0, 0.03)
                    value = outcome(s, gain, dt=rng.uniform(0.1, 0.9))
                    outcomes.append((s.decision_id, value))
                    await producer.send(topics["outcomes"], value, key=s.blueprint_id.encode())
                await producer.flush()
                if settled_at is None and time.monotonic() - last_check > 0.5:
                    last_check = time.monotonic()
                    if await owners_now() == phases[phase][1]:
                        settled_at = len(first)
                if settled_at is not None and len(first) - settled_at >= per_phase and phase < len(phases) - 1:
                    phase += 1
                    settled_at = None
                    change = phases[phase][0]
                    if change == "kill w2":
                        await asyncio.sleep(kill_rng.uniform(0.0, 0.08))  # anywhere in a batch
                        workers["w2"].kill()
                        live.remove(workers["w2"])
                    elif change == "start w4":
                        workers["w4"].start()
                        live.append(workers["w4"])
                    else:
                        workers["w2"].start()  # its old store: stale for whatever it gets now
                        live.append(workers["w2"])

            # drained: the group's commits reached the ends of every input partition
            inputs = [TopicPartition(topics[kind], p) for kind in ("requests", "outcomes") for p in range(PARTITIONS)]
            end = await sel.consumer.end_offsets(inputs)
            drain_deadline = time.monotonic() + 60
            while True:
                committed = await committed_offsets(admin, group, inputs)
                if all(committed[tp].offset >= end[tp] for tp in inputs):
                    break
                assert time.monotonic() < drain_deadline, f"not drained: {committed} vs {end}{tails()}"
                await asyncio.sleep(0.2)

            for wp in live:
                wp.proc.send_signal(signal.SIGTERM)
            for wp in live:
                rc = await asyncio.to_thread(wp.proc.wait, 60)
                assert rc == 0, f"a worker exited with {rc} on SIGTERM{wp.tail()}"

            seen = len(sel.records)
            for r in (await sel.to_end())[seen:]:
                s = check_selection(r, request_bp)
                copies[s.decision_id].append((r.key, r.value))
                assert s.decision_id in first, "an answer appeared after the last request was answered"
        committed = await committed_offsets(admin, group, inputs)
    finally:
        for wp in workers.values():
            wp.cleanup()
        await producer.stop()
        await admin.close()

    assert phase == len(phases) - 1 and workers["w2"].starts == 2 and workers["w4"].starts == 1
    # every request answered, and every copy of an answer alike
    assert set(first) == {ev.decision_id_for(rid) for rid in request_bp}
    for did, cs in copies.items():
        assert all(c == cs[0] for c in cs), f"decision {did} was answered in different ways:\n{cs}"
    assert sum(len(cs) - 1 for cs in copies.values()) >= retries

    # the owner of each partition: the worker the group's commits name
    stores = {name: read_all(wp.settings.db) for name, wp in workers.items()}
    by_id = {s["meta"]["worker_id"]: name for name, s in stores.items()}
    assert len(by_id) == 4
    owners: dict[int, str] = {}
    for p in range(PARTITIONS):
        named = {by_id[committed[TopicPartition(topics[kind], p)].metadata] for kind in ("requests", "outcomes")}
        assert len(named) == 1, f"partition {p}: requests and outcomes committed by {named}"
        owners[p] = named.pop()
        for kind in ("requests", "outcomes"):
            tp = TopicPartition(topics[kind], p)
            assert stores[owners[p]]["offsets"].get((tp.topic, p), 0) == end[tp] == committed[tp].offset, (p, kind)

    # the union of the owners' states equals an independent replay of the log
    independent = SeedSelector(workers["w1"].settings)
    for p in sorted(order):
        for did in order[p]:
            independent.apply_selection(first[did])
    learned = set()
    for did, value in outcomes:
        if did not in learned:
            learned.add(did)
            independent.learn(first[did], ev.decode(value, ev.ADAPTATION_OUTCOME))
    assert set(independent.blueprints) == set(blueprints) == set(partition_of)
    for bp, state in independent.blueprints.items():
        assert_state_equal(stores[owners[partition_of[bp]]]["blueprints"][bp], state.to_dict(), bp)

    counters = {name: s["counters"] for name, s in stores.items()}
    assert all(c.get("decisions", 0) > 0 for c in counters.values()), counters  # every worker had partitions
    assert counters["w4"].get("rebuilt_partitions", 0) >= 1  # a new store has nothing current
    assert sum(c.get("rebuilt_partitions", 0) for c in counters.values()) >= 4
    assert not any(c.get("dead_letters", 0) for c in counters.values())
    print(
        f"scale-out: {len(first)} requests, owners {owners}, retries {retries}, per worker (decisions, rebuilt partitions, superseded "
        f"rows): "
        + ", ".join(
            f"{n} ({c.get('decisions', 0)}, {c.get('rebuilt_partitions', 0)}, {c.get('superseded_outbox_rows', 0)})"
            for n, c in counters.items()
        )
    )
