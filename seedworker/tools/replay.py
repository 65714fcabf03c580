"""``seedworker replay``: the command line of the disaster-recovery rebuild (seedworker.engine.replay)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime

from seedworker.broker.base import BusError
from seedworker.core.config import load_settings
from seedworker.engine.replay import ReplayError, replay
from seedworker.ops.logs import configure
from seedworker.store.store import StoreError


def _timestamp(value: str) -> datetime:
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time (2026-01-31T12:00:00Z) or epoch milliseconds, got {value!r}"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no timezone; add one (e.g. Z for UTC)")
    return when


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "rebuild the worker's state into a fresh SQLite store from the Kafka topics"
    parser.add_argument("--db", required=True, help="the NEW SQLite store to write (must not exist)")
    parser.add_argument("--config", help="the live worker's TOML settings (SEEDWORKER_* variables override it)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: from the settings)")
    parser.add_argument(
        "--from-timestamp",
        type=_timestamp,
        metavar="TIME",
        help="replay the records from this time on (ISO 8601 with a timezone, or epoch "
        "milliseconds); default: from the earliest offsets",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="WARNING")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, overrides={"kafka.bootstrap_servers": args.bootstrap_servers})
    configure(args.log_level, settings.log_format)
    try:
        summary = asyncio.run(replay(settings, args.db, since=args.from_timestamp, progress=not args.no_progress))
    except (ReplayError, BusError, StoreError) as exc:
        print(f"seedworker replay: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.render())
    return 0
