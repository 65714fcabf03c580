"""Command line: `seedworker run | simulate | schemas | inspect`. Only turns flags into settings and calls the code."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .config import ConfigError, load_settings


def _run(args: argparse.Namespace) -> int:
    from .bus import BusError
    from .store import StoreError
    from .worker import Worker

    settings = load_settings(args.config, overrides={
        "kafka.bootstrap_servers": args.bootstrap_servers, "db": args.db, "kafka.group_id": args.group_id,
        "default_strategy": args.strategy,
    })
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(Worker(settings, burst=args.burst).run())
    except (BusError, StoreError, ConfigError) as exc:
        print(f"seedworker: {exc}", file=sys.stderr)
        return 1
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .arms import ArmTable
    from .store import read_all

    snap = read_all(args.db)
    out = {"counters": snap["counters"],
           "offsets": {f"{t}[{p}]": o for (t, p), o in sorted(snap["offsets"].items())}, "blueprints": {}}
    for bp_id, state in sorted(snap["blueprints"].items()):
        a = ArmTable.from_dict(state["arms"])
        rows = np.arange(len(a))
        means, counts = a.means(rows), a.pulls[rows]
        sd = np.sqrt(a.variances(rows))
        total = max(a.selections[rows].sum(), 1)
        out["blueprints"][bp_id] = {
            "strategy": state["strategy"], "decisions": state["decisions"],
            "seeds": [{"seed_id": s, "pulls": int(counts[i]), "selections": int(a.selections[i]),
                       "share": float(a.selections[i] / total), "mean_reward": float(means[i]),
                       "ci95": float(1.96 * sd[i] / np.sqrt(counts[i])) if counts[i] > 1 else None,
                       "decayed_mean": float(a.means(rows[i:i + 1], True)[0])}
                      for i, s in enumerate(a.seed_ids)],
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(out["counters"].items())))
    print("offsets:  " + ", ".join(f"{k}={v}" for k, v in out["offsets"].items()))
    for bp_id, bp in out["blueprints"].items():
        print(f"\nblueprint {bp_id}  (decisions {bp['decisions']}, strategy {bp['strategy'] or 'default'})")
        print(f"  {'seed':<14}{'pulls':>7}{'share':>8}{'mean':>10}{'±95%':>9}{'decayed':>10}")
        for s in bp["seeds"]:
            ci = f"{s['ci95']:.4f}" if s["ci95"] is not None else "-"
            print(f"  {s['seed_id']:<14}{s['pulls']:>7}{s['share']:>8.1%}{s['mean_reward']:>10.4f}{ci:>9}"
                  f"{s['decayed_mean']:>10.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .schemas import add_arguments as schema_args
    from .simulation.command import add_arguments as sim_args

    p = argparse.ArgumentParser(prog="seedworker", description="Seed selection for Esper by bandit learning.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the worker on Kafka until SIGTERM/SIGINT")
    run.add_argument("--config", help="TOML settings file (SEEDWORKER_* variables override it)")
    run.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    run.add_argument("--db", help="SQLite state file (default var/seedworker.sqlite)")
    run.add_argument("--group-id", help="Kafka consumer group")
    run.add_argument("--strategy", help="default strategy")
    run.add_argument("--burst", action="store_true", help="stop once the input topics are drained")
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(func=_run)

    sim = sub.add_parser("simulate", help="run strategies against simulated Tamiyo environments (no broker)")
    sim_args(sim)
    sim.set_defaults(func=_simulate)

    sch = sub.add_parser("schemas", help="check or regenerate schemas/ (JSON Schema + AsyncAPI)")
    schema_args(sch)
    sch.set_defaults(func=_schemas)

    ins = sub.add_parser("inspect", help="read a SQLite snapshot (read-only, safe while the worker runs)")
    ins.add_argument("--db", default="var/seedworker.sqlite", help="SQLite state file")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=_inspect)
    return p


def _simulate(args: argparse.Namespace) -> int:
    from .simulation.command import run

    return run(args)


def _schemas(args: argparse.Namespace) -> int:
    from .schemas import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"seedworker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
