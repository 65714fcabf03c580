"""The changelog: each input partition's state as records of a compacted Kafka topic (Kafka Streams' changelog).

A worker's state of an input partition is its blueprints, its decisions (pending, and resolved ones for
``decision_retention_s``), its held outcomes, its event-time watermark and the input offsets it has consumed. Every
batch also writes what it changed of that state to the changelog topic, partition for partition (changelog
partition p holds input partition p's state), through the outbox, in the batch's SQLite transaction, and the
worker publishes an input partition's records of one batch in one Kafka transaction. One key per piece of state,
so that compaction keeps the latest value of each and a tombstone (no value) removes it:

====================  ===========================================================================================
key                   value (JSON)
====================  ===========================================================================================
``b:<blueprint id>``  ``{"state": <the state as stored>, "version": n}``
``d:<decision id>``   ``{"payload": <the SeedSelected event>}``: the decision as made (tombstone when pruned)
``r:<decision id>``   ``{"status", "reward", "outcome_time"}``: what became of it (tombstone when pruned)
``h:<event id>``      ``{"since", "offset", "payload": <the AdaptationOutcome>}``: an outcome waiting for its
                      decision (tombstone when joined, dropped or dead-lettered)
``w``                 ``{"watermark": t}``
``o``                 ``{"requests": n, "outcomes": n, "writer": worker id}``: the input offsets the records up
                      to here account for; the last record of every batch
====================  ===========================================================================================

Reading a partition's records in order and keeping the last value of each key gives the state as of the last
committed batch, whatever compaction has removed, and the ``o`` record says where the inputs continue. A
partition's changelog is *complete* once it has been written from the worker's full state of the partition (a
snapshot, when a worker takes a partition over whose changelog it has not written or read) and every batch after.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from seedworker.contract import events as ev
from seedworker.core.join import HeldOutcome, Resolution
from seedworker.store.rows import Batch, BlueprintRow, DecisionRow, OutboxRow, StoredDecision, dump_state, load_state

OFFSETS = b"o"
WATERMARK = b"w"
_BLUEPRINT, _DECISION, _RESOLUTION, _HELD = b"b:", b"d:", b"r:", b"h:"

# The topic's configuration, set when the worker (or deploy/) creates it.
TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    # The active segment is never compacted: a restore reads it whole. 64 MiB or 10 minutes, whichever comes
    # first, bounds that to minutes of changes beside one value per key.
    "segment.bytes": str(64 * 1024 * 1024),
    "segment.ms": str(10 * 60 * 1000),
    # Restores need only the last value per key, so nothing needs older ones kept; a minute keeps the last batches'
    # records readable as written (for an operator following the topic) without holding compaction back.
    "min.compaction.lag.ms": str(60 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    # A tombstone stays a day: a restore that started before it was written still sees the key removed.
    "delete.retention.ms": str(24 * 60 * 60 * 1000),
}


def _row(topic: str, p: int, key: bytes, value: dict | None) -> OutboxRow:
    return OutboxRow(topic, key, None if value is None else orjson.dumps(value), (), p)


def batch_records(topic: str, b: Batch, writer: str, input_topics: tuple[str, str], offsets: dict) -> list[OutboxRow]:
    """The changelog records of one batch, for every input partition it changed (none for partition -1: state
    written before partitions were recorded, which only a snapshot carries). ``offsets``: every consumed offset
    after the batch (the "o" record carries both input topics' offsets of its partition)."""
    out: list[OutboxRow] = []
    for bp_id, row in b.blueprints.items():
        if row.partition >= 0:
            out.append(_row(topic, row.partition, _BLUEPRINT + bp_id.encode(), _blueprint(row)))
    for d in b.decisions:
        if d.partition >= 0:
            out.append(_row(topic, d.partition, _DECISION + d.decision_id.encode(), {"payload": _text(d.payload)}))
    for r in b.resolutions:
        if r.partition >= 0:
            out.append(_row(topic, r.partition, _RESOLUTION + r.decision_id.encode(), _resolution(r)))
    for h in b.held:
        if h.partition >= 0:
            out.append(_row(topic, h.partition, _HELD + h.event_id.encode(), _held(h)))
    for event_id in b.released:
        p = b.released_from.get(event_id, -1)
        if p >= 0:
            out.append(_row(topic, p, _HELD + event_id.encode(), None))
    for did, p in b.pruned.items():
        out += [_row(topic, p, _DECISION + did.encode(), None), _row(topic, p, _RESOLUTION + did.encode(), None)]
    for p, t in b.watermarks.items():
        if p >= 0:
            out.append(_row(topic, p, WATERMARK, {"watermark": t}))
    requests, outcomes = input_topics
    for p in sorted({q for (t, q) in b.offsets if t in input_topics}):
        out.append(_offsets_row(topic, p, offsets, requests, outcomes, writer))
    return out


def _offsets_row(topic: str, p: int, offsets: dict, requests: str, outcomes: str, writer: str) -> OutboxRow:
    value = {"requests": offsets.get((requests, p), 0), "outcomes": offsets.get((outcomes, p), 0), "writer": writer}
    return _row(topic, p, OFFSETS, value)


def snapshot_records(
    topic: str,
    p: int,
    *,
    blueprints: dict[str, BlueprintRow],
    decisions: Iterable[StoredDecision],
    held: Iterable[HeldOutcome],
    watermark: float | None,
    offsets: dict,
    writer: str,
    input_topics: tuple[str, str],
) -> list[OutboxRow]:
    """Input partition ``p``'s whole state as changelog records: what makes its changelog complete."""
    out = [_row(topic, p, _BLUEPRINT + bp.encode(), _blueprint(row)) for bp, row in blueprints.items()]
    for d in decisions:
        did = d.row.decision_id.encode()
        out.append(_row(topic, p, _DECISION + did, {"payload": _text(d.row.payload)}))
        if d.status != "pending":
            r = Resolution(d.row.decision_id, d.status, d.reward, d.outcome_time, p)
            out.append(_row(topic, p, _RESOLUTION + did, _resolution(r)))
    out += [_row(topic, p, _HELD + h.event_id.encode(), _held(h)) for h in held]
    if watermark is not None:
        out.append(_row(topic, p, WATERMARK, {"watermark": watermark}))
    requests, outcomes = input_topics
    out.append(
        _offsets_row(
            topic,
            p,
            {(requests, p): offsets.get((requests, p), 0), (outcomes, p): offsets.get((outcomes, p), 0)},
            requests,
            outcomes,
            writer,
        )
    )
    return out


def _text(payload: bytes) -> str:
    return payload.decode()


def _blueprint(row: BlueprintRow) -> dict:
    # The stored state is JSON already (rows.dump_state); a state still in the old pickle format is re-encoded.
    state = row.state if row.state[:1] != b"\x80" else dump_state(load_state(row.state))
    return {"state": orjson.Fragment(state), "version": row.version}


def _state_and_version(value: bytes) -> tuple[bytes, int]:
    """A ``b:`` value's state, as the bytes it was written with, and its version. The state is only copied into
    the store, and parsed once, when the store's states are loaded: parsing it here to write it again cost a
    tenth of a restore. ``_blueprint`` writes ``{"state":<state>,"version":<n>}`` (orjson keeps the order and
    adds no space); a value in any other layout is parsed."""
    at = value.rfind(_VERSION_KEY)
    digits = value[at + len(_VERSION_KEY) : -1]
    if value.startswith(_STATE_KEY) and at > 0 and value.endswith(b"}") and digits.isdigit():
        return value[len(_STATE_KEY) : at], int(digits)
    v = orjson.loads(value)
    return orjson.dumps(v["state"]), v["version"]


_STATE_KEY, _VERSION_KEY = b'{"state":', b',"version":'


def _resolution(r: Resolution) -> dict:
    return {"status": r.status, "reward": r.reward, "outcome_time": r.outcome_time}


def _held(h: HeldOutcome) -> dict:
    return {"since": h.since, "offset": h.offset, "payload": _text(ev.encode(h.outcome))}


@dataclass
class PartitionState:
    """What a partition's changelog records say, folded: the last value of every key."""

    partition: int
    blueprints: dict[str, BlueprintRow] = field(default_factory=dict)
    decisions: list[StoredDecision] = field(default_factory=list)
    held: list[HeldOutcome] = field(default_factory=list)
    watermark: float | None = None
    offsets: dict[str, int] | None = None  # None: no batch was ever recorded (no changelog to restore from)
    writer: str = ""
    records: int = 0

    @property
    def found(self) -> bool:
        return self.offsets is not None


def fold(p: int, records: Iterable[tuple[bytes | None, bytes | None]]) -> PartitionState:
    """Input partition ``p``'s state from its changelog records (key, value), in offset order."""
    latest: dict[bytes, bytes] = {}
    n = 0
    for key, value in records:
        n += 1
        if key is None:
            continue
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    out = PartitionState(p, records=n)
    resolutions: dict[bytes, dict] = {}
    made: list[tuple[bytes, bytes]] = []
    for key, value in latest.items():
        kind = key[:2]
        if key == OFFSETS:
            o = orjson.loads(value)
            out.writer = o.pop("writer", "")
            out.offsets = o
        elif key == WATERMARK:
            out.watermark = orjson.loads(value)["watermark"]
        elif kind == _BLUEPRINT:
            state, version = _state_and_version(value)
            out.blueprints[key[2:].decode()] = BlueprintRow(state, version, p)
        elif kind == _DECISION:
            made.append((key[2:], orjson.loads(value)["payload"].encode()))
        elif kind == _RESOLUTION:
            resolutions[key[2:]] = orjson.loads(value)
        elif kind == _HELD:
            v = orjson.loads(value)
            outcome = ev.decode(v["payload"].encode(), ev.ADAPTATION_OUTCOME)
            out.held.append(HeldOutcome(outcome, p, v["since"], v["offset"]))  # type: ignore[arg-type]
    for did, payload in made:
        r = resolutions.get(did)
        row = DecisionRow.of(ev.decode_columns(payload), payload, p)
        if r is None:
            out.decisions.append(StoredDecision(row, "pending", None, None))
        else:
            out.decisions.append(StoredDecision(row, r["status"], r["reward"], r["outcome_time"]))
    # A deterministic order (the store keeps write order): decisions by request time, held outcomes as they came.
    out.decisions.sort(key=lambda d: (d.row.request_time, d.row.decision_id))
    out.held.sort(key=lambda h: (h.since, h.offset, h.event_id))
    return out
