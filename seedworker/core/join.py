"""The reward join: which outcome is learned for which decision, once, whatever the order they come in.

One set of rules for the worker (and so the replay and a partition rebuild, which run the worker's batch
processor) and for the in-process ``SeedSelector.record_outcome``.

Time is event time, kept per input partition: a decision's requests and outcomes are keyed by its blueprint, so
they share a partition number, and each partition's *watermark* is the newest event time read from it. Nothing
one partition carries (a lagging consumer, a clock that runs ahead) changes what happens on another, so a rebuild
of one partition reproduces what the live worker did with it. Control messages have no partition: they move no
watermark.

A decision made at request time ``r`` waits for its outcome until its deadline ``D = r + reward_wait_s``:

* an outcome for the chosen seed dated ``t <= D`` is **on time** and learned (``resolved``); one dated later is
  learned only with ``learn_late`` (``late``), and is otherwise counted and ignored — the decision goes on waiting;
* when the partition's watermark passes ``D`` without a learned outcome the decision **expires**; with
  ``default_reward`` that reward is learned for it, dated at the request (``r``: an outcome is learned no earlier
  than its request — one dated earlier, from a producer whose clock runs behind, is learned at ``r`` — so a
  default replaced later leaves no trace in the arm's clock);
* an outcome that is learned after its decision expired (it was on time but delivered late, or ``learn_late``)
  *replaces* the default reward: the default is taken out of the statistics again (``Learner.forget_reward``), so
  whether the outcome came before or after the expiry, the decision counts once, with the outcome's reward;
* an outcome for another seed than the chosen one (Tamiyo fell back to another seed) is ``mismatched``: not learned,
  and it ends the wait (no default reward; one already learned is taken out, and one not learned yet is learned
  and taken out at once, so the arm's clock is the same in either order). An outcome for the chosen seed still
  wins over it, in either order;
* any further outcome of a learned decision is a duplicate: counted, not learned.

So the learned state is a function of the outcomes and decisions, not of their order. The one exception is the
hold: an outcome whose decision is not known yet (the request is still on its way) is held until its partition's
watermark passes ``t + hold_unknown_s``, and then dropped as *dangling* and dead-lettered with a reason starting
``DANGLING``; a decision that arrives later than that finds nothing to join. When the hold ends depends on when the
worker read each record, which the topics do not say: a replay (``drop_by_time`` off) drops what those dead letters
name instead (``live_drops``).

State changes go to a ``Changes`` sink (the store's batch, or nothing for the in-process API), so the caller
persists exactly what the join did.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from seedworker.contract.events import SEED_SELECTED, AdaptationOutcome, SeedSelected, decode

PENDING = "pending"
RESOLVED = "resolved"  # the chosen seed's outcome, on time, learned
LATE = "late"  # the chosen seed's outcome, after the deadline, learned (join.learn_late)
EXPIRED = "expired"  # no outcome learned; the reward column holds the default reward learned, if any
MISMATCHED = "mismatched"  # the outcome named another seed: nothing learned
LEARNED = frozenset({RESOLVED, LATE})
# The reason of a held outcome's dead letter once it is dropped as dangling: a replay reads these to drop exactly
# what the live worker dropped (seedworker.engine.replay).
DANGLING = "dangling: "


class JoinError(ValueError):
    """An outcome the join cannot accept (it names another blueprint than its decision): dead-lettered."""


class Resolution(NamedTuple):
    """A decision's new status, the reward learned for it (None: nothing) and the outcome's event time."""

    decision_id: str
    status: str
    reward: float | None
    outcome_time: float | None
    partition: int = -1  # the decision's input partition


class HeldOutcome(NamedTuple):
    """An outcome waiting for its decision, on input partition ``partition`` (record ``offset``) since event time
    ``since``."""

    outcome: AdaptationOutcome
    partition: int
    since: float
    offset: int = -1

    @property
    def event_id(self) -> str:
        return self.outcome.event_id


class Known(NamedTuple):
    """A decision that is neither pending nor recent, as the store has it."""

    status: str
    reward: float | None
    payload: bytes
    partition: int
    request_time: float = -math.inf


class Changes(Protocol):
    """Where the join writes what it changed (seedworker.store's Batch, or ``Discard``)."""

    def resolve(self, resolution: Resolution) -> None: ...
    def hold(self, held: HeldOutcome) -> None: ...
    def reject(self, held: HeldOutcome, reason: str) -> None: ...
    def release(self, event_id: str, partition: int) -> None: ...
    def count(self, name: str, n: int = 1) -> None: ...
    def touch(self, blueprint_id: str, partition: int) -> None: ...
    def watermark(self, partition: int, t: float) -> None: ...


class Discard:
    """A sink for the in-process API: nothing is persisted; counters are kept for ``stats``."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.last: Resolution | None = None  # the latest resolution: what the in-process caller is told

    def resolve(self, resolution: Resolution) -> None:
        self.last = resolution

    def hold(self, held: HeldOutcome) -> None:
        pass

    def reject(self, held: HeldOutcome, reason: str) -> None:
        self.count("dead_letters")

    def release(self, event_id: str, partition: int) -> None:
        pass

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def touch(self, blueprint_id: str, partition: int) -> None:
        pass

    def watermark(self, partition: int, t: float) -> None:
        pass


class Learner(Protocol):
    """What the join needs of the selector: fold an outcome or a reward into the chosen seed's statistics, and take a
    reward folded by ``learn_reward`` out again."""

    def learn(self, selected: SeedSelected, outcome: AdaptationOutcome) -> float: ...
    def learn_reward(self, selected: SeedSelected, reward: float, t: float) -> float: ...
    def forget_reward(self, selected: SeedSelected, reward: float, t: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Rules:
    reward_wait_s: float = 3600.0
    hold_unknown_s: float = 300.0
    learn_late: bool = False
    default_reward: float | None = None
    retention_s: float | None = None  # decision_retention_s: a resolved decision older than this is forgotten

    @classmethod
    def from_settings(cls, join, *, retention_s: float | None = None) -> Rules:
        return cls(
            reward_wait_s=join.reward_wait_s,
            hold_unknown_s=join.hold_unknown_s,
            learn_late=join.learn_late,
            default_reward=join.default_reward,
            retention_s=retention_s,
        )


class Pending(NamedTuple):
    selected: SeedSelected
    partition: int


class _Recent(NamedTuple):
    status: str
    # For a decision that may still learn an outcome (expired, mismatched): the decision and the reward learned for
    # it (the default), so that outcome needs no store lookup.
    selected: SeedSelected | None = None
    reward: float | None = None
    partition: int = 0
    request_time: float = -math.inf


def request_time(selected: SeedSelected) -> float:
    return (selected.request_time or selected.occurred_at).timestamp()


@dataclass
class Join:
    rules: Rules
    learner: Learner
    window: int = 100_000  # statuses of resolved decisions kept in memory (older ones: the store, via ``known``)
    pending: dict[str, Pending] = field(default_factory=dict)
    held: dict[str, list[HeldOutcome]] = field(default_factory=dict)
    watermarks: dict[int, float] = field(default_factory=dict)
    recent: OrderedDict[str, _Recent] = field(default_factory=OrderedDict)
    # Per partition, (deadline, decision id) and (drop time, event id): what expires next is at the top. A heap,
    # not the insertion order, so decisions and outcomes read out of time order expire when their time says.
    _deadlines: dict[int, list[tuple[float, str]]] = field(default_factory=dict)
    _drops: dict[int, list[tuple[float, str, str]]] = field(default_factory=dict)
    _due: set[int] = field(default_factory=set)  # partitions whose heaps may hold something past its time
    # False in a replay: which held outcomes the live worker dropped depends on when it read each record, which the
    # log does not say; its dead letters do, so the replay drops what they name (``live_drops``) and nothing by time.
    drop_by_time: bool = True
    # Replay: (input partition, offset) of the outcomes the live worker dropped as dangling, from its dead letters.
    live_drops: set[tuple[int, int]] = field(default_factory=set)

    # -- state ---------------------------------------------------------------------------------------------------
    @property
    def held_count(self) -> int:
        return sum(map(len, self.held.values()))

    def load(
        self,
        *,
        pending: Iterable[Pending] = (),
        held: Iterable[HeldOutcome] = (),
        watermarks: Mapping[int, float] | None = None,
    ) -> None:
        """Add stored state (a restart, a rebuilt partition)."""
        for p in pending:
            self._add_pending(p.selected, p.partition)
        for h in held:
            self._add_held(h)
        if watermarks:
            for p, t in watermarks.items():
                self.watermarks[p] = max(t, self.watermarks.get(p, -math.inf))

    def _add_pending(self, selected: SeedSelected, partition: int) -> None:
        self.pending[selected.decision_id] = Pending(selected, partition)
        heapq.heappush(
            self._deadlines.setdefault(partition, []),
            (request_time(selected) + self.rules.reward_wait_s, selected.decision_id),
        )
        self._due.add(partition)  # a decision read late may be past its deadline already

    def _add_held(self, h: HeldOutcome) -> None:
        self.held.setdefault(h.outcome.resolved_decision_id, []).append(h)
        heapq.heappush(
            self._drops.setdefault(h.partition, []),
            (h.since + self.rules.hold_unknown_s, h.event_id, h.outcome.resolved_decision_id),
        )
        self._due.add(h.partition)

    def _remember(self, did: str, entry: _Recent) -> None:
        self.recent[did] = entry
        self.recent.move_to_end(did)
        if len(self.recent) > self.window:
            self.recent.popitem(last=False)

    def advance(self, partition: int, t: float, changes: Changes) -> None:
        """An input event of ``partition`` at event time ``t``."""
        if t > self.watermarks.get(partition, -math.inf):
            self.watermarks[partition] = t
            self._due.add(partition)
            changes.watermark(partition, t)

    # -- decisions -----------------------------------------------------------------------------------------------
    def decision(self, selected: SeedSelected, partition: int, changes: Changes) -> None:
        """A decision (new, or replayed from the log): it waits for its outcome; outcomes held for it are joined
        now, in the order they came."""
        self._add_pending(selected, partition)
        changes.touch(selected.blueprint_id, partition)
        for h in self.held.pop(selected.decision_id, ()):
            changes.release(h.event_id, h.partition)
            try:
                self.outcome(h.outcome, h.partition, changes, released=True)
            except JoinError as exc:
                # Held before its decision showed what it contradicts: the outcome is the bad input, not the
                # decision, so it is the one dead-lettered.
                changes.reject(h, str(exc))

    # -- outcomes ------------------------------------------------------------------------------------------------
    def outcome(
        self,
        outcome: AdaptationOutcome,
        partition: int,
        changes: Changes,
        known: Mapping[str, Known] | None = None,
        offset: int = -1,
        *,
        released: bool = False,
    ) -> str:
        """Join one outcome; returns what became of it: learned, replaced (a default reward), late, mismatched,
        duplicate, held or (replay) dangling. Raises JoinError for an outcome that names another blueprint than its
        decision. ``released``: a held outcome its decision, made just now, takes up."""
        if self.live_drops and (partition, offset) in self.live_drops:
            # Live held it, then dropped it as dangling (replay): counted as both, and not joined here either.
            changes.count("held_outcomes")
            changes.count("dangling_outcomes")
            return "dangling"
        did = outcome.resolved_decision_id
        p = self.pending.get(did)
        aged = False
        if p is not None and not released and self._aged(request_time(p.selected), p.partition):
            # The watermark passed its deadline, and its retention too, earlier in this batch: expiry runs at the
            # end of a batch, so it still waits. After a batch boundary it would have expired and been forgotten
            # by then; it is expired now, so what becomes of the outcome does not depend on where batches end.
            # (Not for the outcomes a decision releases as it is made: they meet it in the same step in any batch,
            # however old its request.)
            self._expire(did, p, changes)
            p, aged = None, True
        if p is not None:
            return self._join(outcome, p.selected, p.partition, None, PENDING, changes)
        r = self.recent.get(did)
        if r is not None and self._aged(r.request_time, r.partition):
            r = None
        if r is not None:
            if r.status in LEARNED or r.selected is None:
                changes.count("duplicate_outcomes")
                return "duplicate"
            return self._join(outcome, r.selected, r.partition, r.reward, r.status, changes)
        # (The store's copy of a decision expired just now still says it is pending: not read.)
        k = known.get(did) if known and not aged else None
        if k is not None and k.status != PENDING and self._aged(k.request_time, k.partition):
            k = None
        if k is not None:
            if k.status in LEARNED or k.status == PENDING:
                # PENDING in the store but not in memory: a decision of a partition this worker does not hold
                # (its outcome went elsewhere); counted like a duplicate rather than learned from a stale copy.
                changes.count("duplicate_outcomes")
                return "duplicate"
            selected = decode(k.payload, SEED_SELECTED)
            return self._join(
                outcome,
                selected,
                k.partition,
                k.reward if k.status == EXPIRED else None,  # type: ignore[arg-type]
                k.status,
                changes,
            )
        # Its decision is not known yet (the request may still be on its way): hold it.
        if any(h.event_id == outcome.event_id for h in self.held.get(did, ())):
            changes.count("duplicate_outcomes")
            return "duplicate"
        h = HeldOutcome(outcome, partition, outcome.occurred_at.timestamp(), offset)
        self._add_held(h)
        changes.hold(h)
        changes.count("held_outcomes")
        return "held"

    def _join(
        self,
        outcome: AdaptationOutcome,
        selected: SeedSelected,
        partition: int,
        default: float | None,
        status: str,
        changes: Changes,
    ) -> str:
        did = selected.decision_id
        if outcome.blueprint_id != selected.blueprint_id:
            raise JoinError(
                f"outcome {outcome.event_id} names blueprint {outcome.blueprint_id!r}, but decision "
                f"{did} was made for blueprint {selected.blueprint_id!r}"
            )
        t = outcome.occurred_at.timestamp()
        if outcome.seed_id != selected.seed_id:
            # Tamiyo grafted another seed than the chosen one (e.g. seed 0 after a timeout): crediting the chosen
            # seed would be wrong, and the other seed's pick had no logged propensity.
            changes.count("mismatched_outcomes")
            if status == MISMATCHED:
                return "mismatched"
            if default is not None:
                self.learner.forget_reward(selected, default, request_time(selected))
                changes.touch(selected.blueprint_id, partition)
            elif status == PENDING and self.rules.default_reward is not None:
                # Ended before its expiry: the default it would have learned then is learned and taken out now, so
                # the arm's clock moves to the request time whichever came first (taking a reward out cannot move
                # a clock back).
                r = request_time(selected)
                self.learner.learn_reward(selected, self.rules.default_reward, r)
                self.learner.forget_reward(selected, self.rules.default_reward, r)
                changes.touch(selected.blueprint_id, partition)
            self.pending.pop(did, None)
            changes.resolve(Resolution(did, MISMATCHED, None, t, partition))
            self._remember(did, _Recent(MISMATCHED, selected, None, partition, request_time(selected)))
            return "mismatched"
        on_time = t - request_time(selected) <= self.rules.reward_wait_s
        if not on_time and not self.rules.learn_late:
            changes.count("late_outcomes")
            return "late"
        if default is not None:
            self.learner.forget_reward(selected, default, request_time(selected))
        reward = self.learner.learn(selected, outcome)
        self.pending.pop(did, None)
        new = RESOLVED if on_time else LATE
        changes.resolve(Resolution(did, new, reward, t, partition))
        changes.touch(selected.blueprint_id, partition)
        changes.count("outcomes_learned")
        if not on_time:
            changes.count("late_outcomes")
        self._remember(did, _Recent(new, None, None, partition, request_time(selected)))
        return "replaced" if default is not None else "learned"

    def _aged(self, t_request: float, partition: int) -> bool:
        """A resolved decision past ``retention_s`` of its partition's event time is forgotten: an outcome for it is
        one for an unknown decision. By the watermark, not by whether the prune has deleted it yet (it does so at the
        end of a batch), so what becomes of the outcome does not depend on where batches end — or on whether this
        worker restarted, or is a replay — but only on the partition's records before it."""
        keep = self.rules.retention_s
        return keep is not None and t_request < self.watermarks.get(partition, -math.inf) - keep

    def forget(self, decision_ids: Iterable[str]) -> None:
        """Decisions deleted from the store (pruned): an outcome for one of them is one for an unknown decision, as
        it is for a worker that restarted since."""
        for did in decision_ids:
            self.recent.pop(did, None)

    def _unhold(self, did: str, which) -> HeldOutcome | None:
        hs = self.held.get(did)
        gone = next((h for h in hs or () if which(h)), None)
        if gone is None:
            return None
        kept = [h for h in hs if h is not gone]  # type: ignore[union-attr]
        if kept:
            self.held[did] = kept
        else:
            del self.held[did]
        return gone

    def _dangling(self, h: HeldOutcome, changes: Changes) -> None:
        changes.release(h.event_id, h.partition)
        changes.count("dangling_outcomes")
        # Not lost silently: the outcome goes to the dead letters, saying why.
        changes.reject(
            h,
            f"{DANGLING}no decision {h.outcome.resolved_decision_id} was read within join.hold_unknown_s "
            f"({self.rules.hold_unknown_s:g}s of event time) of this outcome",
        )

    # -- expiry --------------------------------------------------------------------------------------------------
    def _expire(self, did: str, p: Pending, changes: Changes) -> None:
        del self.pending[did]
        reward = None
        if self.rules.default_reward is not None:
            reward = self.learner.learn_reward(p.selected, self.rules.default_reward, request_time(p.selected))
            changes.touch(p.selected.blueprint_id, p.partition)
        changes.resolve(Resolution(did, EXPIRED, reward, None, p.partition))
        changes.count("expired_decisions")
        self._remember(did, _Recent(EXPIRED, p.selected, reward, p.partition, request_time(p.selected)))

    def supersede(self, did: str, changes: Changes) -> None:
        """A replay reads a new decision under the id of one still waiting: the live worker made it after pruning
        that one, which it only does to a resolved decision, and an outcome it had joined would have come before
        the new decision here too — so that one expired there, and expires here now."""
        p = self.pending.get(did)
        if p is not None:
            self._expire(did, p, changes)

    def expire(self, changes: Changes) -> None:
        """Decisions whose deadline the watermark of their partition passed, and held outcomes past their hold."""
        for part in sorted(self._due):
            wm = self.watermarks.get(part, -math.inf)
            heap = self._deadlines.get(part, [])
            while heap and heap[0][0] < wm:
                deadline, did = heapq.heappop(heap)
                p = self.pending.get(did)
                if p is None or p.partition != part or request_time(p.selected) + self.rules.reward_wait_s != deadline:
                    # Resolved meanwhile, or superseded by a new decision under its id (the heap keeps stale entries
                    # rather than searching).
                    continue
                self._expire(did, p, changes)
            drops = self._drops.get(part, []) if self.drop_by_time else []
            while drops and drops[0][0] < wm:
                _, event_id, did = heapq.heappop(drops)
                gone = self._unhold(did, lambda h: h.event_id == event_id)  # noqa: B023 - used at once
                if gone is not None:
                    self._dangling(gone, changes)
        self._due.clear()
