"""The rows the store writes, each built in one place, and the batch: everything one batch of events changes.

The batch is also the sink of the reward join (seedworker.core.join.Changes): the join writes its resolutions,
held and released outcomes, counters and watermarks straight into it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import NamedTuple

from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.join import HeldOutcome, Resolution

TP = tuple[str, int]


def dump_state(state: dict) -> bytes:
    # A pickle of plain dicts of numpy arrays: exact floats (including ±inf); only this process writes the file.
    return pickle.dumps(state, protocol=5)


def load_state(blob: bytes) -> dict:
    return pickle.loads(blob)


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
    def of(cls, selected: ev.SeedSelected, payload: bytes, partition: int) -> DecisionRow:
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
    value: bytes
    headers: hdr.Headers = ()


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

    def release(self, event_id: str) -> None:
        self.released.append(event_id)

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
