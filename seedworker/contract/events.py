"""Event contract v1: the three messages seedworker reads and writes, and their (de)serialization.

Everything that turns an event into bytes or bytes into an event lives here, so the worker, the client, the
simulator and the replay tool all agree on one wire format (JSON, via orjson).

Compatibility rule: a message of another *major* version is rejected with a clear error; fields added by a newer
*minor* version are accepted and ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_MAJOR = 1
# 1.1: seed.selected.propensity_method may be "quadrature" (additive: 1.0 readers that validate the enum need 1.1).
# 1.2: the decisions' random stream changed (policies.base.Draw: PCG64 keyed directly by blake2b-256 of (salt,
# request_id), no SeedSequence): the same (salt, request id, state) may pick another seed, or the same seed with
# another Monte-Carlo propensity, than under 1.1. The wire format is unchanged. Replay folds the logged decisions
# (seed_id, propensity, features) and never draws, so logs of either version replay to the decisions they record.
# 1.3: seed.selected may carry ``shadow`` (seedworker.core.shadow): what each shadow strategy would have chosen on
# the same state, with its probability of the live choice. Additive: events without it decode as before.
SCHEMA_MINOR = 3
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"
MAX_CANDIDATES = 256

GRAFT_REQUESTED = "graft.requested"
SEED_SELECTED = "seed.selected"
ADAPTATION_OUTCOME = "adaptation.outcome"
STRATEGY_SWITCH = "strategy.switch"

# Decision ids are uuid5(request_id) in this namespace, so any party holding a request id can compute the decision id.
DECISION_NAMESPACE = uuid.UUID("6f1c2c3e-5b8e-4b0e-9a57-2f4d3c8a9e01")


class EventError(ValueError):
    """A message that cannot be accepted; the message names the field and the reason."""


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a timezone (UTC)")
    return value.astimezone(UTC)


# Finite floats, refused by pydantic's own float validator (error type ``finite_number``): every model here already
# refused NaN and infinity that way (``allow_inf_nan=False`` in its configuration) before a Python after-validator
# could see them, so that validator never fired and only cost a call per value; set on the field too, so the type
# stays finite in any model.
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
UtcTime = Annotated[datetime, AfterValidator(_utc)]


# The hex digit of a UUID's variant nibble (RFC 4122: binary 10xx) for each hex digit of the nibble it replaces.
_VARIANT = {c: format((int(c, 16) & 0x3) | 0x8, "x") for c in "0123456789abcdef"}


def decision_id_for(request_id: str) -> str:
    """The decision id of a request: deterministic, so a re-sent selection carries the same id.

    ``str(uuid.uuid5(DECISION_NAMESPACE, request_id))`` computed directly (SHA-1 of the namespace and the name, the
    version and variant bits set, formatted): the same string in about a third of the time (tests/test_events.py)."""
    # On the hex digits: the version digit (12) is 5, the variant digit (16) gets the RFC 4122 bits (``_VARIANT``).
    h = hashlib.sha1(_NAMESPACE_BYTES + request_id.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_NAMESPACE_BYTES = DECISION_NAMESPACE.bytes
_RANDOM_POOL = 4096  # bytes of OS randomness read at once for event ids: 256 ids per system call
# Ids formatted ahead, from one read of OS randomness each batch: handed out by list.pop, which is atomic, so
# threads need no lock; a forked child drops them (it must not hand out its parent's ids).
_ids: list[str] = []


def _drop_random_pool() -> None:
    _ids.clear()


os.register_at_fork(after_in_child=_drop_random_pool)


def _format_ids(pool: bytes) -> list[str]:
    """Version-4 UUID strings of each 16 bytes of ``pool``, as ``str(uuid.UUID(bytes=..., version=4))``: the version
    nibble (hex digit 12) set to 4, the variant bits (the high bits of digit 16) to 10, the other digits the bytes'."""
    h = pool.hex()
    v = _VARIANT
    return [
        f"{h[j : j + 8]}-{h[j + 8 : j + 12]}-4{h[j + 13 : j + 16]}-{v[h[j + 16]]}{h[j + 17 : j + 20]}-{h[j + 20 : j + 32]}"
        for j in range(0, len(h), 32)
    ]


def new_event_id() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())``, from OS randomness read 4 KiB at a time: the
    system call per id cost more than the rest (about 5 µs against 1); the ids of a read are formatted together
    (``_format_ids``), a fraction of formatting each from its bytes."""
    try:
        return _ids.pop()
    except IndexError:
        fresh = _format_ids(os.urandom(_RANDOM_POOL))
        out = fresh.pop()
        _ids.extend(fresh)  # another thread may have refilled meanwhile: both batches are fresh randomness
        return out


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    # extra="ignore": additive fields of a newer minor version are accepted and dropped.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class Envelope(_Model):
    # The function itself, not a lambda calling it: a call less per event (~0.5 µs).
    event_id: str = Field(default_factory=new_event_id, min_length=1)
    event_type: str
    schema_version: str = SCHEMA_VERSION
    occurred_at: UtcTime = Field(default_factory=utc_now)
    source: str = Field(default="seedworker", min_length=1)
    trace_id: str | None = None
    correlation_id: str | None = None

    @field_validator("schema_version")
    @classmethod
    def _same_major(cls, value: str) -> str:
        check_version(value)
        return value


class SeedCandidate(_Model):
    seed_id: str = Field(min_length=1, max_length=256)
    seed_idx: int = Field(ge=0)
    state: str | None = None
    features: dict[str, Finite] | None = None


class TrainingContext(BaseModel):
    """Numeric training signals. The named ones are what Tamiyo sends today; any other numeric signal is allowed."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    __pydantic_extra__: dict[str, Finite] = Field(init=False)

    current_loss: Finite | None = None
    current_accuracy: Finite | None = None
    learning_rate: Finite | None = None
    current_epoch: Finite | None = None
    total_epochs: Finite | None = None
    loss_momentum: Finite | None = None
    gradient_norm: Finite | None = None
    batch_size: Finite | None = None
    gpu_memory_used: Finite | None = None
    available_memory_mb: Finite | None = None
    urgency: Finite | None = None

    def values(self) -> dict[str, float]:
        """All signals that are present, named and extra alike."""
        # From the instance's dict (a frozen model's fields are all in it), in field order: one lookup per field
        # instead of two attribute reads.
        d = self.__dict__
        out = {k: v for k in _CONTEXT_FIELDS if (v := d[k]) is not None}
        if self.__pydantic_extra__:
            out.update(self.__pydantic_extra__)
        return out


_CONTEXT_FIELDS = tuple(TrainingContext.model_fields)


class Constraints(_Model):
    memory_budget_mb: NonNegative | None = None
    max_latency_ms: NonNegative | None = None


class GraftRequested(Envelope):
    event_type: Literal["graft.requested"] = GRAFT_REQUESTED
    request_id: str = Field(min_length=1, max_length=256)
    blueprint_id: str = Field(min_length=1, max_length=256)
    layer_name: str | None = None
    seeds: list[SeedCandidate] = Field(min_length=1, max_length=MAX_CANDIDATES)
    context: TrainingContext = Field(default_factory=TrainingContext)
    constraints: Constraints | None = None
    strategy: str | None = None

    @model_validator(mode="after")
    def _unique_seeds(self) -> GraftRequested:
        seeds = self.seeds
        n = len(seeds)
        # The usual request passes both checks: one set of each, the lists only to name a duplicate.
        if len({s.seed_id for s in seeds}) == n and len({s.seed_idx for s in seeds}) == n:
            return self
        ids = [s.seed_id for s in seeds]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"seeds: duplicate seed_id {dup}")
        idxs = [s.seed_idx for s in self.seeds]
        if len(set(idxs)) != len(idxs):
            dup = sorted({i for i in idxs if idxs.count(i) > 1})
            raise ValueError(f"seeds: duplicate seed_idx {dup}")
        return self

    @cached_property
    def decision_id(self) -> str:
        return decision_id_for(self.request_id)  # uuid5 costs ~3 µs; the worker asks several times per event


class CandidateScore(_Model):
    seed_id: str
    seed_idx: int
    score: float | None = None
    probability: float | None = None
    viable: bool = True
    note: str | None = None


class ShadowChoice(_Model):
    """What one strategy would have chosen for the decision on the same state, without acting on it."""

    strategy: str
    seed_id: str
    propensity: float = Field(gt=0, le=1)  # its probability of its own pick
    propensity_of_live: float = Field(ge=0, le=1)  # its probability of the seed the decision chose
    propensity_method: Literal["exact", "monte_carlo", "quadrature"] = "exact"


class SeedSelected(Envelope):
    event_type: Literal["seed.selected"] = SEED_SELECTED
    decision_id: str
    request_id: str
    blueprint_id: str
    layer_name: str | None = None
    seed_id: str
    seed_idx: int
    strategy: str
    selection_reason: str
    propensity: float = Field(gt=0, le=1)
    # exact; monte_carlo: an estimate from sampled draws; quadrature: a numerical integral (about 1e-6 accurate,
    # see policies/propensity.py); fallback: no strategy ran.
    propensity_method: Literal["exact", "monte_carlo", "quadrature", "fallback"] = "exact"
    scores: list[CandidateScore]
    explored: bool
    context: dict[str, float] = Field(default_factory=dict)
    features: list[float] = Field(default_factory=list)
    state_version: int = Field(ge=0)
    request_time: UtcTime | None = None
    shadow: list[ShadowChoice] | None = None  # since 1.3; absent when no shadow strategy is configured


class SelectionColumns(_Model):
    """The fields of a seed.selected that the store keeps in columns of its own (seedworker.store.rows.DecisionRow),
    validated as SeedSelected validates them; the rest of the event is not read. For a payload that is only copied
    (a restore from the changelog, where every decision's payload goes into the store): about a third of the cost
    of decoding the whole event. The store decodes a pending decision's payload in full when it loads it."""

    event_type: Literal["seed.selected"] = SEED_SELECTED
    schema_version: str = SCHEMA_VERSION
    occurred_at: UtcTime = Field(default_factory=utc_now)
    decision_id: str
    request_id: str
    blueprint_id: str
    seed_id: str
    seed_idx: int
    strategy: str
    propensity: float = Field(gt=0, le=1)
    explored: bool
    state_version: int = Field(ge=0)
    request_time: UtcTime | None = None

    @field_validator("schema_version")
    @classmethod
    def _same_major(cls, value: str) -> str:
        check_version(value)
        return value


def decode_columns(data: bytes) -> SelectionColumns | SeedSelected:
    """A seed.selected payload's stored columns (``SelectionColumns``); a payload they do not accept goes through
    ``decode``, which raises EventError naming the field (or accepts what only its dict path accepts)."""
    try:
        return SelectionColumns.model_validate(orjson.loads(data))
    except (orjson.JSONDecodeError, ValidationError):
        return decode(data, SEED_SELECTED)  # type: ignore[return-value]


class AdaptationOutcome(Envelope):
    event_type: Literal["adaptation.outcome"] = ADAPTATION_OUTCOME
    decision_id: str | None = None
    request_id: str | None = None
    blueprint_id: str = Field(min_length=1)
    seed_id: str = Field(min_length=1)
    accuracy_delta: Finite = 0.0
    loss_delta: Finite = 0.0
    latency_ms: NonNegative = 0.0
    memory_mb: NonNegative = 0.0
    throughput: NonNegative = 0.0
    success: bool = True

    @model_validator(mode="after")
    def _needs_a_join_key(self) -> AdaptationOutcome:
        if not self.decision_id and not self.request_id:
            raise ValueError("decision_id: one of decision_id or request_id is required")
        return self

    @property
    def resolved_decision_id(self) -> str:
        return self.decision_id or decision_id_for(self.request_id or "")


class StrategySwitch(Envelope):
    """Control message: switch the strategy of one blueprint (or the default when blueprint_id is None)."""

    event_type: Literal["strategy.switch"] = STRATEGY_SWITCH
    strategy: str = Field(min_length=1)
    blueprint_id: str | None = None
    logging_only: bool | None = None


Event = GraftRequested | SeedSelected | AdaptationOutcome | StrategySwitch
MODELS: dict[str, type[Envelope]] = {
    GRAFT_REQUESTED: GraftRequested,
    SEED_SELECTED: SeedSelected,
    ADAPTATION_OUTCOME: AdaptationOutcome,
    STRATEGY_SWITCH: StrategySwitch,
}


def check_version(version: Any) -> None:
    if not isinstance(version, str):
        raise ValueError(f"schema_version must be a 'major.minor' string, got {version!r}")
    major, _, minor = version.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        raise ValueError(f"schema_version must look like 'major.minor', got {version!r}")
    if int(major) != SCHEMA_MAJOR:
        raise ValueError(
            f"schema_version {version} has major version {major}; this worker reads major {SCHEMA_MAJOR} only"
        )


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def encode(event: Envelope) -> bytes:
    """The one place an event becomes bytes."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


def decode(data: bytes | str, expected: str | None = None, *, default_time: datetime | None = None) -> Envelope:
    """The one place bytes become an event. Raises EventError with a message that names the field.

    ``default_time`` is the ``occurred_at`` of a message that has none: the worker passes the Kafka record's
    timestamp, which a later replay reads again, so a missing time means the same thing live and replayed (the
    decoder's own clock would not).

    The usual message is parsed and validated in one step from the bytes by pydantic (``model_validate_json``,
    about 3 µs less than parsing to a dict first). Whatever that path does not accept as it stands — another event
    type, an invalid or non-finite value, bad JSON, a message without ``occurred_at`` when ``default_time`` is
    given — goes through the dict path below, which gives every error message (naming the field) and the defaults
    exactly as before."""
    model = MODELS.get(expected) if expected is not None else None
    if model is not None:
        try:
            event = model.model_validate_json(data)
        except ValidationError:
            pass
        else:
            if default_time is None or "occurred_at" in event.__pydantic_fields_set__:
                return event
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Python's json module writes NaN/Infinity literals; read them so validation can name the offending field.
        try:
            # Decode strictly first: json.loads would guess UTF-16/32 from bytes, which the wire format is not.
            raw = json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
        except (ValueError, TypeError):
            raise EventError(f"invalid JSON: {exc}") from None
    return from_dict(raw, expected, default_time=default_time)


def from_dict(raw: Any, expected: str | None = None, *, default_time: datetime | None = None) -> Envelope:
    if not isinstance(raw, dict):
        raise EventError(f"event: expected a JSON object, got {type(raw).__name__}")
    if default_time is not None and raw.get("occurred_at") is None:
        raw = {**raw, "occurred_at": default_time}
    event_type = raw.get("event_type", expected)
    if expected is not None and event_type != expected:
        raise EventError(f"event_type: expected {expected!r}, got {event_type!r}")
    model = MODELS.get(event_type) if isinstance(event_type, str) else None
    if model is None:
        raise EventError(f"event_type: unknown event type {event_type!r}")
    if "schema_version" in raw:
        try:
            check_version(raw["schema_version"])
        except ValueError as exc:
            raise EventError(f"schema_version: {exc}") from None
    if model is GraftRequested:
        return _request(raw)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise EventError(_describe(exc)) from None


# Validated seed lists, by what their validation reads (``_candidates_key``): Tamiyo lists the same seeds of a
# blueprint in request after request, and their eight nested models were half the cost of validating a request.
_CANDIDATES: dict[tuple, tuple[SeedCandidate, ...]] = {}
_CANDIDATES_MAX = 4096  # seed lists kept; cleared when full (a cache only: results do not depend on it)


def _candidates_key(seeds: Any) -> tuple | None:
    """What ``SeedCandidate`` validation makes of each seed: its seed_id, seed_idx and state, and which of the
    optional fields the dict carries (they are in the model's fields-set; ``_ABSENT`` where it carries none). None
    for anything but plain dicts of a ``str`` id, an ``int`` index (not a bool), a ``str`` or None state and no
    features: those, and every coercion pydantic would do, go through the models."""
    if type(seeds) is not list:
        return None
    key = []
    append = key.append
    absent = _ABSENT
    for c in seeds:
        if type(c) is not dict:
            return None
        get = c.get
        sid, idx, state, features = get("seed_id"), get("seed_idx"), get("state", absent), get("features", absent)
        if type(sid) is not str or type(idx) is not int:
            return None
        if (state is not absent and state is not None and type(state) is not str) or (
            features is not absent and features is not None
        ):
            return None
        append((sid, idx, state, features))
    return tuple(key)


_ABSENT = object()  # a field the seed's dict does not carry (so not in its fields-set)


def _request(raw: dict) -> GraftRequested:
    """``GraftRequested.model_validate(raw)``, with a seed list seen before taken from ``_CANDIDATES``: the same
    (frozen) candidate models its validation gave, which pydantic takes as they are. Only valid lists are kept, so
    a request that fails is validated again as it came, for exactly the errors it gives without the cache."""
    key = _candidates_key(raw.get("seeds"))
    known = _CANDIDATES.get(key) if key is not None else None
    if known is not None:
        try:
            return GraftRequested.model_validate({**raw, "seeds": list(known)})
        except ValidationError:
            pass
    try:
        request = GraftRequested.model_validate(raw)
    except ValidationError as exc:
        raise EventError(_describe(exc)) from None
    if key is not None:
        if len(_CANDIDATES) >= _CANDIDATES_MAX:
            _CANDIDATES.clear()
        _CANDIDATES[key] = tuple(request.seeds)
    return request


def epoch_seconds(ts: datetime) -> float:
    return ts.timestamp()


def check_selection(selected: SeedSelected) -> None:
    """Check a selection the selector built (without re-validation, see the selector) against the contract before
    it is stored or sent: every number finite, probabilities in range. Raises EventError naming the field. The
    inputs were validated, so this only catches what the computation made of them (an overflow in the feature
    scaling, a NaN score) — cheaply, instead of decoding the payload again."""
    if not (0.0 < selected.propensity <= 1.0):
        raise EventError(f"propensity: {selected.propensity!r} is not in (0, 1]")
    for name, values in (("features", selected.features), ("context", selected.context.values())):
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise EventError(f"{name}: not finite ({bad[0]!r})")
    for j, c in enumerate(selected.scores):
        if c.score is not None and not math.isfinite(c.score):
            raise EventError(f"scores.{j}.score: not finite ({c.score!r})")
        if c.probability is not None and not (0.0 <= c.probability <= 1.0):
            raise EventError(f"scores.{j}.probability: {c.probability!r} is not in [0, 1]")
    for j, c in enumerate(selected.shadow or ()):
        if not (0.0 < c.propensity <= 1.0 and 0.0 <= c.propensity_of_live <= 1.0):
            raise EventError(f"shadow.{j}: propensities {c.propensity!r}, {c.propensity_of_live!r} out of range")
