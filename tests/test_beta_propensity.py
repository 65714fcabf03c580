"""The Beta-Bernoulli Thompson propensity by quadrature (seedworker.core.policies.beta_propensity): against closed
forms where they exist (ties, two arms with integer parameters), against seeded large Monte-Carlo estimates
elsewhere, sharp and flat posteriors mixed; and the policy's pick unchanged by how its probability is computed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seedworker.core.arms import ArmTable
from seedworker.core.policies import Draw, Situation
from seedworker.core.policies.beta_propensity import beta_max_probability
from seedworker.core.policies.thompson import BetaThompson


def _p(a, b, i, **kw):
    return beta_max_probability(np.asarray(a, float), np.asarray(b, float), i, **kw)


def _two_arms(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(Beta(a2, b2) > Beta(a1, b1)) for integer parameters: the finite sum over a2 terms (Miller's formula)."""

    def lnbeta(x, y):
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    return math.fsum(
        math.exp(lnbeta(a1 + k, b1 + b2) - math.log(b2 + k) - lnbeta(1 + k, b2) - lnbeta(a1, b1)) for k in range(a2)
    )


@pytest.mark.parametrize("a, b", [(1.0, 1.0), (5000.0, 10.0), (3.0, 700.0), (0.5, 0.5), (40.5, 38.5)])
@pytest.mark.parametrize("k", [2, 3, 8])
def test_ties_share_the_probability_equally(a, b, k):
    for i in range(k):
        assert _p([a] * k, [b] * k, i) == pytest.approx(1.0 / k, abs=1e-7)


@pytest.mark.parametrize(
    "a1, b1, a2, b2",
    [
        (5000, 10, 4990, 12),  # two sharp posteriors near 1, overlapping
        (5000, 10, 3, 2),  # sharp near 1 against a flat one
        (10, 5000, 1, 1),  # sharp near 0 against uniform
        (1, 1, 2, 1),
        (200, 180, 30, 25),
        (1500, 1500, 1490, 1510),
        (1, 30, 1, 1),
    ],
)
def test_two_arms_match_the_closed_form(a1, b1, a2, b2):
    exact = _two_arms(a1, b1, a2, b2)
    assert _p([a1, a2], [b1, b2], 1) == pytest.approx(exact, abs=1e-7)
    assert _p([a1, a2], [b1, b2], 0) == pytest.approx(1.0 - exact, abs=1e-7)


SITUATIONS = [
    ([5000, 10, 3], [10, 5000, 3]),  # a = 5000, b = 10 beside its mirror and a flat arm
    ([5000, 4990, 2, 60], [10, 12, 3, 1]),
    ([1, 2, 200, 1000, 5000], [1, 1, 150, 900, 5010]),  # widths from 1 to 1/70 in the same decision
    ([0.5, 0.5, 2, 1.5], [0.5, 3, 0.7, 0.5]),  # densities unbounded at 0 or 1
    ([154, 10, 1511, 425, 1, 9, 13, 20], [104, 17, 746, 238, 9, 15, 19, 25]),  # a K=8 bench state
    ([1, 1, 1, 1, 1, 1, 1, 300], [1, 1, 1, 1, 1, 1, 1, 250]),
]


@pytest.mark.parametrize("a, b", SITUATIONS)
def test_matches_a_large_monte_carlo_estimate(a, b):
    """Within 4.5 standard errors of 4 million seeded draws, and the candidates' probabilities sum to 1."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    k, n = len(a), 4_000_000
    rng = np.random.default_rng(2024)
    wins = np.zeros(k)
    for _ in range(8):
        wins += np.bincount(rng.beta(a, b, size=(n // 8, k)).argmax(axis=1), minlength=k)
    mc = wins / n
    p = np.array([_p(a, b, i) for i in range(k)])
    assert abs(p.sum() - 1.0) < 1e-7
    tol = 4.5 * np.sqrt(np.maximum(mc * (1 - mc), 1.0 / n) / n)
    assert (np.abs(p - mc) <= tol).all(), (p, mc, tol)


def test_a_competitor_out_of_reach_gives_0_and_a_sure_pick_1():
    assert _p([10, 5000], [5000, 10], 0) == 0.0
    assert _p([10, 5000], [5000, 10], 1) == 1.0
    assert _p([3], [4], 0) == 1.0


def test_declines_over_budget_many_candidates_and_what_is_not_a_distribution():
    assert _p([2, 3, 4], [3, 2, 9], 1, budget=10) is None
    assert _p([2.0] * 17, [3.0] * 17, 1) is None
    assert _p([2, 0.0, 4], [3, 2, 9], 1) is None
    assert _p([2, math.inf, 4], [3, 2, 9], 1) is None


def _bernoulli_table(k: int, seed: int) -> ArmTable:
    rng = np.random.default_rng(seed)
    table = ArmTable(dim=3)
    table.rows([f"s{j}" for j in range(k)])
    means = rng.uniform(0.2, 0.8, k)
    x = np.array([1.0, 0.0, 0.0])
    for step in range(40 * k):
        j = int(rng.integers(k))
        ok = bool(rng.random() < means[j])
        table.learn(j, reward=float(ok), success=ok, t=float(step), x=x)
    return table


@pytest.mark.parametrize("k", [2, 8, 16])
def test_the_pick_is_the_same_whatever_computes_its_probability(k):
    table = _bernoulli_table(k, k)
    rows = np.arange(k)
    x = np.array([1.0, 0.0, 0.0])
    quad, mc = BetaThompson(), BetaThompson(propensity="monte_carlo")
    for r in range(20):
        cq = quad.choose(Situation(table, rows, x, 40 * k, Draw("salt", f"q{r}")))
        cm = mc.choose(Situation(table, rows, x, 40 * k, Draw("salt", f"q{r}")))
        (a, b), _ = quad._distribution(Situation(table, rows, x, 40 * k, Draw("salt", f"q{r}")))
        p = beta_max_probability(a, b, cq.index)
        # Over its budget the integral declines and the decision says Monte Carlo (rare at 16 flat arms).
        assert (cq.method, cm.method) == ("quadrature" if p is not None else "monte_carlo", "monte_carlo")
        assert cq.index == cm.index
        np.testing.assert_array_equal(cq.scores, cm.scores)
        if p is not None:
            assert cq.propensity == p


def test_many_candidates_fall_back_to_monte_carlo():
    table = _bernoulli_table(64, 64)
    choice = BetaThompson().choose(Situation(table, np.arange(64), np.array([1.0, 0.0, 0.0]), 0, Draw("salt", "m")))
    assert choice.method == "monte_carlo" and choice.probabilities is not None
