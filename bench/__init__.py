"""Benchmarks behind ``make bench`` (``python -m bench``): reports, never timed tests.

Convention: every module ``bench/bench_<name>.py`` (and ``bench/kafka_<name>.py``) that defines ``main(report)`` is
one benchmark; ``python -m bench`` runs them all in name order, or those picked with ``--only``. A module writes
its text through the ``Report`` it is given and reads the common options from ``report.options``
(``quick``, ``budget``, ``rounds``, ``events``, ``seed``, ``profile``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence

import numpy as np


class Report:
    """Collects the report text of every benchmark; each line is also printed (and flushed) as it is written."""

    def __init__(self, options: argparse.Namespace | None = None, *, stream=None):
        self.options = options or argparse.Namespace(quick=False, budget=None, rounds=None, events=None, seed=7)
        self.stream = sys.stdout if stream is None else stream
        self.lines: list[str] = []

    @property
    def quick(self) -> bool:
        return bool(getattr(self.options, "quick", False))

    def line(self, text: str = "") -> None:
        for part in str(text).split("\n"):
            self.lines.append(part)
            print(part, file=self.stream, flush=True)

    def section(self, title: str) -> None:
        self.line()
        self.line(title)
        self.line("=" * len(title))

    def table(self, header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> None:
        """A plain-text table; ``align`` is one char per column, ``l`` or ``r`` (default: first left, rest right)."""
        rows = [["" if c is None else str(c) for c in r] for r in rows]
        header = [str(h) for h in header]
        widths = [
            max(len(header[j]), *(len(r[j]) for r in rows)) if rows else len(header[j]) for j in range(len(header))
        ]
        align = align or ("l" + "r" * (len(header) - 1))

        def fmt(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)).rstrip()

        self.line(fmt(header))
        self.line(fmt(["-" * w for w in widths]))
        for r in rows:
            self.line(fmt(r))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def latency_stats(ns: np.ndarray) -> tuple[float, float]:
    """(median, p99) in microseconds of per-event latencies given in nanoseconds."""
    if len(ns) == 0:
        return float("nan"), float("nan")
    us = np.asarray(ns, dtype=float) / 1000.0
    return float(np.median(us)), float(np.percentile(us, 99))
