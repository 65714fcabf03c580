"""The order in which records of several partitions are taken: by time, each partition in offset order.

The live worker and the replay must take a blueprint's requests (decisions) and outcomes in the same order where
the join's outcome depends on it (an outcome meeting a decision whose deadline and retention the clock passed just
before; the change detector's fold order). Kafka orders records within a partition only, so both merge the
partitions of what they read by record timestamp — the replay over the whole log, the worker within each batch —
each partition in offset order (a k-way merge: a producer's clock may run backwards, and a partition's order is
never changed). A selection stands where the worker read the request it answers (its ``source.timestamp``
header), not where it was published, which is later. Ties go by topic rank, then partition and offset.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from seedworker.broker.base import Message
from seedworker.contract import headers as hdr
from seedworker.core.config import Topics


def ranks(topics: Topics) -> dict[str, int]:
    """How ties of one timestamp are broken, for the worker and the replay alike: a dead letter first (the replay
    reads them ahead), then a decision (its request, or its selection), a strategy switch, an outcome."""
    return {topics.dead_letters: 0, topics.requests: 1, topics.selections: 1, topics.control: 2, topics.outcomes: 3}


def merge_timestamp(topic: str, timestamp: int, headers, selections: str) -> int:
    """The time a record is merged at: its own timestamp, a selection's request's if it names one."""
    if topic == selections:
        t = hdr.int_value(headers, hdr.SOURCE_TIMESTAMP)
        if t is not None:
            return t
    return timestamp


def in_time_order(messages: list[Message], rank: Mapping[str, int], selections: str) -> list[Message]:
    """``messages`` merged by ``merge_timestamp``, each (topic, partition) in the order given."""
    runs: dict[tuple[str, int], list[Message]] = {}
    for m in messages:
        runs.setdefault((m.topic, m.partition), []).append(m)
    if len(runs) <= 1:
        return messages

    def key(m: Message, i: int) -> tuple:
        t = merge_timestamp(m.topic, m.timestamp_ms, m.headers, selections)
        return t, rank.get(m.topic, len(rank)), m.topic, m.partition, m.offset, i

    heap = [(*key(run[0], 0), tp) for tp, run in runs.items()]
    heapq.heapify(heap)
    out = []
    while heap:
        *_, i, tp = heapq.heappop(heap)
        run = runs[tp]
        out.append(run[i])
        if i + 1 < len(run):
            heapq.heappush(heap, (*key(run[i + 1], i + 1), tp))
    return out
