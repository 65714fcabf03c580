"""The Kafka bus: aiokafka underneath (a consumer in a group, manual commits, an idempotent producer, and one
transactional producer per owned input partition)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import NoReturn

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    CommitFailedError,
    IllegalOperation,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    TransactionalIdAuthorizationFailed,
)

from seedworker.broker.aiokafka_internals import pace_metadata_updates, transaction_failure
from seedworker.broker.base import TP, AuthenticationError, BusError, Committed, Fenced, Message, OnAssign, Outgoing
from seedworker.broker.security import client_options, describe, refusal, refusal_reason
from seedworker.core.config import KafkaSettings

log = logging.getLogger("seedworker.broker.kafka")


class KafkaBus:
    """aiokafka underneath: a consumer in a group with manual commits, an idempotent producer with acks=all.

    A broker outage is waited out: the consumer reconnects by itself, and ``send`` returns only once every message
    is acknowledged, sending again what the producer gave up on, until ``connect_timeout_s`` passes without any
    acknowledgement (then BusError; the worker's outbox still has the messages). ``producer_options`` go to
    AIOKafkaProducer as they are (tests shorten ``request_timeout_ms`` with it).

    ``fence(partitions)`` starts a transactional producer per input partition, transactional.id
    ``<group>-<partition>`` (Kafka Streams' first exactly-once design: a producer per task), and waits for its
    producer id: the broker has then fenced the partition's previous owner and aborted its open transaction.
    ``send(messages, owner=p)`` publishes them in one transaction of that producer. A fenced producer is never
    initialised again behind the caller's back (that would fence the partition's rightful new owner): the error
    is raised as ``Fenced`` and only a new assignment fences again.
    """

    def __init__(self, settings: KafkaSettings, *, producer_options: dict | None = None):
        self.settings = settings
        self.producer_options = dict(producer_options or {})
        self.producer_renewals = 0  # producers replaced after they gave up on messages
        self._consumer = None
        self._producer = None
        self._security: dict | None = None
        self._broadcast_offsets: dict[TP, int] = {}
        self._broadcast = None  # a group-less consumer of the partitions every member reads
        self._catch_up_to: dict | None = None  # their end offsets when catch_up was first called
        self._catch_up_deadline = 0.0
        self._admin = None  # reads the group's committed offsets with their metadata
        self._owned: dict[int, AIOKafkaProducer] = {}  # input partition -> its transactional producer

    def _common(self) -> dict:
        s = self.settings
        if self._security is None:  # built once: the three clients share one TLS context
            self._security = client_options(s)
        return {"bootstrap_servers": s.bootstrap_servers, "client_id": s.client_id, **self._security}

    async def _retry(self, what: str, fn):
        """Connect with exponential backoff, saying where it is trying, until connect_timeout_s runs out."""

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.connect_timeout_s
        delay = 0.25
        while True:
            try:
                return await fn()
            except (KafkaConnectionError, KafkaError, OSError) as exc:
                # aiokafka reports refused credentials like an unreachable broker; ask once, they will not heal.
                reason = refusal_reason(exc) or await refusal(
                    self.settings.bootstrap_servers, self._common(), max(min(deadline - loop.time(), 10.0), 1.0)
                )
                if reason is not None:
                    where = describe(self.settings.bootstrap_servers, self._security or {})
                    raise AuthenticationError(f"Kafka refused {what} ({where}): {reason}; not retried") from exc
                if loop.time() + delay > deadline:
                    raise BusError(
                        f"cannot reach Kafka at {self.settings.bootstrap_servers} for {what}: {exc}"
                    ) from exc
                log.warning(
                    "Kafka at %s not reachable for %s (%s); retrying in %.1fs",
                    self.settings.bootstrap_servers,
                    what,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def ensure_topics(
        self, partitions: dict[str, int], configs: dict[str, dict[str, str]] | None = None
    ) -> dict[str, int]:
        """Create missing topics (with ``configs[name]`` as their topic configuration); return the partition count of
        every topic asked for."""

        admin = AIOKafkaAdminClient(**self._common())
        await self._retry("the admin client", admin.start)
        try:
            existing = await self._describe(admin, list(partitions))
            missing = [
                NewTopic(name, n, self.settings.replication_factor, topic_configs=(configs or {}).get(name, {}))
                for name, n in partitions.items()
                if name not in existing
            ]
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

        s = self.settings

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                await on_revoke([(tp.topic, tp.partition) for tp in revoked])

            async def on_partitions_assigned(self, assigned):
                await on_assign([(tp.topic, tp.partition) for tp in assigned])

        self._producer = self._new_producer()
        await self._retry("the producer", self._producer.start)
        self._admin = AIOKafkaAdminClient(**self._common())
        await self._retry("the admin client", self._admin.start)
        if self._broadcast_offsets:
            self._broadcast = AIOKafkaConsumer(
                **self._common(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=s.fetch_max_wait_ms,
            )
            await self._retry("the consumer of the control topic", self._broadcast.start)
            self._broadcast.assign([TopicPartition(*tp) for tp in self._broadcast_offsets])
            for tp, offset in self._broadcast_offsets.items():
                self._broadcast.seek(TopicPartition(*tp), offset)
        self._consumer = AIOKafkaConsumer(
            **self._common(),
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_batch,
            isolation_level="read_uncommitted",
            # Idle partitions (at times the outcomes): with the default 500 ms the broker parks a fetch for them and
            # the busy partitions wait behind it (measured: p99 poll lag 160 -> 600 ms).
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            # Range assignment gives a member the same partition numbers of every topic (they have equal counts),
            # so a blueprint's requests and outcomes go to the same worker; round robin would split them.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
        )
        await self._retry("the consumer", self._consumer.start)
        self._consumer.subscribe(topics, listener=Listener())

    def broadcast(self, offsets: dict[TP, int]) -> None:
        """Before start: partitions every worker reads itself, outside the group (by assignment), from these
        offsets."""
        self._broadcast_offsets = dict(offsets)

    def _new_producer(self, **options):

        # A batch of decisions is ~2 KB each and sent at once: with the default 16 KB producer batches a 500-event
        # batch becomes ~70 produce requests in turn; 512 KB batches make it a few.
        producer = AIOKafkaProducer(
            **{
                **self._common(),
                "enable_idempotence": True,
                "acks": "all",
                "linger_ms": 1,
                "max_batch_size": 512 * 1024,
                "max_request_size": self.settings.max_request_size,
                **self.producer_options,
                **options,
            }
        )
        # Only through aiokafka's private client API (see seedworker.broker.aiokafka_internals).
        pace_metadata_updates(producer.client)
        return producer

    async def stop(self) -> None:
        await self.release(list(self._owned))
        for client in (self._consumer, self._broadcast, self._producer):
            if client is not None:
                try:
                    # The producer's stop waits for unacknowledged messages, forever while the broker is away: they
                    # are still in the outbox, so do not wait long.
                    await asyncio.wait_for(client.stop(), 10.0)
                except (TimeoutError, Exception) as exc:  # closing must not hide the reason we are closing
                    log.warning("error while closing a Kafka client: %r", exc)
        if self._admin is not None:
            try:
                await asyncio.wait_for(self._admin.close(), 10.0)
            except (TimeoutError, Exception) as exc:
                log.warning("error while closing a Kafka client: %r", exc)
        self._consumer = self._broadcast = self._producer = self._admin = None
        self._catch_up_to = None

    async def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        batches: dict = {}
        if self._broadcast is not None:
            # What the control consumer has fetched goes first; then the group's partitions, without waiting if
            # there was any.
            batches = await self._broadcast.getmany(timeout_ms=0)
        batches.update(await self._consumer.getmany(timeout_ms=0 if batches else timeout_ms, max_records=max_records))
        return _messages(batches)

    async def catch_up(self, max_records: int) -> list[Message]:
        """Up to ``max_records`` records of the broadcast partitions, up to the end offsets they had when this was
        first called (the worker's start); empty once read up to there."""
        consumer = self._broadcast
        if consumer is None:
            return []
        if self._catch_up_to is None:
            tps = list(consumer.assignment())
            self._catch_up_to = await self._retry("the control topic's end offsets", lambda: consumer.end_offsets(tps))
            self._catch_up_deadline = asyncio.get_running_loop().time() + self.settings.connect_timeout_s
        while True:
            behind = [tp for tp, end in self._catch_up_to.items() if await consumer.position(tp) < end]
            if not behind:
                return []
            batches = await consumer.getmany(*behind, timeout_ms=self.settings.poll_timeout_ms, max_records=max_records)
            if batches:
                return _messages(batches)
            if asyncio.get_running_loop().time() > self._catch_up_deadline:
                # The rest comes with the polls, beside the inputs, as it would without this step.
                log.warning("the control topic was not read up to its end within connect_timeout_s; going on")
                self._catch_up_to = {}
                return []

    def seek(self, tp: TP, offset: int) -> None:

        (self._broadcast if tp in self._broadcast_offsets else self._consumer).seek(TopicPartition(*tp), offset)

    def pause(self, tps: list[TP]) -> None:

        self._consumer.pause(*(TopicPartition(*tp) for tp in tps))

    def resume(self, tps: list[TP]) -> None:

        self._consumer.resume(*(TopicPartition(*tp) for tp in tps))

    async def fetch_committed(self, tps: list[TP]) -> dict[TP, Committed]:
        """The group's committed offsets with their metadata (who committed them), from the group coordinator."""

        found = await self._retry(
            "the group's committed offsets",
            lambda: self._admin.list_consumer_group_offsets(
                self.settings.group_id, partitions=[TopicPartition(*tp) for tp in tps]
            ),
        )
        return {
            (tp.topic, tp.partition): Committed(om.offset, om.metadata or "")
            for tp, om in found.items()
            if om.offset >= 0
        }

    @contextlib.asynccontextmanager
    async def reader(self):
        """A group-less consumer (nothing assigned yet) for reading whole partitions; stopped afterwards."""

        consumer = AIOKafkaConsumer(
            **self._common(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            # A reader takes whole partitions (a changelog is ~115 MiB for 1,000 blueprints): 16 MiB per partition
            # and fetch instead of aiokafka's 1 MiB makes that a few round trips, not a hundred (measured on
            # kafka_restore's changelog: 0.6-0.9 s instead of 0.9-1.35 s to read it, loadavg 3).
            max_partition_fetch_bytes=16 * 1024 * 1024,
            # Only what committed transactions published: never the records of a fenced worker's aborted batch.
            isolation_level="read_committed",
        )
        await self._retry("a reader", consumer.start)
        try:
            yield consumer
        finally:
            await consumer.stop()

    def transactional_id(self, partition: int) -> str:
        return f"{self.settings.group_id}-{partition}"

    async def fence(self, partitions: list[int]) -> None:
        """Become the only publisher for these input partitions (see the class docstring)."""
        for p in partitions:
            if p in self._owned:
                continue
            tid = self.transactional_id(p)
            producer = self._new_producer(transactional_id=tid)
            await self._retry(f"the transactional producer {tid!r}", producer.start)
            try:
                # begin waits for the producer id (InitProducerId): once it is there the broker has bumped the
                # epoch of this transactional.id, fencing whoever had it, and finished that owner's open
                # transaction (aborted). The empty transaction commits without a request.
                await asyncio.wait_for(producer.begin_transaction(), self.settings.connect_timeout_s)
                await producer.commit_transaction()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 10.0)
                if isinstance(exc, TimeoutError):
                    raise BusError(
                        f"Kafka at {self.settings.bootstrap_servers} gave no producer id to {tid!r} within "
                        f"{self.settings.connect_timeout_s:g}s"
                    ) from exc
                raise
            self._owned[p] = producer

    async def release(self, partitions: list[int]) -> None:
        """Stop the transactional producers of partitions this worker no longer owns."""
        for p in partitions:
            producer = self._owned.pop(p, None)
            if producer is not None:
                try:
                    await asyncio.wait_for(producer.stop(), 10.0)
                except (TimeoutError, Exception) as exc:
                    log.warning("error while closing the producer of partition %d: %r", p, exc)

    async def send(self, messages: Iterable[Outgoing], *, owner: int | None = None) -> None:
        """Return once Kafka acknowledged every message; ``owner``: in one transaction of that input partition's
        producer (``fence``)."""
        if owner is not None:
            return await self._send_transaction(list(messages), owner)
        return await self._send_idempotent(messages)

    async def _send_transaction(self, messages: list[Outgoing], p: int) -> None:
        producer = self._owned.get(p)
        if producer is None:
            raise BusError(f"input partition {p} is not fenced by this worker: it cannot publish for it")
        limit = self.settings.connect_timeout_s
        try:
            async with producer.transaction():
                futures = await _send_batches(producer, messages)
                if futures:
                    await asyncio.wait_for(asyncio.gather(*futures), limit)
        except _FENCED as exc:
            await self._fenced(p, producer, exc)
        except IllegalOperation as exc:
            # The background sender may have met the fencing first (answering the transaction's AddPartitionsToTxn):
            # then the send itself is refused as "not in transaction", and the reason is where the sender left it.
            cause = transaction_failure(producer)
            if isinstance(cause, _FENCED):
                await self._fenced(p, producer, cause)
            raise BusError(
                f"Kafka refused the transaction of {len(messages)} messages for input partition {p}: {exc!r}"
                + (f" after {cause!r}" if cause is not None else "")
            ) from exc
        except (KafkaError, TimeoutError) as exc:
            raise BusError(
                f"Kafka at {self.settings.bootstrap_servers} did not commit the transaction of {len(messages)} "
                f"messages for input partition {p} within {limit:g}s: {exc!r}"
            ) from exc

    async def _fenced(self, p: int, producer: AIOKafkaProducer, exc: BaseException) -> NoReturn:
        self._owned.pop(p, None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10.0)
        raise Fenced(
            f"the producer of input partition {p} ({self.transactional_id(p)!r}) was fenced: another worker "
            f"took the partition over (or this one paused longer than the transaction timeout); nothing of this "
            f"batch for it became visible ({exc!r})",
            p,
        ) from exc

    async def _send_idempotent(self, messages: Iterable[Outgoing]) -> None:
        """Return once Kafka acknowledged every message.

        While the broker is away the idempotent producer keeps retrying, and we wait. It gives up on a message
        whose partition had no known leader for ``request_timeout_ms`` (after a controlled broker shutdown the
        leaders are gone); such a message also spent a sequence number, so that producer then fails every later
        message for the partition with OutOfOrderSequenceNumber (measured with aiokafka 0.14). So what it gave up
        on is sent again on a new producer, with backoff. A message that was written but whose acknowledgement was
        lost can so appear twice, byte for byte; readers join selections by decision id. Raises BusError once
        ``connect_timeout_s`` passes without an acknowledgement, or at once for an error that retrying cannot fix.
        """

        pending = list(messages)
        loop = asyncio.get_running_loop()
        limit = self.settings.connect_timeout_s
        deadline = loop.time() + limit
        delay = 0.25
        while pending:
            futures = []
            error: BaseException | None = None
            try:
                for m in pending:
                    futures.append(
                        await self._producer.send(
                            m.topic, m.value, key=m.key, headers=list(m.headers), partition=m.partition
                        )
                    )
            except KafkaError as exc:  # no metadata for the topic, or the buffer stayed full, for request_timeout_ms
                error = exc
            if futures:
                _, waiting = await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0.0))
                if waiting:
                    raise BusError(
                        f"Kafka at {self.settings.bootstrap_servers} did not acknowledge {len(waiting)} "
                        f"of {len(pending)} messages within {limit:g}s"
                    )
            failed = [m for m, f in zip(pending, futures) if _failure(f)] + pending[len(futures) :]
            if not failed:
                return
            if error is None:
                error = next(_failure(f) for f in futures if _failure(f))
            if not _retriable(error):
                raise BusError(
                    f"Kafka at {self.settings.bootstrap_servers} refused {len(failed)} messages: {error!r}; not retried"
                ) from error
            if len(failed) < len(pending):
                deadline = loop.time() + limit  # progress: the time limit counts from the last acknowledgement
            if loop.time() + delay > deadline:
                raise BusError(
                    f"Kafka at {self.settings.bootstrap_servers} did not take {len(failed)} messages "
                    f"within {limit:g}s: {error!r}"
                ) from error
            log.warning(
                "Kafka did not take %d of %d messages (%r); sending them again on a new producer in %.2fs",
                len(failed),
                len(pending),
                error,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            await self._renew_producer()
            pending = failed

    async def _renew_producer(self) -> None:
        old, self._producer = self._producer, self._new_producer()
        try:
            await asyncio.wait_for(old.stop(), 10.0)  # every message it had is settled: this does not wait
        except (TimeoutError, Exception) as exc:
            log.warning("error while closing the old producer: %r", exc)
        await self._retry("a new producer", self._producer.start)
        self.producer_renewals += 1

    async def commit(self, offsets: dict[TP, int], owner: str = "") -> bool:
        """Commit ``offsets`` with ``owner`` as their metadata; False (logged) when it did not go through."""

        try:
            # aiokafka retries a commit until the group coordinator answers, i.e. for as long as the broker is away.
            await asyncio.wait_for(
                self._consumer.commit({TopicPartition(*tp): (off, owner) for tp, off in offsets.items()}),
                min(self.settings.connect_timeout_s, 5.0),
            )
        except (TimeoutError, CommitFailedError, IllegalStateError, KafkaError) as exc:
            # SQLite holds the true offsets; a group commit that did not go through costs a stale lag figure, or
            # (seedworker.engine.ownership) a rebuild by the partition's next owner, nothing else.
            log.info("Kafka group commit skipped: %r", exc)
            return False
        return True

    async def lag(self) -> dict[TP, int]:
        """High watermark minus position, per assigned partition. A partition without a fetch response yet has no
        known high watermark and is left out (unknown is not zero)."""

        if self._consumer is None:
            return {}
        out = {}
        for consumer in (self._consumer, self._broadcast):
            if consumer is None:
                continue
            # High watermarks first, with no await in between: the assignment cannot change under us here.
            highs = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
            for tp, high in highs.items():
                if high is None:
                    continue
                try:
                    # Returns at once for a partition with a valid position; one being reset would wait, so bound it.
                    position = await asyncio.wait_for(consumer.position(tp), 1.0)
                except (TimeoutError, IllegalStateError):
                    continue  # revoked meanwhile, or its position is being reset
                out[(tp.topic, tp.partition)] = max(high - position, 0)
        return out


# What a transactional producer is told when another worker opened the same transactional id since (or its epoch
# expired): it no longer owns the partition.
_FENCED = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)


async def _send_batches(producer: AIOKafkaProducer, messages: list[Outgoing]) -> list[asyncio.Future]:
    """Hand ``messages`` to the producer as record batches, one per topic partition (more when one would pass the
    producer's batch size), in their order within each partition; the futures of the batches' acknowledgements.

    Why not ``send`` per message: each call is a coroutine that checks metadata, partitions, serializes, appends to
    the accumulator and makes a future, and the worker publishes two records per decision (the answer and its
    changelog record). ``create_batch``/``send_batch`` (aiokafka's public batch API, which joins the transaction
    like ``send``) append each record to a batch directly: on bench/kafka_worker.py the worker's produce time fell
    from ~80 to ~58 µs per event (README, speed work of 2026-12-07). Messages without a partition (an
    output topic not aligned with the inputs) go through ``send``, whose partitioner picks it; then every message
    of the call does, so that a partition's records are never split between the two ways and stay in order."""
    if any(m.partition is None for m in messages):
        return [
            await producer.send(m.topic, m.value, key=m.key, headers=list(m.headers), partition=m.partition)
            for m in messages
        ]
    by_tp: dict[tuple[str, int], list[Outgoing]] = {}
    for m in messages:
        by_tp.setdefault((m.topic, m.partition), []).append(m)  # type: ignore[arg-type]
    futures = []
    for (topic, partition), records in by_tp.items():
        batch = producer.create_batch()
        for m in records:
            headers = list(m.headers)
            if batch.append(timestamp=None, key=m.key, value=m.value, headers=headers) is None:
                # Full: this batch goes as it is, and the record starts the next (an empty batch takes
                # any record: aiokafka lets the first one pass the batch size).
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(timestamp=None, key=m.key, value=m.value, headers=headers) is None:
                    raise BusError(f"a record of {len(m.value or b'')} bytes does not fit in an empty batch")
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


def _messages(batches: dict) -> list[Message]:
    out = []
    for records in batches.values():
        for r in records:
            out.append(Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp))
    return out


def _failure(future: asyncio.Future) -> BaseException | None:
    return asyncio.CancelledError() if future.cancelled() else future.exception()


def _retriable(exc: BaseException) -> bool:
    """Whether sending again (on a new producer) may succeed."""

    return isinstance(
        exc, (KafkaTimeoutError, KafkaConnectionError, OutOfOrderSequenceNumber, asyncio.TimeoutError, OSError)
    ) or bool(getattr(exc, "retriable", False))
