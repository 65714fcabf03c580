"""The contract every strategy shares.

A policy reads the arm statistics of the viable candidates (a ``Situation``) and returns a ``Choice``: which
candidate, the per-candidate scores (and probabilities where the policy defines them), the propensity of the chosen
candidate, whether it was an exploratory pick, and a sentence saying why. Scores are computed from the current
state at selection time; randomness comes only from the decision's own seeded generator.

Three families share the selection mechanics, so a strategy writes only what differs:
- ``IndexPolicy``: a score per candidate, the highest wins (ties broken at random); propensity 1/ties.
- ``SamplingPolicy``: a random draw per candidate, the highest wins; propensity estimated by Monte Carlo.
- ``ProbabilityPolicy``: an explicit distribution over candidates; propensity exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np

from ..arms import ArmTable


class Draw:
    """The decision's random generator, seeded by (salt, request_id) and built only when a policy needs it."""

    __slots__ = ("seed", "_rng")

    def __init__(self, salt: str, request_id: str):
        digest = hashlib.blake2b(f"{salt}\x00{request_id}".encode(), digest_size=8).digest()
        self.seed = int.from_bytes(digest, "little")
        self._rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.Generator(np.random.PCG64(self.seed))
        return self._rng


@dataclass(slots=True)
class Situation:
    """What a policy sees: the blueprint's arms, the rows of the viable candidates, the context vector."""

    arms: ArmTable
    rows: np.ndarray
    x: np.ndarray
    decisions: int
    draw: Draw
    _scale: float | None = field(default=None, repr=False)

    @property
    def scale(self) -> float:
        """Reward noise scale of the blueprint: the pooled within-arm standard deviation.

        Exploration bonuses are multiplied by it so that one setting works whether rewards are accuracy gains of
        0.01 or scores of 100. Before two outcomes exist it is 1.
        """
        if self._scale is None:
            a, n = self.arms, len(self.arms)
            pulls = a.pulls[:n]
            total = pulls.sum()
            if total < 2:
                self._scale = 1.0
            else:
                sums = a.reward_sum[:n]
                within = a.reward_sq_sum[:n].sum() - (sums * sums / np.maximum(pulls, 1)).sum()
                self._scale = max(float(np.sqrt(max(within, 0.0) / total)), 1e-3)
        return self._scale


@dataclass(slots=True)
class Choice:
    index: int  # position within the situation's rows
    scores: np.ndarray | None
    probabilities: np.ndarray | None
    propensity: float
    method: str  # "exact" or "monte_carlo"
    explored: bool
    reason: str


class Policy:
    """Base of every strategy. Settings are keyword-only constructor arguments kept as public attributes."""

    name: ClassVar[str]
    contextual: ClassVar[bool] = False
    discounted: bool = False

    def choose(self, s: Situation) -> Choice:
        raise NotImplementedError

    def greedy(self, s: Situation) -> np.ndarray:
        """Estimated value of each candidate; a pick below the best estimate counts as exploration."""
        return s.arms.means(s.rows, self.discounted)

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.settings() == other.settings()  # type: ignore[union-attr]

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}


def _argmax_ties(values: np.ndarray, draw: Draw) -> tuple[int, int]:
    best = values.max()
    top = np.flatnonzero(values == best)
    if len(top) == 1:
        return int(top[0]), 1
    return int(top[draw.rng.integers(len(top))]), len(top)


def _explored(values: np.ndarray, i: int) -> bool:
    return bool(values[i] < values.max())


class IndexPolicy(Policy):
    def _scores(self, s: Situation) -> np.ndarray:
        raise NotImplementedError

    def _why(self, s: Situation, i: int, scores: np.ndarray) -> str:
        return f"highest {self.name} score {scores[i]:.4g}"

    def choose(self, s: Situation) -> Choice:
        scores = self._scores(s)
        i, ties = _argmax_ties(scores, s.draw)
        explored = _explored(self.greedy(s), i)
        return Choice(i, scores, None, 1.0 / ties, "exact", explored, self._why(s, i, scores))


class SamplingPolicy(Policy):
    propensity_samples: int = 200

    def _sample(self, s: Situation, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws of every candidate's score, shape (size, K)."""
        raise NotImplementedError

    def choose(self, s: Situation) -> Choice:
        rng = s.draw.rng
        k = len(s.rows)
        draws = self._sample(s, rng, 1 + self.propensity_samples)
        winners = draws.argmax(axis=1)
        i = int(winners[0])
        # The decision's own draw is one of the Monte-Carlo samples, so the estimate is never zero for the pick.
        probs = np.bincount(winners, minlength=k) / len(winners)
        explored = _explored(self.greedy(s), i)
        reason = f"highest sampled {self.name} value {draws[0, i]:.4g} (P(best)≈{probs[i]:.2f})"
        return Choice(i, draws[0], probs, float(probs[i]), "monte_carlo", explored, reason)


class ProbabilityPolicy(Policy):
    def _probabilities(self, s: Situation) -> np.ndarray:
        raise NotImplementedError

    def _why(self, s: Situation, i: int, probs: np.ndarray, explored: bool) -> str:
        return f"drawn with probability {probs[i]:.3f}"

    def choose(self, s: Situation) -> Choice:
        probs = self._probabilities(s)
        cdf = np.cumsum(probs)
        i = min(int(np.searchsorted(cdf, s.draw.rng.random() * cdf[-1], side="right")), len(probs) - 1)
        values = self.greedy(s)
        explored = _explored(values, i)
        return Choice(i, values, probs, float(probs[i]), "exact", explored, self._why(s, i, probs, explored))
