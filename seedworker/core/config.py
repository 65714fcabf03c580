"""Settings: a TOML file in the seed's layout, then ``SEEDWORKER_*`` environment overrides, validated.

Nested keys use a double underscore in the environment (``SEEDWORKER_DECAY__HALF_LIFE_S=600``); a few common ones
have short names (``SEEDWORKER_BOOTSTRAP_SERVERS``, ``SEEDWORKER_DB``, ``SEEDWORKER_GROUP_ID``). Values of string
settings are taken verbatim; others are read as JSON when they parse as JSON (numbers, booleans, lists), else as
strings. Errors name the bad key.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Mapping, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from seedworker.core.features import DEFAULT_FEATURES
from seedworker.core.policies import STRATEGIES, make_policy
from seedworker.core.reward import RewardFunction

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
    def _clip_order(self) -> "RewardSettings":
        if self.clip_min >= self.clip_max:
            raise ValueError("clip_min must be below clip_max")
        return self

    def function(self) -> RewardFunction:
        return RewardFunction(**self.model_dump())


class Topics(_Section):
    requests: str = "graft.requested"
    outcomes: str = "adaptation.outcome"
    selections: str = "seed.selected"
    dead_letters: str = "seedworker.dlq"
    control: str = "seedworker.control"


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "seedworker"
    client_id: str = "seedworker"
    topics: Topics = Topics()
    partitions: int = Field(default=3, ge=1)
    output_partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    max_batch: int = Field(default=500, ge=1)
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
    def _security_consistent(self) -> "KafkaSettings":
        protocol = self.security_protocol
        sasl = ("sasl_mechanism", "sasl_username", "sasl_password")
        if protocol.startswith("SASL_"):
            missing = [key for key in sasl if not getattr(self, key)]
            if missing:
                raise ValueError(f"security_protocol {protocol} needs {', '.join(missing)}")
        elif given := [key for key in sasl if getattr(self, key)]:
            raise ValueError(f"{', '.join(given)}: only used with security_protocol SASL_PLAINTEXT or SASL_SSL, "
                             f"not {protocol}")
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


class MetricsSettings(_Section):
    """The HTTP endpoint for /metrics, /healthz and /readyz. Off by default: binding a port is a side effect a
    library user or a test run should not get unasked; deployments set the port (deploy/)."""

    host: str = Field(default="127.0.0.1", min_length=1, description="address the endpoint listens on")
    port: int = Field(default=0, ge=0, le=65535, description="0 disables the endpoint")


class Settings(_Section):
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
    ridge: float = Field(default=1.0, gt=0)
    decay: DecaySettings = DecaySettings()
    # Run the change detector on every seed's reward stream (see ArmTable._observe). Unset: on when a configured
    # strategy reads it (default_strategy, a blueprint's or a configured one), so a configuration that never uses it
    # keeps statistics that do not depend on the order outcomes arrive in.
    change_detection: bool | None = None
    reward: RewardSettings = RewardSettings()
    kafka: KafkaSettings = KafkaSettings()
    join: JoinSettings = JoinSettings()
    metrics: MetricsSettings = MetricsSettings()
    log_format: Literal["plain", "json"] = "plain"
    db: str = "var/seedworker.sqlite"
    dedup_window: int = Field(default=100_000, ge=1)

    @model_validator(mode="after")
    def _strategies_exist(self) -> "Settings":
        keyed = [("default_strategy", self.default_strategy),
                 *((f"blueprint_strategies.{bp}", n) for bp, n in self.blueprint_strategies.items()),
                 *((f"strategies.{n}", n) for n in self.strategies)]
        for key, name in keyed:
            problem = self.strategy_problem(name)
            if problem:
                raise ValueError(f"{key}: {problem}")
        for name, options in self.strategies.items():
            make_policy(name, options)
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
            return (f"strategy {name!r} needs change_detection (the statistics it reads are kept only with it on): "
                    f"set change_detection = true, or name the strategy in the configuration")
        if cls.detects and half_life is not None:
            return (f"strategy {name!r} forgets by change detection, so decay.half_life_s would be ignored by it: "
                    f"unset decay.half_life_s, or choose a strategy that decays (e.g. 'thompson', 'ucb')")
        discounted = self.strategies.get(name, {}).get("discounted")
        if discounted is True and half_life is None:
            return (f"strategies.{name}.discounted = true needs decay.half_life_s (it reads the decayed statistics, "
                    f"which only a half-life defines)")
        if discounted is False and half_life is not None:
            return (f"strategies.{name}.discounted = false: decay.half_life_s applies to every strategy that learns "
                    f"and cannot be turned off per strategy; remove the setting or the half-life")
        return None

    @property
    def detects_changes(self) -> bool:
        if self.change_detection is not None:
            return self.change_detection
        names = {self.default_strategy, *self.blueprint_strategies.values(), *self.strategies}
        return any(STRATEGIES[n].detects for n in names if n in STRATEGIES)

    def policy(self, name: str):
        return make_policy(name, self.strategies.get(name))


def _parse_env_value(value: str, keys: tuple[str, ...] = ()) -> Any:
    if _is_text_setting(keys):
        return value  # kept verbatim: SEEDWORKER_GROUP_ID=42 or a numeric password is a string, not a number
    try:
        return json.loads(value)
    except ValueError:
        return value


def _is_text_setting(keys: tuple[str, ...]) -> bool:
    """Whether the setting at this key path is declared as a string (``str``, ``SecretStr``, or either ``| None``)."""
    model: Any = Settings
    annotation: Any = None
    for key in keys:
        field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return False
        annotation = model = field.annotation
    return annotation in (str, SecretStr) or (get_origin(annotation) in (Union, UnionType)
                                              and set(get_args(annotation)) in ({str, type(None)},
                                                                                {SecretStr, type(None)}))


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        node = tree.get(key)
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[path[-1]] = value


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """File, then environment, then explicit overrides (dotted keys, e.g. from command-line flags)."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            tree = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p}: {exc}") from None
    env = os.environ if environ is None else environ
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or not value:
            continue
        name = key[len(ENV_PREFIX):].lower()
        keys = ENV_ALIASES.get(name) or tuple(name.split("__"))
        _set(tree, keys, _parse_env_value(value, keys))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(tree, tuple(dotted.split(".")), value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
