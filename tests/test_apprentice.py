"""Apprentice mode (seedworker.core.shadow.Apprentice): follow the baseline with some uniform exploration, learn in
the shadow, and hand over to the learner once it is estimated better by the margin."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest

from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.core.config import ConfigError, Settings, load_settings
from seedworker.core.selector import SeedSelector
from seedworker.core.shadow import APPRENTICE
from seedworker.engine.replay import Replay
from seedworker.engine.worker import Worker
from seedworker.store.readers import read_all
from seedworker.store.store import Store
from seedworker.tools import inspect
from tests.support import T0, assert_same, replay_order

LEARNER_BEST = [0.1, 0.3, 0.5, 0.2]  # seed_idx 0 (the baseline's pick) is the worst
BASELINE_BEST = [0.5, 0.3, 0.1, 0.2]


def _settings(**apprentice) -> Settings:
    options = {"learner": "thompson", "baseline": "seed0", "epsilon": 0.1, "margin": 0.05, "min_decisions": 100}
    return Settings(default_strategy="thompson", apprentice={**options, **apprentice})


def _run(settings: Settings, means: list[float], steps: int, seed: int = 0):
    """(selector, decisions, outcomes): a stationary world, each outcome before the next request."""
    sel = SeedSelector(settings)
    rng = np.random.default_rng(seed)
    decisions, outcomes = [], []
    for t in range(steps):
        req = {
            "request_id": f"r{t}",
            "blueprint_id": "bp",
            "seeds": [{"seed_id": f"s{i}", "seed_idx": i} for i in range(len(means))],
            "occurred_at": T0 + timedelta(seconds=t),
        }
        s = sel.select(req)
        o = {
            "request_id": s.request_id,
            "blueprint_id": "bp",
            "seed_id": s.seed_id,
            "accuracy_delta": means[s.seed_idx] + 0.1 * rng.standard_normal(),
            "occurred_at": T0 + timedelta(seconds=t + 0.5),
        }
        sel.record_outcome(o)
        decisions.append(s)
        outcomes.append(o)
    return sel, decisions, outcomes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_it_follows_the_baseline_then_the_better_learner_takes_over(seed):
    sel, decisions, _ = _run(_settings(), LEARNER_BEST, 1000, seed)
    state = sel.blueprints["bp"].apprentice
    took = state["took_over"]
    assert took is not None, state
    at = took["decisions"]
    assert 100 <= at < 600
    assert took["lower"] >= 0.05 and took["learner"] > took["baseline"] + 0.05
    before, after = decisions[:at], decisions[at + 1 :]
    assert {s.strategy for s in before} == {APPRENTICE} and {s.strategy for s in after} == {"thompson"}
    # While following: the baseline's seed about 1 - ε + ε/K of the time, every seed at least ε/K likely.
    follow = np.mean([s.seed_idx == 0 for s in before])
    assert abs(follow - (0.9 + 0.1 / 4)) < 0.06
    assert min(s.propensity for s in before) == pytest.approx(0.1 / 4)
    assert all(0.0 < s.propensity <= 1.0 for s in decisions)
    assert "apprentice of thompson: following the baseline seed0" in before[-1].selection_reason or (
        "uniform exploration" in before[-1].selection_reason
    )
    assert f"(apprentice mode: thompson took over from seed0 at decision {at}, SNIPS" in after[0].selection_reason
    # After the takeover the learner exploits the best seed.
    assert np.mean([s.seed_idx == 2 for s in after[-200:]]) > 0.9
    for s in before:  # every apprentice decision carries the learner's and the baseline's shadow choices
        assert {c.strategy for c in s.shadow} == {"thompson", "seed0"}
        assert sum(c.probability for c in s.scores) == pytest.approx(1.0)
        assert s.scores[s.seed_idx].probability == pytest.approx(s.propensity)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_it_does_not_take_over_where_the_baseline_is_best(seed):
    sel, decisions, _ = _run(_settings(), BASELINE_BEST, 1000, seed)
    state = sel.blueprints["bp"].apprentice
    assert state["took_over"] is None
    assert {s.strategy for s in decisions} == {APPRENTICE}
    est = sel.shadow.apprentice.estimates(state)
    assert est["n"] == 1000 and est["difference"] < 0  # the learner's learning curve costs it, honestly
    assert "takes over at 0.05" in decisions[-1].selection_reason


def test_a_margin_too_large_keeps_the_baseline():
    sel, decisions, _ = _run(_settings(margin=1.0), LEARNER_BEST, 600)
    assert sel.blueprints["bp"].apprentice["took_over"] is None
    assert {s.strategy for s in decisions} == {APPRENTICE}


def test_a_replay_of_the_log_rebuilds_the_apprenticeship():
    settings = _settings()
    live, decisions, outcomes = _run(settings, LEARNER_BEST, 400)
    again = SeedSelector(settings)
    for s, o in zip(decisions, outcomes):
        logged = ev.decode(ev.encode(s), ev.SEED_SELECTED)  # what the log holds, not the live object
        again.apply_selection(logged)
        again.learn(logged, ev.from_dict(o, ev.ADAPTATION_OUTCOME))
    assert again.blueprints["bp"].apprentice == live.blueprints["bp"].apprentice
    got, want = again.blueprints["bp"].to_dict(), live.blueprints["bp"].to_dict()
    assert got.pop("apprentice") == want.pop("apprentice")
    assert_same(got, want, "bp")
    req = ev.from_dict(
        {"request_id": "next", "blueprint_id": "bp", "seeds": [{"seed_id": f"s{i}", "seed_idx": i} for i in range(4)]},
        ev.GRAFT_REQUESTED,
    )
    a, b = again.decide(req), live.decide(req)
    assert (a.seed_id, a.strategy, a.propensity, a.shadow) == (b.seed_id, b.strategy, b.propensity, b.shadow)


def test_a_default_reward_taken_out_again_leaves_the_sums_as_before():
    settings = _settings()
    sel, decisions, _ = _run(settings, LEARNER_BEST, 30)
    bp = sel.blueprints["bp"]
    before = list(bp.apprentice["sums"])
    s = decisions[-1]
    sel.learn_reward(s, 0.0, 0.0)
    assert bp.apprentice["sums"][0] == before[0] + 1
    sel.forget_reward(s, 0.0, 0.0)
    assert bp.apprentice["sums"] == pytest.approx(before, abs=1e-12)


def test_the_state_survives_a_round_trip_through_the_store_format():
    from seedworker.store.rows import dump_state, load_state

    sel, _, _ = _run(_settings(), LEARNER_BEST, 50)
    state = sel.blueprints["bp"].to_dict()
    assert load_state(dump_state(state))["apprentice"] == state["apprentice"]
    plain, _, _ = _run(Settings(default_strategy="thompson"), LEARNER_BEST, 5)
    assert "apprentice" not in plain.blueprints["bp"].to_dict()  # no new key in a state without apprentice mode


def test_apprentice_settings_are_validated():
    with pytest.raises(ValueError, match="both 'seed0'"):
        _settings(learner="seed0")
    with pytest.raises(ValueError, match="apprentice.learner: unknown strategy 'nope'"):
        _settings(learner="nope")
    with pytest.raises(ValueError, match="apprentice.baseline: strategy 'discounted-ucb' needs decay.half_life_s"):
        _settings(baseline="discounted-ucb")
    with pytest.raises(ValueError, match="epsilon"):
        _settings(epsilon=0.0)


def test_only_blueprints_whose_strategy_is_the_learner_are_apprenticed():
    settings = Settings(
        default_strategy="thompson",
        blueprint_strategies={"other": "ucb"},
        apprentice={"learner": "thompson"},
    )
    sel = SeedSelector(settings)
    seeds = [{"seed_id": f"s{i}", "seed_idx": i} for i in range(3)]
    assert sel.select({"request_id": "a", "blueprint_id": "bp", "seeds": seeds}).strategy == APPRENTICE
    assert sel.select({"request_id": "b", "blueprint_id": "other", "seeds": seeds}).strategy == "ucb"


async def test_the_worker_logs_the_apprenticeship_and_a_replay_of_its_topics_rebuilds_it(tmp_path):
    """The worker on the memory bus against LEARNER_BEST; then `seedworker replay`'s machinery rebuilds a new store
    from the published selections and the outcomes alone: the apprentice state (and the takeover) is the same."""
    settings = _settings(min_decisions=60).model_copy(update={"db": str(tmp_path / "live.sqlite")})
    topics = settings.kafka.topics
    bus = MemoryBus()
    n = settings.kafka.partitions
    await bus.ensure_topics({topics.requests: n, topics.outcomes: n})
    worker = Worker(settings, bus=bus)
    await worker.start()
    rng = np.random.default_rng(3)
    try:
        for t in range(400):
            req = ev.GraftRequested(
                request_id=f"r{t}",
                blueprint_id="bp",
                occurred_at=T0 + timedelta(seconds=t),
                seeds=[ev.SeedCandidate(seed_id=f"s{i}", seed_idx=i) for i in range(4)],
            )
            bus.produce(topics.requests, b"bp", ev.encode(req))
            await _consume(worker, 1)
            s = ev.decode(bus.read(topics.selections)[-1].value, ev.SEED_SELECTED)
            gain = LEARNER_BEST[s.seed_idx] + 0.1 * rng.standard_normal()
            o = ev.AdaptationOutcome(
                decision_id=s.decision_id,
                blueprint_id="bp",
                seed_id=s.seed_id,
                accuracy_delta=gain,
                occurred_at=T0 + timedelta(seconds=t + 0.5),
            )
            bus.produce(topics.outcomes, b"bp", ev.encode(o))
            await _consume(worker, 1)
    finally:
        await worker.close()
    live = read_all(settings.db)["blueprints"]["bp"]
    assert live["apprentice"]["took_over"] is not None
    logged = [ev.decode(m.value, ev.SEED_SELECTED) for m in bus.read(topics.selections)]
    assert logged[0].strategy == APPRENTICE and logged[-1].strategy == "thompson"

    store = await Store(tmp_path / "rebuilt.sqlite").open()
    replay = await Replay(settings, store).start()
    try:
        records = replay_order(bus, topics, (topics.selections, topics.outcomes))
        for m in records:
            await replay.feed(m)
        await replay.finish({(topics.requests, p): 0 for p in range(n)})
    finally:
        await store.close()
    rebuilt = read_all(tmp_path / "rebuilt.sqlite")["blueprints"]["bp"]
    assert rebuilt.pop("apprentice") == live.pop("apprentice")
    assert_same(rebuilt, live, "bp")

    # inspect shows the apprenticeship as the store holds it.
    report, _ = inspect.read(settings.db, settings)
    ap = report["blueprints"]["bp"]["apprentice"]
    assert ap["took_over"] == read_all(settings.db)["blueprints"]["bp"]["apprentice"]["took_over"]
    assert set(report["blueprints"]["bp"]["shadows"]) == {"thompson", "seed0"}
    out = io.StringIO()
    inspect.print_tables(report, out)
    assert f"the learner took over at decision {ap['took_over']['decisions']}" in out.getvalue()


async def _consume(worker: Worker, n: int) -> None:
    while n > 0:
        messages = await worker.bus.poll(1, worker.settings.kafka.max_batch)
        n -= len(messages)
        await worker.process(messages)


def test_a_sampling_baseline_is_followed_with_its_quadrature_propensities():
    settings = Settings(
        default_strategy="linucb", apprentice={"learner": "linucb", "baseline": "thompson", "min_decisions": 10**6}
    )
    sel, decisions, _ = _run(settings, LEARNER_BEST, 150)
    following = [s for s in decisions if s.strategy == APPRENTICE]
    assert len(following) == 150
    # After the baseline's burn-in its distribution is an integral per candidate: the pick's is exact to ~1e-6,
    # the others are not logged (evaluate reads them as positive, unknown).
    late = following[-50:]
    assert {s.propensity_method for s in late} == {"quadrature"}
    assert all(s.propensity >= 0.1 / 4 for s in late)
    for s in late:
        base = next(c for c in s.shadow if c.strategy == "thompson")
        assert s.propensity == pytest.approx(0.9 * base.propensity_of_live + 0.1 / 4, abs=1e-12)


def test_apprentice_settings_from_the_environment():
    s = load_settings(environ={"SEEDWORKER_APPRENTICE__LEARNER": "ucb", "SEEDWORKER_APPRENTICE__MARGIN": "0.01"})
    assert (s.apprentice.learner, s.apprentice.baseline, s.apprentice.margin) == ("ucb", "seed0", 0.01)
    assert s.shadow_names == ("ucb", "seed0")
    with pytest.raises(ConfigError, match="SEEDWORKER_APPRENTICE__LEARNER: apprentice.learner: unknown strategy"):
        load_settings(environ={"SEEDWORKER_APPRENTICE__LEARNER": "nope"})
