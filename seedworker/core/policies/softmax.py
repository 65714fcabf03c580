"""Softmax (Boltzmann) selection weighted by performance, and round-robin."""

from __future__ import annotations

import numpy as np

from seedworker.core.policies.base import Choice, Policy, ProbabilityPolicy, Situation


class Softmax(ProbabilityPolicy):
    """``P(seed) ∝ exp(mean / (temperature * scale))``; ``scale`` is the pooled reward standard deviation, so the
    temperature is unit-free: at 1, a seed one standard deviation better is e times as likely."""

    name = "softmax"

    def __init__(self, *, temperature: float = 0.25, discounted: bool | None = None):
        if temperature <= 0:
            raise ValueError("softmax: temperature must be positive")
        self.temperature = temperature
        self.discounted = discounted

    def _distribution(self, s: Situation) -> tuple[np.ndarray, np.ndarray]:
        values = self.greedy(s)
        z = values / (self.temperature * s.scale)
        e = np.exp(z - z[z.argmax()])
        return e / e.sum(), values

    def _why(self, s, i, probs, explored):
        return f"softmax draw with probability {probs[i]:.3f} (temperature {self.temperature} pooled sd)"


class RoundRobin(Policy):
    """Each candidate in turn (by seed_idx order), driven by the blueprint's decision count: deterministic."""

    name = "round-robin"
    learns = False

    def choose(self, s: Situation) -> Choice:
        i = s.decisions % len(s.rows)
        values = self.greedy(s)
        return Choice(
            i,
            None,
            None,
            1.0,
            "exact",
            bool(values[i] < values.max()),
            f"round-robin turn {s.decisions} of {len(s.rows)} candidates",
        )


class FirstSeed(Policy):
    """Always the viable candidate with the lowest seed_idx: what Tamiyo did before seedworker (the baseline)."""

    name = "seed0"
    learns = False

    def choose(self, s: Situation) -> Choice:
        values = self.greedy(s)
        return Choice(
            0,
            None,
            None,
            1.0,
            "exact",
            bool(values[0] < values.max()),
            "lowest seed_idx among viable candidates (baseline policy)",
        )


class UniformRandom(ProbabilityPolicy):
    """A uniform pick: the exploration baseline, with exact propensity 1/K."""

    name = "random"
    learns = False

    def _distribution(self, s: Situation) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(s.rows), 1.0 / len(s.rows)), self.greedy(s)

    def _why(self, s, i, probs, explored):
        return f"uniform random pick among {len(s.rows)} candidates"
