"""Live shadow evaluation (seedworker.core.shadow): every decision also records what each shadow strategy would have
chosen on the same state, with its probability of the live choice; evaluate and inspect estimate its value."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from seedworker.contract import events as ev
from seedworker.core.config import ConfigError, Settings, load_settings
from seedworker.core.policies import Situation
from seedworker.core.selector import SeedSelector
from seedworker.core.shadow import decide_as, shadow_draw
from seedworker.tools import inspect
from seedworker.tools.cli import main
from seedworker.tools.evaluate import evaluate, make_targets, parse_targets, read_log, write_simulated_log
from seedworker.tools.simulation.envs import make_env

SHADOWS = ["ucb", "thompson", "epsilon-greedy", "softmax", "linucb", "lin-thompson", "seed0", "random", "round-robin"]
MEANS = [0.1, 0.3, 0.5, 0.2]


def _request(t: int, k: int = 4, rid: str | None = None, **fields) -> dict:
    return {
        "request_id": rid or f"r{t}",
        "blueprint_id": "bp",
        "seeds": [{"seed_id": f"s{i}", "seed_idx": i} for i in range(k)],
        "context": {"current_loss": 1.0 / (1 + t)},
        **fields,
    }


def _run(settings: Settings, steps: int, seed: int = 0) -> tuple[SeedSelector, list[ev.SeedSelected]]:
    """A stationary world: seed i's reward is MEANS[i] plus noise; every outcome comes before the next request."""
    sel = SeedSelector(settings)
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        s = sel.select(_request(t))
        gain = MEANS[s.seed_idx] + 0.1 * rng.standard_normal()
        sel.record_outcome(
            {"request_id": s.request_id, "blueprint_id": "bp", "seed_id": s.seed_id, "accuracy_delta": gain}
        )
        out.append(s)
    return sel, out


@pytest.mark.parametrize("steps", [2, 60])  # during the burn-in and after it
def test_a_shadow_is_what_its_strategy_alone_would_choose_on_the_same_state(steps):
    settings = Settings(default_strategy="thompson", shadow={"strategies": SHADOWS})
    live, _ = _run(settings, steps)
    selected = live.decide(ev.from_dict(_request(steps), "graft.requested"))
    assert [c.strategy for c in selected.shadow] == SHADOWS
    for c in selected.shadow:
        # Alone: a selector with the same state and that strategy, deciding the request under the shadow's key
        # (salt, request id, "shadow", name); the baselines without burn-in, as evaluate replays them.
        alone = SeedSelector(Settings(default_strategy=c.strategy, min_samples=0 if c.strategy in SHADOWS[-3:] else 1))
        alone.load_state_dict(live.state_dict())
        alone.default_strategy = c.strategy  # the state names the live default
        own = alone.decide(ev.from_dict(_request(steps, rid=f"r{steps}\x00shadow\x00{c.strategy}"), "graft.requested"))
        assert (c.seed_id, c.strategy) == (own.seed_id, own.strategy)
        assert c.propensity == pytest.approx(own.propensity, abs=1e-12)
        probs = [s.probability for s in own.scores]
        if None not in probs:  # the whole distribution was logged: the shadow's probability of the live seed
            assert c.propensity_of_live == pytest.approx(probs[selected.seed_idx], abs=1e-12)
        if c.seed_id == selected.seed_id:
            assert c.propensity_of_live == pytest.approx(c.propensity, abs=1e-12)


def test_quadrature_gives_the_probability_of_the_live_seed_too():
    settings = Settings(default_strategy="epsilon-greedy", shadow={"strategies": ["thompson"]})
    live, _ = _run(settings, 80)
    bp = live.blueprints["bp"]
    req = ev.from_dict(_request(80), "graft.requested")
    (c,) = live.decide(req).shadow
    assert c.propensity_method == "quadrature"
    s = Situation(
        bp.arms,
        np.arange(4),
        bp.features.transform(req.context.values()),
        bp.decisions,
        shadow_draw("seedworker", "r80", "thompson"),
    )
    cand = decide_as("thompson", live.policy("thompson"), s, 1)
    probs = [cand.probability(j)[0] for j in range(4)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # the whole distribution, one integral per candidate
    assert cand.propensity == c.propensity and probs[cand.index] == c.propensity


def test_shadows_leave_the_live_decisions_unchanged():
    plain, a = _run(Settings(default_strategy="thompson"), 120)
    shadowed, b = _run(Settings(default_strategy="thompson", shadow={"strategies": SHADOWS}), 120)
    assert [(s.seed_id, s.propensity, s.propensity_method) for s in a] == [
        (s.seed_id, s.propensity, s.propensity_method) for s in b
    ]
    assert all(s.shadow is None for s in a) and all(len(s.shadow) == len(SHADOWS) for s in b)
    assert "shadow" not in ev.encode(a[-1]).decode()  # without shadows the payload is what 1.2 wrote


def test_shadow_fields_round_trip_and_replay_the_same():
    settings = Settings(default_strategy="ucb", shadow={"strategies": ["thompson", "epsilon-greedy"]})
    live, selected = _run(settings, 50)
    for s in selected:
        ev.check_selection(s)
        back = ev.decode(ev.encode(s), ev.SEED_SELECTED)
        assert back.shadow == s.shadow
    # The same request against the same (restored) state records the same shadows.
    again = SeedSelector(settings)
    again.load_state_dict(live.state_dict())
    req = ev.from_dict(_request(50), "graft.requested")
    assert again.decide(req).shadow == live.decide(req).shadow


def test_an_event_without_shadows_still_decodes():
    live, selected = _run(Settings(default_strategy="ucb"), 3)
    raw = ev.encode(selected[-1]).replace(b'"schema_version":"1.3"', b'"schema_version":"1.2"')
    old = ev.decode(raw, ev.SEED_SELECTED)
    assert old.shadow is None and old.schema_version == "1.2"


def test_shadow_settings_are_validated_like_the_others():
    with pytest.raises(ValueError, match="shadow.strategies.0: unknown strategy 'nope'"):
        Settings(shadow={"strategies": ["nope"]})
    with pytest.raises(ValueError, match="discounted-ucb"):
        Settings(shadow={"strategies": ["discounted-ucb"]})
    # Naming a change-detecting strategy as a shadow turns the detector on, as naming it anywhere does.
    assert Settings(default_strategy="ucb", shadow={"strategies": ["glr-ucb"]}).detects_changes
    with pytest.raises(ConfigError, match="SEEDWORKER_SHADOW__STRATEGIES"):
        load_settings(environ={"SEEDWORKER_SHADOW__STRATEGIES": '["nope"]'})
    s = load_settings(environ={"SEEDWORKER_SHADOW__STRATEGIES": '["ucb", "seed0"]'})
    assert s.shadow.strategies == ["ucb", "seed0"]


# -- evaluate: the shadows' values on live traffic -----------------------------------------------------------------
async def _simulated_log(tmp_path, strategy: str, steps: int, shadows: list[str], seed: int = 0, **options):
    env = make_env("stationary", n_seeds=4, steps=steps, seed=seed, noise=0.005)
    db = tmp_path / f"{strategy}-{seed}.sqlite"
    settings = Settings(decision_retention_s=1e9, shadow={"strategies": shadows}, **options)
    expected = await write_simulated_log(db, env, strategy=strategy, settings=settings, batch=20)
    return env, db, expected, settings


async def test_evaluate_estimates_each_shadow_from_what_it_recorded(tmp_path):
    """Uniform logging, so every shadow is supported. A shadow and the replayed target of the same strategy see the
    same state (the live state is the logged history): the shadow's estimates must cover the target's exact value.
    Measured |z| <= 2.19 over the three seeds (15 rows, 45 estimates)."""
    names = ["ucb", "thompson", "epsilon-greedy", "seed0", "random"]
    worst = 0.0
    for seed in range(3):
        env, db, expected, settings = await _simulated_log(tmp_path, "random", 600, names, seed, min_samples=0)
        records = read_log(db)
        assert all([c.strategy for c in r.selected.shadow] == names for r in records)
        targets, _ = make_targets(parse_targets(",".join(names)), settings)
        results = evaluate(records, targets, expected=expected)
        for name in names:
            sh, target = results[f"shadow:{name}"], results[name]
            assert sh.shadowed == sh.decisions == 600 and sh.off_support == 0, name
            for key in ("ips", "snips", "dr"):
                e = getattr(sh, key)
                worst = max(worst, abs(e.value - target.truth) / e.se)
            # Agreement: how often the shadow chose the logged (uniform) seed.
            agree = np.mean(
                [
                    next(c for c in r.selected.shadow if c.strategy == name).seed_id == r.selected.seed_id
                    for r in records
                ]
            )
            assert sh.agreement == pytest.approx(agree)
        # The logging strategy in its own shadow: probability 1/4 of every logged seed, so every weight is exactly 1.
        own = results["shadow:random"]
        assert own.ess == pytest.approx(600) and own.mean_weight == pytest.approx(1.0)
        assert own.ips.value == pytest.approx(np.mean([r.reward for r in records]))
        assert own.live_probability == pytest.approx(0.25) and results["shadow:seed0"].truth == pytest.approx(
            env.means[0]
        )
    assert worst < 3.3, worst


async def test_a_deterministic_live_strategy_leaves_its_shadows_unidentified_but_dr(tmp_path, capsys):
    env, db, expected, settings = await _simulated_log(tmp_path, "seed0", 100, ["random", "seed0"])
    results = evaluate(read_log(db), {}, expected=expected)
    assert set(results) == {"shadow:random", "shadow:seed0"}
    uniform, same = results["shadow:random"], results["shadow:seed0"]
    assert uniform.off_support == 100 and uniform.ips.value is None and "model-based" in uniform.dr.note
    assert uniform.dr.slack == pytest.approx(0.75 * 2.0)  # 1 - 1/4 of its mass off the support, rewards in [-1, 1]
    assert same.off_support == 0 and same.agreement == 1.0 and same.ess == 100
    assert main(["evaluate", "--db", str(db), "--strategies", "ucb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["shadows"]) == {"random", "seed0"} and set(out["targets"]) == {"ucb", "seed0", "random"}
    assert out["shadows"]["seed0"]["agreement"] == 1.0 and out["shadows"]["random"]["shadowed_decisions"] == 100
    assert main(["evaluate", "--db", str(db), "--strategies", "ucb"]) == 0
    text = capsys.readouterr().out
    assert "shadow:random" in text and "live shadow: chose the live seed on 100.0% of the 100 decisions" in text


async def test_beta_thompson_can_be_evaluated_in_the_shadow_though_not_replayed(tmp_path):
    env, db, expected, settings = await _simulated_log(
        tmp_path, "epsilon-greedy", 200, ["beta-thompson"], strategies={"epsilon-greedy": {"decay_steps": None}}
    )
    targets, skipped = make_targets(parse_targets("beta-thompson"), settings)
    assert "beta-thompson" in skipped
    results = evaluate(read_log(db), targets, expected=expected)
    sh = results["shadow:beta-thompson"]
    assert sh.decisions == 200 and sh.dr.value is not None


async def test_inspect_reports_each_shadow_per_blueprint(tmp_path):
    env, db, expected, settings = await _simulated_log(tmp_path, "random", 200, ["seed0", "ucb"], min_samples=0)
    report, _ = inspect.read(db, settings)
    (bp,) = report["blueprints"].values()
    assert set(bp["shadows"]) == {"seed0", "ucb"} and bp["apprentice"] is None
    results = evaluate(read_log(db), {})
    for name, r in bp["shadows"].items():  # what evaluate says, per blueprint
        assert r == results[f"shadow:{name}"].to_dict()
        assert r["shadowed_decisions"] == 200
    out = io.StringIO()
    inspect.print_tables(report, out)
    text = out.getvalue()
    assert "live shadows: agreement with the live choice" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("seed0 "))
    assert f"{bp['shadows']['seed0']['agreement']:.1%}" in row
    # Settings without shadows read no decision for them, unless asked; a store without shadows has none.
    assert all(b["shadows"] is None for b in inspect.read(db, Settings())[0]["blueprints"].values())
    assert inspect.read(db, Settings(), shadows=True)[0]["blueprints"] == report["blueprints"]
    env, plain, expected, settings = await _simulated_log(tmp_path, "seed0", 20, [])
    report, _ = inspect.read(plain, settings, shadows=True)
    assert all(b["shadows"] == {} for b in report["blueprints"].values())
    assert main(["inspect", "--db", str(db), "--shadows", "--json"]) == 0
