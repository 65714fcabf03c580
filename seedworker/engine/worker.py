"""The worker: consume requests and outcomes, decide, persist, publish, learn — each batch exactly once.

The worker is the poll loop around the batch processor (seedworker.engine.processor), which turns a batch of
records into one batch of changes. Per poll:

1. the processor decodes, checks, decides, joins and expires (bad records become dead letters);
2. ONE SQLite transaction stores the decisions, the outbox rows (selections and dead letters), the outcome
   resolutions, the changed blueprint states, the watermarks, the counters and the consumed offsets;
3. the outbox rows are published, those answering an input partition (selections, dead letters, changelog
   records) in one Kafka transaction per partition of that partition's own producer, which the partition's next
   owner fences; acknowledged, they are deleted from the outbox in a later transaction. When the worker is behind,
   the publish runs beside the next poll and batch (whose own publish waits for it), so Kafka's round trips
   overlap the next decisions;
4. Kafka's group commit follows, for lag monitoring only: the offsets in SQLite are the truth the consumer seeks to.

A crash before (2) leaves no trace and the batch is consumed again, giving the same decisions (the same request
against the same state draws from the same seeded generator). A crash after (2) re-publishes unsent outbox rows when
their partition is assigned again, byte for byte. So no outcome is learned twice and no request goes unanswered.

Several workers, each with its own store, share the input partitions as one consumer group: on assignment a worker
first fences the partition's previous owner, then goes on from its own state of a partition when that state is
current, and otherwise restores it from the changelog (seedworker.store.changelog), or rebuilds it from the
decision log when there is no changelog (seedworker.engine.ownership). Every worker reads the whole control topic
itself, at start up to its end before any input. A worker whose producer was fenced (it lost a partition while
paused: a zombie) stops with a message saying so; what it stored and did not publish is superseded by the
partition's new owner.

``Worker(settings, bus=MemoryBus(), burst=True)`` runs it in-process until the inputs are drained: the embedding
API for testing a Tamiyo integration without a broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from seedworker.broker.base import TP, Bus, BusError, Committed, Fenced, Message, Outgoing
from seedworker.broker.kafka import KafkaBus
from seedworker.core.config import ConfigError, Settings
from seedworker.engine import ownership
from seedworker.engine.processor import Processor
from seedworker.store import changelog
from seedworker.store.rows import Batch, OutboxRow, UnsentRow
from seedworker.store.store import Store, StoreError

log = logging.getLogger("seedworker.engine.worker")

# Test hook (tests/test_changelog_kafka.py), unset in production: seconds to sleep between the Kafka transactions
# of one publish, so that a test can SIGKILL or SIGSTOP the worker while part of a stored batch is published and
# the rest is not. Not a SEEDWORKER_* name: those are settings, and unknown ones are refused. Read once at import:
# unset, it costs one falsy check per transaction.
_TEST_PAUSE_S = float(os.environ.get("TEST_SEEDWORKER_PAUSE_BEFORE_PUBLISH") or 0)


class Histogram(Protocol):
    def observe(self, amount: float) -> None: ...


class Timings(Protocol):
    """What the worker measures (seconds): deciding one request, and the SQLite transaction of a batch. The
    Prometheus metric set (seedworker.ops.metrics.WorkerMetrics) attaches itself as ``worker.metrics``."""

    selection: Histogram
    transaction: Histogram


class _Unobserved:
    def observe(self, amount: float) -> None:
        pass


class Unmeasured:
    """No metrics endpoint: nothing is measured."""

    selection = transaction = _Unobserved()


@dataclass
class Counters:
    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)


class Worker:
    """``await Worker(settings).run()`` until SIGTERM/SIGINT; ``burst=True`` stops once the inputs are drained."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: Bus | None = None,
        store: Store | None = None,
        burst: bool = False,
        idle_polls: int = 3,
        shutdown_timeout_s: float = 30.0,
        metrics: Timings | None = None,
    ):
        self.settings = settings
        self.topics = settings.kafka.topics
        self.bus: Bus = bus or KafkaBus(settings.kafka)
        self.store = store or Store(settings.db)
        self.burst = burst
        self.idle_polls = idle_polls
        self.shutdown_timeout_s = shutdown_timeout_s
        self.counters = Counters()
        self.metrics: Timings = metrics or Unmeasured()
        self.processor = Processor(settings, self.store, observe_selection=self._observe_selection)
        self._stored_offsets: dict[TP, int] = {}
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
        self._uncommitted: dict[TP, int] = {}
        self._in_flight: _InFlight | None = None  # the last stored batch, while its publish runs (see process)
        self._last_group_commit = 0.0
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()

    def __repr__(self) -> str:
        c = self.counters
        return (
            f"<Worker decisions={c['decisions']} outcomes={c['outcomes_learned']} dead_letters={c['dead_letters']} "
            f"pending={self.pending_decisions} held={self.held_outcomes}>"
        )

    def _observe_selection(self, seconds: float) -> None:
        self.metrics.selection.observe(seconds)  # through the worker: metrics may be attached after construction

    @property
    def selector(self):
        """The learning state (seedworker.core.selector.SeedSelector) the processor decides with."""
        return self.processor.selector

    @property
    def pending_decisions(self) -> int:
        """Decisions waiting for their outcome (a gauge of /metrics)."""
        return len(self.processor.join.pending)

    @property
    def held_outcomes(self) -> int:
        """Outcomes waiting for their decision (a gauge of /metrics)."""
        return self.processor.join.held_count

    # -- life cycle ----------------------------------------------------------------------------------------------
    def readiness(self) -> dict[str, bool]:
        """What /readyz checks, all of which must hold. A stopping worker is no longer ready, so traffic moves away
        while it drains."""
        return {
            "store_open": self.store.is_open,
            "consumer_started": self.ready.is_set(),
            "running": not self._stopping.is_set(),
        }

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
                        # Behind (the poll gave at least half a batch): publish beside the next batch, for
                        # throughput. Caught up: publish, then poll, so what arrives meanwhile makes one batch
                        # rather than a few records that would wait for this publish anyway (measured: at 500
                        # requests/s the overlap raised the p50 latency by ~15 ms on a busy two-core machine).
                        await self.process(messages, wait=len(messages) < max(self.settings.kafka.max_batch // 2, 1))
                    else:
                        await self.settle()
                        await self._maybe_group_commit()  # the last batches' offsets, once the inputs are idle
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
            self._stopping.set()  # whatever ended the loop: no more taking partitions over (see _on_assign)
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
        counts = await self.bus.ensure_topics(
            {
                t.requests: k.partitions,
                t.outcomes: k.partitions,
                t.selections: k.output_partitions,
                t.dead_letters: k.output_partitions,
                t.control: 1,
                t.changelog: k.partitions,
            },
            {t.changelog: changelog.TOPIC_CONFIG},
        )
        for other in (t.outcomes, t.changelog):
            if counts.get(t.requests) != counts.get(other):
                raise ConfigError(
                    f"topics {t.requests!r} ({counts.get(t.requests)} partitions) and {other!r} "
                    f"({counts.get(other)} partitions) must have the same partition count: a blueprint's requests, "
                    f"outcomes and state have to be on the same partition number (co-partitioning). Refusing to start."
                )
        self._counts = counts
        self.processor.aligned = frozenset(
            name for name in (t.selections, t.dead_letters) if counts.get(name) == counts[t.requests]
        )
        # Every worker applies every strategy switch, in order with its other events: the control topic is read
        # outside the group, from the offset in this store.
        self.bus.broadcast(
            {(t.control, p): self._stored_offsets.get((t.control, p), 0) for p in range(counts[t.control])}
        )
        # The bus's producer exists once it is started; nothing is consumed before the first poll, so unsent outbox
        # rows still go out before anything new is decided.
        await self.bus.start([t.requests, t.outcomes], self._on_assign, self._on_revoke)
        await self._republish()
        await self._catch_up()
        self.ready.set()
        log.info("worker started: %s", self)

    async def _catch_up(self) -> None:
        """Every strategy switch already on the control topic, applied before the first input is read. Read beside
        the inputs, a switch could come after some of them (a batch takes its records in time order, and a backlog
        of requests older than the switch would be decided first): a worker started after a switch would answer
        with the strategy the switch replaced."""
        while messages := await self.bus.catch_up(self.settings.kafka.max_batch):
            async with self._exclusive:
                await self.process(messages)

    async def close(self) -> None:
        try:
            try:
                await self.settle()
            except Exception as exc:  # noqa: BLE001 - closing must not hide why the worker stops
                # Stored, so still in the outbox: published at the next start (or by the partition's next owner).
                log.warning("the last batch's publish did not complete: %s", exc)
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
        """The in-memory state from SQLite (rows it cannot read are reported and skipped)."""
        s = self.store
        self._stored_offsets = await s.offsets()
        restored = await self.processor.restore()
        if restored.unreadable:
            log.error("%d stored rows could not be read and were skipped (see above)", len(restored.unreadable))
        self.counters.values.update(await s.counters())
        meta = await s.meta()
        self.worker_id = meta.get("worker_id", "")
        if not self.worker_id:
            self.worker_id = uuid.uuid4().hex
            await s.write(Batch(meta={"worker_id": self.worker_id}))
        self.processor.writer = self.worker_id

    def _answered(self, row: UnsentRow) -> int | None:
        return self._owner(row.message)

    def _owner(self, row: OutboxRow) -> int | None:
        return ownership.answered_partition(row.topic, row.headers, self.topics, row.partition)

    async def _publish(self, rows: list[OutboxRow]) -> None:
        """Publish outbox rows: those answering an input partition in one transaction of its producer per
        partition, the others (dead letters of the control topic) on the idempotent producer."""
        groups: dict[int | None, list[Outgoing]] = {}
        for row in rows:
            groups.setdefault(self._owner(row), []).append(Outgoing(*row))
        # The partitions' transactions are independent (a producer each): in flight together, a batch waits for one
        # transaction's round trips (add partitions, produce, end) instead of one partition's after the other. Every
        # transaction is awaited before an error is raised, so none is left open.
        if _TEST_PAUSE_S:  # the test hook: the transactions one after the other, with a pause in between
            for i, (owner, messages) in enumerate(groups.items()):
                if i:
                    log.warning("test hook: pausing %gs before transaction %d of %d", _TEST_PAUSE_S, i + 1, len(groups))
                    await asyncio.sleep(_TEST_PAUSE_S)
                await self._send(owner, messages)
            return
        results = await asyncio.gather(
            *(self._send(owner, messages) for owner, messages in groups.items()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, Fenced)), errors[0])

    async def _send(self, owner: int | None, messages: list[Outgoing]) -> None:
        try:
            await self.bus.send(messages, owner=owner)
        except Fenced as exc:
            raise Fenced(
                f"{exc}. Stopping: partition {exc.partition} belongs to another worker now, which answers its "
                f"requests from the changelog; this worker's unpublished answers for it are superseded (its store "
                f"keeps them until it is assigned the partition again). Start it again to rejoin the group.",
                exc.partition,
            ) from exc

    async def _republish(self, rows: list[UnsentRow] | None = None) -> None:
        """Publish unsent outbox rows again, byte for byte: at start those that answer no input partition (dead
        letters of control messages), at assignment those of the partitions whose own state is current."""
        if rows is None:
            rows = [row for row in await self.store.unsent() if self._answered(row) is None]
        if rows:
            log.info("re-publishing %d unsent outbox rows", len(rows))
            await self._publish([row.message for row in rows])
            await self.store.mark_sent([r.id for r in rows])

    # -- partition ownership (seedworker.engine.ownership) ---------------------------------------------------------------
    async def _on_assign(self, tps: list[tuple[str, int]]) -> None:
        # Paused before anything else: the consumer may already fetch them from the group's committed offsets.
        self.bus.pause(tps)
        if self._stopping.is_set():
            # A rebalance while the worker closes (after SIGTERM, or an error such as Fenced): its consumer is still
            # a member until it leaves, but a worker on its way out must not take partitions over, which would
            # fence their owner's producers, claim them in the group's commits and drop its own unsent rows.
            return
        try:
            async with self._exclusive:
                self._rebalances += 1
                self._assigned = set(tps)
                await self.settle()  # the unsent rows read next must not include those being published
                await self._take_over(tps)
        except BaseException as exc:
            # aiokafka logs an error raised here and goes on fetching: stop consuming instead (run() raises it).
            self._assign_error = exc
            raise
        self.bus.resume([tp for tp in tps if tp[1] not in {p for _, p in self._unclaimed}])

    async def _take_over(self, tps: list[TP]) -> None:
        """Before anything of the assigned partitions is processed: go on from this store's state of each where it is
        current (publishing its unsent rows), rebuild the others from the topics, drop superseded unsent rows, seek,
        and claim the partitions in the group's commits."""
        t = self.topics
        parts = ownership.co_partitioned(tps, t)
        # First of all: the previous owner can publish nothing more for these partitions (its open transaction is
        # aborted), so the changelog read below is the last word on their state.
        await self.bus.fence(parts)
        unsent: dict[int, list[UnsentRow]] = {}
        for row in await self.store.unsent():
            p = self._answered(row)
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
            log.warning(
                "dropping %d unsent outbox rows of partitions %s that another worker took over (decisions %s)",
                len(superseded),
                sorted({p for p in stale if p in unsent}),
                ", ".join(filter(None, (r.decision_id for r in superseded))) or "none",
            )
        rebuild = [p for p in parts if p in stale]
        if rebuild:
            await self._replace(rebuild, committed, superseded, stale)
        elif superseded:
            b = Batch(superseded=[row.id for row in superseded])
            b.count("superseded_outbox_rows", len(superseded))
            await self.store.write(b)
            self.counters.add("superseded_outbox_rows", len(superseded))
        await self._republish([row for p in parts if p not in stale for row in unsent.get(p, ())])
        await self._complete_changelog(parts)
        for tp in tps:
            self.bus.seek(tp, self._stored_offsets.get(tp, 0))
        claim = {tp: self._stored_offsets.get(tp, 0) for p in parts for tp in self._pair(p)}
        claim = {tp: o for tp, o in claim.items() if committed.get(tp) != Committed(o, self.worker_id)}
        if claim and not await self.bus.commit(claim, self.worker_id):
            self._unclaimed = claim  # the partitions stay paused
            log.warning(
                "could not claim partitions %s in the group's commits: paused until the claim goes through",
                sorted({p for _, p in claim}),
            )
        log.info(
            "assigned partitions %s: %d from this store, %d rebuilt from the topics",
            parts,
            len(parts) - len(rebuild),
            len(rebuild),
        )

    def _pair(self, p: int) -> list[TP]:
        return [(self.topics.requests, p), (self.topics.outcomes, p)]

    async def _claim_again(self) -> None:
        if await self.bus.commit(self._unclaimed, self.worker_id):
            self.bus.resume(sorted({tp for q in {p for _, p in self._unclaimed} for tp in self._pair(q)}))
            self._unclaimed = {}

    async def _replace(
        self, parts: list[int], committed: dict[TP, Committed], superseded: list[UnsentRow], why: dict[int, str]
    ) -> None:
        """Replace this worker's state of ``parts`` with their state as the changelog has it, or, for a partition
        without a changelog, rebuilt from the decision log: in the store (one transaction per source, with the
        partitions' offsets and the superseded rows), then in memory (read back from it)."""
        t = self.topics
        t0 = time.perf_counter()
        states = await ownership.read_changelog(self.settings, self.bus, parts)
        restored = [p for p in parts if states[p].found]
        missing = [p for p in parts if p not in restored]
        pieces: list[tuple[str, ownership.Rebuilt]] = []
        if restored:
            for p in restored:
                log.info("partition %d: %s; restoring it from the changelog", p, why[p])
            pieces.append(("the changelog", ownership.from_changelog([states[p] for p in restored], t)))
        if missing:
            for p in missing:
                log.info("partition %d: %s; no changelog: rebuilding it from the decision log", p, why[p])
            floors = {tp: c.offset for tp, c in committed.items() if tp[0] == t.requests and tp[1] in missing}
            pieces.append(
                ("the decision log", await ownership.rebuild(self.settings, self.bus, missing, self._counts, floors))
            )
        sel = self.selector
        drop = [row.id for row in superseded]
        for source, rebuilt in pieces:
            strategies = {bp: sel.blueprints[bp].strategy for bp in rebuilt.blueprints if bp in sel.blueprints}
            b = rebuilt.batch(drop, strategies)
            drop = []
            if source == "the changelog":
                # Read from a complete changelog: this store's rows of the partitions are that changelog's.
                b.meta.update({_complete(p): "1" for p in rebuilt.partitions})
                b.count("restored_partitions", len(rebuilt.partitions))  # of the rebuilt_partitions
            else:
                b.meta.update({_complete(p): "0" for p in rebuilt.partitions})
            await self.store.write(b)
            self._stored_offsets.update(rebuilt.offsets)
            for name, n in b.counters.items():
                self.counters.add(name, n)
            log.info(
                "%s partitions %s from %s (%d records) in %.2fs: %d blueprints, %d decisions, %d held outcomes%s",
                "restored" if source == "the changelog" else "rebuilt",
                rebuilt.partitions,
                source,
                rebuilt.records,
                time.perf_counter() - t0,
                len(rebuilt.blueprints),
                len(rebuilt.decisions),
                len(rebuilt.held),
                "" if rebuilt.complete else " (INCOMPLETE: records were deleted)",
            )
        await self.processor.restore()

    async def _complete_changelog(self, parts: list[int]) -> None:
        """Write the whole state of each partition whose changelog this store has neither read nor written from
        the start (a first start, a rebuild, a store from before the changelog existed): from now on a restore from
        the changelog gives this state."""
        meta = await self.store.meta()
        todo = [p for p in parts if meta.get(_complete(p)) != "1"]
        if not todo:
            return
        s = self.store
        for p in todo:
            rows = await ownership.snapshot(self.processor, s, p, self._stored_offsets, self.worker_id)
            ids = await s.write(Batch(outbox=rows, meta={_complete(p): "1"}))
            await self._publish(rows)
            await s.mark_sent(ids)
            log.info("partition %d: wrote its whole state to the changelog (%d records)", p, len(rows))

    async def _on_revoke(self, tps: list[tuple[str, int]]) -> None:
        """Before the partitions go: what was published is marked sent, the offsets are committed under this
        worker's id (so its next owner knows who processed them last), and the partitions' producers close."""
        async with self._exclusive:
            self._rebalances += 1
            self._assigned = set()
            try:
                await self.settle()  # what is published of the partitions before they go
            except BaseException as exc:
                # aiokafka logs an error raised here and goes on: run() raises it instead, after its poll.
                self._assign_error = exc
                raise
            await self._flush_acks()
            await self._group_commit()
            self._unclaimed = {}
            await self.bus.release(sorted({p for t, p in tps if t == self.topics.requests}))

    async def _flush_acks(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            await self.store.mark_sent(ids)

    # -- one batch -----------------------------------------------------------------------------------------------
    async def process(self, messages: list[Message], *, wait: bool = True) -> None:
        """Process one batch: decide and join, store it in one SQLite transaction, publish its outbox rows.

        With ``wait=False`` (the poll loop, when it is behind) the publish is started and left running: the loop polls, processes and
        stores the next batch meanwhile, and before that batch's publish begins, waits for this one (``settle``),
        so the partitions' transactions still follow one another in batch order (a producer has one transaction
        at a time) and a batch's acknowledgements and offsets count only once Kafka has it. What runs beside a
        publish is only in-memory work and the next SQLite transaction, which needs nothing of it; the group
        commit and every rebalance settle first. A publish that fails is raised by the next ``settle``, the batch
        (and any stored after it) still in the outbox, published at the next start."""
        b = await self.processor.process(messages)
        b.sent, self._acked = self._acked, []
        t0 = time.perf_counter()
        try:
            ids = await self.store.write(b)
        except StoreError as exc:
            # Nothing of this batch was kept, so nothing of it is published and its offsets are neither stored nor
            # committed: the next start consumes it again. The in-memory state has already taken it in, so this
            # worker must not go on: it stops consuming. The rows acknowledged before it are still unmarked.
            self._acked = b.sent + self._acked
            raise StoreError(
                f"{exc}; stopped consuming: the last batch ({len(messages)} messages, "
                f"{_ranges(messages)}) was not stored, so it was neither published nor acknowledged "
                f"and is processed again at the next start"
            ) from exc
        self.metrics.transaction.observe(time.perf_counter() - t0)
        self._stored_offsets.update(b.offsets)
        for name, n in b.counters.items():
            self.counters.add(name, n)
        await self.settle()  # the previous batch's publish, before this one's
        if b.outbox:
            task = asyncio.create_task(self._publish(b.outbox))
            self._in_flight = _InFlight(task, ids, dict(b.offsets))
            if wait:
                await self.settle()
        else:
            self._uncommitted.update(b.offsets)
        await self._maybe_group_commit()

    async def settle(self) -> None:
        """Wait for the publish of the last stored batch, if one is running; then its rows count as acknowledged
        and its offsets as committable. Raises what the publish raised (Fenced, or BusError saying the rows wait
        in the outbox)."""
        flight = self._in_flight
        if flight is None:
            return
        try:
            # Shielded: a cancelled caller leaves the transactions to finish rather than tearing one in the middle.
            await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            if not flight.task.done():
                raise  # this caller was cancelled; the publish runs on and the next settle waits for it
            self._in_flight = None
            raise
        except BaseException as exc:
            self._in_flight = None
            if isinstance(exc, BusError) and not isinstance(exc, Fenced):
                raise BusError(
                    f"{exc}; the batch is stored and its {len(flight.ids)} messages stay in the outbox, "
                    f"published at the next start"
                ) from exc
            raise
        self._in_flight = None
        self._acked.extend(flight.ids)
        self._uncommitted.update(flight.offsets)

    async def _maybe_group_commit(self) -> None:
        if time.monotonic() - self._last_group_commit >= self.settings.kafka.group_commit_interval_s:
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


@dataclass(slots=True)
class _InFlight:
    """A stored batch whose outbox rows are being published: what counts once Kafka has them."""

    task: asyncio.Task
    ids: list[int]  # its outbox rows, deleted from the outbox in a later transaction
    offsets: dict[TP, int]  # its consumed offsets, for the group commit


def _complete(p: int) -> str:
    """The meta key saying this store's state of input partition p is in the changelog, complete."""
    return f"changelog_complete.{p}"


def _ranges(messages: list[Message]) -> str:
    """ "topic[partition]@first-last, ..." for an error message."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for m in messages:
        lo, hi = spans.get((m.topic, m.partition), (m.offset, m.offset))
        spans[(m.topic, m.partition)] = (min(lo, m.offset), max(hi, m.offset))
    return ", ".join(f"{t}[{p}]@{lo}-{hi}" for (t, p), (lo, hi) in sorted(spans.items()))


async def run_worker(settings: Settings, **kwargs) -> Worker:
    worker = Worker(settings, **kwargs)
    t0 = time.perf_counter()
    await worker.run()
    log.info("ran for %.1fs", time.perf_counter() - t0)
    return worker
