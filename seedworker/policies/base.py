"""The contract every strategy shares.

A policy reads the arm statistics of the viable candidates (a ``Situation``) and returns a ``Choice``: which
candidate, the per-candidate scores (and probabilities where the policy defines them), the propensity of the chosen
candidate, whether it was an exploratory pick, and a sentence saying why. Scores are computed from the current
state at selection time; randomness comes only from the decision's own seeded generator.

Three families share the selection mechanics, so a strategy writes only what differs:
- ``IndexPolicy``: a score per candidate, the highest wins (ties broken at random); propensity 1/ties.
- ``SamplingPolicy``: a random draw per candidate, the highest wins; propensity estimated by Monte Carlo.
- ``ProbabilityPolicy``: an explicit distribution over candidates; propensity exact.

Each family computes a candidate's estimate once per decision: the arrays that give the scores also give the greedy
values (for the exploration flag) and the numbers quoted in the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np

from ..arms import ArmTable


class Draw:
    """The decision's random generator, seeded by (salt, request_id) and built only when a policy needs it.

    Both the seed (a blake2b digest) and the generator are computed on first use: an index policy with a unique
    best score never draws, and then pays for neither. (A shared generator whose state is set from the digest
    would cost about 1 µs instead of 9 µs per drawing decision, but it changes every random stream — burn-in
    order, ties, Thompson draws — and with it paths that tests and the simulator's claims were measured on.)
    """

    __slots__ = ("salt", "request_id", "_rng")

    def __init__(self, salt: str, request_id: str):
        self.salt = salt
        self.request_id = request_id
        self._rng: np.random.Generator | None = None

    @property
    def seed(self) -> int:
        digest = hashlib.blake2b(f"{self.salt}\x00{self.request_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

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
        0.01 or scores of 100. Before two outcomes exist it is 1. (Kept as running totals by ``ArmTable.learn``.)
        """
        if self._scale is None:
            self._scale = self.arms.pooled_scale()
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
    """(position of the highest value, number of positions sharing it); ties are broken by the decision's draw."""
    if len(values) <= 16:  # a Python list is cheaper than three numpy calls at this size; same answer
        listed = values.tolist()
        best = max(listed)
        i, ties = listed.index(best), listed.count(best)
    else:
        i = int(values.argmax())
        ties = int(np.count_nonzero(values == values[i]))
    if ties <= 1:  # the usual case: a unique maximum, no random draw (and no generator) needed
        return i, 1
    top = np.flatnonzero(values == values[i])
    return int(top[draw.rng.integers(ties)]), ties


def _explored(values: np.ndarray, i: int) -> bool:
    return bool(values[i] < values[values.argmax()])


class IndexPolicy(Policy):
    def _evaluate(self, s: Situation) -> tuple[np.ndarray, np.ndarray, Any]:
        """(scores, greedy values, anything else the reason quotes) of the candidates."""
        raise NotImplementedError

    def _why(self, s: Situation, i: int, scores: np.ndarray, values: np.ndarray, aux: Any) -> str:
        return f"highest {self.name} score {scores[i]:.4g}"

    def choose(self, s: Situation) -> Choice:
        scores, values, aux = self._evaluate(s)
        i, ties = _argmax_ties(scores, s.draw)
        return Choice(i, scores, None, 1.0 / ties, "exact", _explored(values, i),
                      self._why(s, i, scores, values, aux))


class SamplingPolicy(Policy):
    propensity_samples: int = 200

    def _sample(self, s: Situation, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws of every candidate's score, shape (size, K)."""
        return self._sample_values(s, rng, size)[0]

    def _sample_values(self, s: Situation, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(``_sample(s, rng, size)``, greedy values), from one read of the statistics."""
        raise NotImplementedError

    def choose(self, s: Situation) -> Choice:
        k = len(s.rows)
        draws, values = self._sample_values(s, s.draw.rng, 1 + self.propensity_samples)
        winners = draws.argmax(axis=1)
        i = int(winners[0])
        # The decision's own draw is one of the Monte-Carlo samples, so the estimate is never zero for the pick.
        probs = np.bincount(winners, minlength=k) / len(winners)
        p = float(probs[i])
        reason = f"highest sampled {self.name} value {draws[0, i]:.4g} (P(best)≈{p:.2f})"
        return Choice(i, draws[0], probs, p, "monte_carlo", _explored(values, i), reason)


class ProbabilityPolicy(Policy):
    def _distribution(self, s: Situation) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, greedy values) of the candidates."""
        raise NotImplementedError

    def _why(self, s: Situation, i: int, probs: np.ndarray, explored: bool) -> str:
        return f"drawn with probability {probs[i]:.3f}"

    def choose(self, s: Situation) -> Choice:
        probs, values = self._distribution(s)
        cdf = np.cumsum(probs)
        i = min(int(np.searchsorted(cdf, s.draw.rng.random() * cdf[-1], side="right")), len(probs) - 1)
        explored = _explored(values, i)
        return Choice(i, values, probs, float(probs[i]), "exact", explored, self._why(s, i, probs, explored))
