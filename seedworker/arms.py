"""Per-arm sufficient statistics of one blueprint, updated incrementally.

An arm is (blueprint_id, seed_id). The statistics belong here, not to a strategy, so every strategy reads the same
state and switching strategy keeps what was learned.

Recency. With a half-life ``h`` (seconds of *event* time), an outcome observed at time ``t_i`` weighs
``2 ** ((t_i - T) / h)`` where ``T`` is the newest outcome time the arm has seen. The sums are kept relative to that
reference: a newer outcome rescales the sums and moves ``T``, an older one enters with a weight below one. Either way
the result is ``sum_i 2 ** ((t_i - T) / h) * s_i`` — the newest outcome weighs most and the order in which outcomes
arrive does not matter, so a replay reproduces the live state. Raw (undecayed) sums are kept beside the decayed ones.

Contextual statistics (disjoint ridge regression per arm): ``A = lam*I + G`` with ``G = sum w x x^T``, ``b = sum w r x``.
``A^-1`` is maintained by Sherman–Morrison on each outcome; when decay rescales ``G`` the inverse is recomputed (the
prior does not decay, so a rescaled ``A`` is not a multiple of the old one).
"""

from __future__ import annotations

import math

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
)


class ArmTable:
    """Columns of statistics for the arms of one blueprint; row i is seed ``seed_ids[i]``."""

    def __init__(self, *, dim: int, ridge: float = 1.0, half_life_s: float | None = None, capacity: int = 8):
        self.dim = dim
        self.ridge = ridge
        self.half_life_s = half_life_s
        self.seed_ids: list[str] = []
        self.index: dict[str, int] = {}
        self.clock = -math.inf  # newest outcome time seen by any arm of this blueprint
        self._alloc(capacity)

    # -- storage -------------------------------------------------------------------------------------------------
    def _alloc(self, capacity: int) -> None:
        old = {name: getattr(self, name, None) for name in (*_SCALARS, "gram", "a_inv", "b", "theta")}
        n = len(self.seed_ids)
        for name in _SCALARS:
            col = np.zeros(capacity)
            if name in ("t_ref", "last_selected"):
                col[:] = -np.inf
            if old[name] is not None:
                col[:n] = old[name][:n]
            setattr(self, name, col)
        d = self.dim
        self.gram = np.zeros((capacity, d, d))
        self.a_inv = np.tile(np.eye(d) / self.ridge, (capacity, 1, 1))
        self.b = np.zeros((capacity, d))
        self.theta = np.zeros((capacity, d))
        for name in ("gram", "a_inv", "b", "theta"):
            if old[name] is not None:
                getattr(self, name)[:n] = old[name][:n]

    def __len__(self) -> int:
        return len(self.seed_ids)

    def rows(self, seed_ids: list[str], prior: tuple[float, float] | None = None) -> np.ndarray:
        """Row numbers of these seeds, adding unknown ones (optionally warm-started with (pseudo_count, mean))."""
        index = self.index
        try:
            return np.fromiter((index[s] for s in seed_ids), dtype=np.intp, count=len(seed_ids))
        except KeyError:
            for s in seed_ids:
                if s not in index:
                    self._add(s, prior)
            return np.fromiter((index[s] for s in seed_ids), dtype=np.intp, count=len(seed_ids))

    def _add(self, seed_id: str, prior: tuple[float, float] | None) -> None:
        i = len(self.seed_ids)
        if i == len(self.pulls):
            self._alloc(2 * i)
        self.seed_ids.append(seed_id)
        self.index[seed_id] = i
        if prior is not None:
            self.prior_w[i], self.prior_mean[i] = prior

    def blueprint_prior(self, pseudo_count: float) -> tuple[float, float] | None:
        """Warm start for a new seed: the blueprint's pooled mean reward, worth ``pseudo_count`` outcomes."""
        n = len(self)
        total = self.pulls[:n].sum()
        if pseudo_count <= 0 or total == 0:
            return None
        return pseudo_count, float(self.reward_sum[:n].sum() / total)

    # -- learning ------------------------------------------------------------------------------------------------
    def select(self, i: int, t: float) -> None:
        self.selections[i] += 1
        if t > self.last_selected[i]:
            self.last_selected[i] = t

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
        self.pulls[i] += 1
        self.reward_sum[i] += reward
        self.reward_sq_sum[i] += reward * reward
        self.success_sum[i] += success
        weight = 1.0
        h = self.half_life_s
        if h is None:
            if t > self.t_ref[i]:
                self.t_ref[i] = t
        elif self.t_ref[i] == -np.inf:
            self.t_ref[i] = t
        elif t > self.t_ref[i]:
            self._rescale(i, 2.0 ** (-(t - self.t_ref[i]) / h))
            self.t_ref[i] = t
        else:
            weight = 2.0 ** ((t - self.t_ref[i]) / h)
        if t > self.clock:
            self.clock = t
        self.w[i] += weight
        self.w_reward[i] += weight * reward
        self.w_reward_sq[i] += weight * reward * reward
        self.w_success[i] += weight * success
        self.w_memory[i] += weight * memory_mb
        self.w_latency[i] += weight * latency_ms
        if x is not None and weight > 0.0:
            self._learn_linear(i, x, reward, weight)

    def _rescale(self, i: int, factor: float) -> None:
        for col in (self.w, self.w_reward, self.w_reward_sq, self.w_success, self.w_memory, self.w_latency):
            col[i] *= factor
        self.gram[i] *= factor
        self.b[i] *= factor
        # The ridge prior does not decay, so A = lam*I + factor*G needs a fresh inverse.
        self.a_inv[i] = np.linalg.inv(self.gram[i] + self.ridge * np.eye(self.dim))
        self.theta[i] = self.a_inv[i] @ self.b[i]

    def _learn_linear(self, i: int, x: np.ndarray, reward: float, weight: float) -> None:
        a_inv = self.a_inv[i]
        ax = a_inv @ x
        # Sherman–Morrison: (A + w x x^T)^-1 = A^-1 - w (A^-1 x)(A^-1 x)^T / (1 + w x^T A^-1 x)
        a_inv -= np.outer(ax, ax) * (weight / (1.0 + weight * (x @ ax)))
        self.gram[i] += weight * np.outer(x, x)
        self.b[i] += (weight * reward) * x
        self.theta[i] = a_inv @ self.b[i]

    # -- reading -------------------------------------------------------------------------------------------------
    def counts(self, rows: np.ndarray, discounted: bool = False) -> np.ndarray:
        """Outcome counts, raw or decayed to the blueprint's clock (the newest outcome time it has seen)."""
        if not discounted or self.half_life_s is None:
            return self.pulls[rows] + self.prior_w[rows]
        with np.errstate(invalid="ignore"):  # -inf - -inf before any outcome: NaN, zeroed below
            age = self.clock - self.t_ref[rows]
        age[~np.isfinite(age)] = 0.0
        return self.w[rows] * np.exp2(-age / self.half_life_s) + self.prior_w[rows]

    def means(self, rows: np.ndarray, discounted: bool = False) -> np.ndarray:
        pw = self.prior_w[rows]
        prior = pw * self.prior_mean[rows]
        if discounted and self.half_life_s is not None:
            n, s = self.w[rows] + pw, self.w_reward[rows] + prior
        else:
            n, s = self.pulls[rows] + pw, self.reward_sum[rows] + prior
        return np.divide(s, n, out=np.zeros_like(s), where=n > 0)

    def variances(self, rows: np.ndarray, discounted: bool = False) -> np.ndarray:
        if discounted and self.half_life_s is not None:
            n, s, s2 = self.w[rows], self.w_reward[rows], self.w_reward_sq[rows]
        else:
            n, s, s2 = self.pulls[rows], self.reward_sum[rows], self.reward_sq_sum[rows]
        safe = np.maximum(n, 1e-12)
        var = s2 / safe - (s / safe) ** 2
        return np.maximum(var, 0.0)

    def successes(self, rows: np.ndarray, discounted: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(successes, failures), raw or decayed."""
        if discounted and self.half_life_s is not None:
            n = self.counts(rows, True) - self.prior_w[rows]
            frac = np.divide(self.w_success[rows], self.w[rows], out=np.zeros(len(rows)), where=self.w[rows] > 0)
            s = frac * n
            return s, n - s
        s = self.success_sum[rows]
        return s, self.pulls[rows] - s

    def tracked(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(has outcomes, mean memory_mb, mean latency_ms) for the constraint check."""
        w = self.w[rows]
        seen = self.pulls[rows] > 0
        mem = np.divide(self.w_memory[rows], w, out=np.zeros(len(rows)), where=w > 0)
        lat = np.divide(self.w_latency[rows], w, out=np.zeros(len(rows)), where=w > 0)
        return seen, mem, lat

    # -- persistence ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        n = len(self)
        out: dict = {
            "dim": self.dim,
            "ridge": self.ridge,
            "half_life_s": self.half_life_s,
            "clock": self.clock,
            "seed_ids": list(self.seed_ids),
        }
        for name in (*_SCALARS, "gram", "a_inv", "b", "theta"):
            out[name] = getattr(self, name)[:n].copy()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ArmTable":
        n = len(data["seed_ids"])
        table = cls(dim=data["dim"], ridge=data["ridge"], half_life_s=data["half_life_s"], capacity=max(8, n))
        table.seed_ids = list(data["seed_ids"])
        table.index = {s: i for i, s in enumerate(table.seed_ids)}
        table.clock = data["clock"]
        for name in (*_SCALARS, "gram", "a_inv", "b", "theta"):
            getattr(table, name)[:n] = data[name]
        return table

    def __getstate__(self) -> dict:
        return self.to_dict()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(ArmTable.from_dict(state).__dict__)
