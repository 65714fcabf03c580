"""Live shadow evaluation and apprentice mode: other strategies decided on the live state, never acted on.

**Shadows.** For every decision the selector also asks each strategy of ``shadow.strategies`` what it would choose,
on the same state (the blueprint's arm table, context and viable candidates), and records in the ``seed.selected``
event its pick, the pick's probability and its probability of the seed the live strategy chose
(``events.ShadowChoice``). That last number is what off-policy estimates need: with the live propensity ``mu(a)``
of the logged seed ``a``, ``pi(a) / mu(a)`` is the shadow's importance weight on live traffic, so
``seedworker evaluate`` and ``seedworker inspect`` estimate its value without replaying it. A shadow is decided as
the live selector would decide with that strategy: a strategy that learns first tries untried viable seeds
uniformly (``min_samples``); the baselines (``seed0``, ``random``, ``round-robin``) are what they say from the first
decision, as in ``seedworker evaluate``. Each shadow draws from its own generator, keyed by (salt, request id,
``shadow``, strategy name), so the live decision's random stream is the same with shadows or without.

Every strategy can shadow: their state is the blueprint's arm table, which the live decisions and outcomes update
(a strategy that reads the change detector's segments turns the detector on, as naming it anywhere does). What a
shadow shows is its choice *given the live history* — not what it would have earned deployed, where its own
choices would have made another history.

**Apprentice mode** (``[apprentice]``, after Azure Personalizer's). A blueprint whose strategy is the learner follows
the baseline with probability ``1 - epsilon`` and picks uniformly among the viable seeds with ``epsilon``, so every
seed keeps a propensity of at least ``epsilon / K`` and the learner stays evaluable. Its decisions are logged with
strategy ``apprentice`` and carry the learner's and the baseline's shadow choices. On every outcome of such a
decision the blueprint's apprentice state folds in the two importance weights and the reward (``Apprentice.fold``,
called from the selector's one state transition for rewards, so a replay folds the same numbers in the same order);
from those sums it keeps the self-normalized (SNIPS) estimates of both values and a delta-method standard error of
their difference on the same decisions. Once at least ``min_decisions`` rewarded decisions are folded and
``V_learner - V_baseline - z * se >= margin`` (z the one-sided normal quantile of ``confidence``), the learner takes
over: from then on the blueprint's decisions are the learner's, logged under its own name. The check is repeated
after every outcome, so ``confidence`` is the level of each check, not of the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np

from seedworker.contract.events import SeedSelected, ShadowChoice
from seedworker.core.policies import Draw, Policy, SamplingPolicy, Situation

APPRENTICE = "apprentice"  # the strategy name of the decisions the apprentice made


def shadow_draw(salt: str, request_id: str, strategy: str) -> Draw:
    """A shadow's generator: the live one's key with the strategy appended, so no shadow consumes the live stream."""
    return Draw(salt, f"{request_id}\x00shadow\x00{strategy}")


class Candidate:
    """One strategy's decision on the live state: the position of its pick among the viable candidates, the pick's
    probability, and the probability of any other position on demand (``probability``)."""

    __slots__ = ("strategy", "index", "propensity", "method", "_probs", "_policy", "_situation")

    def __init__(self, strategy, index, propensity, method, probs, policy=None, situation=None):
        self.strategy = strategy
        self.index = index
        self.propensity = propensity
        self.method = method
        self._probs = probs  # the whole distribution, where it came with the decision
        self._policy = policy
        self._situation = situation

    @property
    def probabilities(self) -> np.ndarray | None:
        """The whole distribution over the viable candidates, when the decision gave it (else None)."""
        return self._probs

    def probability(self, j: int) -> tuple[float, str]:
        """(this strategy's probability of position ``j``, how it was obtained)."""
        if self._probs is not None:
            return float(self._probs[j]), self.method
        if j == self.index:
            return self.propensity, self.method
        # A quadrature decision gives its pick's probability only: integrate j's too, or count wins in draws from
        # the shadow's own generator where the integral declines.
        policy, s = self._policy, self._situation
        params = policy._distribution(s)[0]  # the same state: the same posterior as the pick's
        p = policy._probability(params, j)
        if p is not None:
            return p, "quadrature"
        n = policy.propensity_samples
        wins = int(np.count_nonzero(policy._draw(params, s.draw.rng, n).argmax(axis=1) == j))
        return wins / (1 + n), "monte_carlo"


def decide_as(name: str, policy: Policy, s: Situation, min_samples: int) -> Candidate:
    """What the live selector would decide with strategy ``name`` on ``s``: its burn-in (a uniform pick among the
    untried viable seeds, for a strategy that learns), else the policy's choice. The burn-in draws as the
    selector's does, so with the live generator this is the live decision."""
    k = len(s.rows)
    if policy.learns and min_samples > 0:
        untried = np.flatnonzero(s.arms.selections[s.rows] < min_samples)
        if len(untried):
            j = int(untried[s.draw.rng.integers(len(untried))]) if len(untried) > 1 else int(untried[0])
            probs = np.zeros(k)
            probs[untried] = 1.0 / len(untried)
            return Candidate(name, j, 1.0 / len(untried), "exact", probs)
    c = policy.choose(s)
    probs = c.probabilities
    if probs is None and c.method == "exact":
        probs = np.zeros(k)
        if c.propensity >= 1.0:
            probs[c.index] = 1.0
        else:  # an index policy's tie: the pick's share among the candidates with its score
            scores = c.scores
            tied = scores == scores[c.index]
            probs[tied] = 1.0 / np.count_nonzero(tied)
    if probs is None and not isinstance(policy, SamplingPolicy):
        raise ValueError(f"strategy {name!r}: its decision says neither its distribution nor how to compute it")
    return Candidate(name, c.index, c.propensity, c.method, probs, policy, s)


class Live:
    """The apprentice's own decision (while it follows the baseline): what the selector's event needs."""

    __slots__ = ("index", "propensity", "method", "explored", "reason", "probs")

    def __init__(self, index, propensity, method, explored, reason, probs):
        self.index = index  # among the viable candidates
        self.propensity = propensity
        self.method = method
        self.explored = explored
        self.reason = reason
        self.probs = probs  # per viable candidate, or None where the baseline's distribution is not known

    def args(self, vidx: np.ndarray | None, k: int, scores: list) -> tuple:
        """The selector's event arguments from the pick to the probabilities: the pick's request position, the
        strategy, reason, propensity, method, explored, the scores and the probability per request position (0 for
        a seed not viable; None where the baseline's distribution is not known)."""
        if self.probs is not None:
            p: list[float | None] = self.probs.tolist()
        else:
            p = [None] * (k if vidx is None else len(vidx))
            p[self.index] = self.propensity
        pick = self.index if vidx is None else int(vidx[self.index])
        if vidx is not None:
            out: list[float | None] = [0.0] * k
            for v, q in zip(vidx.tolist(), p):
                out[v] = q
            p = out
        return pick, APPRENTICE, self.reason, self.propensity, self.method, self.explored, scores, p


class Round:
    """The shadow decisions of one request (and the apprentice's live one, if it decides); ``note`` is added to the
    live decision's reason (after a takeover it says that the learner decides as the apprentice's successor)."""

    __slots__ = ("candidates", "vidx", "live", "note")

    def __init__(self, candidates: list[Candidate], vidx: np.ndarray | None, live: Live | None, note: str = ""):
        self.candidates = candidates
        self.vidx = vidx
        self.live = live
        self.note = note

    def entries(self, pick: int, seeds) -> list[ShadowChoice]:
        """The event's ``shadow`` field, given the request position of the live pick."""
        vidx = self.vidx
        j = pick if vidx is None else int(np.flatnonzero(vidx == pick)[0])
        out = []
        for c in self.candidates:
            own = c.index if vidx is None else int(vidx[c.index])
            p, method = c.probability(j)
            fields = {
                "strategy": c.strategy,
                "seed_id": seeds[own].seed_id,
                "propensity": float(min(1.0, max(c.propensity, 1e-12))),
                "propensity_of_live": float(min(1.0, max(p, 0.0))),
                "propensity_method": "monte_carlo" if "monte_carlo" in (c.method, method) else method,
            }
            out.append(_construct(fields))
        return out


_SHADOW_FIELDS = {"strategy", "seed_id", "propensity", "propensity_of_live", "propensity_method"}


def _construct(fields: dict[str, Any]) -> ShadowChoice:
    """A ShadowChoice from computed fields, without validation: assembled directly, as the selector assembles its
    events, while the model is plain (its fields exactly these, no hooks, no private attributes); model_construct
    costs about 10 µs per entry otherwise."""
    if not _PLAIN:
        return ShadowChoice.model_construct(**fields)
    m = object.__new__(ShadowChoice)
    object.__setattr__(m, "__dict__", fields)
    object.__setattr__(m, "__pydantic_fields_set__", set(_SHADOW_FIELDS))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


_PLAIN = (
    ShadowChoice.__pydantic_post_init__ is None
    and not ShadowChoice.__private_attributes__
    and set(ShadowChoice.__pydantic_fields__) == _SHADOW_FIELDS
)


class Shadows:
    """The selector's shadow strategies and apprentice, built once from the settings."""

    def __init__(self, settings, policy: Callable[[str], Policy]):
        self.strategies = tuple(settings.shadow.strategies)
        self.apprentice = None if settings.apprentice is None else Apprentice(settings.apprentice)
        self.on = bool(self.strategies) or self.apprentice is not None
        self.min_samples = settings.min_samples
        self.salt = settings.salt
        self.policy = policy

    def decide(self, bp, request_id: str, vrows: np.ndarray, vidx, x, strategy: str, draw: Draw) -> Round:
        """The shadow decisions on the live state; the apprentice's own decision too when it decides for this
        blueprint (its strategy is the learner, which has not taken over yet). ``draw`` is the live generator."""
        ap = self.apprentice
        names = self.strategies
        learning = None
        if ap is not None and strategy == ap.learner:
            learning = ap.state(bp)
            names = (*names, ap.baseline) if learning.get("took_over") else (*names, ap.learner, ap.baseline)
        chosen: dict[str, Candidate] = {}
        for name in dict.fromkeys(names):
            s = Situation(bp.arms, vrows, x, bp.decisions, shadow_draw(self.salt, request_id, name))
            chosen[name] = decide_as(name, self.policy(name), s, self.min_samples)
        live, note = None, ""
        if learning is not None:
            if learning.get("took_over"):
                note = ap.describe_takeover(learning["took_over"])
            else:
                live = ap.choose(chosen[ap.baseline], len(vrows), draw, learning)
        return Round(list(chosen.values()), vidx, live, note)

    def fold(self, bp, selected: SeedSelected, reward: float, forget: bool) -> None:
        """A reward (or a default reward taken out again) of a decision, for the apprentice's estimates."""
        if self.apprentice is not None and selected.strategy == APPRENTICE and selected.shadow:
            self.apprentice.fold(bp, selected, reward, forget)


# The apprentice's running sums, in this order, over its rewarded decisions t with reward r and importance weights
# l = pi_learner(a_t) / mu(a_t), b = pi_baseline(a_t) / mu(a_t).
_SUMS = ("n", "l", "lr", "b", "br", "ll", "llr", "llrr", "bb", "bbr", "bbrr", "lb", "lbr", "lbrr")


class Apprentice:
    def __init__(self, settings):
        self.learner = settings.learner
        self.baseline = settings.baseline
        self.epsilon = settings.epsilon
        self.margin = settings.margin
        self.min_decisions = settings.min_decisions
        self.z = NormalDist().inv_cdf(settings.confidence)

    def state(self, bp) -> dict[str, Any]:
        """The blueprint's apprenticeship (a plain dict in its state); a new one when the roles changed."""
        st = bp.apprentice
        if st is None or st["learner"] != self.learner or st["baseline"] != self.baseline:
            return {"learner": self.learner, "baseline": self.baseline, "sums": [0.0] * len(_SUMS), "took_over": None}
        return st

    def choose(self, base: Candidate, k: int, draw: Draw, state: dict) -> Live:
        """Follow the baseline with probability 1 - epsilon, else a uniform pick among the k viable candidates."""
        eps = self.epsilon
        u = draw.rng.random()
        explored = u < eps
        j = int(draw.rng.integers(k)) if explored else base.index
        b, method = base.probability(j)
        probs = base.probabilities
        if probs is not None:
            probs = (1.0 - eps) * probs + eps / k
        progress = self.describe(state)
        if explored:
            reason = f"apprentice of {self.learner}: uniform exploration (ε={eps:g}) among {k} viable seeds; {progress}"
        else:
            reason = f"apprentice of {self.learner}: following the baseline {self.baseline}; {progress}"
        return Live(j, (1.0 - eps) * b + eps / k, method, explored, reason, probs)

    def fold(self, bp, selected: SeedSelected, reward: float, forget: bool) -> None:
        st = self.state(bp)
        if st["took_over"]:
            return  # decided: what comes in after the learner took over changes nothing
        roles = {c.strategy: c.propensity_of_live for c in selected.shadow or ()}
        if self.learner not in roles or self.baseline not in roles:
            return
        mu = selected.propensity
        lw, bw, r = roles[self.learner] / mu, roles[self.baseline] / mu, reward
        sign = -1.0 if forget else 1.0
        terms = (1.0, lw, lw * r, bw, bw * r, lw * lw, lw * lw * r, lw * lw * r * r)
        terms += (bw * bw, bw * bw * r, bw * bw * r * r, lw * bw, lw * bw * r, lw * bw * r * r)
        st["sums"] = [s + sign * t for s, t in zip(st["sums"], terms)]
        bp.apprentice = st
        if not forget:
            est = self.estimates(st)
            if est["n"] >= self.min_decisions and est["lower"] is not None and est["lower"] >= self.margin:
                st["took_over"] = {"decisions": bp.decisions, **est}

    def estimates(self, st: dict) -> dict[str, Any]:
        """SNIPS of the learner and the baseline on the apprentice's decisions, and a lower bound of their
        difference: ``se^2 = sum_t phi_t^2`` with ``phi_t = l_t (r_t - V_l) / sum l - b_t (r_t - V_b) / sum b``
        (the delta method; the same decisions carry both weights, hence the cross terms)."""
        v = dict(zip(_SUMS, st["sums"]))
        n = round(v["n"])
        if v["l"] <= 0.0 or v["b"] <= 0.0:
            return {"n": n, "learner": None, "baseline": None, "difference": None, "se": None, "lower": None}
        vl, vb = v["lr"] / v["l"], v["br"] / v["b"]
        ll = v["llrr"] - 2 * vl * v["llr"] + vl * vl * v["ll"]
        bb = v["bbrr"] - 2 * vb * v["bbr"] + vb * vb * v["bb"]
        lb = v["lbrr"] - (vl + vb) * v["lbr"] + vl * vb * v["lb"]
        var = max(ll / v["l"] ** 2 + bb / v["b"] ** 2 - 2 * lb / (v["l"] * v["b"]), 0.0)
        se = math.sqrt(var) if n > 1 else math.inf
        d = vl - vb
        return {"n": n, "learner": vl, "baseline": vb, "difference": d, "se": se, "lower": d - self.z * se}

    def describe_takeover(self, took: dict) -> str:
        return (
            f" (apprentice mode: {self.learner} took over from {self.baseline} at decision {took['decisions']}, "
            f"SNIPS {took['learner']:.4g} vs {took['baseline']:.4g}, lower bound of the difference {took['lower']:.3g})"
        )

    def describe(self, st: dict) -> str:
        est = self.estimates(st)
        if est["learner"] is None:
            return f"no estimate yet ({est['n']} rewarded decisions, {self.min_decisions} needed)"
        return (
            f"SNIPS learner {est['learner']:.4g} vs baseline {est['baseline']:.4g} on {est['n']} rewarded decisions "
            f"({self.min_decisions} needed), lower bound of the difference {est['lower']:.3g} (takes over at "
            f"{self.margin:g})"
        )
