"""The worker: consume requests and outcomes, decide, persist, publish, learn — each batch exactly once.

Per batch (one ``poll``):
1. every message is decoded; bad ones become dead letters (original bytes, key, headers and the reason);
2. requests are decided from the current state; outcomes are joined to their decision and learned;
3. ONE SQLite transaction stores the decisions, the outbox rows (selections and dead letters), the outcome
   resolutions, the changed blueprint states, the counters and the consumed offsets;
4. the outbox rows are published (idempotent producer, acks=all) and marked sent in the next transaction;
5. Kafka's group commit follows, for lag monitoring only: the offsets in SQLite are the truth the consumer seeks to.

A crash before (3) leaves no trace and the batch is consumed again, giving the same decisions (the same request
against the same state draws from the same seeded generator). A crash after (3) re-publishes unsent outbox rows at
start, byte for byte. So no outcome is learned twice and no request goes unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson

from . import events as ev
from .bus import Bus, KafkaBus, Message, Outgoing
from .config import ConfigError, Settings
from .selector import SeedSelector
from .store import Batch, Store, dump_state

log = logging.getLogger("seedworker.worker")

JSON = b"application/json"


def selection_headers(selected: ev.SeedSelected) -> tuple[tuple[str, bytes], ...]:
    headers = [("event_type", ev.SEED_SELECTED.encode()), ("schema_version", ev.SCHEMA_VERSION.encode()),
               ("content-type", JSON), ("decision_id", selected.decision_id.encode())]
    if selected.trace_id:
        headers.append(("trace_id", selected.trace_id.encode()))
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
        self._acked: list[int] = []
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._last_group_commit = 0.0
        self._joined: dict[str, ev.SeedSelected] = {}  # decisions this batch resolved: no longer pending, not stored
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()

    def __repr__(self) -> str:
        c = self.counters
        return (f"<Worker decisions={c['decisions']} outcomes={c['outcomes_learned']} dead_letters={c['dead_letters']} "
                f"pending={len(self.selector.pending)} held={sum(map(len, self.held.values()))}>")

    # -- life cycle ----------------------------------------------------------------------------------------------
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
                messages = await self.bus.poll(self.settings.kafka.poll_timeout_ms, self.settings.kafka.max_batch)
                if messages:
                    idle = 0
                    await self.process(messages)
                else:
                    idle += 1
                    await self._flush_acks()
                    if self.burst and idle >= self.idle_polls:
                        break
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
        # The bus's producer exists once it is started; nothing is consumed before the first poll, so unsent outbox
        # rows still go out before anything new is decided.
        await self.bus.start([t.requests, t.outcomes, t.control], self._on_assign, self._on_revoke)
        await self._republish()
        self.ready.set()
        log.info("worker started: %s", self)

    async def close(self) -> None:
        try:
            await self._flush_acks()
            if self.ready.is_set():
                await self._group_commit()
        finally:
            await self.bus.stop()
            await self.store.close()
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

    async def _republish(self) -> None:
        rows = await self.store.unsent()
        if rows:
            log.info("re-publishing %d unsent outbox rows", len(rows))
            await self.bus.send(_outgoing(row[1:]) for row in rows)
            await self.store.mark_sent([r[0] for r in rows])

    async def _on_assign(self, tps: list[tuple[str, int]]) -> None:
        for tp in tps:
            self.bus.seek(tp, self._stored_offsets.get(tp, 0))

    async def _on_revoke(self, tps: list[tuple[str, int]]) -> None:
        await self._flush_acks()
        await self._group_commit()

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
                self._on_request(event, b, touched, known)
            elif isinstance(event, ev.AdaptationOutcome):
                self._on_outcome(event, b, touched, known)
            elif isinstance(event, ev.StrategySwitch):
                self._on_control(m, event, b, touched)
        self._expire(b, touched)
        for bp_id in touched:
            bp = self.selector.blueprints[bp_id]
            b.blueprints[bp_id] = (dump_state(bp.to_dict()), bp.version)
        b.meta["watermark"] = repr(self.watermark)
        ids = await self.store.write(b)
        self._stored_offsets.update(b.offsets)
        for name, n in b.counters.items():
            self.counters.add(name, n)
        if b.outbox:
            await self.bus.send(_outgoing(row) for row in b.outbox)
            self._acked.extend(ids)
        self._uncommitted.update(b.offsets)
        now = time.monotonic()
        if now - self._last_group_commit >= self.settings.kafka.group_commit_interval_s:
            await self._group_commit()

    async def _group_commit(self) -> None:
        """Kafka's group offsets only feed lag monitoring (SQLite's are the truth), so they are committed
        periodically rather than after every batch."""
        self._last_group_commit = time.monotonic()
        if self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            await self.bus.commit(offsets)

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
        log.warning("dead letter from %s[%d]@%d: %s", m.topic, m.partition, m.offset, reason)

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
        return await self.store.decision_statuses(ids) if ids else {}

    def _remember(self, did: str, status: str) -> None:
        self.recent[did] = status
        if len(self.recent) > self.settings.dedup_window:
            self.recent.popitem(last=False)

    def _on_request(self, req: ev.GraftRequested, b: Batch, touched: set[str], known) -> None:
        did = req.decision_id
        # A retry may follow its decision's outcome in the same batch: then the decision is neither pending nor
        # among the stored statuses looked up before the batch (it was pending then), but in _joined.
        answered = self.selector.pending.get(did) or self._joined.get(did)
        if answered is not None or did in known:
            # A retried request: publish the stored answer again, byte for byte, and decide nothing new.
            payload = ev.encode(answered) if answered is not None else known[did][1]
            b.outbox.append((self.topics.selections, req.blueprint_id.encode(), payload,
                             _headers_blob(selection_headers(ev.decode(payload)))))  # type: ignore[arg-type]
            b.count("duplicate_requests")
            return
        selected = self.selector.decide(req)
        self.selector.apply_selection(selected)
        self.selector.pending[did] = selected
        payload = ev.encode(selected)
        b.decisions.append((did, req.request_id, req.blueprint_id, selected.seed_id, selected.seed_idx,
                            selected.strategy, selected.propensity, int(selected.explored), selected.state_version,
                            req.occurred_at.timestamp(), payload))
        b.outbox.append((self.topics.selections, req.blueprint_id.encode(), payload,
                         _headers_blob(selection_headers(selected))))
        b.count("decisions")
        touched.add(req.blueprint_id)
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
                        selected.seed_id)
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


def _headers_blob(headers) -> bytes:
    # latin-1 maps every byte to one code point, so binary header values survive the JSON round trip.
    return orjson.dumps([[k, v.decode("latin-1")] for k, v in headers])


def _outgoing(row: tuple) -> Outgoing:
    topic, key, value, blob = row
    return Outgoing(topic, key, value, tuple((k, v.encode("latin-1")) for k, v in orjson.loads(blob)))


async def run_worker(settings: Settings, **kwargs) -> Worker:
    worker = Worker(settings, **kwargs)
    t0 = time.perf_counter()
    await worker.run()
    log.info("ran for %.1fs", time.perf_counter() - t0)
    return worker
