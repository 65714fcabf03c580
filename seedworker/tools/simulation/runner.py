"""Run strategies, and the always-seed-0 baseline, on one simulated stream.

Every strategy gets a fresh ``SeedSelector`` built from ``Settings`` with that strategy as default (and the
scenario's reward settings; a half-life where the scenario is non-stationary, and for ``discounted-ucb`` always).
All of them answer the very same requests: the steps are walked once, and at each step every strategy picks a seed
for the same request and is told the outcome the environment drew for that (step, seed) pair. The selectors' clock
is the simulated request time, so a run is fully reproducible.

Feedback can be delayed: with ``delay=d`` the outcome of step ``t`` reaches the selector just after its decision at
step ``t + d`` (event time ``t + d + 0.5`` steps); outcomes still outstanding at the end are never learned.

The baseline ``seed0`` is what Tamiyo did: always the lowest seed_idx. It runs with ``min_samples=0``, since the
selector's burn-in (try every seed once before the strategy decides) would otherwise apply to it as well.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from tqdm import tqdm

from seedworker.contract.events import AdaptationOutcome
from seedworker.core.config import Settings
from seedworker.core.policies import STRATEGIES
from seedworker.core.selector import SeedSelector
from seedworker.tools.simulation.envs import SCENARIOS, START, Environment, Step, make_env

BASELINE = "seed0"
CORE_STRATEGIES = ("ucb", "thompson", "epsilon-greedy", "softmax", "linucb", "lin-thompson")


def default_strategies(scenario: str) -> tuple[str, ...]:
    """The strategies compared when none are named: the core set, plus beta-thompson for success/failure rewards
    and discounted-ucb where the seed qualities change."""
    names = list(CORE_STRATEGIES)
    if scenario == "bernoulli":
        names.append("beta-thompson")
    cls = SCENARIOS.get(scenario)
    if cls is not None and not cls.stationary:
        names.append("discounted-ucb")
    return tuple(names)


def default_half_life_s(steps: int, step_seconds: float) -> float:
    """A tenth of the run (at least 25 steps), in seconds of event time."""
    return max(25, steps // 10) * step_seconds


def check_strategies(names: Iterable[str]) -> list[str]:
    """Known strategy names, de-duplicated in order, without the baseline (which always runs)."""
    out: list[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
        if name != BASELINE and name not in out:
            out.append(name)
    return out


@dataclass
class StrategyResult:
    strategy: str
    mean_reward: float  # realized reward per graft
    mean_expected_reward: float  # expected reward of the picks
    cumulative_regret: float  # sum over steps of (best expected reward - expected reward of the pick)
    best_share: float  # share of picks after the exploration window that were the best seed for that step
    best_share_last_quarter: float
    never_tried: list[str]
    selections: list[int]  # per seed, whole run
    selections_after_exploration: list[int]
    improvement_pct: float | None  # mean reward over the baseline's, in %
    over_budget_picks: int  # picks of a seed that does not fit the request's constraints
    constraint_violations: int  # picks of a seed whose learned outcomes already showed it over the budget
    outcomes_learned: int
    picks: np.ndarray = field(repr=False)
    best: np.ndarray = field(repr=False)  # per step: was the pick the best seed for that step
    regret: np.ndarray = field(repr=False)  # per step regret
    rewards: np.ndarray = field(repr=False)

    @property
    def regret_curve(self) -> np.ndarray:
        return np.cumsum(self.regret)

    def share_between(self, start: int, stop: int | None = None) -> float:
        window = self.best[start:stop]
        return float(window.mean()) if len(window) else float("nan")

    def to_dict(self, points: int = 100) -> dict[str, Any]:
        curve = self.regret_curve
        n = len(curve)
        idx = sorted({min(n - 1, int(round(i * (n - 1) / max(points - 1, 1)))) for i in range(points)}) if n else []
        return {
            "strategy": self.strategy,
            "mean_reward": _f(self.mean_reward),
            "mean_expected_reward": _f(self.mean_expected_reward),
            "cumulative_regret": _f(self.cumulative_regret),
            "best_share_after_exploration": _f(self.best_share),
            "best_share_last_quarter": _f(self.best_share_last_quarter),
            "seeds_never_tried": self.never_tried,
            "improvement_over_seed0_pct": None if self.improvement_pct is None else _f(self.improvement_pct, 3),
            "selections": self.selections,
            "selections_after_exploration": self.selections_after_exploration,
            "over_budget_picks": self.over_budget_picks,
            "constraint_violations": self.constraint_violations,
            "outcomes_learned": self.outcomes_learned,
            "cumulative_regret_curve": {"step": [i + 1 for i in idx], "regret": [_f(curve[i]) for i in idx]},
        }


@dataclass
class ScenarioResult:
    scenario: str
    description: str
    steps: int
    n_seeds: int
    seed: int
    delay: int
    half_life_s: float | None
    exploration_steps: int
    seed_ids: list[str]
    strategies: list[str]  # in run order, the baseline last
    results: dict[str, StrategyResult]
    oracle_mean_reward: float
    best_seed_share: list[float]  # per seed: share of steps at which it was the best
    hidden: dict[str, Any]
    contextual: dict[str, bool]
    best_per_step: np.ndarray = field(repr=False)  # the best seed at each step (for that step's context)
    budget_mb: float | None = None

    @property
    def baseline(self) -> StrategyResult:
        return self.results[BASELINE]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "description": self.description,
            "steps": self.steps,
            "seeds": self.n_seeds,
            "seed": self.seed,
            "delay": self.delay,
            "half_life_s": self.half_life_s,
            "exploration_steps": self.exploration_steps,
            "seed_ids": self.seed_ids,
            "baseline": BASELINE,
            "memory_budget_mb": self.budget_mb,
            "oracle_mean_reward": _f(self.oracle_mean_reward),
            "best_seed_share": [_f(v) for v in self.best_seed_share],
            "hidden": self.hidden,
            "results": {name: self.results[name].to_dict() for name in self.strategies},
        }


class SimClock:
    """The selectors' clock: the simulated time of the request being decided."""

    def __init__(self, now: datetime = START):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class _Run:
    def __init__(self, name: str, selector: SeedSelector, steps: int, k: int):
        self.name = name
        self.selector = selector
        self.picks = np.zeros(steps, dtype=np.int64)
        self.best = np.zeros(steps, dtype=bool)
        self.regret = np.zeros(steps)
        self.rewards = np.zeros(steps)
        self.expected = np.zeros(steps)
        self.pending: deque[tuple[int, int, AdaptationOutcome]] = deque()
        self.memory_sum = np.zeros(k)
        self.memory_n = np.zeros(k)
        self.over_picks = 0
        self.violations = 0
        self.learned = 0


def build_selector(name: str, env: Environment, half_life_s: float | None, clock: SimClock) -> SeedSelector:
    options: dict[str, Any] = {"default_strategy": name, "reward": dict(env.reward_settings)}
    # A strategy that forgets by change detection takes no half-life (the configuration refuses one).
    if half_life_s is not None and (not env.stationary or name == "discounted-ucb") and not STRATEGIES[name].detects:
        options["decay"] = {"half_life_s": half_life_s}
    if name == BASELINE:
        options["min_samples"] = 0
    return SeedSelector(Settings(**options), clock=clock)


def simulate(
    scenario: str | Environment = "stationary",
    *,
    strategies: Iterable[str] | None = None,
    steps: int = 2000,
    n_seeds: int = 8,
    seed: int = 0,
    delay: int = 0,
    half_life_s: float | None = None,
    exploration: float = 0.5,
    progress: bool = False,
    env_options: dict[str, Any] | None = None,
) -> ScenarioResult:
    """Run ``strategies`` (default: ``default_strategies(scenario)``) and the seed0 baseline on one stream.

    ``exploration`` is the fraction of the run treated as exploration: the best-seed share is measured after it.
    """
    if isinstance(scenario, Environment):
        env = scenario
    else:
        env = make_env(scenario, n_seeds=n_seeds, steps=steps, seed=seed, **(env_options or {}))
    steps, k = env.steps, env.n_seeds
    if delay < 0:
        raise ValueError("delay must be >= 0")
    if not 0.0 <= exploration < 1.0:
        raise ValueError("exploration must be in [0, 1)")
    names = check_strategies(default_strategies(env.name) if strategies is None else strategies)
    names.append(BASELINE)
    needs_half_life = not env.stationary or "discounted-ucb" in names
    if half_life_s is None and needs_half_life:
        half_life_s = default_half_life_s(steps, env.step_seconds)
    if not needs_half_life:
        half_life_s = None

    clock = SimClock(env.start)
    runs = [_Run(name, build_selector(name, env, half_life_s, clock), steps, k) for name in names]
    budget = None
    best_per_step = np.zeros(steps, dtype=np.int64)
    oracle = 0.0
    lag = timedelta(seconds=(delay + 0.5) * env.step_seconds)

    bar = tqdm(
        total=steps,
        desc=f"simulate {env.name}",
        unit="step",
        disable=not progress,
        file=sys.stderr,
        leave=False,
        delay=0.5,
        dynamic_ncols=True,
    )
    try:
        for t in range(steps):
            step = env.step(t)
            if budget is None and step.request.constraints is not None:
                budget = step.request.constraints.memory_budget_mb
            clock.now = step.time
            best_per_step[t] = step.best
            oracle += step.best_value
            events: dict[int, AdaptationOutcome] = {}
            for run in runs:
                _decide(run, step, t, k, delay, lag, budget, events)
            bar.update(1)
    finally:
        bar.close()

    start = int(round(exploration * steps))
    quarter = int(round(0.75 * steps))
    base_mean = float(runs[-1].rewards.mean())
    results: dict[str, StrategyResult] = {}
    for run in runs:
        counts = np.bincount(run.picks, minlength=k)
        late = np.bincount(run.picks[start:], minlength=k)
        mean = float(run.rewards.mean())
        if run.name == BASELINE or abs(base_mean) < 1e-12:
            improvement = None
        else:
            improvement = 100.0 * (mean - base_mean) / abs(base_mean)
        results[run.name] = StrategyResult(
            strategy=run.name,
            mean_reward=mean,
            mean_expected_reward=float(run.expected.mean()),
            cumulative_regret=float(run.regret.sum()),
            best_share=float(run.best[start:].mean()),
            best_share_last_quarter=float(run.best[quarter:].mean()) if quarter < steps else float("nan"),
            never_tried=[env.seed_ids[j] for j in range(k) if counts[j] == 0],
            selections=[int(c) for c in counts],
            selections_after_exploration=[int(c) for c in late],
            improvement_pct=improvement,
            over_budget_picks=run.over_picks,
            constraint_violations=run.violations,
            outcomes_learned=run.learned,
            picks=run.picks,
            best=run.best,
            regret=run.regret,
            rewards=run.rewards,
        )
    return ScenarioResult(
        scenario=env.name,
        description=env.description,
        steps=steps,
        n_seeds=k,
        seed=env.seed,
        delay=delay,
        half_life_s=half_life_s,
        exploration_steps=start,
        seed_ids=list(env.seed_ids),
        strategies=names,
        results=results,
        oracle_mean_reward=oracle / steps,
        best_seed_share=[float(c) / steps for c in np.bincount(best_per_step, minlength=k)],
        hidden=env.hidden(),
        contextual={name: bool(STRATEGIES[name].contextual) for name in names},
        best_per_step=best_per_step,
        budget_mb=budget,
    )


def _decide(
    run: _Run,
    step: Step,
    t: int,
    k: int,
    delay: int,
    lag: timedelta,
    budget: float | None,
    events: dict[int, AdaptationOutcome],
) -> None:
    selected = run.selector.select(step.request)
    j = selected.seed_idx
    run.picks[t] = j
    run.best[t] = step.is_best(j)
    run.regret[t] = step.regret(j)
    run.rewards[t] = step.rewards[j]
    run.expected[t] = step.expected[j]
    if not step.feasible[j]:
        run.over_picks += 1
    if budget is not None and run.memory_n[j] > 0 and run.memory_sum[j] / run.memory_n[j] > budget:
        run.violations += 1
    event = events.get(j)
    if event is None:
        o = step.outcomes[j]
        event = events[j] = AdaptationOutcome(
            event_id=f"{step.request.request_id}:outcome:{j}",
            occurred_at=step.time + lag,
            source="seedworker-simulate",
            decision_id=selected.decision_id,
            request_id=step.request.request_id,
            blueprint_id=step.request.blueprint_id,
            seed_id=selected.seed_id,
            **o.fields(),
        )
    run.pending.append((t + delay, j, event))
    while run.pending and run.pending[0][0] <= t:
        _, jj, ev = run.pending.popleft()
        result = run.selector.record_outcome(ev)
        if result.status != "learned":  # pragma: no cover - would be a simulator bug
            raise RuntimeError(f"{run.name}: outcome of step {t} was {result.status}")
        run.learned += 1
        run.memory_sum[jj] += ev.memory_mb
        run.memory_n[jj] += 1


def simulate_many(scenarios: Iterable[str], **kwargs: Any) -> list[ScenarioResult]:
    return [simulate(name, **kwargs) for name in scenarios]


def _f(value: float, digits: int = 6) -> float | None:
    value = float(value)
    if not np.isfinite(value):
        return None
    return round(value, digits)
