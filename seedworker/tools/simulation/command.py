"""``seedworker simulate``: run strategies and the seed_idx = 0 baseline on simulated Tamiyo-like streams.

Prints a table per scenario (mean reward, cumulative regret, best-seed share after exploration, seeds never tried,
improvement over seed0), writes ``<out>/<scenario>.json`` and ``<out>/<scenario>.png``.
"""

from __future__ import annotations

import argparse
import sys

from seedworker.contract.events import MAX_CANDIDATES
from seedworker.tools.simulation.envs import SCENARIOS
from seedworker.tools.simulation.report import dumps, print_tables, to_json_dict, write_json, write_png
from seedworker.tools.simulation.runner import CORE_STRATEGIES, check_strategies, simulate

DEFAULT_OUT = "var/simulate"


def _integer_at_least(low: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {n}")
        return n

    return parse


_positive = _integer_at_least(1)
_non_negative = _integer_at_least(0)


def _seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0].removeprefix("``seedworker simulate``: ")
    parser.add_argument(
        "--scenario",
        choices=[*SCENARIOS, "all"],
        default="stationary",
        help="environment to simulate; 'all' runs every scenario (default: stationary)",
    )
    parser.add_argument(
        "--strategies",
        default=None,
        metavar="LIST",
        help="comma-separated strategies to compare (the seed0 baseline always runs); default: "
        f"{','.join(CORE_STRATEGIES)}, plus discounted-ucb where qualities change and "
        "beta-thompson for bernoulli",
    )
    parser.add_argument("--steps", type=_positive, default=2000, help="graft requests per run (default: 2000)")
    parser.add_argument(
        "--seeds", type=_positive, default=8, metavar="K", help="candidate seeds per request (default: 8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the environment (default: 0)")
    parser.add_argument(
        "--delay",
        type=_non_negative,
        default=0,
        help="outcomes arrive this many steps after their decision (default: 0)",
    )
    parser.add_argument(
        "--half-life",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        dest="half_life",
        help="recency half-life for non-stationary scenarios and discounted-ucb "
        "(default: a tenth of the run; one step is 60 s)",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"directory for <scenario>.json and <scenario>.png (default: {DEFAULT_OUT})",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of the table")


def run(args: argparse.Namespace) -> int:
    prog = "seedworker simulate"
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    try:
        strategies = None if args.strategies is None else check_strategies(args.strategies.split(","))
    except ValueError as exc:
        print(f"{prog}: error: --strategies: {exc}", file=sys.stderr)
        return 2
    if not 2 <= args.seeds <= MAX_CANDIDATES:
        print(f"{prog}: error: --seeds: need 2 to {MAX_CANDIDATES} candidate seeds", file=sys.stderr)
        return 2
    if "costly" in scenarios and args.seeds < 4:
        print(f"{prog}: error: --seeds: the costly scenario needs at least 4 candidate seeds", file=sys.stderr)
        return 2
    progress = not args.no_progress and sys.stderr.isatty()
    out = sys.stdout
    notes = sys.stderr if args.json else sys.stdout
    results = []
    written = []
    for name in scenarios:
        result = simulate(
            name,
            strategies=strategies,
            steps=args.steps,
            n_seeds=args.seeds,
            seed=args.seed,
            delay=args.delay,
            half_life_s=args.half_life,
            progress=progress,
        )
        results.append(result)
        files = [write_json(result, f"{args.out}/{name}.json")]
        if not args.no_plot:
            files.append(write_png(result, f"{args.out}/{name}.png"))
        written.extend(files)
        if not args.json:
            if len(results) > 1:
                print(file=out)
            print_tables([result], out)
            out.flush()
    if args.json:
        out.write(dumps({"scenarios": {r.scenario: to_json_dict(r) for r in results}}).decode())
        out.flush()
    print(("\n" if not args.json else "") + "wrote " + ", ".join(str(p) for p in written), file=notes)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seedworker simulate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
