"""`seedworker inspect`: per-seed success rate and latency, memory and throughput means with 95% intervals, the
same figures as the worker's SeedSelector.stats(), in --json and in the text tables."""

from __future__ import annotations

import io
from argparse import Namespace

import orjson
import pytest

from seedworker.tools.inspect import read, run
from tests.support import history_settings, restored, run_history


async def test_resources_agree_with_the_workers_stats(tmp_path):
    settings = history_settings(tmp_path / "state.sqlite")
    await run_history(settings)
    report, _ = read(settings.db, settings)
    worker = await restored(settings)
    expected = {(r["blueprint_id"], r["seed_id"]): r for r in worker.selector.stats()["seeds"]}
    measured = 0
    for bp_id, bp in report["blueprints"].items():
        for s in bp["seeds"]:
            want = expected[(bp_id, s["seed_id"])]
            for key in ("measured", "success_rate", "latency_ms", "memory_mb", "throughput"):
                assert s[key] == want[key], (bp_id, s["seed_id"], key)
            assert s["measured"] <= s["pulls"]
            measured += s["measured"]
            if s["measured"] >= 2:
                lo, hi = s["latency_ms"]["ci95"]
                # The history's latencies are uniform(1, 5) ms: so is their mean; a normal interval of a few of
                # them may reach beyond the support.
                assert lo <= s["latency_ms"]["mean"] <= hi
                assert 1.0 <= s["latency_ms"]["mean"] <= 5.0
    assert measured > 0


async def test_resources_in_the_text_and_json_output(tmp_path):
    settings = history_settings(tmp_path / "state.sqlite")
    await run_history(settings)
    text = io.StringIO()
    assert run(Namespace(db=settings.db, config=None, blueprint="bp-lin", json=False, plot=None), text) == 0
    out = text.getvalue()
    assert "resources: means [95% CI] over the outcomes that reported them (measured)" in out
    header = next(line for line in out.splitlines() if "latency ms" in line)
    assert header.split() == ["seed", "measured", "success", "latency", "ms", "memory", "MB", "throughput", "/s"]
    js = io.StringIO()
    assert run(Namespace(db=settings.db, config=None, blueprint="bp-lin", json=True, plot=None), js) == 0
    seeds = orjson.loads(js.getvalue())["blueprints"]["bp-lin"]["seeds"]
    assert all(set(s["latency_ms"]) == {"mean", "ci95"} for s in seeds)
    assert any(s["latency_ms"]["ci95"] for s in seeds)
    row = next(s for s in seeds if s["latency_ms"]["ci95"])
    lines = out.splitlines()
    table = lines[lines.index(header) + 2 :]
    line = next(line for line in table if line.split()[0] == row["seed_id"])
    # The columns line up with the header: the latency cell sits under "latency ms".
    start = header.index("latency ms") + len("latency ms")
    cell = f"{row['latency_ms']['mean']:.4g} [{row['latency_ms']['ci95'][0]:.4g}, {row['latency_ms']['ci95'][1]:.4g}]"
    assert line[:start].endswith(cell)
    assert row["memory_mb"]["mean"] == pytest.approx(0.0)  # the history reports no memory: measured as 0 MB


async def test_inspect_takes_the_documents_yaml(tmp_path, capsys):
    from seedworker.tools.cli import main

    settings = history_settings(tmp_path / "state.sqlite")
    await run_history(settings)
    config = tmp_path / "tamiyo.yaml"
    config.write_text(
        "seed_selection:\n  default_strategy: epsilon_greedy\n  performance_decay_factor: 0.9\n"
        "  outcome_interval_s: 30\n  epsilon_greedy: {initial_epsilon: 0.3}\n"
    )
    assert main(["inspect", "--db", settings.db, "--config", str(config), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["default_strategy"] == "epsilon-greedy"
    by_strategy = {b["strategy"]: b["strategy_settings"] for b in report["blueprints"].values()}
    assert by_strategy["epsilon-greedy"]["epsilon"] == 0.3 and by_strategy["epsilon-greedy"]["discounted"] is True
    assert by_strategy["ucb"]["discounted"] is True  # the decay factor's conversion reaches the scores
    config.write_text("seed_selection:\n  performance_decay_factor: 0.9\n")
    assert main(["inspect", "--db", settings.db, "--config", str(config)]) == 2
    assert "seed_selection.performance_decay_factor" in capsys.readouterr().err
