"""Propensity of a Beta-Bernoulli Thompson pick by numerical integration instead of Monte Carlo.

For independent ``X_k ~ Beta(a_k, b_k)`` the probability that candidate ``i`` draws the highest value is

    P_i = ∫ f_i(x) ∏_{j≠i} F_j(x) dx.

numpy has no Beta CDF ``F_j``, and in ``x`` the densities are awkward to integrate: one with a < 1 or b < 1 is
unbounded at an end, one with large counts is a spike of width ~1/sqrt(n). So everything is done in the logit
``t = log(x / (1 - x))``, where the density of arm k is ``g_k(t) = exp(a t - (a + b) softplus(t) - ln B(a, b))``:
smooth, log-concave (second derivative ``-(a + b) x (1 - x)``), its mode at ``ln(a / b)``, its width near
``s = sqrt(1/a + 1/b)``, its tails exponential (rates a and b), never singular. Then:

1. Each arm's support, cut where the mass beyond is below 1e-11: concavity bounds the tail by the tangent of
   ``ln g`` at 5 widths from the mode (``_arm``, cached per (a, b): between two decisions one arm changes).
2. The integral runs over ``[L, R]``: ``L`` the highest lower end of all (below it some factor is ~0), ``R`` the
   upper end of ``i``. Competitors whose support ends below ``L`` have ``F_j = 1`` there and are left out.
3. ``[L, R]`` is cut into panels at every remaining arm's mode ± 2, 4, 6 of its widths (at most 1 in t: see
   ``_arm``), then at geometrically
   spaced points along its exponential tails (snapped to a power-of-two grid finer than the arm's width, so arms
   of similar width share break points): every panel is at most two widths of every density that lives in it,
   sharp ones included. Each panel gets an 8-point Gauss–Legendre rule.
4. ``F_j`` at the nodes is integrated on the same panels: ``F_j(L)`` (by a 48-point composite rule over the
   shorter side of j's mode, so as ``1 - ∫_L^∞`` when L is above it), plus the panels before, plus the partial
   panel (the integral of the panel's interpolating polynomial up to each node, a fixed 8x8 matrix).
5. ``P_i`` is the Gauss–Legendre sum of ``g_i ∏ F_j`` over the panels.

Measured against scipy's adaptive quadrature with its ``betainc`` (tests/test_beta_propensity.py) on 120 random
decisions (K from 2 to 64, counts up to 3e4, priors 0.5 to 2, sharp and flat posteriors mixed) the largest
difference is 1.6e-7, and there the reference is the less accurate one (a finer panelling moves this result by
2e-10); a Monte-Carlo estimate from 200 draws has a standard error up to 0.035. As for the Gaussian strategies,
this is a numerical integral and is reported as "quadrature", not "exact". A decision with more than 16
candidates, or one that would need more than ``budget`` density evaluations (default 500 per candidate: beyond
that 200 Beta draws per candidate cost less), gets ``None``; the caller then uses Monte Carlo.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-11  # tail mass cut on each side of every arm's support
_PANEL_NODES = 8  # Gauss–Legendre nodes per panel (6 left 1e-6 on 8 tied sharp arms, where panels are not shared)
_LOWER_PANELS, _LOWER_NODES = 6, 8  # the composite rule for F_j(L): 48 nodes over at most ~8 widths or a tail
# Above this many candidates the integral declines: measured on the bench's K=64 states it cost more than 200 Beta
# draws per candidate (the competitors' break points no longer share panels), and 4 in 5 exceeded the budget.
_MAX_CANDIDATES = 16
_CACHE = 1 << 15  # arms kept in _arms (a few hundred bytes each); cleared when full, results do not depend on it
_arms: dict[tuple[float, float], tuple[float, ...] | None] = {}
# Per arm (same keys, cleared with _arms): its break points, the snapped mode ± steps of its widths. They depend on
# the arm alone, and between two decisions one arm changes, so the others' come from here instead of being
# recomputed for every decision (the same floats: the same operations on the same numbers, see ``_cuts``).
_cuts: dict[tuple[float, float], np.ndarray] = {}
_rules: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_fixed: dict[str, np.ndarray] = {}


def _rule(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss–Legendre on [0, 1]: (nodes y, weights w, the (n, n + 1) matrix whose column m < n integrates the
    interpolating polynomial of values at the nodes from 0 to y_m, and whose last column is w)."""
    r = _rules.get(n)
    if r is None:
        y, w = np.polynomial.legendre.leggauss(n)
        y, w = 0.5 * (y + 1.0), 0.5 * w
        powers = np.arange(1, n + 1)
        partial = (y[:, None] ** powers / powers) @ np.linalg.inv(np.vander(y, n, increasing=True))
        r = _rules[n] = y, w, np.vstack([partial, w]).T.copy()
    return r


def _steps() -> np.ndarray:
    """Break points about a mode, in widths: every 2 up to 6, then 30% further each, to 150 (the longest tail
    for a parameter of 0.5 is ~50 widths; beyond 150 an arm needs a parameter below ~0.1, then longer panels)."""
    steps = _fixed.get("steps")
    if steps is None:
        out = [0.0, 2.0, 4.0, 6.0]
        while out[-1] < 150.0:
            out.append(out[-1] * 1.3)
        half = np.array(out)
        u = np.concatenate([-half[:0:-1], half])
        steps = _fixed["steps"] = np.vstack([np.minimum(u, 0.0), np.maximum(u, 0.0)])  # rows: below, above
        y, w, _ = _rule(_LOWER_NODES)
        p = _LOWER_PANELS
        _fixed["lower_y"] = ((np.arange(p)[:, None] + y) / p).ravel()
        _fixed["lower_w"] = np.tile(w / p, p)
    return steps


def _arm(a: float, b: float) -> tuple[float, ...] | None:
    """(mode, panel scale below and above it, lower end, upper end, a, -(a + b), -ln B(a, b), snap grid) of
    Beta(a, b) in the logit, or None for parameters that are not a distribution."""
    key = (a, b)
    v = _arms.get(key, False)
    if v is not False:
        return v
    if len(_arms) >= _CACHE:
        _arms.clear()
        _cuts.clear()
    if not (0.0 < a < math.inf and 0.0 < b < math.inf):
        _arms[key] = None
        return None
    c = a + b
    lnb = math.lgamma(a) + math.lgamma(b) - math.lgamma(c)
    mode = math.log(a / b)
    s = math.sqrt(1.0 / a + 1.0 / b)
    # ln g is concave, so it lies below its tangent at t1: the mass below tau is at most g(t1) e^(d1 (tau - t1)) / d1
    # (d1 its slope there); tau is where that bound is _EPS. Likewise above, at t2.
    t1 = mode - 5.0 * s
    e = math.exp(t1)
    d1 = a - c * e / (1.0 + e)
    l1 = a * t1 - c * math.log1p(e) - lnb
    lo = t1 + (math.log(_EPS * d1) - l1) / d1
    t2 = mode + 5.0 * s
    e = math.exp(-t2)
    d2 = a - c / (1.0 + e)
    l2 = -b * t2 - c * math.log1p(e) - lnb
    hi = t2 + (math.log(-_EPS * d2) - l2) / d2
    # The panels' scale on each side of the mode: the width, or the local one 2 widths out where the density is
    # skewed (1 / sqrt(-(ln g)'') there: Beta(3, 700) steepens to the right), and at most 1 in t: the density is
    # analytic in the strip |Im t| < pi whatever a and b (softplus has poles at ±i pi), which bounds how wide a panel
    # can be for its rule to stay accurate. Measured: Beta(0.5, 0.5) came out 2e-7 off with panels of 4, eight tied
    # Beta(3, 700) 1.3e-7 off with panels of 2 widths on the steep side.
    sides = []
    for t in (mode - 2.0 * s, mode + 2.0 * s):
        x = 1.0 / (1.0 + math.exp(-t))
        sides.append(min(s, 1.0, 1.0 / math.sqrt(c * x * (1.0 - x))))
    snap = 2.0 ** (math.floor(math.log2(min(sides))) - 2)  # between a quarter and an eighth of it: a power of two
    v = _arms[key] = (mode, *sides, lo, hi, a, -c, -lnb, snap)
    _cuts[key] = _cut(v)
    return v


def _cut(arm: tuple[float, ...]) -> np.ndarray:
    """An arm's break points: its mode plus the steps (in widths of the side they are on), snapped to its grid.
    Each point is one product ``scale * step`` (the other side's term is an exact zero), so it is the same float
    whether computed for one arm or as a row of all the rows' product."""
    cut = np.array([arm[1:3]]) @ _steps()
    cut += arm[0]
    cut /= arm[8]
    np.round(cut, out=cut)
    cut *= arm[8]
    return cut[0]


def beta_max_probability(
    a: np.ndarray, b: np.ndarray, i: int, budget: int | None = None, nodes: list | None = None
) -> float | None:
    """P(candidate ``i`` has the highest of independent Beta(a_k, b_k) draws), or None for more than 16 candidates
    or if the integral would cost more than ``budget`` density evaluations (default 500 per candidate). ``nodes``,
    if given, receives the number of panel nodes (for tests)."""
    k = len(a)
    if k == 1:
        return 1.0
    if k > _MAX_CANDIDATES:
        return None
    keys = list(zip(a.tolist(), b.tolist()))
    arms = [_arm(x, y) for x, y in keys]
    if None in arms:
        return None
    lo_all = max([p[3] for p in arms])
    me = arms[i]
    hi_i = me[4]
    if lo_all >= hi_i:
        return 0.0  # out of reach (the caller keeps a propensity above 0)
    # One row per density: i's, then each competitor whose support reaches above lo_all; _arm's columns, then where
    # its break points are kept (9, 10), and how F_j(lo_all) is integrated: from 11 over 12, as 13 + 14 * integral.
    rows = [(*me, lo_all, hi_i, lo_all, 0.0, 0.0, 0.0)]
    cuts = [_cuts[keys[i]]]
    for j, p in enumerate(arms):
        if p[4] > lo_all and j != i:
            if p[0] >= lo_all:  # lo_all below j's mode: F_j(lo_all) from j's lower end
                rows.append((*p, lo_all, min(p[4], hi_i), p[3], lo_all - p[3], 0.0, 1.0))
            else:  # above it: 1 - the mass from lo_all to j's upper end
                rows.append((*p, max(p[3], lo_all), min(p[4], hi_i), lo_all, p[4] - lo_all, 1.0, -1.0))
            cuts.append(_cuts[keys[j]])
    r = len(rows)
    if r == 1:
        return 1.0
    prm = np.array(rows)
    cut = np.array(cuts)  # each row's break points (_cut): the mode ± steps of its widths, snapped
    inner = cut[(cut > prm[:, 9:10]) & (cut < prm[:, 10:11])]
    inner.sort()
    if len(inner):
        # Snapped points shared by several arms, once: those above their predecessor (and the first above lo_all).
        # A comparison instead of np.diff(inner, prepend=lo_all) > 0, the same mask for finite floats (x - y > 0
        # exactly when x > y), without np.diff's Python-level overhead.
        keep = np.empty(len(inner), dtype=bool)
        keep[0] = inner[0] > lo_all
        np.greater(inner[1:], inner[:-1], out=keep[1:])
        inner = inner[keep]
    edges = np.concatenate([[lo_all], inner, [hi_i]])
    width = edges[1:] - edges[:-1]  # np.diff(edges), without its overhead
    y, w, integrate = _rule(_PANEL_NODES)
    ly, lw = _fixed["lower_y"], _fixed["lower_w"]
    n, m = _PANEL_NODES, len(ly)
    panels = len(width)
    if nodes is not None:
        nodes.append(panels * n)
    if r * (m + panels * n) > (500 * k if budget is None else budget):
        return None
    # Every row's logit points: first the m nodes of its F_j(lo_all) rule, then the shared panel nodes.
    t = np.empty((r, m + panels * n))
    np.multiply(prm[:, 12:13], ly, out=t[:, :m])
    t[:, :m] += prm[:, 11:12]
    g = t[:, m:].reshape(r, panels, n)
    np.multiply(width[:, None], y, out=g[0])
    g[0] += edges[:-1, None]
    g[1:] = g[0]
    # ln g = a t - (a + b) softplus(t) - ln B; softplus(t) = log1p(e^t), exact to rounding where e^t is finite
    # (t is capped at 700, far beyond any support: there the density is 0 either way).
    # The panel nodes are the same for every row, so their softplus is computed once (row 0's) and each row's
    # -(a + b) multiplies that; the F_j(lo_all) nodes differ per row. The same elementwise operations on the same
    # numbers as softplus over the whole matrix (tests/test_beta_fast_paths.py compares the two bit for bit).
    sp = np.empty_like(t)
    lower = np.minimum(t[:, :m], 700.0)
    np.exp(lower, out=lower)
    np.log1p(lower, out=lower)
    shared = np.minimum(t[0, m:], 700.0)
    np.exp(shared, out=shared)
    np.log1p(shared, out=shared)
    np.multiply(lower, prm[:, 6:7], out=sp[:, :m])
    np.multiply(shared, prm[:, 6:7], out=sp[:, m:])
    t *= prm[:, 5:6]
    t += sp
    t += prm[:, 7:8]
    np.exp(t, out=t)
    start = t[1:, :m].dot(lw)
    start *= prm[1:, 12]
    start *= prm[1:, 14]
    start += prm[1:, 13]
    # Densities times panel widths (the panels' rules then need no scaling): each width repeated over its n nodes,
    # one 2-d product over the rows instead of a broadcast over (r, panels, n) with an inner loop of n.
    t[:, m:] *= np.repeat(width, n)
    c = (g[1:].reshape(-1, n) @ integrate).reshape(r - 1, panels, n + 1)
    whole = c[:, :, n]
    before = whole.cumsum(axis=1)  # the method: np.cumsum's Python-level dispatch costs more at this size
    before -= whole
    before += start[:, None]
    cdf = c[:, :, :n]
    cdf += before[:, :, None]
    f = np.multiply.reduce(cdf, axis=0)
    f *= g[0]
    p = float(f.dot(w).sum())
    return 1.0 if p > 1.0 - 1e-9 else max(p, 0.0)
