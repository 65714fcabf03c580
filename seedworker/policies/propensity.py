"""Propensity of a Gaussian sampling pick by numerical integration instead of Monte Carlo.

For independent scores ``X_k ~ N(m_k, s_k^2)`` the probability that candidate ``i`` draws the highest score is

    P_i = ∫ φ(u) ∏_{j≠i} Φ((m_i - m_j + s_i u) / s_j) du,

a one-dimensional integral (condition on ``X_i = m_i + s_i u``). It is computed with the trapezoidal rule on a
uniform grid in ``u``. The integrand is smooth and vanishes at both ends, where the trapezoidal rule converges
geometrically once the step resolves the integrand's steepest factor: with the competitor that is narrowest relative
to ``i`` at ratio ``r = s_i / s_j``, the step is ``0.6 / sqrt(1 + r^2)`` (the error grows with the number of
competitors in transition at once, so the constant was set by measurement up to 64 candidates). ``Φ`` comes from a
table with linear interpolation (error below 2e-7 per factor). Measured against a reference with exact ``Φ`` and a
four times finer grid the total error stays below about 1e-6 (tests/test_fast_paths.py checks 1e-5), against a
Monte-Carlo standard error of 0.035 for 200 samples at P = 0.5. This is a numerical integral, not a closed form:
the method is reported as "quadrature", never "exact" — so the policies accept ``propensity="quadrature"`` only once
the seed.selected contract (``events.SeedSelected.propensity_method``) lists that value.

Work is kept small by leaving out competitors whose ``Φ`` stays above 1 - 1e-9 over the whole grid (they never
reach ``i``'s range) and by starting the grid where some competitor's ``Φ`` is already below 1e-9. A decision that would
still need more grid work than a Monte-Carlo estimate costs gets ``None``; the caller then uses Monte Carlo.
"""

from __future__ import annotations

import math

import numpy as np

PROPENSITY_METHODS = ("monte_carlo", "quadrature")

_U = 6.0  # the standard normal's mass beyond ±6 is 2e-9: the grid in u spans [-6, 6] at most
_T = 6.0  # Φ(-6) = 1e-9: a competitor whose Φ stays above 1 - 1e-9 on the grid is left out (1 to that accuracy)
_SPACING = 0.6  # c above (grid step c / sqrt(1 + r^2)); measured worst error 3e-7 over K = 2..64
_TABLE_N = 1 << 13
_TABLE_LO = -8.5
_TABLE_STEP = 17.0 / _TABLE_N
_table: tuple[np.ndarray, np.ndarray] | None = None
_SQRT2PI = math.sqrt(2.0 * math.pi)


def _ncdf_table() -> tuple[np.ndarray, np.ndarray]:
    global _table
    if _table is None:
        grid = _TABLE_LO + _TABLE_STEP * np.arange(_TABLE_N + 1)
        values = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in grid.tolist()])
        _table = values[:-1].copy(), np.diff(values)
    return _table


def ncdf(t: np.ndarray) -> np.ndarray:
    """Standard normal CDF, by linear interpolation in a table of 8192 steps on [-8.5, 8.5] (|error| < 2e-7)."""
    base, step = _ncdf_table()
    pos = t * (1.0 / _TABLE_STEP)
    pos -= _TABLE_LO / _TABLE_STEP
    np.clip(pos, 0.0, _TABLE_N - 1e-9, out=pos)
    at = pos.astype(np.intp)
    pos -= at  # the fraction of a step
    pos *= step[at]
    pos += base[at]
    return pos


def gaussian_max_probability(loc: np.ndarray, sd: np.ndarray, i: int, budget: int | None = None) -> float | None:
    """P(candidate ``i`` has the highest of independent normal draws), or None if the grid would cost more than
    ``budget`` Φ evaluations (default: 200 per candidate, what a 200-sample Monte-Carlo estimate draws)."""
    k = len(loc)
    if k == 1:
        return 1.0
    s_i = float(sd[i])
    if not s_i > 0.0 or np.count_nonzero(sd) < k:
        return None  # a point mass: no density to integrate against
    a = (loc[i] - loc) / sd  # competitor j's Φ argument is a_j + r_j u
    r = s_i / sd
    near = a - r * _U < _T  # j's Φ drops below 1 somewhere on the grid
    near[i] = False
    idx = np.flatnonzero(near)
    if not len(idx):
        return 1.0
    a, r = a[idx], r[idx]
    # Below the point where some competitor's Φ reaches 0 the integrand is 0: start the grid there.
    lo = max(-_U, float(((-_T - a) / r).max()))
    if lo >= _U:
        return 0.0
    r_max = float(r.max())
    points = int((_U - lo) * math.sqrt(1.0 + r_max * r_max) / _SPACING) + 2
    if points * len(idx) > (200 * k if budget is None else budget):
        return None
    step = (_U - lo) / (points - 1)
    u = np.arange(points) * step
    u += lo
    t = r[:, None] * u
    t += a[:, None]
    f = ncdf(t).prod(axis=0)
    weight = np.exp(-0.5 * u * u)
    # Trapezoidal rule; the end points carry (numerically) zero integrand, so their half weights do not matter.
    p = float(weight.dot(f)) * step / _SQRT2PI
    return min(max(p, 0.0), 1.0)
