"""The worker against a real Kafka broker (see tests/kafka_broker.py), in the cases only a broker has.

Every test uses its own topics, consumer group and SQLite file, so the tests do not see each other's traffic. They
need the broker: without one they fail (the ``kafka_bootstrap`` fixture calls ``pytest.fail``), they never skip.

* crash test: the worker runs as a subprocess, is SIGKILLed three times mid-stream and restarted, and in the end
  every request is answered, re-sent selections are byte-identical, and the learned per-arm statistics equal an
  independent replay of the logged selections and outcomes (nothing lost, nothing counted twice);
* compressed input.

The cases both buses have (end to end request -> selection -> outcome -> learned, the dead-letter flood, the
co-partitioning refusal) run once per bus, in-memory and on this broker, in test_worker.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from seedworker.contract import events as ev
from seedworker.core.selector import SeedSelector
from seedworker.store.readers import read_all
from tests.kafka_broker import unique_topic
from tests.support import assert_state_equal, check_selection, distinct_requests, eventually, outcome, running_worker
from tests.support import training_request as request
from tests.support_kafka import PARTITIONS, Reader, WorkerProcess, create_topics, make_settings

pytestmark = [pytest.mark.asyncio, pytest.mark.kafka]


# -- crash test: SIGKILL the worker subprocess mid-stream, three times -------------------------------------------
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
                assert time.monotonic() < deadline, (
                    f"only {len(first)} of {n_requests} requests answered (after {kills} kills){wp.tail()}"
                )
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

            await eventually(
                drained,
                "the worker to consume every request and outcome",
                timeout=60,
                interval=0.1,
                detail=lambda: f"{read_all(db)['offsets']} vs {want_offsets}{wp.tail()}",
            )
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
    print(
        f"crash test: {kills} kills, {resent} re-sent selections ({dup_requests} retried requests), "
        f"{dup_outcomes} duplicate outcomes, counters {c}"
    )


# -- compressed input -----------------------------------------------------------------------------------------
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
