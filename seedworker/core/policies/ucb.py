"""Upper confidence bound strategies: UCB1, variance-aware UCB-V, and discounted UCB."""

from __future__ import annotations

import math

import numpy as np

from seedworker.core.policies.base import SMALL, IndexPolicy, Situation


class UCB(IndexPolicy):
    """UCB1 (Auer et al., 2002): ``mean + c * scale * sqrt(2 ln N / n)``.

    ``scale`` is the blueprint's pooled reward standard deviation (see ``Situation.scale``), so ``exploration``
    is unit-free. ``N`` is the outcome count over the candidates. With a half-life (``decay.half_life_s``) the
    counts and means are the decayed ones (discounted UCB, Garivier & Moulines, 2011) and recent outcomes count
    more.
    """

    name = "ucb"

    def __init__(self, *, exploration: float = 1.0, discounted: bool | None = None):
        self.exploration = exploration
        self.discounted = discounted

    def _evaluate(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(s.rows) <= SMALL:
            # The same operations per candidate on Python floats (see base.SMALL).
            counts, means = self._counts_means_list(s)
            total = max(math.fsum(counts), 1.0)
            coef = self.exploration * self._scale(s) * math.sqrt(2.0 * math.log(max(total, math.e)))
            sqrt, inf = math.sqrt, math.inf
            return [m + coef / sqrt(c) if c > 0.0 else inf for m, c in zip(means, counts)], means, counts
        n, mean = self._counts_means(s)
        total = max(math.fsum(n.tolist()), 1.0)  # N, exactly rounded (and cheaper than a numpy reduction)
        coef = self.exploration * self._scale(s) * math.sqrt(2.0 * math.log(max(total, math.e)))
        # c * scale * sqrt(2 ln N / n) as one constant over sqrt(n); an untried arm (n = 0) gets an infinite bonus.
        root = np.sqrt(n)
        if np.count_nonzero(n) == len(n):
            bonus = np.divide(coef, root, out=root)
        else:
            bonus = np.divide(coef, root, out=np.full(len(n), np.inf), where=n > 0)
        return np.add(mean, bonus, out=bonus), mean, n

    def _counts_means(self, s: Situation) -> tuple[np.ndarray, np.ndarray]:
        return s.arms.counts_means(s.rows, True)

    def _counts_means_list(self, s: Situation) -> tuple[list[float], list[float]]:
        return s.arms.counts_means_list(s.rows, True)

    def _scale(self, s: Situation) -> float:
        return s.scale

    def _why(self, s: Situation, i: int, scores: np.ndarray, values: np.ndarray, n: np.ndarray) -> str:
        kind = "decayed " if s.arms.half_life_s is not None else ""
        return f"highest {self.name} bound {scores[i]:.4g} ({kind}mean reward {values[i]:.4g} over {n[i]:.3g} outcomes)"

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"exploration": 0.5}


class DiscountedUCB(UCB):
    """UCB1 on statistics decayed with the configured half-life (which it requires; ``ucb`` with a half-life is
    the same computation)."""

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

    def _evaluate(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, mean = s.arms.counts_means(s.rows, True)
        var = s.arms.variances(s.rows, True)
        log_n = math.log(max(float(np.add.reduce(n)), math.e))
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = np.sqrt(2.0 * var * log_n / n) + self.exploration * 3.0 * (3.0 * s.scale) * log_n / n
        bonus[n <= 0] = np.inf
        return mean + bonus, mean, n


class ChangeUCB(UCB):
    """An upper confidence bound on each seed's outcomes since the blueprint's last detected change (see
    ``ArmTable._observe``).

    A change in some seed's mean restarts every seed's statistics, so the index forgets exactly when the evidence
    says the world moved and not on a clock: no half-life to tune.

    The index (``index="kl-ucb+"``, the default) is the Gaussian KL-UCB+ bound: the largest mean ``q`` with
    ``n (q - m)^2 / (2 sigma^2) <= ln+(N / (K n))``, i.e. ``m + c sigma sqrt(2 ln+(N / (K n)) / n)``, with ``N``
    the segment's outcomes over the ``K`` candidates (Garivier, Hadiji, Ménard & Stoltz, "KL-UCB-switch", 2022:
    the anytime exploration function ``ln+(t / (K n))`` instead of UCB1's ``ln t``). An arm already sampled more
    than its share ``N / K`` gets no bonus; the others keep one, so a restart re-explores them at once. On
    bench/regret.py it lowered the regret in every scenario but gradual drift (within its noise there) against
    UCB1's ``ln N`` (``index="ucb1"``, the ``ucb`` index).
    """

    name = "glr-ucb"
    detects = True
    INDEXES = ("kl-ucb+", "ucb1")

    def __init__(self, *, exploration: float = 1.0, index: str = "kl-ucb+"):
        if index not in self.INDEXES:
            raise ValueError(f"glr-ucb: index must be one of {', '.join(self.INDEXES)}, got {index!r}")
        super().__init__(exploration=exploration)
        del self.discounted  # decay does not apply (the detector forgets instead): not a setting of this strategy
        self.index = index

    def _counts_means(self, s: Situation) -> tuple[np.ndarray, np.ndarray]:
        n, mean, _ = s.arms.segment_moments(s.rows)
        return n, mean

    def _counts_means_list(self, s: Situation) -> tuple[list[float], list[float]]:
        return s.arms.segment_counts_means_list(s.rows)

    def _scale(self, s: Situation) -> float:
        return s.arms.segment_scale()

    def greedy(self, s: Situation) -> np.ndarray:
        return s.arms.segment_moments(s.rows)[1]

    def _evaluate(self, s: Situation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.index == "ucb1":
            return super()._evaluate(s)
        if len(s.rows) <= SMALL:
            # The same operations per candidate on Python floats (see base.SMALL), numpy's log kept (math.log may
            # differ from it in the last bit). Counts are whole numbers, so their sum is exact in any order.
            counts, means = self._counts_means_list(s)
            share = max(sum(counts), 1.0) / len(counts)
            coef = self.exploration * self._scale(s)
            seen = [c for c in counts if c > 0.0]
            logs = iter(np.log([max(share / c, 1.0) for c in seen]).tolist()) if seen else iter(())
            sqrt, inf = math.sqrt, math.inf
            bounds = [m + coef * sqrt(2.0 * next(logs) / c) if c > 0.0 else inf for m, c in zip(means, counts)]
            return bounds, means, counts
        n, mean = self._counts_means(s)
        share = max(float(np.add.reduce(n)), 1.0) / len(n)  # N / K
        coef = self.exploration * self._scale(s)
        bonus = np.full(len(n), np.inf)  # an arm without outcomes in the segment comes first
        seen = n > 0
        ns = n[seen]
        bonus[seen] = coef * np.sqrt(2.0 * np.log(np.maximum(share / ns, 1.0)) / ns)
        return mean + bonus, mean, n

    def _why(self, s: Situation, i: int, scores: np.ndarray, values: np.ndarray, n: np.ndarray) -> str:
        return (
            f"highest {self.index} bound {scores[i]:.4g} since the last detected change (mean reward "
            f"{values[i]:.4g} over {n[i]:.3g} outcomes; {s.arms.changes} changes detected)"
        )

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"exploration": 0.5, "index": "ucb1"}
