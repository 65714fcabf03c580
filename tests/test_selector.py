"""SeedSelector: determinism, strategy switching, burn-in, viability, outcome joins, replay, logging-only mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from seedworker.contract.events import AdaptationOutcome, GraftRequested, SeedSelected, decision_id_for, decode, encode
from seedworker.core.config import Settings
from seedworker.core.selector import FALLBACK, SeedSelector

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SEEDS = ("a", "b", "c", "d")
QUALITY = {"a": 0.1, "b": 0.6, "c": 0.3, "d": 0.2}


def _clock() -> datetime:
    return T0


def _selector(**settings) -> SeedSelector:
    return SeedSelector(Settings(**settings), clock=_clock)


def _request(
    rid: str,
    *,
    seeds=SEEDS,
    bp: str = "bp",
    t: float = 0.0,
    states: dict | None = None,
    context: dict | None = None,
    constraints: dict | None = None,
    strategy: str | None = None,
    idx: dict | None = None,
) -> dict:
    states = states or {}
    idx = idx or {}
    req = {
        "request_id": rid,
        "blueprint_id": bp,
        "occurred_at": (T0 + timedelta(seconds=t)).isoformat(),
        "seeds": [
            {"seed_id": s, "seed_idx": idx.get(s, i), "state": states.get(s, "dormant")} for i, s in enumerate(seeds)
        ],
        "context": context if context is not None else {"current_loss": 1.0, "learning_rate": 0.01},
    }
    if constraints is not None:
        req["constraints"] = constraints
    if strategy is not None:
        req["strategy"] = strategy
    return req


def _outcome(
    selected: SeedSelected,
    *,
    reward: float,
    t: float,
    success: bool = True,
    memory_mb: float = 0.0,
    by_request_id: bool = False,
) -> dict:
    out = {
        "blueprint_id": selected.blueprint_id,
        "seed_id": selected.seed_id,
        "accuracy_delta": reward,
        "success": success,
        "memory_mb": memory_mb,
        "occurred_at": (T0 + timedelta(seconds=t)).isoformat(),
    }
    if by_request_id:
        out["request_id"] = selected.request_id
    else:
        out["decision_id"] = selected.decision_id
    return out


def _context(rng: np.random.Generator) -> dict:
    return {
        "current_loss": float(rng.uniform(0.5, 3.0)),
        "learning_rate": float(10 ** rng.uniform(-4, -1)),
        "current_epoch": float(rng.integers(0, 50)),
        "gradient_norm": float(rng.lognormal(0, 1)),
    }


def _assert_state_equal(a, b, path: str = "state") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=path)
    elif isinstance(a, float) or isinstance(b, float):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=path)
    else:
        assert a == b, path


def _burn_in(sel: SeedSelector, bp: str = "bp", seeds=SEEDS) -> None:
    for i in range(len(seeds)):
        sel.select(_request(f"burn-{bp}-{i}", bp=bp, seeds=seeds, t=i))


# -- determinism ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["thompson", "epsilon-greedy", "linucb", "softmax"])
def test_same_request_and_state_give_the_same_decision(strategy):
    one, two = _selector(default_strategy=strategy), _selector(default_strategy=strategy)
    rng = np.random.default_rng(0)
    for step in range(40):
        req = _request(f"r{step}", t=10.0 * step, context=_context(rng))
        s1, s2 = one.select(req), two.select(req)
        assert s1.model_dump() == s2.model_dump()
        assert (s1.seed_id, s1.propensity, s1.selection_reason) == (s2.seed_id, s2.propensity, s2.selection_reason)
        reward = float(rng.normal(QUALITY[s1.seed_id], 0.05))
        o = _outcome(s1, reward=reward, t=10.0 * step + 5)
        assert one.record_outcome(o) == two.record_outcome(o)
    _assert_state_equal(one.state_dict(), two.state_dict())
    # decide() is a pure function of (request, state): asking twice gives the same answer and changes nothing.
    req = _request("again", t=1000.0, context=_context(rng))
    parsed = GraftRequested.model_validate(req)
    before = one.state_dict()
    assert one.decide(parsed).model_dump() == one.decide(parsed).model_dump()
    _assert_state_equal(before, one.state_dict())


# -- strategy switching and stats -------------------------------------------------------------------------------
def test_switch_strategy_keeps_statistics():
    sel = _selector(default_strategy="thompson")
    _burn_in(sel)
    for step in range(12):
        s = sel.select(_request(f"r{step}", t=10.0 + step))
        sel.record_outcome(_outcome(s, reward=QUALITY[s.seed_id], t=20.0 + step))
    before = sel.state_dict()
    sel.switch_strategy("ucb")
    _assert_state_equal(before["blueprints"], sel.state_dict()["blueprints"])
    assert sel.default_strategy == "ucb"
    nxt = sel.select(_request("after-switch", t=100.0))
    assert nxt.strategy == "ucb" and "ucb" in nxt.selection_reason
    assert sel.stats()["selections_per_strategy"]["ucb"] == 1

    # Per-blueprint switch: only that blueprint changes.
    sel.switch_strategy("softmax", blueprint_id="bp")
    assert sel.select(_request("bp-switch", t=101.0)).strategy == "softmax"
    _burn_in(sel, bp="other")
    assert sel.select(_request("other-1", bp="other", t=102.0)).strategy == "ucb"

    # An unknown name changes nothing.
    snapshot = sel.state_dict()
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        sel.switch_strategy("nope")
    assert sel.default_strategy == "ucb"
    _assert_state_equal(snapshot, sel.state_dict())


def test_request_may_name_its_strategy():
    sel = _selector(default_strategy="thompson")
    _burn_in(sel)
    assert sel.select(_request("r", t=10.0, strategy="seed0")).strategy == "seed0"
    assert sel.select(_request("r2", t=11.0, strategy="not-a-strategy")).strategy == "thompson"


def test_stats_contents():
    sel = _selector(default_strategy="ucb")
    assert sel.stats() == {
        "selections_per_strategy": {},
        "total_selections": 0,
        "unique_seeds_selected": 0,
        "blueprints": 0,
        "pending_decisions": 0,
        "top_performers": [],
        "default_strategy": "ucb",
        "seeds": [],
    }
    _burn_in(sel, seeds=("a", "b", "c"))
    _burn_in(sel, bp="bp2", seeds=("x", "y"))
    picks = [sel.select(_request(f"r{i}", seeds=("a", "b", "c"), t=10.0 + i)) for i in range(3)]
    sel.select(_request("w", seeds=("a", "b", "c"), t=20.0, strategy="seed0"))
    # Outcomes for the three ucb decisions: a gets 0.9, b 0.5, c 0.1.
    rewards = {"a": 0.9, "b": 0.5, "c": 0.1}
    for s in picks:
        sel.record_outcome(_outcome(s, reward=rewards[s.seed_id], t=30.0))
    st = sel.stats(top=2)
    assert st["total_selections"] == 3 + 2 + 3 + 1
    assert st["selections_per_strategy"] == {"ucb": 8, "seed0": 1}
    assert st["unique_seeds_selected"] == 5
    assert st["blueprints"] == 2
    assert st["pending_decisions"] == 9 - 3
    assert st["default_strategy"] == "ucb"
    assert len(st["top_performers"]) == min(2, len({s.seed_id for s in picks}))
    means = [p["mean_reward"] for p in st["top_performers"]]
    assert means == sorted(means, reverse=True)
    for p in st["top_performers"]:
        assert set(p) == {"blueprint_id", "seed_id", "mean_reward", "outcomes", "selections"}
        assert p["blueprint_id"] == "bp"
        n = sum(1 for s in picks if s.seed_id == p["seed_id"])
        assert p["outcomes"] == n
        assert p["mean_reward"] == pytest.approx(rewards[p["seed_id"]])
        assert p["selections"] >= n + 1  # burn-in selection plus the ucb ones


# -- burn-in ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["thompson", "ucb", "linucb", "epsilon-greedy"])
def test_untried_seeds_are_tried_first(strategy):
    seeds = tuple(f"s{i}" for i in range(6))
    sel = _selector(default_strategy=strategy)
    chosen = []
    for i in range(len(seeds)):
        s = sel.select(_request(f"r{i}", seeds=seeds, t=float(i)))
        untried = len(seeds) - i
        assert s.propensity == pytest.approx(1.0 / untried)
        assert s.propensity_method == "exact"
        assert s.strategy == strategy
        assert "untried" in s.selection_reason
        assert s.seed_id not in chosen
        probs = {c.seed_id: c.probability for c in s.scores}
        assert sum(probs.values()) == pytest.approx(1.0)
        for sid in chosen:
            assert probs[sid] == 0.0
        chosen.append(s.seed_id)
    assert sorted(chosen) == sorted(seeds)
    # All tried once: now the strategy decides.
    s = sel.select(_request("after", seeds=seeds, t=10.0))
    assert "untried" not in s.selection_reason


def test_min_samples_two_tries_each_seed_twice():
    sel = _selector(min_samples=2)
    picks = [sel.select(_request(f"r{i}", seeds=("a", "b", "c"), t=float(i))).seed_id for i in range(6)]
    assert sorted(picks) == ["a", "a", "b", "b", "c", "c"]


# -- viability --------------------------------------------------------------------------------------------------
def test_non_selectable_states_are_never_picked():
    sel = _selector(default_strategy="random")
    states = {"a": "active", "c": "fossilized"}
    for i in range(40):
        s = sel.select(_request(f"r{i}", t=float(i), states=states))
        assert s.seed_id in ("b", "d")
        cand = {c.seed_id: c for c in s.scores}
        assert not cand["a"].viable and "active" in cand["a"].note
        assert not cand["c"].viable and "fossilized" in cand["c"].note
        assert cand["b"].viable and cand["d"].viable and cand["b"].note is None
    # A candidate without a state is treated as selectable.
    req = _request("nostate", seeds=("x", "y"), t=100.0)
    for seed in req["seeds"]:
        seed.pop("state")
    assert sel.select(req).seed_id in ("x", "y")
    # Other selectable states can be configured.
    sel2 = _selector(selectable_states=["dormant", "active"])
    assert sel2.select(_request("r", seeds=("a",), states={"a": "active"})).strategy != FALLBACK


def test_memory_budget_excludes_tracked_seeds_and_keeps_untried_ones():
    sel = _selector(default_strategy="ucb", min_samples=0)
    seeds = ("a", "b", "c")
    first = {}
    for i, sid in enumerate(("a", "b")):
        s = sel.select(
            _request(
                f"seed-{sid}",
                seeds=seeds,
                t=float(i),
                strategy="seed0",
                idx={"a": 0, "b": 1, "c": 2} if sid == "a" else {"b": 0, "a": 1, "c": 2},
            )
        )
        assert s.seed_id == sid
        first[sid] = s
    sel.record_outcome(_outcome(first["a"], reward=0.9, memory_mb=2000.0, t=5.0))  # best, but too big
    sel.record_outcome(_outcome(first["b"], reward=0.1, memory_mb=100.0, t=5.0))
    budget = {"memory_budget_mb": 1000.0}
    for i in range(20):
        s = sel.select(_request(f"q{i}", seeds=seeds, t=10.0 + i, constraints=budget), track=False)
        cand = {c.seed_id: c for c in s.scores}
        assert s.seed_id != "a"
        assert not cand["a"].viable and "2000 MB > budget 1000 MB" in cand["a"].note
        assert cand["b"].viable
        assert cand["c"].viable  # no outcome yet: nothing is known against it
        assert s.seed_id == "c"  # ucb: an arm without outcomes scores +inf
    # Once c is known and small, the budgeted choice is among b and c; without a budget a wins.
    s = sel.select(_request("c-out", seeds=seeds, t=40.0, strategy="seed0", idx={"c": 0, "a": 1, "b": 2}))
    assert s.seed_id == "c"
    sel.record_outcome(_outcome(s, reward=0.2, memory_mb=50.0, t=41.0))
    with_budget = sel.select(_request("q-budget", seeds=seeds, t=50.0, constraints=budget), track=False)
    assert with_budget.seed_id in ("b", "c")
    free = sel.select(_request("q-free", seeds=seeds, t=51.0), track=False)
    assert free.seed_id == "a"


def test_latency_limit_excludes_a_slow_seed():
    sel = _selector(default_strategy="ucb", min_samples=0)
    s = sel.select(_request("slow", seeds=("a", "b"), strategy="seed0"))
    sel.record_outcome({**_outcome(s, reward=0.9, t=1.0), "latency_ms": 30.0})
    s = sel.select(_request("q", seeds=("a", "b"), t=2.0, constraints={"max_latency_ms": 10.0}))
    cand = {c.seed_id: c for c in s.scores}
    assert s.seed_id == "b" and not cand["a"].viable and "ms > limit" in cand["a"].note


def test_nothing_viable_falls_back_with_a_reason():
    sel = _selector()
    s = sel.select(
        _request("none", t=0.0, states={sid: "active" for sid in SEEDS}, idx={"a": 3, "b": 2, "c": 0, "d": 1})
    )
    assert s.strategy == FALLBACK == "fallback"
    assert s.propensity_method == "fallback" and s.propensity == 1.0
    assert s.seed_id == "c"  # the lowest seed_idx
    assert "no viable seed" in s.selection_reason and "not selectable" in s.selection_reason
    assert all(not c.viable for c in s.scores)

    # All over budget: the reason names the budget.
    sel = _selector(min_samples=0)
    s = sel.select(_request("only", seeds=("a",), strategy="seed0"))
    sel.record_outcome(_outcome(s, reward=0.5, memory_mb=5000.0, t=1.0))
    s = sel.select(_request("over", seeds=("a",), t=2.0, constraints={"memory_budget_mb": 10.0}))
    assert s.strategy == "fallback" and "budget" in s.selection_reason and s.seed_id == "a"


# -- outcomes ---------------------------------------------------------------------------------------------------
def test_duplicate_and_unknown_outcomes():
    sel = _selector()
    s = sel.select(_request("r1"))
    o = _outcome(s, reward=0.4, t=1.0)
    first = sel.record_outcome(o)
    assert first.status == "learned" and first.reward == pytest.approx(0.4) and first.decision_id == s.decision_id
    arms = sel.blueprints["bp"].arms
    i = arms.index[s.seed_id]
    snapshot = sel.state_dict()
    again = sel.record_outcome(o)
    assert again.status == "duplicate" and again.decision_id == s.decision_id
    assert arms.pulls[i] == 1 and arms.reward_sum[i] == pytest.approx(0.4)
    _assert_state_equal(snapshot, sel.state_dict())

    unknown = sel.record_outcome(
        {"request_id": "never-asked", "blueprint_id": "bp", "seed_id": "a", "accuracy_delta": 0.9}
    )
    assert unknown.status == "unknown" and unknown.decision_id == decision_id_for("never-asked")
    _assert_state_equal(snapshot, sel.state_dict())

    # An untracked selection has nothing to join to.
    s2 = sel.select(_request("r2", t=2.0), track=False)
    assert sel.record_outcome(_outcome(s2, reward=0.1, t=3.0)).status == "unknown"


def test_outcome_joined_by_request_id():
    sel = _selector()
    s = sel.select(_request("join-me"))
    assert s.decision_id == decision_id_for("join-me")
    res = sel.record_outcome(AdaptationOutcome.model_validate(_outcome(s, reward=0.7, t=1.0, by_request_id=True)))
    assert res.status == "learned" and res.decision_id == s.decision_id and res.reward == pytest.approx(0.7)
    arms = sel.blueprints["bp"].arms
    assert arms.pulls[arms.index[s.seed_id]] == 1
    assert sel.stats()["pending_decisions"] == 0


def test_failed_graft_learns_the_failure_reward():
    sel = SeedSelector(Settings.model_validate({"reward": {"failure_reward": -0.5}}), clock=_clock)
    s = sel.select(_request("f"))
    res = sel.record_outcome(_outcome(s, reward=0.9, success=False, t=1.0))
    assert res.reward == -0.5
    arms = sel.blueprints["bp"].arms
    i = arms.index[s.seed_id]
    assert arms.reward_sum[i] == -0.5 and arms.success_sum[i] == 0


# -- replay -----------------------------------------------------------------------------------------------------
def _live_run(sel: SeedSelector, steps: int, seed: int, new_seed_at: int | None = None):
    """Requests every 10 s; each outcome arrives 5-200 s later, so outcomes are learned out of event order.
    Returns the logged events (as decoded from their wire format) in the order the live selector handled them."""
    rng = np.random.default_rng(seed)
    log: list[tuple[str, object]] = []
    waiting: list[tuple[float, SeedSelected, dict]] = []
    for step in range(steps):
        now = 10.0 * step
        due = sorted((w for w in waiting if w[0] <= now), key=lambda w: w[0])
        waiting = [w for w in waiting if w[0] > now]
        for _, selected, outcome in due:
            assert sel.record_outcome(outcome).status == "learned"
            log.append(("outcome", (selected, decode(encode(AdaptationOutcome.model_validate(outcome))))))
        seeds = SEEDS + (("e",) if new_seed_at is not None and step >= new_seed_at else ())
        selected = sel.select(_request(f"r{step}", seeds=seeds, t=now, context=_context(rng)))
        log.append(("selected", decode(encode(selected))))
        arrive = now + float(rng.uniform(5.0, 200.0))
        # The outcome's own event time is jittered too, so event times are not in arrival order either.
        reward = float(np.clip(rng.normal(QUALITY.get(selected.seed_id, 0.4), 0.1), -1, 1))
        outcome = _outcome(
            selected,
            reward=reward,
            t=arrive - float(rng.uniform(0, 150)),
            success=bool(rng.random() < 0.8),
            memory_mb=float(rng.uniform(10, 100)),
        )
        waiting.append((arrive, selected, outcome))
    for _, selected, outcome in sorted(waiting, key=lambda w: w[0]):
        assert sel.record_outcome(outcome).status == "learned"
        log.append(("outcome", (selected, decode(encode(AdaptationOutcome.model_validate(outcome))))))
    return log


def _replay(settings: Settings, log, order: str, seed: int = 0) -> SeedSelector:
    fresh = SeedSelector(settings, clock=_clock)
    by_id: dict[str, SeedSelected] = {}
    if order == "live":
        for kind, event in log:
            if kind == "selected":
                by_id[event.decision_id] = event
                fresh.apply_selection(event)
            else:
                outcome = event[1]
                fresh.learn(by_id[outcome.resolved_decision_id], outcome)
        return fresh
    selections = [e for k, e in log if k == "selected"]
    outcomes = [e for k, e in log if k == "outcome"]
    for s in selections:
        by_id[s.decision_id] = s
        fresh.apply_selection(s)
    if order == "reversed":
        perm = np.arange(len(outcomes))[::-1]
    else:
        perm = np.random.default_rng(seed).permutation(len(outcomes))
    for j in perm:
        selected, outcome = outcomes[j]
        # The replay joins by decision id from the logged seed.selected events, as a replay tool would.
        fresh.learn(by_id[outcome.resolved_decision_id], outcome)
    return fresh


@pytest.mark.parametrize("half_life_s", [None, 600.0])
@pytest.mark.parametrize("order", ["live", "shuffled", "reversed"])
def test_replay_reproduces_the_live_state(half_life_s, order):
    settings = Settings.model_validate({"default_strategy": "thompson", "decay": {"half_life_s": half_life_s}})
    live = SeedSelector(settings, clock=_clock)
    log = _live_run(live, steps=80, seed=1)
    assert sum(k == "outcome" for k, _ in log) == 80
    replayed = _replay(settings, log, order, seed=7)
    live_state, replay_state = live.state_dict(), replayed.state_dict()
    arms = live_state["blueprints"]["bp"]["arms"]
    assert arms["pulls"].sum() == 80 and (arms["gram"] != 0).any()
    if half_life_s is not None:
        assert (arms["w"] < arms["pulls"]).any()  # decay was in play
    _assert_state_equal(live_state, replay_state)


@pytest.mark.parametrize("half_life_s", [None, 600.0])
def test_replay_with_a_seed_that_appears_mid_stream_in_live_order(half_life_s):
    """A seed first offered mid-stream is warm-started from the blueprint's pooled mean at that point; replaying
    the log in the order the live selector handled it reproduces that too."""
    settings = Settings.model_validate({"default_strategy": "thompson", "decay": {"half_life_s": half_life_s}})
    live = SeedSelector(settings, clock=_clock)
    log = _live_run(live, steps=60, seed=2, new_seed_at=30)
    arms = live.blueprints["bp"].arms
    assert arms.prior_w[arms.index["e"]] == 1.0  # it was warm-started
    _assert_state_equal(live.state_dict(), _replay(settings, log, "live").state_dict())


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: a seed first offered mid-stream is warm-started from the "
    "pooled mean of the outcomes learned *so far*, so its prior depends on how outcomes interleave "
    "with selections; a replay that reorders outcomes gives it a different prior",
)
def test_replay_with_a_seed_that_appears_mid_stream_in_another_order():
    settings = Settings.model_validate({"decay": {"half_life_s": 600.0}})
    live = SeedSelector(settings, clock=_clock)
    log = _live_run(live, steps=60, seed=2, new_seed_at=30)
    _assert_state_equal(live.state_dict(), _replay(settings, log, "shuffled").state_dict())


def test_load_state_dict_round_trip_then_identical_decisions():
    settings = Settings.model_validate({"default_strategy": "linucb", "decay": {"half_life_s": 600.0}})
    live = SeedSelector(settings, clock=_clock)
    _live_run(live, steps=30, seed=3)
    copy = SeedSelector(settings, clock=_clock)
    copy.load_state_dict(live.state_dict())
    _assert_state_equal(live.state_dict(), copy.state_dict())
    rng = np.random.default_rng(4)
    for i in range(10):
        req = _request(f"next{i}", t=1000.0 + i, context=_context(rng))
        assert live.select(req).model_dump() == copy.select(req).model_dump()


def test_seed0_and_round_robin_go_by_seed_idx_not_request_order():
    idx = {"a": 3, "b": 1, "c": 2, "d": 0}
    sel = _selector(default_strategy="seed0", min_samples=0)
    for i in range(3):
        s = sel.select(_request(f"r{i}", t=float(i), idx=idx))
        assert s.seed_id == "d" and s.seed_idx == 0
    s = sel.select(_request("r-inactive", t=5.0, idx=idx, states={"d": "active"}))
    assert s.seed_id == "b"
    rr = _selector(default_strategy="round-robin", min_samples=0)
    turns = [rr.select(_request(f"t{i}", t=float(i), idx=idx)).seed_idx for i in range(8)]
    assert turns == [0, 1, 2, 3, 0, 1, 2, 3]


# -- logging-only mode ------------------------------------------------------------------------------------------
def test_logging_only_picks_the_lowest_viable_seed_idx_and_learns():
    sel = _selector(logging_only=True, default_strategy="thompson")
    idx = {"a": 3, "b": 1, "c": 2, "d": 0}
    states = {"d": "active"}  # the lowest seed_idx is not viable
    for i in range(6):
        s = sel.select(_request(f"r{i}", t=float(i), idx=idx, states=states))
        assert s.seed_id == "b" and s.seed_idx == 1
        assert s.strategy == "seed0" and s.propensity == 1.0 and s.propensity_method == "exact"
        assert "logging-only" in s.selection_reason and "thompson would have chosen" in s.selection_reason
        assert any(c.score is not None for c in s.scores)  # the shadow strategy's scores are logged
        assert sel.record_outcome(_outcome(s, reward=0.3, t=i + 0.5)).status == "learned"
    arms = sel.blueprints["bp"].arms
    assert arms.pulls[arms.index["b"]] == 6 and arms.selections[arms.index["b"]] == 6
    assert arms.reward_sum[arms.index["b"]] == pytest.approx(1.8)
    assert sel.stats()["selections_per_strategy"] == {"seed0": 6}


@pytest.mark.parametrize("strategy", ["glr-ucb", "glr-thompson"])
def test_change_detection_replays_bit_identically_in_fold_order(strategy):
    """The detector's segment is a sequence: a replay that folds the logged outcomes in the order the live
    selector did reproduces its state exactly, detected changes included."""
    settings = Settings.model_validate({"default_strategy": strategy})
    assert settings.detects_changes
    live = SeedSelector(settings, clock=_clock)
    log = _live_run(live, steps=120, seed=5)
    replayed = _replay(settings, log, "live")
    a, b = live.state_dict(), replayed.state_dict()
    assert "history" in a["blueprints"]["bp"]["arms"]

    def exact(x, y, path="state"):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for k in x:
                exact(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=path)
        else:
            assert x == y, path

    exact(a, b)
