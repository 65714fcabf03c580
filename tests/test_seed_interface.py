"""IntelligentSeedSelector beyond the document's two tests: how blueprints, seeds and contexts become requests, how
an outcome finds its decision, strategy names, statistics, settings from the document's YAML."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from seedworker.contract.events import EventError
from seedworker.core.config import Settings, load_settings
from seedworker.core.seed_interface import IntelligentSeedSelector, seedworker_strategy
from seedworker.core.selector import SeedSelector

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class State(enum.Enum):
    DORMANT = "dormant"
    ACTIVE = "active"


@dataclass
class Seed:
    id: object
    state: object = None


@dataclass
class Blueprint:
    id: object
    seeds: list = field(default_factory=list)


class Clock:
    def __init__(self):
        self.t = T0

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


def _selector(strategy: str = "ucb", **kwargs) -> IntelligentSeedSelector:
    return IntelligentSeedSelector(strategy, clock=Clock(), id_prefix="test", **kwargs)


def _blueprint(k: int = 3, bp: object = "bp") -> Blueprint:
    return Blueprint(bp, [Seed(f"s{i}") for i in range(k)])


class Recording(SeedSelector):
    """Keeps the seed.selected events it returns (through the public select only)."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.events = {}

    def select(self, request, **kwargs):
        selected = super().select(request, **kwargs)
        self.events[selected.decision_id] = selected
        return selected


def test_blueprint_seeds_and_context_become_a_request():
    recording = Recording(Settings())
    sel = IntelligentSeedSelector("ucb", selector=recording, clock=Clock(), id_prefix="test")
    bp = Blueprint(7, [Seed(10, State.ACTIVE), Seed(11, "dormant"), Seed(12, State.DORMANT)])
    for _ in range(6):
        idx, seed = sel.select_seed(bp, {"epoch": 3, "current_loss": 0.5, "optimizer": "adam", "flag": True})
        assert seed is bp.seeds[idx]  # the index is the position in blueprint.seeds, the object is the caller's
        assert idx in (1, 2)  # an active seed is not selectable
    last = sel.selection_history[-1]
    selected = recording.events[last["decision_id"]]
    assert selected.blueprint_id == "7" and selected.seed_id == str(bp.seeds[last["seed_idx"]].id)
    assert [c.seed_idx for c in selected.scores] == [0, 1, 2]
    assert selected.context == {"current_epoch": 3.0, "current_loss": 0.5}  # epoch renamed, non-numbers dropped
    assert last["context"]["optimizer"] == "adam"  # the history keeps what the caller gave
    with pytest.raises(ValueError, match="no seeds"):
        sel.select_seed(Blueprint("empty", []))
    with pytest.raises(EventError, match="duplicate seed_id"):
        sel.select_seed(Blueprint("dup", [Seed("x"), Seed("x")]))
    assert sel.get_selection_stats()["total_selections"] == 6


def test_an_outcome_is_credited_to_the_newest_pending_decision_of_its_seed(caplog):
    sel = _selector("seed0", settings=Settings(min_samples=0))  # always s0: several pending for one pair
    bp = _blueprint()
    picks = [sel.select_seed(bp)[1] for _ in range(3)]
    assert {s.id for s in picks} == {"s0"}
    ids = [h["decision_id"] for h in sel.selection_history]
    assert sel.record_outcome("s0", "bp", {"accuracy_delta": 0.2}) == ids[2]
    assert sel.record_outcome("s0", "bp", {"accuracy_delta": 0.1}) == ids[1]
    assert sel.get_selection_stats()["pending_outcomes"] == 1
    with caplog.at_level(logging.WARNING, logger="seedworker.core.seed_interface"):
        assert sel.record_outcome("s1", "bp", {"accuracy_delta": 0.5}) is None  # s1 was never chosen
        assert sel.record_outcome("s0", "other", {}) is None
    assert "no pending decision" in caplog.text
    assert sel.record_outcome("s0", "bp", {}) == ids[0]
    assert sel.record_outcome("s0", "bp", {}) is None  # one outcome per decision
    top = sel.selector.stats()["top_performers"][0]
    assert top["seed_id"] == "s0" and top["outcomes"] == 3 and top["mean_reward"] == pytest.approx(0.1)


def test_a_refused_metric_leaves_the_decision_pending():
    sel = _selector()
    idx, seed = sel.select_seed(_blueprint())
    with pytest.raises(EventError, match="latency_ms"):
        sel.record_outcome(seed.id, "bp", {"accuracy_delta": 0.1, "latency_ms": -1.0})
    assert sel.record_outcome(seed.id, "bp", {"accuracy_delta": 0.1, "latency_ms": 2.0, "unknown_metric": 1.0})


def test_failure_learns_the_failure_reward():
    sel = _selector(settings=Settings(reward={"failure_reward": -0.5}))
    _, seed = sel.select_seed(_blueprint(1))
    sel.record_outcome(seed.id, "bp", {"accuracy_delta": 0.9}, success=False)
    assert sel.selector.stats()["top_performers"][0]["mean_reward"] == -0.5


def test_strategy_names_either_way_and_switching():
    sel = _selector("thompson")
    assert sel.selector.default_strategy == "beta-thompson" and sel.current_strategy == "thompson"
    bp = _blueprint()
    for _ in range(5):
        _, seed = sel.select_seed(bp)
        sel.record_outcome(seed.id, "bp", {"accuracy_delta": 0.1})
    sel.switch_strategy("epsilon_greedy")
    assert sel.current_strategy == "epsilon_greedy"
    sel.switch_strategy("softmax", blueprint_id="bp")  # seedworker's own name, for one blueprint
    assert sel.selector.blueprints["bp"].strategy == "softmax"
    assert sel.select_seed(bp) and sel.select_seed(_blueprint(bp="bp2"))
    usage = sel.get_selection_stats()["strategy_usage"]
    assert usage == {"thompson": 5, "performance_weighted": 1, "epsilon_greedy": 1}
    with pytest.raises(ValueError, match="Unknown strategy: 'greedy'"):
        sel.switch_strategy("greedy")
    with pytest.raises(ValueError, match="half_life_s"):
        sel.switch_strategy("discounted-ucb")
    assert seedworker_strategy("contextual") == "linucb" and seedworker_strategy("ucb-v") == "ucb-v"
    assert sel.strategies["thompson"] == "beta-thompson"


def test_default_strategy_comes_from_the_settings_or_the_document():
    assert IntelligentSeedSelector().selector.default_strategy == "ucb"  # the document's default
    assert IntelligentSeedSelector(settings=Settings()).selector.default_strategy == "ucb"
    assert (
        IntelligentSeedSelector(settings=Settings(default_strategy="softmax")).current_strategy
        == "performance_weighted"
    )
    shared = SeedSelector(Settings(default_strategy="linucb"))
    assert IntelligentSeedSelector(selector=shared).selector is shared and shared.default_strategy == "linucb"
    with pytest.raises(ValueError, match="not both"):
        IntelligentSeedSelector(settings=Settings(), selector=shared)


def test_settings_from_the_documents_yaml(tmp_path):
    path = tmp_path / "tamiyo.yaml"
    path.write_text(
        "seed_selection:\n  default_strategy: contextual\n  performance_decay_factor: 1.0\n  min_samples_required: 2\n"
    )
    sel = IntelligentSeedSelector(settings=load_settings(path, environ={}), clock=Clock(), id_prefix="y")
    assert sel.current_strategy == "contextual" and sel.selector.default_strategy == "linucb"
    bp = _blueprint(2)
    first = [sel.select_seed(bp, {"current_loss": 1.0})[0] for _ in range(4)]
    assert sorted(first) == [0, 0, 1, 1]  # two tries each before the scores compete


def test_selection_stats_keys():
    sel = _selector()
    bp1, bp2 = _blueprint(2, "a"), _blueprint(2, "b")
    for bp in (bp1, bp1, bp2):
        _, seed = sel.select_seed(bp)
        sel.record_outcome(seed.id, bp.id, {"accuracy_delta": 0.3 if bp is bp2 else 0.1})
    best = seed.id  # blueprint b's pick: mean 0.3
    st = sel.get_selection_stats()
    assert st["total_selections"] == 3 and st["unique_seeds_selected"] == 3
    assert st["strategy_usage"] == {"ucb": 3}
    assert st["top_performing_seeds"][0] == best
    assert st["seedworker"]["top_performers"][0]["blueprint_id"] == "b"
    assert len(sel.selection_history) == 3 and set(sel.selection_history[0]) == {
        "timestamp",
        "blueprint_id",
        "seed_id",
        "seed_idx",
        "strategy",
        "context",
        "decision_id",
    }


def test_a_fixed_id_prefix_reproduces_the_run():
    def run() -> list[int]:
        sel = IntelligentSeedSelector("thompson", clock=Clock(), id_prefix="same")
        bp, out = _blueprint(4), []
        for i in range(40):
            idx, seed = sel.select_seed(bp)
            out.append(idx)
            sel.record_outcome(seed.id, bp.id, {"accuracy_delta": 0.1 * idx}, success=(i + idx) % 3 != 0)
        return out

    assert run() == run()


def test_history_and_pending_are_bounded():
    sel = _selector("seed0", settings=Settings(min_samples=0), history_size=5, max_pending=3)
    bp = _blueprint()
    for _ in range(10):
        sel.select_seed(bp)
    assert len(sel.selection_history) == 5
    assert sel.get_selection_stats()["total_selections"] == 10
    assert sel.get_selection_stats()["pending_outcomes"] == 3
    credited = [sel.record_outcome("s0", "bp", {}) for _ in range(4)]
    assert credited[3] is None and None not in credited[:3]


def test_the_documents_metrics_reach_the_per_seed_statistics():
    sel = _selector("seed0", settings=Settings(min_samples=0))
    bp = _blueprint(2)
    for lat in (3.0, 5.0):
        _, seed = sel.select_seed(bp)
        sel.record_outcome(
            seed.id, bp.id, {"accuracy_delta": 0.1, "latency_ms": lat, "memory_mb": 64.0, "throughput": 1000.0}
        )
    row = next(r for r in sel.get_selection_stats()["seedworker"]["seeds"] if r["seed_id"] == "s0")
    assert row["measured"] == 2 and row["latency_ms"]["mean"] == 4.0 and row["memory_mb"]["mean"] == 64.0
    # 3 and 5 ms: sample sd sqrt(2) over sqrt(2) outcomes, so the half-width is 1.96.
    assert row["latency_ms"]["ci95"] == pytest.approx([4.0 - 1.959963984540054, 4.0 + 1.959963984540054])
    assert row["throughput"] == {"mean": 1000.0, "ci95": [1000.0, 1000.0]}


def test_the_pending_index_stays_small_when_outcomes_come():
    sel = _selector(max_pending=4)
    bp = _blueprint(3)
    for _ in range(50):
        _, seed = sel.select_seed(bp)
        assert sel.record_outcome(seed.id, bp.id, {"accuracy_delta": 0.1})
    assert len(sel._order) <= 1 and not sel._pending and not sel._open
