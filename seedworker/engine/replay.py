"""``seedworker replay``: rebuild the worker's state into a fresh SQLite store from the Kafka topics.

Disaster recovery: the store is gone (or not to be trusted), the topics are not. The replay reads the decision log
(``seed.selected``), the outcomes (``adaptation.outcome``), the strategy switches (``seedworker.control``) and the
dead letters (``seedworker.dlq``), from the earliest offsets or from a timestamp, and writes a store with the
worker's schema that ``seedworker run`` continues from.

It decides nothing. A logged selection takes the place of its request in the worker's own batch code
(``Worker.process`` -> ``Worker._on_selection``: ``apply_selection``, pending, a decisions row, nothing published);
outcomes and switches are handled exactly as live, so holding, joining, duplicates, late and mismatched outcomes,
dangling outcomes and expiry are the live code. The records of all partitions are merged by Kafka timestamp, each
partition in offset order: a blueprint's selections share a partition, so its decisions keep their order. (The
timestamps come from the producers' clocks; an outcome stamped before its selection is held until the selection
comes, then joined, so clock skew does not change what is learned.) A selection re-sent for a retried request or
re-published after a crash is applied once.

Offsets of the rebuilt store: for the outcomes and the control topic, what the replay read; for
``graft.requested``, one past the last record that a selection (headers ``source.partition``/``source.offset``) or a
dead letter (``dlq.source.*``) answered, per partition. A worker started on it neither decides history again nor
skips a request; requests nobody answered yet (a backlog) are decided by that worker, and the summary counts them.

The rebuilt state equals the live worker's for the same events (counts exactly, floating-point statistics to
rounding), with these limits:

* the settings must be the live worker's (reward, decay, features, warm start, join): they are not in the topics;
* expiry runs in event time: a decision expires (and an outcome whose decision never came is dropped as dangling)
  at the end of the batch in which the newest event time passes its deadline. The replay ends a batch right after
  such an event, which is what a live worker does when its batches are small; a live batch that also held the late
  outcome itself judged that outcome as "late" instead of "expired, then late". So replay equals live when outcomes
  come within ``join.reward_wait_s`` (default 3600 s) of their request, or clearly after it, and likewise for
  ``join.hold_unknown_s``;
* ``held_outcomes`` can be higher than live's: an outcome produced before its selection was published is held by
  the replay even when the live worker happened to read it after the request (the learned result is the same);
* selections published by a worker older than the source headers give no request offsets and no
  ``duplicate_requests``; the summary then counts the requests a worker on the rebuilt store would decide;
* from a timestamp, the state holds what came from then on: outcomes of earlier decisions are held (then dangling),
  and a request from before it that nobody answered is not decided by a worker on the rebuilt store.

When retention has deleted the beginning of a topic, the replay names each partition and its first available offset
and reports what it rebuilt from the rest (``complete: false``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator

from seedworker.contract import events as ev
from seedworker.broker.base import Message
from seedworker.core.config import Settings, load_settings
from seedworker.store.store import Batch, Store, StoreError
from seedworker.engine.worker import SOURCE_OFFSET, SOURCE_PARTITION, Worker, header_value

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
            lines.append("WARNING: the rebuilt state lacks the deleted records: outcomes whose decision was deleted "
                         "are held, then dropped as dangling after join.hold_unknown_s of event time")
        for topic in self.missing_topics:
            lines.append(f"note: topic {topic} does not exist; nothing read from it")
        lines.append("read " + ", ".join(f"{t} {n}" for t, n in self.records.items())
                     + (f" (since {self.since})" if self.since else ""))
        if self.first_record:
            lines.append(f"  record timestamps {self.first_record} .. {self.last_record}")
        lines.append(f"rebuilt {self.db}{' (INCOMPLETE: see the warnings above)' if not self.complete else ''}:")
        lines.append(f"  {self.decisions} decisions over {self.blueprints} blueprints, {self.pending_decisions} "
                     f"still pending; {self.resent_selections} re-sent selections skipped "
                     f"({c.get('duplicate_requests', 0)} answered retried requests)")
        lines.append(f"  outcomes: {c.get('outcomes_learned', 0)} learned, {c.get('duplicate_outcomes', 0)} "
                     f"duplicate, {c.get('late_outcomes', 0)} late, {c.get('mismatched_outcomes', 0)} mismatched, "
                     f"{c.get('dangling_outcomes', 0)} dangling, {self.held_outcomes} still held "
                     f"({c.get('held_outcomes', 0)} held at some point)")
        lines.append(f"  {c.get('expired_decisions', 0)} decisions expired, {c.get('strategy_switches', 0)} "
                     f"strategy switches, {c.get('dead_letters', 0)} dead letters")
        if self.unreadable_selections:
            lines.append(f"  {self.unreadable_selections} seed.selected records could not be read (skipped)")
        offsets = " ".join(f"[{p}]={o}" for p, o in sorted(self.request_offsets.items()))
        lines.append(f"  graft.requested continues at {offsets or '(no partition)'}")
        backlog = {p: n for p, n in self.undecided_requests.items() if n}
        if backlog:
            lines.append("  requests not answered yet (a worker on this store decides them): "
                         + " ".join(f"[{p}]={n}" for p, n in sorted(backlog.items())))
        return "\n".join(lines)


def _event_time(event: ev.Envelope) -> float:
    # A selection stands in for its request: the live worker's clock (watermark) moved with the request's time.
    if isinstance(event, ev.SeedSelected) and event.request_time is not None:
        return event.request_time.timestamp()
    return event.occurred_at.timestamp()


def _int_header(headers, name: str) -> int | None:
    value = header_value(headers, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Offline:
    """The replay worker's bus: a replay publishes and commits nothing, so any use of it is a bug."""

    def __getattr__(self, name: str):
        raise RuntimeError(f"a replay must not use the message bus (Bus.{name})")


class ReplayWorker(Worker):
    """The worker's batch code fed with logged events, in batches that end where an expiry deadline passes.

    ``feed(message)`` takes the next record of the merged stream, ``finish(floors)`` processes what is queued and
    writes the request offsets."""

    def __init__(self, settings: Settings, store: Store):
        super().__init__(settings, bus=_Offline(), store=store)  # type: ignore[arg-type]
        t = self.topics
        self._expected = {t.selections: ev.SEED_SELECTED, t.outcomes: ev.ADAPTATION_OUTCOME,
                          t.control: ev.STRATEGY_SWITCH}
        self.request_offsets: dict[int, int] = {}  # graft.requested partition -> one past the last answered record
        self.resent = 0
        self.unreadable = 0
        self.first_ms: int | None = None  # Kafka timestamps of the first and last record replayed
        self.last_ms: int | None = None
        self._rejected: set[tuple[int, int]] = set()  # graft.requested records the worker dead-lettered
        self._last_source: dict[tuple[int, int], int] = {}  # (selections partition, requests partition) -> offset
        self._batch: list[Message] = []
        self._batch_decisions: set[str] = set()  # decision ids of the selections in the batch
        self._decoded: deque[tuple[Message, ev.Envelope | None, str | None]] = deque()
        self._deadline = math.inf  # event time past which the batch must end (see admit)
        self._ahead = self.watermark  # the watermark once the queued messages are processed

    # -- feeding -------------------------------------------------------------------------------------------------
    async def feed(self, m: Message) -> None:
        """The next record of the merged stream (any of the replayed topics)."""
        if m.topic == self.topics.dead_letters:
            self.dead_letter(m)
            return
        self.first_ms = m.timestamp_ms if self.first_ms is None else min(self.first_ms, m.timestamp_ms)
        self.last_ms = m.timestamp_ms if self.last_ms is None else max(self.last_ms, m.timestamp_ms)
        if self.admit(m):
            await self.flush()

    def admit(self, m: Message) -> bool:
        """Queue a message; True when the batch must be processed now: it is full, or the newest event time has
        passed a deadline, after which the live worker's next batch end expired a decision or dropped a held
        outcome. Ending the batch right there expires exactly what the live worker expired after this event."""
        self._batch.append(m)
        try:
            if m.value is None:
                raise ev.EventError("empty message (no value)")
            event = ev.decode(m.value, self._expected[m.topic])
        except ev.EventError as exc:
            self._decoded.append((m, None, str(exc)))
            return len(self._batch) >= self.settings.kafka.max_batch
        self._decoded.append((m, event, None))
        t = _event_time(event)
        if t > self._ahead:
            self._ahead = t
        j = self.settings.join
        if isinstance(event, ev.SeedSelected):
            self._batch_decisions.add(event.decision_id)
            if event.request_time is not None:
                self._deadline = min(self._deadline, t + j.reward_wait_s)
        elif isinstance(event, ev.AdaptationOutcome):
            did = event.resolved_decision_id
            if did not in self.selector.pending and did not in self._batch_decisions:
                self._deadline = min(self._deadline, t + j.hold_unknown_s)  # it may be held (an over-estimate)
        return self._ahead > self._deadline or len(self._batch) >= self.settings.kafka.max_batch

    async def flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._batch_decisions = set()
            await self.process(batch)
        self._deadline = self._next_deadline()

    def _next_deadline(self) -> float:
        """When the current state next expires something: the oldest pending decision (the one ``_expire`` looks at
        first) and the held outcomes (a decision's held outcomes go together, after the newest of them)."""
        j = self.settings.join
        deadline = math.inf
        for selected in self.selector.pending.values():
            if selected.request_time is not None:
                deadline = selected.request_time.timestamp() + j.reward_wait_s
            break
        if self.held:
            deadline = min(deadline, min(max(h.since for h in hs) for hs in self.held.values()) + j.hold_unknown_s)
        return deadline

    def dead_letter(self, m: Message) -> None:
        """A record of the dead-letter topic: a rejected request counts, and answers its offset."""
        if header_value(m.headers, "dlq.source.topic") != self.topics.requests:
            return  # outcomes and control messages are replayed themselves, and rejected again
        p, o = _int_header(m.headers, "dlq.source.partition"), _int_header(m.headers, "dlq.source.offset")
        if p is None or o is None:
            return
        self._rejected.add((p, o))
        self.request_offsets[p] = max(self.request_offsets.get(p, 0), o + 1)

    async def finish(self, floors: dict[tuple[str, int], int]) -> dict[int, int]:
        """Process what is queued; store the input offsets and the dead letters of requests. ``floors``: where the
        replay started reading each input partition (a replay from a timestamp skips what came before, and so does
        a worker on the rebuilt store). Returns the request offsets."""
        await self.flush()
        offsets = {tp: max(o, self._stored_offsets.get(tp, 0)) for tp, o in floors.items()}
        for p, o in self.request_offsets.items():
            tp = (self.topics.requests, p)
            offsets[tp] = max(o, offsets.get(tp, 0))
        # Offset 0 is where a worker starts anyway: no row, as in a live store that never read the partition.
        b = Batch(offsets={tp: o for tp, o in offsets.items() if o > 0})
        if self._rejected:
            b.count("dead_letters", len(self._rejected))
        b.meta["watermark"] = repr(self.watermark)
        await self.store.write(b)
        for name, n in b.counters.items():
            self.counters.add(name, n)
        return {p: o for (t, p), o in offsets.items() if t == self.topics.requests}

    # -- the worker's hooks --------------------------------------------------------------------------------------
    def _decode(self, m: Message, b: Batch) -> ev.Envelope | None:
        queued, event, error = self._decoded.popleft()
        assert queued is m, "replay: messages processed out of the order they were decoded in"
        if error is not None:
            if m.topic == self.topics.selections:
                self.unreadable += 1
                log.warning("%s[%d]@%d cannot be read, skipped: %s", m.topic, m.partition, m.offset, error)
            else:
                self._dead_letter(m, error, b)
            return None
        t = _event_time(event)  # type: ignore[arg-type]
        if t > self.watermark:
            self.watermark = t
        return event

    def _dead_letter(self, m: Message, reason: str, b: Batch) -> None:
        b.count("dead_letters")  # the live worker's dead letter is already on the topic: counted, not re-sent
        log.info("%s[%d]@%d was a dead letter: %s", m.topic, m.partition, m.offset, reason)

    async def _group_commit(self) -> None:
        pass  # no consumer group: the replay reads by assignment

    def _on_selection(self, m: Message, selected: ev.SeedSelected, b: Batch, touched: set[str], known) -> bool:
        answers_new_record = self._note_source(m)
        if super()._on_selection(m, selected, b, touched, known):
            return True
        self.resent += 1
        if answers_new_record:  # a copy for another graft.requested record: the live worker counted a retry
            b.count("duplicate_requests")
        return False

    def _note_source(self, m: Message) -> bool:
        """Note the graft.requested record a selection answers. True unless an earlier selection on this partition
        answered it or a later record: the worker publishes in the order it read each request partition, so only a
        copy re-published after a crash goes back."""
        p, o = _int_header(m.headers, SOURCE_PARTITION), _int_header(m.headers, SOURCE_OFFSET)
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
async def merged(consumer, spans: list[Span], rank: dict[str, int]) -> AsyncIterator[Message]:
    """The records of ``spans`` in Kafka timestamp order, each partition in offset order (a k-way merge: a record
    is released only when every partition not read to its end has a record buffered to compare it with)."""
    from aiokafka import TopicPartition

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
                    heapq.heappush(heap, (r.timestamp, rank[tp.topic], tp.partition, r.offset, tp))
                    last_progress = time.monotonic()
                elif await consumer.position(tp) >= ends[tp]:
                    waiting.discard(tp)  # read to its end (the last offsets may be transaction markers)
            if waiting:
                if time.monotonic() - last_progress > STALL_S:
                    names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(waiting))
                    raise ReplayError(f"no records from {names} for {STALL_S:.0f}s although the replay has not "
                                      f"reached their end offsets")
                continue
        *_, tp = heapq.heappop(heap)
        r = buffers[tp].popleft()
        yield Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp)
        if buffers[tp]:
            n = buffers[tp][0]
            heapq.heappush(heap, (n.timestamp, rank[tp.topic], tp.partition, n.offset, tp))
        elif await consumer.position(tp) < ends[tp]:
            waiting.add(tp)


async def _partitions(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partition counts of the topics that exist."""
    from aiokafka.admin import AIOKafkaAdminClient

    from seedworker.broker.security import client_options

    k = settings.kafka
    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-replay",
                                **client_options(k))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics([n for n in names
                                                                                        if n in existing])
                if d.get("error_code", 0) == 0 and d.get("partitions")}
    finally:
        await admin.close()


async def _plan(consumer, settings: Settings, since_ms: int | None):
    """(spans to read, graft.requested spans, topics that do not exist)."""
    from aiokafka import TopicPartition

    t = settings.kafka.topics
    names = [t.selections, t.outcomes, t.control, t.dead_letters, t.requests]
    counts = await _partitions(settings, names)
    missing = [n for n in names if n not in counts]
    tps = [TopicPartition(n, p) for n in names if n in counts for p in range(counts[n])]
    if t.selections in missing:
        raise ReplayError(f"topic {t.selections} does not exist at {settings.kafka.bootstrap_servers}: "
                          f"there is no decision log to replay")
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
            note = (f"offsets 0-{s.first - 1} were deleted (retention); the replay starts at offset {s.first}, "
                    f"the first available")
        elif s.start == s.first and s.end > s.first:
            note = (f"offsets 0-{s.first - 1} were deleted (retention) and may have held records newer than the "
                    f"requested timestamp; the replay starts at offset {s.first}, the first available")
        else:
            continue
        gaps.append({"topic": s.topic, "partition": s.partition, "first_offset": s.first, "note": note})
    return gaps


def _files(db: Path) -> list[Path]:
    return [db] + [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


async def replay(settings: Settings, db: str | Path, *, since: datetime | None = None,
                 progress: bool = False) -> Summary:
    """Rebuild the state into the new store ``db`` from the topics of ``settings`` (the live worker's settings)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError
    from tqdm import tqdm

    from seedworker.broker.security import client_options

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
    consumer = AIOKafkaConsumer(bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-replay",
                                group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                **client_options(k))
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
        rank = {t.selections: 0, t.control: 1, t.outcomes: 2, t.dead_letters: 3}
        store = await Store(partial).open()
        worker = ReplayWorker(settings, store)
        records = {s.topic: 0 for s in spans}
        bar = tqdm(total=sum(s.end - s.start for s in spans), unit="rec", desc="replay", file=sys.stderr,
                   disable=None if progress else True)
        try:
            unshown = 0
            async for m in merged(consumer, spans, rank):
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
    c = dict(worker.counters.values)
    return Summary(
        db=str(path), since=None if since is None else since.astimezone(timezone.utc).isoformat(),
        complete=not _retention(spans, since_ms), records=records, first_record=_iso(worker.first_ms),
        last_record=_iso(worker.last_ms), decisions=c.get("decisions", 0), resent_selections=worker.resent,
        unreadable_selections=worker.unreadable, counters=c, blueprints=len(worker.selector.blueprints),
        pending_decisions=len(worker.selector.pending), held_outcomes=sum(map(len, worker.held.values())),
        request_offsets=offsets, undecided_requests={p: max(e - offsets.get(p, 0), 0) for p, e in ends.items()},
        retention=_retention(spans, since_ms), missing_topics=missing)


# -- command line ------------------------------------------------------------------------------------------------
def _timestamp(value: str) -> datetime:
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, timezone.utc)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time (2026-01-31T12:00:00Z) or epoch "
                                         f"milliseconds, got {value!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no timezone; add one (e.g. Z for UTC)")
    return when


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0].removeprefix("``seedworker replay``: ")
    parser.add_argument("--db", required=True, help="the NEW SQLite store to write (must not exist)")
    parser.add_argument("--config", help="the live worker's TOML settings (SEEDWORKER_* variables override it)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: from the settings)")
    parser.add_argument("--from-timestamp", type=_timestamp, metavar="TIME",
                        help="replay the records from this time on (ISO 8601 with a timezone, or epoch "
                             "milliseconds); default: from the earliest offsets")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="WARNING")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from seedworker.broker.base import BusError
    from seedworker.ops.logs import configure

    settings = load_settings(args.config, overrides={"kafka.bootstrap_servers": args.bootstrap_servers})
    configure(args.log_level, settings.log_format)
    try:
        summary = asyncio.run(replay(settings, args.db, since=args.from_timestamp, progress=not args.no_progress))
    except (ReplayError, BusError, StoreError) as exc:
        print(f"seedworker replay: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.render())
    return 0
