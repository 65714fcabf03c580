"""export / import: the document carries everything a worker restores, exactly.

The stores are built by the real Worker on the in-memory bus (requests, outcomes, late and duplicate outcomes, held
outcomes, dead letters, a strategy switch, a crash after a commit that leaves unsent outbox rows), never by hand.
"""

from __future__ import annotations

import base64
import copy
import math
import os

import numpy as np
import orjson
import pytest

from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.core.config import Settings
from seedworker.engine.worker import Worker
from seedworker.store.migrations import SCHEMA_VERSION
from seedworker.store.readers import read_snapshot
from seedworker.store.rows import load_state
from seedworker.store.store import Store
from seedworker.tools.cli import main
from seedworker.tools.snapshot import (
    FORMAT_VERSION,
    SnapshotError,
    decode_value,
    dumps,
    encode_value,
    export_snapshot,
    import_snapshot,
)
from tests.support import HISTORY_BLUEPRINTS as BLUEPRINTS
from tests.support import decision_order as selections
from tests.support import drain, history_settings, make_outcome, make_request, run_history

REQUESTS, OUTCOMES, CONTROL = "graft.requested", "adaptation.outcome", "seedworker.control"


def assert_same(a, b, where: str = "state") -> None:
    """Equal values of equal types, arrays bit for bit (so -0.0, ±inf and NaN positions count)."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isnan(a) and math.isnan(b) or (a == b and math.copysign(1, a) == math.copysign(1, b)), where
    else:
        assert a == b, where


def stored_states(db) -> dict:
    return read_snapshot(
        db,
        lambda c: {
            bp: load_state(s) for bp, s in c.execute("SELECT blueprint_id, state FROM blueprints ORDER BY blueprint_id")
        },
    )


@pytest.fixture
async def history(tmp_path):
    settings = history_settings(tmp_path / "original.sqlite")
    bus = await run_history(settings)
    return settings, bus


# -- the document --------------------------------------------------------------------------------------------------
async def test_export_import_export_is_byte_identical_and_keeps_the_state_exact(history, tmp_path):
    settings, _ = history
    first = dumps(export_snapshot(settings.db))
    doc = orjson.loads(first)
    # The history produced every kind of row the document has to carry.
    statuses = {d["status"] for d in doc["decisions"]}
    assert {"pending", "resolved", "expired"} <= statuses  # a late outcome (not learned) leaves its decision to expire
    assert doc["held_outcomes"] and doc["outbox"]
    assert {"dead_letters", "dangling_outcomes", "duplicate_outcomes", "late_outcomes"} <= set(doc["counters"])
    assert doc["watermarks"] and doc["offsets"]
    assert doc["blueprints"]["bp-eps"]["state"]["strategy"] == "ucb"
    assert b'"-Infinity"' in first  # t_ref / last_selected of never-tried seeds
    assert doc["format_version"] == FORMAT_VERSION and doc["schema_version"] == SCHEMA_VERSION == 3

    target = tmp_path / "moved" / "imported.sqlite"
    await import_snapshot(orjson.loads(first), target)
    assert dumps(export_snapshot(target)) == first
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert_same(stored_states(settings.db), stored_states(target))
    # Payloads are stored byte for byte: a retried request gets exactly the stored answer again.
    rows = "SELECT decision_id, status, reward, outcome_time, payload FROM decisions ORDER BY rowid"
    assert read_snapshot(settings.db, lambda c: c.execute(rows).fetchall()) == read_snapshot(
        target, lambda c: c.execute(rows).fetchall()
    )
    unsent = "SELECT topic, key, value, headers FROM outbox WHERE sent_at IS NULL ORDER BY id"
    assert read_snapshot(settings.db, lambda c: c.execute(unsent).fetchall()) == read_snapshot(
        target, lambda c: c.execute(unsent).fetchall()
    )


@pytest.mark.parametrize("half_life_s", [None, 600.0])
async def test_a_worker_on_the_imported_store_decides_like_one_on_the_original(tmp_path, half_life_s):
    original = history_settings(tmp_path / "original.sqlite", half_life_s)
    bus = await run_history(original)
    moved = history_settings(tmp_path / "imported.sqlite", half_life_s)
    doc = export_snapshot(original.db)
    await import_snapshot(doc, moved.db)
    pending_ids = {d["decision_id"] for d in doc["decisions"] if d["status"] == "pending"}
    unsent = [o for o in doc["outbox"] if o["topic"] == "seed.selected"]
    assert len(pending_ids) == 6 + 3 and len(unsent) == 3

    rng = np.random.default_rng(11)
    continuation = []  # the same new traffic for both: (topic, key, value)
    pending = [s for s in selections(bus) if s.decision_id in pending_ids]  # (the unsent three are not on the bus)
    for i in range(300, 310):
        for bp in BLUEPRINTS:
            continuation.append((REQUESTS, bp.encode(), make_request(i, bp, rng, extra_seed=i % 4 == 0)))
    continuation.append((REQUESTS, b"bp-lin", make_request(900, "bp-lin", rng, at=305)))  # joins the held outcome
    continuation.append((REQUESTS, b"bp-thompson", make_request(3, "bp-thompson", np.random.default_rng(7))))
    continuation += [(OUTCOMES, s.blueprint_id.encode(), make_outcome(s, rng)) for s in pending]

    async def resume(settings: Settings) -> tuple[list[bytes], list[dict], Worker]:
        b = copy.deepcopy(bus)
        seen = {m.value for m in b.read("seed.selected")}
        for topic, key, value in continuation:
            b.produce(topic, key, value)
        w = await drain(settings, b)
        # Outcomes for what was just decided, then more requests: the learning after the move must agree too.
        r = np.random.default_rng(5)
        for s in [ev.decode(m.value) for m in b.read("seed.selected") if m.value not in seen]:
            b.produce(OUTCOMES, s.blueprint_id.encode(), make_outcome(s, r))
        for i in range(400, 410):
            for bp in BLUEPRINTS:
                b.produce(REQUESTS, bp.encode(), make_request(i, bp, r))
        w = await drain(settings, b)
        new = [m for m in b.read("seed.selected") if m.value not in seen]
        # occurred_at is the worker's wall clock at decision time; every other field must be equal.
        return [m.value for m in new], [{**orjson.loads(m.value), "occurred_at": None} for m in new], w

    raw_a, events_a, worker_a = await resume(original)
    raw_b, events_b, worker_b = await resume(moved)
    # The unsent outbox rows are published, byte for byte as stored.
    assert {base64.b64decode(o["value"]) for o in unsent} <= set(raw_a) & set(raw_b)
    assert events_a == events_b
    assert len(events_a) == 3 + 3 * 10 + 1 + 3 * 10  # republished, new, the held outcome's request, new again
    assert {e["strategy"] for e in events_a} >= {"thompson", "linucb", "ucb"}
    assert any(e["strategy"] == "thompson" and e["propensity_method"] != "exact" for e in events_a)  # drawn
    assert worker_a.counters.values == worker_b.counters.values
    assert worker_a.counters["outcomes_learned"] > 0 and worker_a.counters["duplicate_requests"] == 1
    assert_same(stored_states(original.db), stored_states(moved.db))


# -- refusing ------------------------------------------------------------------------------------------------------
async def test_import_refuses_a_target_with_state_unless_forced_and_an_open_target_always(history, tmp_path):
    settings, _ = history
    doc = export_snapshot(settings.db)
    other = history_settings(tmp_path / "other.sqlite")
    await drain_one_request(other)
    before = dumps(export_snapshot(other.db))
    with pytest.raises(SnapshotError, match="already holds state; use --force"):
        await import_snapshot(doc, other.db)
    assert dumps(export_snapshot(other.db)) == before

    store = await Store(other.db).open()  # as a running worker holds it
    try:
        with pytest.raises(SnapshotError, match="open in another process"):
            await import_snapshot(doc, other.db, force=True)
    finally:
        await store.close()
    assert dumps(export_snapshot(other.db)) == before

    await import_snapshot(doc, other.db, force=True)
    assert dumps(export_snapshot(other.db)) == dumps(doc)
    assert sorted(os.listdir(tmp_path)) == ["original.sqlite", "other.sqlite"]  # no side or temporary files left

    empty = tmp_path / "empty.sqlite"
    await (await Store(empty).open()).close()  # migrated, no rows: not state
    await import_snapshot(doc, empty)
    assert dumps(export_snapshot(empty)) == dumps(doc)


async def drain_one_request(settings: Settings) -> None:
    bus = MemoryBus()
    await bus.ensure_topics({REQUESTS: 2, OUTCOMES: 2})
    bus.produce(REQUESTS, b"bp-x", make_request(1, "bp-x", np.random.default_rng(0)))
    await drain(settings, bus)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="something-else"), "format: not a seedworker-snapshot"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.update(schema_version=99), "schema_version: exported from store schema 99"),
        (lambda d: d["decisions"][3]["payload"].pop("seed_id"), r"decisions\[3\]: payload: seed_id"),
        (lambda d: d["decisions"][3]["payload"].update(decision_id="x"), r"decisions\[3\]: payload is the decision"),
        (lambda d: d["counters"].update(decisions="many"), "decisions: expected an integer"),
        (lambda d: d["held_outcomes"][0].pop("held_since"), r"held_outcomes\[0\]: missing 'held_since'"),
        (lambda d: d["outbox"][0].update(value="not base64!"), r"outbox\[0\]"),
    ],
)
async def test_a_bad_document_is_refused_naming_the_place_and_nothing_is_written(history, tmp_path, edit, message):
    settings, _ = history
    doc = export_snapshot(settings.db)
    edit(doc)
    target = tmp_path / "target.sqlite"
    with pytest.raises(SnapshotError, match=message):
        await import_snapshot(doc, target)
    assert not target.exists()


# -- the commands --------------------------------------------------------------------------------------------------
async def test_export_and_import_commands(history, tmp_path, capsys):
    settings, _ = history
    out = tmp_path / "snap.json"
    assert main(["export", "--db", settings.db, "-o", str(out)]) == 0
    assert os.stat(out).st_mode & 0o777 == 0o600  # as private as the store
    target = tmp_path / "cli.sqlite"
    assert await _in_thread(main, ["import", str(out), "--db", str(target)]) == 0
    assert main(["export", "--db", str(target)]) == 0
    assert capsys.readouterr().out.encode() == out.read_bytes()
    assert await _in_thread(main, ["import", str(out), "--db", str(target)]) == 1
    assert "already holds state" in capsys.readouterr().err
    assert await _in_thread(main, ["import", str(out), "--db", str(target), "--force"]) == 0
    assert main(["export", "--db", str(tmp_path / "missing.sqlite")]) == 1
    assert "no store at" in capsys.readouterr().err


async def _in_thread(fn, *args):
    # `import` runs its own event loop (asyncio.run), which cannot start inside the test's loop.
    import asyncio

    return await asyncio.to_thread(fn, *args)


# -- values --------------------------------------------------------------------------------------------------------
def test_values_round_trip_exactly_through_json():
    tiny = np.nextafter(0.0, 1.0)
    state = {
        "clock": -math.inf,
        "x": 0.1 + 0.2,
        "neg_zero": -0.0,
        "nan": math.nan,
        "n": 3,
        "flag": True,
        "name": "Infinity",
        "none": None,
        "ids": ["a", "b"],
        "names": ("p", "q"),
        "cols": np.array([1 / 3, -np.inf, np.inf, np.nan, -0.0, tiny, 1e308]),
        "empty": np.zeros((0, 3, 3)),
        "ints": np.arange(4, dtype=np.int64),
        "np_scalar": np.float64(2.5e-300),
        "mat": np.linspace(-1, 1, 12).reshape(2, 2, 3),
    }
    back = decode_value(orjson.loads(orjson.dumps(encode_value(state))))
    expect = dict(state, names=["p", "q"], np_scalar=2.5e-300)  # tuples come back as lists, numpy scalars as floats
    assert_same(expect, back)
    assert back["name"] == "Infinity"  # a string is a string: only inside arrays and $float does it mean inf
