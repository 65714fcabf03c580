"""Partition ownership: several workers in one consumer group, each with its own SQLite.

The inputs are keyed by blueprint id, so a blueprint's requests and outcomes carry the same partition number, and
the group's range assignment gives both partitions to the same worker. A worker's store holds the state of the
partitions it owns and of those it owned before; only the first are live.

**Who processed a partition last.** Every group commit carries the committing worker's id (kept in its store) as
metadata, and a worker *claims* each partition it is assigned before it processes anything of it: it commits its
starting offsets for the partition under its own id. So when partition p is assigned to worker W, the group's
commits for p tell whether anybody else processed p since W last did:

* they name W (nobody claimed p since) and W's stored offsets are at least the committed ones (a SIGKILLed worker's
  group commit lags its SQLite; the batches after it are still its own): W's state of p is **current**. W goes on
  from its store and publishes its unsent outbox rows for p now, byte for byte (as a lone worker does at start);
* nobody ever committed p (a new group, or one whose offsets expired): the store is trusted, as a lone worker's
  always was;
* they name another worker: W's state of p is **stale**. W rebuilds p from the topics (``rebuild``: the replay
  machinery, seedworker.engine.replay, fed only the selections answering p's requests — header ``source.partition`` — the
  dead letters of p's requests and p's outcomes) into a scratch store, then replaces its rows of p's blueprints
  (states, decisions, held outcomes) and p's offsets in ONE transaction. Its unsent outbox rows for p are dropped as
  superseded (counted ``superseded_outbox_rows``, logged with their decision ids): the other worker answered those
  requests, or W answers them again from the rebuilt state; publishing W's stored answers could give one decision
  id two different answers.

Unsent rows of a partition W is not assigned stay unpublished; once the group's commits for it name another worker
they are dropped as superseded. A claim that does not go through (the group is rebalancing again) leaves the
partition paused until it does. Strategy switches are not per partition: every worker reads the whole control topic
itself (``Bus.broadcast``), so a rebuilt blueprint keeps the per-blueprint strategy the worker's own state
has. Counters stay per worker (what this worker did); a rebuild adds only ``rebuilt_partitions``. Pending decisions
and held outcomes of partitions a worker no longer owns still expire by its event-time clock, as a lone worker's do
for a lagging partition: if the worker gets the partition back with a current state nobody else touched it
meanwhile, and if the state is stale those rows are replaced.

Limits (double failures):

* a *zombie*, a worker cut off from the group coordinator (a long pause, a network partition), is fenced by the
  broker: its successor opens the partition's transactional producer first (``Bus.fence``), which aborts the
  zombie's open transaction and makes its next one fail (``Fenced``: the zombie stops);
* the group's offsets expire once the whole group has been gone for ``offsets.retention.minutes`` (Kafka's default:
  7 days); a worker then trusts a stale state of a partition another worker processed after it;
* a stale partition is restored from the changelog (seedworker.store.changelog), which needs no deleted record;
  only without a changelog is it rebuilt from the topics, which needs those records (a rebuild from partly
  deleted topics is logged as incomplete) and reads one partition of each aligned output topic;
* a request id reused by a blueprint of a partition another worker owns is not recognised as reused (each worker
  knows the decisions of its own partitions): both workers answer it under the same decision id;
* a dead letter for a bad *outcome* that a worker stored but had not published when it died is lost (its successor
  reads the outcome during the rebuild, counts it and does not dead-letter it again); requests are dead-lettered
  again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import TopicPartition

from seedworker.broker.base import TP, Bus, BusError, Committed, Headers
from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.config import Settings, Topics
from seedworker.core.join import HeldOutcome, Resolution
from seedworker.engine.merge import ranks
from seedworker.engine.processor import Processor
from seedworker.engine.replay import Replay, Span, in_offset_order, merged
from seedworker.store import changelog
from seedworker.store.rows import Batch, BlueprintRow, OutboxRow, StoredDecision, dump_state, load_state
from seedworker.store.store import Store

log = logging.getLogger("seedworker.engine.ownership")


def co_partitioned(tps: Iterable[TP], topics: Topics) -> list[int]:
    """The partition numbers of an assignment, which must hold the same numbers of the requests and outcomes."""
    requests = {p for t, p in tps if t == topics.requests}
    outcomes = {p for t, p in tps if t == topics.outcomes}
    if requests != outcomes:
        raise BusError(
            f"the group assigned this worker {topics.requests} partitions {sorted(requests)} but "
            f"{topics.outcomes} partitions {sorted(outcomes)}: a blueprint's outcomes would not reach "
            f"the worker holding its decisions (do all workers use the range assignor?)"
        )
    return sorted(requests)


def answered_partition(topic: str, headers: Headers, topics: Topics, partition: int | None = None) -> int | None:
    """The input partition a published record answers: a selection's request partition, a dead letter's source
    partition when it came from an input topic, a changelog record's own ``partition``; None for anything else (a
    dead letter of the control topic, a selection without the header)."""
    if topic == topics.changelog:
        return partition
    if topic == topics.selections:
        return hdr.int_value(headers, hdr.SOURCE_PARTITION)
    if topic == topics.dead_letters and hdr.value(headers, hdr.DLQ_TOPIC) in (topics.requests, topics.outcomes):
        return hdr.int_value(headers, hdr.DLQ_PARTITION)
    return None


def own_state_current(
    p: int, topics: Topics, stored: dict[TP, int], committed: dict[TP, Committed], me: str
) -> tuple[bool, str]:
    """Whether this worker's stored state of partition ``p`` is the latest, and why (for the log)."""
    tps = [(topics.requests, p), (topics.outcomes, p)]
    commits = {tp: committed[tp] for tp in tps if tp in committed}
    if not commits:
        return True, "no group commit yet: the store is trusted"
    others = {c.owner for c in commits.values()} - {me, ""}
    if others:
        return False, f"worker {', '.join(sorted(others))} processed it since"
    behind = [
        f"{t}[{q}] stored {stored.get((t, q), 0)} < committed {c.offset}"
        for (t, q), c in commits.items()
        if stored.get((t, q), 0) < c.offset
    ]
    if behind:
        return False, "the store is behind the group: " + ", ".join(behind)
    return True, "this worker processed it last"


@dataclass
class Rebuilt:
    """The state of some input partitions, rebuilt from the topics."""

    partitions: list[int]
    blueprints: dict[str, BlueprintRow]
    decisions: list[StoredDecision]
    held: list[HeldOutcome]
    watermarks: dict[int, float]
    offsets: dict[TP, int]  # the requests and outcomes offsets of the partitions
    records: int
    complete: bool  # nothing it needed had been deleted (retention)

    def batch(self, superseded: list[int], strategies: dict[str, str | None]) -> Batch:
        """The one transaction that replaces the worker's rows of these partitions with these, drops the
        ``superseded`` outbox rows and stores the partitions' offsets. ``strategies``: the per-blueprint strategy
        of the worker's own state, kept (switches are read by every worker, not rebuilt)."""
        b = Batch(
            replaced_partitions=list(self.partitions),
            superseded=list(superseded),
            offsets=dict(self.offsets),
            watermarks=dict(self.watermarks),
            held=list(self.held),
        )
        for bp_id, row in self.blueprints.items():
            if bp_id in strategies:
                state = load_state(row.state)
                state["strategy"] = strategies[bp_id]
                row = row._replace(state=dump_state(state))
            b.blueprints[bp_id] = row
        for d in self.decisions:
            b.decisions.append(d.row)
            if d.status != "pending":
                b.resolutions.append(Resolution(d.row.decision_id, d.status, d.reward, d.outcome_time))
        b.count("rebuilt_partitions", len(self.partitions))
        if superseded:
            b.count("superseded_outbox_rows", len(superseded))
        return b


async def rebuild(
    settings: Settings, bus: Bus, partitions: Iterable[int], counts: dict[str, int], request_floors: dict[TP, int]
) -> Rebuilt:
    """Rebuild the state of ``partitions`` (input partition numbers) from the topics, as ``seedworker replay`` does,
    keeping only their records. ``counts``: partition counts of the topics; ``request_floors``: graft.requested
    offsets not to go below (the group's committed ones: whatever lies before them was processed)."""
    t = settings.kafka.topics
    wanted = sorted(set(partitions))

    def parts_of(topic: str) -> list[int]:
        # An output topic aligned with the inputs has what answers input partition p in its partition p (the
        # worker sends it there); otherwise it went by key, to any partition.
        return wanted if counts[topic] == counts[t.requests] else list(range(counts[topic]))

    tps = (
        [TopicPartition(t.selections, q) for q in parts_of(t.selections)]
        + [TopicPartition(t.dead_letters, q) for q in parts_of(t.dead_letters)]
        + [TopicPartition(t.outcomes, p) for p in wanted]
    )
    records = 0
    store = await Store(":memory:").open()
    try:
        replay = await Replay(settings, store).start()
        async with bus.reader() as reader:
            reader.assign(tps)
            first, end = await reader.beginning_offsets(tps), await reader.end_offsets(tps)
            spans = [Span(tp.topic, tp.partition, first[tp], end[tp], first[tp]) for tp in tps]
            async for m in merged(reader, [s for s in spans if s.topic == t.dead_letters], {t.dead_letters: 0}):
                if answered_partition(m.topic, m.headers, t) in wanted:
                    replay.read_ahead(m)
            async for m in merged(reader, spans, ranks(t), t.selections):
                if m.topic != t.outcomes and answered_partition(m.topic, m.headers, t) not in wanted:
                    continue
                records += 1
                await replay.feed(m)
        floors = {(t.outcomes, tp.partition): first[tp] for tp in tps if tp.topic == t.outcomes}
        floors.update({(t.requests, p): request_floors.get((t.requests, p), 0) for p in wanted})
        await replay.finish(floors)
        blueprints = {bp: BlueprintRow(blob, 0, p) for bp, blob, p in await store.blueprint_rows()}
        versions = {bp: state.version for bp, state in replay.selector.blueprints.items()}
        blueprints = {bp: row._replace(version=versions.get(bp, 0)) for bp, row in blueprints.items()}
        decisions = await store.decisions()
        held = [
            HeldOutcome(ev.decode(payload, ev.ADAPTATION_OUTCOME), p, since, offset)  # type: ignore[arg-type]
            for _e, since, payload, p, offset in await store.held_outcomes()
        ]
        watermarks = await store.watermarks()
        stored = await store.offsets()
        offsets = {tp: stored.get(tp, 0) for tp in floors}
    finally:
        await store.close()
    gaps = [f"{tp.topic}[{tp.partition}] starts at {first[tp]}" for tp in tps if first[tp] > 0]
    if gaps:
        log.warning(
            "rebuilding partitions %s: records were deleted (%s); the rebuilt state lacks them", wanted, ", ".join(gaps)
        )
    return Rebuilt(
        partitions=wanted,
        blueprints=blueprints,
        decisions=decisions,
        held=held,
        watermarks={p: w for p, w in watermarks.items() if p in wanted},
        offsets=offsets,
        records=records,
        complete=not gaps,
    )


async def read_changelog(
    settings: Settings, bus: Bus, partitions: Iterable[int]
) -> dict[int, changelog.PartitionState]:
    """The changelog's state of each of ``partitions`` (read_committed: only what committed batches published)."""
    topic = settings.kafka.topics.changelog
    tps = [TopicPartition(topic, p) for p in sorted(set(partitions))]
    records: dict[int, list[tuple[bytes | None, bytes | None]]] = {tp.partition: [] for tp in tps}
    async with bus.reader() as reader:
        reader.assign(tps)
        first, end = await reader.beginning_offsets(tps), await reader.end_offsets(tps)
        spans = [Span(tp.topic, tp.partition, first[tp], end[tp], first[tp]) for tp in tps]
        async for p, batch in in_offset_order(reader, spans):
            records[p] += [(r.key, r.value) for r in batch]
    return {p: changelog.fold(p, rs) for p, rs in records.items()}


def from_changelog(states: list[changelog.PartitionState], topics: Topics) -> Rebuilt:
    """Partitions' state as their changelog has it, in the shape of a rebuild (one transaction replaces them)."""
    out = Rebuilt(
        partitions=[s.partition for s in states],
        blueprints={},
        decisions=[],
        held=[],
        watermarks={},
        offsets={},
        records=sum(s.records for s in states),
        complete=True,
    )
    for s in states:
        out.blueprints.update(s.blueprints)
        out.decisions += s.decisions
        out.held += s.held
        if s.watermark is not None:
            out.watermarks[s.partition] = s.watermark
        offsets = s.offsets or {}
        out.offsets[(topics.requests, s.partition)] = offsets.get("requests", 0)
        out.offsets[(topics.outcomes, s.partition)] = offsets.get("outcomes", 0)
    return out


async def snapshot(processor: Processor, store: Store, p: int, offsets: dict[TP, int], writer: str) -> list[OutboxRow]:
    """Input partition ``p``'s whole state (the processor's, just restored from ``store``) as changelog records:
    what a worker publishes for a partition whose changelog it has neither read nor written from the start."""
    t = processor.topics
    join = processor.join
    return changelog.snapshot_records(
        t.changelog,
        p,
        blueprints={
            bp_id: BlueprintRow(dump_state(bp.to_dict()), bp.version, p)
            for bp_id, bp in processor.selector.blueprints.items()
            if processor.partitions.get(bp_id) == p
        },
        decisions=await store.decisions([p]),
        held=[h for hs in join.held.values() for h in hs if h.partition == p],
        watermark=join.watermarks.get(p),
        offsets=offsets,
        writer=writer,
        input_topics=(t.requests, t.outcomes),
    )
