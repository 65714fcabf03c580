"""Propensity of a Gaussian sampling pick by numerical integration instead of Monte Carlo.

For independent scores ``X_k ~ N(m_k, s_k^2)`` the probability that candidate ``i`` draws the highest score is

    P_i = ∫ φ(u) ∏_{j≠i} Φ((m_i - m_j + s_i u) / s_j) du,

a one-dimensional integral (condition on ``X_i = m_i + s_i u``). It is computed with the trapezoidal rule on a
uniform grid in ``u`` over [-6, 6] (φ's mass beyond 6 is added back; below -6 at most 1e-9 is left out).
The integrand is smooth, where the trapezoidal rule converges geometrically once the step resolves the integrand's
steepest factor: with the competitor that is narrowest relative to ``i`` at ratio ``r = s_i / s_j``, the step is at
most ``0.6 / sqrt(1 + r^2)`` (the error grows with the number of competitors in transition at once, so the constant
was set by measurement up to 64 candidates; steps come from a fixed ladder, so the nodes and their weights are
cached). ``Φ`` comes from a table with linear interpolation (error below 2e-7 per factor). Measured against a
reference with exact ``Φ`` on a fine grid the total error stays below about 1e-6 (tests/test_fast_paths.py checks
1e-5), against a Monte-Carlo standard error of 0.035 for 200 samples at P = 0.5. This is a numerical integral, not a
closed form: the method is reported as "quadrature", never "exact", and the policies accept it only because the
seed.selected contract (``events.SeedSelected.propensity_method``) lists that value.

Work is kept small by leaving out competitors whose ``Φ`` stays above 1 - 1e-9 over the whole grid (they never
reach ``i``'s range), by starting the grid where some competitor's ``Φ`` is already below 1e-9, and by computing
every competitor's table position at every node as one matrix product. A decision that would still need more grid
work than a Monte-Carlo estimate costs gets ``None``; the caller then uses Monte Carlo.
"""

from __future__ import annotations

import math

import numpy as np

PROPENSITY_METHODS = ("monte_carlo", "quadrature")

_U = 6.0  # the standard normal's mass beyond 6 is 1e-9 per side: the grid in u spans [-6, 6] at most
# φ's mass beyond U, added back: the integrand there is at most φ, and is φ wherever i's high draws win (so the
# error is below 1e-9 either way, and usually 0).
_UPPER_TAIL = 0.5 * math.erfc(_U / math.sqrt(2.0))
_T = 6.0  # Φ(-6) = 1e-9: a competitor whose Φ stays above 1 - 1e-9 on the grid is left out (1 to that accuracy)
_SPACING = 0.6  # c above (grid step c / sqrt(1 + r^2)); measured worst error 3e-7 over K = 2..64
_PER_OCTAVE = 8  # grid steps come from the ladder _SPACING * 2**(-n / 8): at most 9% finer than needed
_TABLE_N = 1 << 13
_TABLE_LO = -8.5
_TABLE_STEP = 17.0 / _TABLE_N
_SMALL = 16  # up to this many candidates the pruning of far competitors costs more numpy calls than it saves
_table: tuple[np.ndarray, np.ndarray] | None = None
_grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_SQRT2PI = math.sqrt(2.0 * math.pi)


def _ncdf_table() -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of Φ in table steps: Φ ≈ c0[g] + pos * c1[g] at position ``pos`` in [g, g + 1)
    (``c1`` is the step to the next point, ``c0`` the line's value at position 0, so no fraction is needed)."""
    global _table
    if _table is None:
        grid = _TABLE_LO + _TABLE_STEP * np.arange(_TABLE_N + 1)
        values = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in grid.tolist()])
        c1 = np.diff(values)
        _table = values[:-1] - np.arange(_TABLE_N) * c1, c1
    return _table


def ncdf(t: np.ndarray) -> np.ndarray:
    """Standard normal CDF, by linear interpolation in a table of 8192 steps on [-8.5, 8.5] (|error| < 2e-7)."""
    pos = t * (1.0 / _TABLE_STEP)
    pos -= _TABLE_LO / _TABLE_STEP
    np.clip(pos, 0.0, _TABLE_N - 1e-9, out=pos)
    return _interpolate(pos)


def _interpolate(pos: np.ndarray) -> np.ndarray:
    """Φ at table positions ``pos`` (in steps from the table's start, at least 0); overwrites ``pos``.

    A position beyond the table's end uses the last step's line: its slope is φ(8.5) times a step, 4e-19, so even
    10^7 steps beyond the end (where Φ is 1) it is off by less than 1e-11."""
    c0, c1 = _ncdf_table()
    at = pos.astype(np.intp)
    pos *= c1.take(at, mode="clip")
    pos += c0.take(at, mode="clip")
    return pos


def _grid(level: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    """For the step ``h`` of this ladder level, the first ``points`` nodes ``u = U, U - h, U - 2h, ...``: as a
    (2, points) matrix that turns a competitor's row ``(r, a - LO)`` into the table positions of ``Φ(a + r u)``, and
    as their trapezoid weights ``h φ(u)``. Cached per level down to below ``-U``; the matrix is the transpose of a
    C-ordered (n, 2) array, so its first columns are one contiguous block for the matrix product."""
    g = _grids.get(level)
    if g is None:
        step = _SPACING * 2.0 ** (-level / _PER_OCTAVE)
        u = _U - step * np.arange(int(2.0 * _U / step) + 2)
        w = np.exp(-0.5 * u * u) * (step / _SQRT2PI)
        w[0] *= 0.5  # the trapezoid's end at U (the last node's weight barely matters: the integrand is ~0 there)
        g = _grids[level] = np.column_stack([u, np.ones(len(u))]) / _TABLE_STEP, w
    return g[0][:points].T, g[1][:points]


def gaussian_max_probability(
    loc: np.ndarray | list[float], sd: np.ndarray | list[float], i: int, budget: int | None = None
) -> float | None:
    """P(candidate ``i`` has the highest of independent normal draws), or None if the grid would cost more than
    ``budget`` Φ evaluations (default: 200 per candidate, what a 200-sample Monte-Carlo estimate draws)."""
    k = len(loc)
    if k == 1:
        return 1.0
    s_i = float(sd[i])
    if isinstance(loc, list):  # Python floats already (few candidates): the same checks, then the small path
        if not s_i > 0.0 or 0.0 in sd:
            return None
        return _small(loc, sd, i, s_i, k, budget)
    if not s_i > 0.0 or np.count_nonzero(sd) < k:
        return None  # a point mass: no density to integrate against
    if k <= _SMALL:
        return _small(loc.tolist(), sd.tolist(), i, s_i, k, budget)
    # Row j is (r_j, a_j): competitor j's Φ argument is a_j + r_j u, a_j = (m_i - m_j) / s_j, r_j = s_i / s_j.
    ra = np.empty((k, 2))
    r, a = ra[:, 0], ra[:, 1]
    np.divide(s_i, sd, out=r)
    np.subtract(loc[i], loc, out=a)
    a /= sd
    if k > _SMALL:
        near = (a - r * _U < _T).nonzero()[0]  # j's Φ drops below 1 somewhere on the grid (i itself is near)
        if len(near) == 1:
            return 1.0
        if len(near) < k:
            i = int(np.count_nonzero(near < i))  # i's place among the near ones
            ra = ra[near]
            r, a = ra[:, 0], ra[:, 1]
    # Below the point where some competitor's Φ reaches 0 the integrand is 0: start the grid there (i's own term,
    # a = 0 and r = 1, gives -T < -U and so never moves the start).
    start = np.divide(-_T - a, r)
    if len(start) <= _SMALL:
        listed = start.tolist()
        lo = max(listed)
        if not math.isfinite(sum(listed)):
            return None  # not a distribution this can integrate
    else:
        lo = float(np.maximum.reduce(start))
        if lo != lo:
            return None
    if lo >= _U:
        return 0.0  # out of reach
    # A far competitor: with a at most 40 + U r, Φ(a + r u) is still 1 on the grid (u >= -U), and positions stay small.
    np.minimum(a, 40.0 + _U * r, out=a)
    ra[i] = 0.0, -_TABLE_LO  # Φ(0 + 8.5) = 1: i is not its own competitor
    r_max = max(r.tolist()) if len(r) <= _SMALL else float(np.maximum.reduce(r))
    level = max(0, math.ceil(_PER_OCTAVE * 0.5 * math.log2(1.0 + r_max * r_max)))
    step = _SPACING * 2.0 ** (-level / _PER_OCTAVE)
    points = int((_U - max(lo, -_U)) / step) + 2
    if points * (len(r) - 1) > (200 * k if budget is None else budget):
        return None
    to_table, w = _grid(level, points)
    # Table positions of every competitor's Φ argument at every node, in one product. The grid starts at most one
    # step below lo, where every argument is above -T - r h > -8.5: no position falls below the table.
    a -= _TABLE_LO
    f = np.multiply.reduce(_interpolate(ra.dot(to_table)), axis=0)
    # Trapezoidal rule, plus φ's mass beyond U.
    p = float(w.dot(f)) + _UPPER_TAIL
    # Below -U the integrand is left out (at most 1e-9): a pick no competitor can reach comes out as 1 - 1e-9.
    return 1.0 if p > 1.0 - 1e-8 else max(p, 0.0)


def _small(loc: list[float], sd: list[float], i: int, s_i: float, k: int, budget: int | None) -> float | None:
    """``gaussian_max_probability`` for at most ``_SMALL`` candidates: the rows ``(r_j, a_j)``, the grid's start
    and step on Python floats (the same IEEE operations as the array code, so the same values), numpy only for the
    grid itself. About half the numpy calls: at this size each costs more than the arithmetic."""
    m_i = loc[i]
    r = [s_i / s for s in sd]
    a = [(m_i - m) / s for m, s in zip(loc, sd)]
    start = [(-_T - aj) / rj for aj, rj in zip(a, r)]
    lo = max(start)
    if not math.isfinite(sum(start)):
        return None  # not a distribution this can integrate
    if lo >= _U:
        return 0.0  # out of reach
    # As the array code: a far competitor's a capped at 40 + U r; i is not its own competitor (Φ(0 + 8.5) = 1);
    # the largest competitor ratio sets the step; then a moves to table coordinates.
    a = [min(aj, 40.0 + _U * rj) for aj, rj in zip(a, r)]
    r[i], a[i] = 0.0, -_TABLE_LO
    r_max = max(r)
    level = max(0, math.ceil(_PER_OCTAVE * 0.5 * math.log2(1.0 + r_max * r_max)))
    step = _SPACING * 2.0 ** (-level / _PER_OCTAVE)
    points = int((_U - max(lo, -_U)) / step) + 2
    if points * (k - 1) > (200 * k if budget is None else budget):
        return None
    to_table, w = _grid(level, points)
    ra = np.array([(rj, aj - _TABLE_LO) for rj, aj in zip(r, a)])
    f = np.multiply.reduce(_interpolate(ra.dot(to_table)), axis=0)
    p = float(w.dot(f)) + _UPPER_TAIL
    return 1.0 if p > 1.0 - 1e-8 else max(p, 0.0)
