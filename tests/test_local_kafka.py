"""Real-broker tests: aiokafka 0.14 against the session broker (see tests/kafka_broker.py).

These check the protocol paths the worker relies on against a Kafka 4.x broker, which
dropped the pre-2.1 protocol versions (KIP-896): metadata, CreateTopics, produce (plain,
idempotent, acks=all, every compression codec), fetch, consumer groups with manual commit,
offset fetch/commit, list offsets, record headers; plus LocalKafka's own lifecycle.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError
from aiokafka.structs import OffsetAndMetadata

from seedworker.dev.local_kafka import REPO_ROOT, LocalKafka, free_port, probe_kafka
from tests.kafka_broker import unique_topic

pytestmark = pytest.mark.asyncio
kafka = pytest.mark.kafka  # needs the real broker (never skipped)


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout: float = 30.0) -> list:
    """getmany() until ``count`` records arrived (or fail after ``timeout`` seconds)."""
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(records)} of {count} records within {timeout}s")
        batches = await consumer.getmany(timeout_ms=500)
        for recs in batches.values():
            records.extend(recs)
    return records


@kafka
async def test_broker_answers_metadata(kafka_bootstrap: str) -> None:
    host, _, port = kafka_bootstrap.split(",")[0].rpartition(":")
    info = probe_kafka(host, int(port))
    assert info["brokers"], info
    assert info["cluster_id"]
    # aiokafka's connection negotiated versions must exist on the broker: Metadata v4+ (KIP-896)
    assert info["api_versions"][3][0] <= 4 <= info["api_versions"][3][1]


@kafka
async def test_admin_creates_topic_with_three_partitions(kafka_bootstrap: str) -> None:
    topic = unique_topic("admin")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        errors = {t[0]: t[1] for t in resp.topic_errors}
        assert errors == {topic: 0}, resp
        for _ in range(50):
            (desc,) = await admin.describe_topics([topic])
            if desc["error_code"] == 0 and len(desc["partitions"]) == 3:
                break
            await asyncio.sleep(0.1)
        assert desc["error_code"] == 0, desc
        assert sorted(p["partition"] for p in desc["partitions"]) == [0, 1, 2]
        assert all(p["leader"] >= 0 for p in desc["partitions"])
        assert topic in await admin.list_topics()

        # creating it again is refused with TOPIC_ALREADY_EXISTS (36)
        resp = await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        assert {t[0]: t[1] for t in resp.topic_errors} == {topic: 36}

        await admin.delete_topics([topic])
    finally:
        await admin.close()


@kafka
async def test_auto_create_topics_is_disabled(kafka_bootstrap: str, local_kafka: LocalKafka | None) -> None:
    if local_kafka is None:
        return  # an external broker's settings are not ours to check
    assert local_kafka.server_properties()["auto.create.topics.enable"] == "false"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=1500)
    await producer.start()
    try:
        # aiokafka gives up with one or the other, depending on timing
        with pytest.raises((KafkaTimeoutError, UnknownTopicOrPartitionError)):
            await producer.send_and_wait(unique_topic("missing"), b"x")
    finally:
        await producer.stop()


@kafka
async def test_group_round_trip_with_manual_commit(kafka_bootstrap: str, kafka_topic_factory) -> None:
    topic = await kafka_topic_factory("group", partitions=3)
    group = f"group-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(30):
            await producer.send(topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=500,
        session_timeout_ms=10000,
    )
    await consumer.start()
    try:
        records = await _consume(consumer, 30)
        assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(30))
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(3)}
        # same key -> same partition
        by_key: dict[bytes, set[int]] = {}
        for r in records:
            by_key.setdefault(r.key, set()).add(r.partition)
        assert all(len(parts) == 1 for parts in by_key.values())
        # stay idle for a few heartbeat intervals: the membership must survive (Heartbeat works)
        assignment = consumer.assignment()
        idle_until = time.monotonic() + 2.5
        while time.monotonic() < idle_until:
            assert not any((await consumer.getmany(timeout_ms=250)).values())
        assert consumer.assignment() == assignment
        await consumer.commit()  # OffsetCommit of the consumed positions
        ends = await consumer.end_offsets(list(consumer.assignment()))
        for tp, end in ends.items():
            assert await consumer.committed(tp) == end  # OffsetFetch
        # an explicit commit of a specific offset with metadata
        tp0 = TopicPartition(topic, 0)
        await consumer.commit({tp0: OffsetAndMetadata(ends[tp0], "note")})
        assert await consumer.committed(tp0) == ends[tp0]
    finally:
        await consumer.stop()

    # a second member of the same group resumes from the committed offsets
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, value=f"late{i}".encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        records = await _consume(consumer, 5)
        assert sorted(r.value for r in records) == sorted(f"late{i}".encode() for i in range(5))
        extra = await consumer.getmany(timeout_ms=500)
        assert not any(extra.values())
    finally:
        await consumer.stop()


@kafka
async def test_idempotent_producer_acks_all(kafka_bootstrap: str, kafka_topic_factory) -> None:
    topic = await kafka_topic_factory("idem")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        metas = [await producer.send_and_wait(topic, value=f"m{i}".encode()) for i in range(10)]
        batch = [producer.send(topic, value=f"b{i}".encode()) for i in range(20)]
        metas += [await (await f) for f in batch]
    finally:
        await producer.stop()
    assert [m.offset for m in metas] == list(range(30))

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records = await _consume(consumer, 30)
        assert [r.value for r in records] == [f"m{i}".encode() for i in range(10)] + [
            f"b{i}".encode() for i in range(20)
        ]
    finally:
        await consumer.stop()


@kafka
@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compression_codecs(kafka_bootstrap: str, kafka_topic_factory, codec: str) -> None:
    topic = await kafka_topic_factory(f"codec-{codec}")
    values = [(f"{codec}-{i}-" + "payload " * 50).encode() for i in range(100)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type=codec, linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v) for v in values]
        await producer.flush()
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    assert [m.offset for m in metas] == list(range(100))

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        records = await _consume(consumer, 100)
        assert [r.value for r in records] == values
    finally:
        await consumer.stop()


@kafka
async def test_headers_round_trip(kafka_bootstrap: str, kafka_topic_factory) -> None:
    topic = await kafka_topic_factory("headers")
    headers = [("trace-id", b"abc123"), ("empty", b""), ("dup", b"1"), ("dup", b"2"), ("utf8-\u00e9", b"\xff\x00")]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=b"with-headers", key=b"k", headers=headers)
        await producer.send_and_wait(topic, value=b"no-headers")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        first, second = await _consume(consumer, 2)
    finally:
        await consumer.stop()
    assert first.value == b"with-headers" and first.key == b"k"
    assert list(first.headers) == headers
    assert list(second.headers) == []


@kafka
async def test_list_offsets_seek_and_offsets_for_times(kafka_bootstrap: str, kafka_topic_factory) -> None:
    topic = await kafka_topic_factory("offsets", partitions=2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    base = int(time.time() * 1000) - 60_000
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, value=f"t{i}".encode(), partition=0, timestamp_ms=base + i * 1000)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp0, tp1])
        assert await consumer.beginning_offsets([tp0, tp1]) == {tp0: 0, tp1: 0}
        assert await consumer.end_offsets([tp0, tp1]) == {tp0: 10, tp1: 0}

        found = await consumer.offsets_for_times({tp0: base + 4500, tp1: base})
        assert found[tp0].offset == 5 and found[tp0].timestamp == base + 5000
        assert found[tp1] is None
        assert (await consumer.offsets_for_times({tp0: base + 10**6}))[tp0] is None

        await consumer.seek_to_end(tp0)
        assert await consumer.position(tp0) == 10
        await consumer.seek_to_beginning(tp0)
        assert await consumer.position(tp0) == 0
        consumer.seek(tp0, found[tp0].offset)
        records = await _consume(consumer, 5)
        assert [r.value for r in records] == [f"t{i}".encode() for i in range(5, 10)]
        assert [r.timestamp for r in records] == [base + i * 1000 for i in range(5, 10)]
    finally:
        await consumer.stop()


async def test_server_properties_defaults_and_overrides(tmp_path: Path) -> None:
    kafka = LocalKafka(port=12345, controller_port=12346, workdir=tmp_path, extra_config={"num.partitions": "4"})
    props = kafka.server_properties()
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:12345,CONTROLLER://127.0.0.1:12346"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:12345"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:12346"
    assert props["num.partitions"] == "4"
    assert props["log.dirs"].startswith(str(tmp_path))
    assert kafka.bootstrap_servers == "127.0.0.1:12345"
    assert not kafka.is_running()
    kafka.stop()  # stopping a broker that is not running is a no-op


async def test_cli_status_of_idle_workdir(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "seedworker.dev.local_kafka", "status", "--workdir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res
    assert "not running" in res.stdout


@kafka
async def test_restart_keeps_data(kafka_bootstrap: str, local_kafka: LocalKafka | None, tmp_path: Path) -> None:
    """restart() of the session broker (or of a private LocalKafka when the broker is external)."""
    own = None
    if local_kafka is None:
        own = LocalKafka(port=free_port(), workdir=tmp_path / "kafka")
        own.ensure_jars()
        own.start()
    kafka = local_kafka or own
    assert kafka is not None
    bootstrap = kafka.bootstrap_servers
    try:
        topic = unique_topic("restart")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before-restart")
        finally:
            await producer.stop()

        pid_before = kafka.pid
        t0 = time.monotonic()
        kafka.restart()
        elapsed = time.monotonic() - t0
        assert kafka.is_running() and kafka.pid != pid_before
        assert kafka.bootstrap_servers == bootstrap
        assert elapsed < 60, elapsed

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            (record,) = await _consume(consumer, 1)
            assert record.value == b"before-restart"
        finally:
            await consumer.stop()
    finally:
        if own is not None:
            own.stop()
            assert not own.is_running()
