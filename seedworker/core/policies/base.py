"""The contract every strategy shares.

A policy reads the arm statistics of the viable candidates (a ``Situation``) and returns a ``Choice``: which
candidate, the per-candidate scores (and probabilities where the policy defines them), the propensity of the chosen
candidate, whether it was an exploratory pick, and a sentence saying why. Scores are computed from the current
state at selection time; randomness comes only from the decision's own seeded generator.

Three families share the selection mechanics, so a strategy writes only what differs:
- ``IndexPolicy``: a score per candidate, the highest wins (ties broken at random); propensity 1/ties.
- ``SamplingPolicy``: a random draw per candidate, the highest wins; propensity estimated by Monte Carlo or a
  numerical integral.
- ``ProbabilityPolicy``: an explicit distribution over candidates; propensity exact.

Each family computes a candidate's estimate once per decision: the arrays that give the scores also give the greedy
values (for the exploration flag) and the numbers quoted in the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from seedworker.core.arms import ArmTable


class _Key(ISeedSequence):
    """The seed words of a decision's generator, straight from a blake2b digest of (salt, request_id): numpy's
    ``SeedSequence`` hashing (about 7 µs per decision) is not needed, the digest is already uniformly random."""

    __slots__ = ("message",)

    def __init__(self, message: bytes):
        self.message = message

    def generate_state(self, n_words: int, dtype=np.uint32) -> np.ndarray:
        little = _LITTLE_ENDIAN.get(dtype)
        if little is None:  # the words' little-endian type, resolved once per type asked for (a third of the call)
            little = _LITTLE_ENDIAN[dtype] = np.dtype(dtype).newbyteorder("<")
        size = n_words * little.itemsize
        if size > 64:
            raise ValueError(f"a decision key gives at most 64 bytes of seed, {size} asked")
        return np.frombuffer(hashlib.blake2b(self.message, digest_size=size).digest(), dtype=little)


_LITTLE_ENDIAN: dict = {}


class Draw:
    """The decision's random generator, a pure function of (salt, request_id), built only when a policy needs it.

    The generator is PCG64 whose 128-bit state and increment seeds are the four little-endian 64-bit words of
    ``blake2b(salt + "\\0" + request_id, digest_size=32)`` (``_Key``), taken directly, without numpy's
    ``SeedSequence`` (since contract 1.2: before it the same digest, 8 bytes, went through ``SeedSequence``, so
    1.1 and 1.2 decisions draw different streams; replay folds the logged decisions and never draws). An index
    policy with a unique best score never draws, and then pays for neither.
    """

    __slots__ = ("salt", "request_id", "_rng")
    STREAM = 2  # 1: PCG64(SeedSequence(blake2b-64)), contract 1.0-1.1; 2: PCG64 keyed by blake2b-256, contract 1.2

    def __init__(self, salt: str, request_id: str):
        self.salt = salt
        self.request_id = request_id
        self._rng: np.random.Generator | None = None

    @property
    def key(self) -> bytes:
        """The hashed message: salt, a NUL, the request id (UTF-8)."""
        return f"{self.salt}\x00{self.request_id}".encode()

    @property
    def seed(self) -> int:
        """The generator's seed words (state, then increment, 64 bits each, little-endian) as one integer."""
        return int.from_bytes(hashlib.blake2b(self.key, digest_size=32).digest(), "little")

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.Generator(np.random.PCG64(_Key(self.key)))
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


class Choice:
    """A policy's answer: the position of the pick among the situation's rows, the per-candidate scores and
    probabilities (None where the policy defines none), the pick's propensity and how it was obtained ("exact",
    "monte_carlo" or "quadrature"), whether the pick was exploratory, and a sentence saying why.

    The reason may be given as a function of no arguments and the scores as a list: the sentence is formatted and
    the array built on first read (the seed.selected event reads both; a decision nobody reports on — a benchmark
    loop, a simulation that keeps only the pick — skips the number formatting). Whatever they quote was computed
    at selection time and is held by the Choice, so reading later gives the same text.
    """

    __slots__ = ("index", "_scores", "probabilities", "propensity", "method", "explored", "_reason")

    def __init__(
        self,
        index: int,
        scores: np.ndarray | list[float] | None,
        probabilities: np.ndarray | None,
        propensity: float,
        method: str,
        explored: bool,
        reason: str | Callable[[], str],
    ):
        self.index = index
        self._scores = scores
        self.probabilities = probabilities
        self.propensity = propensity
        self.method = method
        self.explored = explored
        self._reason = reason

    @property
    def reason(self) -> str:
        r = self._reason
        if not isinstance(r, str):
            r = self._reason = r()
        return r

    @property
    def scores(self) -> np.ndarray | None:
        s = self._scores
        if s is not None and not isinstance(s, np.ndarray):
            s = self._scores = np.array(s, dtype=float)
        return s

    def score_list(self) -> list[float] | None:
        """The scores as Python floats (what the seed.selected event carries), without an array in between."""
        s = self._scores
        return s if s is None or isinstance(s, list) else s.tolist()

    def __repr__(self) -> str:
        return (
            f"Choice(index={self.index}, propensity={self.propensity!r}, method={self.method!r}, "
            f"explored={self.explored}, reason={self.reason!r})"
        )


class Policy:
    """Base of every strategy. Settings are keyword-only constructor arguments kept as public attributes."""

    name: ClassVar[str]
    contextual: ClassVar[bool] = False
    # Every strategy that learns reads the decayed statistics whenever the blueprint has a half-life
    # (``decay.half_life_s``): the table's reads fall back to the raw ones without it. ``discounted`` is kept as a
    # setting so older configurations still parse, but it can no longer switch decay off or on by itself:
    # ``Settings.strategy_problem`` refuses ``true`` without a half-life and ``false`` with one, instead of
    # silently ignoring either.
    discounted: bool | None = None
    learns: ClassVar[bool] = True
    detects: ClassVar[bool] = False  # reads the statistics since the last detected change (needs no half-life)

    def choose(self, s: Situation) -> Choice:
        raise NotImplementedError

    def greedy(self, s: Situation) -> np.ndarray:
        """Estimated value of each candidate; a pick below the best estimate counts as exploration."""
        return s.arms.means(s.rows, True)

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


# Up to this many candidates a policy may compute on Python floats instead of numpy arrays: numpy's per-call
# overhead (0.3-1 µs) then costs more than the arithmetic. Such a path does the same IEEE operations per candidate
# as the array path, so it gives the same values (tests/test_fast_paths.py compares the two on random states).
SMALL = 16


def _argmax_ties(values: np.ndarray | list[float], draw: Draw) -> tuple[int, int]:
    """(position of the highest value, number of positions sharing it); ties are broken by the decision's draw."""
    if isinstance(values, list) or len(values) <= SMALL:  # a Python list is cheaper than numpy calls at this size
        listed = values if isinstance(values, list) else values.tolist()
        best = max(listed)
        i, ties = listed.index(best), listed.count(best)
        if ties <= 1:  # the usual case: a unique maximum, no random draw (and no generator) needed
            return i, 1
        top = [j for j, v in enumerate(listed) if v == best]
        return top[int(draw.rng.integers(ties))], ties
    i = int(values.argmax())
    ties = int(np.count_nonzero(values == values[i]))
    if ties <= 1:
        return i, 1
    top = np.flatnonzero(values == values[i])
    return int(top[draw.rng.integers(ties)]), ties


def _explored(values: np.ndarray | list[float], i: int) -> bool:
    if isinstance(values, list):
        return values[i] < max(values)
    return bool(values[i] < values[values.argmax()])


class IndexPolicy(Policy):
    def _evaluate(self, s: Situation) -> tuple[np.ndarray | list[float], np.ndarray | list[float], Any]:
        """(scores, greedy values, anything else the reason quotes) of the candidates: arrays, or lists of floats
        for at most ``SMALL`` candidates."""
        raise NotImplementedError

    def _why(self, s: Situation, i: int, scores: np.ndarray, values: np.ndarray, aux: Any) -> str:
        return f"highest {self.name} score {scores[i]:.4g}"

    def choose(self, s: Situation) -> Choice:
        scores, values, aux = self._evaluate(s)
        i, ties = _argmax_ties(scores, s.draw)
        return Choice(
            i, scores, None, 1.0 / ties, "exact", _explored(values, i), lambda: self._why(s, i, scores, values, aux)
        )


class SamplingPolicy(Policy):
    """Each candidate's score is a random draw from its distribution; the highest draw wins.

    ``choose`` is ``pick`` (the draws and the winner) plus the pick's propensity, obtained by ``propensity``:
    "monte_carlo" counts how often the pick wins ``propensity_samples`` further draws from the decision's generator
    (plus its own); "quadrature" integrates it (strategies whose ``_probability`` can), with Monte Carlo where the
    integral declines. The pick is the same either way: the further draws come after it in the same stream.
    """

    propensity: str = "monte_carlo"
    propensity_samples: int = 200

    def _distribution(self, s: Situation) -> tuple[Any, np.ndarray]:
        """(the parameters of every candidate's score distribution, the greedy values)."""
        raise NotImplementedError

    def _draw(self, params: Any, rng: np.random.Generator, size: int | None) -> np.ndarray:
        """One draw of every candidate's score, shape (K,); or ``size`` of them, shape (size, K)."""
        raise NotImplementedError

    def _probability(self, params: Any, i: int) -> float | None:
        """P(candidate ``i`` draws the highest score) by numerical integration, or None where there is none."""
        return None

    def _sample(self, s: Situation, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws of every candidate's score, shape (size, K)."""
        return self._draw(self._distribution(s)[0], rng, size)

    def pick(self, s: Situation) -> tuple[int, np.ndarray, Any, np.ndarray]:
        """The decision before its propensity: (position of the highest draw, the draws, the distributions'
        parameters, the greedy values)."""
        params, values = self._distribution(s)
        draw = self._draw(params, s.draw.rng, None)
        if isinstance(draw, list):  # finite draws (see GaussianThompson): the first highest, as argmax
            return draw.index(max(draw)), draw, params, values
        return int(draw.argmax()), draw, params, values

    def choose(self, s: Situation) -> Choice:
        i, draw, params, values = self.pick(s)
        explored = _explored(values, i)
        if self.propensity == "quadrature":
            p = self._probability(params, i)
            if p is not None:
                return Choice(
                    i,
                    draw,
                    None,
                    p,
                    "quadrature",
                    explored,
                    lambda: f"highest sampled {self.name} value {draw[i]:.4g} (P(best)={p:.2f})",
                )
        k = len(draw)
        # The decision's own draw is one of the Monte-Carlo samples, so the estimate is never zero for the pick.
        wins = np.bincount(self._draw(params, s.draw.rng, self.propensity_samples).argmax(axis=1), minlength=k)
        wins[i] += 1
        probs = wins / (1 + self.propensity_samples)
        p = float(probs[i])
        return Choice(
            i,
            draw,
            probs,
            p,
            "monte_carlo",
            explored,
            lambda: f"highest sampled {self.name} value {draw[i]:.4g} (P(best)≈{p:.2f})",
        )


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
        return Choice(i, values, probs, float(probs[i]), "exact", explored, lambda: self._why(s, i, probs, explored))
