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


class StateEncoder:
    """``dump_state`` for a worker that writes the same blueprints batch after batch: the same bytes, but each array
    whose raw bytes, dtype and shape have not changed since this blueprint's last write is copied in encoded.

    Why: a K=8 state is ~30 KB of JSON from ~30 arrays, and their base64 is most of what dump_state costs, paid for
    every blueprint a batch touches. A decision changes three small arrays (the selection counts); the statistics,
    the Gram matrices and their inverses change only when an outcome is learned. Measured on K=8 states (2 cores,
    loadavg 3-9): a state whose arrays are as last written 27-50 µs instead of 80-100 µs; a state an outcome
    changed (nearly every array) 5-25% slower than dump_state, for the copies it compares and keeps.

    The cache is ~50 KB per blueprint (raw bytes and JSON), so it keeps the ``BLUEPRINTS`` last written."""

    BLUEPRINTS = 256  # blueprints remembered (the least recently written is forgotten first): ~13 MB at K=8

    def __init__(self) -> None:
        # blueprint -> {path of the array in the state: (its raw bytes, dtype, shape, its JSON)}; the JSON as bytes,
        # wrapped at each write: an orjson.Fragment cannot be copied, and tests deepcopy a worker.
        self._arrays: dict[str, dict[tuple, tuple[bytes, np.dtype, tuple, bytes]]] = {}

    def dump(self, blueprint_id: str, state: dict) -> bytes:
        arrays = self._arrays.pop(blueprint_id, None)
        if arrays is None:
            arrays = {}
            if len(self._arrays) >= self.BLUEPRINTS:
                del self._arrays[next(iter(self._arrays))]
        self._arrays[blueprint_id] = arrays  # last: the most recently written
        return orjson.dumps(self._container(state, (), arrays))

    def _container(self, o: dict | list | tuple, path: tuple, arrays: dict) -> dict | list:
        # _tagged, with one loop per container rather than a call per value (a state has ~100 values).
        items = o.items() if isinstance(o, dict) else enumerate(o)
        out: dict = {}
        for k, v in items:
            t = type(v)
            if t is np.ndarray:
                v = self._array(v, (*path, k), arrays)
            elif t is dict or t is list or t is tuple:
                v = self._container(v, (*path, k), arrays)
            elif t is float:
                if not math.isfinite(v):
                    v = {"$f": repr(v)}
            elif not (t is str or t is int or t is bool or v is None):
                v = _tagged(v)  # numpy scalars and anything else, as dump_state writes them
            out[k] = v
        return out if isinstance(o, dict) else list(out.values())

    @staticmethod
    def _array(o: np.ndarray, path: tuple, arrays: dict) -> orjson.Fragment:
        a = np.ascontiguousarray(o)
        raw = a.tobytes()
        known = arrays.get(path)
        # The cached JSON is a function of exactly what is compared (raw bytes, dtype, shape), never of what was
        # stored: an entry written for a batch that failed (or under another path) still encodes its array right.
        # The dtype by identity: one object has one ``str``; an equal dtype that is another object is encoded again.
        if known is None or known[1] is not a.dtype or known[2] != a.shape or known[0] != raw:
            encoded = orjson.dumps({"$nd": [a.dtype.str, list(a.shape), base64.b64encode(raw).decode()]})
            known = arrays[path] = (raw, a.dtype, a.shape, encoded)
        return orjson.Fragment(known[3])


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
        if held.event_id in self.released_from:
            # Released earlier in this batch and held again: the store and the changelog write holds before
            # releases, so the release would delete the row held again. It stays (its row, if any, unchanged).
            self.released.remove(held.event_id)
            del self.released_from[held.event_id]
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
