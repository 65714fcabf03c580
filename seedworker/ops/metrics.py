"""Prometheus metrics: counters, gauges and fixed-bucket histograms, and their text exposition (format 0.0.4).

No client library: the worker needs three metric kinds and one output format, and a library would bring a
process-global registry that every test has to reset. The counts the worker already keeps (``Worker.counters``,
persisted in SQLite with each batch) are read at scrape time rather than mirrored, so there is one source of truth;
only what the worker does not count itself (latencies, lag) is measured here.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol

if TYPE_CHECKING:
    from seedworker.engine.worker import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "seedworker_"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family as exposed: ``samples`` are (sample name, labels, value)."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]]


class Collector(Protocol):
    def collect(self) -> Iterable[Family]: ...


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    return name


class Histogram:
    """Fixed buckets chosen up front, so ``observe`` is a bisect and three additions: cheap enough per decision."""

    __slots__ = ("name", "help", "bounds", "_counts", "sum")

    def __init__(self, name: str, help: str, buckets: Iterable[float]):
        self.name = _check_name(name)
        self.help = help
        self.bounds = tuple(sorted({float(b) for b in buckets if math.isfinite(b)}))
        if not self.bounds:
            raise ValueError(f"{name}: a histogram needs at least one finite bucket bound")
        self._counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus buckets are "le", less or equal).
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def collect(self) -> Iterable[Family]:
        samples: list[tuple[str, Labels, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts):
            running += n
            samples.append((self.name + "_bucket", (("le", _number(bound)),), running))
        samples.append((self.name + "_sum", (), self.sum))
        samples.append((self.name + "_count", (), running))
        yield Family(self.name, "histogram", self.help, samples)


class Gauge:
    """A gauge whose children (one per label set) are replaced together, so a revoked partition disappears."""

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()):
        self.name = _check_name(name)
        self.help = help
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name {label!r}")
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, *labelvalues: str) -> None:
        self.values[labelvalues] = value

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        self.values = dict(values)

    def collect(self) -> Iterable[Family]:
        samples = [(self.name, tuple(zip(self.labelnames, key)), v) for key, v in sorted(self.values.items())]
        yield Family(self.name, "gauge", self.help, samples)


class Callback:
    """A family whose samples are read from somewhere else at scrape time: ``read()`` returns (labels, value)."""

    def __init__(self, name: str, kind: str, help: str, read: Callable[[], Iterable[tuple[Labels, float]]]):
        self.name = _check_name(name)
        self.kind = kind
        self.help = help
        self.read = read

    def collect(self) -> Iterable[Family]:
        yield Family(self.name, self.kind, self.help, [(self.name, labels, v) for labels, v in self.read()])


class Registry:
    def __init__(self) -> None:
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> Collector:
        self.collectors.append(collector)
        return collector

    def collect(self) -> list[Family]:
        families = [f for c in self.collectors for f in c.collect()]
        seen: set[str] = set()
        for f in families:
            if f.name in seen:
                raise ValueError(f"metric {f.name!r} is registered twice")
            seen.add(f.name)
        return families

    def exposition(self) -> str:
        return exposition(self.collect())


def exposition(families: Iterable[Family]) -> str:
    """The Prometheus text format: HELP and TYPE lines, then one line per sample; ends with a newline."""
    lines = []
    for f in families:
        lines.append(f"# HELP {f.name} {_escape_help(f.help)}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for name, labels, value in f.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                lines.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


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


class WorkerMetrics:
    """The worker's metric set. The worker calls ``selection.observe`` / ``transaction.observe``; everything else is
    read from the worker when scraped."""

    def __init__(self, worker: "Worker"):
        self.worker = worker
        self.registry = Registry()
        self.selection = Histogram(PREFIX + "selection_latency_seconds",
                                   "Time to decide one request (policy scores, draw, state update).",
                                   SELECTION_BUCKETS)
        self.transaction = Histogram(PREFIX + "transaction_latency_seconds",
                                     "Time of the one SQLite transaction that stores a batch.", TRANSACTION_BUCKETS)
        self.lag = Gauge(PREFIX + "consumer_lag_messages",
                         "Messages between the consumer's position and the partition's high watermark.",
                         ("topic", "partition"))
        self.registry.register(_WorkerCounters(worker))
        self.registry.register(Callback(PREFIX + "ready", "gauge", "1 when the worker is ready (see /readyz).",
                                        lambda: [((), int(all(worker.readiness().values())))]))
        self.registry.register(Callback(PREFIX + "decisions_pending", "gauge",
                                        "Decisions waiting for their outcome.",
                                        lambda: [((), worker.pending_decisions)]))
        self.registry.register(Callback(PREFIX + "outcomes_held", "gauge",
                                        "Outcomes held until their decision is known.",
                                        lambda: [((), worker.held_outcomes)]))
        self.registry.register(self.selection)
        self.registry.register(self.transaction)
        self.registry.register(self.lag)

    async def refresh(self) -> None:
        """Read what needs I/O (consumer lag) before a scrape."""
        lag = await self.worker.bus.lag()
        self.lag.replace({(t, str(p)): n for (t, p), n in lag.items()})

    async def exposition(self) -> str:
        await self.refresh()
        return self.registry.exposition()


class _WorkerCounters:
    """One counter family per name in ``Worker.counters``, read when scraped."""

    def __init__(self, worker: "Worker"):
        self.worker = worker

    def collect(self) -> Iterable[Family]:
        values = self.worker.counters.values
        for name in sorted(COUNTER_HELP.keys() | values.keys()):
            family = f"{PREFIX}{name}_total"
            if not _NAME.match(family):
                continue
            help = COUNTER_HELP.get(name, f"Worker counter {name}.")
            yield Family(family, "counter", help + " Kept in SQLite, so it survives restarts.",
                         [(family, (), values.get(name, 0))])
