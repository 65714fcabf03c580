"""Settings: a TOML file in the seed's layout, then ``SEEDWORKER_*`` environment overrides, validated.

The environment layer is pydantic-settings' (``_Environment``). Nested keys use a double underscore
(``SEEDWORKER_DECAY__HALF_LIFE_S=600``); a few common ones have short names (``SEEDWORKER_BOOTSTRAP_SERVERS``,
``SEEDWORKER_DB``, ``SEEDWORKER_GROUP_ID``). Values of string settings are taken verbatim, lists, dicts and sections
as JSON, other values are validated from their text, and a strategy option (untyped) is read as JSON when it parses
as JSON; the value ``null`` unsets an optional setting and empty values are ignored. Errors name the bad key, and the
variable that set it (``SEEDWORKER_DECAY__HALF_LIFE_S: decay.half_life_s: Input should be a valid number ...``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from seedworker.contract import topics
from seedworker.core.features import DEFAULT_FEATURES
from seedworker.core.policies import STRATEGIES, make_policy
from seedworker.core.reward import RewardFunction

_log = logging.getLogger(__name__)
ENV_PREFIX = "SEEDWORKER_"
# Short environment names for the settings people change most.
ENV_ALIASES = {
    "bootstrap_servers": ("kafka", "bootstrap_servers"),
    "group_id": ("kafka", "group_id"),
    "half_life_s": ("decay", "half_life_s"),
}


class ConfigError(ValueError):
    pass


class _Section(BaseModel):
    # hide_input_in_errors: a validation error would otherwise echo the whole input, secrets included.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)


class DecaySettings(_Section):
    half_life_s: float | None = Field(default=None, gt=0, description="event-time half-life of outcome weights")


class RewardSettings(_Section):
    accuracy_weight: float = 1.0
    loss_weight: float = 0.0
    latency_weight: float = 0.0
    memory_weight: float = 0.0
    throughput_weight: float = 0.0
    failure_reward: float = 0.0
    clip_min: float = -1.0
    clip_max: float = 1.0

    @model_validator(mode="after")
    def _clip_order(self) -> RewardSettings:
        if self.clip_min >= self.clip_max:
            raise ValueError("clip_min must be below clip_max")
        return self

    def function(self) -> RewardFunction:
        return RewardFunction(**self.model_dump())


class Topics(_Section):
    requests: str = topics.REQUESTS
    outcomes: str = topics.OUTCOMES
    selections: str = topics.SELECTIONS
    dead_letters: str = topics.DEAD_LETTERS
    control: str = topics.CONTROL
    # Default: "<group_id>-changelog" (the Kafka Streams convention): the state of one consumer group's workers.
    changelog: str = ""


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(_Section):
    bootstrap_servers: str = topics.BOOTSTRAP_SERVERS
    group_id: str = topics.GROUP_ID
    client_id: str = topics.CLIENT_ID
    topics: Topics = Topics()
    partitions: int = Field(default=3, ge=1)
    output_partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    max_batch: int = Field(default=500, ge=1)
    # The producer's limit on one request (aiokafka's default, 1 MiB); an answer that cannot fit is dead-lettered
    # with its request instead of failing to publish on every start.
    max_request_size: int = Field(default=1_048_576, ge=1024)
    poll_timeout_ms: int = Field(default=200, ge=1)
    fetch_max_wait_ms: int = Field(default=20, ge=0)
    group_commit_interval_s: float = Field(default=1.0, ge=0, description="Kafka group commit period (lag only)")
    connect_timeout_s: float = Field(default=60.0, gt=0)
    # How fast the group notices a dead worker (session) and a joining one (heartbeats), i.e. how long partitions
    # wait for a new owner; the broker bounds the session by group.min/max.session.timeout.ms.
    session_timeout_ms: int = Field(default=10_000, ge=1)
    heartbeat_interval_ms: int = Field(default=3_000, ge=1)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(default=None, description="prints as '**********'")
    ssl_cafile: str | None = Field(default=None, description="CA bundle (PEM) for the broker; default: the system's")
    ssl_certfile: str | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    ssl_keyfile: str | None = Field(default=None, description="its private key (PEM), if not in ssl_certfile")
    ssl_keyfile_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _changelog_of_the_group(self) -> KafkaSettings:
        if not self.topics.changelog:
            # object.__setattr__: an assignment would validate this model again from inside its own validator.
            named = self.topics.model_copy(update={"changelog": f"{self.group_id}{topics.CHANGELOG_SUFFIX}"})
            object.__setattr__(self, "topics", named)
        return self

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSettings:
        protocol = self.security_protocol
        sasl = ("sasl_mechanism", "sasl_username", "sasl_password")
        if protocol.startswith("SASL_"):
            missing = [key for key in sasl if not getattr(self, key)]
            if missing:
                raise ValueError(f"security_protocol {protocol} needs {', '.join(missing)}")
        elif given := [key for key in sasl if getattr(self, key)]:
            raise ValueError(
                f"{', '.join(given)}: only used with security_protocol SASL_PLAINTEXT or SASL_SSL, not {protocol}"
            )
        tls = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_keyfile_password")
        if not protocol.endswith("SSL") and (given := [key for key in tls if getattr(self, key)]):
            raise ValueError(f"{', '.join(given)}: only used with security_protocol SSL or SASL_SSL, not {protocol}")
        if (self.ssl_keyfile or self.ssl_keyfile_password) and not self.ssl_certfile:
            raise ValueError("ssl_keyfile, ssl_keyfile_password: only used with ssl_certfile (the client certificate)")
        return self


class JoinSettings(_Section):
    hold_unknown_s: float = Field(default=300.0, ge=0, description="how long an outcome waits for its decision")
    reward_wait_s: float = Field(default=3600.0, gt=0, description="how long a decision waits for its outcome")
    default_reward: float | None = Field(default=None, description="reward for a decision whose outcome never came")
    learn_late: bool = Field(default=False, description="learn from outcomes that arrive after reward_wait_s")
    # A message dated after its Kafka record's timestamp (or the wall clock, if that is earlier) by more than this
    # is dead-lettered: one such message would otherwise move its partition's event-time clock into the future and
    # expire everything pending there. Clocks of the hosts of one deployment agree to well under a minute with NTP;
    # five minutes leaves room for a host whose time daemon is slow to catch up.
    max_clock_skew_s: float = Field(default=300.0, ge=0, description="how far an event's time may run ahead")


class MetricsSettings(_Section):
    """The HTTP endpoint for /metrics, /healthz and /readyz. Off by default: binding a port is a side effect a
    library user or a test run should not get unasked; deployments set the port (deploy/)."""

    host: str = Field(default="127.0.0.1", min_length=1, description="address the endpoint listens on")
    port: int = Field(default=0, ge=0, le=65535, description="0 disables the endpoint")


class ShadowSettings(_Section):
    """Strategies decided on every request beside the live one, on the same state, and recorded in the decision
    (seedworker.core.shadow); nothing they choose is acted on."""

    strategies: list[str] = Field(default_factory=list, description="strategy names decided in the shadow")


class ApprenticeSettings(_Section):
    """Apprentice mode (seedworker.core.shadow.Apprentice): a blueprint whose strategy is ``learner`` follows
    ``baseline`` with probability 1 - epsilon and picks uniformly with epsilon, until the learner's estimated value
    on those decisions beats the baseline's by ``margin`` (the lower bound at ``confidence``), with at least
    ``min_decisions`` rewarded decisions; then the learner decides."""

    learner: str = Field(min_length=1, description="the strategy that learns and takes over")
    baseline: str = Field(default="seed0", min_length=1, description="the strategy followed until then")
    epsilon: float = Field(default=0.1, gt=0, le=1, description="share of uniform exploration while following")
    margin: float = Field(default=0.0, description="how much better (reward per decision) the learner must be")
    min_decisions: int = Field(default=200, ge=1, description="rewarded decisions before it may take over")
    confidence: float = Field(default=0.95, ge=0.5, lt=1, description="one-sided level of the lower bound")

    @model_validator(mode="after")
    def _two_strategies(self) -> ApprenticeSettings:
        if self.learner == self.baseline:
            raise ValueError(f"learner and baseline are both {self.learner!r}: an apprentice needs two strategies")
        return self


# A default reward that a late outcome replaces is taken out of the statistics again (seedworker.core.join), but a
# change detector's segment is a sequence that may have restarted since: it cannot be taken out exactly.
_DEFAULT_WITH_DETECTION = (
    "a default reward replaced by a late outcome cannot be taken out of a change detector's "
    "history; choose a strategy without change detection (e.g. 'ucb', 'thompson'), or unset "
    "join.default_reward"
)


class Settings(BaseSettings):
    """Every setting. A ``BaseSettings`` so that pydantic-settings reads the ``SEEDWORKER_*`` layer with this
    schema, but constructing one reads nothing: ``load_settings`` hands the environment in (see ``_Environment``)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        validate_assignment=True,
        hide_input_in_errors=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        env_ignore_empty=True,
        env_parse_none_str="null",
    )

    default_strategy: str = "glr-ucb"
    strategies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    blueprint_strategies: dict[str, str] = Field(default_factory=dict)
    logging_only: bool = False
    salt: str = "seedworker"
    min_samples: int = Field(default=1, ge=0, description="selections a seed gets before it competes on its score")
    selectable_states: list[str] = Field(default_factory=lambda: ["dormant"])
    warm_start: bool = True
    prior_count: float = Field(default=1.0, ge=0)
    features: list[str] = Field(default_factory=lambda: list(DEFAULT_FEATURES))
    # The ridge prior's precision of the bias and of each feature's coefficient (unset: ridge; see core.arms). They
    # act on a new blueprint's model; a stored one keeps the precisions it has.
    ridge: float = Field(default=1.0, gt=0)
    feature_ridge: float | None = Field(default=None, gt=0)
    decay: DecaySettings = DecaySettings()
    # Run the change detector on every seed's reward stream (see ArmTable._observe). Unset: on when a configured
    # strategy reads it (default_strategy, a blueprint's or a configured one), so a configuration that never uses it
    # keeps statistics that do not depend on the order outcomes arrive in.
    change_detection: bool | None = None
    reward: RewardSettings = RewardSettings()
    shadow: ShadowSettings = ShadowSettings()
    apprentice: ApprenticeSettings | None = None
    kafka: KafkaSettings = KafkaSettings()
    join: JoinSettings = JoinSettings()
    metrics: MetricsSettings = MetricsSettings()
    log_format: Literal["plain", "json"] = "plain"
    db: str = "var/seedworker.sqlite"
    dedup_window: int = Field(default=100_000, ge=1)
    # How long (event time, per input partition) a resolved decision is kept, in SQLite and in the changelog: a
    # retried request is recognised and answered again byte for byte, and a late or duplicate outcome is matched to
    # its decision, within this window; older decisions are deleted in the batch transaction, so the store holds a
    # day of decisions however long it runs. A day covers Tamiyo's retries (seconds) and join.reward_wait_s (an hour)
    # with room to spare; `seedworker export` keeps history elsewhere.
    decision_retention_s: float = Field(default=86_400.0, gt=0, description="how long resolved decisions are kept")

    @model_validator(mode="after")
    def _strategies_exist(self) -> Settings:
        keyed = [
            ("default_strategy", self.default_strategy),
            *((f"blueprint_strategies.{bp}", n) for bp, n in self.blueprint_strategies.items()),
            *((f"strategies.{n}", n) for n in self.strategies),
            *((f"shadow.strategies.{j}", n) for j, n in enumerate(self.shadow.strategies)),
            *(
                (f"apprentice.{role}", getattr(self.apprentice, role))
                for role in ("learner", "baseline")
                if self.apprentice is not None
            ),
        ]
        for key, name in keyed:
            problem = self.strategy_problem(name)
            if problem:
                raise ValueError(f"{key}: {problem}")
        for name, options in self.strategies.items():
            make_policy(name, options)
        if self.join.default_reward is not None and self.detects_changes:
            raise ValueError(f"join.default_reward: {_DEFAULT_WITH_DETECTION}")
        if self.decision_retention_s < self.join.reward_wait_s:
            raise ValueError(
                f"decision_retention_s ({self.decision_retention_s:g}) must be at least join.reward_wait_s "
                f"({self.join.reward_wait_s:g}): a decision is kept at least until its outcome can no longer come"
            )
        return self

    def strategy_problem(self, name: str) -> str | None:
        """Why ``name`` cannot be used with these settings, or None. One rule for the configuration and for a
        ``strategy.switch`` at run time, so a switch cannot install what the configuration refuses."""
        if name not in STRATEGIES:
            return f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}"
        cls = STRATEGIES[name]
        half_life = self.decay.half_life_s
        if name == "discounted-ucb" and half_life is None:
            return "strategy 'discounted-ucb' needs decay.half_life_s"
        if cls.detects and not self.detects_changes:
            return (
                f"strategy {name!r} needs change_detection (the statistics it reads are kept only with it on): "
                f"set change_detection = true, or name the strategy in the configuration"
            )
        if cls.detects and self.join.default_reward is not None:
            return f"strategy {name!r} detects changes, and join.default_reward is set: {_DEFAULT_WITH_DETECTION}"
        if cls.detects and half_life is not None:
            return (
                f"strategy {name!r} forgets by change detection, so decay.half_life_s would be ignored by it: "
                f"unset decay.half_life_s, or choose a strategy that decays (e.g. 'thompson', 'ucb')"
            )
        discounted = self.strategies.get(name, {}).get("discounted")
        if discounted is True and half_life is None:
            return (
                f"strategies.{name}.discounted = true needs decay.half_life_s (it reads the decayed statistics, "
                f"which only a half-life defines)"
            )
        if discounted is False and half_life is not None:
            return (
                f"strategies.{name}.discounted = false: decay.half_life_s applies to every strategy that learns "
                f"and cannot be turned off per strategy; remove the setting or the half-life"
            )
        return None

    @property
    def detects_changes(self) -> bool:
        if self.change_detection is not None:
            return self.change_detection
        names = {self.default_strategy, *self.blueprint_strategies.values(), *self.strategies, *self.shadow_names}
        return any(STRATEGIES[n].detects for n in names if n in STRATEGIES)

    @property
    def shadow_names(self) -> tuple[str, ...]:
        """Every strategy decided in the shadow: the configured ones and the apprentice's learner and baseline."""
        roles = () if self.apprentice is None else (self.apprentice.learner, self.apprentice.baseline)
        return tuple(dict.fromkeys([*self.shadow.strategies, *roles]))

    def policy(self, name: str):
        return make_policy(name, self.strategies.get(name))

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # Settings(...) holds what it is given and nothing else: no implicit os.environ, .env or secrets directory.
        return (init_settings,)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source (prefix, ``__`` nesting, JSON for lists, dicts and sections, empty
    values ignored, ``null`` unsets) reading the mapping it is given instead of ``os.environ``: tests and library
    users pass their own, and nothing is read from the process by accident."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(Settings)  # prefix, delimiter, case and empty-value handling from Settings.model_config

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)

    def explode_env_vars(self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]) -> dict:
        # pydantic-settings keeps a leaf it has no type for as text; a strategy option is declared ``Any``, so
        # SEEDWORKER_STRATEGIES__UCB__EXPLORATION=2 would reach the policy as "2". Such leaves are read as JSON when
        # they parse as JSON, as the hand-written layer did.
        return _decode_untyped(field.annotation, super().explode_env_vars(field_name, field, env_vars))


def _decode_untyped(annotation: Any, value: Any) -> Any:
    if annotation is Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value
    if isinstance(value, dict):
        if get_origin(annotation) is dict:
            inner = get_args(annotation)[-1] if get_args(annotation) else Any
            return {k: _decode_untyped(inner, v) for k, v in value.items()}
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = annotation.model_fields
            return {k: _decode_untyped(fields[k].annotation, v) if k in fields else v for k, v in value.items()}
    return value


def _environment_tree(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """(the SEEDWORKER_* variables as a settings tree, the variable that set each key path)."""
    origins: dict[tuple[str, ...], str] = {}
    renamed: dict[str, str] = {}
    unknown: dict[tuple[str, ...], str] = {}
    prefix = ENV_PREFIX.lower()
    for key, value in environ.items():
        if not key.lower().startswith(prefix) or not value:
            continue
        name = key[len(prefix) :].lower()
        path = ENV_ALIASES.get(name) or tuple(name.split("__"))
        if path in origins:
            raise ConfigError(f"invalid settings: {key} and {origins[path]} both set {'.'.join(path)}")
        origins[path] = key
        if path[0] not in Settings.model_fields:
            unknown[path] = value  # pydantic-settings skips what matches no field: validation names it instead
        else:
            # A short name becomes the nested one, so pydantic-settings reads all of them the same way.
            renamed[ENV_PREFIX + "__".join(path).upper()] = value
    try:
        tree = _Environment(renamed)()
    except SettingsError:
        # Its message names the field, not the variable: find the variable(s) whose JSON is malformed.
        bad = []
        for var, value in renamed.items():
            try:
                _Environment({var: value})()
            except SettingsError as exc:
                path = tuple(var[len(ENV_PREFIX) :].lower().split("__"))
                bad.append(f"{origins[path]}: {'.'.join(path)}: not valid JSON ({exc.__cause__})")
        raise ConfigError("invalid settings: " + "; ".join(bad or ["malformed SEEDWORKER_* JSON value"])) from None
    for path, value in unknown.items():
        _set(tree, path, value)
    return tree, origins


def _merge(into: dict, tree: dict) -> None:
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        node = tree.get(key)
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[path[-1]] = value


def _named(loc: tuple[str, ...], msg: str, origins: Mapping[tuple[str, ...], str]) -> str:
    """The variable(s) or document key(s) behind a problem at ``loc`` ("" for the file's own keys and explicit
    overrides): the one that set it or a section above it, else those that set keys inside it (a section-wide check
    such as clip_min < clip_max), else the key a model-wide message names."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    if loc:
        return ", ".join(sorted(v for p, v in origins.items() if v and p[: len(loc)] == loc))
    return _named(tuple(msg.split(": ", 1)[0].split(".")), "", origins) if ": " in msg else ""


# -- the seed document's YAML layout -------------------------------------------------------------------------------
# The seed document (Phase B3) configures Tamiyo's selector with a ``seed_selection:`` section. Its strategy names,
# as seedworker strategies:
SEED_STRATEGIES: dict[str, str] = {
    "ucb": "ucb",
    "thompson": "beta-thompson",  # the document's Thompson is Beta-Bernoulli on success counts
    "epsilon_greedy": "epsilon-greedy",
    "contextual": "linucb",  # a linear reward model per seed; lin-thompson is the sampling variant
    "performance_weighted": "softmax",  # P(seed) rising with its mean reward
}
_LN_HALF = math.log(0.5)


def _number(value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"must be a number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"must be {'above' if low_open else 'at least'} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high:g}, got {value!r}")
    return float(value)


def _seed_strategy(value: Any, section: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, str):
        raise ValueError(f"must be a strategy name, got {value!r}")
    name = SEED_STRATEGIES.get(value, value)  # seedworker's own names are accepted as they are
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {value!r}; the document's: {', '.join(SEED_STRATEGIES)}; seedworker's: "
            f"{', '.join(sorted(STRATEGIES))}"
        )
    return {"default_strategy": name}


def _decay_factor(value: Any, section: Mapping[str, Any]) -> dict[str, Any]:
    factor = _number(value, low=0.0, high=1.0, low_open=True)
    if factor == 1.0:
        return {"decay.half_life_s": None}
    interval = section.get("outcome_interval_s")
    if interval is None:
        raise ValueError(
            f"{factor:g} per outcome has no event-time equivalent by itself: seedworker decays by "
            "event time. Give seed_selection.outcome_interval_s (the usual seconds between two outcomes "
            "of one seed: half_life_s = outcome_interval_s * ln 0.5 / ln factor), or decay.half_life_s "
            "instead of this key, or 1.0 for no decay"
        )
    interval = _number(interval, low=0.0, low_open=True)
    # The document decays UCB's and ε-greedy's estimates (their mean accuracy gain), not its Thompson counts; with a
    # half-life seedworker decays every strategy that learns, its Beta counts included.
    return {
        "decay.half_life_s": interval * _LN_HALF / math.log(factor),
        "strategies.ucb.discounted": True,
        "strategies.epsilon-greedy.discounted": True,
    }


def _epsilon_decay(value: Any, section: Mapping[str, Any]) -> dict[str, Any]:
    rate = _number(value, low=0.0, high=1.0, low_open=True)
    # ε·rate^t halves after ln 0.5 / ln rate selections; seedworker's ε / (1 + t / decay_steps) halves at
    # t = decay_steps.
    return {"strategies.epsilon-greedy.decay_steps": None if rate == 1.0 else _LN_HALF / math.log(rate)}


def _epsilon(value: Any, section: Mapping[str, Any]) -> dict[str, Any]:
    eps = _number(value, low=0.0, high=1.0)
    # The document's floor is 0.01 (min_epsilon); an initial ε below it is kept constant, as the document's max() does.
    return {"strategies.epsilon-greedy.epsilon": eps, "strategies.epsilon-greedy.min_epsilon": min(0.01, eps)}


def _to(target: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any, Mapping[str, Any]], dict]:
    return lambda value, section: {target: convert(value)}


def _refuse(why: str) -> Callable[[Any, Mapping[str, Any]], dict]:
    def refuse(value: Any, section: Mapping[str, Any]) -> dict:
        raise ValueError(why)

    return refuse


def _ignore(value: Any, section: Mapping[str, Any]) -> dict:
    return {}


@dataclass(frozen=True)
class SeedKey:
    """One key of the document's ``seed_selection`` section: the seedworker settings it sets and how."""

    targets: tuple[str, ...]
    convert: Callable[[Any, Mapping[str, Any]], dict[str, Any]]
    note: str


# THE table: every key of ``seed_selection`` that is accepted, what it becomes, and where it is not exact.
SEED_SELECTION: dict[str, SeedKey] = {
    "default_strategy": SeedKey(
        ("default_strategy",),
        _seed_strategy,
        "exact; names by SEED_STRATEGIES (seedworker's own names are accepted too)",
    ),
    "performance_window_size": SeedKey(
        (),
        _ignore,
        "no equivalent: accepted, logged as ignored. seedworker keeps sufficient "
        "statistics of every outcome, not a window of the last N; recency comes from "
        "performance_decay_factor (decay.half_life_s)",
    ),
    "performance_decay_factor": SeedKey(
        ("decay.half_life_s", "strategies.ucb.discounted", "strategies.epsilon-greedy.discounted"),
        _decay_factor,
        "not exact: the document decays per outcome of a seed, seedworker by event time. 1.0: no decay. Below 1 "
        "needs outcome_interval_s: half_life_s = outcome_interval_s * ln 0.5 / ln factor, and ucb and epsilon-greedy "
        "then score decayed means (as the document's do); without outcome_interval_s it is refused",
    ),
    "outcome_interval_s": SeedKey(
        (),
        _ignore,
        "seedworker's addition: seconds between two outcomes of one seed, only used to "
        "convert performance_decay_factor",
    ),
    "min_samples_required": SeedKey(
        ("min_samples",),
        _to("min_samples"),
        "near: the document's mean counts as 0 until a seed has this many outcomes (and "
        "its UCB forces 3 tries); seedworker tries each viable seed this many times "
        "before it competes on its score",
    ),
    "ucb.exploration_constant": SeedKey(
        ("strategies.ucb.exploration",),
        _to("strategies.ucb.exploration", lambda c: _number(c, low=0.0) / math.sqrt(2)),
        "converted: the document's bonus is c*sqrt(ln N / n) in reward units, seedworker's "
        "exploration*sd*sqrt(2 ln N / n) with sd the pooled reward standard deviation; exploration = c / sqrt(2) is "
        "the same bound when sd is 1 (for accuracy gains sd is far below 1: the document's bound explores more)",
    ),
    "epsilon_greedy.initial_epsilon": SeedKey(
        ("strategies.epsilon-greedy.epsilon", "strategies.epsilon-greedy.min_epsilon"),
        _epsilon,
        "exact; the document's floor 0.01 becomes min_epsilon",
    ),
    "epsilon_greedy.decay_rate": SeedKey(
        ("strategies.epsilon-greedy.decay_steps",),
        _epsilon_decay,
        "converted: the document multiplies ε by the rate at each selection (of any blueprint), seedworker divides "
        "it by 1 + t / decay_steps (t: the blueprint's decisions); decay_steps = ln 0.5 / ln rate halves ε at the "
        "same selection (after it the document's ε falls faster); 1.0: constant ε",
    ),
    "thompson.alpha_prior": SeedKey(
        ("strategies.beta-thompson.alpha",),
        _to("strategies.beta-thompson.alpha", lambda v: _number(v, low=0.0, low_open=True)),
        "exact",
    ),
    "thompson.beta_prior": SeedKey(
        ("strategies.beta-thompson.beta",),
        _to("strategies.beta-thompson.beta", lambda v: _number(v, low=0.0, low_open=True)),
        "exact",
    ),
    "contextual.feature_dim": SeedKey(
        (),
        _refuse(
            "no equivalent: seedworker's contextual features are named, not "
            "counted; list them in the top-level `features` setting"
        ),
        "refused: seedworker's contextual features are named (`features`), not counted",
    ),
}


def translate_seed_selection(section: Any) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The document's ``seed_selection`` section as a seedworker settings tree, and the document key behind each
    seedworker key (for errors). Unknown keys and unconvertible values raise ``ConfigError`` naming the key."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"invalid settings: seed_selection: must be a mapping, got {type(section).__name__}")
    groups = {k.split(".")[0] for k in SEED_SELECTION if "." in k}  # ucb, epsilon_greedy, thompson, contextual
    flat: dict[str, Any] = {}
    problems = []
    for key, value in section.items():
        key = str(key)
        if key in groups:
            if value is None:  # `ucb:` with nothing under it
                continue
            if not isinstance(value, Mapping):
                problems.append(f"seed_selection.{key}: must be a mapping, got {type(value).__name__}")
                continue
            flat.update((f"{key}.{k}", v) for k, v in value.items())
        else:
            flat[key] = value
    tree: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for key, value in flat.items():
        spec = SEED_SELECTION.get(key)
        if spec is None:
            problems.append(f"seed_selection.{key}: unknown setting")
            continue
        try:
            converted = spec.convert(value, section)
        except ValueError as exc:
            problems.append(f"seed_selection.{key}: {exc}")
            continue
        if key == "performance_window_size":
            _log.warning(
                "seed_selection.performance_window_size is ignored: seedworker keeps sufficient statistics of "
                "every outcome, not a window of the last N (recency: performance_decay_factor)"
            )
        for target, v in converted.items():
            path = tuple(target.split("."))
            _set(tree, path, v)
            origins[path] = f"seed_selection.{key}"
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))
    return tree, origins


def _given(tree: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    """The dotted key at or above ``path`` that ``tree`` already sets, if any."""
    node: Any = tree
    for n, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
        if not isinstance(node, Mapping) or n == len(path) - 1:
            return ".".join(path[: n + 1])
    return None


def _read_file(p: Path) -> dict[str, Any]:
    """A TOML file, or a YAML one (``.yaml`` / ``.yml``) as the seed document writes ``config/tamiyo.yaml``."""
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p}: {exc}") from None
        if tree is None:
            return {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p}: expected a mapping of settings, got {type(tree).__name__}")
        return tree
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p}: {exc}") from None


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """File, then environment, then explicit overrides (dotted keys, e.g. from command-line flags).

    The file is TOML, or YAML when it ends in ``.yaml`` / ``.yml``; either may hold the seed document's
    ``seed_selection`` section (see ``SEED_SELECTION``) beside seedworker's own keys, as long as the two do not set
    the same setting."""
    tree: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    if path is not None:
        tree = _read_file(Path(path))
        if "seed_selection" in tree:
            seed_tree, origins = translate_seed_selection(tree.pop("seed_selection"))
            clashes = [
                f"{origins[p]} and {given} both set {'.'.join(p)}"
                for p in origins
                if (given := _given(tree, p)) is not None
            ]
            if clashes:
                raise ConfigError("invalid settings: " + "; ".join(clashes))
            _merge(tree, seed_tree)
    env_tree, env_origins = _environment_tree(os.environ if environ is None else environ)
    _merge(tree, env_tree)
    origins.update(env_origins)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            keys = tuple(dotted.split("."))
            _set(tree, keys, value)
            # An explicit override replaces what the file or the environment said there: its problems are its own.
            origins = {p: v for p, v in origins.items() if p[: len(keys)] != keys}
            origins[keys] = ""
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = tuple(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown setting"
            text = f"{'.'.join(loc)}: {msg}" if loc else msg
            origin = _named(loc, msg, origins)
            problems.append(f"{origin}: {text}" if origin else text)
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
