"""Prometheus metrics with prometheus_client: one registry per worker, exposed in the text format 0.0.4.

The counts the worker already keeps (``Worker.counters``, persisted in SQLite with each batch) are read at scrape time
by a collector rather than mirrored into prometheus_client counters, so there is one source of truth and the values
survive restarts; only what the worker does not count itself (latencies, consumer lag) is measured here.

Every worker has its own :class:`Registry`, never prometheus_client's process-global ``REGISTRY``: two workers in
one process (tests, an application that embeds workers) would otherwise clash on every name, and nothing of a
worker outlives it in a global.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from seedworker.engine.worker import Worker

# What generate_latest writes. Not prometheus_client's CONTENT_TYPE_LATEST: since 0.22 that names format 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "seedworker_"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Registry(CollectorRegistry):
    """prometheus_client's registry, held on every scrape to what the text format 0.0.4 allows.

    prometheus_client (since 0.22) accepts any UTF-8 name and escapes it on output, so a mistyped name would be
    exported under a name nobody chose; and a collector that reads its families at scrape time (the worker's
    counters) has no fixed names for ``register`` to check for clashes. Both are refused here instead, which fails
    the scrape (answered 500) rather than serving a malformed or ambiguous exposition. The ``_created`` series of
    prometheus_client's own histograms are left out: they belong to OpenMetrics, nothing here reads them, and
    /metrics never had them.
    """

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for family in super().collect():
            # A counter family is named without its "_total"; its samples and the exposition carry it.
            name = family.name + "_total" if family.type == "counter" else family.name
            if not _NAME.match(name):
                raise ValueError(f"invalid metric name {name!r}")
            if name in seen:
                raise ValueError(f"metric {name!r} is registered twice")
            seen.add(name)
            created = family.name + "_created"
            kept = [s for s in family.samples if s.name != created]
            for s in kept:
                for label in s.labels:
                    if not _LABEL.match(label) or label.startswith("__"):
                        raise ValueError(f"{name}: invalid label name {label!r}")
            if len(kept) != len(family.samples):
                # A copy: a collector may hand out the same family object on every scrape.
                trimmed = Metric(family.name, family.documentation, family.type, family.unit)
                trimmed.samples = kept
                family = trimmed
            yield family


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format 0.0.4 of everything in ``registry``, as served (UTF-8)."""
    return generate_latest(registry)


# -- the worker's metrics ----------------------------------------------------------------------------------------
# Help for the counters the worker keeps (Worker.counters); a counter added there later is still exported, with a
# generic help line. The values survive restarts: they are stored with each batch.
COUNTER_HELP = {
    "decisions": "Requests decided (one selection published for each).",
    "duplicate_requests": "Retried requests answered again with their stored selection.",
    "outcomes_learned": "Outcomes joined to their decision and learned from.",
    "late_outcomes": "Outcomes that came after join.reward_wait_s (learned only with join.learn_late).",
    "duplicate_outcomes": "Outcomes for a decision already resolved, ignored.",
    "held_outcomes": "Outcomes held because their decision was not known yet.",
    "dangling_outcomes": "Held outcomes whose decision never came within join.hold_unknown_s.",
    "mismatched_outcomes": "Outcomes that report another seed than the one chosen, not learned.",
    "expired_decisions": "Decisions whose outcome did not come within join.reward_wait_s.",
    "dead_letters": "Messages sent to the dead-letter topic.",
    "strategy_switches": "Strategy switches applied from the control topic.",
}
# Deciding one request takes tens of microseconds to a few milliseconds (256 candidates, linear models).
SELECTION_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0)
# One SQLite transaction per batch: sub-millisecond for a few rows, up to seconds on a slow disk.
TRANSACTION_BUCKETS = (500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0)
LAG_HELP = "Messages between the consumer's position and the partition's high watermark."


class WorkerMetrics:
    """The worker's metric set, in its own ``registry``; it attaches itself as ``worker.metrics`` (the engine does
    not import this layer). The worker calls ``selection.observe`` and ``transaction.observe`` (seconds);
    everything else is read from the worker when scraped."""

    @classmethod
    def of(cls, worker: Worker) -> WorkerMetrics:
        """The worker's metric set, attached now if it has none yet."""
        return worker.metrics if isinstance(worker.metrics, cls) else cls(worker)

    def __init__(self, worker: Worker):
        self.worker = worker
        self.registry = Registry()
        # Registration order is exposition order: counters and gauges, the histograms, the lag.
        self.registry.register(_WorkerCollector(worker))
        self.selection = Histogram(
            PREFIX + "selection_latency_seconds",
            "Time to decide one request (policy scores, draw, state update).",
            buckets=SELECTION_BUCKETS,
            registry=self.registry,
        )
        self.transaction = Histogram(
            PREFIX + "transaction_latency_seconds",
            "Time of the one SQLite transaction that stores a batch.",
            buckets=TRANSACTION_BUCKETS,
            registry=self.registry,
        )
        # The lag needs an await (the Kafka bus asks the consumer for positions) and collect() cannot await: the
        # gauge shows the snapshot that refresh() took, and exposition() takes one right before generating.
        self.lag: dict[tuple[str, int], int] = {}
        self.registry.register(_LagCollector(self))
        worker.metrics = self

    def __deepcopy__(self, memo: dict) -> WorkerMetrics:
        # A worker is deep-copied along with a MemoryBus that still holds its callbacks (tests copy buses), but
        # prometheus_client's registry and histograms hold threading locks, which cannot be copied. The copy is the
        # metric set of the copied worker, with histograms measuring from nothing like a worker started anew.
        worker = copy.deepcopy(self.worker, memo)
        if id(self) in memo:  # copying the worker copied this too
            return memo[id(self)]
        twin = WorkerMetrics(worker)
        twin.lag = dict(self.lag)
        memo[id(self)] = twin
        return twin

    async def refresh(self) -> None:
        """Read what needs I/O (consumer lag) before a scrape. The whole snapshot is replaced, so a partition that
        was revoked disappears from the gauge."""
        self.lag = dict(await self.worker.bus.lag())

    async def exposition(self) -> bytes:
        await self.refresh()
        return exposition(self.registry)


class _WorkerCollector:
    """One counter family per name in ``Worker.counters``, and the gauges of the worker's state, read when scraped."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        w = self.worker
        values = w.counters.values
        for name in sorted(COUNTER_HELP.keys() | values.keys()):
            if not _NAME.match(f"{PREFIX}{name}_total"):
                continue  # a counter whose name cannot be a metric's stays in SQLite only, rather than fail scrapes
            help = COUNTER_HELP.get(name, f"Worker counter {name}.")
            # With its "_total", which CounterMetricFamily takes off again: a worker counter named "x_total" is
            # exported as "x_total_total", not merged into "x".
            yield CounterMetricFamily(
                f"{PREFIX}{name}_total", help + " Kept in SQLite, so it survives restarts.", value=values.get(name, 0)
            )
        yield GaugeMetricFamily(
            PREFIX + "ready", "1 when the worker is ready (see /readyz).", value=int(all(w.readiness().values()))
        )
        yield GaugeMetricFamily(
            PREFIX + "decisions_pending", "Decisions waiting for their outcome.", value=w.pending_decisions
        )
        yield GaugeMetricFamily(
            PREFIX + "outcomes_held", "Outcomes held until their decision is known.", value=w.held_outcomes
        )


class _LagCollector:
    def __init__(self, metrics: WorkerMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(PREFIX + "consumer_lag_messages", LAG_HELP, labels=("topic", "partition"))
        for (topic, partition), n in sorted(self.metrics.lag.items()):
            family.add_metric((topic, str(partition)), n)
        yield family
