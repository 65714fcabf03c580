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


class FeatureMap:
    """Turns a context mapping into ``[1, z_1, ..., z_k]`` (a bias, then standardized signals clipped to ±clip)."""

    def __init__(self, *, names: tuple[str, ...] = DEFAULT_FEATURES, clip: float = 5.0):
        self.names = tuple(names)
        self.clip = clip
        k = len(self.names)
        self.count = np.zeros(k)
        self.mean = np.zeros(k)
        self.m2 = np.zeros(k)

    @property
    def dim(self) -> int:
        return len(self.names) + 1

    def transform(self, context: dict[str, float]) -> np.ndarray:
        raw, present = self._raw(context)
        std = np.sqrt(np.divide(self.m2, self.count - 1, out=np.ones_like(self.m2), where=self.count > 1))
        std[std < 1e-12] = 1.0
        # A missing signal sits at the mean (z = 0): it neither pushes nor pulls the estimate.
        z = np.where(present, (raw - self.mean) / std, 0.0)
        np.clip(z, -self.clip, self.clip, out=z)
        x = np.empty(self.dim)
        x[0] = 1.0
        x[1:] = z
        return x

    def update(self, context: dict[str, float]) -> None:
        raw, present = self._raw(context)
        self.count += present
        delta = np.where(present, raw - self.mean, 0.0)
        self.mean += np.divide(delta, self.count, out=np.zeros_like(delta), where=self.count > 0)
        self.m2 += delta * np.where(present, raw - self.mean, 0.0)

    def _raw(self, context: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        get = context.get
        values = [get(n) for n in self.names]
        present = np.fromiter((v is not None and math.isfinite(v) for v in values), dtype=bool, count=len(values))
        raw = np.fromiter((v if p else 0.0 for v, p in zip(values, present)), dtype=float, count=len(values))
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
