"""The message bus the worker talks to: Kafka through aiokafka, or an in-memory bus for unit tests and `simulate`.

Both implement the same small contract (``Bus``): start/stop, ensure topics, poll a batch, seek, send a batch and
wait for the acknowledgements, commit offsets. The worker never sees aiokafka types.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Protocol

from .config import KafkaSettings

log = logging.getLogger("seedworker.bus")

Headers = tuple[tuple[str, bytes], ...]
TP = tuple[str, int]
OnAssign = Callable[[list[TP]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = ()


class BusError(RuntimeError):
    pass


class Bus(Protocol):
    async def start(self, topics: list[str], on_assign: OnAssign, on_revoke: OnAssign) -> None: ...
    async def stop(self) -> None: ...
    async def ensure_topics(self, partitions: dict[str, int]) -> dict[str, int]: ...
    async def poll(self, timeout_ms: int, max_records: int) -> list[Message]: ...
    def seek(self, tp: TP, offset: int) -> None: ...
    async def send(self, messages: Iterable[Outgoing]) -> None: ...
    async def commit(self, offsets: dict[TP, int]) -> None: ...


def partition_for(key: bytes | None, partitions: int) -> int:
    # Only the in-memory bus uses this; Kafka's producer uses murmur2 itself.
    return zlib.crc32(key or b"") % partitions


@dataclass
class MemoryBus:
    """An in-process stand-in for Kafka with the same contract: partitions, offsets, a consumer group of one."""

    topics: dict[str, list[list[Message]]] = field(default_factory=dict)
    committed: dict[TP, int] = field(default_factory=dict)
    _positions: dict[TP, int] = field(default_factory=dict)
    _subscribed: list[str] = field(default_factory=list)

    async def start(self, topics: list[str], on_assign: OnAssign, on_revoke: OnAssign) -> None:
        self._subscribed = list(topics)
        tps = [(t, p) for t in topics for p in range(len(self.topics.get(t, [])))]
        for tp in tps:
            self._positions[tp] = self.committed.get(tp, 0)
        await on_assign(tps)

    async def stop(self) -> None:
        self._subscribed = []

    async def ensure_topics(self, partitions: dict[str, int]) -> dict[str, int]:
        for name, n in partitions.items():
            self.topics.setdefault(name, [[] for _ in range(n)])
        return {name: len(parts) for name, parts in self.topics.items()}

    def produce(self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()) -> Message:
        parts = self.topics.setdefault(topic, [[]])
        p = partition_for(key, len(parts))
        msg = Message(topic, p, len(parts[p]), key, value, headers)
        parts[p].append(msg)
        return msg

    async def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        out: list[Message] = []
        for t in self._subscribed:
            for p, part in enumerate(self.topics.get(t, [])):
                pos = self._positions.get((t, p), 0)
                take = part[pos: pos + max_records - len(out)]
                out.extend(take)
                self._positions[(t, p)] = pos + len(take)
        if not out:
            await asyncio.sleep(min(timeout_ms, 5) / 1000)
        return out

    def seek(self, tp: TP, offset: int) -> None:
        self._positions[tp] = offset

    async def send(self, messages: Iterable[Outgoing]) -> None:
        for m in messages:
            self.produce(m.topic, m.key, m.value, m.headers)

    async def commit(self, offsets: dict[TP, int]) -> None:
        self.committed.update(offsets)

    def read(self, topic: str) -> list[Message]:
        return [m for part in self.topics.get(topic, []) for m in part]


class KafkaBus:
    """aiokafka underneath: a consumer in a group with manual commits, an idempotent producer with acks=all."""

    def __init__(self, settings: KafkaSettings):
        self.settings = settings
        self._consumer = None
        self._producer = None

    def _common(self) -> dict:
        s = self.settings
        opts: dict = {"bootstrap_servers": s.bootstrap_servers, "client_id": s.client_id,
                      "security_protocol": s.security_protocol}
        if s.sasl_mechanism:
            opts.update(sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username,
                        sasl_plain_password=s.sasl_password)
        if s.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            opts["ssl_context"] = ssl.create_default_context(cafile=s.ssl_cafile)
        return opts

    async def _retry(self, what: str, fn):
        """Connect with exponential backoff, saying where it is trying, until connect_timeout_s runs out."""
        from aiokafka.errors import KafkaConnectionError, KafkaError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.connect_timeout_s
        delay = 0.25
        while True:
            try:
                return await fn()
            except (KafkaConnectionError, KafkaError, OSError) as exc:
                if loop.time() + delay > deadline:
                    raise BusError(f"cannot reach Kafka at {self.settings.bootstrap_servers} for {what}: {exc}") from exc
                log.warning("Kafka at %s not reachable for %s (%s); retrying in %.1fs",
                            self.settings.bootstrap_servers, what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def ensure_topics(self, partitions: dict[str, int]) -> dict[str, int]:
        """Create missing topics; return the partition count of every topic asked for."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(**self._common())
        await self._retry("the admin client", admin.start)
        try:
            existing = await self._describe(admin, list(partitions))
            missing = [NewTopic(name, n, self.settings.replication_factor)
                       for name, n in partitions.items() if name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass  # another worker created it first
                for _ in range(50):
                    existing = await self._describe(admin, list(partitions))
                    if all(name in existing for name in partitions):
                        break
                    await asyncio.sleep(0.1)
            return existing
        finally:
            await admin.close()

    @staticmethod
    async def _describe(admin, names: list[str]) -> dict[str, int]:
        out = {}
        topics = set(await admin.list_topics())
        for desc in await admin.describe_topics([n for n in names if n in topics]):
            if desc.get("error_code", 0) == 0 and desc.get("partitions"):
                out[desc["topic"]] = len(desc["partitions"])
        return out

    async def start(self, topics: list[str], on_assign: OnAssign, on_revoke: OnAssign) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.abc import ConsumerRebalanceListener

        s = self.settings

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                await on_revoke([(tp.topic, tp.partition) for tp in revoked])

            async def on_partitions_assigned(self, assigned):
                await on_assign([(tp.topic, tp.partition) for tp in assigned])

        self._producer = AIOKafkaProducer(**self._common(), enable_idempotence=True, acks="all", linger_ms=1)
        await self._retry("the producer", self._producer.start)
        self._consumer = AIOKafkaConsumer(
            **self._common(), group_id=s.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=s.max_batch, isolation_level="read_uncommitted",
            # The control topic (and, at times, the outcomes) are idle: with the default 500 ms the broker parks a
            # fetch for them and the busy partitions wait behind it (measured: p99 poll lag 160 -> 600 ms).
            fetch_max_wait_ms=s.fetch_max_wait_ms,
        )
        await self._retry("the consumer", self._consumer.start)
        self._consumer.subscribe(topics, listener=Listener())

    async def stop(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:  # closing must not hide the reason we are closing
                    log.warning("error while closing a Kafka client: %s", exc)
        self._consumer = self._producer = None

    async def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out = []
        for records in batches.values():
            for r in records:
                out.append(Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()),
                                   r.timestamp))
        return out

    def seek(self, tp: TP, offset: int) -> None:
        from aiokafka import TopicPartition

        self._consumer.seek(TopicPartition(*tp), offset)

    async def send(self, messages: Iterable[Outgoing]) -> None:
        futures = [await self._producer.send(m.topic, m.value, key=m.key, headers=list(m.headers)) for m in messages]
        if futures:
            await asyncio.gather(*futures)

    async def commit(self, offsets: dict[TP, int]) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import CommitFailedError, IllegalStateError

        try:
            await self._consumer.commit({TopicPartition(*tp): off for tp, off in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # SQLite holds the true offsets; Kafka's commit only feeds lag monitoring, so a rebalance race is harmless.
            log.info("Kafka group commit skipped: %s", exc)
