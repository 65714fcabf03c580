"""The aiokafka internals seedworker relies on (seedworker.broker.aiokafka_internals) are still there and still work.

These fail loudly on an aiokafka upgrade that renames, removes or changes one of them; at run time the worker would
only log a warning and lose what it was for (e.g. the pacing of failed metadata updates during a broker outage).
"""

from __future__ import annotations

import asyncio
import inspect

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import ProducerFenced

from seedworker.broker import aiokafka_internals as internals
from seedworker.broker.kafka import KafkaBus
from seedworker.core.config import KafkaSettings
from seedworker.dev.local_kafka import free_port


@pytest.fixture
def pauses(monkeypatch):
    taken: list[float] = []

    async def sleep(delay):
        taken.append(delay)

    monkeypatch.setattr(internals, "_sleep", sleep)
    return taken


def unreachable() -> str:
    return f"127.0.0.1:{free_port()}"


# -- what exists, with which signature ------------------------------------------------------------------------------
def test_metadata_update_is_a_coroutine_method_with_the_signature_wrapped():
    method = AIOKafkaClient._metadata_update
    assert inspect.iscoroutinefunction(method)
    assert tuple(inspect.signature(method).parameters) == ("self", *internals.METADATA_UPDATE_PARAMETERS)


def test_fetch_all_metadata_is_a_coroutine_method_without_arguments():
    method = AIOKafkaClient.fetch_all_metadata
    assert inspect.iscoroutinefunction(method)
    assert tuple(inspect.signature(method).parameters) == ("self",)
    for name in ("partitions_for_topic", "leader_for_partition"):  # what seedworker.broker.client reads of it
        assert callable(getattr(ClusterMetadata, name)), name


async def test_producers_and_consumers_hold_the_client_where_it_is_reached():
    producer = AIOKafkaProducer(bootstrap_servers=unreachable())
    consumer = AIOKafkaConsumer(bootstrap_servers=unreachable())
    try:
        assert isinstance(producer.client, AIOKafkaClient)
        assert isinstance(consumer._client, AIOKafkaClient)
        assert internals.metadata_update_fits(producer.client)
    finally:
        await producer.stop()
        await consumer.stop()


async def test_the_error_that_ended_a_transaction_is_found_where_the_sender_leaves_it():
    """A producer whose background sender met ProducerFenced: its send then refuses with IllegalOperation, and
    ``transaction_failure`` gives the fencing (KafkaBus._send_transaction classifies the refusal by it)."""
    producer = AIOKafkaProducer(bootstrap_servers=unreachable(), transactional_id="tx-test")
    try:
        assert internals.transaction_failure(producer) is None  # no transaction ended yet
        txn = producer._txn_manager
        txn.set_pid_and_epoch(1, 0)  # as after InitProducerId
        txn.begin_transaction()
        assert internals.transaction_failure(producer) is None  # a transaction under way
        txn.fatal_error(ProducerFenced())  # what the sender does on the broker's answer
        assert not txn.is_in_transaction()  # so send() raises IllegalOperation
        assert isinstance(internals.transaction_failure(producer), ProducerFenced)
    finally:
        await producer.stop()
    plain = AIOKafkaProducer(bootstrap_servers=unreachable())
    try:
        assert internals.transaction_failure(plain) is None  # not transactional
    finally:
        await plain.stop()


# -- the pacing -------------------------------------------------------------------------------------------------------
async def test_failed_metadata_updates_are_paced_exponentially_up_to_the_cap(pauses):
    client = AIOKafkaClient(bootstrap_servers=unreachable())
    try:
        assert internals.pace_metadata_updates(client, first_s=0.1, cap_s=0.5)
        assert getattr(client._metadata_update, "seedworker_paced", False)
        # No broker known: aiokafka's own update fails at once and says so with False, which the pacing relies on.
        results = [await client._metadata_update(client.cluster, None) for _ in range(5)]
        assert results == [False] * 5
        assert pauses == [0.1, 0.2, 0.4, 0.5]  # none before the first attempt
        assert internals.pace_metadata_updates(client)  # a second call does not wrap it twice
        await client._metadata_update(client.cluster, None)
        assert pauses == [0.1, 0.2, 0.4, 0.5, 0.5]
    finally:
        await client.close()


async def test_the_sender_path_goes_through_the_pacing(pauses):
    # The producer's sender asks for metadata with force_metadata_update(), which wakes the client's synchronizer
    # task, which calls _metadata_update on the instance: the wrapper must be on that path, not only callable.
    client = AIOKafkaClient(bootstrap_servers=unreachable())
    calls = []
    update = client._metadata_update

    async def counting(cluster_metadata, topics):
        calls.append(topics)
        return await update(cluster_metadata, topics)

    client._metadata_update = counting
    assert internals.pace_metadata_updates(client)
    client._sync_task = asyncio.create_task(client._md_synchronizer())  # what bootstrap() starts
    try:
        assert await client.force_metadata_update() is False
        assert await client.force_metadata_update() is False
        assert len(calls) == 2 and pauses == [0.1]
    finally:
        await client.close()


def test_a_client_without_the_hook_is_left_alone_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(internals, "_warned", False)

    class Changed:  # an aiokafka whose private method took another shape
        async def _metadata_update(self, cluster_metadata, topics, *, deadline):
            return True

    class Gone:
        pass

    for client in (Changed(), Gone()):
        original = getattr(client, "_metadata_update", None)
        assert not internals.pace_metadata_updates(client)
        assert getattr(client, "_metadata_update", None) == original
    warnings = [r for r in caplog.records if "not paced" in r.getMessage()]
    assert len(warnings) == 1  # once a process, not for every producer


async def test_the_kafka_bus_paces_every_producer_it_makes():
    bus = KafkaBus(KafkaSettings(bootstrap_servers=unreachable()))
    producer = bus._new_producer()
    try:
        assert getattr(producer.client._metadata_update, "seedworker_paced", False)
    finally:
        await producer.stop()


# -- against the real broker -----------------------------------------------------------------------------------------
@pytest.mark.kafka
async def test_fetch_all_metadata_lists_partitions_and_leaders(kafka_bootstrap, kafka_topic_factory):
    topic = await kafka_topic_factory("internals", 3)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        cluster = await internals.fetch_all_metadata(consumer)
        assert cluster.partitions_for_topic(topic) == {0, 1, 2}
        assert all(cluster.leader_for_partition(TopicPartition(topic, p)) >= 0 for p in range(3))
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_a_paced_producer_updates_metadata_through_the_wrapper(kafka_bootstrap, kafka_topic_factory, pauses):
    topic = await kafka_topic_factory("internals-paced", 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    calls = []
    update = producer.client._metadata_update

    async def counting(cluster_metadata, topics):
        calls.append(topics)
        return await update(cluster_metadata, topics)

    producer.client._metadata_update = counting
    assert internals.pace_metadata_updates(producer.client)
    await producer.start()
    try:
        await (await producer.send(topic, b"v"))  # needs the topic's metadata: fetched through the wrapper
        assert calls and await producer.client.force_metadata_update() is True
        assert pauses == []  # nothing failed: no pause
    finally:
        await producer.stop()
