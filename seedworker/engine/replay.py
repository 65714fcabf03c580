"""``seedworker replay``: rebuild the worker's state into a fresh SQLite store from the Kafka topics.

Disaster recovery: the store is gone (or not to be trusted), the topics are not. The replay reads the decision log
(``seed.selected``), the outcomes (``adaptation.outcome``), the strategy switches (``seedworker.control``) and the
dead letters (``seedworker.dlq``), from the earliest offsets or from a timestamp, and writes a store with the
worker's schema that ``seedworker run`` continues from.

It decides nothing. The batch processor (seedworker.engine.processor) is fed the merged records with
``replay=True``: a logged selection takes the place of its request (applied to the state, stored, waiting in the
join; nothing published), and outcomes and switches are handled exactly as live, so holding, joining, duplicates,
late and mismatched outcomes, dangling outcomes and expiry are the live rules (seedworker.core.join). The records
of all partitions are merged by Kafka timestamp, each partition in offset order: a blueprint's selections share a
partition, so its decisions keep their order. Event time is kept per input partition, and what the join learns
does not depend on the order of a decision and its outcomes, so how the merge interleaves partitions changes
nothing. A selection re-sent for a retried request or re-published after a crash is applied once.

Offsets of the rebuilt store: for the outcomes and the control topic, what the replay read; for
``graft.requested``, one past the last record that a selection (headers ``source.partition``/``source.offset``) or a
dead letter (``dlq.source.*``) answered, per partition. A worker started on it neither decides history again nor
skips a request; requests nobody answered yet (a backlog) are decided by that worker, and the summary counts them.

The rebuilt state equals the live worker's for the same events (counts exactly, floating-point statistics to
rounding), with these limits:

* the settings must be the live worker's (reward, decay, features, warm start, join): they are not in the topics;
* an outcome whose decision is not known yet is held; the live worker dropped it as dangling after
  ``join.hold_unknown_s`` of event time, or treated it as one of an unknown decision because it had pruned the
  decision already, both of which depended on when it read each record. The replay reads the dead letters first
  and drops exactly the outcomes the live worker dropped (their dead letters name them), whenever it meets them,
  and drops nothing by time; it keeps pruned decisions in its join window. Left: an outcome of a decision live had
  pruned that live still holds at the end of the log is joined by the replay; an outcome held at the end of the
  replay stays held in the rebuilt store (a worker on it drops it by time); dead letters deleted by retention drop
  nothing;
* ``held_outcomes`` can be higher than live's: an outcome produced before its selection was published is held by
  the replay even when the live worker happened to read it after the request (the learned result is the same);
* selections published by a worker older than the source headers give no request offsets and no
  ``duplicate_requests``; the summary then counts the requests a worker on the rebuilt store would decide;
* from a timestamp, the state holds what came from then on: outcomes of earlier decisions are held (and dropped
  as dangling by a worker on the rebuilt store),
  and a request from before it that nobody answered is not decided by a worker on the rebuilt store.

When retention has deleted the beginning of a topic, the replay names each partition and its first available offset
and reports what it rebuilt from the rest (``complete: false``).
"""

from __future__ import annotations

import heapq
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from tqdm import tqdm

from seedworker.broker.base import Message
from seedworker.broker.security import client_options
from seedworker.contract import headers as hdr
from seedworker.core.config import Settings
from seedworker.core.join import DANGLING
from seedworker.engine.merge import merge_timestamp, ranks
from seedworker.engine.processor import Processor
from seedworker.store.rows import Batch
from seedworker.store.store import Store

log = logging.getLogger("seedworker.engine.replay")

STALL_S = 30.0  # no record for this long from a partition that is not read to its end: give up, say which


class ReplayError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Span:
    """The records of one partition the replay reads, ``[start, end)``; ``first`` is the first offset still stored."""

    topic: str
    partition: int
    start: int
    end: int
    first: int


@dataclass
class Summary:
    db: str
    since: str | None
    complete: bool  # no record the replay was asked for had been deleted
    records: dict[str, int]  # per topic, records read
    first_record: str | None  # Kafka timestamps of the first and last record replayed (UTC)
    last_record: str | None
    decisions: int
    resent_selections: int  # copies of a decision already applied (retried requests, re-publishing after a crash)
    unreadable_selections: int
    counters: dict[str, int]
    blueprints: int
    pending_decisions: int
    held_outcomes: int
    request_offsets: dict[int, int]  # graft.requested partition -> next offset of the rebuilt store
    undecided_requests: dict[int, int]  # graft.requested partition -> records after that offset (a backlog)
    retention: list[dict] = field(default_factory=list)  # {"topic", "partition", "first_offset", "note"}
    missing_topics: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        c = self.counters
        lines = []
        for gap in self.retention:
            lines.append(f"WARNING: {gap['topic']}[{gap['partition']}]: {gap['note']}")
        if self.retention:
            lines.append(
                "WARNING: the rebuilt state lacks the deleted records: outcomes whose decision was deleted "
                "are held, then dropped as dangling after join.hold_unknown_s of event time"
            )
        for topic in self.missing_topics:
            lines.append(f"note: topic {topic} does not exist; nothing read from it")
        lines.append(
            "read "
            + ", ".join(f"{t} {n}" for t, n in self.records.items())
            + (f" (since {self.since})" if self.since else "")
        )
        if self.first_record:
            lines.append(f"  record timestamps {self.first_record} .. {self.last_record}")
        lines.append(f"rebuilt {self.db}{' (INCOMPLETE: see the warnings above)' if not self.complete else ''}:")
        lines.append(
            f"  {self.decisions} decisions over {self.blueprints} blueprints, {self.pending_decisions} "
            f"still pending; {self.resent_selections} re-sent selections skipped "
            f"({c.get('duplicate_requests', 0)} answered retried requests)"
        )
        lines.append(
            f"  outcomes: {c.get('outcomes_learned', 0)} learned, {c.get('duplicate_outcomes', 0)} "
            f"duplicate, {c.get('late_outcomes', 0)} late, {c.get('mismatched_outcomes', 0)} mismatched, "
            f"{c.get('dangling_outcomes', 0)} dangling, {self.held_outcomes} still held "
            f"({c.get('held_outcomes', 0)} held at some point)"
        )
        lines.append(
            f"  {c.get('expired_decisions', 0)} decisions expired, {c.get('strategy_switches', 0)} "
            f"strategy switches, {c.get('dead_letters', 0)} dead letters"
        )
        if self.unreadable_selections:
            lines.append(f"  {self.unreadable_selections} seed.selected records could not be read (skipped)")
        offsets = " ".join(f"[{p}]={o}" for p, o in sorted(self.request_offsets.items()))
        lines.append(f"  graft.requested continues at {offsets or '(no partition)'}")
        backlog = {p: n for p, n in self.undecided_requests.items() if n}
        if backlog:
            lines.append(
                "  requests not answered yet (a worker on this store decides them): "
                + " ".join(f"[{p}]={n}" for p, n in sorted(backlog.items()))
            )
        return "\n".join(lines)


class Replay:
    """The batch processor fed with logged records: ``await start()``, ``feed(message)`` for each record of the
    merged stream, ``finish(floors)``. Each batch the processor returns is written to the store."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.topics = settings.kafka.topics
        self.processor = Processor(settings, store, replay=True, on_resent=self._resent)
        self.counters: dict[str, int] = {}
        self.request_offsets: dict[int, int] = {}  # graft.requested partition -> one past the last answered record
        self.resent = 0
        self.first_ms: int | None = None  # Kafka timestamps of the first and last record replayed
        self.last_ms: int | None = None
        self._rejected: set[tuple[int, int]] = set()  # graft.requested records the worker dead-lettered
        self._dangling: set[tuple[int, int]] = set()  # adaptation.outcome records it dropped as dangling
        self._last_source: dict[tuple[int, int], int] = {}  # (selections partition, requests partition) -> offset
        self._novel: dict[tuple[int, int], bool] = {}  # selection (partition, offset) -> answers a record not seen
        self._queue: list[Message] = []

    async def start(self) -> Replay:
        await self.processor.restore()
        return self

    @property
    def selector(self):
        return self.processor.selector

    async def feed(self, m: Message) -> None:
        """The next record of the merged stream (any of the replayed topics)."""
        if m.topic == self.topics.dead_letters:
            self.dead_letter(m)
            return
        self.first_ms = m.timestamp_ms if self.first_ms is None else min(self.first_ms, m.timestamp_ms)
        self.last_ms = m.timestamp_ms if self.last_ms is None else max(self.last_ms, m.timestamp_ms)
        if m.topic == self.topics.selections:
            self._novel[(m.partition, m.offset)] = self._note_source(m)
        self._queue.append(m)
        if len(self._queue) >= self.settings.kafka.max_batch:
            await self.flush()

    async def flush(self) -> None:
        if self._queue:
            batch, self._queue = self._queue, []
            b = await self.processor.process(batch)
            await self.store.write(b)
            for name, n in b.counters.items():
                self.counters[name] = self.counters.get(name, 0) + n
            self._novel.clear()

    def _resent(self, m: Message, b: Batch) -> None:
        self.resent += 1
        if self._novel.get((m.partition, m.offset)):  # a copy for another graft.requested record: a retry
            b.count("duplicate_requests")

    def read_ahead(self, m: Message) -> None:
        """A record of the dead-letter topic read before the merged stream: an outcome the live worker dropped as
        dangling is dropped when the replay meets it, wherever the merge puts its dead letter (when live's hold
        ended, or whether it had pruned the decision yet, depended on its batches)."""
        dropped = self._dangling_source(m)
        if dropped is not None:
            self.processor.join.live_drops.add(dropped)

    def _dangling_source(self, m: Message) -> tuple[int, int] | None:
        """(input partition, offset) of the outcome a dead letter names, if it was dropped as dangling."""
        source = hdr.dead_letter_source(m.headers)
        if source is None or source[0] != self.topics.outcomes:
            return None
        return (source[1], source[2]) if (hdr.value(m.headers, hdr.DLQ_REASON) or "").startswith(DANGLING) else None

    def dead_letter(self, m: Message) -> None:
        """A record of the dead-letter topic: a rejected request counts, and answers its offset; a dangling outcome
        counts (``read_ahead`` had it dropped)."""
        dropped = self._dangling_source(m)
        if dropped is not None:
            self._dangling.add(dropped)
            return
        source = hdr.dead_letter_source(m.headers)
        if source is None or source[0] != self.topics.requests:
            return  # outcomes and control messages are replayed themselves, and rejected again
        _, p, o = source
        self._rejected.add((p, o))
        self.request_offsets[p] = max(self.request_offsets.get(p, 0), o + 1)

    async def finish(self, floors: dict[tuple[str, int], int]) -> dict[int, int]:
        """Process what is queued; store the input offsets and the dead letters of requests. ``floors``: where the
        replay started reading each input partition (a replay from a timestamp skips what came before, and so does
        a worker on the rebuilt store). Returns the request offsets."""
        await self.flush()
        stored = await self.store.offsets()
        offsets = {tp: max(o, stored.get(tp, 0)) for tp, o in floors.items()}
        for p, o in self.request_offsets.items():
            tp = (self.topics.requests, p)
            offsets[tp] = max(o, offsets.get(tp, 0))
        # Offset 0 is where a worker starts anyway: no row, as in a live store that never read the partition.
        b = Batch(offsets={tp: o for tp, o in offsets.items() if o > 0})
        if self._rejected or self._dangling:
            b.count("dead_letters", len(self._rejected) + len(self._dangling))
        await self.store.write(b)
        for name, n in b.counters.items():
            self.counters[name] = self.counters.get(name, 0) + n
        return {p: o for (t, p), o in offsets.items() if t == self.topics.requests}

    def _note_source(self, m: Message) -> bool:
        """Note the graft.requested record a selection answers. True unless an earlier selection on this partition
        answered it or a later record: the worker publishes in the order it read each request partition, so only a
        copy re-published after a crash goes back."""
        p, o = hdr.int_value(m.headers, hdr.SOURCE_PARTITION), hdr.int_value(m.headers, hdr.SOURCE_OFFSET)
        if p is None or o is None:
            return False
        if o >= self.request_offsets.get(p, 0):
            self.request_offsets[p] = o + 1
        key = (m.partition, p)
        if o <= self._last_source.get(key, -1):
            return False
        self._last_source[key] = o
        return True


# -- reading Kafka -----------------------------------------------------------------------------------------------
async def merged(
    consumer, spans: list[Span], rank: dict[str, int], selections: str | None = None
) -> AsyncIterator[Message]:
    """The records of ``spans`` in Kafka timestamp order, each partition in offset order (a k-way merge: a record
    is released only when every partition not read to its end has a record buffered to compare it with). Records
    of ``selections`` stand at their request's timestamp (seedworker.engine.merge), as the worker took them."""

    def at(tp, r) -> int:
        return r.timestamp if selections is None else merge_timestamp(tp.topic, r.timestamp, r.headers, selections)

    ends = {TopicPartition(s.topic, s.partition): s.end for s in spans if s.start < s.end}
    buffers: dict = {tp: deque() for tp in ends}
    for s in spans:
        if s.start < s.end:
            consumer.seek(TopicPartition(s.topic, s.partition), s.start)
    heap: list = []
    waiting = set(ends)  # partitions with nothing buffered and records still to read
    last_progress = time.monotonic()
    while heap or waiting:
        if waiting:
            fetched = await consumer.getmany(*waiting, timeout_ms=200)
            for tp, records in fetched.items():
                buffers[tp].extend(r for r in records if r.offset < ends[tp])
            for tp in list(waiting):
                if buffers[tp]:
                    waiting.discard(tp)
                    r = buffers[tp][0]
                    heapq.heappush(heap, (at(tp, r), rank[tp.topic], tp.partition, r.offset, tp))
                    last_progress = time.monotonic()
                elif await consumer.position(tp) >= ends[tp]:
                    waiting.discard(tp)  # read to its end (the last offsets may be transaction markers)
            if waiting:
                if time.monotonic() - last_progress > STALL_S:
                    names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(waiting))
                    raise ReplayError(
                        f"no records from {names} for {STALL_S:.0f}s although the replay has not "
                        f"reached their end offsets"
                    )
                continue
        *_, tp = heapq.heappop(heap)
        r = buffers[tp].popleft()
        yield Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp)
        if buffers[tp]:
            n = buffers[tp][0]
            heapq.heappush(heap, (at(tp, n), rank[tp.topic], tp.partition, n.offset, tp))
        elif await consumer.position(tp) < ends[tp]:
            waiting.add(tp)


async def in_offset_order(consumer, spans: list[Span]) -> AsyncIterator[tuple[int, list]]:
    """The records of ``spans`` as fetched: (partition, records in offset order), partition by partition within a
    fetch, no order across partitions (what reading a compacted changelog needs; ``merged`` would also order every
    record by timestamp, a heap operation and a Message per record)."""
    ends = {TopicPartition(s.topic, s.partition): s.end for s in spans if s.start < s.end}
    for s in spans:
        if s.start < s.end:
            consumer.seek(TopicPartition(s.topic, s.partition), s.start)
    waiting = set(ends)
    last_progress = time.monotonic()
    while waiting:
        fetched = await consumer.getmany(*waiting, timeout_ms=200)
        for tp, records in fetched.items():
            end = ends[tp]
            if records:
                last_progress = time.monotonic()
                yield tp.partition, records if records[-1].offset < end else [r for r in records if r.offset < end]
        for tp in list(waiting):
            if await consumer.position(tp) >= ends[tp]:
                waiting.discard(tp)  # read to its end (the last offsets may be transaction markers)
        if waiting and time.monotonic() - last_progress > STALL_S:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(waiting))
            raise ReplayError(
                f"no records from {names} for {STALL_S:.0f}s although the read has not reached their end offsets"
            )


async def _partitions(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partition counts of the topics that exist."""
    k = settings.kafka
    admin = AIOKafkaAdminClient(
        bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-replay", **client_options(k)
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        return {
            d["topic"]: len(d["partitions"])
            for d in await admin.describe_topics([n for n in names if n in existing])
            if d.get("error_code", 0) == 0 and d.get("partitions")
        }
    finally:
        await admin.close()


async def _plan(consumer, settings: Settings, since_ms: int | None):
    """(spans to read, graft.requested spans, topics that do not exist)."""
    t = settings.kafka.topics
    names = [t.selections, t.outcomes, t.control, t.dead_letters, t.requests]
    counts = await _partitions(settings, names)
    missing = [n for n in names if n not in counts]
    tps = [TopicPartition(n, p) for n in names if n in counts for p in range(counts[n])]
    if t.selections in missing:
        raise ReplayError(
            f"topic {t.selections} does not exist at {settings.kafka.bootstrap_servers}: "
            f"there is no decision log to replay"
        )
    first = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    start = dict(first)
    if since_ms is not None:
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        start = {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}
    spans = [Span(tp.topic, tp.partition, start[tp], end[tp], first[tp]) for tp in tps]
    consumer.assign([tp for tp in tps if tp.topic != t.requests])
    return ([s for s in spans if s.topic != t.requests], [s for s in spans if s.topic == t.requests], missing)


def _retention(spans: list[Span], since_ms: int | None) -> list[dict]:
    gaps = []
    for s in spans:
        if s.first == 0:
            continue
        if since_ms is None:
            note = (
                f"offsets 0-{s.first - 1} were deleted (retention); the replay starts at offset {s.first}, "
                f"the first available"
            )
        elif s.start == s.first and s.end > s.first:
            note = (
                f"offsets 0-{s.first - 1} were deleted (retention) and may have held records newer than the "
                f"requested timestamp; the replay starts at offset {s.first}, the first available"
            )
        else:
            continue
        gaps.append({"topic": s.topic, "partition": s.partition, "first_offset": s.first, "note": note})
    return gaps


def _files(db: Path) -> list[Path]:
    return [db] + [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def replay(
    settings: Settings, db: str | Path, *, since: datetime | None = None, progress: bool = False
) -> Summary:
    """Rebuild the state into the new store ``db`` from the topics of ``settings`` (the live worker's settings)."""
    path = Path(db)
    for p in _files(path):
        if p.exists():
            raise ReplayError(f"{p} exists: a replay writes a fresh store; remove it or choose another --db")
    # Written under another name and renamed when complete: a replay that fails half way must not leave a store
    # that `seedworker run` would continue from.
    partial = path.with_name(path.name + ".partial")
    for p in _files(partial):
        p.unlink(missing_ok=True)  # left by a replay that was killed
    since_ms = None if since is None else int(since.timestamp() * 1000)
    k = settings.kafka
    consumer = AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers,
        client_id=f"{k.client_id}-replay",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",  # the decision log as readers see it: no aborted (fenced) batch
        **client_options(k),
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise ReplayError(f"cannot reach Kafka at {k.bootstrap_servers}: {exc}") from exc
    try:
        try:
            spans, request_spans, missing = await _plan(consumer, settings, since_ms)
        except KafkaError as exc:
            raise ReplayError(f"cannot read the topics at {k.bootstrap_servers}: {exc}") from exc
        t = k.topics
        rank = ranks(t)
        store = await Store(partial).open()
        worker = await Replay(settings, store).start()
        records = {s.topic: 0 for s in spans}
        bar = tqdm(
            total=sum(s.end - s.start for s in spans),
            unit="rec",
            desc="replay",
            file=sys.stderr,
            disable=None if progress else True,
        )
        try:
            async for m in merged(consumer, [s for s in spans if s.topic == t.dead_letters], rank):
                worker.read_ahead(m)
            unshown = 0
            async for m in merged(consumer, spans, rank, t.selections):
                records[m.topic] += 1
                await worker.feed(m)
                unshown += 1
                if unshown == 256:
                    bar.update(unshown)
                    unshown = 0
            bar.update(unshown)
            inputs = (t.requests, t.outcomes, t.control)
            floors = {(s.topic, s.partition): s.start for s in spans + request_spans if s.topic in inputs}
            offsets = await worker.finish(floors)
            await store.close()  # the last connection checkpoints the WAL into the file and removes it
            partial.replace(path)
        except BaseException:
            await store.close()
            for p in _files(partial):
                p.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
    finally:
        await consumer.stop()
    ends = {s.partition: s.end for s in request_spans}
    c = dict(worker.counters)
    return Summary(
        db=str(path),
        since=None if since is None else since.astimezone(UTC).isoformat(),
        complete=not _retention(spans, since_ms),
        records=records,
        first_record=_iso(worker.first_ms),
        last_record=_iso(worker.last_ms),
        decisions=c.get("decisions", 0),
        resent_selections=worker.resent,
        unreadable_selections=worker.processor.unreadable_selections,
        counters=c,
        blueprints=len(worker.selector.blueprints),
        pending_decisions=len(worker.processor.join.pending),
        held_outcomes=worker.processor.join.held_count,
        request_offsets=offsets,
        undecided_requests={p: max(e - offsets.get(p, 0), 0) for p, e in ends.items()},
        retention=_retention(spans, since_ms),
        missing_topics=missing,
    )
