"""Faults against a real Kafka broker: the broker restarts mid-stream; the store cannot write.

1. Broker restart: the tests run their OWN Apache Kafka (seedworker.dev.local_kafka.LocalKafka on free ports, so the
   session's shared broker is left alone), a ``python -m seedworker run`` subprocess on it, and a simulated Tamiyo
   that keeps asking and answers every selection with an outcome. Mid-stream the broker is stopped (controlled
   shutdown, data kept) for several seconds and started again on the same ports. In the end every request is
   answered (re-sent answers are identical), every outcome is learned exactly once (the stored arm statistics equal
   an independent replay), nothing went to the dead-letter topic, the worker never exited, and it did not spin.
2. The producer gives up on a message during the outage (request_timeout_ms shortened to 2 s): KafkaBus.send sends it
   again on a new producer; every acknowledged message is on the topic.
3. Disk full (``PRAGMA max_page_count`` on the worker's connection, see tests/test_faults.py), in-process: the worker
   stops with a StoreError naming the file, the batch it could not store is neither published nor committed (SQLite
   and Kafka group offsets unchanged), and a restart without the cap processes it.
4. ``seedworker run`` with its WAL made unwritable exits 1 with the store's message; after the fix it goes on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from seedworker.broker.aiokafka_internals import pace_metadata_updates
from seedworker.broker.base import Outgoing
from seedworker.broker.kafka import KafkaBus
from seedworker.contract import events as ev
from seedworker.core.config import KafkaSettings
from seedworker.core.selector import SeedSelector
from seedworker.dev.local_kafka import REPO_ROOT, LocalKafka, free_port
from seedworker.engine.worker import Worker
from seedworker.store.readers import read_all
from seedworker.store.store import StoreError
from tests.kafka_broker import unique_topic
from tests.support import (
    FaultyStore,
    assert_state_equal,
    chattr,
    check_selection,
    disk_full,
    distinct_requests,
    eventually,
    outcome,
    running_worker,
)
from tests.support import training_request as request
from tests.support_kafka import PARTITIONS, Reader, WorkerProcess, create_topics, make_settings, topic_names

pytestmark = [pytest.mark.asyncio, pytest.mark.kafka]


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory):
    """A private broker these tests may stop and start: never the session's shared one."""
    kafka = LocalKafka(
        port=free_port(),
        workdir=tmp_path_factory.mktemp("kafka"),
        libs_dir=REPO_ROOT / ".cache" / "kafka" / "libs",
        die_with_parent=True,
    )
    kafka.ensure_jars()
    kafka.start(timeout=120)
    try:
        yield kafka
    finally:
        kafka.stop()


async def outage(kafka: LocalKafka, down_s: float) -> float:
    """Stop the broker (controlled shutdown, data kept), keep it down for ``down_s``, start it again on the same
    ports. Returns how long clients could not reach it."""
    t0 = time.monotonic()
    await asyncio.to_thread(kafka.stop)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(kafka.start, 120)
    return time.monotonic() - t0


async def create_own_topics(bootstrap: str, names: dict[str, str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, 1 if kind == "control" else PARTITIONS, 1) for kind, name in names.items()]
        )
        deadline = time.monotonic() + 30
        while True:
            descs = await admin.describe_topics(list(names.values()))
            if all(
                d.get("error_code", 0) == 0
                and d.get("partitions")
                and all(p.get("leader", -1) >= 0 for p in d["partitions"])
                for d in descs
            ):
                return names
            assert time.monotonic() < deadline, f"topics not ready: {descs}"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


class Tamiyo:
    """Sends requests (with a few client retries), reads the answers, and sends one outcome per answered decision
    (sometimes twice). Records everything for the independent checks."""

    def __init__(self, producer: AIOKafkaProducer, topics: dict[str, str], seed: int, blueprints: dict[str, int]):
        self.producer, self.topics, self.seed, self.blueprints = producer, topics, seed, blueprints
        self.rng = random.Random(seed)
        self.best = {bp: b % k for b, (bp, k) in enumerate(blueprints.items())}
        self.request_bp: dict[str, str] = {}
        self.request_bytes: dict[str, bytes] = {}
        self.copies: dict[str, list[tuple]] = defaultdict(list)  # decision_id -> [(key, value, headers)]
        self.first: dict[str, ev.SeedSelected] = {}
        self.order: dict[int, list[str]] = defaultdict(list)  # selections partition -> first copies, in order
        self.outcomes: list[tuple[str, bytes]] = []
        self.dup_requests = self.dup_outcomes = 0
        self.sent = 0

    async def send_requests(self, n: int) -> None:
        for _ in range(n):
            i = self.sent
            bp = self.rng.choice(list(self.blueprints))
            value = request(i, bp, self.blueprints[bp])
            self.request_bp[f"req-{i}"], self.request_bytes[f"req-{i}"] = bp, value
            await self.producer.send(self.topics["requests"], value, key=bp.encode())
            if self.rng.random() < 0.03:  # a client retry of an earlier request
                rid = f"req-{self.rng.randint(max(0, i - 50), i)}"
                await self.producer.send(
                    self.topics["requests"], self.request_bytes[rid], key=self.request_bp[rid].encode()
                )
                self.dup_requests += 1
            self.sent += 1

    async def answer(self, records) -> None:
        for r in records:
            s = check_selection(r, self.request_bp)
            # A re-sent copy is the same message; only the headers naming the request it answers (a retried
            # request's own offset) may differ.
            self.copies[s.decision_id].append(
                (r.key, r.value, tuple(h for h in r.headers or () if not h[0].startswith("source.")))
            )
            if s.decision_id in self.first:
                continue  # a re-sent copy: no new outcome
            self.first[s.decision_id] = s
            self.order[r.partition].append(s.decision_id)
            rng = random.Random(f"{self.seed}:{s.request_id}")
            gain = (0.2 if s.seed_idx == self.best[s.blueprint_id] else 0.05) + rng.gauss(0.0, 0.03)
            value = outcome(s, gain, dt=rng.uniform(0.1, 0.9))
            sends = [value]
            if rng.random() < 0.1:
                sends.append(value if rng.random() < 0.5 else outcome(s, gain, dt=0.95))
                self.dup_outcomes += 1
            for v in sends:
                self.outcomes.append((s.decision_id, v))
                await self.producer.send(self.topics["outcomes"], v, key=s.blueprint_id.encode())

    def check(self, db: Path, settings) -> dict:
        """Every request answered, re-sent answers identical, every outcome learned once (independent replay)."""
        assert set(self.first) == {ev.decision_id_for(rid) for rid in self.request_bp}
        for did, cs in self.copies.items():
            for c in cs[1:]:
                assert c == cs[0], f"re-sent selection for {did} differs from the first copy:\n{cs[0]}\n{c}"
        snap = read_all(db)
        c = snap["counters"]
        n = len(self.request_bp)
        assert c["decisions"] == n
        assert c["outcomes_learned"] == n
        assert c.get("duplicate_outcomes", 0) == self.dup_outcomes
        assert c.get("duplicate_requests", 0) == self.dup_requests
        for name in ("dead_letters", "held_outcomes", "dangling_outcomes", "late_outcomes", "expired_decisions"):
            assert c.get(name, 0) == 0, (name, c)
        replay = SeedSelector(settings)
        for p in sorted(self.order):
            for did in self.order[p]:
                replay.apply_selection(self.first[did])
        learned = set()
        for did, value in self.outcomes:
            if did not in learned:
                learned.add(did)
                replay.learn(self.first[did], ev.decode(value, ev.ADAPTATION_OUTCOME))
        assert set(snap["blueprints"]) == set(replay.blueprints) == set(self.blueprints)
        for bp, state in replay.blueprints.items():
            assert_state_equal(snap["blueprints"][bp], state.to_dict(), bp)
        return c


# -- 1. the broker restarts mid-stream ----------------------------------------------------------------------------
@pytest.mark.timeout(300)
async def test_broker_restart_mid_stream_loses_nothing(own_kafka, tmp_path):
    bootstrap = own_kafka.bootstrap_servers
    n_requests, restart_at = 480, 160
    topics = await create_own_topics(bootstrap, topic_names("restart"))
    db = tmp_path / "state.sqlite"
    wp = WorkerProcess(bootstrap, db, topics, unique_topic("restart-group"), tmp_path / "worker.log")
    wp.env["SEEDWORKER_KAFKA__MAX_BATCH"] = "20"  # many small batches: the outage lands between and inside them
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
    # Tamiyo's client would spin like the worker's did (see seedworker.broker.kafka): keep the machine's two cores for the
    # broker and the worker.
    pace_metadata_updates(producer.client)
    await producer.start()
    tamiyo = Tamiyo(producer, topics, 20260202, {f"bp-{b}": 3 + b % 3 for b in range(5)})
    try:
        wp.start()
        async with Reader(bootstrap, topics["selections"]) as sel:

            async def converse(window: int = 30) -> None:
                """Requests a window ahead of the answers, an outcome for each answer, all the time: also while
                the broker shuts down and while it is away (the client holds what it cannot send)."""
                deadline = time.monotonic() + 200
                while len(tamiyo.first) < n_requests:
                    assert time.monotonic() < deadline, (
                        f"only {len(tamiyo.first)} of {n_requests} requests answered{wp.tail()}"
                    )
                    assert wp.alive(), f"the worker exited ({wp.proc.returncode}){wp.tail()}"
                    ahead = min(n_requests, len(tamiyo.first) + window) - tamiyo.sent
                    if ahead > 0:
                        await tamiyo.send_requests(ahead)
                    await tamiyo.answer(await sel.poll(50))

            talk = asyncio.create_task(converse())
            await eventually(
                lambda: len(tamiyo.first) >= restart_at or talk.done(), f"{restart_at} answers", timeout=90
            )
            answered_before = len(tamiyo.first)
            down_s = await outage(own_kafka, 8.0)
            assert wp.alive(), f"the worker exited while the broker was away ({wp.proc.returncode}){wp.tail()}"
            await talk
            await producer.flush()

            # drained: the SQLite offsets reached the ends of both input topics
            inputs = [TopicPartition(topics[k], p) for k in ("requests", "outcomes") for p in range(PARTITIONS)]
            end = await sel.consumer.end_offsets(inputs)
            want = {(tp.topic, tp.partition): off for tp, off in end.items()}
            await eventually(
                lambda: all(read_all(db)["offsets"].get(tp, 0) >= o for tp, o in want.items()),
                "the worker to consume every request and outcome",
                timeout=60,
                interval=0.1,
                detail=lambda: f"{read_all(db)['offsets']} vs {want}{wp.tail()}",
            )
            rc = await wp.terminate()
            assert rc == 0, f"the worker exited with {rc} on SIGTERM{wp.tail()}"
            assert wp.starts == 1  # it lived through the outage: nobody restarted it
            seen = len(sel.records)
            for r in (await sel.to_end())[seen:]:
                await tamiyo.answer([r])
        async with Reader(bootstrap, topics["dead_letters"]) as dlq:
            assert await dlq.to_end() == [], "dead letters from the outage"
    finally:
        wp.cleanup()
        await producer.stop()
    c = tamiyo.check(db, wp.settings)
    # Before the producer's metadata updates were paced, the worker failed ~4,000 of them a second while the broker
    # was away (measured: 58,000 in 15 s, 12 MB of log); now the consumer's ~10 a second (its retry backoff) remain.
    failures = wp.log.read_text(errors="replace").count("Unable to update metadata")
    assert failures < 100 * down_s, f"{failures} failed metadata updates in a {down_s:.0f}s outage"
    resent = sum(len(cs) - 1 for cs in tamiyo.copies.values())
    print(
        f"broker restart: away {down_s:.1f}s after {answered_before} answers, {failures} failed metadata "
        f"updates, {resent} re-sent selections ({tamiyo.dup_requests} retried requests), counters {c}"
    )


# -- 2. the producer gives up during the outage -------------------------------------------------------------------
@pytest.mark.timeout(240)
async def test_send_outlasts_a_producer_that_gave_up(own_kafka):
    """aiokafka fails a message whose partition has had no leader for request_timeout_ms, and the producer is then
    broken for that partition (OutOfOrderSequenceNumber). With request_timeout_ms at 2 s, an outage of several
    seconds makes that happen to the message in flight when the broker shuts down: KafkaBus.send sends it again on
    a new producer, and every send returns only once its message is on the topic."""
    bootstrap = own_kafka.bootstrap_servers
    topic = unique_topic("renew")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    settings = KafkaSettings(bootstrap_servers=bootstrap, group_id=unique_topic("renew-group"), connect_timeout_s=120)
    bus = KafkaBus(settings, producer_options={"request_timeout_ms": 2000})

    async def nothing(tps) -> None:
        pass

    await bus.start([topic], nothing, nothing)
    acknowledged: list[int] = []
    enough = asyncio.Event()

    async def pump() -> None:
        """One message in flight at any time, so one is in flight when the broker goes."""
        i = 0
        while not enough.is_set():
            await bus.send([Outgoing(topic, f"k{i % 7}".encode(), f"m{i}".encode())])
            acknowledged.append(i)
            i += 1

    try:
        task = asyncio.create_task(pump())
        await eventually(lambda: len(acknowledged) >= 50 or task.done(), "50 acknowledged sends", timeout=60)
        down_s = await outage(own_kafka, 6.0)
        after = len(acknowledged)
        await eventually(
            lambda: len(acknowledged) >= after + 50 or task.done(), "50 more sends after the restart", timeout=120
        )
        enough.set()
        await asyncio.wait_for(task, 60)  # raises what stopped the pump
    finally:
        enough.set()
        await bus.stop()
    async with Reader(bootstrap, topic) as reader:
        values = [r.value for r in await reader.to_end()]
    assert {f"m{i}".encode() for i in acknowledged} <= set(values)
    assert bus.producer_renewals >= 1, "no message was given up during the outage: nothing was tested"
    print(
        f"renewal: away {down_s:.1f}s, {len(acknowledged)} sends acknowledged, {bus.producer_renewals} producer "
        f"renewals, {len(values) - len(set(values))} duplicates on the topic"
    )


# -- 3. disk full, in-process on the shared broker -----------------------------------------------------------------
async def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        got = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): om.offset for tp, om in got.items()}


async def test_disk_full_stops_the_worker_and_a_restart_processes_the_batch(
    kafka_bootstrap, kafka_topic_factory, tmp_path
):
    topics = await create_topics(kafka_topic_factory, "full")
    settings = make_settings(kafka_bootstrap, tmp_path, topics)
    db = Path(settings.db)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    sent: dict[str, str] = {}

    async def ask(indices) -> None:
        for i in indices:
            bp = f"bp-{i % 3}"
            sent[f"req-{i}"] = bp
            await producer.send(topics["requests"], request(i, bp), key=bp.encode())
        await producer.flush()

    try:
        async with running_worker(settings), Reader(kafka_bootstrap, topics["selections"]) as sel:
            await ask(range(30))
            first = [
                check_selection(r, sent)
                for r in await sel.until(lambda rs: distinct_requests(rs) >= set(sent), "30 answers")
            ]
        for s in first:
            await producer.send(
                topics["outcomes"], outcome(s, 0.1 if s.seed_idx == 1 else 0.02), key=s.blueprint_id.encode()
            )
        await ask(range(30, 50))
        before = read_all(db)
        group_before = await committed_offsets(kafka_bootstrap, settings.kafka.group_id)

        inject, _ = disk_full(db)
        worker = Worker(settings, store=FaultyStore(db, inject))
        with pytest.raises(StoreError) as err:
            await asyncio.wait_for(worker.run(), 60)
        text = str(err.value)
        assert str(db) in text and "database or disk is full (SQLITE_FULL)" in text and "stopped consuming" in text
        after = read_all(db)
        assert (after["offsets"], after["counters"]) == (before["offsets"], before["counters"])
        assert await committed_offsets(kafka_bootstrap, settings.kafka.group_id) == group_before
        async with Reader(kafka_bootstrap, topics["selections"]) as sel:
            assert len(await sel.to_end()) == 30, "something was published from the batch that was not stored"

        # the disk has room again (a new connection has no page cap): the next start processes the batch
        async with running_worker(settings) as (w, _), Reader(kafka_bootstrap, topics["selections"]) as sel:
            await sel.until(lambda rs: distinct_requests(rs) >= set(sent), "answers to all 50 requests")
            await eventually(
                lambda: w.counters["outcomes_learned"] == 30, "30 outcomes learned", detail=lambda: repr(w)
            )
        async with Reader(kafka_bootstrap, topics["selections"]) as sel:
            records = await sel.to_end()
    finally:
        await producer.stop()
    assert len(records) == 50 and distinct_requests(records) == set(sent)
    for r in records:
        check_selection(r, sent)
    snap = read_all(db)
    assert (snap["counters"]["decisions"], snap["counters"]["outcomes_learned"]) == (50, 30)
    assert sum(int(st["arms"]["pulls"].sum()) for st in snap["blueprints"].values()) == 30
    print(f"disk full: {text}")


# -- 4. `seedworker run` on an unwritable WAL --------------------------------------------------------------------
@pytest.mark.timeout(180)
async def test_cli_exits_non_zero_naming_the_store_and_the_cause(kafka_bootstrap, kafka_topic_factory, tmp_path):
    topics = await create_topics(kafka_topic_factory, "cli-fault")
    db = tmp_path / "state.sqlite"
    wal = db.with_name(db.name + "-wal")
    wp = WorkerProcess(kafka_bootstrap, db, topics, unique_topic("cli-fault-group"), tmp_path / "worker.log")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    sent: dict[str, str] = {}

    async def ask(indices) -> None:
        for i in indices:
            sent[f"req-{i}"] = "bp"
            await producer.send(topics["requests"], request(i, "bp"), key=b"bp")
        await producer.flush()

    immutable = False
    try:
        wp.start()
        async with Reader(kafka_bootstrap, topics["selections"]) as sel:
            await ask(range(20))
            await sel.until(lambda rs: distinct_requests(rs) >= set(sent), "20 answers", timeout=90)
        chattr("+i", wal)
        immutable = True
        await ask(range(20, 30))
        rc = await asyncio.to_thread(wp.proc.wait, 60)
        output = wp.log.read_text(errors="replace")
        assert rc == 1, f"exit code {rc}{wp.tail()}"
        assert f"seedworker: cannot write to {db}: disk I/O error (SQLITE_IOERR_WRITE); stopped consuming" in output, (
            wp.tail()
        )
        async with Reader(kafka_bootstrap, topics["selections"]) as sel:
            assert distinct_requests(await sel.to_end()) == {f"req-{i}" for i in range(20)}
        chattr("-i", wal)
        immutable = False

        wp.start()
        async with Reader(kafka_bootstrap, topics["selections"]) as sel:
            records = await sel.until(lambda rs: distinct_requests(rs) >= set(sent), "all 30 answers", timeout=90)
            rc = await wp.terminate()
            assert rc == 0, f"exit code {rc} on SIGTERM{wp.tail()}"
            records = await sel.to_end()
    finally:
        if immutable:
            chattr("-i", wal)
        wp.cleanup()
        await producer.stop()
    copies: dict[str, set[bytes]] = defaultdict(set)
    for r in records:
        copies[check_selection(r, sent).request_id].add(r.value)
    assert set(copies) == set(sent) and all(len(v) == 1 for v in copies.values())  # re-sent ones are identical
    assert read_all(db)["counters"]["decisions"] == 30
