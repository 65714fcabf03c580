"""``IntelligentSeedSelector``: the seed document's interface for Tamiyo (Phase B3), in-process, on ``SeedSelector``.

Tamiyo replaces ``seed_idx = 0`` with::

    seed_idx, seed = selector.select_seed(blueprint, context)
    ...  # graft, train, measure
    selector.record_outcome(seed.id, blueprint.id, {"accuracy_delta": 0.02, "latency_ms": 3.1}, success=True)

Everything is learned by ``SeedSelector`` through its public API (``select``, ``record_outcome``,
``switch_strategy``, ``stats``); this class only turns the document's objects into seedworker events and back, and
keeps the document's selection history. The document's strategy names (``ucb``, ``thompson``, ``epsilon_greedy``,
``contextual``, ``performance_weighted``) map to seedworker's by ``config.SEED_STRATEGIES``; seedworker's own names
are accepted too.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from seedworker.contract.events import utc_now
from seedworker.core.config import SEED_STRATEGIES, Settings
from seedworker.core.policies import STRATEGIES
from seedworker.core.selector import SeedSelector

_log = logging.getLogger(__name__)
# The document's metric names, all of which are seedworker outcome fields; other keys are ignored, as the
# document's tracker ignores them.
METRICS = ("accuracy_delta", "loss_delta", "latency_ms", "memory_mb", "throughput")
# The document calls the epoch ``epoch``; seedworker's context signal is ``current_epoch``.
CONTEXT_NAMES = {"epoch": "current_epoch"}
_DOCUMENT_NAME = {ours: theirs for theirs, ours in SEED_STRATEGIES.items()}


def seedworker_strategy(name: str) -> str:
    """seedworker's name for a strategy named either way; ValueError for neither."""
    ours = SEED_STRATEGIES.get(name, name)
    if ours not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy: {name!r}; the document's: {', '.join(SEED_STRATEGIES)}; seedworker's: "
            f"{', '.join(sorted(STRATEGIES))}"
        )
    return ours


class IntelligentSeedSelector:
    """The seed document's ``IntelligentSeedSelector`` over a ``SeedSelector``.

    What the document's objects must have (duck typing):

    - ``blueprint.id`` (any value; ``str()`` of it is the blueprint id) and ``blueprint.seeds``, a non-empty sequence;
    - each ``seed.id`` (``str()`` of it is the seed id; unique within the blueprint). Its position in
      ``blueprint.seeds`` is its ``seed_idx``, which ``select_seed`` returns with the seed object itself. A seed may
      have a ``state`` (a string, or an enum whose value is a string): seedworker then only picks seeds in a
      ``selectable_states`` state (default: ``dormant``), and falls back to index 0 with a logged reason when none is;
    - ``context``, optional, a mapping of numeric training signals (the document's ``current_loss``,
      ``current_accuracy``, ``learning_rate``, ``epoch`` — read as ``current_epoch`` —, ``gpu_memory_used``,
      ``batch_size``, ``loss_momentum``, ``gradient_norm``, or any other); non-numeric values are dropped. Without one
      the request carries no signal (the document's fixed default context is not invented: the contextual strategies
      treat a missing signal as average).

    Finding the decision of an outcome: the document's ``record_outcome(seed_id, blueprint_id, ...)`` carries no
    decision id, so it is credited to the *newest* pending decision of that blueprint that chose that seed (the one
    whose logged context is the most recent; older ones stay pending and take later outcomes for the pair). When no
    pending decision of the blueprint chose that seed (never selected here, or every such decision already has its
    outcome) nothing is learned: the call logs a warning and returns None. Each decision learns from one outcome.
    Pending decisions live in memory: ``max_pending`` bounds them here, the oldest being forgotten first (the
    in-process ``SeedSelector`` keeps its own pending decisions until an outcome comes; only the worker expires them
    after ``join.reward_wait_s``).

    Statistics: ``get_selection_stats`` gives the document's keys (``total_selections``, ``unique_seeds_selected`` —
    distinct (blueprint, seed) pairs, as seedworker learns per pair —, ``strategy_usage`` by the strategy that made
    each decision, in the document's names where it has one, and ``top_performing_seeds``, seed ids by mean reward,
    which is the accuracy gain under the default reward settings) and ``SeedSelector.stats()`` under ``"seedworker"``
    (per-seed reward, latency, memory and throughput means with 95% intervals).

    ``selection_history`` keeps the newest ``history_size`` selections as the document's dicts (timestamp,
    blueprint_id, seed_id, seed_idx, strategy, context) plus ``decision_id``.

    ``default_strategy`` is a strategy name either way; None keeps the selector's, or with no selector given the
    settings' ``default_strategy`` when they set one, else ``ucb`` (the document's default). ``settings`` (e.g.
    ``load_settings("tamiyo.yaml")``) or ``selector`` (a ``SeedSelector`` to share, with its settings and state).

    Randomised strategies draw from a generator seeded by (``settings.salt``, request id); request ids are
    ``{id_prefix}-{n}``, the prefix random unless given, so a fixed prefix makes a run reproducible.
    """

    def __init__(
        self,
        default_strategy: str | None = None,
        *,
        settings: Settings | None = None,
        selector: SeedSelector | None = None,
        clock: Callable[[], datetime] = utc_now,
        id_prefix: str | None = None,
        history_size: int = 10_000,
        max_pending: int = 100_000,
    ):
        if selector is not None and settings is not None and selector.settings is not settings:
            raise ValueError("give settings or a selector (which has its own), not both")
        if selector is None:
            settings = settings or Settings()
            if default_strategy is None and "default_strategy" not in settings.model_fields_set:
                default_strategy = "ucb"  # the document's default when nothing says otherwise
            selector = SeedSelector(settings, clock=clock)
        self.selector = selector
        self.clock = clock
        self.id_prefix = id_prefix or uuid.uuid4().hex[:12]
        self.max_pending = max_pending
        self.selection_history: deque[dict[str, Any]] = deque(maxlen=history_size)
        self._n = 0
        self._usage: Counter = Counter()
        self._pairs: set[tuple[str, str]] = set()
        # (blueprint_id, seed_id) -> decision ids awaiting an outcome, oldest first; and all of them in order.
        self._pending: dict[tuple[str, str], list[str]] = {}
        self._order: deque[tuple[str, tuple[str, str]]] = deque()
        self._open: set[str] = set()
        if default_strategy is not None:
            self.switch_strategy(default_strategy)

    # -- the document's API ------------------------------------------------------------------------------------------
    def select_seed(self, blueprint: Any, context: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """(seed index, seed object) for this blueprint and training context."""
        seeds: Sequence[Any] = list(getattr(blueprint, "seeds", None) or ())
        if not seeds:
            raise ValueError("Blueprint has no seeds available")
        bp_id = str(blueprint.id)
        request = {
            "request_id": f"{self.id_prefix}-{self._n + 1}",
            "blueprint_id": bp_id,
            "occurred_at": self.clock().isoformat(),
            "seeds": [_candidate(seed, i) for i, seed in enumerate(seeds)],
            "context": _signals(context),
        }
        selected = self.selector.select(request)  # a refused request (duplicate seed ids) raises: nothing counted
        self._n += 1
        seed = seeds[selected.seed_idx]
        self._track(selected.decision_id, (bp_id, selected.seed_id))
        strategy = _DOCUMENT_NAME.get(selected.strategy, selected.strategy)
        self._usage[strategy] += 1
        self._pairs.add((bp_id, selected.seed_id))
        self.selection_history.append(
            {
                "timestamp": self.clock(),
                "blueprint_id": bp_id,
                "seed_id": selected.seed_id,
                "seed_idx": selected.seed_idx,
                "strategy": strategy,
                "context": dict(context or {}),
                "decision_id": selected.decision_id,
            }
        )
        _log.debug(
            "selected seed %d (%s) for blueprint %s: %s",
            selected.seed_idx,
            selected.seed_id,
            bp_id,
            selected.selection_reason,
        )
        return selected.seed_idx, seed

    def record_outcome(
        self,
        seed_id: Any,
        blueprint_id: Any,
        performance_metrics: Mapping[str, float] | None = None,
        success: bool = True,
    ) -> str | None:
        """Learn from the outcome of using a selected seed. Returns the decision id it was credited to, or None
        when no pending decision of that blueprint chose that seed (nothing learned; see the class docstring)."""
        pair = (str(blueprint_id), str(seed_id))
        waiting = self._pending.get(pair)
        if not waiting:
            _log.warning(
                "outcome for seed %s of blueprint %s: no pending decision of this blueprint chose that seed; "
                "not learned",
                pair[1],
                pair[0],
            )
            return None
        decision_id = waiting[-1]
        metrics = performance_metrics or {}
        outcome: dict[str, Any] = {
            "decision_id": decision_id,
            "blueprint_id": pair[0],
            "seed_id": pair[1],
            "success": bool(success),
            "occurred_at": self.clock().isoformat(),
            **{k: metrics[k] for k in METRICS if metrics.get(k) is not None},
        }
        # A metric the outcome contract refuses (NaN, a negative latency) raises here, and the decision stays pending.
        self.selector.record_outcome(outcome)
        waiting.pop()
        if not waiting:
            del self._pending[pair]
        self._open.discard(decision_id)
        return decision_id

    def switch_strategy(self, strategy_name: str, blueprint_id: Any = None) -> None:
        """Switch the default strategy (or one blueprint's); what was learned is kept. ValueError for an unknown
        name or one the settings cannot run (``discounted-ucb`` without ``decay.half_life_s``)."""
        name = seedworker_strategy(strategy_name)
        problem = self.selector.settings.strategy_problem(name)
        if problem:
            raise ValueError(problem)
        self.selector.switch_strategy(name, None if blueprint_id is None else str(blueprint_id))
        _log.info(
            "switched to %s selection strategy%s",
            name,
            "" if blueprint_id is None else f" for blueprint {blueprint_id}",
        )

    def get_selection_stats(self, top: int = 5) -> dict[str, Any]:
        stats = self.selector.stats(top=top)
        return {
            "total_selections": self._n,
            "unique_seeds_selected": len(self._pairs),
            "strategy_usage": dict(self._usage),
            "top_performing_seeds": [p["seed_id"] for p in stats["top_performers"]],
            "current_strategy": self.current_strategy,
            "pending_outcomes": len(self._open),
            "seedworker": stats,
        }

    @property
    def current_strategy(self) -> str:
        """The default strategy, in the document's name where it has one."""
        name = self.selector.default_strategy
        return _DOCUMENT_NAME.get(name, name)

    @property
    def strategies(self) -> dict[str, str]:
        """The document's strategy names and the seedworker strategies they run."""
        return dict(SEED_STRATEGIES)

    # -- bookkeeping -------------------------------------------------------------------------------------------------
    def _track(self, decision_id: str, pair: tuple[str, str]) -> None:
        if decision_id in self._open:
            return
        self._open.add(decision_id)
        self._pending.setdefault(pair, []).append(decision_id)
        self._order.append((decision_id, pair))
        order = self._order
        while order and order[0][0] not in self._open:  # resolved at the front: usual when outcomes come in order
            order.popleft()
        while len(self._open) > self.max_pending:
            old, old_pair = self._order.popleft()
            if old in self._open:
                self._open.discard(old)
                waiting = self._pending[old_pair]
                waiting.remove(old)
                if not waiting:
                    del self._pending[old_pair]
        if len(self._order) > 2 * self.max_pending:  # drop entries of resolved decisions now and then
            self._order = deque(e for e in self._order if e[0] in self._open)


def _candidate(seed: Any, idx: int) -> dict[str, Any]:
    candidate: dict[str, Any] = {"seed_id": str(seed.id), "seed_idx": idx}
    state = getattr(seed, "state", None)
    if state is not None:
        value = getattr(state, "value", state)
        candidate["state"] = value if isinstance(value, str) else str(getattr(state, "name", value)).lower()
    return candidate


def _signals(context: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (context or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[CONTEXT_NAMES.get(key, str(key))] = float(value)
    return out
