"""`seedworker inspect`: the figures agree with the worker, the scores are the worker's, the read is read-only.

Stores are built by the real Worker on the in-memory bus (see tests/test_snapshot.py for the history it lives).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import os
import sqlite3
import threading
from argparse import Namespace
from collections import Counter
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.core.config import Settings
from seedworker.engine.worker import Worker
from seedworker.store import readers
from seedworker.store.readers import read_snapshot
from seedworker.store.rows import Batch
from seedworker.store.store import Store
from seedworker.tools.cli import main
from seedworker.tools.inspect import SCORE_REQUEST_ID, read, rolling_mean, rolling_share, run
from tests.support import (
    HISTORY_BLUEPRINTS as BLUEPRINTS,
)
from tests.support import (
    OUT as OUTCOMES,
)
from tests.support import (
    REQ as REQUESTS,
)
from tests.support import (
    decision_order as selections,
)
from tests.support import (
    drain,
    history_settings,
    make_outcome,
    make_request,
    restored,
    run_history,
)


def inspect_json(db, settings: Settings | None = None) -> dict:
    """`inspect --json`; with ``settings``, as if given the worker's --config."""
    if settings is not None:
        return orjson.loads(orjson.dumps(read(db, settings)[0]))
    out = io.StringIO()
    assert run(Namespace(db=str(db), config=None, blueprint=None, json=True, plot=None), out) == 0
    return orjson.loads(out.getvalue())


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def files(directory: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())
    }


# -- the figures ---------------------------------------------------------------------------------------------------
async def test_the_report_agrees_with_the_worker_and_with_the_decisions(tmp_path):
    settings = history_settings(tmp_path / "state.sqlite", half_life_s=600.0)
    bus = await run_history(settings)
    report = inspect_json(settings.db, settings)
    w = await restored(settings)

    assert report["counters"] == w.counters.values
    # Two unreadable requests, and the dangling outcome, which is dead-lettered as well as counted.
    assert report["watched"]["dead_letters"] == 3 and report["watched"]["dangling_outcomes"] == 1
    assert report["watched"]["duplicate_outcomes"] == 1 and report["watched"]["late_outcomes"] > 0
    assert report["pending"] == {
        "count": len(w.selector.pending),
        "oldest_request_time": min(s.request_time for s in w.selector.pending.values())
        .isoformat()
        .replace("+00:00", "Z"),
    }
    assert report["pending"]["count"] == 9
    assert report["held_outcomes"]["count"] == w.held_outcomes == 1
    # The last batch was not published (run_history's broker went away): its changelog records are behind too.
    with closing(sqlite3.connect(settings.db)) as db:
        unsent, kept = readers.unsent(db), [d.row.request_time for d in readers.decisions(db)]
    changelog = [r.message for r in unsent if r.message.topic == settings.kafka.topics.changelog]
    assert changelog and report["unsent_outbox"] == {
        "seed.selected": 3,
        "seedworker.dlq": 1,
        settings.kafka.topics.changelog: len(changelog),
    }
    assert report["changelog"]["behind"] == {
        str(p): {"records": n, "oldest_written_at": report["changelog"]["behind"][str(p)]["oldest_written_at"]}
        for p, n in Counter(m.partition for m in changelog).items()
    }
    assert report["changelog"]["complete_partitions"] == [0, 1]
    assert report["decisions_kept"]["count"] == len(kept)
    assert report["decisions_kept"]["first_request_time"] == iso(min(kept))
    assert {(o["topic"], o["partition"]): o["next_offset"] for o in report["offsets"]} == w._stored_offsets
    assert {bp: b["strategy"] for bp, b in report["blueprints"].items()} == {
        "bp-eps": "ucb",
        "bp-lin": "linucb",
        "bp-thompson": "thompson",
    }  # bp-eps was switched on the control topic

    # Per seed, from the decisions themselves: selections, last selected, learned rewards and their times.
    rows = read_snapshot(
        settings.db,
        lambda c: c.execute(
            "SELECT blueprint_id, seed_id, request_time, reward, outcome_time FROM decisions"
        ).fetchall(),
    )
    published = {(s.blueprint_id, s.seed_id) for s in selections(bus)}
    for bp in BLUEPRINTS:
        seeds = {s["seed_id"]: s for s in report["blueprints"][bp]["seeds"]}
        assert [s["seed_idx"] for s in seeds.values()] == sorted(s["seed_idx"] for s in seeds.values())
        assert sum(s["share"] for s in seeds.values()) == pytest.approx(1.0)
        grafted = seeds.pop("layer3:8")  # listed in requests, never selectable: known, but no candidate
        assert (grafted["seed_idx"], grafted["selections"], grafted["share"], grafted["last_selected"]) == (
            8,
            0,
            0.0,
            None,
        )
        assert (grafted["candidate"], grafted["score"], grafted["note"]) == (False, None, "is grafted, not selectable")
        assert seeds["layer3:9"]["seed_idx"] == 9 and report["blueprints"][bp]["next_choice"]["seed_id"] != "layer3:8"
        total = sum(1 for r in rows if r[0] == bp)
        for seed_id, s in seeds.items():
            mine = [r for r in rows if r[0] == bp and r[1] == seed_id]
            assert (bp, seed_id) in published
            assert s["selections"] == len(mine) and s["share"] == pytest.approx(len(mine) / total)
            assert s["last_selected"] == iso(max(r[2] for r in mine))
            learned = [(r[3], r[4]) for r in mine if r[3] is not None]
            rewards = np.array([x for x, _ in learned])
            assert s["pulls"] == len(rewards)
            # A seed first offered after some outcomes starts from the blueprint's pooled mean: its warm-start
            # prior (pseudo-count pw at mean pm) is part of both means.
            arms = w.selector.blueprints[bp].arms
            pw, pm = float(arms.prior_w[arms.index[seed_id]]), float(arms.prior_mean[arms.index[seed_id]])
            mean = (pw * pm + rewards.sum()) / (pw + len(rewards))
            assert s["mean_reward"] == pytest.approx(mean, abs=1e-12)
            if len(rewards) > 1:
                half = 1.959963984540054 * rewards.std(ddof=1) / math.sqrt(len(rewards))
                assert s["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-12)
            newest = max(t for _, t in learned)
            weights = np.array([2.0 ** ((t - newest) / 600.0) for _, t in learned])
            decayed = (pw * pm + (weights * rewards).sum()) / (pw + weights.sum())
            assert s["decayed_mean"] == pytest.approx(decayed, abs=1e-12)
    assert any(
        s["decayed_mean"] != pytest.approx(s["mean_reward"], abs=1e-6)
        for b in report["blueprints"].values()
        for s in b["seeds"]
    )


@pytest.mark.parametrize("strategy", ["thompson", "linucb", "ucb", "epsilon-greedy", "softmax", "lin-thompson"])
async def test_scores_and_next_pick_are_what_the_worker_decides_for_the_neutral_request(tmp_path, strategy):
    settings = Settings(
        db=str(tmp_path / "state.sqlite"),
        kafka={"partitions": 2},
        default_strategy=strategy,
        decay={"half_life_s": 900.0},
    )
    rng = np.random.default_rng(3)
    bus = MemoryBus()
    await bus.ensure_topics({REQUESTS: 2, OUTCOMES: 2})
    for i in range(30):
        bus.produce(REQUESTS, b"bp", make_request(i, "bp", rng))
    await drain(settings, bus)
    for s in selections(bus)[:25]:
        bus.produce(OUTCOMES, b"bp", make_outcome(s, rng))
    await drain(settings, bus)

    report = inspect_json(settings.db, settings)
    assert report == inspect_json(settings.db, settings)  # deterministic: draws seeded by the synthetic request
    bp = report["blueprints"]["bp"]
    assert bp["strategy"] == strategy
    # The same request, sent to the worker: every known seed, no context, the synthetic request id.
    bus.produce(
        REQUESTS,
        b"bp",
        ev.encode(
            ev.GraftRequested(
                request_id=SCORE_REQUEST_ID,
                blueprint_id="bp",
                occurred_at=datetime(2026, 3, 1, 0, 1, tzinfo=UTC),
                seeds=[ev.SeedCandidate(seed_id=s["seed_id"], seed_idx=s["seed_idx"]) for s in bp["seeds"]],
            )
        ),
    )
    await drain(settings, bus)
    (decided,) = [s for s in selections(bus) if s.request_id == SCORE_REQUEST_ID]
    assert decided.features == [1.0] + [0.0] * (len(decided.features) - 1)  # the neutral context
    assert bp["next_choice"] == {
        "seed_id": decided.seed_id,
        "strategy": decided.strategy,
        "propensity": decided.propensity,
        "explored": decided.explored,
        "reason": decided.selection_reason,
    }
    assert [c.score for c in decided.scores] == [s["score"] for s in bp["seeds"]]
    assert [c.probability for c in decided.scores] == [s["probability"] for s in bp["seeds"]]
    assert any(s["score"] is not None for s in bp["seeds"])


# -- read-only -----------------------------------------------------------------------------------------------------
class _PauseBeforeCommit:
    """The store's sqlite3 connection, held at the COMMIT of one batch until the test lets it go."""

    def __init__(self, conn, store: PausingStore):
        self._conn = conn
        self._store = store

    def execute(self, sql, *args):
        s = self._store
        if sql == "COMMIT" and s.armed:
            s.armed = False
            s.inside.set()
            if not s.release.wait(120):
                raise RuntimeError("the test never released the batch")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


class PausingStore(Store):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.armed = False
        self.inside, self.release = threading.Event(), threading.Event()

    async def open(self) -> PausingStore:
        await super().open()
        self._db._connection = _PauseBeforeCommit(self._db._connection, self)  # type: ignore[union-attr]
        return self


async def test_inspect_reads_a_consistent_snapshot_while_the_worker_is_mid_batch(tmp_path):
    settings = history_settings(tmp_path / "state.sqlite")
    rng = np.random.default_rng(1)
    bus = MemoryBus()
    await bus.ensure_topics({REQUESTS: 2, OUTCOMES: 2})
    for i in range(6):
        bus.produce(REQUESTS, b"bp-lin", make_request(i, "bp-lin", rng))
    await drain(settings, bus)
    for i in range(6, 20):
        bus.produce(REQUESTS, b"bp-lin", make_request(i, "bp-lin", rng))

    store = PausingStore(settings.db)
    worker = Worker(settings, bus=bus, store=store, burst=True, idle_polls=1)
    store.armed = True
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.to_thread(lambda: store.inside.wait(120))
        assert store.inside.is_set()
        # The worker holds SQLite's write lock with its batch written but not committed.
        db = Path(settings.db)
        wal = db.with_name(db.name + "-wal")
        before = (db.read_bytes(), db.stat().st_mtime_ns, wal.read_bytes())
        report = await asyncio.to_thread(inspect_json, settings.db)
        assert report["counters"]["decisions"] == 6 and report["blueprints"]["bp-lin"]["decisions"] == 6
        assert sum(o["next_offset"] for o in report["offsets"]) == 6
        assert (db.read_bytes(), db.stat().st_mtime_ns, wal.read_bytes()) == before  # inspect wrote nothing
    finally:
        store.release.set()
        await task
    report = inspect_json(settings.db)
    assert report["counters"]["decisions"] == 20 and sum(o["next_offset"] for o in report["offsets"]) == 20


async def test_inspect_leaves_a_closed_store_as_it_found_it(tmp_path):
    directory = tmp_path / "store"
    settings = history_settings(directory / "state.sqlite")
    await run_history(settings)
    before = files(directory)
    assert list(before) == ["state.sqlite"]  # the worker closed it: no -wal, no -shm
    for argv in (["--json"], [], ["--plot", str(tmp_path / "p.png")]):
        assert main(["inspect", "--db", settings.db, *argv]) == 0
        assert files(directory) == before  # no -wal or -shm created, the file not touched (bytes and mtime)
    assert main(["export", "--db", settings.db, "-o", os.devnull]) == 0
    assert files(directory) == before


# -- secrets, errors, plot -----------------------------------------------------------------------------------------
async def test_secrets_never_appear_in_the_output(tmp_path, capsys, monkeypatch):
    settings = history_settings(tmp_path / "state.sqlite")
    await run_history(settings)
    store = await Store(settings.db).open()
    await store.write(Batch(meta={"sasl_password": "meta-secret-5c1d"}))
    await store.close()
    config = tmp_path / "seedworker.toml"
    config.write_text(
        'salt = "pepper-7f3a9c"\n[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\n'
        'sasl_mechanism = "PLAIN"\nsasl_username = "svc-user-4411"\nsasl_password = "hunter2-9d8e7f"\n'
    )
    monkeypatch.setenv("SEEDWORKER_KAFKA__SASL_PASSWORD", "env-secret-b2a0")
    for argv in ([], ["--json"], ["--blueprint", "bp-lin"]):
        assert main(["inspect", "--db", settings.db, "--config", str(config), *argv]) == 0
        out = capsys.readouterr()
        text = out.out + out.err
        assert "bp-lin" in text
        for secret in ("pepper-7f3a9c", "svc-user-4411", "hunter2-9d8e7f", "env-secret-b2a0", "meta-secret-5c1d"):
            assert secret not in text
        if "--json" in argv:
            assert orjson.loads(out.out)["meta"]["sasl_password"] == "(hidden)"


async def test_the_salt_changes_the_randomized_scores(tmp_path):
    settings = history_settings(tmp_path / "state.sqlite")
    await run_history(settings)
    a, _ = read(settings.db, settings)
    b, _ = read(settings.db, settings.model_copy(update={"salt": "another"}))
    scores = [[s["score"] for s in r["blueprints"]["bp-thompson"]["seeds"]] for r in (a, b)]
    assert scores[0] != scores[1]  # the scores use the worker's salt, so --config matters for Thompson


def test_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["inspect", "--db", str(tmp_path / "missing.sqlite")]) == 1
    assert "no store at" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all, just some text that is long enough" * 20)
    assert main(["inspect", "--db", str(junk)]) == 1
    assert "cannot read" in capsys.readouterr().err
    other = tmp_path / "other.sqlite"
    import sqlite3

    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert main(["inspect", "--db", str(other)]) == 1
    assert "not a seedworker store" in capsys.readouterr().err


async def test_plot_and_its_rolling_series(tmp_path, capsys):
    settings = history_settings(tmp_path / "state.sqlite")
    await run_history(settings)
    png = tmp_path / "out" / "inspect.png"
    assert main(["inspect", "--db", settings.db, "--plot", str(png)]) == 0
    assert f"plot: {png}" in capsys.readouterr().out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert main(["inspect", "--db", settings.db, "--blueprint", "nope"]) == 1

    seeds = ["a", "b", "a", "c", "a", "a", "b"]
    names, share = rolling_share(seeds, 3)
    assert names == ["a", "b", "c"]
    for t in range(len(seeds)):
        last = seeds[max(0, t - 2) : t + 1]
        assert share[t].tolist() == pytest.approx([last.count(n) / len(last) for n in names])
    values = np.array([1.0, 2.0, 4.0, 8.0])
    assert rolling_mean(values, 2).tolist() == [1.0, 1.5, 3.0, 6.0]
