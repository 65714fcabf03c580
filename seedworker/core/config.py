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
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

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


class Settings(BaseSettings):
    """Every setting. A ``BaseSettings`` so that pydantic-settings reads the ``SEEDWORKER_*`` layer with this
    schema, but constructing one reads nothing: ``load_settings`` hands the environment in (see ``_Environment``)."""

    model_config = SettingsConfigDict(
        extra="forbid", validate_assignment=True, hide_input_in_errors=True, env_prefix=ENV_PREFIX,
        env_nested_delimiter="__", case_sensitive=False, env_ignore_empty=True, env_parse_none_str="null")

    default_strategy: str = "thompson"
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
        if name == "discounted-ucb" and self.decay.half_life_s is None:
            return "strategy 'discounted-ucb' needs decay.half_life_s"
        return None

    def policy(self, name: str):
        return make_policy(name, self.strategies.get(name))

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
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
        name = key[len(prefix):].lower()
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
                path = tuple(var[len(ENV_PREFIX):].lower().split("__"))
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
    """The variable(s) behind a problem at ``loc``: the one that set it or a section above it, else those that set
    keys inside it (a section-wide check such as clip_min < clip_max), else the key a model-wide message names."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    if loc:
        return ", ".join(sorted(v for p, v in origins.items() if p[:len(loc)] == loc))
    return _named(tuple(msg.split(": ", 1)[0].split(".")), "", origins) if ": " in msg else ""


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
    env_tree, origins = _environment_tree(os.environ if environ is None else environ)
    _merge(tree, env_tree)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            path = tuple(dotted.split("."))
            _set(tree, path, value)
            # An explicit override replaces what the environment said there: its problems are not the variables'.
            origins = {p: v for p, v in origins.items() if p[:len(path)] != path}
            origins[path] = ""
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
