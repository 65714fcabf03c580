"""Context features for the contextual strategies: a fixed ordered list of signals, standardized online.

Standardization uses running (Welford) means and variances of the requests seen so far, updated after the request is
transformed. The transformed vector is logged with the decision and the outcome update uses that logged vector, so
what a replay learns does not depend on when the outcome arrives.
"""

from __future__ import annotations

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
    """Turns a context mapping into ``[1, z_1, ..., z_k]`` (a bias, then standardized signals clipped to ±clip)."""

    def __init__(self, *, names: tuple[str, ...] = DEFAULT_FEATURES, clip: float = 5.0):
        self.names = tuple(names)
        self.clip = clip
        k = len(self.names)
        self.count = np.zeros(k)
        self.mean = np.zeros(k)
        self.m2 = np.zeros(k)
        self._std_cache: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return len(self.names) + 1

    def transform(self, context: dict[str, float]) -> np.ndarray:
        raw, present = self._raw(context)
        x = np.empty(self.dim)
        x[0] = 1.0
        z = x[1:]
        np.subtract(raw, self.mean, out=z)
        z /= self._std()
        if present is not None:
            # A missing signal sits at the mean (z = 0): it neither pushes nor pulls the estimate.
            z[~present] = 0.0
        np.minimum(z, self.clip, out=z)
        np.maximum(z, -self.clip, out=z)
        return x

    def _std(self) -> np.ndarray:
        # Cached between updates: a decision reads it, the next update changes it.
        std = self._std_cache
        if std is None:
            std = np.sqrt(np.divide(self.m2, self.count - 1, out=np.ones_like(self.m2), where=self.count > 1))
            std[std < 1e-12] = 1.0
            self._std_cache = std
        return std

    def update(self, context: dict[str, float]) -> None:
        raw, present = self._raw(context)
        self._std_cache = None
        if present is None:  # every signal present: the general update below with all masks true
            self.count += 1.0
            delta = raw - self.mean
            self.mean += delta / self.count
            delta *= raw - self.mean
            self.m2 += delta
            return
        self.count += present
        delta = np.where(present, raw - self.mean, 0.0)
        self.mean += np.divide(delta, self.count, out=np.zeros_like(delta), where=self.count > 0)
        self.m2 += delta * np.where(present, raw - self.mean, 0.0)

    def _raw(self, context: dict[str, float]) -> tuple[np.ndarray, np.ndarray | None]:
        """(values with missing ones as 0, mask of present ones or None when all are present)."""
        get = context.get
        raw = np.array([get(n) for n in self.names], dtype=float)  # a missing (None) signal becomes NaN
        present = np.isfinite(raw)
        if np.count_nonzero(present) == len(raw):
            if np.abs(raw).max(initial=0.0) > RAW_LIMIT:
                np.clip(raw, -RAW_LIMIT, RAW_LIMIT, out=raw)
            return raw, None
        raw[~present] = 0.0
        np.clip(raw, -RAW_LIMIT, RAW_LIMIT, out=raw)
        return raw, present

    def to_dict(self) -> dict:
        return {"names": list(self.names), "clip": self.clip, "count": self.count.copy(),
                "mean": self.mean.copy(), "m2": self.m2.copy()}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureMap":
        fm = cls(names=tuple(data["names"]), clip=data["clip"])
        fm.count[:] = data["count"]
        fm.mean[:] = data["mean"]
        fm.m2[:] = data["m2"]
        return fm
