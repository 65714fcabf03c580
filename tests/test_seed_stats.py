"""Per-seed statistics: latency, memory and throughput means with 95% intervals in SeedSelector.stats(), kept in
the arms (persisted, replayed), and an old state without them still loads."""

from __future__ import annotations

import math
import pickle
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from seedworker.core.arms import ArmTable
from seedworker.core.config import Settings
from seedworker.core.selector import SeedSelector, interval95

T0 = datetime(2026, 3, 1, tzinfo=UTC)
PROFILE = {"a": (2.0, 100.0, 900.0), "b": (5.0, 300.0, 400.0)}  # latency_ms, memory_mb, throughput means


def _run(n: int = 60, seed: int = 7) -> tuple[SeedSelector, dict[str, list[tuple[float, float, float]]]]:
    rng = np.random.default_rng(seed)
    sel = SeedSelector(Settings(default_strategy="round-robin", salt="stats"), clock=lambda: T0)
    seen: dict[str, list[tuple[float, float, float]]] = {"a": [], "b": []}
    for i in range(n):
        t = (T0 + timedelta(seconds=i)).isoformat()
        s = sel.select(
            {
                "request_id": f"r{i}",
                "blueprint_id": "bp",
                "occurred_at": t,
                "seeds": [{"seed_id": "a", "seed_idx": 0}, {"seed_id": "b", "seed_idx": 1}],
            }
        )
        lat, mem, thr = (max(0.0, float(rng.normal(m, m / 5))) for m in PROFILE[s.seed_id])
        # Failures fall on odd and even requests alike: round-robin alternates the two seeds, and whichever the
        # burn-in's random pick put first, each gets some (any path of the decisions' random stream).
        if i % 10 == 9:
            continue  # no outcome: stays pending, counts as a selection only
        seen[s.seed_id].append((lat, mem, thr))
        sel.record_outcome(
            {
                "decision_id": s.decision_id,
                "blueprint_id": "bp",
                "seed_id": s.seed_id,
                "accuracy_delta": 0.01,
                "latency_ms": lat,
                "memory_mb": mem,
                "throughput": thr,
                "occurred_at": t,
                "success": (i // 2) % 3 != 0,
            }
        )
    return sel, seen


def test_per_seed_means_and_intervals_match_the_samples():
    sel, seen = _run()
    rows = {r["seed_id"]: r for r in sel.stats()["seeds"]}
    assert set(rows) == {"a", "b"}
    for seed, samples in seen.items():
        row, x = rows[seed], np.array(samples)
        assert row["blueprint_id"] == "bp" and row["outcomes"] == row["measured"] == len(samples)
        assert row["selections"] == 30
        for c, name in enumerate(("latency_ms", "memory_mb", "throughput")):
            mean, half = x[:, c].mean(), 1.959963984540054 * x[:, c].std(ddof=1) / math.sqrt(len(x))
            assert row[name]["mean"] == pytest.approx(mean, rel=1e-12)
            assert row[name]["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-9)
            # Seeded draws around known means: each interval covers its mean (about 5 sd of margin here).
            assert abs(mean - PROFILE[seed][c]) < 5 * x[:, c].std(ddof=1) / math.sqrt(len(x))
        assert 0.0 < row["success_rate"] < 1.0
        assert row["mean_reward"] == pytest.approx(0.01 * row["success_rate"])  # a failure's reward is 0
        lo, hi = row["reward_ci95"]
        assert lo < row["mean_reward"] < hi
    assert rows["a"]["latency_ms"]["ci95"][1] < rows["b"]["latency_ms"]["ci95"][0]  # clearly apart


def test_a_default_reward_is_not_a_measurement():
    sel, _ = _run(n=4)
    before = {r["seed_id"]: r["measured"] for r in sel.stats()["seeds"]}
    s = sel.select(
        {
            "request_id": "late",
            "blueprint_id": "bp",
            "occurred_at": T0.isoformat(),
            "seeds": [{"seed_id": "a", "seed_idx": 0}, {"seed_id": "b", "seed_idx": 1}],
        }
    )
    sel.learn_reward(s, -0.1, T0.timestamp())
    after = {r["seed_id"]: r for r in sel.stats()["seeds"]}
    assert after[s.seed_id]["measured"] == before[s.seed_id] and after[s.seed_id]["outcomes"] > before[s.seed_id]


def test_no_measurement_yet_and_one_measurement():
    sel = SeedSelector(Settings(), clock=lambda: T0)
    s = sel.select({"request_id": "r", "blueprint_id": "bp", "seeds": [{"seed_id": "a", "seed_idx": 0}]})
    row = sel.stats()["seeds"][0]
    assert row["measured"] == 0 and row["latency_ms"] == {"mean": None, "ci95": None}
    assert row["success_rate"] is None and row["reward_ci95"] is None
    sel.record_outcome({"decision_id": s.decision_id, "blueprint_id": "bp", "seed_id": "a", "latency_ms": 4.0})
    row = sel.stats()["seeds"][0]
    assert row["latency_ms"] == {"mean": 4.0, "ci95": None} and row["throughput"]["mean"] == 0.0
    assert "seeds" not in sel.stats(per_seed=False)
    # Values -1 and 1: population variance 1, sample sd sqrt(2), so the half-width is 1.96 * sqrt(2) / sqrt(2).
    assert interval95(1, 3.0, 0.0) is None
    assert interval95(2, 0.0, 1.0) == pytest.approx([-1.959963984540054, 1.959963984540054])


def test_resources_survive_persistence_and_growth():
    sel, _ = _run()
    copy = SeedSelector(sel.settings)
    copy.load_state_dict(pickle.loads(pickle.dumps(sel.state_dict())))
    assert copy.stats()["seeds"] == sel.stats()["seeds"]
    table = ArmTable(dim=1, capacity=2)
    table.rows(["x", "y"])
    table.observe(1, memory_mb=1.0, latency_ms=2.0, throughput=3.0)
    table.rows([f"s{i}" for i in range(10)])  # grows the columns
    table.observe(1, memory_mb=3.0, latency_ms=2.0, throughput=5.0)
    n, mean, var = table.resource_moments(np.array([1, 2]))
    assert n.tolist() == [2.0, 0.0] and mean[0].tolist() == [2.0, 2.0, 4.0] and var[0].tolist() == [1.0, 0.0, 1.0]


def test_a_state_saved_before_resources_were_counted_loads():
    sel, _ = _run()
    state = sel.state_dict()
    for bp in state["blueprints"].values():
        del bp["arms"]["resources"]
    old = SeedSelector(sel.settings)
    old.load_state_dict(state)
    rows = old.stats()["seeds"]
    assert [r["measured"] for r in rows] == [0, 0] and all(r["outcomes"] > 0 for r in rows)
    assert rows == [
        {**r, "measured": 0, **{k: {"mean": None, "ci95": None} for k in ("latency_ms", "memory_mb", "throughput")}}
        for r in sel.stats()["seeds"]
    ]  # everything else as before
    old.blueprints["bp"].arms.observe(0, memory_mb=1.0, latency_ms=1.0, throughput=1.0)  # counting starts now
    assert old.stats()["seeds"][0]["measured"] == 1
