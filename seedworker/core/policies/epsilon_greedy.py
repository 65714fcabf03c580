"""ε-greedy with a per-blueprint decay schedule."""

from __future__ import annotations

import numpy as np

from seedworker.core.policies.base import ProbabilityPolicy, Situation


class EpsilonGreedy(ProbabilityPolicy):
    """With probability ε a uniform pick, otherwise the best mean (ties share the greedy mass).

    ``ε_t = max(min_epsilon, epsilon / (1 + t / decay_steps))`` where ``t`` is the number of decisions already made
    for the blueprint; ``decay_steps=None`` keeps ε constant.
    """

    name = "epsilon-greedy"

    def __init__(
        self,
        *,
        epsilon: float = 0.2,
        min_epsilon: float = 0.01,
        decay_steps: float | None = 200.0,
        discounted: bool | None = None,
    ):
        if not 0.0 <= min_epsilon <= epsilon <= 1.0:
            raise ValueError("epsilon-greedy: need 0 <= min_epsilon <= epsilon <= 1")
        self.epsilon = epsilon
        self.min_epsilon = min_epsilon
        self.decay_steps = decay_steps
        self.discounted = discounted

    def current_epsilon(self, decisions: int) -> float:
        if not self.decay_steps:
            return self.epsilon
        return max(self.min_epsilon, self.epsilon / (1.0 + decisions / self.decay_steps))

    def _distribution(self, s: Situation) -> tuple[np.ndarray, np.ndarray]:
        eps = self.current_epsilon(s.decisions)
        values = self.greedy(s)
        best = values == values[values.argmax()]
        k = len(values)
        return eps / k + (1.0 - eps) * best / np.count_nonzero(best), values

    def _why(self, s, i, probs, explored):
        eps = self.current_epsilon(s.decisions)
        what = "exploratory uniform pick" if explored else "best mean reward"
        return f"{what} (ε={eps:.3f}, probability {probs[i]:.3f})"

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"epsilon": 0.1, "decay_steps": None}
