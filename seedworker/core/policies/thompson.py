"""Thompson sampling: Gaussian posterior for real-valued rewards, Beta for success-only rewards.

Samples are drawn at selection time from the current posterior, never cached at update time.
"""

from __future__ import annotations

import math
import typing

import numpy as np

from seedworker.contract.events import SeedSelected
from seedworker.core.policies.base import SMALL, SamplingPolicy, Situation
from seedworker.core.policies.beta_propensity import beta_max_probability
from seedworker.core.policies.propensity import PROPENSITY_METHODS, gaussian_max_probability

LOGGED_METHODS = typing.get_args(SeedSelected.model_fields["propensity_method"].annotation)


def check_propensity(method: str) -> str:
    if method not in PROPENSITY_METHODS:
        raise ValueError(f"propensity must be one of {', '.join(PROPENSITY_METHODS)}, got {method!r}")
    if method not in LOGGED_METHODS:
        # A seed.selected event must validate for its consumers: no method the event contract does not know.
        raise ValueError(
            f"propensity {method!r} is not a propensity_method of the seed.selected contract "
            f"(events.SeedSelected accepts {', '.join(LOGGED_METHODS)})"
        )
    return method


class GaussianSampling(SamplingPolicy):
    """A sampling policy whose candidate scores are independent normals ``N(loc_k, sd_k^2)``.

    ``propensity="quadrature"`` (the default) computes P(the pick has the highest draw) as a one-dimensional
    integral on a grid (see ``propensity``), accurate to about 1e-6 and cheaper than sampling; a decision it cannot
    resolve on its grid cheaply falls back to Monte Carlo and says so (``method`` "monte_carlo").
    ``propensity="monte_carlo"`` estimates it from ``propensity_samples`` further draws (standard error up to 0.035
    for 200). The pick is the same either way.
    """

    propensity: str = "quadrature"
    _check_propensity = staticmethod(check_propensity)

    def _posterior(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loc, sd, greedy values) of the candidates."""
        raise NotImplementedError

    def _distribution(self, s: Situation) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        loc, sd, values = self._posterior(s)
        return (loc, sd), values

    def _draw(self, params: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, size: int | None) -> np.ndarray:
        loc, sd = params
        if size is not None:
            if isinstance(loc, list):
                loc, sd = np.array(loc), np.array(sd)
            return loc + sd * rng.standard_normal((size, len(loc)))
        z = rng.standard_normal(len(loc))
        if isinstance(loc, list):  # the posterior on Python floats (GaussianThompson, few candidates): z sd + loc
            return [v * d + m for v, d, m in zip(z.tolist(), sd, loc)]
        z *= sd
        z += loc
        return z

    def _probability(self, params: tuple[np.ndarray, np.ndarray], i: int) -> float | None:
        return gaussian_max_probability(params[0], params[1], i)


class GaussianThompson(GaussianSampling):
    """Posterior of each seed's mean reward: ``N(m, sigma^2 / (n + n0))``.

    ``m`` shrinks the empirical mean toward the blueprint's pooled mean with ``prior_count`` pseudo-outcomes;
    ``sigma`` is the arm's standard deviation blended with the pooled one by the same weights. ``scale`` widens or
    narrows the posterior (1 is Bayesian).
    """

    name = "thompson"

    def __init__(
        self,
        *,
        prior_count: float = 1.0,
        scale: float = 1.0,
        discounted: bool | None = None,
        propensity_samples: int = 200,
        propensity: str = "quadrature",
    ):
        self.prior_count = prior_count
        self.scale = scale
        self.discounted = discounted
        self.propensity_samples = propensity_samples
        self.propensity = self._check_propensity(propensity)

    def _posterior(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, mean, var = self._moments(s)
        return self._gaussian_posterior(n, mean, var, self._scale(s))

    def _moments(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return s.arms.moments(s.rows, True)

    def _scale(self, s: Situation) -> float:
        return s.scale

    def _gaussian_posterior(
        self, n: np.ndarray, mean: np.ndarray, var: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_sum = float(np.add.reduce(n))
        pooled_mean = float(mean.dot(n)) / n_sum if n_sum > 0 else 0.0
        n0 = self.prior_count
        if len(n) <= SMALL:
            # The element-wise part on Python floats (see base.SMALL), the same operations in the same order; the
            # two reductions above stay numpy's (their summation order is numpy's own). Lists, unless a value is
            # not finite (then the arrays, whose argmax and propensity handle it).
            prior_var, sqrt, c = n0 * scale**2, math.sqrt, self.scale
            loc, sd = [], []
            for k, m, v in zip(n.tolist(), mean.tolist(), var.tolist()):
                kk = k + n0
                loc.append((k * m + n0 * pooled_mean) / kk)
                d = sqrt((v * k + prior_var) / (kk * kk))
                sd.append(d if c == 1.0 else d * c)
            if math.isfinite(math.fsum(loc) + math.fsum(sd)):
                return loc, sd, mean
        nn = n + n0
        post_mean = n * mean
        post_mean += n0 * pooled_mean
        post_mean /= nn
        var *= n
        var += n0 * scale**2
        nn *= nn
        var /= nn
        sd = np.sqrt(var, out=var)
        if self.scale != 1.0:
            sd *= self.scale
        return post_mean, sd, mean

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"discounted": True, "propensity_samples": 50}


class ChangeThompson(GaussianThompson):
    """Gaussian Thompson sampling on each seed's outcomes since the blueprint's last detected change.

    The arm statistics run a change detector on every seed's reward stream (``ArmTable._observe``: a Gaussian
    generalized likelihood ratio test, as in GLR-klUCB of Besson, Kaufmann, Maillard & Seznec, 2020); a detection
    restarts every seed's segment. The posterior is ``thompson``'s, computed from the segment: a stationary stream
    gets plain Thompson sampling, a change point a fresh start once it is detected. Its only setting is shared
    with ``thompson`` and unit-free, so it needs no tuning to the reward scale or to how fast seeds drift.
    """

    name = "glr-thompson"
    detects = True

    def __init__(
        self,
        *,
        prior_count: float = 1.0,
        scale: float = 1.0,
        propensity_samples: int = 200,
        propensity: str = "quadrature",
    ):
        super().__init__(
            prior_count=prior_count, scale=scale, propensity_samples=propensity_samples, propensity=propensity
        )
        del self.discounted  # decay does not apply (the detector forgets instead): not a setting of this strategy

    def _moments(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return s.arms.segment_moments(s.rows)

    def _scale(self, s: Situation) -> float:
        return s.arms.segment_scale()

    def greedy(self, s: Situation) -> np.ndarray:
        return s.arms.segment_moments(s.rows)[1]

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"propensity": "monte_carlo", "propensity_samples": 50}


class BetaThompson(SamplingPolicy):
    """Beta-Bernoulli Thompson sampling on the outcomes' ``success`` flag: ``Beta(a + successes, b + failures)``.

    ``propensity="quadrature"`` (the default) integrates P(the pick has the highest draw) in the logit of the
    draws (see ``beta_propensity``), accurate to about 1e-7; a decision too costly for it falls back to Monte
    Carlo and says so. ``propensity="monte_carlo"`` estimates it from ``propensity_samples`` further Beta draws.
    The pick is the same either way.
    """

    name = "beta-thompson"
    propensity: str = "quadrature"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        discounted: bool | None = None,
        propensity_samples: int = 200,
        propensity: str = "quadrature",
    ):
        self.alpha = alpha
        self.beta = beta
        self.discounted = discounted
        self.propensity_samples = propensity_samples
        self.propensity = check_propensity(propensity)

    def greedy(self, s: Situation) -> np.ndarray:
        succ, fail = s.arms.successes(s.rows, True)
        return (self.alpha + succ) / (self.alpha + self.beta + succ + fail)

    def _distribution(self, s: Situation) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        succ, fail = s.arms.successes(s.rows, True)
        a, b = self.alpha + succ, self.beta + fail
        return (a, b), a / (a + b)

    def _draw(self, params: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, size: int | None) -> np.ndarray:
        a, b = params
        return rng.beta(a, b) if size is None else rng.beta(a, b, size=(size, len(a)))

    def _probability(self, params: tuple[np.ndarray, np.ndarray], i: int) -> float | None:
        return beta_max_probability(params[0], params[1], i)

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"propensity": "monte_carlo", "propensity_samples": 50}
