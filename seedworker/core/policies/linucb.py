"""Contextual strategies: disjoint LinUCB and linear Thompson sampling.

Each arm keeps a ridge regression of reward on the context vector (``ArmTable``: A^-1 by Sherman–Morrison and
theta = A^-1 b); both policies score the current context at selection time, so they learn from every outcome.
"""

from __future__ import annotations

import numpy as np

from seedworker.core.policies.base import IndexPolicy, Situation
from seedworker.core.policies.thompson import GaussianSampling


def _fit(s: Situation) -> tuple[np.ndarray, np.ndarray]:
    """Predicted reward and its variance factor x^T A^-1 x for every candidate, in two batched products."""
    return s.arms.linear_fit(s.rows, s.x)


class LinUCB(IndexPolicy):
    """Disjoint LinUCB (Li et al., 2010): ``theta_a·x + alpha * scale * sqrt(x^T A_a^-1 x)``."""

    name = "linucb"
    contextual = True

    def __init__(self, *, alpha: float = 1.0):
        self.alpha = alpha

    def greedy(self, s: Situation) -> np.ndarray:
        return s.arms.theta[s.rows] @ s.x

    def _evaluate(self, s: Situation) -> tuple[np.ndarray, np.ndarray, None]:
        # The predicted reward is computed once: it is the greedy value (exploration flag) and the reason's number.
        mean, width = _fit(s)
        np.sqrt(width, out=width)
        width *= self.alpha * s.scale
        return np.add(mean, width, out=width), mean, None

    def _why(self, s: Situation, i: int, scores: np.ndarray, mean: np.ndarray, aux: None) -> str:
        return f"highest LinUCB bound {scores[i]:.4g} for this context (predicted reward {mean[i]:.4g})"

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"alpha": 0.3}


class LinearThompson(GaussianSampling):
    """Linear Thompson sampling (Agrawal & Goyal, 2013) with disjoint arms.

    Sampling ``theta ~ N(theta_a, v^2 A_a^-1)`` and scoring ``theta·x`` is the same as drawing the score from
    ``N(theta_a·x, v^2 x^T A_a^-1 x)``; drawing the scalar avoids a Cholesky factor per arm per decision.
    ``v = scale * pooled sd``.
    """

    name = "lin-thompson"
    contextual = True

    def __init__(self, *, scale: float = 1.0, propensity_samples: int = 200, propensity: str = "quadrature"):
        self.scale = scale
        self.propensity_samples = propensity_samples
        self.propensity = self._check_propensity(propensity)

    def greedy(self, s: Situation) -> np.ndarray:
        return s.arms.theta[s.rows] @ s.x

    def _posterior(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, width = _fit(s)
        sd = np.sqrt(width, out=width)
        sd *= self.scale * s.scale
        return mean, sd, mean
