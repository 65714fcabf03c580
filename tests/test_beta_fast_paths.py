"""beta_propensity's faster paths against the code they replaced: the same floats, bit for bit, on random states
(sharp and flat posteriors, ties, parameters below one, budgets that decline). The propensity is logged with every
decision, so a faster integral must not move it even in the last bit."""

from __future__ import annotations

import numpy as np

import seedworker.core.policies.beta_propensity as B
from seedworker.core.policies.beta_propensity import beta_max_probability


def _beta_reference(
    a: np.ndarray, b: np.ndarray, i: int, budget: int | None = None, nodes: list | None = None
) -> float | None:
    """The array code of beta_max_probability as of contract 1.3 (before its break points were cached per arm and
    the shared panel nodes' softplus computed once): the reference the current code must equal bit for bit.

    P(candidate ``i`` has the highest of independent Beta(a_k, b_k) draws), or None for more than 16 candidates
    or if the integral would cost more than ``budget`` density evaluations (default 500 per candidate). ``nodes``,
    if given, receives the number of panel nodes (for tests)."""
    k = len(a)
    if k == 1:
        return 1.0
    if k > B._MAX_CANDIDATES:
        return None
    arms = [B._arm(x, y) for x, y in zip(a.tolist(), b.tolist())]
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
    for j, p in enumerate(arms):
        if p[4] > lo_all and j != i:
            if p[0] >= lo_all:  # lo_all below j's mode: F_j(lo_all) from j's lower end
                rows.append((*p, lo_all, min(p[4], hi_i), p[3], lo_all - p[3], 0.0, 1.0))
            else:  # above it: 1 - the mass from lo_all to j's upper end
                rows.append((*p, max(p[3], lo_all), min(p[4], hi_i), lo_all, p[4] - lo_all, 1.0, -1.0))
    r = len(rows)
    if r == 1:
        return 1.0
    prm = np.array(rows)
    cut = prm[:, 1:3] @ B._steps()  # u times the scale of u's side of the mode
    cut += prm[:, 0:1]
    cut /= prm[:, 8:9]
    np.round(cut, out=cut)
    cut *= prm[:, 8:9]
    inner = cut[(cut > prm[:, 9:10]) & (cut < prm[:, 10:11])]
    inner.sort()
    if len(inner):
        inner = inner[np.diff(inner, prepend=lo_all) > 0.0]  # snapped points shared by several arms, once
    edges = np.concatenate([[lo_all], inner, [hi_i]])
    width = np.diff(edges)
    y, w, integrate = B._rule(B._PANEL_NODES)
    ly, lw = B._fixed["lower_y"], B._fixed["lower_w"]
    n, m = B._PANEL_NODES, len(ly)
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
    sp = np.minimum(t, 700.0)
    np.exp(sp, out=sp)
    np.log1p(sp, out=sp)
    t *= prm[:, 5:6]
    sp *= prm[:, 6:7]
    t += sp
    t += prm[:, 7:8]
    np.exp(t, out=t)
    start = t[1:, :m].dot(lw)
    start *= prm[1:, 12]
    start *= prm[1:, 14]
    start += prm[1:, 13]
    g *= width[:, None]  # densities times panel widths: the panels' rules then need no scaling
    c = (g[1:].reshape(-1, n) @ integrate).reshape(r - 1, panels, n + 1)
    whole = c[:, :, n]
    before = np.cumsum(whole, axis=1)
    before -= whole
    before += start[:, None]
    cdf = c[:, :, :n]
    cdf += before[:, :, None]
    f = np.multiply.reduce(cdf, axis=0)
    f *= g[0]
    p = float(f.dot(w).sum())
    return 1.0 if p > 1.0 - 1e-9 else max(p, 0.0)


def _states(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k = int(rng.integers(1, 18))
        kind = rng.random()
        if kind < 0.5:  # bandit-like: counts of successes and failures on a Beta(1, 1) prior
            n = rng.integers(0, int(rng.choice([10, 300, 3000, 30000])) + 1, k)
            s = rng.binomial(n, rng.uniform(0.05, 0.95, k))
            a, b = 1.0 + s, 1.0 + n - s
        elif kind < 0.8:  # any positive parameters, flat to sharp, some below one
            a = np.exp(rng.uniform(np.log(0.3), np.log(5e4), k))
            b = np.exp(rng.uniform(np.log(0.3), np.log(5e4), k))
        else:  # ties and near-ties
            a = np.full(k, float(rng.integers(1, 500)))
            b = np.full(k, float(rng.integers(1, 500)))
            j = int(rng.integers(k))
            a[j] += float(rng.integers(0, 3))
        yield np.asarray(a, float), np.asarray(b, float), int(rng.integers(k))


def test_beta_propensity_equals_the_array_code_it_replaced():
    for a, b, i in _states(11, 1500):
        for budget in (None, 400):
            nodes, ref_nodes = [], []
            got = beta_max_probability(a, b, i, budget, nodes)
            assert got == _beta_reference(a, b, i, budget, ref_nodes), (a.tolist(), b.tolist(), i, budget)
            assert nodes == ref_nodes


def test_beta_propensity_does_not_depend_on_what_the_caches_hold():
    states = list(_states(12, 200))
    first = [beta_max_probability(a, b, i) for a, b, i in states]
    B._arms.clear()
    assert [beta_max_probability(a, b, i) for a, b, i in reversed(states)] == first[::-1]
