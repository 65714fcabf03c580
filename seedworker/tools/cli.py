"""Command line: `seedworker run | simulate | schemas | inspect | export | import | evaluate | replay`.

Only turns flags into settings and calls the code."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from seedworker.core.config import ConfigError, load_settings


def _run(args: argparse.Namespace) -> int:
    from seedworker.broker.base import BusError
    from seedworker.engine.worker import Worker
    from seedworker.ops import collector
    from seedworker.ops.http_server import run_with_endpoint
    from seedworker.ops.logs import configure
    from seedworker.store.store import StoreError

    settings = load_settings(
        args.config,
        overrides={
            "kafka.bootstrap_servers": args.bootstrap_servers,
            "db": args.db,
            "kafka.group_id": args.group_id,
            "default_strategy": args.strategy,
            "log_format": args.log_format,
            "metrics.port": args.metrics_port,
        },
    )
    configure(args.log_level, settings.log_format)
    try:
        worker = Worker(settings, burst=args.burst)
        collector.tune()
        asyncio.run(collector.freezing(worker.ready, run_with_endpoint(worker, settings.metrics)))
    except (BusError, StoreError, ConfigError) as exc:
        print(f"seedworker: {exc}", file=sys.stderr)
        return 1
    return 0


# The other subcommands: (name, module, its add_arguments function, its run function, help). Each module owns its
# flags and its logic; this file only routes.
COMMANDS = [
    (
        "simulate",
        "seedworker.tools.simulation.command",
        "add_arguments",
        "run",
        "run strategies against simulated Tamiyo environments (no broker)",
    ),
    (
        "schemas",
        "seedworker.contract.schemas",
        "add_arguments",
        "run",
        "check or regenerate schemas/ (JSON Schema + AsyncAPI)",
    ),
    (
        "inspect",
        "seedworker.tools.inspect",
        "add_arguments",
        "run",
        "read a SQLite snapshot (read-only, safe while the worker runs)",
    ),
    (
        "export",
        "seedworker.tools.snapshot",
        "add_export_arguments",
        "run_export",
        "write the store as one JSON document (read-only, safe while running)",
    ),
    (
        "import",
        "seedworker.tools.snapshot",
        "add_import_arguments",
        "run_import",
        "load an exported JSON document into a new store",
    ),
    (
        "evaluate",
        "seedworker.tools.evaluate",
        "add_arguments",
        "run",
        "off-policy evaluation of the strategies from the logged decisions",
    ),
    (
        "replay",
        "seedworker.tools.replay",
        "add_arguments",
        "run",
        "rebuild the state into a new store from the Kafka topics (recovery)",
    ),
]


def build_parser() -> argparse.ArgumentParser:
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
    run.add_argument("--log-format", choices=("plain", "json"), help="log lines as text or JSON (default plain)")
    run.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics, /healthz, /readyz on this port (metrics.host, default 127.0.0.1); 0: off",
    )
    run.set_defaults(func=_run)

    for name, module, add_arguments, run_name, help_text in COMMANDS:
        mod = importlib.import_module(module)
        cmd = sub.add_parser(name, help=help_text)
        getattr(mod, add_arguments)(cmd)
        cmd.set_defaults(func=getattr(mod, run_name))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"seedworker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
