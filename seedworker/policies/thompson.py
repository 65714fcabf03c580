"""Thompson sampling: Gaussian posterior for real-valued rewards, Beta for success-only rewards.

Samples are drawn at selection time from the current posterior, never cached at update time.
"""

from __future__ import annotations

import numpy as np

from .base import SamplingPolicy, Situation


class GaussianThompson(SamplingPolicy):
    """Posterior of each seed's mean reward: ``N(m, sigma^2 / (n + n0))``.

    ``m`` shrinks the empirical mean toward the blueprint's pooled mean with ``prior_count`` pseudo-outcomes;
    ``sigma`` is the arm's standard deviation blended with the pooled one by the same weights. ``scale`` widens or
    narrows the posterior (1 is Bayesian).
    """

    name = "thompson"

    def __init__(self, *, prior_count: float = 1.0, scale: float = 1.0, discounted: bool = False,
                 propensity_samples: int = 200):
        self.prior_count = prior_count
        self.scale = scale
        self.discounted = discounted
        self.propensity_samples = propensity_samples

    def _sample(self, s: Situation, rng: np.random.Generator, size: int) -> np.ndarray:
        a, rows = s.arms, s.rows
        n = a.counts(rows, self.discounted)
        mean = a.means(rows, self.discounted)
        n_all = max(float(n.sum()), 1e-12)
        pooled_mean = float((mean * n).sum() / n_all) if n.sum() > 0 else 0.0
        n0 = self.prior_count
        post_mean = (n * mean + n0 * pooled_mean) / (n + n0)
        pooled_var = s.scale**2
        var = (n * a.variances(rows, self.discounted) + n0 * pooled_var) / (n + n0)
        sd = self.scale * np.sqrt(var / (n + n0))
        return post_mean + sd * rng.standard_normal((size, len(rows)))

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

    def _sample(self, s: Situation, rng: np.random.Generator, size: int) -> np.ndarray:
        succ, fail = s.arms.successes(s.rows, self.discounted)
        return rng.beta(self.alpha + succ, self.beta + fail, size=(size, len(s.rows)))
