"""Upper confidence bound strategies: UCB1, variance-aware UCB-V, and discounted UCB."""

from __future__ import annotations

import numpy as np

from .base import IndexPolicy, Situation


class UCB(IndexPolicy):
    """UCB1 (Auer et al., 2002): ``mean + c * scale * sqrt(2 ln N / n)``.

    ``scale`` is the blueprint's pooled reward standard deviation (see ``Situation.scale``), so ``exploration``
    is unit-free. ``N`` is the outcome count over the candidates. With ``discounted=True`` the counts and means are
    the decayed ones (discounted UCB, Garivier & Moulines, 2011) and recent outcomes count more.
    """

    name = "ucb"

    def __init__(self, *, exploration: float = 1.0, discounted: bool = False):
        self.exploration = exploration
        self.discounted = discounted

    def _bonus(self, s: Situation, n: np.ndarray) -> np.ndarray:
        total = max(float(n.sum()), 1.0)
        with np.errstate(divide="ignore"):
            return self.exploration * s.scale * np.sqrt(2.0 * np.log(max(total, np.e)) / n)

    def _scores(self, s: Situation) -> np.ndarray:
        n = s.arms.counts(s.rows, self.discounted)
        return self.greedy(s) + self._bonus(s, n)

    def _why(self, s: Situation, i: int, scores: np.ndarray) -> str:
        n = s.arms.counts(s.rows, self.discounted)[i]
        mean = self.greedy(s)[i]
        kind = "decayed " if self.discounted else ""
        return f"highest {self.name} bound {scores[i]:.4g} ({kind}mean reward {mean:.4g} over {n:.3g} outcomes)"

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"exploration": 0.5}


class DiscountedUCB(UCB):
    """UCB1 on statistics decayed with the configured half-life: the strategy for drifting seed qualities."""

    name = "discounted-ucb"

    def __init__(self, *, exploration: float = 1.0):
        super().__init__(exploration=exploration, discounted=True)

    @classmethod
    def _unit_test_params(cls):
        yield {}


class UCBV(UCB):
    """Variance-aware UCB-V (Audibert, Munos & Szepesvári, 2009): ``mean + sqrt(2 V ln N / n) + 3 c b ln N / n``.

    ``V`` is the arm's empirical reward variance and ``b`` the reward range, taken as three pooled standard
    deviations; an arm whose rewards barely vary is explored less than UCB1 would.
    """

    name = "ucb-v"

    def _scores(self, s: Situation) -> np.ndarray:
        n = s.arms.counts(s.rows, self.discounted)
        var = s.arms.variances(s.rows, self.discounted)
        log_n = np.log(max(float(n.sum()), np.e))
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = np.sqrt(2.0 * var * log_n / n) + self.exploration * 3.0 * (3.0 * s.scale) * log_n / n
        bonus[n <= 0] = np.inf
        return self.greedy(s) + bonus
