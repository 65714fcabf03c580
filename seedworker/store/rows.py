"""The rows the store writes, each built in one place, and the batch: everything one batch of events changes.

The batch is also the sink of the reward join (seedworker.core.join.Changes): the join writes its resolutions,
held and released outcomes, counters and watermarks straight into it.
"""

from __future__ import annotations

import base64
import binascii
import math
import pickle
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson

from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.join import HeldOutcome, Resolution

TP = tuple[str, int]


def dump_state(state: dict) -> bytes:
    """A blueprint's state (plain dicts, lists, numbers and numpy arrays) as JSON: arrays as their raw bytes in
    base64 and non-finite floats by name, so every float comes back exactly. The same bytes go to SQLite and to the
    changelog topic, where a pickle would let anyone who can write the topic run code in the worker."""
    return orjson.dumps(_tagged(state))


def load_state(blob: bytes) -> dict:
    if blob[:1] == b"\x80":
        # Written by an earlier version (pickle, protocol 5) into this worker's own file: still read.
        return pickle.loads(blob)
    return _untagged(orjson.loads(blob))


def _tagged(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _tagged(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_tagged(v) for v in o]
    if isinstance(o, np.ndarray):
        a = np.ascontiguousarray(o)
        return {"$nd": [a.dtype.str, list(a.shape), base64.b64encode(a.tobytes()).decode()]}
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return {"$f": repr(o)}
    return o


def _untagged(o: Any) -> Any:
    # A state is ~30 arrays and as many plain numbers: only dicts and lists are looked into, and the base64 goes
    # straight to binascii (what b64decode calls after checking its argument), as a restore loads 1,000 states.
    if type(o) is dict:
        if "$nd" in o:
            dtype, shape, data = o["$nd"]
            return np.frombuffer(binascii.a2b_base64(data), dtype=np.dtype(dtype)).reshape(shape).copy()
        if "$f" in o:
            return float(o["$f"])
        return {k: _untagged(v) if type(v) in _NESTED else v for k, v in o.items()}
    if type(o) is list:
        return [_untagged(v) if type(v) in _NESTED else v for v in o]
    return o


_NESTED = (dict, list)  # what orjson.loads gives that holds more


class DecisionRow(NamedTuple):
    """A row of the decisions table as written (status 'pending', no reward yet)."""

    decision_id: str
    request_id: str
    blueprint_id: str
    seed_id: str
    seed_idx: int
    strategy: str
    propensity: float
    explored: int
    state_version: int
    request_time: float
    payload: bytes
    partition: int  # the input partition of its request (-1: written before partitions were recorded)

    @classmethod
    def of(cls, selected: ev.SeedSelected | ev.SelectionColumns, payload: bytes, partition: int) -> DecisionRow:
        t = selected.request_time or selected.occurred_at
        return cls(
            selected.decision_id,
            selected.request_id,
            selected.blueprint_id,
            selected.seed_id,
            selected.seed_idx,
            selected.strategy,
            selected.propensity,
            int(selected.explored),
            selected.state_version,
            t.timestamp(),
            payload,
            partition,
        )


class StoredDecision(NamedTuple):
    """A decision as the store has it: its row and what became of it."""

    row: DecisionRow
    status: str
    reward: float | None
    outcome_time: float | None


class OutboxRow(NamedTuple):
    """A message to publish once the batch is stored."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (the changelog)
    headers: hdr.Headers = ()
    partition: int | None = None  # the topic's partition; None: by key


class UnsentRow(NamedTuple):
    """An outbox row stored but not acknowledged by Kafka yet."""

    id: int
    message: OutboxRow

    @property
    def decision_id(self) -> str | None:
        return hdr.value(self.message.headers, hdr.DECISION_ID)


class BlueprintRow(NamedTuple):
    state: bytes
    version: int
    partition: int


@dataclass
class Batch:
    """Everything one batch of events changes, written in one transaction."""

    decisions: list[DecisionRow] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    held: list[HeldOutcome] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # held event ids no longer held
    released_from: dict[str, int] = field(default_factory=dict)  # their input partitions
    # resolved decisions older than decision_retention_s, with their input partitions: deleted
    pruned: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[HeldOutcome, str]] = field(default_factory=list)  # held outcomes to dead-letter (reason)
    blueprints: dict[str, BlueprintRow] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    offsets: dict[TP, int] = field(default_factory=dict)
    watermarks: dict[int, float] = field(default_factory=dict)  # input partition -> event-time watermark
    meta: dict[str, str] = field(default_factory=dict)
    sent: list[int] = field(default_factory=list)  # outbox ids acknowledged by Kafka since the last batch
    # Before anything else: every row of these input partitions (blueprint states, decisions, held outcomes,
    # watermarks) is deleted (their state is replaced by a rebuild, seedworker.engine.ownership), and these unsent
    # outbox rows are dropped (superseded).
    replaced_partitions: list[int] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)
    # Blueprints this batch changed, with their input partition: the processor serializes them once, at the end.
    touched: dict[str, int] = field(default_factory=dict)

    # -- the join's sink (seedworker.core.join.Changes) ----------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def resolve(self, resolution: Resolution) -> None:
        self.resolutions.append(resolution)

    def hold(self, held: HeldOutcome) -> None:
        self.held.append(held)

    def release(self, event_id: str, partition: int = -1) -> None:
        self.released.append(event_id)
        self.released_from[event_id] = partition

    def reject(self, held: HeldOutcome, reason: str) -> None:
        self.rejected.append((held, reason))

    def touch(self, blueprint_id: str, partition: int) -> None:
        self.touched[blueprint_id] = partition

    def watermark(self, partition: int, t: float) -> None:
        self.watermarks[partition] = t

    def empty(self) -> bool:
        return not any(
            (
                self.decisions,
                self.resolutions,
                self.outbox,
                self.held,
                self.released,
                self.pruned,
                self.blueprints,
                self.counters,
                self.offsets,
                self.watermarks,
                self.meta,
                self.sent,
                self.replaced_partitions,
                self.superseded,
            )
        )
