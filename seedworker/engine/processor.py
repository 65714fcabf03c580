"""The batch processor: a batch of input records in, ONE batch to store and to send out. No bus, no rebalances.

For each record, in order:

1. it is decoded (a missing ``occurred_at`` takes the Kafka record's timestamp, which a replay reads again) and
   checked: an event dated more than ``join.max_clock_skew_s`` after its record's timestamp (or the wall clock, if
   earlier), or an input whose Kafka key is not its ``blueprint_id``, is dead-lettered;
2. a request is decided from the current state (a retry gets the stored answer again; a request id already answered
   for another blueprint or another candidate list is dead-lettered), and the answer is checked against the contract
   before it is stored (an answer too large to publish dead-letters its request); an outcome goes to the reward join
   (seedworker.core.join); a strategy switch changes the strategy; in a replay, a logged selection stands in for its
   request;
3. at the end, decisions and held outcomes whose time has passed expire, per input partition, and resolved
   decisions older than ``decision_retention_s`` (event time) are pruned;
4. a live worker's batch also carries its changelog records (seedworker.store.changelog): what it changed of each
   input partition's state, ending with the partition's offsets.

Every record either changes the state or becomes a dead letter with its reason. An exception while handling one
record dead-letters that record, naming the exception, and the batch goes on: the in-memory state is read back from
the store (which holds the state before the batch) and the batch is processed again without it, so nothing of a
batch is half-applied.

The worker (seedworker.engine.worker) stores the batch, publishes its outbox and commits; the replay and the
partition rebuild (seedworker.engine.replay) feed it logged records and store what it returns.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from seedworker.broker.base import Message
from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.config import Settings
from seedworker.core.join import HeldOutcome, JoinError, Known, Pending
from seedworker.core.selector import BlueprintState, SeedSelector
from seedworker.engine.merge import in_time_order, ranks
from seedworker.store import changelog
from seedworker.store.rows import Batch, BlueprintRow, DecisionRow, OutboxRow, StateEncoder, load_state
from seedworker.store.store import Store

log = logging.getLogger("seedworker.engine.processor")

RecordKey = tuple[str, int, int]  # (topic, partition, offset)
# What a record adds to its key, value and headers in a produce request (batch and record headers, varints): an
# upper bound, so an answer that passes the size check is accepted by the producer.
_RECORD_OVERHEAD = 256


class Rejected(Exception):
    """A record refused before it changed anything: it is dead-lettered with this reason."""


class _Failed(Exception):
    """Handling a record raised: the batch is processed again with that record dead-lettered."""

    def __init__(self, key: RecordKey, reason: str):
        super().__init__(reason)
        self.key = key
        self.reason = reason


@dataclass
class Restored:
    """What a restore read, and the stored rows it could not read (reported, skipped)."""

    blueprints: int = 0
    pending: int = 0
    held: int = 0
    unreadable: list[str] = field(default_factory=list)


def _key(m: Message) -> RecordKey:
    return (m.topic, m.partition, m.offset)


class Processor:
    """``await Processor(settings, store).restore()``, then ``batch = await processor.process(messages)``.

    ``replay=True``: the records are logged ones (seed.selected in place of graft.requested); nothing is published
    (dead letters are counted, not produced again). ``on_resent(message, batch)`` is called for a logged selection
    whose decision is already known (a re-sent copy).

    ``writer``: the worker's id, set by a live worker: its batches then carry changelog records. ``aligned``: the
    output topics with as many partitions as the inputs; what answers input partition p goes to their partition p
    (so a partition's rebuild reads one partition of each)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        replay: bool = False,
        observe_selection: Callable[[float], None] | None = None,
        on_resent: Callable[[Message, Batch], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.store = store
        self.topics = settings.kafka.topics
        self._rank = ranks(self.topics)  # ties of the in-batch merge, broken as the replay breaks them
        self.replay = replay
        self.observe_selection = observe_selection
        self.on_resent = on_resent
        self.wall_clock = wall_clock
        self.selector = SeedSelector(settings)
        self.selector.join.drop_by_time = not replay
        self.partitions: dict[str, int] = {}  # blueprint -> its input partition (-1: not known yet)
        self.unreadable_selections = 0  # replay: logged selections that could not be read (skipped)
        self.writer: str | None = None
        self.offsets: dict[tuple[str, int], int] = {}  # the store's consumed offsets (the changelog's "o" records)
        self.aligned: frozenset[str] = frozenset()
        self._states = StateEncoder()  # encodes the touched blueprints' states at the end of every batch
        t = self.topics
        self._expected = {
            t.requests: ev.GRAFT_REQUESTED,
            t.outcomes: ev.ADAPTATION_OUTCOME,
            t.control: ev.STRATEGY_SWITCH,
            t.selections: ev.SEED_SELECTED,
        }

    @property
    def join(self):
        return self.selector.join

    def __repr__(self) -> str:
        return f"<Processor pending={len(self.join.pending)} held={self.join.held_count}>"

    # -- state ---------------------------------------------------------------------------------------------------
    async def restore(self) -> Restored:
        """Read the state from the store, as at a start. A stored row that cannot be read is reported (logged and
        returned) and skipped: start-up never stops on it."""
        s = self.store
        out = Restored()
        selector = SeedSelector(self.settings)
        partitions: dict[str, int] = {}
        for bp_id, blob, partition in await s.blueprint_rows():
            try:
                selector.blueprints[bp_id] = BlueprintState.from_dict(load_state(blob))
            except Exception as exc:  # noqa: BLE001 - any damage to the pickle; the rest of the store is fine
                out.unreadable.append(f"blueprint {bp_id!r}: {type(exc).__name__}: {exc}")
                continue
            partitions[bp_id] = partition
            out.blueprints += 1
        meta = await s.meta()
        strategy = meta.get("default_strategy")
        if strategy is not None:
            problem = self.settings.strategy_problem(strategy)
            if problem:
                out.unreadable.append(
                    f"meta default_strategy {strategy!r}: {problem}; keeping {selector.default_strategy!r}"
                )
            else:
                selector.default_strategy = strategy
        if "logging_only" in meta:
            selector.logging_only = meta["logging_only"] == "1"
        pending = []
        for did, payload, partition in await s.pending_decisions():
            try:
                selected = ev.decode(payload, ev.SEED_SELECTED)
            except ev.EventError as exc:
                out.unreadable.append(f"pending decision {did}: {exc}")
                continue
            pending.append(Pending(selected, partition))  # type: ignore[arg-type]
        # Event-time order, so the expiry heaps see them as the live worker did (the heap does not need it, but a
        # deterministic order keeps ties deterministic).
        pending.sort(
            key=lambda p: ((p.selected.request_time or p.selected.occurred_at).timestamp(), p.selected.decision_id)
        )
        held = []
        for event_id, since, payload, partition, offset in await s.held_outcomes():
            try:
                outcome = ev.decode(payload, ev.ADAPTATION_OUTCOME)
            except ev.EventError as exc:
                out.unreadable.append(f"held outcome {event_id}: {exc}")
                continue
            held.append(HeldOutcome(outcome, partition, since, offset))  # type: ignore[arg-type]
        selector.join.drop_by_time = not self.replay
        selector.join.live_drops = self.join.live_drops  # what a replay read ahead in the dead letters
        selector.join.load(pending=pending, held=held, watermarks=await s.watermarks())
        out.pending, out.held = len(pending), len(held)
        for problem in out.unreadable:
            log.error("stored row skipped: %s", problem)
        self.selector = selector
        self.partitions = partitions
        self.offsets = await s.offsets()
        return out

    # -- one batch -----------------------------------------------------------------------------------------------
    async def process(self, messages: list[Message]) -> Batch:
        """The batch that ``messages`` make. Call ``restore`` first; the caller stores the batch before the next
        call (a failed record makes the processor read the store back)."""
        poisoned: dict[RecordKey, str] = {}
        while True:
            try:
                b, unreadable = await self._process(messages, poisoned)
                self.unreadable_selections += unreadable
                return b
            except _Failed as failed:
                if failed.key in poisoned:
                    raise RuntimeError(f"dead-lettering {failed.key} failed: {failed.reason}") from failed
                poisoned[failed.key] = failed.reason
                log.error("%s[%d]@%d failed and is dead-lettered: %s", *failed.key, failed.reason)
                await self.restore()  # the state before this batch: the store has it

    async def _process(self, messages: list[Message], poisoned: dict[RecordKey, str]) -> tuple[Batch, int]:
        b = Batch()
        unreadable = 0
        clocks = dict(self.join.watermarks)  # as stored before this batch (_prune compares them with the new ones)
        decoded: list[tuple[Message, ev.Envelope | None]] = []
        # By time across partitions, each in offset order: the order a replay of the topics takes them in (a
        # replay's records come merged over the whole log already, and in the order it chose).
        if not self.replay:
            messages = in_time_order(messages, self._rank, self.topics.selections)
        for m in messages:
            b.offsets[(m.topic, m.partition)] = m.offset + 1
            reason = poisoned.get(_key(m))
            event = None
            if reason is None:
                try:
                    event = self._decode(m)
                except (ev.EventError, Rejected) as exc:
                    reason = str(exc)
            if reason is not None and m.topic == self.topics.selections:
                unreadable += 1  # the decision log itself (replay): nothing to dead-letter, it is skipped
                log.warning("%s[%d]@%d cannot be read, skipped: %s", m.topic, m.partition, m.offset, reason)
            elif reason is not None:
                self._dead_letter(m, reason, b)
            decoded.append((m, event))
        known = await self._lookups(decoded)
        answers: dict[str, tuple[ev.SeedSelected, bytes]] = {}  # decisions made in this batch, with their payload
        for m, event in decoded:
            if event is None:
                continue
            try:
                if isinstance(event, ev.GraftRequested):
                    self._on_request(m, event, b, answers, known)
                elif isinstance(event, ev.AdaptationOutcome):
                    self._on_outcome(m, event, b, known)
                elif isinstance(event, ev.StrategySwitch):
                    self._on_control(event, b)
                elif isinstance(event, ev.SeedSelected):
                    self._on_selection(m, event, b, answers, known)
            except Rejected as exc:
                self._dead_letter(m, str(exc), b)
            except Exception as exc:  # noqa: BLE001 - whatever a record triggers must not stop the others
                raise _Failed(_key(m), f"{type(exc).__name__} while handling it: {exc}") from exc
        self.join.expire(b)
        for held, reason in b.rejected:
            o = held.outcome
            self._dead_letter(
                Message(self.topics.outcomes, held.partition, held.offset, o.blueprint_id.encode(), ev.encode(o)),
                reason,
                b,
            )
        for bp_id, partition in b.touched.items():
            if partition >= 0:
                self.partitions[bp_id] = partition
            bp = self.selector.blueprints[bp_id]
            state = self._states.dump(bp_id, bp.to_dict())
            b.blueprints[bp_id] = BlueprintRow(state, bp.version, self.partitions.get(bp_id, -1))
        await self._prune(b, clocks)
        if self.writer is not None and not self.replay:
            t = self.topics
            b.outbox += changelog.batch_records(
                t.changelog, b, self.writer, (t.requests, t.outcomes), {**self.offsets, **b.offsets}
            )
        self.offsets.update(b.offsets)
        return b, unreadable

    async def _prune(self, b: Batch, clocks: dict[int, float]) -> None:
        """Resolved decisions older than decision_retention_s (event time) of the partitions whose clock moved:
        deleted in this batch. The decisions this batch resolves are still pending in the store: a later batch
        prunes them.

        The cutoff moves in steps of a hundredth of the retention (at most a minute of event time): a partition is
        pruned, of the decisions before its cutoff's last step, in the batch in which its clock (``clocks``: before
        the batch) crosses a step, so a decision is kept up to one step longer than its retention. Why: one query
        per step of event time instead of one per batch and partition, which with batches of a few events cost as
        much as deciding. The steps are a function of the watermarks alone, which the store, the changelog and a
        rebuild carry, so a restarted or restored worker prunes in the same batches as one that ran on."""
        keep = self.settings.decision_retention_s
        step = min(keep / 100, 60.0)
        due = {}
        for p, t in b.watermarks.items():
            edge = math.floor((t - keep) / step)
            if p not in clocks or edge > math.floor((clocks[p] - keep) / step):
                due[p] = edge * step
        for did, p in await self.store.aged_decisions(due):
            b.pruned[did] = p
        # Gone from memory too (the join already treats them as unknown: Join._aged).
        self.join.forget(b.pruned)
        if b.pruned:
            b.count("pruned_decisions", len(b.pruned))

    # -- decoding ------------------------------------------------------------------------------------------------
    def _decode(self, m: Message) -> ev.Envelope:
        if m.value is None:
            raise ev.EventError("empty message (no value)")
        t = self.topics
        record_time = datetime.fromtimestamp(m.timestamp_ms / 1000, UTC) if m.timestamp_ms > 0 else None
        event = ev.decode(m.value, self._expected[m.topic], default_time=record_time)
        if isinstance(event, ev.SeedSelected):
            return event  # a logged decision (replay): checked when it was made
        # Far-future times: against the record's timestamp, or the wall clock when that is earlier (a producer
        # whose clock runs ahead stamps its records ahead too).
        now = self.wall_clock()
        limit = min(m.timestamp_ms / 1000, now) if m.timestamp_ms > 0 else now
        limit += self.settings.join.max_clock_skew_s
        when = event.occurred_at.timestamp()
        if when > limit:
            skew = self.settings.join.max_clock_skew_s
            raise Rejected(
                f"occurred_at {event.occurred_at.isoformat()} is {when - limit + skew:.0f}s after the "
                f"record's timestamp (or the wall clock), more than join.max_clock_skew_s ({skew:g}): "
                f"a clock is wrong"
            )
        if m.topic in (t.requests, t.outcomes):
            blueprint = event.blueprint_id  # type: ignore[attr-defined]
            if m.key != blueprint.encode():
                raise Rejected(
                    f"Kafka key {m.key!r} is not the blueprint_id {blueprint!r}: a blueprint's requests "
                    f"and outcomes must be keyed by it, so they share a partition"
                )
        if isinstance(event, ev.GraftRequested) and event.trace_id is None and m.headers:
            # A producer may carry the trace id in a header only: the selection carries it on (body and header).
            trace_id = hdr.value(m.headers, hdr.TRACE_ID)
            if trace_id:
                event = event.model_copy(update={"trace_id": trace_id})
        return event

    async def _lookups(self, decoded) -> dict[str, Known]:
        """What the store knows of the decisions this batch mentions — a request's stored answer (a retry gets it
        byte for byte), an outcome's decision when it is neither pending nor recent: one query for the batch."""
        join = self.join
        ids = set()
        for _m, e in decoded:
            if isinstance(e, (ev.GraftRequested, ev.SeedSelected)):
                ids.add(e.decision_id)
            elif isinstance(e, ev.AdaptationOutcome):
                did = e.resolved_decision_id
                if did not in join.pending and did not in join.recent:
                    ids.add(did)
        return await self.store.decision_statuses(ids) if ids else {}

    # -- the records ---------------------------------------------------------------------------------------------
    def _on_request(self, m: Message, req: ev.GraftRequested, b: Batch, answers, known) -> None:
        did = req.decision_id
        answered = answers.get(did)
        if answered is None and did in known:
            answered = ev.decode(known[did].payload, ev.SEED_SELECTED), known[did].payload
        if answered is not None:
            selected, payload = answered
            _same_request(req, selected)
            # A retried request: publish the stored answer again, byte for byte (the same value and key; the
            # source headers name this record), and decide nothing new.
            b.outbox.append(
                OutboxRow(
                    self.topics.selections,
                    req.blueprint_id.encode(),
                    payload,
                    hdr.selection(
                        decision_id=did,
                        schema_version=selected.schema_version,
                        trace_id=selected.trace_id,
                        source=(m.partition, m.offset),
                        source_timestamp=m.timestamp_ms,
                    ),
                    self._to(m, "selections"),
                )
            )
            b.count("duplicate_requests")
            return
        t0 = time.perf_counter()
        sel = self.selector
        bp = sel.blueprints.get(req.blueprint_id)
        seen = len(bp.arms) if bp is not None else 0
        selected = sel.decide(req)
        payload = ev.encode(selected)
        arms = sel.blueprints[req.blueprint_id].arms
        warm_start = _warm_start(arms, seen) if len(arms) > seen else None  # this decision registered new seeds
        headers = hdr.selection(
            decision_id=did,
            schema_version=selected.schema_version,
            trace_id=selected.trace_id,
            source=(m.partition, m.offset),
            source_timestamp=m.timestamp_ms,
            warm_start=warm_start,
        )
        # Checked before the decision is applied; a failure dead-letters the request (the state is read back).
        ev.check_selection(selected)
        size = len(payload) + len(req.blueprint_id) + sum(len(k) + len(v) for k, v in headers) + _RECORD_OVERHEAD
        if size > self.settings.kafka.max_request_size:
            raise ev.EventError(
                f"the answer would be a {size}-byte record, more than kafka.max_request_size "
                f"({self.settings.kafka.max_request_size}): it cannot be published"
            )
        sel.apply_selection(selected)
        if self.observe_selection is not None:
            self.observe_selection(time.perf_counter() - t0)
        self._record_decision(selected, payload, m.partition, b)
        answers[did] = selected, payload
        b.outbox.append(
            OutboxRow(self.topics.selections, req.blueprint_id.encode(), payload, headers, self._to(m, "selections"))
        )

    def _on_selection(self, m: Message, selected: ev.SeedSelected, b: Batch, answers, known) -> None:
        """A logged decision (replay), folded in as the worker folded it when it decided, once per decision id."""
        did = selected.decision_id
        if did in answers or did in known:
            before = answers[did][1] if did in answers else known[did].payload
            # Every copy of one decision is byte for byte the same (a re-sent outbox row, a retried request's stored
            # answer); other bytes under a known id are a new decision that the worker made after it had pruned the
            # earlier one (a request id is recognised for decision_retention_s), and the replay does the same.
            if m.value == before:
                if self.on_resent is not None:
                    self.on_resent(m, b)
                return
            self.join.supersede(did, b)
            # What became of the earlier one is moot for the store (its row is deleted): only the learned state
            # keeps it; the new decision's row must not take its status.
            b.resolutions = [r for r in b.resolutions if r.decision_id != did]
            b.pruned[did] = -1 if did in answers else known[did].partition
            answers.pop(did, None)
        partition = hdr.int_value(m.headers, hdr.SOURCE_PARTITION)
        warm_start = hdr.value(m.headers, hdr.WARM_START)
        if warm_start is not None:
            # Register the seeds this decision saw first with the warm start the worker gave them, not with the
            # pooled mean of whatever outcomes the replay has read by now.
            prior = None if warm_start == "none" else tuple(map(float, warm_start.split(",")))
            arms = self.selector.blueprint(selected.blueprint_id).arms
            arms.rows([c.seed_id for c in selected.scores], prior)  # type: ignore[arg-type]
        self.selector.apply_selection(selected)
        self._record_decision(selected, m.value, -1 if partition is None else partition, b)  # type: ignore[arg-type]
        answers[did] = selected, m.value

    def _record_decision(self, selected: ev.SeedSelected, payload: bytes, partition: int, b: Batch) -> None:
        """A decision applied to the selector: stored, and waiting in the join. Shared by a new decision and a
        replayed one, so both leave the same state."""
        t = (selected.request_time or selected.occurred_at).timestamp()
        self.join.advance(partition, t, b)
        b.decisions.append(DecisionRow.of(selected, payload, partition))
        b.count("decisions")
        self.join.decision(selected, partition, b)

    def _on_outcome(self, m: Message, outcome: ev.AdaptationOutcome, b: Batch, known) -> None:
        try:
            self.join.outcome(outcome, m.partition, b, known, m.offset)
        except JoinError as exc:
            raise Rejected(str(exc)) from None
        self.join.advance(m.partition, outcome.occurred_at.timestamp(), b)

    def _on_control(self, sw: ev.StrategySwitch, b: Batch) -> None:
        try:
            self.selector.switch_strategy(sw.strategy, sw.blueprint_id)
        except ValueError as exc:
            raise Rejected(str(exc)) from None
        if sw.logging_only is not None:
            self.selector.logging_only = sw.logging_only
            b.meta["logging_only"] = "1" if sw.logging_only else "0"
        if sw.blueprint_id is None:
            b.meta["default_strategy"] = sw.strategy
        else:
            b.touch(sw.blueprint_id, self.partitions.get(sw.blueprint_id, -1))
        b.count("strategy_switches")
        log.info("strategy switched to %s for %s", sw.strategy, sw.blueprint_id or "the default")

    def _to(self, m: Message, output: str) -> int | None:
        """The partition of an output topic for what answers input record ``m``: the same number when the topic is
        aligned with the inputs, else by key."""
        return m.partition if getattr(self.topics, output) in self.aligned else None

    def _dead_letter(self, m: Message, reason: str, b: Batch) -> None:
        b.count("dead_letters")
        if self.replay:
            # The live worker's dead letter is already on the topic: counted, not sent again.
            log.info("%s[%d]@%d was a dead letter: %s", m.topic, m.partition, m.offset, reason)
            return
        b.outbox.append(
            OutboxRow(
                self.topics.dead_letters,
                m.key,
                m.value or b"",
                hdr.dead_letter(m.headers, reason=reason, topic=m.topic, partition=m.partition, offset=m.offset),
                self._to(m, "dead_letters") if m.topic in (self.topics.requests, self.topics.outcomes) else None,
            )
        )
        log.warning(
            "dead letter from %s[%d]@%d: %s",
            m.topic,
            m.partition,
            m.offset,
            reason,
            extra={
                "topic": m.topic,
                "partition": m.partition,
                "offset": m.offset,
                "trace_id": hdr.value(m.headers, hdr.TRACE_ID),
            },
        )


def _same_request(req: ev.GraftRequested, answered: ev.SeedSelected) -> None:
    """A request whose id was answered before must be the same request (a retry), not another one reusing the id."""
    if answered.blueprint_id != req.blueprint_id:
        raise Rejected(
            f"request_id {req.request_id!r} was already answered for blueprint {answered.blueprint_id!r} "
            f"(decision {answered.decision_id}); a request id names one request"
        )
    asked = sorted((c.seed_id, c.seed_idx) for c in req.seeds)
    before = sorted((c.seed_id, c.seed_idx) for c in answered.scores)
    if asked != before:
        raise Rejected(
            f"request_id {req.request_id!r} was already answered (decision {answered.decision_id}) for "
            f"other candidates ({', '.join(s for s, _ in before)}); a request id names one request"
        )


def _warm_start(arms, row: int) -> bytes:
    """The WARM_START header of a decision whose seeds from ``row`` on are new (they share one prior)."""
    w = float(arms.prior_w[row])
    return b"none" if w == 0.0 else f"{w!r},{float(arms.prior_mean[row])!r}".encode()
