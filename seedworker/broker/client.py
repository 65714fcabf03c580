"""Tamiyo's side of the seed protocol: send ``graft.requested``, await the matching ``seed.selected``, report the
``adaptation.outcome``.

One :class:`SeedClient` per process is enough; it is safe to have many requests in flight at once (each waits on
its own future, matched by ``request_id``). Example — how Tamiyo fills its decision metadata from the selection::

    from seedworker.broker.client import SeedClient

    async with SeedClient(bootstrap_servers="127.0.0.1:9092", client_id="tamiyo") as seeds:
        selected = await seeds.request_seed(
            blueprint_id="resnet18-cifar10",
            seeds=[{"seed_id": f"layer3:{k}", "seed_idx": k, "state": "dormant"} for k in range(8)],
            context={"current_loss": 0.71, "current_accuracy": 0.78, "current_epoch": 12, "total_epochs": 100},
            timeout=2.0,
        )
        decision = AdaptationDecision(               # Tamiyo's own type
            layer_name="layer3",
            adaptation_type="add_seed",
            confidence=selected.propensity,
            metadata={
                "seed_idx": selected.seed_idx,       # which seed Kasmina germinates
                "seed_id": selected.seed_id,
                "selection_reason": selected.selection_reason,
                "decision_id": selected.decision_id,  # the join key of the outcome
                "strategy": selected.strategy,
            },
        )
        ...  # graft, train, measure
        await seeds.report_outcome(selected, accuracy_delta=0.012, latency_ms=14.0, memory_mb=96.0,
                                   throughput=410.0, success=True)

If no seedworker answers in time, ``request_seed`` raises :class:`TimeoutError` (Tamiyo falls back to its old default
then, e.g. seed 0).

Consumer: no consumer group; it is assigned every partition of ``seed.selected`` and, for partitions that existed
when the client started, positioned at their end *before* ``__aenter__`` returns, so no answer to a request sent
afterwards is missed. Partitions (or the whole topic) that appear later were created after the client started and
are read from their beginning. Selections for other clients' requests are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from seedworker.broker.aiokafka_internals import fetch_all_metadata
from seedworker.broker.base import AuthenticationError
from seedworker.broker.security import client_options, describe, refusal, refusal_reason
from seedworker.contract import events as ev
from seedworker.core.config import KafkaSettings, Topics

log = logging.getLogger("seedworker.broker.client")

JSON = b"application/json"
SeedLike = ev.SeedCandidate | Mapping[str, Any] | str


class ClientClosedError(RuntimeError):
    """The client was closed (or its consumer failed) while a request was waiting."""


class SeedClient:
    """Async context manager: ``async with SeedClient(bootstrap_servers=...) as client: ...``.

    ``timeout_s`` is the default of ``request_seed(timeout=...)`` and also bounds connecting to Kafka at start.
    ``kafka_options`` go to both aiokafka clients unchanged (e.g. ``security_protocol``, ``sasl_mechanism``;
    :meth:`from_settings` builds them from ``KafkaSettings``). Credentials or a TLS handshake the broker refuses
    raise :class:`~seedworker.broker.kafka.AuthenticationError` (a ``ConnectionError``) at start, without retrying.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str = "127.0.0.1:9092",
        topics: Topics | None = None,
        client_id: str = "tamiyo",
        timeout_s: float = 30.0,
        source: str = "tamiyo",
        metadata_refresh_s: float = 5.0,
        kafka_options: Mapping[str, Any] | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics or Topics()
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.source = source
        self.metadata_refresh_s = metadata_refresh_s
        self.kafka_options = dict(kafka_options or {})
        self._producer = None
        self._consumer = None
        self._task: asyncio.Task | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._assigned: set[int] = set()
        self._failure: BaseException | None = None
        self._started = False

    @classmethod
    def from_settings(cls, kafka: KafkaSettings, **kwargs: Any) -> SeedClient:
        """A client for the broker, topics and security settings (SASL, TLS) of a worker's ``settings.kafka``."""
        kwargs.setdefault("kafka_options", client_options(kafka))
        return cls(bootstrap_servers=kafka.bootstrap_servers, topics=kafka.topics, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<SeedClient {self.bootstrap_servers} selections={self.topics.selections!r} "
            f"partitions={sorted(self._assigned)} waiting={len(self._waiting)}>"
        )

    # -- life cycle ----------------------------------------------------------------------------------------------
    async def __aenter__(self) -> SeedClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:

        if self._started:
            raise RuntimeError("SeedClient already started")
        self._started = True
        common = {"bootstrap_servers": self.bootstrap_servers, "client_id": self.client_id, **self.kafka_options}
        try:
            self._producer = AIOKafkaProducer(**common, acks="all", enable_idempotence=True, linger_ms=1)
            await self._connect("producer", self._producer.start)
            # read_committed: the worker publishes an input partition's answers in transactions, and a worker that
            # was fenced (it lost the partition while paused) may have written answers whose transaction aborted.
            self._consumer = AIOKafkaConsumer(
                **common,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
            )
            await self._connect("consumer", self._consumer.start)
            # Position on the existing partitions now, before any request can be sent.
            await self._refresh_assignment(initial=True)
        except BaseException:
            await self.close()
            raise
        self._task = asyncio.create_task(self._dispatch_loop(), name="seedworker-client-dispatch")

    async def _connect(self, what: str, start) -> None:

        deadline = time.monotonic() + self.timeout_s
        delay = 0.2
        while True:
            try:
                await start()
                return
            except (KafkaConnectionError, KafkaError, OSError) as exc:
                # aiokafka reports refused credentials like an unreachable broker; ask once, they will not heal.
                reason = refusal_reason(exc) or await refusal(
                    self.bootstrap_servers, self.kafka_options, max(min(deadline - time.monotonic(), 10.0), 1.0)
                )
                if reason is not None:
                    where = describe(self.bootstrap_servers, self.kafka_options)
                    raise AuthenticationError(
                        f"SeedClient: Kafka refused the {what} ({where}): {reason}; not retried"
                    ) from exc
                if time.monotonic() + delay > deadline:
                    raise ConnectionError(
                        f"SeedClient: cannot reach Kafka at {self.bootstrap_servers} "
                        f"({what}) within {self.timeout_s:g}s: {exc}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        """Stop consuming and producing; requests still waiting fail with :class:`ClientClosedError`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._fail_waiting(ClientClosedError("SeedClient closed while the request was waiting"))
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:  # closing must not hide the reason we are closing
                    log.warning("error while closing a Kafka client: %s", exc)
        self._consumer = self._producer = None

    # -- the selections consumer ---------------------------------------------------------------------------------
    async def _refresh_assignment(self, initial: bool = False) -> None:
        """Assign every partition of the selections topic; new ones from their start, existing ones unchanged."""

        consumer, topic = self._consumer, self.topics.selections
        # consumer.topics() only returns names; the metadata it fetches (all topics) also has the partitions.
        for _ in range(50):
            cluster = await fetch_all_metadata(consumer)
            parts = set(cluster.partitions_for_topic(topic) or ())
            # A topic being created may list partitions without a leader yet: wait for them (up to 5 s).
            leaders = [cluster.leader_for_partition(TopicPartition(topic, p)) for p in parts]
            if all(leader is not None and leader >= 0 for leader in leaders):
                break
            await asyncio.sleep(0.1)
        new = parts - self._assigned
        if not new:
            return
        old = {p: await consumer.position(TopicPartition(topic, p)) for p in sorted(self._assigned)}
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        for p, pos in old.items():
            consumer.seek(TopicPartition(topic, p), pos)
        fresh = [TopicPartition(topic, p) for p in sorted(new)]
        if initial:
            # Existing partitions: only what is published from now on (end offsets, fetched now, not lazily).
            for tp, end in (await consumer.end_offsets(fresh)).items():
                consumer.seek(tp, end)
        else:
            # Created after we started, so everything in them is recent enough to be an answer we wait for.
            for tp in fresh:
                consumer.seek(tp, 0)
        self._assigned = set(parts)
        log.debug("assigned %s partitions %s", topic, sorted(parts))

    async def _dispatch_loop(self) -> None:

        next_refresh = time.monotonic() + self.metadata_refresh_s
        try:
            while True:
                if not self._assigned or time.monotonic() >= next_refresh:
                    try:
                        await self._refresh_assignment()
                    except KafkaError as exc:  # a metadata hiccup: keep consuming what is assigned, retry later
                        log.warning("cannot refresh the partitions of %s: %s", self.topics.selections, exc)
                    next_refresh = time.monotonic() + (self.metadata_refresh_s if self._assigned else 0.5)
                if not self._assigned:
                    await asyncio.sleep(0.5)
                    continue
                batches = await self._consumer.getmany(timeout_ms=200, max_records=1000)
                for records in batches.values():
                    for r in records:
                        self._dispatch(r.value)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.error("selections consumer failed: %r", exc)
            self._failure = exc
            self._fail_waiting(ClientClosedError(f"the seed.selected consumer failed: {exc!r}"))
            raise

    def _dispatch(self, value: bytes | None) -> None:
        if value is None or not self._waiting:
            return
        try:
            selected = ev.decode(value, ev.SEED_SELECTED)
        except ev.EventError as exc:
            log.warning("skipping an unreadable %s message: %s", self.topics.selections, exc)
            return
        fut = self._waiting.get(selected.request_id)  # type: ignore[attr-defined]
        if fut is not None and not fut.done():
            fut.set_result(selected)

    def _fail_waiting(self, exc: BaseException) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()

    # -- the API -------------------------------------------------------------------------------------------------
    async def request_seed(
        self,
        *,
        blueprint_id: str,
        seeds: Iterable[SeedLike],
        context: Mapping[str, float] | ev.TrainingContext | None = None,
        constraints: Mapping[str, float] | ev.Constraints | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        layer_name: str | None = None,
        strategy: str | None = None,
        trace_id: str | None = None,
    ) -> ev.SeedSelected:
        """Publish a ``graft.requested`` and return the worker's ``seed.selected`` for it.

        ``seeds`` are :class:`~seedworker.contract.events.SeedCandidate`, dicts of their fields, or plain seed ids (their
        ``seed_idx`` is then their position). A bad request raises :class:`~seedworker.contract.events.EventError` naming
        the field; no answer within ``timeout`` (default ``timeout_s``) raises :class:`TimeoutError`.
        Re-sending the same ``request_id`` is safe: the worker answers a retry with the decision it already made.
        """
        self._check_open()
        request = self._request(blueprint_id, seeds, context, constraints, request_id, layer_name, strategy, trace_id)
        rid = request.request_id
        if rid in self._waiting:
            raise ValueError(f"request_id {rid!r} is already waiting for its selection")
        limit = self.timeout_s if timeout is None else timeout
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut  # before sending: the answer may arrive before send() returns
        published = False
        try:
            async with asyncio.timeout(limit):
                await self._producer.send_and_wait(
                    self.topics.requests,
                    ev.encode(request),
                    key=request.blueprint_id.encode(),
                    headers=self._headers(ev.GRAFT_REQUESTED, request.trace_id),
                )
                published = True
                return await fut
        except TimeoutError:
            if published:
                why = (
                    f"the request was published to {self.topics.requests!r} but no answer arrived on "
                    f"{self.topics.selections!r}. Is a seedworker running against {self.bootstrap_servers}?"
                )
            else:
                why = (
                    f"the request could not be published to {self.topics.requests!r} at {self.bootstrap_servers} "
                    f"(does the topic exist? the worker creates it at start)"
                )
            raise TimeoutError(
                f"no seed selection for request {rid!r} (blueprint {blueprint_id!r}) within {limit:g}s: {why}"
            ) from None
        finally:
            if self._waiting.get(rid) is fut:
                del self._waiting[rid]

    async def report_outcome(
        self,
        selected: ev.SeedSelected,
        *,
        accuracy_delta: float,
        latency_ms: float = 0.0,
        memory_mb: float = 0.0,
        throughput: float = 0.0,
        success: bool = True,
        loss_delta: float = 0.0,
        occurred_at: datetime | None = None,
    ) -> ev.AdaptationOutcome:
        """Publish the ``adaptation.outcome`` of a selection (keyed by blueprint, like the request) and wait for
        the broker's acknowledgement. Returns the event that was sent."""
        self._check_open()
        raw: dict[str, Any] = {
            "event_type": ev.ADAPTATION_OUTCOME,
            "source": self.source,
            "trace_id": selected.trace_id,
            "correlation_id": selected.request_id,
            "decision_id": selected.decision_id,
            "request_id": selected.request_id,
            "blueprint_id": selected.blueprint_id,
            "seed_id": selected.seed_id,
            "accuracy_delta": accuracy_delta,
            "loss_delta": loss_delta,
            "latency_ms": latency_ms,
            "memory_mb": memory_mb,
            "throughput": throughput,
            "success": success,
        }
        if occurred_at is not None:
            raw["occurred_at"] = occurred_at
        outcome = ev.from_dict(raw, ev.ADAPTATION_OUTCOME)
        await self._producer.send_and_wait(
            self.topics.outcomes,
            ev.encode(outcome),
            key=selected.blueprint_id.encode(),
            headers=self._headers(
                ev.ADAPTATION_OUTCOME, outcome.trace_id, ("decision_id", selected.decision_id.encode())
            ),
        )
        return outcome  # type: ignore[return-value]

    # -- helpers -------------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._failure is not None:
            raise ClientClosedError(f"the seed.selected consumer failed: {self._failure!r}")
        if self._producer is None or self._task is None:
            raise ClientClosedError("SeedClient is not started (use 'async with SeedClient(...) as client')")

    def _request(
        self, blueprint_id, seeds, context, constraints, request_id, layer_name, strategy, trace_id
    ) -> ev.GraftRequested:
        candidates = []
        for k, s in enumerate(seeds):
            if isinstance(s, str):
                candidates.append({"seed_id": s, "seed_idx": k})
            elif isinstance(s, ev.SeedCandidate):
                candidates.append(s.model_dump(exclude_none=True))
            else:
                candidates.append(dict(s))
        if isinstance(context, ev.TrainingContext):
            context = context.values()
        if isinstance(constraints, ev.Constraints):
            constraints = constraints.model_dump(exclude_none=True)
        raw = {
            "event_type": ev.GRAFT_REQUESTED,
            "source": self.source,
            "request_id": request_id or f"{self.client_id}-{uuid.uuid4().hex}",
            "trace_id": trace_id or uuid.uuid4().hex,
            "blueprint_id": blueprint_id,
            "layer_name": layer_name,
            "seeds": candidates,
            "context": dict(context or {}),
            "constraints": constraints,
            "strategy": strategy,
        }
        return ev.from_dict({k: v for k, v in raw.items() if v is not None}, ev.GRAFT_REQUESTED)  # type: ignore

    @staticmethod
    def _headers(event_type: str, trace_id: str | None, *extra: tuple[str, bytes]) -> list[tuple[str, bytes]]:
        headers = [
            ("event_type", event_type.encode()),
            ("schema_version", ev.SCHEMA_VERSION.encode()),
            ("content-type", JSON),
        ]
        if trace_id:
            headers.append(("trace_id", trace_id.encode()))
        headers.extend(extra)
        return headers
