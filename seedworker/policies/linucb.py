"""Contextual strategies: disjoint LinUCB and linear Thompson sampling.

Each arm keeps a ridge regression of reward on the context vector (``ArmTable``: A^-1 by Sherman–Morrison and
theta = A^-1 b); both policies score the current context at selection time, so they learn from every outcome.
"""

from __future__ import annotations

import numpy as np

from .base import IndexPolicy, SamplingPolicy, Situation


def _fit(s: Situation) -> tuple[np.ndarray, np.ndarray]:
    """Predicted reward and its variance factor x^T A^-1 x for every candidate, in two batched products."""
    a = s.arms
    x = s.x
    mean = a.theta[s.rows] @ x
    width = (a.a_inv[s.rows] @ x) @ x
    return mean, np.maximum(width, 0.0)


class LinUCB(IndexPolicy):
    """Disjoint LinUCB (Li et al., 2010): ``theta_a·x + alpha * scale * sqrt(x^T A_a^-1 x)``."""

    name = "linucb"
    contextual = True

    def __init__(self, *, alpha: float = 1.0):
        self.alpha = alpha

    def greedy(self, s: Situation) -> np.ndarray:
        return s.arms.theta[s.rows] @ s.x

    def _scores(self, s: Situation) -> np.ndarray:
        mean, width = _fit(s)
        return mean + (self.alpha * s.scale) * np.sqrt(width)

    def _why(self, s: Situation, i: int, scores: np.ndarray) -> str:
        pred = float(s.arms.theta[s.rows[i]] @ s.x)
        return f"highest LinUCB bound {scores[i]:.4g} for this context (predicted reward {pred:.4g})"

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"alpha": 0.3}


class LinearThompson(SamplingPolicy):
    """Linear Thompson sampling (Agrawal & Goyal, 2013) with disjoint arms.

    Sampling ``theta ~ N(theta_a, v^2 A_a^-1)`` and scoring ``theta·x`` is the same as drawing the score from
    ``N(theta_a·x, v^2 x^T A_a^-1 x)``; drawing the scalar avoids a Cholesky factor per arm per decision.
    ``v = scale * pooled sd``.
    """

    name = "lin-thompson"
    contextual = True

    def __init__(self, *, scale: float = 1.0, propensity_samples: int = 200):
        self.scale = scale
        self.propensity_samples = propensity_samples

    def greedy(self, s: Situation) -> np.ndarray:
        return s.arms.theta[s.rows] @ s.x

    def _sample(self, s: Situation, rng: np.random.Generator, size: int) -> np.ndarray:
        mean, width = _fit(s)
        sd = (self.scale * s.scale) * np.sqrt(width)
        return mean + sd * rng.standard_normal((size, len(s.rows)))
