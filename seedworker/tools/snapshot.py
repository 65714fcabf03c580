"""``seedworker export`` / ``seedworker import``: a store as one JSON document, to move state between machines.

The document carries what a worker restores from, and nothing it does not: the learned state of every blueprint,
every decision (its columns, its payload as JSON), held outcomes, unsent outbox rows, counters, the consumed offsets
and the meta values. Sent outbox rows (already on Kafka) and bookkeeping times (``updated_at``, ``created_at``) are
left out, so exporting an imported document gives the same bytes.

Floats are exact: orjson writes the shortest text that reads back as the same double. JSON has no ±inf or NaN, so a
non-finite float is written as ``{"$float": "-Infinity"}`` (``"Infinity"``, ``"NaN"``), and inside an array as the
string itself. A numpy array is ``{"$array": dtype, "shape": [...], "data": [flat values]}``. Binary outbox keys and
values (a dead letter keeps the original bytes) are base64.

Import goes through the Store: a new file, its migrations, then ONE transaction with everything. It refuses a target
that holds state unless ``--force``, and a target another process has open (stop the worker first).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.config import load_settings
from seedworker.core.join import HeldOutcome, Resolution
from seedworker.store import readers
from seedworker.store.migrations import SCHEMA_VERSION
from seedworker.store.readers import in_use, read_snapshot
from seedworker.store.rows import Batch, BlueprintRow, DecisionRow, OutboxRow, StoredDecision, dump_state, load_state
from seedworker.store.store import Store, StoreError

FORMAT = "seedworker-snapshot"
FORMAT_VERSION = 3  # 2: input partitions of decisions, held outcomes and blueprints; per-partition watermarks
# 3: outbox rows name their partition and may be tombstones (value null): the changelog; blueprint states as JSON
_NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


class SnapshotError(ValueError):
    """A document that cannot be imported, or a target that must not be overwritten; the message says which."""


# -- values --------------------------------------------------------------------------------------------------------
def _float_text(x: float) -> str:
    return "NaN" if math.isnan(x) else "Infinity" if x > 0 else "-Infinity"


def encode_value(value: Any) -> Any:
    """Blueprint state (dicts, lists, numpy arrays, floats) as plain JSON values, exactly."""
    if isinstance(value, np.ndarray):
        data = value.ravel().tolist()
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            data = [v if math.isfinite(v) else _float_text(v) for v in data]
        return {"$array": value.dtype.str, "shape": list(value.shape), "data": data}
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        return x if math.isfinite(x) else {"$float": _float_text(x)}
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"cannot export a value of type {type(value).__name__}")


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "$array" in value:
            data = [_NON_FINITE[v] if isinstance(v, str) else v for v in value["data"]]
            return np.array(data, dtype=np.dtype(value["$array"])).reshape(value["shape"])
        if "$float" in value:
            return _NON_FINITE[value["$float"]]
        return {k: decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    return value


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)


# -- export --------------------------------------------------------------------------------------------------------
def export_snapshot(path: str | Path) -> dict[str, Any]:
    """The store at ``path`` as a JSON-ready document, from one read-only snapshot (safe while the worker runs)."""
    return read_snapshot(path, _export)


def _export(db) -> dict[str, Any]:
    readers.require_tables(db, readers.STATE_TABLES)
    # Row order is kept where the worker depends on it: pending decisions are restored in insertion order.
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema_version": readers.schema_version(db),
        "meta": readers.meta(db),
        "counters": readers.counters(db),
        "offsets": [o._asdict() for o in readers.offsets(db)],
        "watermarks": [w._asdict() for w in readers.watermarks(db)],
        "blueprints": {
            bp: {"version": r.version, "partition": r.partition, "state": encode_value(load_state(r.state))}
            for bp, r in readers.blueprints(db).items()
        },
        "decisions": [_decision(d) for d in readers.decisions(db)],
        "held_outcomes": [
            {
                "event_id": h.event_id,
                "decision_id": h.decision_id,
                "blueprint_id": h.blueprint_id,
                "held_since": h.held_since,
                "partition": h.partition,
                "offset": h.offset,
                "payload": orjson.loads(h.payload),
            }
            for h in readers.held_outcomes(db)
        ],
        "outbox": [_outbox(u.message) for u in readers.unsent(db)],
    }


def _decision(d: StoredDecision) -> dict[str, Any]:
    r = d.row
    # The key order is the document's (it was the column order of the table); to_batch reads them by name.
    return {
        "decision_id": r.decision_id,
        "request_id": r.request_id,
        "blueprint_id": r.blueprint_id,
        "seed_id": r.seed_id,
        "seed_idx": r.seed_idx,
        "strategy": r.strategy,
        "propensity": r.propensity,
        "explored": bool(r.explored),
        "state_version": r.state_version,
        "request_time": r.request_time,
        "partition": r.partition,
        "status": d.status,
        "reward": d.reward,
        "outcome_time": d.outcome_time,
        "payload": orjson.loads(r.payload),
    }


def _outbox(m: OutboxRow) -> dict[str, Any]:
    # Headers in their stored form, [name, latin-1 text] pairs: binary header values survive JSON.
    return {
        "topic": m.topic,
        "key": _b64(m.key),
        "value": None if m.value is None else _b64(m.value),
        "headers": orjson.loads(hdr.to_blob(m.headers)),
        "partition": m.partition,
    }


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


# -- import --------------------------------------------------------------------------------------------------------
def to_batch(doc: dict[str, Any]) -> Batch:
    """Check the document and turn it into the one Batch the Store writes."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(f"format: not a {FORMAT} document")
    if doc.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"format_version: this seedworker reads version {FORMAT_VERSION}, got {doc.get('format_version')!r}"
        )
    schema = doc.get("schema_version")
    if schema != SCHEMA_VERSION:
        # Rows are written with the columns of this schema; another one needs its own conversion, which none has yet.
        raise SnapshotError(
            f"schema_version: exported from store schema {schema!r}, this seedworker has {SCHEMA_VERSION}"
        )
    b = Batch()
    where = "document"
    try:
        where = "meta"
        b.meta = {str(k): _text(v, k) for k, v in doc["meta"].items()}
        where = "counters"
        b.counters = {str(k): _int(v, k) for k, v in doc["counters"].items()}
        where = "offsets"
        b.offsets = {
            (str(o["topic"]), _int(o["partition"], "partition")): _int(o["next_offset"], "next_offset")
            for o in doc["offsets"]
        }
        where = "watermarks"
        b.watermarks = {_int(w["partition"], "partition"): float(w["event_time"]) for w in doc["watermarks"]}
        for bp_id, entry in doc["blueprints"].items():
            where = f"blueprints.{bp_id}"
            b.blueprints[bp_id] = BlueprintRow(
                dump_state(decode_value(entry["state"])),
                _int(entry["version"], "version"),
                _int(entry["partition"], "partition"),
            )
        for n, d in enumerate(doc["decisions"]):
            where = f"decisions[{n}]"
            payload = orjson.dumps(d["payload"])
            selected: ev.SeedSelected = ev.decode(payload, ev.SEED_SELECTED)  # type: ignore[assignment]
            if selected.decision_id != d["decision_id"]:
                raise SnapshotError(f"{where}: payload is the decision {selected.decision_id}")
            b.decisions.append(
                DecisionRow(
                    d["decision_id"],
                    d["request_id"],
                    d["blueprint_id"],
                    d["seed_id"],
                    d["seed_idx"],
                    d["strategy"],
                    d["propensity"],
                    int(d["explored"]),
                    d["state_version"],
                    d["request_time"],
                    payload,
                    _int(d["partition"], "partition"),
                )
            )
            if (d["status"], d["reward"], d["outcome_time"]) != ("pending", None, None):
                b.resolutions.append(Resolution(d["decision_id"], d["status"], d["reward"], d["outcome_time"]))
        for n, h in enumerate(doc["held_outcomes"]):
            where = f"held_outcomes[{n}]"
            outcome = ev.decode(orjson.dumps(h["payload"]), ev.ADAPTATION_OUTCOME)
            if outcome.event_id != h["event_id"]:  # type: ignore[attr-defined]
                raise SnapshotError(f"{where}: payload is the outcome {outcome.event_id}")
            b.held.append(
                HeldOutcome(
                    outcome,
                    _int(h["partition"], "partition"),  # type: ignore[arg-type]
                    float(h["held_since"]),
                    _int(h["offset"], "offset"),
                )
            )
        for n, o in enumerate(doc["outbox"]):
            where = f"outbox[{n}]"
            b.outbox.append(
                OutboxRow(
                    o["topic"],
                    _unb64(o["key"]),
                    None if o["value"] is None else _unb64(o["value"]) or b"",
                    hdr.from_blob(orjson.dumps(o["headers"])),
                    None if o.get("partition") is None else _int(o["partition"], "partition"),
                )
            )
    except SnapshotError:
        raise
    except ev.EventError as exc:
        raise SnapshotError(f"{where}: payload: {exc}") from None
    except KeyError as exc:
        raise SnapshotError(f"{where}: missing {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise SnapshotError(f"{where}: {exc}") from None
    return b


def _int(value: Any, name: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SnapshotError(f"{name}: expected an integer, got {value!r}")
    return value


def _text(value: Any, name: Any) -> str:
    if not isinstance(value, str):
        raise SnapshotError(f"{name}: expected a string, got {value!r}")
    return value


def holds_state(path: str | Path) -> bool:
    """Whether the file at ``path`` has anything a worker would restore (or is not an empty store at all)."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return False

    try:
        # Tables of some other database count as state: not ours to overwrite without --force.
        return read_snapshot(p, readers.holds_state)
    except StoreError:
        return True  # not readable as SQLite: treat as precious


async def import_snapshot(doc: dict[str, Any], path: str | Path, *, force: bool = False) -> None:
    """Write the document into a new store at ``path``: the Store's migrations, then one transaction.

    The store is built next to the target and moved over it, so a failed import leaves the target as it was."""
    batch = to_batch(doc)
    target = Path(path)
    if holds_state(target) and not force:
        raise SnapshotError(f"{target} already holds state; use --force to replace it")
    if in_use(target):
        raise SnapshotError(f"{target} is open in another process (a running worker?); stop it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.import-{os.getpid()}")
    _remove_side_files(tmp)
    tmp.unlink(missing_ok=True)
    try:
        store = await Store(tmp).open()
        try:
            await store.write(batch)
        finally:
            await store.close()
        # The target's side files belong to the old database: left next to the new one, SQLite would read them.
        _remove_side_files(target)
        os.replace(tmp, target)
    finally:
        _remove_side_files(tmp)
        tmp.unlink(missing_ok=True)


def _remove_side_files(db: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


# -- commands ------------------------------------------------------------------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Write the store as one JSON document (read-only; safe while the worker runs)."
    parser.add_argument("--db", help="SQLite state file (default: the `db` setting, var/seedworker.sqlite)")
    parser.add_argument("--config", help="TOML settings file (only its `db` is used)")
    parser.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write it (default: stdout)")


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Load an exported JSON document into a new store (the worker must not be running on the target)."
    )
    parser.add_argument("input", metavar="FILE", help="the exported document ('-' for stdin)")
    parser.add_argument("--db", help="SQLite state file to create (default: the `db` setting)")
    parser.add_argument("--config", help="TOML settings file (only its `db` is used)")
    parser.add_argument("--force", action="store_true", help="replace a target that already holds state")


def run_export(args: argparse.Namespace) -> int:
    db = load_settings(args.config, overrides={"db": args.db}).db
    try:
        data = dumps(export_snapshot(db))
    except StoreError as exc:
        print(f"seedworker export: {exc}", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        # The document holds what the store holds, so it is as private as the store (0600).
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return 0


def run_import(args: argparse.Namespace) -> int:
    db = load_settings(args.config, overrides={"db": args.db}).db
    try:
        raw = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
        doc = orjson.loads(raw)
        asyncio.run(import_snapshot(doc, db, force=args.force))
    except (OSError, orjson.JSONDecodeError, SnapshotError, StoreError) as exc:
        print(f"seedworker import: {exc}", file=sys.stderr)
        return 1
    return 0
