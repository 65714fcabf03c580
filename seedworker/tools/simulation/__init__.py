"""The simulator behind ``seedworker simulate``: Tamiyo-like environments with hidden seed qualities, a runner that
plays strategies and the seed_idx = 0 baseline on the same stream, and the report (table, JSON, PNG)."""

from seedworker.tools.simulation.envs import SCENARIOS, Environment, Outcome, Step, make_env
from seedworker.tools.simulation.runner import (
    BASELINE,
    ScenarioResult,
    StrategyResult,
    default_strategies,
    simulate,
    simulate_many,
)

__all__ = [
    "SCENARIOS",
    "Environment",
    "Outcome",
    "Step",
    "make_env",
    "BASELINE",
    "ScenarioResult",
    "StrategyResult",
    "default_strategies",
    "simulate",
    "simulate_many",
]
