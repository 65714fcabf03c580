"""Off-policy estimators of a target policy's mean reward per decision, from logged decisions and rewards.

Per logged decision ``t`` with reward ``r_t``, logged propensity ``mu_t(a_t)`` and target probability ``pi_t(a_t)``,
the importance weight is ``w_t = pi_t(a_t) / mu_t(a_t)``; ``q_t(a)`` is a reward model's prediction for candidate
``a`` from data before ``t``.

- IPS:   mean of ``w_t r_t``.
- SNIPS: ``sum w_t r_t / sum w_t`` (self-normalized: bounded by the rewards, biased by O(1/n), lower variance).
- DR:    mean of ``sum_a pi_t(a) q_t(a) + w_t (r_t - q_t(a_t))``: the model's prediction of the target's reward,
  corrected by the weighted error on the logged action. Unbiased wherever the propensities are right and the
  target's seeds are supported, whatever the model's error; its variance shrinks as the model improves.

Intervals are 95%, normal approximations: IPS and DR from the sample variance of the per-decision terms; SNIPS by
the delta method, ``se^2 = sum w_t^2 (r_t - V)^2 / (sum w_t)^2``. Under adaptive logging the terms are martingale
differences around means that change with the history; their sample variance also counts the spread of those means,
so it over- rather than under-states the variance (martingale CLT). With heavy weights (small propensities) the
normal approximation is poor: the effective sample size ``(sum w)^2 / sum w^2`` says how many decisions the
estimate is really worth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True, slots=True)
class Estimate:
    """A value with its standard error and 95% interval; ``value`` is None when it cannot be justified, and
    ``note`` then says why (or, with a value, how it is to be read). ``slack`` widens the interval on both sides by
    a bound on a bias the standard error does not measure."""

    value: float | None
    se: float | None = None
    note: str | None = None
    slack: float = 0.0

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.value is None or self.se is None:
            return None
        half = Z95 * self.se + self.slack
        return self.value - half, self.value + half

    def covers(self, truth: float) -> bool:
        ci = self.interval
        return ci is not None and ci[0] <= truth <= ci[1]

    def to_dict(self) -> dict:
        ci = self.interval
        return {
            "value": self.value,
            "se": self.se,
            "ci95": None if ci is None else list(ci),
            "note": self.note,
            "bias_bound": self.slack,
        }


def unidentified(note: str) -> Estimate:
    return Estimate(None, None, note)


def _mean_se(terms: np.ndarray) -> Estimate:
    n = len(terms)
    if n == 0:
        return unidentified("no decision with a reward")
    se = float(terms.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return Estimate(float(terms.mean()), se)


def ips(w: np.ndarray, r: np.ndarray) -> Estimate:
    return _mean_se(w * r)


def snips(w: np.ndarray, r: np.ndarray) -> Estimate:
    total = float(w.sum())
    if len(w) == 0:
        return unidentified("no decision with a reward")
    if total <= 0.0:
        return unidentified("the target gives every logged seed probability 0")
    value = float(w.dot(r)) / total
    se = math.sqrt(float(np.square(w * (r - value)).sum())) / total
    return Estimate(value, se)


def doubly_robust(w: np.ndarray, r: np.ndarray, q_logged: np.ndarray, q_target: np.ndarray) -> Estimate:
    """``q_logged``: the model's prediction for the logged seed; ``q_target``: ``sum_a pi_t(a) q_t(a)``."""
    return _mean_se(q_target + w * (r - q_logged))


def effective_sample_size(w: np.ndarray) -> float:
    sq = float(np.square(w).sum())
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


class RunningMeanModel:
    """The DR reward model: per (blueprint, seed), the mean of the rewards observed so far; a seed without one gets
    its blueprint's mean, a blueprint without one 0.

    It is fitted on past data only — ``predict`` before decision ``t`` has seen only rewards that were observed
    before ``t`` — so its prediction is a function of the history and DR stays unbiased under adaptive logging.
    (Cross-fitting, the alternative, assumes exchangeable decisions, which an adaptive log is not.)"""

    def __init__(self) -> None:
        self._seeds: dict[tuple[str, str], list[float]] = {}
        self._blueprints: dict[str, list[float]] = {}

    def update(self, blueprint_id: str, seed_id: str, reward: float) -> None:
        for stats in (
            self._seeds.setdefault((blueprint_id, seed_id), [0, 0.0]),
            self._blueprints.setdefault(blueprint_id, [0, 0.0]),
        ):
            stats[0] += 1
            stats[1] += reward

    def predict(self, blueprint_id: str, seed_ids: list[str]) -> np.ndarray:
        n, s = self._blueprints.get(blueprint_id, (0, 0.0))
        fallback = s / n if n else 0.0
        out = np.empty(len(seed_ids))
        for j, seed in enumerate(seed_ids):
            n, s = self._seeds.get((blueprint_id, seed), (0, 0.0))
            out[j] = s / n if n else fallback
        return out
