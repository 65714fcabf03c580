"""The worker: consume requests and outcomes, decide, persist, publish, learn — each batch exactly once.

Per batch (one ``poll``):
1. every message is decoded; bad ones become dead letters (original bytes, key, headers and the reason);
2. requests are decided from the current state; outcomes are joined to their decision and learned;
3. ONE SQLite transaction stores the decisions, the outbox rows (selections and dead letters), the outcome
   resolutions, the changed blueprint states, the counters and the consumed offsets;
4. the outbox rows are published (idempotent producer, acks=all) and, acknowledged, deleted from the outbox in the
   next transaction;
5. Kafka's group commit follows, for lag monitoring only: the offsets in SQLite are the truth the consumer seeks to.

A crash before (3) leaves no trace and the batch is consumed again, giving the same decisions (the same request
against the same state draws from the same seeded generator). A crash after (3) re-publishes unsent outbox rows when
their partition is assigned again, byte for byte. So no outcome is learned twice and no request goes unanswered.

Several workers, each with its own store, share the input partitions as one consumer group: on assignment a worker
goes on from its own state of a partition when that state is current, and rebuilds it from the topics otherwise
(seedworker.engine.ownership). Every worker reads the whole control topic itself.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson

from seedworker.contract import events as ev
from seedworker.broker.base import TP, Bus, BusError, Committed, Message, Outgoing
from seedworker.broker.kafka import KafkaBus
from seedworker.core.config import ConfigError, Settings
from seedworker.ops.metrics import WorkerMetrics
from seedworker.core.selector import SeedSelector
from seedworker.store.store import Batch, Store, StoreError, dump_state

log = logging.getLogger("seedworker.engine.worker")

JSON = b"application/json"


# Headers that let `seedworker replay` rebuild the state from seed.selected alone: the graft.requested record a
# selection answers (so a rebuilt store knows how far the requests were read), and the warm start of the seeds a
# decision saw first (the blueprint's pooled mean at that moment depends on which outcomes the worker had then read).
SOURCE_PARTITION = "source.partition"
SOURCE_OFFSET = "source.offset"
WARM_START = "seed.warm_start"  # "none", or "<pseudo_count>,<mean>" (repr floats: exact)


def selection_headers(selected: ev.SeedSelected, source: tuple[int, int] | None = None,
                      warm_start: bytes | None = None) -> tuple[tuple[str, bytes], ...]:
    headers = [("event_type", ev.SEED_SELECTED.encode()), ("schema_version", ev.SCHEMA_VERSION.encode()),
               ("content-type", JSON), ("decision_id", selected.decision_id.encode())]
    if selected.trace_id:
        headers.append(("trace_id", selected.trace_id.encode()))
    if source is not None:
        headers += [(SOURCE_PARTITION, b"%d" % source[0]), (SOURCE_OFFSET, b"%d" % source[1])]
    if warm_start is not None:
        headers.append((WARM_START, warm_start))
    return tuple(headers)


@dataclass
class Held:
    outcome: ev.AdaptationOutcome
    since: float  # event time the outcome was first held


@dataclass
class Counters:
    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)


class Worker:
    """``await Worker(settings).run()`` until SIGTERM/SIGINT; ``burst=True`` stops once the inputs are drained."""

    def __init__(self, settings: Settings, *, bus: Bus | None = None, store: Store | None = None,
                 burst: bool = False, idle_polls: int = 3, shutdown_timeout_s: float = 30.0):
        self.settings = settings
        self.topics = settings.kafka.topics
        self.bus: Bus = bus or KafkaBus(settings.kafka)
        self.store = store or Store(settings.db)
        self.selector = SeedSelector(settings)
        self.burst = burst
        self.idle_polls = idle_polls
        self.shutdown_timeout_s = shutdown_timeout_s
        self.counters = Counters()
        self.held: dict[str, list[Held]] = {}
        self.recent: OrderedDict[str, str] = OrderedDict()  # decision_id -> status, for duplicates (bounded)
        self.watermark = float("-inf")  # newest event time seen on the inputs
        self._stored_offsets: dict[tuple[str, int], int] = {}
        self.worker_id = ""  # this store's id in the group's commit metadata (seedworker.engine.ownership)
        self._counts: dict[str, int] = {}  # partitions per topic
        self._assign_error: BaseException | None = None
        self._unclaimed: dict[TP, int] = {}  # claims of assigned partitions that did not go through (paused)
        # aiokafka runs the rebalance callbacks in its own task, at any time: a batch (stored, published) and a
        # revocation or assignment never overlap, and a poll that a rebalance overtook is not processed.
        self._exclusive = asyncio.Lock()
        self._rebalances = 0
        self._assigned: set[TP] = set()
        self._acked: list[int] = []
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._last_group_commit = 0.0
        self._joined: dict[str, ev.SeedSelected] = {}  # decisions this batch resolved: no longer pending, not stored
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.metrics = WorkerMetrics(self)

    def __repr__(self) -> str:
        c = self.counters
        return (f"<Worker decisions={c['decisions']} outcomes={c['outcomes_learned']} dead_letters={c['dead_letters']} "
                f"pending={len(self.selector.pending)} held={sum(map(len, self.held.values()))}>")

    @property
    def pending_decisions(self) -> int:
        """Decisions waiting for their outcome (a gauge of /metrics)."""
        return len(self.selector.pending)

    @property
    def held_outcomes(self) -> int:
        """Outcomes waiting for their decision (a gauge of /metrics)."""
        return sum(map(len, self.held.values()))

    # -- life cycle ----------------------------------------------------------------------------------------------
    def readiness(self) -> dict[str, bool]:
        """What /readyz checks, all of which must hold. A stopping worker is no longer ready, so traffic moves away
        while it drains."""
        return {"store_open": self.store.is_open, "consumer_started": self.ready.is_set(),
                "running": not self._stopping.is_set()}

    def stop(self) -> None:
        """Take nothing new; the current batch finishes, the outbox is flushed, offsets are committed."""
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                pass  # not the main thread (tests): the caller stops us
        try:
            await self.start()
            idle = 0
            while not self._stopping.is_set():
                rebalances = self._rebalances
                messages = await self.bus.poll(self.settings.kafka.poll_timeout_ms, self.settings.kafka.max_batch)
                if self._assign_error is not None:
                    raise self._assign_error  # the partitions were not restored: nothing of them may be processed
                async with self._exclusive:
                    if rebalances != self._rebalances:
                        # A rebalance overtook this poll: its messages are read again from the stored offsets, by
                        # this worker for the partitions it still (or again) has, by their new owner for the others.
                        for tp in {(m.topic, m.partition) for m in messages}:
                            if tp in self._assigned or tp[0] == self.topics.control:
                                self.bus.seek(tp, self._stored_offsets.get(tp, 0))
                        messages = []
                    if self._unclaimed:
                        await self._claim_again()
                    if messages:
                        await self.process(messages)
                    elif time.monotonic() - self._last_group_commit >= self.settings.kafka.group_commit_interval_s:
                        await self._group_commit()  # the last batches' offsets, once the inputs are idle
                if messages:
                    idle = 0
                else:
                    idle += 1
                    await self._flush_acks()
                    if self.burst and idle >= self.idle_polls:
                        break
        except (StoreError, BusError) as exc:
            log.error("worker stopping: %s", exc)
            raise
        finally:
            await asyncio.wait_for(self.close(), self.shutdown_timeout_s)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        await self.store.open()
        await self._restore()
        k = self.settings.kafka
        t = self.topics
        counts = await self.bus.ensure_topics({t.requests: k.partitions, t.outcomes: k.partitions,
                                               t.selections: k.output_partitions, t.dead_letters: k.output_partitions,
                                               t.control: 1})
        if counts.get(t.requests) != counts.get(t.outcomes):
            raise ConfigError(
                f"topics {t.requests!r} ({counts.get(t.requests)} partitions) and {t.outcomes!r} "
                f"({counts.get(t.outcomes)} partitions) must have the same partition count: a blueprint's requests "
                f"and outcomes have to land on the same partition number (co-partitioning). Refusing to start.")
        self._counts = counts
        # Every worker applies every strategy switch, in order with its other events: the control topic is read
        # outside the group, from the offset in this store.
        self.bus.broadcast({(t.control, p): self._stored_offsets.get((t.control, p), 0)
                            for p in range(counts[t.control])})
        # The bus's producer exists once it is started; nothing is consumed before the first poll, so unsent outbox
        # rows still go out before anything new is decided.
        await self.bus.start([t.requests, t.outcomes], self._on_assign, self._on_revoke)
        await self._republish()
        self.ready.set()
        log.info("worker started: %s", self)

    async def close(self) -> None:
        try:
            try:
                await self._flush_acks()
            except StoreError as exc:
                # Kafka has these rows; left unmarked, they are published again (byte for byte) at the next start.
                log.warning("published outbox rows not marked as sent: %s", exc)
            if self.ready.is_set():
                await self._group_commit()
        finally:
            await self.bus.stop()
            try:
                await self.store.close()
            except StoreError as exc:  # closing must not hide why the worker stops
                log.warning("%s", exc)
            log.info("worker stopped: %s", self)

    async def _restore(self) -> None:
        """Rebuild the in-memory state from SQLite."""
        s = self.store
        self._stored_offsets = await s.offsets()
        for bp_id, state in (await s.blueprint_states()).items():
            self.selector.load_blueprint(bp_id, state)
        meta = await s.meta()
        if "default_strategy" in meta:
            self.selector.default_strategy = meta["default_strategy"]
        if "logging_only" in meta:
            self.selector.logging_only = meta["logging_only"] == "1"
        if "watermark" in meta:
            self.watermark = float(meta["watermark"])
        for payload in await s.pending_decisions():
            selected = ev.decode(payload, ev.SEED_SELECTED)
            self.selector.pending[selected.decision_id] = selected  # type: ignore[assignment]
        for _event_id, since, payload in await s.held_outcomes():
            outcome = ev.decode(payload, ev.ADAPTATION_OUTCOME)
            self.held.setdefault(outcome.resolved_decision_id, []).append(Held(outcome, since))  # type: ignore[arg-type]
        self.counters.values.update(await s.counters())
        self.worker_id = meta.get("worker_id", "")
        if not self.worker_id:
            self.worker_id = uuid.uuid4().hex
            await s.write(Batch(meta={"worker_id": self.worker_id}))

    async def _republish(self, rows: list[tuple] | None = None) -> None:
        """Publish unsent outbox rows again, byte for byte: at start those that answer no input partition (dead
        letters of control messages), at assignment those of the partitions whose own state is current."""
        if rows is None:
            from seedworker.engine.ownership import outbox_partition

            rows = [row for row in await self.store.unsent() if outbox_partition(row, self.topics) is None]
        if rows:
            log.info("re-publishing %d unsent outbox rows", len(rows))
            await self.bus.send(_outgoing(row[1:]) for row in rows)
            await self.store.mark_sent([r[0] for r in rows])

    # -- partition ownership (seedworker.engine.ownership) ---------------------------------------------------------------
    async def _on_assign(self, tps: list[tuple[str, int]]) -> None:
        # Paused before anything else: the consumer may already fetch them from the group's committed offsets.
        self.bus.pause(tps)
        try:
            async with self._exclusive:
                self._rebalances += 1
                self._assigned = set(tps)
                await self._take_over(tps)
        except BaseException as exc:
            # aiokafka logs an error raised here and goes on fetching: stop consuming instead (run() raises it).
            self._assign_error = exc
            raise
        self.bus.resume([tp for tp in tps if tp[1] not in {p for _, p in self._unclaimed}])

    async def _take_over(self, tps: list[tuple[str, int]]) -> None:
        """Before anything of the assigned partitions is processed: go on from this store's state of each where it is
        current (publishing its unsent rows), rebuild the others from the topics, drop superseded unsent rows, seek,
        and claim the partitions in the group's commits."""
        from seedworker.engine import ownership  # it imports the replay, which imports this module

        t = self.topics
        parts = ownership.co_partitioned(tps, t)
        unsent: dict[int, list[tuple]] = {}
        for row in await self.store.unsent():
            p = ownership.outbox_partition(row, t)
            if p is not None:
                unsent.setdefault(p, []).append(row)
        asked = sorted(set(parts) | set(unsent))
        committed = await self.bus.fetch_committed([tp for p in asked for tp in self._pair(p)]) if asked else {}
        stale: dict[int, str] = {}
        for p in asked:
            current, why = ownership.own_state_current(p, t, self._stored_offsets, committed, self.worker_id)
            if not current:
                stale[p] = why
        superseded = [row for p in stale for row in unsent.get(p, ())]
        if superseded:
            log.warning("dropping %d unsent outbox rows of partitions %s that another worker took over (decisions "
                        "%s)", len(superseded), sorted({p for p in stale if p in unsent}),
                        ", ".join(filter(None, map(ownership.outbox_decision, superseded))) or "none")
        rebuild = [p for p in parts if p in stale]
        if rebuild:
            await self._rebuild(rebuild, committed, superseded, stale)
        elif superseded:
            b = Batch(superseded=[row[0] for row in superseded])
            b.count("superseded_outbox_rows", len(superseded))
            await self.store.write(b)
            self.counters.add("superseded_outbox_rows", len(superseded))
        await self._republish([row for p in parts if p not in stale for row in unsent.get(p, ())])
        for tp in tps:
            self.bus.seek(tp, self._stored_offsets.get(tp, 0))
        claim = {tp: self._stored_offsets.get(tp, 0) for p in parts for tp in self._pair(p)}
        claim = {tp: o for tp, o in claim.items() if committed.get(tp) != Committed(o, self.worker_id)}
        if claim and not await self.bus.commit(claim, self.worker_id):
            self._unclaimed = claim  # the partitions stay paused
            log.warning("could not claim partitions %s in the group's commits: paused until the claim goes through",
                        sorted({p for _, p in claim}))
        log.info("assigned partitions %s: %d from this store, %d rebuilt from the topics", parts,
                 len(parts) - len(rebuild), len(rebuild))

    def _pair(self, p: int) -> list[TP]:
        return [(self.topics.requests, p), (self.topics.outcomes, p)]

    async def _claim_again(self) -> None:
        if await self.bus.commit(self._unclaimed, self.worker_id):
            self.bus.resume(sorted({tp for q in {p for _, p in self._unclaimed} for tp in self._pair(q)}))
            self._unclaimed = {}

    async def _rebuild(self, parts: list[int], committed: dict[TP, Committed], superseded: list[tuple],
                       why: dict[int, str]) -> None:
        """Replace this worker's state of ``parts`` with their state rebuilt from the topics: in the store (one
        transaction, with the partitions' offsets and the superseded rows) and in memory."""
        from seedworker.engine import ownership

        t = self.topics
        for p in parts:
            log.info("partition %d: %s; rebuilding it from the topics", p, why[p])
        t0 = time.perf_counter()
        floors = {tp: c.offset for tp, c in committed.items() if tp[0] == t.requests and tp[1] in parts}
        rebuilt = await ownership.rebuild(self.settings, self.bus, parts, self._counts, floors)
        # Blueprints this worker decided for unsent rows of these partitions may have no record on the topics.
        replaced = rebuilt.seen | {row[2].decode("utf-8", "replace") for row in superseded
                                   if row[1] == t.selections and row[2] is not None
                                   and ownership.outbox_partition(row, t) in parts}
        sel = self.selector
        strategies = {bp: sel.blueprints[bp].strategy for bp in rebuilt.blueprints if bp in sel.blueprints}
        b = rebuilt.batch(replaced, [row[0] for row in superseded], strategies)
        self.watermark = max(self.watermark, rebuilt.watermark)
        b.meta["watermark"] = repr(self.watermark)
        await self.store.write(b)
        for bp in replaced:
            sel.blueprints.pop(bp, None)
        sel.blueprints.update(rebuilt.blueprints)
        # Pending decisions stay in request-time order (expiry stops at the first young one).
        pending = [(did, s) for did, s in sel.pending.items() if s.blueprint_id not in replaced]
        pending += [(s.decision_id, s) for s in rebuilt.pending]
        pending.sort(key=lambda item: (item[1].request_time or item[1].occurred_at).timestamp())
        sel.pending.clear()
        sel.pending.update(pending)
        held: dict[str, list[Held]] = {}
        for did, hs in self.held.items():
            kept = [h for h in hs if h.outcome.blueprint_id not in replaced]
            if kept:
                held[did] = kept
        for outcome, since in rebuilt.held:
            held.setdefault(outcome.resolved_decision_id, []).append(Held(outcome, since))
        self.held = held
        self.recent.clear()  # statuses of replaced decisions: read from the store again
        self._stored_offsets.update(rebuilt.offsets)
        for name, n in b.counters.items():
            self.counters.add(name, n)
        log.info("rebuilt partitions %s from %d records in %.1fs: %d blueprints, %d decisions (%d pending), %d held "
                 "outcomes%s", parts, rebuilt.records, time.perf_counter() - t0, len(rebuilt.blueprints),
                 len(rebuilt.decisions), len(rebuilt.pending), len(rebuilt.held),
                 "" if rebuilt.complete else " (INCOMPLETE: records were deleted)")

    async def _on_revoke(self, tps: list[tuple[str, int]]) -> None:
        """Before the partitions go: what was published is marked sent, and the offsets are committed under this
        worker's id (so its next owner knows who processed them last)."""
        async with self._exclusive:
            self._rebalances += 1
            self._assigned = set()
            await self._flush_acks()
            await self._group_commit()
            self._unclaimed = {}

    async def _flush_acks(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            await self.store.mark_sent(ids)

    # -- one batch -----------------------------------------------------------------------------------------------
    async def process(self, messages: list[Message]) -> None:
        b = Batch(sent=self._acked)
        self._joined = {}
        self._acked = []
        touched: set[str] = set()
        decoded = [(m, self._decode(m, b)) for m in messages]
        known = await self._statuses(decoded)
        for m, event in decoded:
            b.offsets[(m.topic, m.partition)] = m.offset + 1
            if event is None:
                continue
            if isinstance(event, ev.GraftRequested):
                self._on_request(m, event, b, touched, known)
            elif isinstance(event, ev.AdaptationOutcome):
                self._on_outcome(event, b, touched, known)
            elif isinstance(event, ev.StrategySwitch):
                self._on_control(m, event, b, touched)
            elif isinstance(event, ev.SeedSelected):  # only a replay feeds logged decisions (seedworker.engine.replay)
                self._on_selection(m, event, b, touched, known)
        self._expire(b, touched)
        for bp_id in touched:
            bp = self.selector.blueprints[bp_id]
            b.blueprints[bp_id] = (dump_state(bp.to_dict()), bp.version)
        b.meta["watermark"] = repr(self.watermark)
        t0 = time.perf_counter()
        try:
            ids = await self.store.write(b)
        except StoreError as exc:
            # Nothing of this batch was kept, so nothing of it is published and its offsets are neither stored nor
            # committed: the next start consumes it again. The in-memory state has already taken it in, so this
            # worker must not go on: it stops consuming. The rows acknowledged before it are still unmarked.
            self._acked = b.sent + self._acked
            raise StoreError(f"{exc}; stopped consuming: the last batch ({len(messages)} messages, "
                             f"{_ranges(messages)}) was not stored, so it was neither published nor acknowledged "
                             f"and is processed again at the next start") from exc
        self.metrics.transaction.observe(time.perf_counter() - t0)
        self._stored_offsets.update(b.offsets)
        for name, n in b.counters.items():
            self.counters.add(name, n)
        if b.outbox:
            try:
                await self.bus.send(_outgoing(row) for row in b.outbox)
            except BusError as exc:
                raise BusError(f"{exc}; the batch is stored and its {len(ids)} messages stay in the outbox, "
                               f"published at the next start") from exc
            self._acked.extend(ids)
        self._uncommitted.update(b.offsets)
        now = time.monotonic()
        if now - self._last_group_commit >= self.settings.kafka.group_commit_interval_s:
            await self._group_commit()

    async def _group_commit(self) -> None:
        """SQLite's offsets are the truth the consumer seeks to; Kafka's group offsets feed lag monitoring and tell a
        partition's next owner who processed it last (seedworker.engine.ownership), so they are committed periodically and
        on revocation rather than after every batch."""
        self._last_group_commit = time.monotonic()
        if self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            # The control topic is read outside the group: its offset lives in the store only.
            offsets = {tp: o for tp, o in offsets.items() if tp[0] != self.topics.control}
            if offsets:
                await self.bus.commit(offsets, self.worker_id)

    def _decode(self, m: Message, b: Batch) -> ev.Envelope | None:
        expected = {self.topics.requests: ev.GRAFT_REQUESTED, self.topics.outcomes: ev.ADAPTATION_OUTCOME,
                    self.topics.control: ev.STRATEGY_SWITCH}[m.topic]
        try:
            if m.value is None:
                raise ev.EventError("empty message (no value)")
            event = ev.decode(m.value, expected)
        except ev.EventError as exc:
            self._dead_letter(m, str(exc), b)
            return None
        if expected == ev.GRAFT_REQUESTED and event.trace_id is None and m.headers:
            # A producer may carry the trace id in a header only: the selection carries it on (body and header).
            trace_id = header_value(m.headers, "trace_id")
            if trace_id:
                event = event.model_copy(update={"trace_id": trace_id})
        t = event.occurred_at.timestamp()
        if t > self.watermark:
            self.watermark = t
        return event

    def _dead_letter(self, m: Message, reason: str, b: Batch) -> None:
        headers = list(m.headers) + [
            ("dlq.reason", reason.encode()[:4000]), ("dlq.source.topic", m.topic.encode()),
            ("dlq.source.partition", str(m.partition).encode()), ("dlq.source.offset", str(m.offset).encode()),
        ]
        b.outbox.append((self.topics.dead_letters, m.key, m.value or b"", _headers_blob(headers)))
        b.count("dead_letters")
        log.warning("dead letter from %s[%d]@%d: %s", m.topic, m.partition, m.offset, reason,
                    extra={"topic": m.topic, "partition": m.partition, "offset": m.offset,
                           "trace_id": header_value(m.headers, "trace_id")})

    async def _statuses(self, decoded) -> dict[str, tuple[str, bytes]]:
        """Decisions this batch mentions that are neither pending nor recent: one query for the whole batch."""
        pending, recent = self.selector.pending, self.recent
        ids = set()
        for _m, e in decoded:
            if isinstance(e, ev.GraftRequested):
                # A retried request needs its stored answer, so look it up even when it is recent.
                if e.decision_id not in pending:
                    ids.add(e.decision_id)
            elif isinstance(e, ev.AdaptationOutcome):
                did = e.resolved_decision_id
                if did not in pending and did not in recent:
                    ids.add(did)
            elif isinstance(e, ev.SeedSelected) and e.decision_id not in pending:
                ids.add(e.decision_id)
        return await self.store.decision_statuses(ids) if ids else {}

    def _remember(self, did: str, status: str) -> None:
        self.recent[did] = status
        if len(self.recent) > self.settings.dedup_window:
            self.recent.popitem(last=False)

    def _on_request(self, m: Message, req: ev.GraftRequested, b: Batch, touched: set[str], known) -> None:
        did = req.decision_id
        # A retry may follow its decision's outcome in the same batch: then the decision is neither pending nor
        # among the stored statuses looked up before the batch (it was pending then), but in _joined.
        answered = self.selector.pending.get(did) or self._joined.get(did)
        if answered is not None or did in known:
            # A retried request: publish the stored answer again (the same value and key; the source headers name
            # this record) and decide nothing new.
            payload = ev.encode(answered) if answered is not None else known[did][1]
            b.outbox.append((self.topics.selections, req.blueprint_id.encode(), payload, _headers_blob(
                selection_headers(ev.decode(payload), (m.partition, m.offset)))))  # type: ignore[arg-type]
            b.count("duplicate_requests")
            return
        t0 = time.perf_counter()
        bp = self.selector.blueprints.get(req.blueprint_id)
        seen = len(bp.arms) if bp is not None else 0
        selected = self.selector.decide(req)
        self.selector.apply_selection(selected)
        self.metrics.selection.observe(time.perf_counter() - t0)
        arms = self.selector.blueprints[req.blueprint_id].arms
        warm_start = _warm_start(arms, seen) if len(arms) > seen else None  # this decision registered new seeds
        payload = ev.encode(selected)
        self._record_decision(selected, payload, b, touched)
        b.outbox.append((self.topics.selections, req.blueprint_id.encode(), payload,
                         _headers_blob(selection_headers(selected, (m.partition, m.offset), warm_start))))

    def _on_selection(self, m: Message, selected: ev.SeedSelected, b: Batch, touched: set[str], known) -> bool:
        """A logged decision, replayed: folded in as the worker folded it when it decided, once per decision id (a
        re-sent copy changes nothing: False). Nothing is published."""
        did = selected.decision_id
        if did in self.selector.pending or did in self._joined or did in known:
            return False
        warm_start = header_value(m.headers, WARM_START)
        if warm_start is not None:
            # Register the seeds this decision saw first with the warm start the worker gave them, not with the
            # pooled mean of whatever outcomes the replay has read by now.
            prior = None if warm_start == "none" else tuple(map(float, warm_start.split(",")))
            arms = self.selector.blueprint(selected.blueprint_id).arms
            arms.rows([c.seed_id for c in selected.scores], prior)  # type: ignore[arg-type]
        self.selector.apply_selection(selected)
        self._record_decision(selected, m.value, b, touched)  # type: ignore[arg-type]
        return True

    def _record_decision(self, selected: ev.SeedSelected, payload: bytes, b: Batch, touched: set[str]) -> None:
        """A decision already applied to the selector: pending until its outcome, stored, and joined to the outcomes
        that came before it. Shared by a new decision and a replayed one, so both leave the same state."""
        did = selected.decision_id
        self.selector.pending[did] = selected
        t = selected.request_time or selected.occurred_at
        b.decisions.append((did, selected.request_id, selected.blueprint_id, selected.seed_id, selected.seed_idx,
                            selected.strategy, selected.propensity, int(selected.explored), selected.state_version,
                            t.timestamp(), payload))
        b.count("decisions")
        touched.add(selected.blueprint_id)
        for held in self.held.pop(did, ()):
            b.released.append(held.outcome.event_id)
            self._join(held.outcome, b, touched)

    def _on_outcome(self, outcome: ev.AdaptationOutcome, b: Batch, touched: set[str], known) -> None:
        did = outcome.resolved_decision_id
        if did in self.selector.pending:
            self._join(outcome, b, touched)
            return
        status = self.recent.get(did) or (known[did][0] if did in known else None)
        if status == "expired" and self.settings.join.learn_late and did in known:
            selected = ev.decode(known[did][1], ev.SEED_SELECTED)
            reward = self.selector.learn(selected, outcome)  # type: ignore[arg-type]
            b.resolutions.append(("late", reward, outcome.occurred_at.timestamp(), did))
            self._remember(did, "late")
            touched.add(outcome.blueprint_id)
            b.count("late_outcomes")
            return
        if status is not None:
            b.count("late_outcomes" if status == "expired" else "duplicate_outcomes")
            return
        # Its decision is not known yet (it may still be on its way): hold it for hold_unknown_s of event time.
        if any(h.outcome.event_id == outcome.event_id for h in self.held.get(did, ())):
            b.count("duplicate_outcomes")
            return
        since = outcome.occurred_at.timestamp()
        self.held.setdefault(did, []).append(Held(outcome, since))
        b.held.append((outcome.event_id, did, outcome.blueprint_id, since, ev.encode(outcome)))
        b.count("held_outcomes")

    def _join(self, outcome: ev.AdaptationOutcome, b: Batch, touched: set[str]) -> None:
        did = outcome.resolved_decision_id
        selected = self._joined[did] = self.selector.pending.pop(did)
        waited = outcome.occurred_at.timestamp() - selected.request_time.timestamp() if selected.request_time else 0
        status = "resolved"
        reward = None
        if outcome.seed_id != selected.seed_id:
            # The graft went into another seed than the one chosen (e.g. Tamiyo fell back to seed 0 after a timeout):
            # crediting the chosen seed would be wrong, and the other seed's pick had no logged propensity.
            status = "mismatched"
            b.count("mismatched_outcomes")
            log.warning("outcome for %s reports seed %s but %s was chosen: not learned", did, outcome.seed_id,
                        selected.seed_id, extra={"decision_id": did, "trace_id": outcome.trace_id})
        elif waited > self.settings.join.reward_wait_s and not self.settings.join.learn_late:
            status = "late"
            b.count("late_outcomes")
            log.info("late outcome for %s after %.0fs: logged, not learned", did, waited)
        else:
            reward = self.selector.learn(selected, outcome)
            b.count("outcomes_learned")
            touched.add(selected.blueprint_id)
        b.resolutions.append((status, reward, outcome.occurred_at.timestamp(), did))
        self._remember(did, status)

    def _on_control(self, m: Message, sw: ev.StrategySwitch, b: Batch, touched: set[str]) -> None:
        try:
            self.selector.switch_strategy(sw.strategy, sw.blueprint_id)
        except ValueError as exc:
            self._dead_letter(m, str(exc), b)
            return
        if sw.logging_only is not None:
            self.selector.logging_only = sw.logging_only
            b.meta["logging_only"] = "1" if sw.logging_only else "0"
        if sw.blueprint_id is None:
            b.meta["default_strategy"] = sw.strategy
        else:
            touched.add(sw.blueprint_id)
        b.count("strategy_switches")
        log.info("strategy switched to %s for %s", sw.strategy, sw.blueprint_id or "the default")

    def _expire(self, b: Batch, touched: set[str]) -> None:
        """Decisions whose outcome did not come within reward_wait_s, and held outcomes whose decision never came
        within hold_unknown_s, both in event time (the newest event time seen)."""
        j = self.settings.join
        pending = self.selector.pending
        cutoff = self.watermark - j.reward_wait_s
        expired = []
        for did, s in pending.items():  # insertion order is (nearly) request-time order: stop at the first young one
            if s.request_time is None or s.request_time.timestamp() >= cutoff:
                break
            expired.append(did)
        for did in expired:
            selected = pending.pop(did)
            reward = None
            if j.default_reward is not None:
                reward = self.selector.learn_reward(selected, j.default_reward, self.watermark)
                touched.add(selected.blueprint_id)
            b.resolutions.append(("expired", reward, None, did))
            self._remember(did, "expired")
            b.count("expired_decisions")
        hold_cutoff = self.watermark - j.hold_unknown_s
        for did in [d for d, hs in self.held.items() if all(h.since < hold_cutoff for h in hs)]:
            for h in self.held.pop(did):
                b.released.append(h.outcome.event_id)
                b.count("dangling_outcomes")


def header_value(headers, name: str) -> str | None:
    """The first header called ``name``, as text (None when absent)."""
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def _warm_start(arms, row: int) -> bytes:
    """The WARM_START header of a decision whose seeds from ``row`` on are new (they share one prior)."""
    w = float(arms.prior_w[row])
    return b"none" if w == 0.0 else f"{w!r},{float(arms.prior_mean[row])!r}".encode()


def _ranges(messages: list[Message]) -> str:
    """"topic[partition]@first-last, ..." for an error message."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for m in messages:
        lo, hi = spans.get((m.topic, m.partition), (m.offset, m.offset))
        spans[(m.topic, m.partition)] = (min(lo, m.offset), max(hi, m.offset))
    return ", ".join(f"{t}[{p}]@{lo}-{hi}" for (t, p), (lo, hi) in sorted(spans.items()))


def _headers_blob(headers) -> bytes:
    # latin-1 maps every byte to one code point, so binary header values survive the JSON round trip.
    return orjson.dumps([[k, v.decode("latin-1")] for k, v in headers])


def headers_from_blob(blob: bytes) -> tuple[tuple[str, bytes], ...]:
    """The inverse of _headers_blob: an outbox row's headers."""
    return tuple((k, v.encode("latin-1")) for k, v in orjson.loads(blob))


def _outgoing(row: tuple) -> Outgoing:
    topic, key, value, blob = row
    return Outgoing(topic, key, value, headers_from_blob(blob))


async def run_worker(settings: Settings, **kwargs) -> Worker:
    worker = Worker(settings, **kwargs)
    t0 = time.perf_counter()
    await worker.run()
    log.info("ran for %.1fs", time.perf_counter() - t0)
    return worker
