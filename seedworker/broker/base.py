"""The message bus contract the engine talks to: Kafka through aiokafka, or an in-memory bus for unit tests and `simulate`.

Both implement the same small contract (``Bus``): start/stop, ensure topics, poll a batch, seek, send a batch and
wait for the acknowledgements, commit offsets.

**Fencing.** A worker publishes what answers an input partition (its selections, dead letters and changelog records)
as one atomic unit per batch through that partition's own publisher (``fence(partitions)`` opens them,
``send(messages, owner=p)`` publishes through one): on Kafka a transactional producer whose transactional.id is
made of the group and the partition, so the next owner's ``fence`` (``init_transactions``) fences the previous
one and aborts what it had not committed, and readers with ``isolation.level=read_committed`` never see the
zombie's records. A fenced publisher raises ``Fenced``. The engine never sees aiokafka types; `memory.MemoryBus` and `kafka.KafkaBus` implement it.

Several workers share the input partitions as one consumer group; partitions every worker must read (the control
topic) are read outside the group (``broadcast``). A group commit carries the committing worker's id as its
metadata, so whoever is assigned a partition next can tell who processed it last (``fetch_committed``). ``reader``
gives a group-less reader for rebuilding a partition's state from the topics (seedworker.engine.ownership).
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

Headers = tuple[tuple[str, bytes], ...]
TP = tuple[str, int]
OnAssign = Callable[[list[TP]], Awaitable[None]]


class Committed(NamedTuple):
    """A group's committed offset of a partition and who committed it (commit metadata; "" when not recorded)."""

    offset: int
    owner: str


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
    value: bytes | None  # None: a tombstone (compacted topics)
    headers: Headers = ()
    partition: int | None = None  # None: by key, as Kafka's default partitioner does


class BusError(RuntimeError):
    pass


class Fenced(BusError):
    """Another worker opened the publisher of an input partition since this one did: it owns the partition now, and
    nothing this worker publishes for it can become visible."""

    def __init__(self, message: str, partition: int):
        super().__init__(message)
        self.partition = partition


class AuthenticationError(BusError, ConnectionError):
    """The broker refused the credentials, the SASL mechanism or the TLS handshake: retrying will not help."""


class Bus(Protocol):
    async def start(self, topics: list[str], on_assign: OnAssign, on_revoke: OnAssign) -> None: ...
    async def stop(self) -> None: ...
    async def ensure_topics(
        self, partitions: dict[str, int], configs: dict[str, dict[str, str]] | None = None
    ) -> dict[str, int]: ...
    async def poll(self, timeout_ms: int, max_records: int) -> list[Message]: ...
    def seek(self, tp: TP, offset: int) -> None: ...
    async def send(self, messages: Iterable[Outgoing], *, owner: int | None = None) -> None: ...
    async def fence(self, partitions: list[int]) -> None: ...
    async def release(self, partitions: list[int]) -> None: ...
    async def commit(self, offsets: dict[TP, int], owner: str = "") -> bool: ...
    async def lag(self) -> dict[TP, int]: ...
    # scale-out: partitions read by every member, committed offsets with their owner, pausing, a group-less reader
    def broadcast(self, offsets: dict[TP, int]) -> None: ...
    async def catch_up(self, max_records: int) -> list[Message]: ...
    async def fetch_committed(self, tps: list[TP]) -> dict[TP, Committed]: ...
    def pause(self, tps: list[TP]) -> None: ...
    def resume(self, tps: list[TP]) -> None: ...
    def reader(self) -> AbstractAsyncContextManager: ...


def partition_for(key: bytes | None, partitions: int) -> int:
    # Only the in-memory bus uses this; Kafka's producer uses murmur2 itself.
    return zlib.crc32(key or b"") % partitions
