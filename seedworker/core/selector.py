"""The in-process seed selector: the whole learning core behind four methods, no I/O.

``select(request)`` returns the ``seed.selected`` event; ``record_outcome(outcome)`` learns from a graft's result;
``switch_strategy(name)`` changes the strategy and keeps what was learned; ``stats()`` summarizes.

State is kept per blueprint (arms, context standardizer, counters), because a blueprint is a Kafka key: one
partition holds all of a blueprint's events, so a worker can own, persist and rebuild blueprints independently.

Every change to the state goes through two functions, ``apply_selection`` and ``learn``, which a replay of the
logged ``seed.selected`` and ``adaptation.outcome`` events calls the same way — the live state and the replayed
state are the same computation.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel

from seedworker.contract.events import (
    SCHEMA_VERSION,
    AdaptationOutcome,
    CandidateScore,
    GraftRequested,
    SeedSelected,
    decision_id_for,
    from_dict,
    utc_now,
)
from seedworker.core.arms import RESOURCES, ArmTable
from seedworker.core.config import Settings
from seedworker.core.features import FeatureMap
from seedworker.core.join import Discard, Join, Rules, request_time
from seedworker.core.policies import STRATEGIES, Draw, Policy, Situation
from seedworker.core.shadow import Shadows

FALLBACK = "fallback"


@dataclass
class BlueprintState:
    arms: ArmTable
    features: FeatureMap
    decisions: int = 0
    version: int = 0
    strategy: str | None = None  # per-blueprint override of the default strategy
    by_strategy: Counter = field(default_factory=Counter)
    apprentice: dict | None = None  # apprentice mode's estimates (seedworker.core.shadow.Apprentice)

    def to_dict(self) -> dict:
        return {
            "arms": self.arms.to_dict(),
            "features": self.features.to_dict(),
            "decisions": self.decisions,
            "version": self.version,
            "strategy": self.strategy,
            "by_strategy": dict(self.by_strategy),
            **({"apprentice": self.apprentice} if self.apprentice is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> BlueprintState:
        return cls(
            ArmTable.from_dict(data["arms"]),
            FeatureMap.from_dict(data["features"]),
            data["decisions"],
            data["version"],
            data["strategy"],
            Counter(data["by_strategy"]),
            data.get("apprentice"),
        )


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    # What the join made of the outcome (seedworker.core.join): "learned", "replaced" (it replaced a default
    # reward), "late" (after the deadline, not learned), "mismatched" (another seed than the chosen one),
    # "duplicate", or "unknown" (no such decision yet: held, and dropped as dangling after join.hold_unknown_s).
    status: str
    decision_id: str
    reward: float | None = None


class SeedSelector:
    """Chooses a seed for each graft request and learns from each outcome.

    >>> from seedworker import SeedSelector
    >>> sel = SeedSelector()
    >>> req = {"request_id": "r1", "blueprint_id": "bp", "seeds": [{"seed_id": "a", "seed_idx": 0}]}
    >>> sel.select(req).seed_id
    'a'
    """

    def __init__(self, settings: Settings | None = None, *, clock: Callable[[], datetime] = utc_now):
        self.settings = settings or Settings()
        self.clock = clock
        self.reward = self.settings.reward.function()
        self.default_strategy = self.settings.default_strategy
        self.logging_only = self.settings.logging_only
        self.blueprints: dict[str, BlueprintState] = {}
        # The in-process API runs the worker's join rules on one partition (0), with event times from the events
        # (a request or outcome without occurred_at takes the selector's clock).
        self.join = Join(
            Rules.from_settings(self.settings.join, retention_s=self.settings.decision_retention_s),
            self,
            window=self.settings.dedup_window,
        )
        self.join_counters = Discard()
        self._policies: dict[str, Policy] = {}
        self._selectable = frozenset(self.settings.selectable_states)
        self._selectable_or_unset = self._selectable | {None}
        self.shadow = Shadows(self.settings, self.policy)

    # -- the public API ------------------------------------------------------------------------------------------
    def select(self, request: GraftRequested | dict, *, track: bool = True) -> SeedSelected:
        if not isinstance(request, GraftRequested):
            request = from_dict(request, "graft.requested")  # type: ignore[assignment]
        known = self.join.pending.get(request.decision_id)
        if known is not None and track:
            return known.selected  # a retried request: the same answer, nothing decided again
        selected = self.decide(request)
        self.apply_selection(selected)
        if track:
            sink = self.join_counters
            self.join.advance(0, request.occurred_at.timestamp(), sink)
            self.join.decision(selected, 0, sink)
            self.join.expire(sink)
        return selected

    def record_outcome(self, outcome: AdaptationOutcome | dict) -> OutcomeResult:
        """Join an outcome to its decision by the worker's rules (seedworker.core.join): learned at most once,
        only for the chosen seed, within ``join.reward_wait_s`` of the request (or later with ``join.learn_late``);
        decisions whose outcome does not come expire."""
        if not isinstance(outcome, AdaptationOutcome):
            # The selector's clock only for an outcome without a time (read only then: it is a call per outcome).
            default_time = self.clock() if outcome.get("occurred_at") is None else None
            outcome = from_dict(outcome, "adaptation.outcome", default_time=default_time)  # type: ignore[assignment]
        did = outcome.resolved_decision_id
        sink = self.join_counters
        sink.last = None
        # Joined before the clock moves, as in the worker: an outcome the join refuses moves no clock.
        verdict = self.join.outcome(outcome, 0, sink)
        learned = sink.last if verdict in ("learned", "replaced") else None
        self.join.advance(0, outcome.occurred_at.timestamp(), sink)
        self.join.expire(sink)
        return OutcomeResult("unknown" if verdict == "held" else verdict, did, learned and learned.reward)

    @property
    def pending(self) -> dict[str, SeedSelected]:
        """Decisions waiting for their outcome, by decision id."""
        return {did: p.selected for did, p in self.join.pending.items()}

    def switch_strategy(self, name: str, blueprint_id: str | None = None) -> None:
        """Change the strategy of one blueprint, or the default; learned statistics are untouched. Refused
        (ValueError) for a strategy the settings refuse too (seedworker.core.config.Settings.strategy_problem)."""
        problem = self.settings.strategy_problem(name)
        if problem:
            raise ValueError(problem)
        if blueprint_id is None:
            self.default_strategy = name
        else:
            self.blueprint(blueprint_id).strategy = name

    def stats(self, top: int = 3, *, per_seed: bool = True) -> dict[str, Any]:
        """Counts, the ``top`` seeds by mean reward, and (``per_seed``) every seed's statistics: see ``seed_rows``."""
        by_strategy: Counter = Counter()
        unique = 0
        performers = []
        seeds = []
        for bp_id, bp in self.blueprints.items():
            by_strategy.update(bp.by_strategy)
            a = bp.arms
            n = len(a)
            unique += int((a.selections[:n] > 0).sum())
            rows = seed_rows(bp_id, a, np.arange(n))
            for row in rows:
                if row["outcomes"] > 0:
                    performers.append(
                        {k: row[k] for k in ("blueprint_id", "seed_id", "mean_reward", "outcomes", "selections")}
                    )
            if per_seed:
                seeds += rows
        performers.sort(key=lambda p: p["mean_reward"], reverse=True)
        out = {
            "selections_per_strategy": dict(by_strategy),
            "total_selections": sum(by_strategy.values()),
            "unique_seeds_selected": unique,
            "blueprints": len(self.blueprints),
            "pending_decisions": len(self.pending),
            "top_performers": performers[:top],
            "default_strategy": self.default_strategy,
        }
        if per_seed:
            out["seeds"] = seeds
        return out

    # -- the two state transitions -------------------------------------------------------------------------------
    def apply_selection(self, selected: SeedSelected) -> None:
        """Fold a decision into the state: counts, the context standardizer, the decision counter."""
        bp = self.blueprint(selected.blueprint_id)
        a = bp.arms
        ids = [c.seed_id for c in selected.scores]
        if not all(map(a.index.__contains__, ids)):  # registers seeds first seen here (on replay: as decide did)
            a.rows(ids, self._prior(a))
        i = a.index[selected.seed_id]
        t = selected.request_time.timestamp() if selected.request_time else -math.inf
        a.select(i, t)
        if selected.context:
            bp.features.update(selected.context)
        bp.decisions += 1
        bp.version += 1
        bp.by_strategy[selected.strategy] += 1

    def learn(self, selected: SeedSelected, outcome: AdaptationOutcome) -> float:
        """Fold an outcome into the statistics of the seed its decision chose. Returns the reward."""
        reward = self.reward(outcome)
        a, i = self._fold(
            selected,
            reward,
            success=outcome.success,
            # Never dated before its request (a producer's clock that runs behind): a default reward learned at the
            # request time and replaced by this outcome would otherwise leave a later clock than this outcome
            # learned directly, and the state would depend on the order they came in.
            t=max(outcome.occurred_at.timestamp(), request_time(selected)),
            memory_mb=outcome.memory_mb,
            latency_ms=outcome.latency_ms,
        )
        # The outcome's resource measurements, for the statistics (a default reward has none, so is not counted).
        a.observe(i, memory_mb=outcome.memory_mb, latency_ms=outcome.latency_ms, throughput=outcome.throughput)
        return reward

    def learn_reward(self, selected: SeedSelected, reward: float, t: float) -> float:
        """Learn a configured reward for a decision whose outcome never came (``join.default_reward``)."""
        self._fold(selected, reward, success=False, t=t)
        return reward

    def forget_reward(self, selected: SeedSelected, reward: float, t: float) -> None:
        """Take a reward learned by ``learn_reward`` out again: the real outcome came after all and replaces it.
        The state version goes back by the one change the default made, so a decision whose outcome replaced a
        default ends at the version of one whose outcome came in time."""
        self._fold(selected, reward, success=False, t=t, forget=True)
        self.blueprints[selected.blueprint_id].version -= 1

    def _fold(self, selected: SeedSelected, reward: float, *, forget: bool = False, **observed) -> tuple[ArmTable, int]:
        """Fold (or with ``forget`` take out) a reward into the chosen seed's statistics; returns its table and row."""
        bp = self.blueprint(selected.blueprint_id)
        if self.shadow.on:
            self.shadow.fold(bp, selected, reward, forget)
        a = bp.arms
        i = a.index.get(selected.seed_id)
        if i is None:
            i = int(a.rows([selected.seed_id], self._prior(a))[0])
        # The features logged with the decision, not recomputed: replay learns exactly what the live worker learned.
        x = np.asarray(selected.features, dtype=float) if len(selected.features) == a.dim else None
        if forget:
            a.forget(i, reward=reward, x=x, **observed)
            return a, i
        a.learn(i, reward=reward, x=x, **observed)
        bp.version += 1
        return a, i

    def load_blueprint(self, blueprint_id: str, state: dict) -> None:
        self.blueprints[blueprint_id] = BlueprintState.from_dict(state)

    # -- deciding ------------------------------------------------------------------------------------------------
    def blueprint(self, blueprint_id: str) -> BlueprintState:
        bp = self.blueprints.get(blueprint_id)
        if bp is None:
            s = self.settings
            fm = FeatureMap(names=tuple(s.features))
            arms = ArmTable(
                dim=fm.dim,
                ridge=s.ridge,
                feature_ridge=s.feature_ridge,
                half_life_s=s.decay.half_life_s,
                detect=s.detects_changes,
            )
            bp = self.blueprints[blueprint_id] = BlueprintState(
                arms, fm, strategy=s.blueprint_strategies.get(blueprint_id)
            )
        return bp

    def policy(self, name: str) -> Policy:
        p = self._policies.get(name)
        if p is None:
            p = self._policies[name] = self.settings.policy(name)
        return p

    def _prior(self, arms: ArmTable):
        return arms.blueprint_prior(self.settings.prior_count) if self.settings.warm_start else None

    def strategy_for(self, request: GraftRequested, bp: BlueprintState) -> str:
        if request.strategy is not None and request.strategy in STRATEGIES:
            return request.strategy
        return bp.strategy or self.default_strategy

    def decide(self, request: GraftRequested) -> SeedSelected:
        """Choose a seed for the request from the current state, without changing the state."""
        bp = self.blueprint(request.blueprint_id)
        a = bp.arms
        seeds = request.seeds
        rows = a.rows([c.seed_id for c in seeds], lambda: self._prior(a))  # the prior is only needed for a new seed
        context = request.context.values()
        x = bp.features.transform(context)
        draw = Draw(self.settings.salt, request.request_id)
        viable, notes, all_viable = self._viability(request, a, rows)
        strategy = self.strategy_for(request, bp)
        k = len(seeds)
        scores: list[float | None] = [None] * k
        probs: list[float | None] = [None] * k

        # Viable candidates in seed_idx order, whatever the request's order: seed0 ("lowest seed_idx") and
        # round-robin ("in seed_idx order") pick by position in this list. Usually every seed is viable and the
        # request lists them in seed_idx order: then position j is request seed j (vidx None) and nothing is copied.
        order = [c.seed_idx for c in seeds]
        if all_viable and order == sorted(order):
            vidx = None
            vrows = rows
        else:
            vidx = np.flatnonzero(viable)
            vidx = vidx[np.argsort([order[j] for j in vidx.tolist()], kind="stable")]
            vrows = rows[vidx]
        if len(vrows) == 0:
            # Nothing viable: fall back to the lowest seed_idx, as Tamiyo did, and say why.
            pick = min(range(k), key=lambda j: seeds[j].seed_idx)
            why = "; ".join(f"{seeds[j].seed_id} {notes[j]}" for j in range(k) if notes[j])
            return self._event(
                request,
                bp,
                pick,
                FALLBACK,
                f"no viable seed ({why}); fell back to the lowest seed_idx",
                1.0,
                "fallback",
                False,
                scores,
                probs,
                viable,
                notes,
                context,
                x,
            )

        # Shadow strategies on the same state; in apprentice mode the apprentice may decide (seedworker.core.shadow).
        shadows = self.shadow.decide(bp, request.request_id, vrows, vidx, x, strategy, draw) if self.shadow.on else None
        if self.logging_only:
            strategy_name = self.policy(strategy).name
            shadow = self._choose(bp, a, vrows, x, draw, strategy)
            pick = 0 if vidx is None else int(vidx[0])  # the lowest viable seed_idx
            self._fill(shadow, vidx, scores, probs)
            would = shadow.index if vidx is None else int(vidx[shadow.index])
            return self._event(
                request,
                bp,
                pick,
                "seed0",
                f"logging-only mode: lowest viable seed_idx; {strategy_name} would have chosen {seeds[would].seed_id}",
                1.0,
                "exact",
                False,
                scores,
                probs,
                viable,
                notes,
                context,
                x,
                shadows,
            )

        if shadows is not None and shadows.live is not None:
            return self._event(request, bp, *shadows.live.args(vidx, k, scores), viable, notes, context, x, shadows)

        # Selection counts of the candidates (a slice when they are every seed in order); compared as Python
        # numbers first: after the burn-in no candidate is fresh, and then no mask is built.
        counts = a.selections[: len(vrows)] if a.is_every(vrows) else a.selections[vrows]
        if min(counts.tolist()) < self.settings.min_samples:
            fresh = counts < self.settings.min_samples
            untried = np.flatnonzero(fresh) if vidx is None else vidx[fresh]
            # Burn-in: a uniform pick among the untried, so its propensity is exact.
            j = int(untried[draw.rng.integers(len(untried))]) if len(untried) > 1 else int(untried[0])
            p = 1.0 / len(untried)
            for u in untried.tolist():
                probs[u] = p
            return self._event(
                request,
                bp,
                j,
                strategy,
                f"fewer than {self.settings.min_samples} selections so "
                f"far; untried viable seeds are tried first ({len(untried)} untried)",
                p,
                "exact",
                True,
                scores,
                [q or 0.0 for q in probs],
                viable,
                notes,
                context,
                x,
                shadows,
            )

        choice = self._choose(bp, a, vrows, x, draw, strategy)
        self._fill(choice, vidx, scores, probs)
        pick = choice.index if vidx is None else int(vidx[choice.index])
        return self._event(
            request,
            bp,
            pick,
            strategy,
            choice.reason,
            choice.propensity,
            choice.method,
            choice.explored,
            scores,
            probs,
            viable,
            notes,
            context,
            x,
            shadows,
        )

    def _choose(self, bp, a, vrows, x, draw, strategy):
        return self.policy(strategy).choose(Situation(a, vrows, x, bp.decisions, draw))

    @staticmethod
    def _fill(choice, vidx, scores, probs) -> None:
        """Copy a choice's per-candidate scores (non-finite ones as None) and probabilities to request positions."""
        values = choice.score_list()
        if values is not None:
            if not math.isfinite(sum(values)):  # rare (an untried arm's infinite bound): check each
                values = [v if math.isfinite(v) else None for v in values]
            if vidx is None:
                scores[:] = values
            else:
                for v, s in zip(vidx.tolist(), values):
                    scores[v] = s
        if choice.probabilities is not None:
            values = choice.probabilities.tolist()
            if vidx is None:
                probs[:] = values
            else:
                for v, p in zip(vidx.tolist(), values):
                    probs[v] = p

    def _viability(self, request: GraftRequested, a: ArmTable, rows: np.ndarray) -> tuple[list[bool], list[str], bool]:
        """(viable mask, note per seed, whether every seed is viable); the mask is a list (the event carries it)."""
        k = len(rows)
        viable = [True] * k
        notes = [""] * k
        sel = self._selectable
        every = True
        if (
            not {c.state for c in request.seeds} <= self._selectable_or_unset
        ):  # some seed is in a state that cannot be selected
            every = False
            for j, c in enumerate(request.seeds):
                if c.state is not None and c.state not in sel:
                    viable[j] = False
                    notes[j] = f"is {c.state}, not selectable"
        cons = request.constraints
        if cons is not None and (cons.memory_budget_mb is not None or cons.max_latency_ms is not None):
            seen, mem, lat = a.tracked(rows)
            for j in range(k):
                if not (viable[j] and seen[j]):
                    continue  # untried seeds stay eligible: nothing is known against them
                if cons.memory_budget_mb is not None and mem[j] > cons.memory_budget_mb:
                    viable[j] = every = False
                    notes[j] = f"uses {mem[j]:.0f} MB > budget {cons.memory_budget_mb:.0f} MB"
                elif cons.max_latency_ms is not None and lat[j] > cons.max_latency_ms:
                    viable[j] = every = False
                    notes[j] = f"adds {lat[j]:.1f} ms > limit {cons.max_latency_ms:.1f} ms"
        return viable, notes, every

    def _event(
        self,
        request,
        bp,
        pick,
        strategy,
        reason,
        propensity,
        method,
        explored,
        scores,
        probs,
        viable,
        notes,
        context,
        x,
        shadow=None,
    ) -> SeedSelected:
        seeds = request.seeds
        chosen = seeds[pick]
        request_id = request.request_id
        # One literal in field order (the envelope's fields first), not the envelope merged into keywords: a
        # dictionary less per decision.
        fields = {
            "event_id": decision_id_for("seed.selected:" + request_id),
            "event_type": "seed.selected",
            "schema_version": SCHEMA_VERSION,
            "occurred_at": self.clock(),
            "source": "seedworker",
            "trace_id": request.trace_id,
            "correlation_id": request.correlation_id or request_id,
            "decision_id": request.decision_id,
            "request_id": request_id,
            "blueprint_id": request.blueprint_id,
            "layer_name": request.layer_name,
            "seed_id": chosen.seed_id,
            "seed_idx": chosen.seed_idx,
            "strategy": strategy,
            "selection_reason": f"{chosen.seed_id} (seed_idx {chosen.seed_idx}) chosen by {strategy}: {reason}"
            + (shadow.note if shadow is not None else ""),
            "propensity": float(min(1.0, max(propensity, 1e-12))),
            "propensity_method": method,
            "scores": None,
            "explored": bool(explored),
            "context": context,
            "features": x.tolist(),
            "state_version": bp.version,
            "request_time": request.occurred_at,
            "shadow": None if shadow is None else shadow.entries(pick, seeds),
        }
        # Built without re-validation: every field comes from validated input or from this function. When both
        # models are plain (no post-init hook, no private attributes, exactly the fields given here), the instances
        # are assembled directly: the same __dict__, fields-set, extra and private slots model_construct writes, at
        # a fraction of its per-field cost (it walks aliases and defaults; here every field is given). Otherwise
        # model_construct.
        if not _plain_models(len(fields)):
            fields["scores"] = [
                CandidateScore.model_construct(
                    seed_id=c.seed_id,
                    seed_idx=c.seed_idx,
                    score=scores[j],
                    probability=probs[j],
                    viable=viable[j],
                    note=notes[j] or None,
                )
                for j, c in enumerate(seeds)
            ]
            return SeedSelected.model_construct(**fields)
        new = object.__new__
        set_dict, set_fields, set_extra, set_private = _SLOT_SETTERS
        names = _CANDIDATE_FIELDS
        candidates = []
        for c, score, prob, ok, note in zip(seeds, scores, probs, viable, notes):
            m = new(CandidateScore)
            set_dict(
                m,
                {
                    "seed_id": c.seed_id,
                    "seed_idx": c.seed_idx,
                    "score": score,
                    "probability": prob,
                    "viable": ok,
                    "note": note or None,
                },
            )
            # One fields-set shared by every candidate the selector builds: the models are frozen, so nothing
            # assigns to (and so adds to) it, and pydantic copies it before changing a copy's (model_copy). A set
            # each would be 8 allocations per decision and ~3.8 KB per decision the join keeps waiting.
            set_fields(m, names)
            set_extra(m, None)
            set_private(m, None)
            candidates.append(m)
        fields["scores"] = candidates
        event = new(SeedSelected)
        set_dict(event, fields)
        set_fields(event, set(fields))
        set_extra(event, None)
        set_private(event, None)
        return event

    # -- persistence ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "default_strategy": self.default_strategy,
            "blueprints": {k: v.to_dict() for k, v in self.blueprints.items()},
        }

    def load_state_dict(self, data: dict) -> None:
        self.default_strategy = data["default_strategy"]
        self.blueprints = {k: BlueprintState.from_dict(v) for k, v in data["blueprints"].items()}


_CANDIDATE_FIELDS = {"seed_id", "seed_idx", "score", "probability", "viable", "note"}  # never changed (see _event)


def _slot_setters() -> tuple[Callable[[Any, Any], None], ...]:
    """Setters of a model's __dict__, fields-set, extra and private slots: the slot descriptors' own ``__set__``
    (a direct call, ~0.1 µs less per model than ``object.__setattr__``, which looks the name up first), or
    ``object.__setattr__`` where pydantic keeps them otherwise."""
    slots = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
    found = [getattr(BaseModel.__dict__.get(name), "__set__", None) for name in slots]
    if all(found):
        return tuple(found)
    return tuple((lambda m, v, name=name: object.__setattr__(m, name, v)) for name in slots)


_SLOT_SETTERS = _slot_setters()
_plain: dict[int, bool] = {}


def _plain_models(n_fields: int) -> bool:
    """Whether CandidateScore and SeedSelected (with ``n_fields`` fields given) are plain models that the selector
    may assemble directly: no post-init hook, no private attributes, exactly the fields given (checked once)."""
    plain = _plain.get(n_fields)
    if plain is None:
        plain = _plain[n_fields] = (
            CandidateScore.__pydantic_post_init__ is None
            and SeedSelected.__pydantic_post_init__ is None
            and not CandidateScore.__private_attributes__
            and not SeedSelected.__private_attributes__
            and set(CandidateScore.__pydantic_fields__) == _CANDIDATE_FIELDS
            and len(SeedSelected.__pydantic_fields__) == n_fields
        )
    return plain


Z95 = 1.959963984540054  # normal quantile of 0.975


def interval95(n: float, mean: float, variance: float) -> list[float] | None:
    """Normal-approximation 95% interval of a mean of ``n`` values with population variance ``variance`` (the
    sample standard deviation, n - 1, is used); None below two values."""
    if n < 2:
        return None
    half = Z95 * math.sqrt(variance / (n - 1))  # sqrt(var * n / (n - 1) / n)
    return [mean - half, mean + half]


def seed_rows(blueprint_id: str, arms: ArmTable, rows: np.ndarray) -> list[dict[str, Any]]:
    """Per seed: selections, outcomes, mean reward (with the warm-start prior, as the strategies see it) and its
    95% interval (of the raw rewards), success rate (an expired decision's default reward counts as a failure), and
    for latency_ms, memory_mb and throughput the mean and 95% interval over the outcomes that reported them
    (``measured``: outcomes learned since resources were first counted, so at most ``outcomes``)."""
    pulls, sel = arms.pulls[rows], arms.selections[rows]
    means, var = arms.means(rows), arms.variances(rows)
    successes = arms.success_sum[rows]
    measured, r_mean, r_var = arms.resource_moments(rows)
    out = []
    for j, i in enumerate(rows.tolist()):
        k, m = float(pulls[j]), float(means[j])
        row: dict[str, Any] = {
            "blueprint_id": blueprint_id,
            "seed_id": arms.seed_ids[i],
            "selections": int(sel[j]),
            "outcomes": int(k),
            "mean_reward": m,
            "reward_ci95": interval95(k, m, float(var[j])),
            "success_rate": float(successes[j]) / k if k else None,
            "measured": int(measured[j]),
        }
        for c, name in enumerate(RESOURCES):
            n, rm = float(measured[j]), float(r_mean[j, c])
            row[name] = {"mean": rm if n else None, "ci95": interval95(n, rm, float(r_var[j, c]))}
        out.append(row)
    return out
