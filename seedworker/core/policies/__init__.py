"""Strategies by name. Each is a small module; all share the contract in ``base``."""

from __future__ import annotations

from typing import Any

from seedworker.core.policies.base import (
    Choice,
    Draw,
    IndexPolicy,
    Policy,
    ProbabilityPolicy,
    SamplingPolicy,
    Situation,
)
from seedworker.core.policies.epsilon_greedy import EpsilonGreedy
from seedworker.core.policies.linucb import LinearThompson, LinUCB
from seedworker.core.policies.softmax import FirstSeed, RoundRobin, Softmax, UniformRandom
from seedworker.core.policies.thompson import BetaThompson, ChangeThompson, GaussianThompson
from seedworker.core.policies.ucb import UCB, UCBV, ChangeUCB, DiscountedUCB

STRATEGIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        UCB,
        UCBV,
        DiscountedUCB,
        GaussianThompson,
        BetaThompson,
        EpsilonGreedy,
        Softmax,
        RoundRobin,
        LinUCB,
        LinearThompson,
        FirstSeed,
        UniformRandom,
        ChangeUCB,
        ChangeThompson,
    )
}


def make_policy(name: str, settings: dict[str, Any] | None = None) -> Policy:
    """Build a strategy by name; unknown names and settings raise errors that name them."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
    try:
        return cls(**(settings or {}))
    except TypeError as exc:
        raise ValueError(f"strategies.{name}: {exc}".replace("__init__() ", "")) from None


__all__ = [
    "STRATEGIES",
    "make_policy",
    "Policy",
    "Choice",
    "Draw",
    "Situation",
    "IndexPolicy",
    "SamplingPolicy",
    "ProbabilityPolicy",
]
