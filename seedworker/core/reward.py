"""The reward of a graft: one configurable function of its outcome."""

from __future__ import annotations

from dataclasses import dataclass

from seedworker.contract.events import AdaptationOutcome


@dataclass(frozen=True, kw_only=True)
class RewardFunction:
    """``reward = clip(accuracy_weight*accuracy_delta - loss_weight*loss_delta - latency_weight*latency_ms
    - memory_weight*memory_mb + throughput_weight*throughput)``; a failed graft earns ``failure_reward`` instead.

    Units: latency in ms, memory in MB, throughput in the producer's unit (e.g. samples/s). The default rewards the
    accuracy gain alone, so a mean reward reads as "mean accuracy gain per graft".
    """

    accuracy_weight: float = 1.0
    loss_weight: float = 0.0
    latency_weight: float = 0.0
    memory_weight: float = 0.0
    throughput_weight: float = 0.0
    failure_reward: float = 0.0
    clip_min: float = -1.0
    clip_max: float = 1.0

    def __post_init__(self) -> None:
        if self.clip_min >= self.clip_max:
            raise ValueError(f"reward.clip_min ({self.clip_min}) must be below reward.clip_max ({self.clip_max})")

    def __call__(self, outcome: AdaptationOutcome) -> float:
        return self.of(
            accuracy_delta=outcome.accuracy_delta,
            loss_delta=outcome.loss_delta,
            latency_ms=outcome.latency_ms,
            memory_mb=outcome.memory_mb,
            throughput=outcome.throughput,
            success=outcome.success,
        )

    def of(
        self,
        *,
        accuracy_delta: float = 0.0,
        loss_delta: float = 0.0,
        latency_ms: float = 0.0,
        memory_mb: float = 0.0,
        throughput: float = 0.0,
        success: bool = True,
    ) -> float:
        if not success:
            value = self.failure_reward
        else:
            value = (
                self.accuracy_weight * accuracy_delta
                - self.loss_weight * loss_delta
                - self.latency_weight * latency_ms
                - self.memory_weight * memory_mb
                + self.throughput_weight * throughput
            )
        return min(self.clip_max, max(self.clip_min, value))
