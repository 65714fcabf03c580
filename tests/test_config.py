"""Settings: TOML and YAML files (the seed document's seed_selection layout), SEEDWORKER_* environment overrides,
explicit overrides, validation errors; reward math."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
import yaml

from seedworker.contract.events import AdaptationOutcome
from seedworker.core.config import SEED_SELECTION, SEED_STRATEGIES, ConfigError, RewardSettings, Settings, load_settings
from seedworker.core.features import DEFAULT_FEATURES
from seedworker.core.policies import STRATEGIES
from seedworker.core.reward import RewardFunction

TOML = """
default_strategy = "ucb"
salt = "pepper"
min_samples = 2
selectable_states = ["dormant", "embryonic"]
logging_only = true

[strategies.ucb]
exploration = 0.5

[strategies.epsilon-greedy]
epsilon = 0.1
decay_steps = 50

[blueprint_strategies]
"bp-conv" = "linucb"

[decay]
half_life_s = 3600

[reward]
accuracy_weight = 2.0
latency_weight = 0.01
failure_reward = -0.5
clip_min = -2.0
clip_max = 2.0

[kafka]
bootstrap_servers = "broker-1:9092,broker-2:9092"
group_id = "sw-test"

[kafka.topics]
requests = "esper.graft.requested"

[join]
reward_wait_s = 60
"""


@pytest.fixture
def toml_file(tmp_path):
    path = tmp_path / "seedworker.toml"
    path.write_text(TOML)
    return path


def _error(**kwargs) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    return str(info.value)


def test_defaults_without_file_or_environment():
    s = load_settings(environ={})
    assert s == Settings()
    assert s.default_strategy == "glr-ucb" and s.decay.half_life_s is None and s.detects_changes
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092" and s.kafka.topics.requests == "graft.requested"
    assert s.features == list(DEFAULT_FEATURES)
    assert s.selectable_states == ["dormant"]


def test_toml_file_loading(toml_file):
    s = load_settings(toml_file, environ={})
    assert s.default_strategy == "ucb"
    assert s.salt == "pepper" and s.min_samples == 2 and s.logging_only is True
    assert s.selectable_states == ["dormant", "embryonic"]
    assert s.strategies == {"ucb": {"exploration": 0.5}, "epsilon-greedy": {"epsilon": 0.1, "decay_steps": 50}}
    assert s.blueprint_strategies == {"bp-conv": "linucb"}
    assert s.decay.half_life_s == 3600.0
    assert s.reward.accuracy_weight == 2.0 and s.reward.failure_reward == -0.5
    assert s.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092" and s.kafka.group_id == "sw-test"
    assert s.kafka.topics.requests == "esper.graft.requested"
    assert s.kafka.topics.outcomes == "adaptation.outcome"  # untouched defaults stay
    assert s.join.reward_wait_s == 60.0
    # Strategy options reach the policies.
    assert s.policy("ucb").exploration == 0.5
    assert s.policy("epsilon-greedy").decay_steps == 50
    assert s.policy("softmax").temperature == 0.25  # no options: the class defaults


def test_environment_overrides(toml_file):
    env = {
        "SEEDWORKER_DECAY__HALF_LIFE_S": "600",
        "SEEDWORKER_BOOTSTRAP_SERVERS": "kafka.internal:9093",
        "SEEDWORKER_KAFKA__TOPICS__OUTCOMES": "esper.outcomes",
        "SEEDWORKER_LOGGING_ONLY": "false",
        "SEEDWORKER_SELECTABLE_STATES": '["dormant", "active"]',
        "SEEDWORKER_STRATEGIES__UCB__EXPLORATION": "2",
        "SEEDWORKER_EMPTY": "",  # empty values are ignored
        "OTHER_PREFIX_SALT": "ignored",
        "PATH": "/usr/bin",
    }
    s = load_settings(toml_file, environ=env)
    assert s.decay.half_life_s == 600.0
    assert s.kafka.bootstrap_servers == "kafka.internal:9093"
    assert s.kafka.group_id == "sw-test"  # the file's sibling setting survives the override
    assert s.kafka.topics.outcomes == "esper.outcomes"
    assert s.kafka.topics.requests == "esper.graft.requested"
    assert s.logging_only is False
    assert s.selectable_states == ["dormant", "active"]
    assert s.strategies["ucb"] == {"exploration": 2}
    assert s.salt == "pepper"
    # Without a file (a half-life needs a strategy that decays: the default forgets by change detection).
    assert (
        load_settings(
            environ={"SEEDWORKER_HALF_LIFE_S": "90", "SEEDWORKER_DEFAULT_STRATEGY": "thompson"}
        ).decay.half_life_s
        == 90.0
    )


def test_environment_is_only_read_from_the_environ_argument(monkeypatch):
    monkeypatch.setenv("SEEDWORKER_DECAY__HALF_LIFE_S", "123")
    monkeypatch.setenv("SEEDWORKER_DEFAULT_STRATEGY", "ucb")
    assert load_settings(environ={}).decay.half_life_s is None
    assert load_settings().decay.half_life_s == 123.0  # environ=None reads the process environment


def test_settings_objects_never_read_the_environment(monkeypatch):
    monkeypatch.setenv("SEEDWORKER_DB", "from-the-process.sqlite")
    assert Settings().db == "var/seedworker.sqlite"
    assert Settings(salt="s").db == "var/seedworker.sqlite"


def test_environment_json_sections_merge_with_nested_variables(toml_file):
    s = load_settings(
        toml_file,
        environ={
            "SEEDWORKER_KAFKA": '{"client_id": "c1"}',
            "SEEDWORKER_KAFKA__GROUP_ID": "g2",
            "SEEDWORKER_STRATEGIES": '{"softmax": {"temperature": 0.5}}',
        },
    )
    assert (s.kafka.client_id, s.kafka.group_id) == ("c1", "g2")
    assert s.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"  # the file's key beside them stays
    assert s.strategies["softmax"] == {"temperature": 0.5} and s.strategies["ucb"] == {"exploration": 0.5}


def test_null_unsets_an_optional_setting(toml_file):
    assert load_settings(toml_file, environ={"SEEDWORKER_DECAY__HALF_LIFE_S": "null"}).decay.half_life_s is None


def test_numeric_looking_values_of_string_settings_stay_strings():
    s = load_settings(
        environ={
            "SEEDWORKER_GROUP_ID": "42",
            "SEEDWORKER_SALT": "1.50",
            "SEEDWORKER_KAFKA__SASL_PASSWORD": "000123",
            "SEEDWORKER_DB": "true",
            "SEEDWORKER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "SEEDWORKER_KAFKA__SASL_MECHANISM": "PLAIN",
            "SEEDWORKER_KAFKA__SASL_USERNAME": "7",
        }
    )
    assert s.kafka.group_id == "42"
    assert s.salt == "1.50"
    assert s.kafka.sasl_password.get_secret_value() == "000123"
    assert s.db == "true"


def test_explicit_overrides_win(toml_file):
    s = load_settings(
        toml_file,
        environ={"SEEDWORKER_DECAY__HALF_LIFE_S": "600"},
        overrides={"decay.half_life_s": 60.0, "default_strategy": "softmax", "salt": None},
    )
    assert s.decay.half_life_s == 60.0
    assert s.default_strategy == "softmax"
    assert s.salt == "pepper"  # None means "not given"


def test_missing_and_malformed_files(tmp_path):
    assert "does not exist" in _error(path=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("default_strategy = \n")
    assert str(bad) in _error(path=bad)


# -- errors name the bad key ------------------------------------------------------------------------------------
def test_unknown_key():
    assert "bogus: unknown setting" in _error(overrides={"bogus": 1})
    assert "kafka.topics.bogus: unknown setting" in _error(overrides={"kafka.topics.bogus": "x"})
    assert "decay.half_life: unknown setting" in _error(environ={"SEEDWORKER_DECAY__HALF_LIFE": "600"})


def test_environment_errors_name_the_variable():
    assert _error(environ={"SEEDWORKER_DECAY__HALF_LIFE_S": "soon"}).startswith(
        "invalid settings: SEEDWORKER_DECAY__HALF_LIFE_S: decay.half_life_s: "
    )
    assert "SEEDWORKER_HALF_LIFE_S: decay.half_life_s: " in _error(environ={"SEEDWORKER_HALF_LIFE_S": "soon"})
    assert "SEEDWORKER_BOGUS: bogus: unknown setting" in _error(environ={"SEEDWORKER_BOGUS": "1"})
    assert "SEEDWORKER_REWARD__CLIP_MIN: reward: clip_min" in _error(environ={"SEEDWORKER_REWARD__CLIP_MIN": "5"})
    assert "SEEDWORKER_DEFAULT_STRATEGY: default_strategy: unknown strategy" in _error(
        environ={"SEEDWORKER_DEFAULT_STRATEGY": "ucb2"}
    )
    assert "SEEDWORKER_STRATEGIES__UCB__EXPLORE: strategies.ucb" in _error(
        environ={"SEEDWORKER_STRATEGIES__UCB__EXPLORE": "1"}
    )
    # Malformed JSON for a list or a section: the variable is named, and its value is not echoed.
    msg = _error(environ={"SEEDWORKER_SELECTABLE_STATES": "[dormant", "SEEDWORKER_KAFKA__TOPICS": "{secret"})
    assert "SEEDWORKER_SELECTABLE_STATES: selectable_states: not valid JSON" in msg
    assert "SEEDWORKER_KAFKA__TOPICS: kafka.topics: not valid JSON" in msg and "secret" not in msg
    # A short name and its long form at once: which one wins would be an accident of ordering.
    assert "both set kafka.bootstrap_servers" in _error(
        environ={"SEEDWORKER_BOOTSTRAP_SERVERS": "a:1", "SEEDWORKER_KAFKA__BOOTSTRAP_SERVERS": "b:1"}
    )
    # An explicit override replaces the variable, so its problem is the override's, not the variable's.
    msg = _error(environ={"SEEDWORKER_KAFKA__PARTITIONS": "2"}, overrides={"kafka.partitions": "x"})
    assert "kafka.partitions: Input should be a valid integer" in msg and "SEEDWORKER" not in msg


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[reward]\naccuracy_wieght = 2.0\n")
    assert "reward.accuracy_wieght: unknown setting" in _error(path=path)


def test_bad_type():
    msg = _error(environ={"SEEDWORKER_DECAY__HALF_LIFE_S": "soon"})
    assert "decay.half_life_s" in msg and "number" in msg
    assert "ridge" in _error(overrides={"ridge": "abc"})
    assert "min_samples" in _error(overrides={"min_samples": -1})
    assert "decay.half_life_s" in _error(overrides={"decay.half_life_s": 0})
    assert "kafka.partitions" in _error(environ={"SEEDWORKER_KAFKA__PARTITIONS": "[1]"})


def test_unknown_strategy():
    msg = _error(overrides={"default_strategy": "ucb2"})
    assert "default_strategy" in msg and "unknown strategy 'ucb2'" in msg and "thompson" in msg
    assert "blueprint_strategies.bp7: unknown strategy 'nope'" in _error(
        overrides={"blueprint_strategies": {"bp7": "nope"}}
    )
    assert "strategies.nope: unknown strategy 'nope'" in _error(overrides={"strategies": {"nope": {"x": 1}}})
    assert "strategies.ucb" in _error(overrides={"strategies": {"ucb": {"explore": 1.0}}})
    assert "epsilon-greedy" in _error(overrides={"strategies": {"epsilon-greedy": {"epsilon": 2.0}}})


def test_discounted_ucb_needs_a_half_life():
    assert "decay.half_life_s" in _error(overrides={"default_strategy": "discounted-ucb"})
    assert "decay.half_life_s" in _error(overrides={"blueprint_strategies": {"bp": "discounted-ucb"}})
    s = load_settings(environ={"SEEDWORKER_DECAY__HALF_LIFE_S": "600", "SEEDWORKER_DEFAULT_STRATEGY": "discounted-ucb"})
    assert s.default_strategy == "discounted-ucb" and s.policy("discounted-ucb").discounted is True


def test_clip_order():
    msg = _error(overrides={"reward.clip_min": 1.0, "reward.clip_max": 1.0})
    assert "reward" in msg and "clip_min" in msg and "clip_max" in msg
    assert "clip_min" in _error(environ={"SEEDWORKER_REWARD__CLIP_MIN": "5"})
    with pytest.raises(ValueError, match="clip_min"):
        RewardFunction(clip_min=0.5, clip_max=-0.5)


def test_settings_are_validated_on_assignment():
    s = Settings()
    with pytest.raises(ValueError):
        s.min_samples = -3


# -- reward -----------------------------------------------------------------------------------------------------
def _outcome(**fields) -> AdaptationOutcome:
    return AdaptationOutcome.model_validate({"request_id": "r", "blueprint_id": "bp", "seed_id": "s", **fields})


def test_default_reward_is_the_accuracy_gain():
    f = RewardSettings().function()
    assert f(_outcome(accuracy_delta=0.03, loss_delta=-0.2, latency_ms=5.0, memory_mb=100.0)) == pytest.approx(0.03)
    assert f(_outcome(accuracy_delta=-0.02)) == pytest.approx(-0.02)


def test_reward_weights():
    f = RewardFunction(
        accuracy_weight=2.0,
        loss_weight=0.5,
        latency_weight=0.01,
        memory_weight=0.001,
        throughput_weight=0.0001,
        clip_min=-100.0,
        clip_max=100.0,
    )
    o = _outcome(accuracy_delta=0.04, loss_delta=-0.1, latency_ms=3.0, memory_mb=250.0, throughput=1200.0)
    expected = 2.0 * 0.04 - 0.5 * (-0.1) - 0.01 * 3.0 - 0.001 * 250.0 + 0.0001 * 1200.0
    assert f(o) == pytest.approx(expected, rel=1e-12)
    assert f.of(
        accuracy_delta=0.04, loss_delta=-0.1, latency_ms=3.0, memory_mb=250.0, throughput=1200.0
    ) == pytest.approx(expected, rel=1e-12)


def test_failure_reward():
    f = RewardFunction(failure_reward=-0.25)
    assert f(_outcome(accuracy_delta=0.9, success=False)) == -0.25
    assert RewardFunction()(_outcome(accuracy_delta=0.9, success=False)) == 0.0
    # The failure reward is clipped like any other.
    assert RewardFunction(failure_reward=-5.0, clip_min=-1.0)(_outcome(success=False)) == -1.0


def test_reward_clipping():
    f = RewardFunction(accuracy_weight=10.0, clip_min=-0.5, clip_max=0.75)
    assert f(_outcome(accuracy_delta=1.0)) == 0.75
    assert f(_outcome(accuracy_delta=-1.0)) == -0.5
    assert f(_outcome(accuracy_delta=0.05)) == pytest.approx(0.5)


def test_reward_settings_build_the_function(toml_file):
    f = load_settings(toml_file, environ={}).reward.function()
    assert f == RewardFunction(
        accuracy_weight=2.0, latency_weight=0.01, failure_reward=-0.5, clip_min=-2.0, clip_max=2.0
    )
    assert f(_outcome(accuracy_delta=0.1, latency_ms=4.0)) == pytest.approx(2.0 * 0.1 - 0.01 * 4.0)
    assert f(_outcome(accuracy_delta=5.0)) == 2.0


# -- the seed document's YAML layout (seed_selection) ------------------------------------------------------------
SEED_YAML = """
# config/tamiyo.yaml, as the seed document writes it
seed_selection:
  default_strategy: "ucb"  # Options: ucb, thompson, epsilon_greedy, contextual
  performance_window_size: 100
  performance_decay_factor: 0.95
  min_samples_required: 5

  # Strategy-specific settings
  ucb:
    exploration_constant: 2.0
  epsilon_greedy:
    initial_epsilon: 0.1
    decay_rate: 0.995
  thompson:
    alpha_prior: 1.0
    beta_prior: 1.0
"""


def _yaml(tmp_path, text: str, name: str = "tamiyo.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_documents_yaml_needs_a_time_scale_for_its_per_outcome_decay(tmp_path):
    msg = _error(path=_yaml(tmp_path, SEED_YAML))
    assert "seed_selection.performance_decay_factor: 0.95 per outcome has no event-time equivalent" in msg
    assert "seed_selection.outcome_interval_s" in msg and "decay.half_life_s" in msg


def test_the_documents_yaml_with_an_outcome_interval(tmp_path, caplog):
    path = _yaml(
        tmp_path, SEED_YAML.replace("  min_samples_required", "  outcome_interval_s: 60\n  min_samples_required")
    )
    with caplog.at_level("WARNING", logger="seedworker.core.config"):
        s = load_settings(path, environ={})
    assert "performance_window_size is ignored" in caplog.text
    assert s.default_strategy == "ucb" and s.min_samples == 5
    # 0.95 per outcome, one outcome a minute: the weight halves after ln 0.5 / ln 0.95 = 13.5 outcomes = 811 s.
    assert s.decay.half_life_s == pytest.approx(60 * math.log(0.5) / math.log(0.95))
    assert s.decay.half_life_s == pytest.approx(810.8, abs=0.1)
    ucb, eps, beta = s.policy("ucb"), s.policy("epsilon-greedy"), s.policy("beta-thompson")
    assert ucb.exploration == pytest.approx(2.0 / math.sqrt(2)) and ucb.discounted is True
    assert eps.epsilon == 0.1 and eps.min_epsilon == 0.01 and eps.discounted is True
    # The document's Beta counts do not decay; seedworker's do, as every learning strategy's under a half-life.
    assert (beta.alpha, beta.beta) == (1.0, 1.0) and s.strategy_problem("beta-thompson") is None
    # ε halves at the same selection as the document's 0.1 * 0.995^t.
    assert eps.current_epsilon(round(eps.decay_steps)) == pytest.approx(0.1 * 0.995 ** round(eps.decay_steps), rel=0.01)
    assert eps.current_epsilon(round(eps.decay_steps)) == pytest.approx(0.05, rel=0.01)


def test_ucb_exploration_is_the_documents_bound_at_unit_reward_scale():
    from seedworker.core.arms import ArmTable
    from seedworker.core.policies import Draw, Situation

    arms = ArmTable(dim=1)
    rows = arms.rows(["a", "b"])
    for i, r in [(0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0), (1, 1.0), (1, -1.0)]:  # pooled sd exactly 1
        arms.learn(i, reward=r, success=True, t=0.0)
    s = load_settings(environ={}, overrides={"strategies": {"ucb": {"exploration": 2.0 / math.sqrt(2)}}})
    choice = s.policy("ucb").choose(Situation(arms, rows, np.ones(1), 6, Draw("s", "r")))
    total = 6
    expected = [0.0 + 2.0 * math.sqrt(math.log(total) / n) for n in (2, 4)]  # the document: mean + c sqrt(ln N / n)
    assert choice.scores.tolist() == pytest.approx(expected)


def test_decay_factor_one_is_no_decay_and_the_strategy_names_map(tmp_path):
    for name, ours in SEED_STRATEGIES.items():
        path = _yaml(tmp_path, f"seed_selection:\n  default_strategy: {name}\n  performance_decay_factor: 1.0\n")
        s = load_settings(path, environ={})
        assert s.default_strategy == ours and s.decay.half_life_s is None
        assert "discounted" not in s.strategies.get("ucb", {})
    assert set(SEED_STRATEGIES.values()) <= set(STRATEGIES)
    assert {"ucb", "thompson", "epsilon_greedy", "contextual"} <= set(SEED_STRATEGIES)  # the document's options
    # seedworker's own names are accepted as they are; anything else is refused, naming the key.
    assert (
        load_settings(_yaml(tmp_path, "seed_selection: {default_strategy: softmax}"), environ={}).default_strategy
        == "softmax"
    )
    msg = _error(path=_yaml(tmp_path, "seed_selection: {default_strategy: greedy}"))
    assert "seed_selection.default_strategy: unknown strategy 'greedy'" in msg and "epsilon_greedy" in msg


def test_every_document_key_has_a_row_with_a_note():
    documented = {
        "default_strategy",
        "performance_window_size",
        "performance_decay_factor",
        "min_samples_required",
        "ucb.exploration_constant",
        "epsilon_greedy.initial_epsilon",
        "epsilon_greedy.decay_rate",
        "thompson.alpha_prior",
        "thompson.beta_prior",
    }
    assert documented <= set(SEED_SELECTION)
    assert all(row.note for row in SEED_SELECTION.values())


def test_seed_selection_errors_name_the_documents_key(tmp_path):
    msg = _error(path=_yaml(tmp_path, "seed_selection:\n  bogus: 1\n  ucb: {exploration: 1}\n  thompson: 3\n"))
    assert "seed_selection.bogus: unknown setting" in msg
    assert "seed_selection.ucb.exploration: unknown setting" in msg
    assert "seed_selection.thompson: must be a mapping" in msg
    assert "seed_selection.contextual.feature_dim: no equivalent" in _error(
        path=_yaml(tmp_path, "seed_selection: {contextual: {feature_dim: 10}}")
    )
    # A value the conversion accepts but the setting does not: both keys are named.
    assert "seed_selection.min_samples_required: min_samples: Input should be a valid integer" in _error(
        path=_yaml(tmp_path, "seed_selection: {min_samples_required: five}")
    )
    assert "seed_selection.epsilon_greedy.initial_epsilon: must be at most 1" in _error(
        path=_yaml(tmp_path, "seed_selection: {epsilon_greedy: {initial_epsilon: 1.5}}")
    )
    assert "seed_selection.thompson.alpha_prior: must be above 0" in _error(
        path=_yaml(tmp_path, "seed_selection: {thompson: {alpha_prior: 0}}")
    )
    assert "seed_selection: must be a mapping" in _error(path=_yaml(tmp_path, "seed_selection: [1, 2]"))
    # The section and seedworker's own key for the same setting: refused rather than one silently winning.
    assert "seed_selection.min_samples_required and min_samples both set min_samples" in _error(
        path=_yaml(tmp_path, "min_samples: 2\nseed_selection: {min_samples_required: 5}")
    )
    assert "both set strategies.ucb.exploration" in _error(
        path=_yaml(tmp_path, "strategies: {ucb: {exploration: 1}}\nseed_selection: {ucb: {exploration_constant: 2}}")
    )


def test_seed_selection_precedence_and_seedworker_keys_beside_it(tmp_path):
    path = _yaml(
        tmp_path,
        "seed_selection:\n  min_samples_required: 5\n  ucb: {exploration_constant: 1.0}\n"
        "kafka:\n  group_id: tamiyo\nstrategies:\n  ucb: {discounted: false}\n",
    )
    s = load_settings(path, environ={"SEEDWORKER_MIN_SAMPLES": "7"})
    assert s.min_samples == 7  # the environment over the file, whichever layout the file uses
    assert s.kafka.group_id == "tamiyo" and s.strategies["ucb"] == {
        "discounted": False,
        "exploration": 1 / math.sqrt(2),
    }
    assert load_settings(path, environ={"SEEDWORKER_MIN_SAMPLES": "7"}, overrides={"min_samples": 3}).min_samples == 3
    # The environment's problems still name the variable when the file is YAML.
    assert "SEEDWORKER_MIN_SAMPLES: min_samples" in _error(path=path, environ={"SEEDWORKER_MIN_SAMPLES": "-1"})
    # The section also works in a TOML file.
    toml = tmp_path / "seed.toml"
    toml.write_text(
        '[seed_selection]\ndefault_strategy = "epsilon_greedy"\n[seed_selection.epsilon_greedy]\ndecay_rate = 1.0\n'
    )
    s = load_settings(toml, environ={})
    assert s.default_strategy == "epsilon-greedy" and s.policy("epsilon-greedy").decay_steps is None


def test_yaml_file_of_seedworker_keys_is_the_toml_layout(tmp_path, toml_file):
    path = _yaml(tmp_path, yaml.safe_dump(tomllib.loads(TOML)), name="seedworker.yml")
    assert load_settings(path, environ={}) == load_settings(toml_file, environ={})
    assert load_settings(_yaml(tmp_path, ""), environ={}) == Settings()


def test_malformed_yaml_files(tmp_path):
    bad = _yaml(tmp_path, "seed_selection: [unclosed\n")
    assert str(bad) in _error(path=bad)
    assert "expected a mapping of settings" in _error(path=_yaml(tmp_path, "- a\n- b\n"))
    assert "does not exist" in _error(path=tmp_path / "nope.yaml")


def test_a_section_check_names_only_the_variables_behind_it():
    msg = _error(environ={"SEEDWORKER_REWARD__CLIP_MIN": "0.5"}, overrides={"reward.clip_max": 0.25})
    assert "invalid settings: SEEDWORKER_REWARD__CLIP_MIN: reward: clip_min must be below clip_max" in msg


def test_decay_is_honoured_or_refused_never_ignored():
    half = {"decay.half_life_s": 600.0}
    # ``discounted`` can no longer switch decay on or off by itself.
    msg = _error(overrides={"default_strategy": "thompson", "strategies": {"thompson": {"discounted": True}}})
    assert "strategies.thompson.discounted" in msg and "decay.half_life_s" in msg
    msg = _error(overrides={**half, "default_strategy": "ucb", "strategies": {"ucb": {"discounted": False}}})
    assert "strategies.ucb.discounted = false" in msg and "every strategy" in msg
    # A strategy that forgets by change detection takes no half-life, and needs the detector.
    msg = _error(overrides={**half, "default_strategy": "glr-thompson"})
    assert "glr-thompson" in msg and "decay.half_life_s" in msg
    msg = _error(overrides={"default_strategy": "glr-ucb", "change_detection": False})
    assert "change_detection" in msg
    # Run-time switches follow the same rule.
    s = load_settings(environ={}, overrides={**half, "default_strategy": "thompson"})
    assert s.strategy_problem("glr-thompson") is not None
    assert s.strategy_problem("lin-thompson") is None and s.strategy_problem("beta-thompson") is None
    assert load_settings(environ={}, overrides={"default_strategy": "glr-ucb"}).detects_changes
    assert not load_settings(environ={}, overrides={"default_strategy": "thompson"}).detects_changes
