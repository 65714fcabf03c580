"""``python -m bench [--quick] [--only core,...]``: run the benchmark modules, print the combined report and write
it to ``var/bench-report.txt`` with the date and the machine's facts."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import bench
from bench import Report

PREFIXES = ("bench_", "kafka_")
NAMED = ("regret", "contextual")  # modules registered by name (no prefix)
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "var" / "bench-report.txt"


def discover() -> dict[str, str]:
    """{short name: module name} of every benchmark module (``bench_core`` is ``core``, ``kafka_x`` stays)."""
    found = {}
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith(PREFIXES) or info.name in NAMED:
            found[info.name.removeprefix("bench_")] = f"bench.{info.name}"
    return dict(sorted(found.items()))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> list[str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "n/a"
    return [
        f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"machine:   {platform.node()} {platform.machine()} {platform.system()} {platform.release()}",
        f"cpu:       {_cpu_model()}; cpu_count={os.cpu_count()} usable={usable}; loadavg at start {load}",
        f"python:    {platform.python_implementation()} {platform.python_version()}",
        "versions:  "
        + ", ".join(
            f"{d} {_version(d)}"
            for d in ("seedworker", "numpy", "pydantic", "mabwiser", "river", "vowpalwabbit", "smpybandits")
        ),
    ]


def parse_args(argv: list[str] | None, modules: dict[str, str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="few events per case: a smoke test of the machinery")
    p.add_argument(
        "--only",
        default=None,
        metavar="NAME[,NAME]",
        help=f"run only these benchmark modules (known: {', '.join(modules) or 'none'}); "
        "a name matches a module by prefix",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="S",
        help="seconds of timed events per slow case (default 20; 1 with --quick)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the tables, profile (cProfile) the seedworker cases that miss a goal",
    )
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per case (default 3; 2 with --quick)")
    p.add_argument("--events", type=int, default=None, help="timed events per case for the small configuration")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated streams")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report file (default {DEFAULT_OUT})")
    return p.parse_args(argv)


def select(modules: dict[str, str], only: str | None) -> dict[str, str]:
    if not only:
        return modules
    picked = {}
    for want in (w.strip() for w in only.split(",") if w.strip()):
        hits = {k: v for k, v in modules.items() if k == want or k.startswith(want)}
        if not hits:
            raise SystemExit(f"--only: no benchmark module named {want!r}; known: {', '.join(modules)}")
        picked.update(hits)
    return dict(sorted(picked.items()))


def main(argv: list[str] | None = None) -> int:
    modules = discover()
    args = parse_args(argv, modules)
    chosen = select(modules, args.only)
    report = Report(args)
    report.line(
        "seedworker benchmark report" + (" (--quick: smoke test, numbers not meaningful)" if args.quick else "")
    )
    for fact in machine_facts():
        report.line(fact)
    report.line(f"modules:   {', '.join(chosen) or 'none'}")
    failed = []
    t0 = time.perf_counter()
    for name, modname in chosen.items():
        started = time.perf_counter()
        try:
            module = importlib.import_module(modname)
            entry = getattr(module, "main", None)
            if not callable(entry):
                report.line(f"\n[{name}] skipped: {modname} has no main(report)")
                continue
            entry(report)
        except KeyboardInterrupt:
            raise
        except BaseException:  # a failing module must not hide the others' results
            failed.append(name)
            report.line(f"\n[{name}] FAILED:")
            report.line(traceback.format_exc().rstrip())
        report.line(f"\n[{name}] took {time.perf_counter() - started:.1f} s")
    report.line(
        f"\ntotal {time.perf_counter() - t0:.1f} s" + (f"; FAILED modules: {', '.join(failed)}" if failed else "")
    )
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.text())
    print(f"report written to {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
