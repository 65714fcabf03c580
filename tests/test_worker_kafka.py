"""The worker against a real Kafka broker (see tests/kafka_broker.py): the scenarios of test_worker.py end to end.

Every test uses its own topics, consumer group and SQLite file, so the tests do not see each other's traffic. They
need the broker: without one they fail (the ``kafka_bootstrap`` fixture calls ``pytest.fail``), they never skip.

* end to end in-process: answers, keys, headers, propensities; learning shifts later selections to the best seed;
* crash test: the worker runs as a subprocess, is SIGKILLed three times mid-stream and restarted, and in the end
  every request is answered, re-sent selections are byte-identical, and the learned per-arm statistics equal an
  independent replay of the logged selections and outcomes (nothing lost, nothing counted twice);
* dead-letter flood, compressed input, co-partitioning refusal.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from seedworker.contract import events as ev
from seedworker.core.config import ConfigError
from seedworker.core.selector import SeedSelector
from seedworker.store.readers import read_all
from seedworker.engine.worker import Worker
from tests.kafka_broker import unique_topic
from tests.support import (assert_state_equal, check_selection, distinct_requests, eventually, headers_of, outcome,
                           running_worker)
from tests.support import training_request as request
from tests.support_kafka import PARTITIONS, Reader, WorkerProcess, create_topics, make_settings, topic_names

pytestmark = [pytest.mark.asyncio, pytest.mark.kafka]


# -- 1. end to end, in-process -----------------------------------------------------------------------------------
async def test_end_to_end_in_process_answers_and_learns(kafka_bootstrap, tmp_path):
    rng = random.Random(7)
    bp, k, best = "bp-e2e", 4, 2
    settings = make_settings(kafka_bootstrap, tmp_path, topic_names("e2e"))  # the worker creates its topics
    t = settings.kafka.topics
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with running_worker(settings) as (worker, task), Reader(kafka_bootstrap, t.selections) as sel:
            sent: dict[str, str] = {}

            async def ask(indices) -> list[ev.SeedSelected]:
                for i in indices:
                    await producer.send(t.requests, request(i, bp, k), key=bp.encode())
                    sent[f"req-{i}"] = bp
                await producer.flush()
                want = {f"req-{i}" for i in indices}
                records = await sel.until(lambda rs: want <= distinct_requests(rs), f"answers to {len(want)} requests")
                return [check_selection(r, sent) for r in records if orjson.loads(r.value)["request_id"] in want]

            first = await ask(range(40))
            assert len(first) == 40  # one answer per request
            assert {s.seed_idx for s in first[:k]} == set(range(k))  # burn-in: every seed is tried once first
            for s in first:
                gain = (0.3 if s.seed_idx == best else 0.0) + rng.gauss(0.0, 0.02)
                await producer.send(t.outcomes, outcome(s, gain), key=bp.encode())
            await producer.flush()
            await eventually(lambda: worker.counters["outcomes_learned"] == 40, "40 outcomes learned",
                             detail=lambda: repr(worker))

            later = await ask(range(40, 100))
            assert len(later) == 60
            share = sum(s.seed_idx == best for s in later) / len(later)
            assert share >= 0.8, f"the clearly better seed got only {share:.0%} of the later selections"
            print(f"end to end: the better seed got {share:.0%} of the selections after learning")
            assert not task.done()
        # after a clean stop: exactly one answer per request, nothing else on the topic
        async with Reader(kafka_bootstrap, t.selections) as sel:
            records = await sel.to_end()
        assert len(records) == 100 and len(distinct_requests(records)) == 100
    finally:
        await producer.stop()
    c = read_all(settings.db)["counters"]
    assert (c["decisions"], c["outcomes_learned"], c.get("dead_letters", 0)) == (100, 40, 0)


# -- 2. crash test: SIGKILL the worker subprocess mid-stream, three times -------------------------------------------
@pytest.mark.timeout(240)
async def test_crash_restart_loses_nothing_and_counts_nothing_twice(kafka_bootstrap, kafka_topic_factory, tmp_path):
    seed = 20260101
    # Separate generators, so the requests and the outcomes do not depend on how the answers happen to be batched.
    kill_rng, request_rng = random.Random(seed), random.Random(seed + 1)
    n_requests, window = 600, 40
    blueprints = {f"bp-{b}": 3 + b % 3 for b in range(6)}  # blueprint -> number of candidate seeds
    best = {bp: b % k for b, (bp, k) in enumerate(blueprints.items())}
    # three kill points (answered requests), one in each third of the stream
    kill_at = [kill_rng.randint(60, 170), kill_rng.randint(230, 370), kill_rng.randint(430, 540)]

    topics = await create_topics(kafka_topic_factory, "crash")
    db = tmp_path / "state.sqlite"
    wp = WorkerProcess(kafka_bootstrap, db, topics, unique_topic("crash-group"), tmp_path / "worker.log")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
    await producer.start()

    request_bp: dict[str, str] = {}
    request_bytes: dict[str, bytes] = {}
    copies: dict[str, list[tuple]] = defaultdict(list)  # decision_id -> [(key, value, headers)] in arrival order
    first: dict[str, ev.SeedSelected] = {}
    order: dict[int, list[str]] = defaultdict(list)  # selections partition -> decision ids, first copies in order
    outcomes: list[tuple[str, bytes]] = []  # (decision_id, value) in the order produced
    dup_requests = dup_outcomes = 0
    kills = 0
    try:
        wp.start()
        async with Reader(kafka_bootstrap, topics["selections"]) as sel:
            next_i = 0
            deadline = time.monotonic() + 150
            while len(first) < n_requests:
                assert time.monotonic() < deadline, (f"only {len(first)} of {n_requests} requests answered "
                                                     f"(after {kills} kills){wp.tail()}")
                assert wp.alive(), f"the worker died on its own (exit {wp.proc.returncode}){wp.tail()}"
                while next_i < n_requests and next_i - len(first) < window:
                    bp = request_rng.choice(list(blueprints))
                    value = request(next_i, bp, blueprints[bp])
                    request_bp[f"req-{next_i}"], request_bytes[f"req-{next_i}"] = bp, value
                    await producer.send(topics["requests"], value, key=bp.encode())
                    if request_rng.random() < 0.03:  # a client retry: the same request again, maybe an earlier one
                        rid = f"req-{request_rng.randint(max(0, next_i - 50), next_i)}"
                        await producer.send(topics["requests"], request_bytes[rid], key=request_bp[rid].encode())
                        dup_requests += 1
                    next_i += 1
                for r in await sel.poll(100):
                    s = check_selection(r, request_bp)
                    copies[s.decision_id].append((r.key, r.value, tuple(r.headers or ())))
                    if s.decision_id in first:
                        continue  # a re-sent copy (retried request, or re-published after a crash): no new outcome
                    first[s.decision_id] = s
                    order[r.partition].append(s.decision_id)
                    rng = random.Random(f"{seed}:{s.request_id}")
                    gain = (0.2 if s.seed_idx == best[s.blueprint_id] else 0.05) + rng.gauss(0.0, 0.03)
                    value = outcome(s, gain, dt=rng.uniform(0.1, 0.9))
                    sends = [value]
                    if rng.random() < 0.1:  # the same outcome again: same bytes, or a new event id
                        sends.append(value if rng.random() < 0.5 else outcome(s, gain, dt=0.95))
                        dup_outcomes += 1
                    for v in sends:
                        outcomes.append((s.decision_id, v))
                        await producer.send(topics["outcomes"], v, key=s.blueprint_id.encode())
                await producer.flush()
                if kill_at and len(first) >= kill_at[0]:
                    kill_at.pop(0)
                    await asyncio.sleep(kill_rng.uniform(0.0, 0.08))  # land anywhere in a batch
                    wp.kill()
                    kills += 1
                    wp.start()

            # drained: the worker's SQLite offsets reached the ends of both input topics
            inputs = [TopicPartition(topics[kind], p) for kind in ("requests", "outcomes") for p in range(PARTITIONS)]
            end = await sel.consumer.end_offsets(inputs)
            want_offsets = {(tp.topic, tp.partition): off for tp, off in end.items()}

            def drained() -> bool:
                offsets = read_all(db)["offsets"]
                return all(offsets.get(tp, 0) >= off for tp, off in want_offsets.items())

            await eventually(drained, "the worker to consume every request and outcome", timeout=60,
                             interval=0.1, detail=lambda: f"{read_all(db)['offsets']} vs {want_offsets}{wp.tail()}")
            rc = await wp.terminate()
            assert rc == 0, f"the worker exited with {rc} on SIGTERM{wp.tail()}"

            # everything it ever published
            seen = len(sel.records)
            for r in (await sel.to_end())[seen:]:
                s = check_selection(r, request_bp)
                copies[s.decision_id].append((r.key, r.value, tuple(r.headers or ())))
                assert s.decision_id in first, "an answer appeared after the worker was stopped for the first time"
    finally:
        wp.cleanup()
        await producer.stop()

    assert kills == 3
    # every request answered; every copy of a selection has the first one's value and key; a copy re-published for
    # the same request record (after a crash) is byte for byte the first (headers too), while the answer to a retried
    # request names its own record in the source.* headers.
    assert set(first) == {ev.decision_id_for(rid) for rid in request_bp}
    for did, cs in copies.items():
        first_of_record: dict[tuple, tuple] = {}
        for c in cs:
            assert c[:2] == cs[0][:2], f"re-sent selection for {did} differs from the first copy:\n{cs[0]}\n{c}"
            source = tuple(h for h in c[2] if h[0].startswith("source."))
            original = first_of_record.setdefault(source, c)
            assert c == original, f"re-published selection for {did} differs from the first copy:\n{original}\n{c}"
    resent = sum(len(cs) - 1 for cs in copies.values())
    assert resent >= dup_requests

    snap = read_all(db)
    c = snap["counters"]
    assert c["decisions"] == n_requests
    assert c["outcomes_learned"] == n_requests
    assert c.get("duplicate_outcomes", 0) == dup_outcomes
    assert c.get("duplicate_requests", 0) == dup_requests
    for name in ("dead_letters", "held_outcomes", "dangling_outcomes", "late_outcomes", "expired_decisions"):
        assert c.get(name, 0) == 0, (name, c)

    # an independent replay: every distinct decision (in the selection topic's per-partition order), then the first
    # outcome of each decision
    replay = SeedSelector(wp.settings)
    for p in sorted(order):
        for did in order[p]:
            replay.apply_selection(first[did])
    learned = set()
    for did, value in outcomes:
        if did not in learned:
            learned.add(did)
            replay.learn(first[did], ev.decode(value, ev.ADAPTATION_OUTCOME))
    assert set(snap["blueprints"]) == set(replay.blueprints) == set(blueprints)
    for bp, state in replay.blueprints.items():
        assert_state_equal(snap["blueprints"][bp], state.to_dict(), bp)
    print(f"crash test: {kills} kills, {resent} re-sent selections ({dup_requests} retried requests), "
          f"{dup_outcomes} duplicate outcomes, counters {c}")


# -- 3. dead-letter flood ----------------------------------------------------------------------------------------
def bad_message(kind: int, i: int, rng: random.Random) -> tuple[str, bytes, bytes]:
    """(input kind, value, expected fragment of dlq.reason)"""
    base = orjson.loads(request(10_000 + i, "bp-bad"))
    if kind == 0:
        return "requests", b"\xff\xfe" + rng.randbytes(12), b"invalid JSON"
    if kind == 1:
        return "requests", b'{"event_type": "graft.requested", "request_id": "r' + str(i).encode(), b"invalid JSON"
    if kind == 2:
        return "requests", orjson.dumps({**base, "schema_version": "2.0"}), b"major version"
    if kind == 3:
        return "requests", json.dumps({**base, "context": {"current_loss": float("nan")}}).encode(), b"current_loss"
    if kind == 4:
        return "requests", orjson.dumps({**base, "seeds": []}), b"seeds"
    if kind == 5:
        return ("requests", orjson.dumps({**base, "seeds": [{"seed_id": f"s{j}", "seed_idx": j} for j in range(300)]}),
                b"seeds")
    return ("outcomes", json.dumps({"event_type": "adaptation.outcome", "blueprint_id": "bp-bad", "seed_id": "s0",
                                    "request_id": f"req-{i}", "latency_ms": -5.0}).encode(), b"latency_ms")


async def test_dead_letter_flood(kafka_bootstrap, kafka_topic_factory, tmp_path):
    rng = random.Random(3)
    topics = await create_topics(kafka_topic_factory, "dlq")
    settings = make_settings(kafka_bootstrap, tmp_path, topics)
    messages = [("good", i) for i in range(100)] + [("bad", i) for i in range(300)]
    rng.shuffle(messages)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    bad: dict[tuple[str, int, int], tuple] = {}  # (topic, partition, offset) -> (key, value, headers, reason)
    sent: dict[str, str] = {}
    try:
        async with running_worker(settings) as (worker, task):
            pending = []
            for what, i in messages:
                if what == "good":
                    bp = f"bp-{i % 4}"
                    sent[f"req-{i}"] = bp
                    await producer.send(topics["requests"], request(i, bp), key=bp.encode())
                    continue
                kind, value, reason = bad_message(i % 7, i, rng)
                key, headers = f"bad-{i}".encode(), [("origin", bytes([i % 256, 255, 0]))]
                fut = await producer.send(topics[kind], value, key=key, headers=headers)
                pending.append((fut, (key, value, tuple(headers), reason)))
            for fut, original in pending:
                md = await fut
                bad[(md.topic, md.partition, md.offset)] = original
            async with Reader(kafka_bootstrap, topics["selections"]) as sel, \
                    Reader(kafka_bootstrap, topics["dead_letters"]) as dlq:
                await dlq.until(lambda rs: len(rs) >= 300, "300 dead letters", timeout=60)
                await sel.until(lambda rs: len(distinct_requests(rs)) >= 100, "100 selections", timeout=60)
                assert not task.done(), "the worker stopped"
                assert (worker.counters["dead_letters"], worker.counters["decisions"]) == (300, 100)
        # stopped cleanly: now nothing more can appear on either topic
        async with Reader(kafka_bootstrap, topics["selections"]) as sel, \
                Reader(kafka_bootstrap, topics["dead_letters"]) as dlq:
            selections, dead = await sel.to_end(), await dlq.to_end()
    finally:
        await producer.stop()
    assert len(selections) == 100
    for r in selections:
        check_selection(r, sent)
    assert distinct_requests(selections) == set(sent)
    assert len(dead) == 300
    seen = set()
    for r in dead:
        h = headers_of(r)
        src = (h["dlq.source.topic"].decode(), int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        assert src in bad, f"dead letter from {src} is not one of the bad messages"
        assert src not in seen, f"{src} dead-lettered twice"
        seen.add(src)
        key, value, headers, reason = bad[src]
        assert r.key == key and r.value == value
        assert h["origin"] == dict(headers)["origin"]  # the original headers travel along
        assert reason in h["dlq.reason"], (reason, h["dlq.reason"])
    assert seen == set(bad)


# -- 4. compressed input -----------------------------------------------------------------------------------------
async def test_compressed_requests_are_answered(kafka_bootstrap, kafka_topic_factory, tmp_path):
    topics = await create_topics(kafka_topic_factory, "codec")
    settings = make_settings(kafka_bootstrap, tmp_path, topics)
    codecs = ("gzip", "snappy", "lz4", "zstd")
    per_codec = 15
    sent: dict[str, str] = {}
    async with running_worker(settings) as (worker, task):
        for n, codec in enumerate(codecs):
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type=codec, linger_ms=20)
            await producer.start()
            try:
                bp = f"bp-{codec}"
                for i in range(n * per_codec, (n + 1) * per_codec):
                    sent[f"req-{i}"] = bp
                    await producer.send(topics["requests"], request(i, bp), key=bp.encode())
                await producer.flush()
            finally:
                await producer.stop()
        async with Reader(kafka_bootstrap, topics["selections"]) as sel:
            records = await sel.until(lambda rs: distinct_requests(rs) >= set(sent), "answers to every request")
        for r in records:
            check_selection(r, sent)
        assert len(records) == len(sent) == len(codecs) * per_codec
        assert worker.counters["dead_letters"] == 0
        assert not task.done()


# -- 5. co-partitioning ------------------------------------------------------------------------------------------
async def test_refuses_to_start_without_co_partitioning(kafka_bootstrap, kafka_topic_factory, tmp_path):
    topics = {"requests": await kafka_topic_factory("copart-requests", 2),
              "outcomes": await kafka_topic_factory("copart-outcomes", 3),
              "selections": await kafka_topic_factory("copart-selections", 3),
              "dead_letters": await kafka_topic_factory("copart-dlq", 3),
              "control": await kafka_topic_factory("copart-control", 1)}
    settings = make_settings(kafka_bootstrap, tmp_path, topics)
    with pytest.raises(ConfigError, match="co-partitioning"):
        await Worker(settings).start()
