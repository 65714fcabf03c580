"""Thompson sampling: Gaussian posterior for real-valued rewards, Beta for success-only rewards.

Samples are drawn at selection time from the current posterior, never cached at update time.
"""

from __future__ import annotations

import typing

import numpy as np

from ..events import SeedSelected
from .base import Choice, SamplingPolicy, Situation, _explored
from .propensity import PROPENSITY_METHODS, gaussian_max_probability

LOGGED_METHODS = typing.get_args(SeedSelected.model_fields["propensity_method"].annotation)


class GaussianSampling(SamplingPolicy):
    """A sampling policy whose candidate scores are independent normals ``N(loc_k, sd_k^2)``.

    ``propensity="monte_carlo"`` estimates P(the pick has the highest draw) from ``propensity_samples`` further
    draws. ``propensity="quadrature"`` computes it as a one-dimensional integral on a grid (see ``propensity``),
    accurate to about 1e-6 and much cheaper; a decision it cannot resolve on its grid falls back to Monte Carlo and
    says so. The pick itself is the same either way: it is the first row of the Monte-Carlo draws.
    """

    propensity: str = "monte_carlo"

    @staticmethod
    def _check_propensity(method: str) -> str:
        if method not in PROPENSITY_METHODS:
            raise ValueError(f"propensity must be one of {', '.join(PROPENSITY_METHODS)}, got {method!r}")
        if method not in LOGGED_METHODS:
            # A seed.selected event must validate for its consumers: no method the event contract does not know.
            raise ValueError(f"propensity {method!r} is not a propensity_method of the seed.selected contract "
                             f"(events.SeedSelected accepts {', '.join(LOGGED_METHODS)})")
        return method

    def _posterior(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loc, sd, greedy values) of the candidates."""
        raise NotImplementedError

    def _sample_values(self, s: Situation, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        loc, sd, values = self._posterior(s)
        return loc + sd * rng.standard_normal((size, len(loc))), values

    def choose(self, s: Situation) -> Choice:
        if self.propensity == "monte_carlo":
            return super().choose(s)
        loc, sd, values = self._posterior(s)
        k = len(loc)
        rng = s.draw.rng
        draw = loc + sd * rng.standard_normal(k)
        i = int(draw.argmax())
        p = gaussian_max_probability(loc, sd, i)
        if p is None:  # not resolvable on the grid: the Monte-Carlo estimate, from the same stream as that mode
            draws = np.vstack([draw, loc + sd * rng.standard_normal((self.propensity_samples, k))])
            winners = draws.argmax(axis=1)
            probs = np.bincount(winners, minlength=k) / len(winners)
            p = float(probs[i])
            reason = f"highest sampled {self.name} value {draw[i]:.4g} (P(best)≈{p:.2f})"
            return Choice(i, draw, probs, p, "monte_carlo", _explored(values, i), reason)
        reason = f"highest sampled {self.name} value {draw[i]:.4g} (P(best)={p:.2f})"
        return Choice(i, draw, None, p, "quadrature", _explored(values, i), reason)


class GaussianThompson(GaussianSampling):
    """Posterior of each seed's mean reward: ``N(m, sigma^2 / (n + n0))``.

    ``m`` shrinks the empirical mean toward the blueprint's pooled mean with ``prior_count`` pseudo-outcomes;
    ``sigma`` is the arm's standard deviation blended with the pooled one by the same weights. ``scale`` widens or
    narrows the posterior (1 is Bayesian).
    """

    name = "thompson"

    def __init__(self, *, prior_count: float = 1.0, scale: float = 1.0, discounted: bool = False,
                 propensity_samples: int = 200, propensity: str = "monte_carlo"):
        self.prior_count = prior_count
        self.scale = scale
        self.discounted = discounted
        self.propensity_samples = propensity_samples
        self.propensity = self._check_propensity(propensity)

    def _posterior(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, rows = s.arms, s.rows
        n, mean = a.counts_means(rows, self.discounted)
        n_sum = float(np.add.reduce(n))
        pooled_mean = float(mean.dot(n)) / n_sum if n_sum > 0 else 0.0
        n0 = self.prior_count
        nn = n + n0
        post_mean = n * mean
        post_mean += n0 * pooled_mean
        post_mean /= nn
        var = n * a.variances(rows, self.discounted)
        var += n0 * s.scale**2
        var /= nn * nn
        sd = np.sqrt(var, out=var)
        sd *= self.scale
        return post_mean, sd, mean

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"discounted": True, "propensity_samples": 50}


class BetaThompson(SamplingPolicy):
    """Beta-Bernoulli Thompson sampling on the outcomes' ``success`` flag: ``Beta(a + successes, b + failures)``."""

    name = "beta-thompson"

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, discounted: bool = False,
                 propensity_samples: int = 200):
        self.alpha = alpha
        self.beta = beta
        self.discounted = discounted
        self.propensity_samples = propensity_samples

    def greedy(self, s: Situation) -> np.ndarray:
        succ, fail = s.arms.successes(s.rows, self.discounted)
        return (self.alpha + succ) / (self.alpha + self.beta + succ + fail)

    def _sample_values(self, s: Situation, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        succ, fail = s.arms.successes(s.rows, self.discounted)
        a, b = self.alpha + succ, self.beta + fail
        return rng.beta(a, b, size=(size, len(s.rows))), a / (a + b)
