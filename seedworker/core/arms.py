"""Per-arm sufficient statistics of one blueprint, updated incrementally.

An arm is (blueprint_id, seed_id). The statistics belong here, not to a strategy, so every strategy reads the same
state and switching strategy keeps what was learned.

Recency. With a half-life ``h`` (seconds of *event* time), an outcome observed at time ``t_i`` weighs
``2 ** ((t_i - T) / h)`` where ``T`` is the newest outcome time the arm has seen. The sums are kept relative to that
reference: a newer outcome rescales the sums and moves ``T``, an older one enters with a weight below one. Either way
the result is ``sum_i 2 ** ((t_i - T) / h) * s_i`` — the newest outcome weighs most and the order in which outcomes
arrive does not matter, so a replay reproduces the live state. Raw (undecayed) sums are kept beside the decayed ones.
Without a half-life every weight is one, so the decayed count, reward, squared-reward and success sums *are* the raw
ones: those columns are then the same arrays (one update instead of two, and they cannot drift apart).

Contextual statistics (disjoint ridge regression per arm): ``A = Lam + G`` with ``G = sum w x x^T``, ``b = sum w r x``
and ``Lam`` the prior's diagonal precision: ``ridge`` for the first coordinate (the feature map's bias) and
``feature_ridge`` for each feature (by default the same). Under the prior ``theta ~ N(0, sigma^2 Lam^-1)`` standardized
features add ``sigma^2 * features / feature_ridge`` to the prior variance of a context's predicted reward, so many
correlated features may want a larger ``feature_ridge`` (breast cancer's 30 in bench/contextual.py: features / 3)
where a few strong ones want a small one (the simulator's contextual scenario: 1 or less); no fixed default serves
both (see the README), and an estimate from the data would make the model depend on the order outcomes arrive in.
``A^-1`` is maintained by Sherman–Morrison on each outcome; when decay rescales ``G`` the inverse is recomputed (the
prior does not decay, so a rescaled ``A`` is not a multiple of the old one). ``G`` itself is only needed for that
re-inversion, so without a half-life its updates are deferred (see ``gram``).

The blueprint's pooled within-arm reward variance (the exploration scale of every strategy) is kept as two running
totals updated in O(1) per outcome, so reading it does not re-sum every arm. With a half-life it is read from the
decayed sums instead. Reads of an arm's decayed statistics (counts, and the linear model in ``linear_model``) are
seen from the blueprint's clock, so an arm that stops being chosen loses confidence as time passes.

Change detection (``detect=True``, see ``_observe``): each arm's rewards since the blueprint's last detected change
form its *segment*; a GLR test on every new outcome restarts every segment when one arm's mean moved. Unlike the
sums above, a segment depends on the order outcomes are folded in (it is a sequence), so it is exact under a replay
in fold order, not under any order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_SCALARS = (
    "pulls",  # outcomes learned (raw count)
    "reward_sum",
    "reward_sq_sum",
    "success_sum",
    "w",  # decayed weight sum
    "w_reward",
    "w_reward_sq",
    "w_success",
    "w_memory",
    "w_latency",
    "t_ref",  # newest outcome time (epoch seconds) the decayed sums are relative to
    "selections",
    "last_selected",
    "prior_w",  # warm-start pseudo-count
    "prior_mean",
    "lin_w",  # decayed weight of the outcomes that carried a context (the linear model's sample size)
    "lin_sq",  # their decayed sum of squared rewards: with b and theta it gives the ridge residual
    "seg_n",  # outcomes since the blueprint's last detected change (raw counts: the detector's segment)
    "seg_sum",
    "seg_sq",
)
_MATRICES = ("gram", "a_inv", "b", "theta")
# Resource measurements, for reporting only (no strategy reads them; the constraint check reads the decayed
# w_memory / w_latency): per arm the outcomes measured, then the raw sum and sum of squares of each of these.
RESOURCES = ("memory_mb", "latency_ms", "throughput")
_RESOURCE_COLS = 1 + 2 * len(RESOURCES)
Prior = tuple[float, float] | None  # warm start of a new seed: (pseudo_count, mean)
# Without a half-life these decayed columns equal the raw ones, so they are the same arrays.
# Columns added later, and the column an older saved state approximates them with (the linear model's sums by
# the arm's: equal when every outcome carried a context; the segment by the whole history: no change detected yet).
_LATER = {"lin_w": "w", "lin_sq": "w_reward_sq", "seg_n": "pulls", "seg_sum": "reward_sum", "seg_sq": "reward_sq_sum"}
_UNDECAYED = {"w": "pulls", "w_reward": "reward_sum", "w_reward_sq": "reward_sq_sum", "w_success": "success_sum"}
# Deferred Gram updates (no half-life) of an arm are folded in once it has this many: memory stays bounded and the
# fold (one small matrix product) stays a few microseconds, so it never stands out in the latency of one outcome.
_GRAM_BATCH = 32
# Noise prior of a linear model, in pseudo-outcomes at the blueprint's pooled reward variance: it stands in for the
# residual variance until the arm's own residuals outweigh it (see ``linear_model``).
_NOISE_PRIOR = 2.0


# Change detection (``detect=True``): each arm keeps its rewards since the blueprint's last detected change, at most
# _HISTORY of them (then the older half is dropped: the test looks at a long recent window, not the whole past), and
# a split is only considered with at least _MIN_SIDE outcomes on either side of it.
_HISTORY = 1000
_MIN_SIDE = 5
# The test's confidence: a false alarm in a segment with probability at most about _DETECT_DELTA. Chosen on
# bench/regret.py's streams over 100 random seeds held out from the benchmark's 20 (seeds 20-119), among 0.01,
# 0.02, 0.05, 0.1, 0.2 and 0.5: 0.01 reacted late to gradual drift (geometric mean of the regret ratios to the best
# tuned peer 0.776), 0.05-0.5 gave 0.727-0.732, and 0.2 was the lowest over all 120 seeds (0.726). The price is
# measured as well: over 30,000 stationary decisions one run in six restarted once (none at 0.01), +4 accuracy
# points of regret on ~21.
_DETECT_DELTA = 0.2
_FEW = 16  # up to this many seeds a sum over them is cheaper on Python floats (as policies.base.SMALL)
_SPLITS = np.arange(_HISTORY + 1, dtype=float)  # candidate split positions s, shared by every test
_outer = np.multiply.outer


class ArmTable:
    """Columns of statistics for the arms of one blueprint; row i is seed ``seed_ids[i]``."""

    def __init__(
        self,
        *,
        dim: int,
        ridge: float = 1.0,
        feature_ridge: float | None = None,
        half_life_s: float | None = None,
        capacity: int = 8,
        detect: bool = False,
    ):
        self.dim = dim
        self.ridge = ridge
        # None: the same precision as the bias (one ridge for every coordinate, as before per-feature precisions).
        self.feature_ridge = ridge if feature_ridge is None else feature_ridge
        self._precision = np.full(dim, self.feature_ridge)
        self._precision[0] = ridge
        self.half_life_s = half_life_s
        self.detect = detect
        self.changes = 0  # changes detected (each one restarted every arm's segment)
        self._history: list[np.ndarray] = []  # per arm: rewards of the current segment (detect only)
        self._hist_n: list[int] = []
        self.seed_ids: list[str] = []
        self.index: dict[str, int] = {}
        self.clock = -math.inf  # newest outcome time seen by any arm of this blueprint
        self.pooled_n = 0.0  # outcomes over all arms
        self.pooled_m2 = 0.0  # sum over arms of the squared deviations from the arm's mean (Welford, per outcome)
        self._priors = 0  # seeds with a warm-start prior: reads skip the prior terms while there are none
        self._pending: list[list[np.ndarray]] = []  # per arm: contexts whose x x^T is not yet in the Gram matrix
        self._pending_n = 0
        self._every: np.ndarray | None = None
        self._alloc(capacity)

    # -- storage -------------------------------------------------------------------------------------------------
    def _alloc(self, capacity: int) -> None:
        self._pending += [[] for _ in range(capacity - len(self._pending))]
        if self.detect:
            self._history += [np.empty(_HISTORY) for _ in range(capacity - len(self._history))]
            self._hist_n += [0] * (capacity - len(self._hist_n))
        old = {name: getattr(self, name, None) for name in (*_SCALARS, "a_inv", "b", "theta")}
        old["gram"] = getattr(self, "_gram", None)
        n = len(self.seed_ids)
        decays = self.half_life_s is not None
        for name in _SCALARS:
            if not decays and name in _UNDECAYED:
                continue
            col = np.zeros(capacity)
            if name in ("t_ref", "last_selected"):
                col[:] = -np.inf
            if old[name] is not None:
                col[:n] = old[name][:n]
            setattr(self, name, col)
        if not decays:
            for name, raw in _UNDECAYED.items():
                setattr(self, name, getattr(self, raw))
        d = self.dim
        self._gram = np.zeros((capacity, d, d))
        self.a_inv = np.tile(np.diag(1.0 / self._precision), (capacity, 1, 1))
        self.b = np.zeros((capacity, d))
        self.theta = np.zeros((capacity, d))
        # Derived from lin_sq, lin_w, b and theta after every change of an arm's linear model (not persisted:
        # from_dict recomputes them): its penalized residual sum of squares and its weight plus the noise prior, so
        # a decision reads the noise estimate with two lookups (see ``linear_model``).
        derived = [getattr(self, name, None) for name in ("_lin_rss", "_lin_dof")]
        self._lin_rss = np.zeros(capacity)
        self._lin_dof = np.full(capacity, self._dof(0.0))
        if derived[0] is not None:
            self._lin_rss[:n], self._lin_dof[:n] = (v[:n] for v in derived)
        for name in _MATRICES:
            if old[name] is not None:
                getattr(self, "_gram" if name == "gram" else name)[:n] = old[name][:n]
        old_resources = getattr(self, "resources", None)
        self.resources = np.zeros((capacity, _RESOURCE_COLS))
        if old_resources is not None:
            self.resources[:n] = old_resources[:n]
        self._resource_view = memoryview(self.resources).cast("B").cast("d")  # flat: plain float item updates
        # Scalar updates go through memoryviews: item access on them is plain float arithmetic, without the
        # numpy-scalar boxing that makes ``col[i] += v`` cost several times more. Same IEEE operations, same values.
        self._learn_views = tuple(
            memoryview(getattr(self, name))
            for name in (
                "pulls",
                "reward_sum",
                "reward_sq_sum",
                "success_sum",
                "w",
                "w_reward",
                "w_reward_sq",
                "w_success",
                "w_memory",
                "w_latency",
                "t_ref",
            )
        )
        self._select_views = memoryview(self.selections), memoryview(self.last_selected)
        self._linear_views = tuple(
            memoryview(getattr(self, name)) for name in ("lin_w", "lin_sq", "_lin_rss", "_lin_dof")
        )
        # Per arm, views of its A^-1, b and theta rows: indexing the (capacity, d, d) arrays anew for every outcome
        # cost a view object each time.
        self._linear_rows = list(zip(self.a_inv, self.b, self.theta))

    def __len__(self) -> int:
        return len(self.seed_ids)

    def rows(self, seed_ids: list[str], prior: Prior | Callable[[], Prior] = None) -> np.ndarray:
        """Row numbers of these seeds, adding unknown ones (optionally warm-started with (pseudo_count, mean)).

        ``prior`` may also be a function returning it: it is then called only when a seed is new (the warm-start
        prior sums the whole table, which a decision over known seeds does not need)."""
        if seed_ids == self.seed_ids:
            return self.every
        index = self.index
        try:
            return np.array([index[s] for s in seed_ids], dtype=np.intp)
        except KeyError:
            if callable(prior):
                prior = prior()
            for s in seed_ids:
                if s not in index:
                    self._add(s, prior)
            if seed_ids == self.seed_ids:
                return self.every
            return np.array([index[s] for s in seed_ids], dtype=np.intp)

    @property
    def every(self) -> np.ndarray:
        """The rows of every seed in table order (read-only, one array until a seed is added): a decision over all
        of a blueprint's seeds, the usual case, gets this array, and reads such as ``linear_fit`` then take the
        columns as they are instead of gathering them (see ``is_every``)."""
        every = self._every
        if every is None or len(every) != len(self.seed_ids):
            every = self._every = np.arange(len(self.seed_ids), dtype=np.intp)
            every.setflags(write=False)
        return every

    def is_every(self, rows: np.ndarray) -> bool:
        """Whether ``rows`` is ``every``: all seeds, in table order."""
        return rows is self._every and len(rows) == len(self.seed_ids)

    def _add(self, seed_id: str, prior: tuple[float, float] | None) -> None:
        i = len(self.seed_ids)
        if i == len(self.pulls):
            self._alloc(2 * i)
        self.seed_ids.append(seed_id)
        self.index[seed_id] = i
        if prior is not None:
            self.prior_w[i], self.prior_mean[i] = prior
            self._priors += 1

    def blueprint_prior(self, pseudo_count: float) -> tuple[float, float] | None:
        """Warm start for a new seed: the blueprint's pooled mean reward, worth ``pseudo_count`` outcomes."""
        n = len(self)
        total = self.pulls[:n].sum()
        if pseudo_count <= 0 or total == 0:
            return None
        return pseudo_count, float(self.reward_sum[:n].sum() / total)

    # -- learning ------------------------------------------------------------------------------------------------
    def select(self, i: int, t: float) -> None:
        selections, last = self._select_views
        selections[i] += 1
        if t > last[i]:
            last[i] = t

    def learn(
        self,
        i: int,
        *,
        reward: float,
        success: bool,
        t: float,
        memory_mb: float = 0.0,
        latency_ms: float = 0.0,
        x: np.ndarray | None = None,
    ) -> None:
        """Fold one outcome observed at event time ``t`` (epoch seconds) into arm ``i``."""
        pulls, rsum, rsq, succ, w, w_reward, w_reward_sq, w_success, w_memory, w_latency, t_ref = self._learn_views
        n0, s0 = pulls[i], rsum[i]
        n1, s1 = n0 + 1.0, s0 + reward
        pulls[i], rsum[i] = n1, s1
        rsq[i] += reward * reward
        succ[i] += success
        if n0 > 0.0:  # Welford: the pooled sum of squared deviations grows by (r - old mean)(r - new mean)
            self.pooled_m2 += (reward - s0 / n0) * (reward - s1 / n1)
        self.pooled_n += 1.0
        weight = 1.0
        h = self.half_life_s
        if h is None:
            # w, w_reward, w_reward_sq and w_success are the raw columns (weight 1): already updated above.
            if t > t_ref[i]:
                t_ref[i] = t
            w_memory[i] += memory_mb
            w_latency[i] += latency_ms
        else:
            ref = t_ref[i]
            if ref == -math.inf:
                t_ref[i] = t
            elif t > ref:
                self._rescale(i, 2.0 ** (-(t - ref) / h))
                t_ref[i] = t
            else:
                weight = 2.0 ** ((t - ref) / h)
            w[i] += weight
            w_reward[i] += weight * reward
            w_reward_sq[i] += weight * reward * reward
            w_success[i] += weight * success
            w_memory[i] += weight * memory_mb
            w_latency[i] += weight * latency_ms
        if t > self.clock:
            self.clock = t
        if x is not None and weight > 0.0:
            self._learn_linear(i, x, reward, weight)
        if self.detect:
            self._observe(i, reward)

    # -- change detection ------------------------------------------------------------------------------------------
    def _observe(self, i: int, reward: float) -> None:
        """Add an outcome to arm ``i``'s segment and test the segment for a change in its mean.

        The test is the generalized likelihood ratio of "one Gaussian mean" against "the mean changed after the
        s-th outcome", maximized over s, with the noise variance unknown and equal on both sides (so it needs no
        reward scale: multiplying every reward by a constant leaves it unchanged). For n outcomes with total
        squared deviation S0 and a split s whose two means differ, the within-segments deviation is
        S1(s) = S0 - n C_s^2 / (s (n - s)), where C_s is the cumulative sum of the centred rewards up to s, and the
        log-likelihood ratio is (n/2) log(S0 / S1). A change is declared above beta(n) = log(3 n^1.5 / delta), the
        threshold of Besson, Kaufmann, Maillard & Seznec (2020) for GLR-klUCB, whose n^1.5 pays for testing every
        split of every prefix. On a change every arm restarts its segment (their "global restart"): a change in
        one seed's quality usually reorders the others, and re-exploring six seeds is cheap.

        The test depends on the order outcomes are folded in (the segment is a sequence), so a replay that folds
        the same outcomes in the same order detects the same changes.
        """
        self.seg_n[i] += 1.0
        self.seg_sum[i] += reward
        self.seg_sq[i] += reward * reward
        buf = self._history[i]
        n = self._hist_n[i]
        if n == _HISTORY:
            keep = _HISTORY // 2
            buf[:keep] = buf[n - keep : n]
            n = keep
        buf[n] = reward
        n += 1
        self._hist_n[i] = n
        if n >= 2 * _MIN_SIDE and self._change_point(buf[:n]) is not None:
            self._restart()

    @staticmethod
    def _change_point(r: np.ndarray) -> int | None:
        """The most likely split of ``r`` (outcomes before it) if the GLR test declares a change there, else None."""
        n = len(r)
        m = float(r.sum()) / n
        c = r - m  # centred first: the deviations of rewards far from 0 keep their precision
        s0 = float(c.dot(c))
        # Constant rewards leave only rounding noise in the deviations (about 1e-17 of their magnitude): no change.
        if s0 <= 1e-24 * n * m * m or s0 == 0.0:
            return None
        cs = np.cumsum(c)[_MIN_SIDE - 1 : n - _MIN_SIDE]
        split = _SPLITS[_MIN_SIDE : n - _MIN_SIDE + 1]
        cs *= cs
        cs /= split * (n - split)
        j = int(cs.argmax())
        s1 = max(s0 - float(cs[j]) * n, s0 * 1e-12)  # a split into two constant runs: a likelihood ratio of 1e12
        if 0.5 * n * math.log(s0 / s1) > math.log(3.0 * n**1.5 / _DETECT_DELTA):
            return j + _MIN_SIDE
        return None

    def _restart(self) -> None:
        # Global restart from scratch. (Keeping the alarming arm's outcomes after the split, as the detector
        # localizes the change, was measured on bench/regret.py: within the noise, so not worth the extra state.)
        self.seg_n[:] = 0.0
        self.seg_sum[:] = 0.0
        self.seg_sq[:] = 0.0
        self._hist_n = [0] * len(self._hist_n)
        self.changes += 1

    def segment_moments(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts, means, variances) of the outcomes since the last detected change (all of them without
        ``detect``)."""
        if not self.detect:
            return self.moments(rows)
        n, s, s2 = self.seg_n[rows], self.seg_sum[rows], self.seg_sq[rows]
        safe = np.maximum(n, 1.0)
        m = s / safe
        var = s2 / safe
        var -= m * m
        np.maximum(var, 0.0, out=var)
        return n, m, var

    def segment_counts_means_list(self, rows: np.ndarray) -> tuple[list[float], list[float]]:
        """``segment_moments``' counts and means as Python floats, for a few candidates (policies.base.SMALL): the
        same operations per arm (s / max(n, 1)) without the numpy calls, which cost more at this size."""
        if not self.detect:
            return self.counts_means_list(rows)
        if self.is_every(rows):
            k = len(rows)
            n, s = self.seg_n[:k].tolist(), self.seg_sum[:k].tolist()
        else:
            n, s = self.seg_n[rows].tolist(), self.seg_sum[rows].tolist()
        return n, [t / (c if c > 1.0 else 1.0) for t, c in zip(s, n)]

    def segment_scale(self) -> float:
        """Pooled within-arm reward sd of the current segments; the whole history's before a segment has it."""
        if not self.detect:
            return self.pooled_scale()
        k = len(self)
        n, s, s2 = self.seg_n[:k], self.seg_sum[:k], self.seg_sq[:k]
        # Summed exactly rounded (math.fsum), so the value does not depend on the order of the terms: for a few seeds
        # the terms on Python floats (numpy's per-call cost is most of the work at that size), else by numpy, the
        # same IEEE operations either way. Counts are whole numbers: their sum is exact in any order.
        if k <= _FEW:
            n, s, s2 = n.tolist(), s.tolist(), s2.tolist()
            total = sum(n)
            within = math.fsum([q - t * t / (c if c > 1.0 else 1.0) for c, t, q in zip(n, s, s2)])
        else:
            total = float(n.sum())
            within = math.fsum((s2 - s * s / np.maximum(n, 1.0)).tolist())
        if total < 2.0 or within <= 0.0:
            return self.pooled_scale()
        return math.sqrt(within / total)

    def forget(
        self,
        i: int,
        *,
        reward: float,
        success: bool,
        t: float,
        memory_mb: float = 0.0,
        latency_ms: float = 0.0,
        x: np.ndarray | None = None,
    ) -> None:
        """Take out of arm ``i`` an outcome that ``learn`` folded in with these values (a default reward that the
        real outcome replaces, seedworker.core.join): the inverse of ``learn``, equal to never having learned it up
        to rounding. Every sum is linear in the outcome's weight, so the inverse subtracts what was added; the
        decayed weight is the one it has now against the arm's reference time."""
        pulls, rsum, rsq, succ, w, w_reward, w_reward_sq, w_success, w_memory, w_latency, t_ref = self._learn_views
        n1, s1 = pulls[i], rsum[i]
        n0, s0 = n1 - 1.0, s1 - reward
        if n0 > 0.0:  # Welford backwards: learn added (r - old mean)(r - new mean)
            self.pooled_m2 -= (reward - s0 / n0) * (reward - s1 / n1)
        pulls[i], rsum[i] = n0, s0
        rsq[i] -= reward * reward
        succ[i] -= success
        self.pooled_n -= 1.0
        weight = 1.0
        h = self.half_life_s
        if h is None:
            w_memory[i] -= memory_mb
            w_latency[i] -= latency_ms
        else:
            weight = 2.0 ** ((t - t_ref[i]) / h)  # t <= t_ref: learning it moved the reference to t at least
            w[i] -= weight
            w_reward[i] -= weight * reward
            w_reward_sq[i] -= weight * reward * reward
            w_success[i] -= weight * success
            w_memory[i] -= weight * memory_mb
            w_latency[i] -= weight * latency_ms
        if x is not None and weight > 0.0:
            lin_w, lin_sq, rss, dof = self._linear_views
            lin_w[i] -= weight
            lin_sq[i] -= weight * reward * reward
            gram = self.gram  # deferred updates folded in first, so the subtraction meets the sum it came from
            gram[i] -= weight * np.outer(x, x)
            a_inv = self.a_inv[i]
            ax = a_inv.dot(x)
            # Sherman–Morrison for a removal: (A - w x x^T)^-1 = A^-1 + w (A^-1 x)(A^-1 x)^T / (1 - w x^T A^-1 x).
            # The denominator is positive while A - w x x^T is positive definite, as it is after learning x.
            ax *= math.sqrt(weight / (1.0 - weight * float(x.dot(ax))))
            a_inv += ax[:, None] * ax
            self.b[i] -= (weight * reward) * x
            np.dot(a_inv, self.b[i], out=self.theta[i])
            # The noise estimate's parts, as _learn_linear keeps them.
            res = lin_sq[i] - float(self.b[i].dot(self.theta[i]))
            rss[i] = res if res > 0.0 else 0.0
            dof[i] = self._dof(lin_w[i])
        # A change detector's segment is a sequence that may have restarted since: a default reward cannot be taken
        # out of it, so the configuration refuses join.default_reward with change detection (core.config).
        assert not self.detect, "forget() with change detection"

    def observe(self, i: int, *, memory_mb: float, latency_ms: float, throughput: float) -> None:
        """Count one outcome's resource measurements for arm ``i`` (raw, undecayed; read by ``resource_moments``)."""
        r = self._resource_view
        k = i * _RESOURCE_COLS
        r[k] += 1.0
        r[k + 1] += memory_mb
        r[k + 2] += memory_mb * memory_mb
        r[k + 3] += latency_ms
        r[k + 4] += latency_ms * latency_ms
        r[k + 5] += throughput
        r[k + 6] += throughput * throughput

    def _rescale(self, i: int, factor: float) -> None:
        for col in (
            self.w,
            self.w_reward,
            self.w_reward_sq,
            self.w_success,
            self.w_memory,
            self.w_latency,
            self.lin_w,
            self.lin_sq,
        ):
            col[i] *= factor
        self._gram[i] *= factor
        self.b[i] *= factor
        # The ridge prior does not decay, so A = Lam + factor*G needs a fresh inverse.
        self.a_inv[i] = np.linalg.inv(self._gram[i] + np.diag(self._precision))
        self.theta[i] = self.a_inv[i] @ self.b[i]
        self._refresh_linear(i)

    def _learn_linear(self, i: int, x: np.ndarray, reward: float, weight: float) -> None:
        lin_w, lin_sq, rss, dof = self._linear_views
        lin_w[i] += weight
        lin_sq[i] += weight * reward * reward
        a_inv, b, theta = self._linear_rows[i]
        ax = a_inv.dot(x)
        # Sherman–Morrison: (A + w x x^T)^-1 = A^-1 - w (A^-1 x)(A^-1 x)^T / (1 + w x^T A^-1 x). Scaling A^-1 x by
        # sqrt(w / (1 + w x^T A^-1 x)) first makes the correction one outer product of a vector with itself: exactly
        # symmetric, so A^-1 stays symmetric however many outcomes it absorbs. (multiply.outer gives the products
        # ax[:, None] * ax gives, without the broadcast view.)
        ax *= math.sqrt(weight / (1.0 + weight * float(x.dot(ax))))
        a_inv -= _outer(ax, ax)
        if weight == 1.0:
            b += reward * x
        else:
            b += (weight * reward) * x
        np.dot(a_inv, b, out=theta)
        # The noise estimate's parts (see linear_model).
        res = lin_sq[i] - float(b.dot(theta))
        rss[i] = res if res > 0.0 else 0.0
        dof[i] = self._dof(lin_w[i])
        if self.half_life_s is None:
            # G is only read to re-invert A after a decay rescale, which never happens without a half-life: keep x
            # and fold an arm's contexts in as one product X^T X when it has a batch of them or when G is read.
            pending = self._pending[i]
            pending.append(x.copy())  # a copy: the caller may reuse its array
            self._pending_n += 1
            if len(pending) == _GRAM_BATCH:
                self._fold_gram(i)
        else:
            self._gram[i] += weight * np.outer(x, x)

    @staticmethod
    def _dof(weight: float) -> float:
        """Outcomes behind the noise estimate: the arm's (decayed) weight plus the noise prior's pseudo-outcomes
        (see ``linear_model``: the penalized residual counts every outcome, no parameter is subtracted)."""
        return weight + _NOISE_PRIOR

    def _refresh_linear(self, i: int) -> None:
        """Recompute arm i's noise-estimate parts from its model (after a re-inversion, on load)."""
        # Penalized ridge residual: sum w (r - theta.x)^2 + theta^T Lam theta = sum w r^2 - b.theta.
        self._lin_rss[i] = max(self.lin_sq[i] - float(self.b[i].dot(self.theta[i])), 0.0)
        self._lin_dof[i] = self._dof(self.lin_w[i])

    def _fold_gram(self, i: int) -> None:
        pending = self._pending[i]
        xs = np.array(pending)
        self._gram[i] += xs.T @ xs
        self._pending_n -= len(pending)
        pending.clear()

    @property
    def gram(self) -> np.ndarray:
        """``G = sum w x x^T`` per arm (capacity, d, d), with any deferred updates folded in."""
        if self._pending_n:
            for i, pending in enumerate(self._pending):
                if pending:
                    self._fold_gram(i)
        return self._gram

    # -- reading -------------------------------------------------------------------------------------------------
    def pooled_scale(self) -> float:
        """Pooled within-arm standard deviation of the rewards, decayed with the half-life (1 before two outcomes).

        With a half-life each arm's decayed variance is weighted by its decayed count seen from the blueprint's
        clock: ``sum_k f_k (W2_k - W1_k^2 / W_k) / sum_k f_k W_k``. There is no absolute floor (it would make
        exploration depend on the unit of the reward); only where every arm's rewards are constant the scale falls
        back to their root mean square, a number in the rewards' own unit.
        """
        if self.pooled_n < 2:
            return 1.0
        if self.half_life_s is None:
            var = max(self.pooled_m2, 0.0) / self.pooled_n
        else:
            k = len(self)
            w = self.w[:k]
            seen = w > 0
            f = np.exp2(-(self.clock - self.t_ref[:k][seen]) / self.half_life_s)
            w, s, s2 = w[seen], self.w_reward[:k][seen], self.w_reward_sq[:k][seen]
            var = max(float((f * (s2 - s * s / w)).sum()), 0.0) / float((f * w).sum())
        if var > 0.0:
            return math.sqrt(var)
        k = len(self)
        rms = math.sqrt(float(self.reward_sq_sum[:k].sum()) / self.pooled_n)
        return rms if rms > 0.0 else 1.0

    def counts(self, rows: np.ndarray, discounted: bool = False) -> np.ndarray:
        """Outcome counts, raw or decayed to the blueprint's clock (the newest outcome time it has seen)."""
        if not discounted or self.half_life_s is None:
            n = self.pulls[rows]
            return n + self.prior_w[rows] if self._priors else n
        with np.errstate(invalid="ignore"):  # -inf - -inf before any outcome: NaN, zeroed below
            age = self.clock - self.t_ref[rows]
        age[~np.isfinite(age)] = 0.0
        return self.w[rows] * np.exp2(-age / self.half_life_s) + self.prior_w[rows]

    def means(self, rows: np.ndarray, discounted: bool = False) -> np.ndarray:
        return self._means(rows, discounted and self.half_life_s is not None)[1]

    def counts_means(self, rows: np.ndarray, discounted: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(counts(rows, discounted), means(rows, discounted))`` computed together (they share the raw reads)."""
        decayed = discounted and self.half_life_s is not None
        n, mean = self._means(rows, decayed)
        return (self.counts(rows, True) if decayed else n), mean

    def counts_means_list(self, rows: np.ndarray, discounted: bool = False) -> tuple[list[float], list[float]]:
        """``counts_means`` as Python floats, for a few candidates (policies.base.SMALL): the same operations per
        arm (prior added, then s / n, 0 where n is 0) without the numpy calls, which cost more at this size."""
        if discounted and self.half_life_s is not None:
            n, mean = self.counts_means(rows, True)
            return n.tolist(), mean.tolist()
        if self.is_every(rows):
            k = len(rows)
            n, s = self.pulls[:k].tolist(), self.reward_sum[:k].tolist()
        else:
            at = rows.tolist()
            pulls, sums = self._learn_views[0], self._learn_views[1]
            n, s = [pulls[i] for i in at], [sums[i] for i in at]
        if self._priors:
            pw, pm = self.prior_w[rows].tolist(), self.prior_mean[rows].tolist()
            n = [c + w for c, w in zip(n, pw)]
            s = [t + w * m for t, w, m in zip(s, pw, pm)]
        return n, [t / c if c > 0.0 else 0.0 for t, c in zip(s, n)]

    def _means(self, rows: np.ndarray, decayed: bool) -> tuple[np.ndarray, np.ndarray]:
        """(the count each mean divides by, the means) including the warm-start prior."""
        if decayed:
            n, s = self.w[rows], self.w_reward[rows]
        else:
            n, s = self.pulls[rows], self.reward_sum[rows]
        if self._priors:
            pw = self.prior_w[rows]
            n, s = n + pw, s + pw * self.prior_mean[rows]
        if np.count_nonzero(n) == len(n):
            mean = s / n
        else:
            mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
        return n, mean

    def moments(self, rows: np.ndarray, discounted: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(counts, means, variances)(rows, discounted)`` from one read of the columns: the same values as the
        three calls, in fewer array operations (without decay or a prior, the variance's mean is the mean)."""
        decayed = discounted and self.half_life_s is not None
        if decayed:
            n, s, s2 = self.w[rows], self.w_reward[rows], self.w_reward_sq[rows]
        else:
            n, s, s2 = self.pulls[rows], self.reward_sum[rows], self.reward_sq_sum[rows]
        safe = np.maximum(n, 1e-12)
        m = s / safe
        var = s2 / safe
        var -= m * m
        np.maximum(var, 0.0, out=var)
        if decayed or self._priors:
            counts, mean = self.counts_means(rows, discounted)
            return counts, mean, var
        # Raw counts are whole numbers: where n > 0, max(n, 1e-12) is n, so m is s / n; where n = 0, s = 0 and m is
        # 0. Either way m is the mean ``counts_means`` gives.
        return n, m, var

    def variances(self, rows: np.ndarray, discounted: bool = False) -> np.ndarray:
        if discounted and self.half_life_s is not None:
            n, s, s2 = self.w[rows], self.w_reward[rows], self.w_reward_sq[rows]
        else:
            n, s, s2 = self.pulls[rows], self.reward_sum[rows], self.reward_sq_sum[rows]
        safe = np.maximum(n, 1e-12)
        m = s / safe
        var = s2 / safe - m * m
        return np.maximum(var, 0.0, out=var)

    def successes(self, rows: np.ndarray, discounted: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(successes, failures), raw or decayed."""
        if discounted and self.half_life_s is not None:
            n = self.counts(rows, True) - self.prior_w[rows]
            frac = np.divide(self.w_success[rows], self.w[rows], out=np.zeros(len(rows)), where=self.w[rows] > 0)
            s = frac * n
            return s, n - s
        s = self.success_sum[rows]
        return s, self.pulls[rows] - s

    def _decay_factors(self, rows: np.ndarray) -> np.ndarray | None:
        """Per row ``2 ** -((clock - t_ref) / h)``: how much an arm's sums have faded since its newest outcome, seen
        from the blueprint's clock; None without a half-life or when no row has faded."""
        if self.half_life_s is None:
            return None
        with np.errstate(invalid="ignore"):
            age = self.clock - self.t_ref[rows]
        age[~np.isfinite(age)] = 0.0
        if not age.any():
            return None
        return np.exp2(-age / self.half_life_s)

    def _faded_linear(self, rows: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(theta, A^-1) of these rows with their sums decayed to the blueprint's clock.

        An arm that is no longer chosen gets no outcome that would rescale its sums, yet its evidence is as old as
        everyone's: A = Lam + f G, b' = f b with f its decay factor. Its confidence then shrinks back towards the
        prior, as a count decayed to the clock does. The inverse is recomputed (the prior does not decay)."""
        gram = self.gram[rows] * f[:, None, None]
        gram += np.diag(self._precision)
        a_inv = np.linalg.inv(gram)
        theta = np.einsum("kij,kj->ki", a_inv, self.b[rows] * f[:, None])
        return theta, a_inv

    def linear_model(self, rows: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted reward ``theta·x``, variance factor ``x^T A^-1 x``, noise variance estimate) for these rows.

        The noise variance is the arm's own ridge residual, not the spread of its rewards (which also holds what the
        context explains). For a ridge fit, ``sum w (r - theta·x)^2 + theta^T Lam theta = sum w r^2 - b·theta``, so it
        needs no pass over past outcomes. This *penalized* residual is the quadratic form of the rewards under
        the model's own marginal ``r ~ N(0, sigma^2 (I + X Lam^-1 X^T))`` (the prior ``theta ~ N(0, sigma^2
        Lam^-1)``), whose expectation is ``sigma^2 n``: it is divided by the weighted count, not by a count minus
        the fit's parameters (that is the frequentist divisor of the *unpenalized* residual; with the penalized one
        it overstated the noise, by half again for 65 features and 180 outcomes). With ``_NOISE_PRIOR``
        pseudo-outcomes at the pooled reward variance ``s^2`` this is the posterior mean of the conjugate
        (normal-inverse-gamma) model: ``sigma^2 = (RSS + nu0 s^2) / (n + nu0)``. Every term scales with the square
        of the reward unit, so the exploration it drives is the same whatever the unit.
        """
        f = self._decay_factors(rows)
        s2 = self.pooled_scale() ** 2
        if f is None:
            mean, width = self.linear_fit(rows, x)
            if self.is_every(rows):  # the columns themselves (a new array from the sum): no gather
                k = len(rows)
                noise = self._lin_rss[:k] + _NOISE_PRIOR * s2
                noise /= self._lin_dof[:k]
            else:
                noise = self._lin_rss[rows]
                noise += _NOISE_PRIOR * s2
                noise /= self._lin_dof[rows]
            return mean, width, noise
        theta, a_inv = self._faded_linear(rows, f)
        mean = theta.dot(x)
        width = np.maximum(np.einsum("i,kij,j->k", x, a_inv, x), 0.0)
        rss = np.maximum(f * (self.lin_sq[rows] - np.einsum("ki,ki->k", self.b[rows], theta)), 0.0)
        return mean, width, (rss + _NOISE_PRIOR * s2) / (f * self.lin_w[rows] + _NOISE_PRIOR)

    def linear_fit(self, rows: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted reward ``theta·x`` and variance factor ``x^T A^-1 x`` (clipped at 0) for these rows, from the
        stored model (not decayed to the clock: see ``linear_model``)."""
        n, d = len(self), self.dim
        if 2 * len(rows) >= n:
            # Most arms are candidates: two matrix-vector products over the table's own storage (views, no copy of
            # the K d×d inverses), then pick the rows.
            mean = self.theta[:n].dot(x)
            width = self.a_inv[:n].reshape(n * d, d).dot(x).reshape(n, d).dot(x)
            if not self.is_every(rows):
                mean, width = mean[rows], width[rows]
        else:
            k = len(rows)
            mean = self.theta[rows].dot(x)
            width = self.a_inv[rows].reshape(k * d, d).dot(x).reshape(k, d).dot(x)
        return mean, np.maximum(width, 0.0, out=width)

    def tracked(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(has outcomes, mean memory_mb, mean latency_ms) for the constraint check."""
        w = self.w[rows]
        seen = self.pulls[rows] > 0
        mem = np.divide(self.w_memory[rows], w, out=np.zeros(len(rows)), where=w > 0)
        lat = np.divide(self.w_latency[rows], w, out=np.zeros(len(rows)), where=w > 0)
        return seen, mem, lat

    def resource_moments(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(measured outcomes (k,), means (k, 3), population variances (k, 3)) of ``RESOURCES`` for these rows."""
        r = self.resources[rows]
        n = r[:, 0]
        safe = np.maximum(n, 1.0)[:, None]
        mean = r[:, 1::2] / safe
        var = np.maximum(r[:, 2::2] / safe - mean * mean, 0.0)
        return n, mean, var

    # -- persistence ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        n = len(self)
        out: dict = {
            "dim": self.dim,
            "ridge": self.ridge,
            "feature_ridge": self.feature_ridge,
            "half_life_s": self.half_life_s,
            "clock": self.clock,
            "seed_ids": list(self.seed_ids),
            # (outcomes, sum of squared deviations): running totals, an array because like the columns they
            # depend on the order outcomes arrived in only up to rounding.
            "pooled": np.array([self.pooled_n, self.pooled_m2]),
        }
        if self.detect:
            out["detect"] = True
            out["changes"] = self.changes
            # One array of every arm's segment rewards and one of their lengths: plain arrays like every other entry.
            out["history_n"] = np.array(self._hist_n[:n], dtype=np.int64)
            out["history"] = np.concatenate([self._history[i][: self._hist_n[i]] for i in range(n)] or [np.empty(0)])
        for name in (*_SCALARS, *_MATRICES):
            out[name] = getattr(self, name)[:n].copy()
        out["resources"] = self.resources[:n].copy()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ArmTable:
        n = len(data["seed_ids"])
        table = cls(
            dim=data["dim"],
            ridge=data["ridge"],
            feature_ridge=data.get("feature_ridge"),  # a state saved before it had one precision for every coordinate
            half_life_s=data["half_life_s"],
            capacity=max(8, n),
            detect=data.get("detect", False),
        )  # a state saved without a detector stays without one
        table.seed_ids = list(data["seed_ids"])
        table.index = {s: i for i, s in enumerate(table.seed_ids)}
        table.clock = data["clock"]
        for name in (*_SCALARS, "a_inv", "b", "theta"):
            if table.half_life_s is None and name in _UNDECAYED:
                continue  # the same array as its raw column (equal values in any state written without decay)
            if name not in data and name in _LATER:  # a state written before the column existed
                data = {**data, name: data[_LATER[name]][:n]}
            getattr(table, name)[:n] = data[name]
        if table.detect:
            table.changes = data["changes"]
            start = 0
            for i, m in enumerate(data["history_n"].tolist()):
                table._history[i][:m] = data["history"][start : start + m]
                table._hist_n[i] = m
                start += m
        table._gram[:n] = data["gram"]
        if "resources" in data:  # a state saved before resources were counted starts them at zero measured outcomes
            table.resources[:n] = data["resources"]
        for i in range(n):  # (the "lin_trace" that earlier states carry is not read: the noise no longer needs it)
            table._refresh_linear(i)
        table._priors = int(np.count_nonzero(table.prior_w[:n]))
        if "pooled" in data:
            table.pooled_n, table.pooled_m2 = (float(v) for v in data["pooled"])
        else:  # a state saved before the running totals existed: sum them once
            pulls, sums = table.pulls[:n], table.reward_sum[:n]
            table.pooled_n = float(pulls.sum())
            table.pooled_m2 = float(table.reward_sq_sum[:n].sum() - (sums * sums / np.maximum(pulls, 1)).sum())
        return table

    def __getstate__(self) -> dict:
        return self.to_dict()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(ArmTable.from_dict(state).__dict__)
