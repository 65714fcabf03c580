"""``seedworker evaluate``: off-policy evaluation of the strategies and the baselines from the worker's decision log.

The log is the store's ``decisions`` table: per decision the ``seed.selected`` event (candidates, the chosen seed's
propensity, every candidate's probability where the strategy defines one, the raw context and the feature vector
used), its status and, once resolved, its reward. Estimates use the decisions whose outcome was learned (status
``resolved``, or ``late`` with a reward); the others are counted and left out.

What is estimated. For a target ``pi`` the value is the mean reward per decision
``V(pi) = 1/n sum_t sum_a pi(a | x_t, H_t) E[r | x_t, a]`` over those n decisions, where ``H_t`` is the *logged*
history before decision t: the selections the logging worker made and the outcomes it learned, in event-time order.
``pi(. | x_t, H_t)`` is what a fresh ``SeedSelector`` running ``pi`` (same settings, salt, features) gives the
candidates of request t after folding in exactly that history — the selector itself decides, nothing here
re-implements a strategy (a sampling strategy is asked for Monte-Carlo probabilities of all its candidates, 1000
draws; its pick does not depend on that). So for a learning strategy V answers "how good would its choices have
been on these requests, knowing what the logging worker knew"; it is not what the strategy would have earned
deployed, where its own choices would have made a different history. For the baselines (``seed0``: the lowest
viable seed_idx; ``random``: uniform over the viable seeds; both without burn-in) and ``fixed:K`` (seed_idx K when
offered and viable) the two coincide. IPS, SNIPS and DR (``estimators``) estimate V without bias when the logged
propensities are right, because ``pi(. | x_t, H_t)`` depends on the past only.

Support. Where the target gives probability (above 1e-9 in all) to seeds the logging policy gave probability 0 —
the logging policy was deterministic (propensity exactly 1: UCB with a unique best, seed0, round-robin, a fallback,
logging-only mode), or drew among the untried seeds only (burn-in), or a Monte-Carlo estimate came out 0 — IPS and
SNIPS are not identifiable and are not printed. DR is, labelled model-based there, its interval widened by the
worst the reward model can be wrong on that probability mass (the rewards' clip range). A quadrature propensity
(Thompson family) gives every other viable candidate a positive, unlogged probability: supported. Supported is not
enough when the logged probabilities are tiny: the effective sample size and the mean weight (1 in expectation)
say how much an estimate is worth, and intervals resting on fewer than 30 effective decisions are flagged.

Live shadows (``shadow.strategies``, and the apprentice's learner and baseline: seedworker.core.shadow). A
decision that recorded what a shadow strategy would have chosen on the live state, with its probability
``pi_t(a_t)`` of the logged seed, gives that strategy's importance weight directly: ``shadow:<name>`` rows estimate
its value on live traffic without replaying it (so also for beta-thompson), plus its agreement with the live choice.
Their value is the same quantity a replayed target estimates (the shadow saw the live state, which is the logged
history); only their draws differ. Two differences from the replayed targets, since only the shadow's pick and its
probability of the logged seed are recorded: DR's model term is ``q_t`` of the shadow's own pick, a draw from
``pi_t`` (unbiased for ``sum_a pi_t(a) q_t(a)``, a little more variance), and so is the true value of a simulated
log; and the shadow's probability off the logged support is known where the logged decision was deterministic
(``1 - pi_t(a_t)``) or supported every viable seed (0), and elsewhere estimated by whether its own pick fell off it.

What the log does not hold, and what follows:
- the outcome's fields: only the reward is stored, so beta-thompson (which learns the success flag) cannot be
  replayed, and the targets track no memory/latency;
- the request's constraints and seed states: a candidate the logging worker found not viable is not viable for the
  target either (taken from the logged ``viable`` flag);
- a request's ``strategy`` override; the time the worker learned each outcome: event time stands in for it;
- Monte-Carlo propensities (201 draws) are estimates, so 1/p is only approximately unbiased for those decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import inspect
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from seedworker.contract import events as ev
from seedworker.core.config import Settings, load_settings
from seedworker.core.policies import STRATEGIES, SamplingPolicy
from seedworker.core.selector import SeedSelector
from seedworker.store import readers
from seedworker.store.readers import read_snapshot
from seedworker.store.rows import StoredDecision
from seedworker.store.store import StoreError
from seedworker.tools.estimators import (
    Estimate,
    RunningMeanModel,
    doubly_robust,
    effective_sample_size,
    ips,
    snips,
    unidentified,
)

BASELINES = ("seed0", "random")
REWARDED = ("resolved", "late")
NOT_VIABLE = "not-viable-when-logged"  # a seed state no configuration lists as selectable
MIN_ESS = 30  # below this many effective decisions an interval is flagged: the normal approximation is poor
WEIGHT_Z = 3.0  # a mean weight this many standard errors from its expectation flags the target's estimates
NEGLIGIBLE = 1e-9  # target mass off the logged support below this is ignored (at most 1e-9 x the reward range)
TARGET_SAMPLES = 1000  # Monte-Carlo draws for a sampling target's probabilities (standard error <= 0.016)
NOT_REPLAYABLE = {"beta-thompson": "learns the outcomes' success flag, which the store does not keep (only rewards)"}


# -- the log -------------------------------------------------------------------------------------------------------
def distribution(selected: ev.SeedSelected) -> np.ndarray | None:
    """The probability a decision gave each candidate (``scores`` order), read from its ``seed.selected`` event.

    Propensity 1 (exact): all on the chosen seed (in logging-only mode the candidates' probabilities are the shadow
    strategy's, not the logging policy's). Else the candidates' logged probabilities (a non-viable candidate's
    missing one is 0), or an index policy's tie: 1/ties on the viable candidates sharing the chosen one's score. A
    quadrature propensity comes without the others' probabilities, which are positive (it is only computed when
    every candidate's posterior has a spread) but unknown: NaN. None when the event does not say."""
    cands = selected.scores
    chosen = position(selected)
    p = np.zeros(len(cands))
    if selected.propensity_method == "quadrature":
        p[:] = [np.nan if c.viable else 0.0 for c in cands]
        p[chosen] = selected.propensity
        return p
    if selected.propensity >= 1.0:
        p[chosen] = 1.0
        return p
    probs = [c.probability if c.probability is not None or c.viable else 0.0 for c in cands]
    if None not in probs and abs(probs[chosen] - selected.propensity) <= 1e-12:
        p[:] = probs
        return p
    ties = [j for j, c in enumerate(cands) if c.viable and c.score == cands[chosen].score]
    if abs(len(ties) * selected.propensity - 1.0) <= 1e-9:
        p[ties] = 1.0 / len(ties)
        return p
    return None


def position(selected: ev.SeedSelected) -> int:
    return next(j for j, c in enumerate(selected.scores) if c.seed_id == selected.seed_id)


@dataclass(slots=True)
class Record:
    selected: ev.SeedSelected
    status: str
    reward: float | None
    outcome_time: float | None
    request_time: float
    chosen: int = field(init=False)
    logged: np.ndarray = field(init=False)  # the logging policy's probability per candidate
    readable: bool = field(init=False)  # whether the event says (or bounds) the other candidates' probabilities
    _request: ev.GraftRequested | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.chosen = position(self.selected)
        p = distribution(self.selected)
        self.readable = p is not None
        if p is None:  # only the chosen seed's propensity is known: the others cannot be shown to be supported
            p = np.zeros(len(self.selected.scores))
            p[self.chosen] = self.selected.propensity
        self.logged = p

    @property
    def rewarded(self) -> bool:
        return self.status in REWARDED and self.reward is not None

    def request(self) -> ev.GraftRequested:
        """The request as the targets see it: the logged candidates (a seed not viable then is not viable now, by
        its state), the raw context and the request time; no constraints, no strategy override (not logged)."""
        if self._request is None:
            s = self.selected
            seeds = [
                ev.SeedCandidate(seed_id=c.seed_id, seed_idx=c.seed_idx, state=None if c.viable else NOT_VIABLE)
                for c in s.scores
            ]
            self._request = ev.GraftRequested(
                request_id=s.request_id,
                blueprint_id=s.blueprint_id,
                layer_name=s.layer_name,
                occurred_at=s.request_time or s.occurred_at,
                seeds=seeds,
                context=s.context,
            )
        return self._request

    @property
    def deterministic(self) -> bool:
        """Propensity exactly 1: not a Monte-Carlo estimate that happened to be 1."""
        return self.selected.propensity >= 1.0 and self.selected.propensity_method != "monte_carlo"


def read_log(path: str | Path, blueprint_id: str | None = None) -> list[Record]:
    """The decisions in the order the worker made them, from one read-only snapshot of the store."""
    return to_records(read_snapshot(path, lambda db: readers.decisions(db, blueprint_id)))


def to_records(rows: list[StoredDecision]) -> list[Record]:
    """The store's decision rows as records, in the order given."""
    return [
        Record(
            ev.decode(d.row.payload, ev.SEED_SELECTED),
            d.status,
            d.reward,
            d.outcome_time,  # type: ignore
            d.row.request_time,
        )
        for d in rows
    ]


# -- the targets ---------------------------------------------------------------------------------------------------
class StrategyTarget:
    """A strategy replayed over the log: a fresh selector that decides each request and then folds in the logged
    selection and, when they were observed, the logged outcomes."""

    def __init__(self, name: str, settings: Settings):
        self.name = name
        self.selector = SeedSelector(settings)

    def distribution(self, record: Record) -> np.ndarray:
        p = distribution(self.selector.decide(record.request()))
        if p is None or np.isnan(p).any():  # pragma: no cover - make_targets configures what distribution() reads
            raise RuntimeError(f"{self.name}: the decision does not say every candidate's probability")
        return p

    def observe(self, record: Record) -> None:
        self.selector.apply_selection(record.selected)

    def learn(self, record: Record, reward: float, t: float) -> None:
        self.selector.learn_reward(record.selected, reward, t)


class FixedSeedTarget:
    """Always seed_idx ``k`` when it is offered and viable, else the lowest viable seed_idx."""

    def __init__(self, seed_idx: int):
        self.seed_idx = seed_idx

    def distribution(self, record: Record) -> np.ndarray:
        cands = record.selected.scores
        viable = [j for j, c in enumerate(cands) if c.viable] or list(range(len(cands)))
        pick = next(
            (j for j in viable if cands[j].seed_idx == self.seed_idx), min(viable, key=lambda j: cands[j].seed_idx)
        )
        p = np.zeros(len(cands))
        p[pick] = 1.0
        return p

    def observe(self, record: Record) -> None:
        pass

    def learn(self, record: Record, reward: float, t: float) -> None:
        pass


def parse_targets(text: str | None) -> list[str]:
    """Target names: the listed strategies (all by default) and ``fixed:K``, with the baselines always included."""
    names = list(STRATEGIES) if text is None else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name.startswith("fixed:"):
            if not name[6:].isdigit():
                raise ValueError(f"{name!r}: expected fixed:K with K a seed_idx")
        elif name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}, fixed:K")
    return list(dict.fromkeys([*(n for n in names if n not in BASELINES), *BASELINES]))


def make_targets(names: list[str], settings: Settings) -> tuple[dict, dict[str, str]]:
    """(target by name, reason by name for those that cannot be replayed from this log)."""
    targets: dict = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name.startswith("fixed:"):
            targets[name] = FixedSeedTarget(int(name[6:]))
            continue
        if name in NOT_REPLAYABLE:
            skipped[name] = NOT_REPLAYABLE[name]
            continue
        options = settings.model_dump()
        # A target is the strategy alone: no shadows of its own, no apprentice deciding in its place.
        options.update(default_strategy=name, blueprint_strategies={}, logging_only=False, apprentice=None)
        options["shadow"] = {"strategies": []}
        cls = STRATEGIES[name]
        if issubclass(cls, SamplingPolicy):
            # Every candidate's probability, by Monte Carlo (a quadrature decision gives the pick's only); the pick
            # is the same either way: the first of the draws.
            own = dict(options["strategies"].get(name) or {})
            if "propensity" in inspect.signature(cls).parameters:
                own["propensity"] = "monte_carlo"
            own["propensity_samples"] = max(own.get("propensity_samples", 0), TARGET_SAMPLES)
            options["strategies"] = {**options["strategies"], name: own}
        if name in BASELINES:
            options["min_samples"] = 0  # a baseline is what it says from the first decision: no burn-in
        try:
            targets[name] = StrategyTarget(name, Settings.model_validate(options))
        except ValidationError as exc:
            skipped[name] = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return targets, skipped


# -- the replay and the estimates ----------------------------------------------------------------------------------
SHADOW = "shadow:"  # the prefix of a live shadow's row


@dataclass
class Result:
    target: str
    ips: Estimate
    snips: Estimate
    dr: Estimate
    ess: float
    mean_weight: float  # 1 in expectation under full support; well below 1: the log rarely went where pi goes
    decisions: int
    off_support: int  # decisions where the target gives probability to seeds the log gave probability 0
    warning: str | None = None  # why the intervals may miss though the target is supported
    truth: float | None = None  # the true value, when the log is simulated and each seed's expected reward known
    agreement: float | None = None  # a shadow's: share of the decisions that carry it where it chose the live seed
    live_probability: float | None = None  # a shadow's mean probability of the live seed over those decisions
    shadowed: int | None = None  # how many decisions carry the shadow (with a reward or not)

    def to_dict(self) -> dict:
        shadow = {"agreement": self.agreement, "mean_probability_of_live": self.live_probability}
        return {
            **({"shadowed_decisions": self.shadowed, **shadow} if self.shadowed is not None else {}),
            "ips": self.ips.to_dict(),
            "snips": self.snips.to_dict(),
            "dr": self.dr.to_dict(),
            "effective_sample_size": self.ess,
            "low_effective_sample_size": self.ess < MIN_ESS,
            "mean_weight": self.mean_weight,
            "decisions": self.decisions,
            "off_support": self.off_support,
            "warning": self.warning,
            "true_value": self.truth,
        }


def evaluate(
    records: list[Record],
    targets: dict,
    *,
    reward_range: tuple[float, float] = (-1.0, 1.0),
    reward_wait_s: float = 3600.0,
    expected: dict[str, np.ndarray] | None = None,
) -> dict[str, Result]:
    """Replay every target over the log once and estimate its value; and the value of every live shadow the log
    recorded (``shadow:<name>``), from its recorded probabilities.

    ``reward_range``: the rewards' clip bounds (``reward.clip_min/max``); off the logged support DR's interval is
    widened by the worst the reward model can be wrong there. ``expected`` (request id -> expected reward per
    seed_idx, for simulated logs) adds each target's true value ``1/n sum_t pi_t . E[r_t]``."""
    model = RunningMeanModel()
    due: list[tuple[float, int]] = []  # (event time an outcome was learned, record index)
    rewards, q_logged, deterministic = [], [], []
    terms = {name: ([], [], [], []) for name in targets}  # w, sum_a pi q, probability off the support, pi . E[r]
    shadows: dict[str, _ShadowTerms] = {}
    for i, rec in enumerate(records):
        while due and due[0][0] <= rec.request_time:
            t, j = heapq.heappop(due)
            done = records[j]
            for target in targets.values():
                target.learn(done, done.reward, t)  # type: ignore[arg-type]
            if done.rewarded:  # the model learns outcomes only, not the default reward of an expired decision
                model.update(done.selected.blueprint_id, done.selected.seed_id, done.reward)  # type: ignore
        s = rec.selected
        truth = expected.get(s.request_id) if expected is not None and rec.rewarded else None
        q = model.predict(s.blueprint_id, [c.seed_id for c in s.scores]) if rec.rewarded else None
        for entry in s.shadow or ():
            shadows.setdefault(entry.strategy, _ShadowTerms()).add(rec, entry, q, truth)
        if rec.rewarded:
            mu = rec.logged
            rewards.append(rec.reward)
            q_logged.append(q[rec.chosen])
            deterministic.append(rec.deterministic)
            for name, target in targets.items():
                pi = target.distribution(rec)
                w, dm, off, true = terms[name]
                w.append(pi[rec.chosen] / mu[rec.chosen])
                dm.append(float(pi.dot(q)))
                off.append(float(pi[mu <= 0.0].sum()))
                if truth is not None:
                    true.append(float(pi.dot(truth[[c.seed_idx for c in s.scores]])))
        for target in targets.values():
            target.observe(rec)
        rec._request = None  # needed no more: a long log is not held twice
        if rec.rewarded:
            heapq.heappush(due, (rec.outcome_time if rec.outcome_time is not None else rec.request_time, i))
        elif rec.status == "expired" and rec.reward is not None:  # join.default_reward, learned at expiry
            heapq.heappush(due, (rec.request_time + reward_wait_s, i))
    r, ql, det = np.array(rewards, dtype=float), np.array(q_logged, dtype=float), np.array(deterministic, dtype=bool)
    # Model predictions are means of rewards, or 0: the model's error on a seed is at most the width of this range.
    lo = min(reward_range[0], 0.0, float(r.min()) if len(r) else 0.0)
    hi = max(reward_range[1], 0.0, float(r.max()) if len(r) else 0.0)
    out = {name: _result(name, r, ql, det, *term, lo, hi) for name, term in terms.items()}
    for name, sh in shadows.items():
        out[SHADOW + name] = sh.result(SHADOW + name, lo, hi)
    return out


def _result(name, r, ql, det, w, dm, off, true, lo: float, hi: float) -> Result:
    """A target's estimates from its per-decision terms (see ``evaluate``)."""
    w_, mass = np.array(w, dtype=float), np.array(off, dtype=float)
    outside = mass > NEGLIGIBLE
    n_off = int(outside.sum())
    dr = doubly_robust(w_, r, ql, np.array(dm, dtype=float))
    if n_off:
        why = _unidentified(int((outside & det).sum()), int((outside & ~det).sum()), len(r))
        ips_ = snips_ = unidentified(why)
        slack = float(mass.mean()) * (hi - lo)
        dr = Estimate(
            dr.value,
            dr.se,
            f"model-based on the {n_off} decisions off the logged support; its interval "
            f"adds the worst-case model error there (rewards in [{lo:g}, {hi:g}]): ±{slack:.3g}",
            slack,
        )
    else:
        ips_, snips_ = ips(w_, r), snips(w_, r)
    ess, mean_w = effective_sample_size(w_), float(w_.mean()) if len(w_) else 0.0
    return Result(
        name,
        ips_,
        snips_,
        dr,
        ess,
        mean_w,
        len(r),
        n_off,
        _weights_warning(w_, mass, ess),
        float(np.mean(true)) if true else None,
    )


class _ShadowTerms:
    """One live shadow's per-decision terms, from what each decision recorded of it (see the module docstring)."""

    def __init__(self) -> None:
        self.w: list[float] = []
        self.dm: list[float] = []
        self.off: list[float] = []
        self.true: list[float] = []
        self.r: list[float] = []
        self.ql: list[float] = []
        self.det: list[bool] = []
        self.seen = 0
        self.agree = 0
        self.p_live = 0.0

    def add(self, rec: Record, entry: ev.ShadowChoice, q: np.ndarray | None, truth: np.ndarray | None) -> None:
        s = rec.selected
        self.seen += 1
        self.agree += entry.seed_id == s.seed_id
        self.p_live += entry.propensity_of_live
        if q is None:
            return
        own = next(j for j, c in enumerate(s.scores) if c.seed_id == entry.seed_id)
        mu = rec.logged
        supported = ~(mu <= 0.0)  # a NaN (a quadrature decision's other candidates) is positive
        viable = np.array([c.viable for c in s.scores])
        if supported[viable].all():
            off = 0.0
        elif np.count_nonzero(supported) == 1:  # all of the logged probability on the logged seed
            off = 1.0 - entry.propensity_of_live
        else:  # its mass off the support is not recorded: estimated by where its own pick fell
            off = 0.0 if supported[own] else 1.0
        self.w.append(entry.propensity_of_live / mu[rec.chosen])
        self.dm.append(float(q[own]))
        self.off.append(off)
        self.r.append(rec.reward)  # type: ignore[arg-type]
        self.ql.append(float(q[rec.chosen]))
        self.det.append(rec.deterministic)
        if truth is not None:
            self.true.append(float(truth[s.scores[own].seed_idx]))

    def result(self, name: str, lo: float, hi: float) -> Result:
        r, ql, det = np.array(self.r, dtype=float), np.array(self.ql, dtype=float), np.array(self.det, dtype=bool)
        res = _result(name, r, ql, det, self.w, self.dm, self.off, self.true, lo, hi)
        res.agreement = self.agree / self.seen
        res.live_probability = self.p_live / self.seen
        res.shadowed = self.seen
        return res


def _weights_warning(w: np.ndarray, mass: np.ndarray, ess: float) -> str | None:
    """Why the weights cannot be trusted to have averaged out, if they cannot: few effective decisions, or a mean
    weight far from its expectation (the target's probability on supported seeds, 1 under full support) — the
    log has then rarely chosen what the target chooses, and the estimates rest on what it happened to choose."""
    problems = []
    if ess < MIN_ESS:
        problems.append(f"ESS {ess:.1f} < {MIN_ESS}")
    n = len(w)
    expect = 1.0 - float(mass.mean()) if n else 1.0
    se = float(w.std(ddof=1)) / np.sqrt(n) if n > 1 else np.inf
    if n and abs(float(w.mean()) - expect) > WEIGHT_Z * se:
        problems.append(
            f"mean weight {w.mean():.3f}, more than {WEIGHT_Z:g} standard errors ({se:.2g}) from its "
            f"expectation {expect:.3f}: the log rarely chose what this target chooses"
        )
    return "; ".join(problems) or None


def _unidentified(deterministic: int, zero: int, m: int) -> str:
    parts = []
    if deterministic:
        parts.append(f"logging policy deterministic on {deterministic} of {m} decisions")
    if zero:
        parts.append(
            f"logged probability 0, or a Monte-Carlo estimate of 0, for seeds the target may choose on "
            f"{zero} of {m} decisions"
        )
    return f"not identifiable ({'; '.join(parts)})"


# -- a simulated log -----------------------------------------------------------------------------------------------
async def write_simulated_log(
    path: str | Path, env, *, strategy: str, settings: Settings | None = None, batch: int = 1
) -> dict[str, np.ndarray]:
    """Run the worker (on a MemoryBus, with a real Store at ``path``) against a simulated environment, logging with
    ``strategy``: ``batch`` requests at a time, then their outcomes, stamped after the batch's last request so the
    event-time order is the order the worker learned in. Returns each request's expected reward per seed_idx."""
    from seedworker.broker.memory import MemoryBus
    from seedworker.engine.worker import Worker

    options = (settings or Settings()).model_dump()
    options.update(db=str(path), default_strategy=strategy, logging_only=False)
    options["reward"] = {**options["reward"], **env.reward_settings}
    if strategy in BASELINES:
        options["min_samples"] = 0
    s = Settings.model_validate(options)
    if (batch - 0.5) * env.step_seconds >= s.join.reward_wait_s:
        raise ValueError(f"batch {batch}: its first decision would expire (join.reward_wait_s) before its outcome")
    topics = s.kafka.topics
    worker = Worker(s, bus=MemoryBus())
    bus: MemoryBus = worker.bus  # type: ignore[assignment]
    expected: dict[str, np.ndarray] = {}
    seen: dict[int, int] = {}
    half_step = timedelta(seconds=env.step_seconds / 2)
    await worker.start()
    try:
        for start in range(0, env.steps, batch):
            steps = {}
            last = None
            for t in range(start, min(start + batch, env.steps)):
                step = env.step(t)
                steps[step.request.request_id] = step
                expected[step.request.request_id] = step.expected
                bus.produce(topics.requests, env.blueprint_id.encode(), ev.encode(step.request))
                last = step.time
            await _consume(worker, len(steps))
            for m in _new_messages(bus, topics.selections, seen):
                selected = ev.decode(m.value, ev.SEED_SELECTED)  # type: ignore[arg-type]
                outcome = ev.AdaptationOutcome(
                    decision_id=selected.decision_id,
                    blueprint_id=selected.blueprint_id,
                    seed_id=selected.seed_id,
                    occurred_at=last + half_step,
                    source="seedworker-evaluate",
                    **steps[selected.request_id].outcomes[selected.seed_idx].fields(),
                )  # type: ignore[attr-defined]
                bus.produce(topics.outcomes, env.blueprint_id.encode(), ev.encode(outcome))
            await _consume(worker, len(steps))
    finally:
        await worker.close()
    return expected


async def _consume(worker, n: int) -> None:
    while n > 0:
        messages = await worker.bus.poll(1, worker.settings.kafka.max_batch)
        n -= len(messages)
        await worker.process(messages)


def _new_messages(bus, topic: str, seen: dict[int, int]) -> list:
    out = []
    for p, part in enumerate(bus.topics.get(topic, [])):
        out.extend(part[seen.get(p, 0) :])
        seen[p] = len(part)
    return out


# -- the command ---------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from seedworker.tools.simulation.envs import SCENARIOS

    parser.description = __doc__.splitlines()[0].removeprefix("``seedworker evaluate``: ")
    parser.add_argument("--db", default="var/seedworker.sqlite", help="the worker's SQLite store (read-only)")
    parser.add_argument(
        "--strategies",
        metavar="LIST",
        help="comma-separated targets: strategy names and fixed:K (always seed_idx K); default: every "
        "strategy. The baselines seed0 and random are always evaluated",
    )
    parser.add_argument("--blueprint", metavar="ID", help="only this blueprint's decisions")
    parser.add_argument(
        "--config",
        help="the worker's TOML settings: the targets replay with its strategy settings, "
        "salt, min_samples, features, decay",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sim = parser.add_argument_group(
        "simulated log",
        "first write a new log to --db by running the worker on an "
        "in-memory bus against a simulated environment; the table adds the true values",
    )
    sim.add_argument("--simulate", choices=list(SCENARIOS), metavar="SCENARIO", help=", ".join(SCENARIOS))
    sim.add_argument(
        "--logging", default="epsilon-greedy", metavar="STRATEGY", help="the logging strategy (default: epsilon-greedy)"
    )
    sim.add_argument("--steps", type=int, default=2000, help="requests (default: 2000)")
    sim.add_argument("--seeds", type=int, default=8, metavar="K", help="candidate seeds (default: 8)")
    sim.add_argument("--seed", type=int, default=0, help="random seed of the environment (default: 0)")


def run(args: argparse.Namespace) -> int:
    prog = "seedworker evaluate"
    settings = load_settings(args.config)
    try:
        names = parse_targets(args.strategies)
    except ValueError as exc:
        print(f"{prog}: error: --strategies: {exc}", file=sys.stderr)
        return 2
    expected = None
    if args.simulate:
        from seedworker.tools.simulation.envs import make_env

        if Path(args.db).exists():
            print(f"{prog}: error: --simulate writes a new log, and {args.db} exists", file=sys.stderr)
            return 2
        if args.logging not in STRATEGIES or args.steps < 1 or not 2 <= args.seeds <= ev.MAX_CANDIDATES:
            print(
                f"{prog}: error: need a known --logging strategy, --steps >= 1 and 2 <= --seeds <= {ev.MAX_CANDIDATES}",
                file=sys.stderr,
            )
            return 2
        try:
            env = make_env(args.simulate, n_seeds=args.seeds, steps=args.steps, seed=args.seed)
            expected = asyncio.run(write_simulated_log(args.db, env, strategy=args.logging, settings=settings))
        except ValueError as exc:  # a scenario or logging strategy these settings cannot run
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    try:
        records = read_log(args.db, args.blueprint)
    except StoreError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    if not records:
        print(
            f"{prog}: no decisions in {args.db}" + (f" for blueprint {args.blueprint}" if args.blueprint else ""),
            file=sys.stderr,
        )
        return 1
    targets, skipped = make_targets(names, settings)
    results = evaluate(
        records,
        targets,
        reward_range=(settings.reward.clip_min, settings.reward.clip_max),
        reward_wait_s=settings.join.reward_wait_s,
        expected=expected,
    )
    summary = summarize(records)
    if args.json:
        print(
            json.dumps(
                {
                    "db": str(args.db),
                    "blueprint": args.blueprint,
                    **summary,
                    "targets": {n: r.to_dict() for n, r in results.items() if not n.startswith(SHADOW)},
                    "shadows": {
                        n.removeprefix(SHADOW): r.to_dict() for n, r in results.items() if n.startswith(SHADOW)
                    },
                    "not_evaluated": skipped,
                },
                indent=2,
            )
        )
    else:
        print_report(str(args.db), summary, results, skipped, sys.stdout)
    return 0


def summarize(records: list[Record]) -> dict:
    statuses: dict[str, int] = {}
    logged_by: dict[str, int] = {}
    for rec in records:
        key = rec.status if not (rec.status == "late" and rec.reward is not None) else "late (learned)"
        statuses[key] = statuses.get(key, 0) + 1
        logged_by[rec.selected.strategy] = logged_by.get(rec.selected.strategy, 0) + 1
    rewarded = [rec for rec in records if rec.rewarded]
    return {
        "decisions": len(records),
        "with_reward": len(rewarded),
        "statuses": statuses,
        "logged_by": logged_by,
        "blueprints": sorted({rec.selected.blueprint_id for rec in records}),
        "deterministic": sum(rec.deterministic for rec in rewarded),
        "propensity_methods": dict(Counter(rec.selected.propensity_method for rec in rewarded)),
        "unreadable_distribution": sum(not rec.readable for rec in rewarded),
        "mean_logged_reward": float(np.mean([rec.reward for rec in rewarded])) if rewarded else None,
        "reward_sd": float(np.std([rec.reward for rec in rewarded])) if rewarded else None,
        "reward_model": "per (blueprint, seed) mean of the rewards observed before each decision",
    }


def print_report(db: str, s: dict, results: dict[str, Result], skipped: dict[str, str], out) -> None:
    m = s["with_reward"]
    print(
        f"off-policy evaluation of {db}: {s['decisions']} decisions ({', '.join(s['blueprints'])}), {m} with a "
        f"reward; statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(s["statuses"].items())),
        file=out,
    )
    mean = "-" if s["mean_logged_reward"] is None else f"{s['mean_logged_reward']:.4g}"
    methods = ", ".join(f"{k} {v}" for k, v in sorted(s["propensity_methods"].items()))
    print(
        "logged by " + ", ".join(f"{k} {v}" for k, v in sorted(s["logged_by"].items())) + f"; mean logged reward "
        f"{mean}; propensities: {methods}; deterministic (exactly 1) on {s['deterministic']} of {m}"
        + (
            f"; candidates' probabilities unreadable on {s['unreadable_distribution']}"
            if s["unreadable_distribution"]
            else ""
        ),
        file=out,
    )
    print(f"mean reward per decision with 95% intervals; DR reward model: {s['reward_model']}", file=out)
    print(
        "* and !: see the notes below the row (! the weights have not averaged out: the interval can miss); ESS: "
        "effective sample size (sum w)^2 / sum w^2; mean w: the mean importance weight; shadow:NAME: a strategy "
        "decided in the shadow of the live one, estimated from the probabilities it recorded\n",
        file=out,
    )
    scale = max([abs(s["mean_logged_reward"] or 0.0), s["reward_sd"] or 0.0, 1e-12])
    digits = min(8, max(0, 3 - int(np.floor(np.log10(scale)))))

    def cell(e: Estimate, low: bool) -> str:
        ci = e.interval
        if ci is None:
            return "—"
        return f"{e.value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" + "*" * bool(e.note) + "!" * low

    rows = []
    for name, r in results.items():
        low = r.warning is not None
        rows.append(
            (
                name,
                "" if r.truth is None else f"{r.truth:.{digits}f}",
                cell(r.ips, low),
                cell(r.snips, low),
                cell(r.dr, low),
                f"{r.ess:.1f}",
                f"{r.mean_weight:.3f}",
                f"{r.off_support} of {r.decisions}",
            )
        )
    heads = ("target", "true", "IPS", "SNIPS", "DR", "ESS", "mean w", "off support")
    show = [j for j in range(len(heads)) if j != 1 or any(row[1] for row in rows)]
    widths = [max(len(heads[j]), *(len(row[j]) for row in rows)) for j in range(len(heads))]
    right = {1, 5, 6}

    def line(values) -> str:
        return "  ".join(values[j].rjust(widths[j]) if j in right else values[j].ljust(widths[j]) for j in show)

    print(line(heads).rstrip(), file=out)
    for row, r in zip(rows, results.values()):
        print(line(row).rstrip(), file=out)
        if r.ips.value is None:
            print(f"    IPS, SNIPS: {r.ips.note}", file=out)
        if r.dr.note:
            print(f"    DR*: {r.dr.note}", file=out)
        if r.warning:
            print(f"    !: {r.warning}", file=out)
        if r.shadowed is not None:
            print(
                f"    live shadow: chose the live seed on {r.agreement:.1%} of the {r.shadowed} decisions that "
                f"carry it (mean probability of the live seed {r.live_probability:.3f})",
                file=out,
            )
    for name, why in skipped.items():
        print(f"{name.ljust(widths[0])}  not evaluated: {why}", file=out)
