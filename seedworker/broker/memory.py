"""An in-memory bus with the Kafka bus's contract: unit tests, property tests, `simulate` and users' own Tamiyo
integration tests (``Worker(settings, bus=MemoryBus(), burst=True)``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from seedworker.broker.base import TP, Committed, Fenced, Headers, Message, OnAssign, Outgoing, partition_for


class RecordClock:
    """Record timestamps: the wall clock in ms, one more than the last one when the clock has not moved on."""

    def __init__(self, now: Callable[[], float] = time.time):
        self.now = now
        self.last = 0

    def __iter__(self) -> RecordClock:
        return self

    def __next__(self) -> int:
        self.last = max(int(self.now() * 1000), self.last + 1)
        return self.last


@dataclass
class MemoryBus:
    """An in-process stand-in for Kafka with the same contract: partitions, offsets, a consumer group.

    One MemoryBus is one member of the group. ``member()`` is another member reading the same topics and committing to
    the same group; ``assign(partitions)`` hands a member other partitions the way Kafka's eager rebalance does (all
    of its partitions revoked, then the new ones assigned). A record's timestamp is the wall clock in milliseconds,
    as a producer's CreateTime, kept strictly increasing across the group so it also gives the produce order.

    Fencing as Kafka's transactional producers do it: ``fence(partitions)`` makes this member the only one that may
    publish for those input partitions (``send(..., owner=p)``); a member fenced since raises ``Fenced`` and
    publishes nothing of that call. ``delete_records`` is what retention does: the partition starts later."""

    topics: dict[str, list[list[Message]]] = field(default_factory=dict)
    committed: dict[TP, int] = field(default_factory=dict)
    owners: dict[TP, str] = field(default_factory=dict)  # commit metadata: who committed each offset
    assignment: set[int] | None = None  # the partition numbers of the subscribed topics this member owns; None: all
    clock: Iterator[int] = field(default_factory=lambda: RecordClock())
    _positions: dict[TP, int] = field(default_factory=dict)
    _subscribed: list[str] = field(default_factory=list)
    _broadcast: list[TP] = field(default_factory=list)
    _paused: set[TP] = field(default_factory=set)
    _listeners: tuple = ()
    # input partition -> the member (id) that fenced it last: shared by the members of the group, like the broker's
    # transaction coordinator
    fenced: dict[int, int] = field(default_factory=dict)
    starts: dict[TP, int] = field(default_factory=dict)  # first offset kept per partition (retention)

    def member(self, assignment: Iterable[int] | None = None) -> MemoryBus:
        """Another consumer in this group, on the same topics."""
        return MemoryBus(
            topics=self.topics,
            committed=self.committed,
            owners=self.owners,
            clock=self.clock,
            fenced=self.fenced,
            starts=self.starts,
            assignment=None if assignment is None else set(assignment),
        )

    def _owned(self) -> list[TP]:
        return [
            (t, p)
            for t in self._subscribed
            for p in range(len(self.topics.get(t, [])))
            if self.assignment is None or p in self.assignment
        ]

    async def start(self, topics: list[str], on_assign: OnAssign, on_revoke: OnAssign) -> None:
        self._subscribed = list(topics)
        self._listeners = (on_assign, on_revoke)
        await self._assigned()

    async def assign(self, partitions: Iterable[int]) -> None:
        """A rebalance as this member sees it: everything it had is revoked, then ``partitions`` are assigned."""
        await self._listeners[1](self._owned())
        self.assignment = set(partitions)
        await self._assigned()

    async def _assigned(self) -> None:
        self._paused.clear()
        tps = self._owned()
        for tp in tps:
            self._positions[tp] = self.committed.get(tp, 0)
        await self._listeners[0](tps)

    def broadcast(self, offsets: dict[TP, int]) -> None:
        self._broadcast = list(offsets)
        self._positions.update(offsets)

    async def catch_up(self, max_records: int) -> list[Message]:
        """Up to ``max_records`` records of the broadcast partitions that are on them now; empty once read up."""
        return self._read(self._broadcast, max_records)

    def _read(self, tps: list[TP], max_records: int) -> list[Message]:
        """Up to ``max_records`` records of these partitions from their positions (at least where retention left
        them to start), in this order; the positions move past them."""
        out: list[Message] = []
        for t, p in tps:
            part = self.topics[t][p]
            pos = max(self._positions.get((t, p), 0), self.starts.get((t, p), 0))
            take = part[pos : pos + max_records - len(out)]
            out.extend(take)
            self._positions[(t, p)] = pos + len(take)
        return out

    async def stop(self) -> None:
        self._subscribed = []
        self._broadcast = []

    async def ensure_topics(
        self, partitions: dict[str, int], configs: dict[str, dict[str, str]] | None = None
    ) -> dict[str, int]:
        for name, n in partitions.items():
            self.topics.setdefault(name, [[] for _ in range(n)])
        return {name: len(parts) for name, parts in self.topics.items()}

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = (), partition: int | None = None
    ) -> Message:
        parts = self.topics.setdefault(topic, [[]])
        p = partition_for(key, len(parts)) if partition is None else partition
        msg = Message(topic, p, len(parts[p]), key, value, headers, next(self.clock))
        parts[p].append(msg)
        return msg

    async def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        # The control topic last, as it was when subscribed.
        tps = [tp for tp in self._owned() + self._broadcast if tp not in self._paused]
        out = self._read(tps, max_records)
        if not out:
            await asyncio.sleep(min(timeout_ms, 5) / 1000)
        return out

    def seek(self, tp: TP, offset: int) -> None:
        self._positions[tp] = offset

    def pause(self, tps: list[TP]) -> None:
        self._paused.update(tps)

    def resume(self, tps: list[TP]) -> None:
        self._paused.difference_update(tps)

    async def send(self, messages: Iterable[Outgoing], *, owner: int | None = None) -> None:
        batch = list(messages)  # all or nothing, as a transaction
        if owner is not None and self.fenced.get(owner) != id(self):
            raise Fenced(f"input partition {owner} was fenced by another member of the group", owner)
        for m in batch:
            self.produce(m.topic, m.key, m.value, m.headers, m.partition)

    async def fence(self, partitions: list[int]) -> None:
        for p in partitions:
            self.fenced[p] = id(self)

    async def release(self, partitions: list[int]) -> None:
        pass  # the fence stays until another member takes it, as a transactional id's epoch does

    def delete_records(self, tp: TP, before: int) -> None:
        """Retention: the records of ``tp`` before offset ``before`` are gone."""
        self.starts[tp] = max(self.starts.get(tp, 0), before)

    async def commit(self, offsets: dict[TP, int], owner: str = "") -> bool:
        self.committed.update(offsets)
        self.owners.update(dict.fromkeys(offsets, owner))
        return True

    async def fetch_committed(self, tps: list[TP]) -> dict[TP, Committed]:
        return {tp: Committed(self.committed[tp], self.owners.get(tp, "")) for tp in tps if tp in self.committed}

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[_MemoryReader]:
        yield _MemoryReader(self)

    def read(self, topic: str) -> list[Message]:
        return [m for part in self.topics.get(topic, []) for m in part]

    async def lag(self) -> dict[TP, int]:
        """Messages not consumed yet, per assigned partition."""
        return {
            (t, p): len(self.topics[t][p]) - self._positions.get((t, p), 0) for t, p in self._owned() + self._broadcast
        }


class _Record(NamedTuple):
    """The attributes of aiokafka's ConsumerRecord that a reader of whole partitions uses."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers


class _MemoryReader:
    """The part of a group-less aiokafka consumer that seedworker.engine.replay.merged reads with, over a MemoryBus."""

    def __init__(self, bus: MemoryBus):
        self.bus = bus
        self._positions: dict[TP, int] = {}

    def _part(self, tp) -> list[Message]:
        return self.bus.topics[tp[0]][tp[1]]

    def assign(self, tps) -> None:
        self._positions = dict.fromkeys(tps, 0)

    async def beginning_offsets(self, tps) -> dict:
        return {tp: self.bus.starts.get((tp[0], tp[1]), 0) for tp in tps}

    async def end_offsets(self, tps) -> dict:
        return {tp: len(self._part(tp)) for tp in tps}

    def seek(self, tp, offset: int) -> None:
        self._positions[tp] = offset

    async def position(self, tp) -> int:
        return self._positions[tp]

    async def getmany(self, *tps, timeout_ms: int = 0, max_records: int = 500) -> dict:
        out = {}
        for tp in tps:
            pos = max(self._positions[tp], self.bus.starts.get((tp[0], tp[1]), 0))
            records = [
                _Record(m.topic, m.partition, m.offset, m.timestamp_ms, m.key, m.value, m.headers)
                for m in self._part(tp)[pos : pos + max_records]
            ]
            if records:
                out[tp] = records
                self._positions[tp] = pos + len(records)
        return out
