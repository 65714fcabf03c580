"""Context features for the contextual strategies: a fixed ordered list of signals, standardized online.

Standardization uses running (Welford) means and variances of the requests seen so far, updated after the request is
transformed. The transformed vector is logged with the decision and the outcome update uses that logged vector, so
what a replay learns does not depend on when the outcome arrives.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_FEATURES = (
    "current_loss",
    "current_accuracy",
    "learning_rate",
    "current_epoch",
    "total_epochs",
    "loss_momentum",
    "gradient_norm",
    "batch_size",
    "gpu_memory_used",
    "available_memory_mb",
    "urgency",
)


# Raw signals are bounded to ±RAW_LIMIT before they enter the running moments: the contract allows any finite
# float, and two requests at ±1.7e308 made ``raw - mean`` overflow to inf and the variance to NaN, and every later
# feature vector with it. At 1e100 a squared deviation is at most ~4e200, so the sum of squares stays finite for
# any number of requests this process could see; a signal that large standardizes to the clip anyway.
RAW_LIMIT = 1e100


class FeatureMap:
    """Turns a context mapping into ``[1, z_1, ..., z_k]`` (a bias, then standardized signals clipped to ±clip).

    The running moments are Python floats and both ``transform`` and ``update`` work per signal: for the dozen
    signals a request carries, numpy's per-call overhead cost more than the arithmetic (about 15 µs each against
    2 µs). Every signal goes through the same IEEE operations as the former array code (subtract, divide, sqrt,
    min/max), so the vectors and moments are the same floats (tests/test_features.py compares the two).
    ``count``, ``mean`` and ``m2`` read as arrays (copies).
    """

    def __init__(self, *, names: tuple[str, ...] = DEFAULT_FEATURES, clip: float = 5.0):
        self.names = tuple(names)
        self.clip = clip
        k = len(self.names)
        self._count = [0.0] * k
        self._mean = [0.0] * k
        self._m2 = [0.0] * k
        self._std_cache: list[float] | None = None

    @property
    def dim(self) -> int:
        return len(self.names) + 1

    @property
    def count(self) -> np.ndarray:
        return np.array(self._count, dtype=float)

    @property
    def mean(self) -> np.ndarray:
        return np.array(self._mean, dtype=float)

    @property
    def m2(self) -> np.ndarray:
        return np.array(self._m2, dtype=float)

    def transform(self, context: dict[str, float]) -> np.ndarray:
        get = context.get
        isfinite = math.isfinite
        clip, low = self.clip, -self.clip
        out = [1.0]
        append = out.append
        for name, mean, std in zip(self.names, self._mean, self._std()):
            v = get(name)
            if v is None or not isfinite(v):
                append(0.0)  # a missing signal sits at the mean (z = 0): it neither pushes nor pulls the estimate
                continue
            v = float(v)
            if v > RAW_LIMIT:
                v = RAW_LIMIT
            elif v < -RAW_LIMIT:
                v = -RAW_LIMIT
            z = (v - mean) / std
            # Clipped to [low, clip] as max(min(z, clip), low) clips (NaN stays NaN, as np.minimum/np.maximum keep
            # it: both comparisons are false), without the two calls.
            if z > clip:
                z = clip
            elif z < low:
                z = low
            append(z)
        return np.array(out)

    def _std(self) -> list[float]:
        # Cached between updates: a decision reads it, the next update changes it.
        std = self._std_cache
        if std is None:
            std = []
            for n, m2 in zip(self._count, self._m2):
                if n > 1:
                    v = m2 / (n - 1)
                    v = math.sqrt(v) if v >= 0 else math.nan
                    std.append(1.0 if v < 1e-12 else v)
                else:
                    std.append(1.0)
            self._std_cache = std
        return std

    def update(self, context: dict[str, float]) -> None:
        get = context.get
        isfinite = math.isfinite
        self._std_cache = None
        count, mean, m2 = self._count, self._mean, self._m2
        for j, name in enumerate(self.names):
            v = get(name)
            if v is None or not isfinite(v):
                continue
            v = float(v)
            if v > RAW_LIMIT:
                v = RAW_LIMIT
            elif v < -RAW_LIMIT:
                v = -RAW_LIMIT
            n = count[j] + 1.0
            count[j] = n
            delta = v - mean[j]
            mu = mean[j] + delta / n
            mean[j] = mu
            m2[j] += delta * (v - mu)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "clip": self.clip, "count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureMap:
        fm = cls(names=tuple(data["names"]), clip=data["clip"])
        k = len(fm.names)
        for attr, key in (("_count", "count"), ("_mean", "mean"), ("_m2", "m2")):
            values = np.asarray(data[key], dtype=float).reshape(k).tolist()
            setattr(fm, attr, values)
        return fm
