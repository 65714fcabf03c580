"""KafkaBus.send in a partition's transaction, against a real broker: what goes in comes out, in order.

The transactional path hands the messages to aiokafka as record batches (``create_batch``/``send_batch``), one per
topic partition, more when a partition's records pass the producer's batch size; messages without a partition go
through ``send`` and its partitioner. Either way a read_committed consumer must read every record, byte for byte
(key, value, headers, tombstones), each partition's in the order given.
"""

from __future__ import annotations

import uuid

import pytest

from seedworker.broker.base import Outgoing
from seedworker.broker.kafka import KafkaBus
from seedworker.core.config import KafkaSettings
from tests.support_kafka import Reader

pytestmark = [pytest.mark.asyncio, pytest.mark.kafka]

BATCH = 16 * 1024  # a small producer batch, so one partition's records of a call need several


def _records(topic: str, n: int, partition: int | None) -> list[Outgoing]:
    """n records of sizes from 100 bytes to past the batch size (one alone is larger than a batch), every fifth a
    tombstone, each with headers naming it."""
    out = []
    for i in range(n):
        size = BATCH + 1000 if i == n // 2 else 100 + (i * 397) % 4000
        value = None if i % 5 == 4 else f"{i:06d}".encode() * (size // 6)
        out.append(
            Outgoing(topic, f"k{i % 7}".encode(), value, (("n", str(i).encode()), ("h", b"\x00\xff")), partition)
        )
    return out


def _by_partition(records) -> dict[int, list[tuple]]:
    """(key, value, headers) of each record by partition, in order: records read back or the messages sent (both
    have these attributes)."""
    by_partition: dict[int, list[tuple]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append((r.key, r.value, tuple(r.headers)))
    return by_partition


async def _bus(bootstrap: str) -> KafkaBus:
    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=bootstrap, group_id=f"bus-{uuid.uuid4().hex[:8]}"),
        producer_options={"max_batch_size": BATCH},
    )
    await bus.fence([0])
    return bus


async def test_a_transaction_publishes_every_record_in_order_per_partition(kafka_bootstrap, kafka_topic_factory):
    a = await kafka_topic_factory("bus-a", 2)
    b = await kafka_topic_factory("bus-b", 1)
    # Interleaved: partition 0 and 1 of one topic and another topic, each partition's records several batches.
    messages = []
    for chunk in zip(_records(a, 60, 0), _records(a, 60, 1), _records(b, 60, 0)):
        messages += chunk
    bus = await _bus(kafka_bootstrap)
    try:
        await bus.send(messages, owner=0)
        await bus.send(_records(b, 3, 0), owner=0)  # a second transaction after the first, on the same partition
    finally:
        await bus.stop()
    async with Reader(kafka_bootstrap, a, 2) as ra, Reader(kafka_bootstrap, b, 1) as rb:
        got_a, got_b = _by_partition(await ra.to_end()), _by_partition(await rb.to_end())
    assert got_a == _by_partition([m for m in messages if m.topic == a])
    assert got_b == _by_partition([m for m in messages if m.topic == b] + _records(b, 3, 0))
    assert sorted(got_a) == [0, 1]


async def test_records_without_a_partition_go_by_key_in_order(kafka_bootstrap, kafka_topic_factory):
    topic = await kafka_topic_factory("bus-keyed", 3)
    messages = _records(topic, 40, None)
    bus = await _bus(kafka_bootstrap)
    try:
        await bus.send(messages, owner=0)
    finally:
        await bus.stop()
    async with Reader(kafka_bootstrap, topic, 3) as r:
        records = await r.to_end()
    assert len(records) == len(messages)
    # One key, one partition, the key's records in the order given.
    partition_of = {}
    for rec in records:
        assert partition_of.setdefault(rec.key, rec.partition) == rec.partition
    for key in {m.key for m in messages}:
        assert [(rec.value, tuple(rec.headers)) for rec in records if rec.key == key] == [
            (m.value, tuple(m.headers)) for m in messages if m.key == key
        ]
