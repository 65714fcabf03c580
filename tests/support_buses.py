"""One test case, both buses: the ``bus`` fixture runs a test once on the in-memory MemoryBus and once on the real
Kafka broker of tests/kafka_broker.py (test ids ending ``[memory]`` and ``[kafka]``; the Kafka one carries the
``kafka`` marker, so ``-m kafka`` selects it, and it never skips). A test module uses it with
``from tests.support_buses import bus, bus_backend  # noqa: F401 (fixtures)``.

Both sides offer the same few operations, in the worker's terms:

* ``await bus.create_topics(requests=2, ...)``: the worker's five topics (``PARTITIONS`` each, control 1, unless
  given); on Kafka they are deleted after the test. Call it before ``bus.settings()``.
* ``bus.settings(**overrides)``: Settings naming these topics, a fresh consumer group and a SQLite file in tmp_path.
* ``bus.worker(settings, **kw)``: a Worker on this bus; ``bus.running(settings)``: it runs as a task
  (support.running_worker), stopped and awaited at the end.
* ``await bus.send(kind, value, key, headers)``: produce to the topic of that kind; returns an awaitable of the
  record's (topic, partition, offset). ``await bus.flush()``.
* ``await bus.until(kind, cond, what)``: the records of a topic from its beginning, once ``cond(records)`` holds;
  ``await bus.to_end(kind)``: a new read of the whole topic, up to its current end.
* Below the worker: ``await bus.topic(prefix, partitions)`` creates a topic of its own, ``bus.send_to(topic, ...)``
  produces to it, ``bus.consumer()`` is a new, unstarted seedworker Bus (a MemoryBus group member, or a KafkaBus in
  a fresh consumer group).

Records are Kafka ConsumerRecords or MemoryBus Messages: both have topic, partition, offset, key, value, headers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from seedworker.broker.kafka import KafkaBus
from seedworker.broker.memory import MemoryBus
from seedworker.core.config import KafkaSettings, Settings, Topics
from seedworker.engine.worker import Worker
from tests.kafka_broker import unique_topic
from tests.support import eventually, running_worker
from tests.support_kafka import PARTITIONS, TOPIC_KINDS, Reader, topic_names


def _partitions(given: dict[str, int]) -> dict[str, int]:
    unknown = set(given) - set(TOPIC_KINDS)
    assert not unknown, f"no such topic kind: {unknown}"
    return {kind: given.get(kind, 1 if kind == "control" else PARTITIONS) for kind in TOPIC_KINDS}


class MemoryBusUnderTest:
    name = "memory"

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.bus = MemoryBus()
        self.topics: dict[str, str] = Topics().model_dump()

    async def create_topics(self, **partitions: int) -> dict[str, str]:
        await self.bus.ensure_topics({self.topics[kind]: n for kind, n in _partitions(partitions).items()})
        return self.topics

    def settings(self, **overrides) -> Settings:
        return Settings(
            db=str(self.tmp_path / "state.sqlite"),
            kafka={"topics": self.topics, "partitions": PARTITIONS, "output_partitions": PARTITIONS},
            **overrides,
        )

    def worker(self, settings: Settings, **kwargs) -> Worker:
        return Worker(settings, bus=self.bus, **kwargs)

    def running(self, settings: Settings):
        return running_worker(settings, bus=self.bus)

    async def topic(self, prefix: str, partitions: int = 1) -> str:
        name = unique_topic(prefix)
        await self.bus.ensure_topics({name: partitions})
        return name

    def consumer(self) -> MemoryBus:
        return self.bus.member()

    async def send(self, kind: str, value: bytes, key: bytes | None = None, headers=()):
        return await self.send_to(self.topics[kind], value, key, headers)

    async def send_to(self, topic: str, value: bytes, key: bytes | None = None, headers=()):
        m = self.bus.produce(topic, key, value, tuple(headers))
        done = asyncio.get_running_loop().create_future()
        done.set_result((m.topic, m.partition, m.offset))
        return done

    async def flush(self) -> None:
        pass

    async def until(self, kind: str, cond, what: str, timeout: float = 60.0) -> list:
        topic = self.topics[kind]
        await eventually(
            lambda: cond(self.bus.read(topic)),
            what,
            timeout,
            detail=lambda: f"({len(self.bus.read(topic))} records read)",
        )
        return self.bus.read(topic)

    async def to_end(self, kind: str) -> list:
        return self.bus.read(self.topics[kind])

    async def close(self) -> None:
        pass


class KafkaBusUnderTest:
    name = "kafka"

    def __init__(self, bootstrap: str, topic_factory, tmp_path: Path):
        self.bootstrap, self.topic_factory, self.tmp_path = bootstrap, topic_factory, tmp_path
        self.topics = topic_names("bus")
        self.producer: AIOKafkaProducer | None = None
        self.readers: dict[str, Reader] = {}

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self.producer.start()

    async def create_topics(self, **partitions: int) -> dict[str, str]:
        self.topics = {
            kind: await self.topic_factory(f"bus-{kind.replace('_', '-')}", n)
            for kind, n in _partitions(partitions).items()
        }
        return self.topics

    def settings(self, **overrides) -> Settings:
        return Settings(
            db=str(self.tmp_path / "state.sqlite"),
            kafka={
                "bootstrap_servers": self.bootstrap,
                "group_id": unique_topic("group"),
                "topics": self.topics,
                "partitions": PARTITIONS,
                "output_partitions": PARTITIONS,
            },
            **overrides,
        )

    def worker(self, settings: Settings, **kwargs) -> Worker:
        return Worker(settings, **kwargs)

    def running(self, settings: Settings):
        return running_worker(settings)

    async def topic(self, prefix: str, partitions: int = 1) -> str:
        return await self.topic_factory(prefix, partitions)

    def consumer(self) -> KafkaBus:
        return KafkaBus(KafkaSettings(bootstrap_servers=self.bootstrap, group_id=unique_topic("group")))

    async def send(self, kind: str, value: bytes, key: bytes | None = None, headers=()):
        return await self.send_to(self.topics[kind], value, key, headers)

    async def send_to(self, topic: str, value: bytes, key: bytes | None = None, headers=()):
        fut = await self.producer.send(topic, value, key=key, headers=list(headers) or None)

        async def metadata() -> tuple[str, int, int]:
            md = await fut
            return md.topic, md.partition, md.offset

        return asyncio.ensure_future(metadata())

    async def flush(self) -> None:
        await self.producer.flush()

    async def until(self, kind: str, cond, what: str, timeout: float = 60.0) -> list:
        if kind not in self.readers:
            reader = Reader(self.bootstrap, self.topics[kind])
            self.readers[kind] = await reader.__aenter__()
        return await self.readers[kind].until(cond, what, timeout)

    async def to_end(self, kind: str) -> list:
        async with Reader(self.bootstrap, self.topics[kind]) as reader:
            return await reader.to_end()

    async def close(self) -> None:
        try:
            for reader in self.readers.values():
                await reader.__aexit__(None, None, None)
        finally:
            if self.producer is not None:
                await self.producer.stop()


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus_backend(request, tmp_path):
    if request.param == "memory":
        return MemoryBusUnderTest(tmp_path)
    return KafkaBusUnderTest(
        request.getfixturevalue("kafka_bootstrap"), request.getfixturevalue("kafka_topic_factory"), tmp_path
    )


@pytest.fixture
async def bus(bus_backend):
    """The bus a test runs on: MemoryBusUnderTest, or KafkaBusUnderTest on the session's real broker."""
    if isinstance(bus_backend, KafkaBusUnderTest):
        await bus_backend.start()
    try:
        yield bus_backend
    finally:
        await bus_backend.close()
