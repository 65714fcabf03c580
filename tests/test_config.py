"""Settings: TOML file, SEEDWORKER_* environment overrides, explicit overrides, validation errors; reward math."""

from __future__ import annotations

import pytest

from seedworker.core.config import ConfigError, RewardSettings, Settings, load_settings
from seedworker.contract.events import AdaptationOutcome
from seedworker.core.features import DEFAULT_FEATURES
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
    assert load_settings(environ={"SEEDWORKER_HALF_LIFE_S": "90", "SEEDWORKER_DEFAULT_STRATEGY": "thompson"}
                         ).decay.half_life_s == 90.0


def test_environment_is_only_read_from_the_environ_argument(monkeypatch):
    monkeypatch.setenv("SEEDWORKER_DECAY__HALF_LIFE_S", "123")
    monkeypatch.setenv("SEEDWORKER_DEFAULT_STRATEGY", "ucb")
    assert load_settings(environ={}).decay.half_life_s is None
    assert load_settings().decay.half_life_s == 123.0  # environ=None reads the process environment


def test_numeric_looking_values_of_string_settings_stay_strings():
    s = load_settings(environ={"SEEDWORKER_GROUP_ID": "42", "SEEDWORKER_SALT": "1.50",
                               "SEEDWORKER_KAFKA__SASL_PASSWORD": "000123", "SEEDWORKER_DB": "true",
                               "SEEDWORKER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                               "SEEDWORKER_KAFKA__SASL_MECHANISM": "PLAIN", "SEEDWORKER_KAFKA__SASL_USERNAME": "7"})
    assert s.kafka.group_id == "42"
    assert s.salt == "1.50"
    assert s.kafka.sasl_password.get_secret_value() == "000123"
    assert s.db == "true"


def test_explicit_overrides_win(toml_file):
    s = load_settings(toml_file, environ={"SEEDWORKER_DECAY__HALF_LIFE_S": "600"},
                      overrides={"decay.half_life_s": 60.0, "default_strategy": "softmax", "salt": None})
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
    assert "blueprint_strategies.bp7: unknown strategy 'nope'" in _error(overrides={
        "blueprint_strategies": {"bp7": "nope"}})
    assert "strategies.nope: unknown strategy 'nope'" in _error(overrides={"strategies": {"nope": {"x": 1}}})
    assert "strategies.ucb" in _error(overrides={"strategies": {"ucb": {"explore": 1.0}}})
    assert "epsilon-greedy" in _error(overrides={"strategies": {"epsilon-greedy": {"epsilon": 2.0}}})


def test_discounted_ucb_needs_a_half_life():
    assert "decay.half_life_s" in _error(overrides={"default_strategy": "discounted-ucb"})
    assert "decay.half_life_s" in _error(overrides={"blueprint_strategies": {"bp": "discounted-ucb"}})
    s = load_settings(environ={"SEEDWORKER_DECAY__HALF_LIFE_S": "600",
                               "SEEDWORKER_DEFAULT_STRATEGY": "discounted-ucb"})
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
    f = RewardFunction(accuracy_weight=2.0, loss_weight=0.5, latency_weight=0.01, memory_weight=0.001,
                       throughput_weight=0.0001, clip_min=-100.0, clip_max=100.0)
    o = _outcome(accuracy_delta=0.04, loss_delta=-0.1, latency_ms=3.0, memory_mb=250.0, throughput=1200.0)
    expected = 2.0 * 0.04 - 0.5 * (-0.1) - 0.01 * 3.0 - 0.001 * 250.0 + 0.0001 * 1200.0
    assert f(o) == pytest.approx(expected, rel=1e-12)
    assert f.of(accuracy_delta=0.04, loss_delta=-0.1, latency_ms=3.0, memory_mb=250.0,
                throughput=1200.0) == pytest.approx(expected, rel=1e-12)


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
    assert f == RewardFunction(accuracy_weight=2.0, latency_weight=0.01, failure_reward=-0.5, clip_min=-2.0,
                               clip_max=2.0)
    assert f(_outcome(accuracy_delta=0.1, latency_ms=4.0)) == pytest.approx(2.0 * 0.1 - 0.01 * 4.0)
    assert f(_outcome(accuracy_delta=5.0)) == 2.0


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
