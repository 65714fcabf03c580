"""The event contract v1 (`seedworker.contract.events`): encoding, decoding, compatibility and the errors it gives."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis.strategies import text
from pydantic import ValidationError

from seedworker.contract.events import (
    DECISION_NAMESPACE,
    MAX_CANDIDATES,
    MODELS,
    SCHEMA_VERSION,
    AdaptationOutcome,
    EventError,
    GraftRequested,
    SeedSelected,
    StrategySwitch,
    decision_id_for,
    decode,
    encode,
    from_dict,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def request(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event_type": "graft.requested",
        "occurred_at": "2024-05-01T12:00:00Z",
        "request_id": "req-1",
        "blueprint_id": "bp-1",
        "seeds": [
            {"seed_id": "s0", "seed_idx": 0, "state": "dormant", "features": {"params": 1200.0}},
            {"seed_id": "s1", "seed_idx": 1},
        ],
        "context": {"current_loss": 0.7, "learning_rate": 0.001},
    }
    payload.update(changes)
    return payload


def outcome(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event_type": "adaptation.outcome",
        "request_id": "req-1",
        "blueprint_id": "bp-1",
        "seed_id": "s0",
        "accuracy_delta": 0.02,
        "latency_ms": 3.5,
        "memory_mb": 12.0,
    }
    payload.update(changes)
    return payload


def selection(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event_type": "seed.selected",
        "occurred_at": "2024-05-01T12:00:01Z",
        "decision_id": decision_id_for("req-1"),
        "request_id": "req-1",
        "blueprint_id": "bp-1",
        "seed_id": "s0",
        "seed_idx": 0,
        "strategy": "thompson",
        "selection_reason": "s0 (seed_idx 0) chosen by thompson: highest sample",
        "propensity": 0.8,
        "propensity_method": "monte_carlo",
        "scores": [
            {"seed_id": "s0", "seed_idx": 0, "score": 0.9, "probability": 0.8},
            {"seed_id": "s1", "seed_idx": 1, "score": None, "probability": 0.0, "viable": False, "note": "too big"},
        ],
        "explored": False,
        "context": {"current_loss": 0.7},
        "features": [1.0, 0.7],
        "state_version": 4,
        "request_time": "2024-05-01T12:00:00Z",
    }
    payload.update(changes)
    return payload


def switch(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"event_type": "strategy.switch", "strategy": "ucb1", "blueprint_id": "bp-1"}
    payload.update(changes)
    return payload


def error_of(data: bytes | str, expected: str | None = None) -> str:
    with pytest.raises(EventError) as info:
        decode(data, expected)
    return str(info.value)


def dumps(payload: Any) -> str:
    """Like a Python producer would write it: json.dumps, NaN and Infinity literals included."""
    return json.dumps(payload)


# -- round trips -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [request, selection, outcome, switch], ids=lambda f: f.__name__)
def test_round_trip(make):
    event = from_dict(make())
    data = encode(event)
    assert isinstance(data, bytes)
    again = decode(data)
    assert type(again) is type(event) is MODELS[event.event_type]
    assert again == event
    assert encode(again) == data
    assert decode(data, event.event_type) == event
    # str input works too
    assert decode(data.decode("utf-8")) == event


def test_envelope_defaults_are_filled_in():
    event = decode(dumps(outcome()))
    assert event.schema_version == SCHEMA_VERSION
    assert event.source == "seedworker"
    assert uuid.UUID(event.event_id)
    assert event.occurred_at.tzinfo is not None
    assert event.trace_id is None


def test_encode_leaves_out_absent_optionals():
    raw = orjson.loads(encode(decode(dumps(switch(blueprint_id=None)))))
    assert "blueprint_id" not in raw and "logging_only" not in raw and "trace_id" not in raw
    assert raw["event_type"] == "strategy.switch" and raw["schema_version"] == SCHEMA_VERSION


def test_event_type_may_come_from_the_topic():
    payload = request()
    del payload["event_type"]
    assert isinstance(decode(dumps(payload), "graft.requested"), GraftRequested)
    assert "event_type" in error_of(dumps(payload))  # no type and no topic hint


def test_wrong_or_unknown_event_type():
    assert "event_type" in error_of(dumps(request()), "adaptation.outcome")
    assert "unknown event type" in error_of(dumps(request(event_type="graft.cancelled")))
    assert "event_type" in error_of(dumps(request(event_type=["graft.requested"])))
    assert "event_type" in error_of(dumps(request(event_type=None)))


# -- versions --------------------------------------------------------------------------------------------------------
def test_newer_minor_with_additive_fields_is_accepted_and_ignored():
    payload = request(
        schema_version="1.7",
        priority="high",
        seeds=[
            {"seed_id": "s0", "seed_idx": 0, "lineage": ["a", "b"]},
        ],
    )
    payload["constraints"] = {"max_latency_ms": 5, "max_flops": 1e9}
    event = decode(dumps(payload))
    assert isinstance(event, GraftRequested)
    assert event.schema_version == "1.7"
    raw = orjson.loads(encode(event))
    assert "priority" not in raw
    assert "lineage" not in raw["seeds"][0]
    assert raw["constraints"] == {"max_latency_ms": 5.0}
    for make in (selection, outcome, switch):
        assert decode(dumps(make(schema_version="1.3", added_in_1_3=True)))


@pytest.mark.parametrize("version", ["2.0", "0.9", "2"])
def test_other_major_is_rejected(version):
    message = error_of(dumps(request(schema_version=version)))
    assert message.startswith("schema_version")
    assert version in message


@pytest.mark.parametrize("version", [1, "one", "1.x", "", None])
def test_malformed_version_is_rejected(version):
    assert "schema_version" in error_of(dumps(request(schema_version=version)))


def test_other_major_is_rejected_when_built_directly():
    with pytest.raises(ValueError, match="schema_version"):
        GraftRequested.model_validate(request(schema_version="2.0"))


# -- numbers ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    "payload, field",
    [
        (lambda v: request(context={"current_loss": v}), "context.current_loss"),
        (lambda v: request(context={"plateau_epochs": v}), "context.plateau_epochs"),
        (
            lambda v: request(seeds=[{"seed_id": "a", "seed_idx": 0, "features": {"params": v}}]),
            "seeds.0.features.params",
        ),
        (lambda v: request(constraints={"max_latency_ms": v}), "constraints.max_latency_ms"),
        (lambda v: outcome(accuracy_delta=v), "accuracy_delta"),
        (lambda v: outcome(latency_ms=v), "latency_ms"),
        (lambda v: selection(propensity=v), "propensity"),
        (lambda v: selection(features=[1.0, v]), "features.1"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_non_finite_numbers_are_rejected_naming_the_field(payload, field, bad):
    data = dumps(payload(bad))
    assert "NaN" in data or "Infinity" in data  # what Python's json writes
    message = error_of(data)
    assert message.startswith(field + ":"), message
    assert "finite" in message


@pytest.mark.parametrize("field", ["latency_ms", "memory_mb", "throughput"])
def test_negative_costs_are_rejected_naming_the_field(field):
    message = error_of(dumps(outcome(**{field: -0.1})))
    assert message.startswith(f"{field}:"), message
    assert "greater than or equal to 0" in message


@pytest.mark.parametrize("field", ["memory_budget_mb", "max_latency_ms"])
def test_negative_constraints_are_rejected(field):
    assert error_of(dumps(request(constraints={field: -1}))).startswith(f"constraints.{field}:")


def test_zero_costs_are_fine():
    event = decode(dumps(outcome(latency_ms=0, memory_mb=0.0, throughput=0)))
    assert event.latency_ms == 0.0 and event.memory_mb == 0.0


@pytest.mark.parametrize("propensity", [0, -0.1, 1.01])
def test_propensity_is_a_probability(propensity):
    assert error_of(dumps(selection(propensity=propensity))).startswith("propensity:")


# -- seeds -----------------------------------------------------------------------------------------------------------
def test_empty_seeds_rejected():
    assert error_of(dumps(request(seeds=[]))).startswith("seeds:")


def test_too_many_seeds_rejected():
    seeds = [{"seed_id": f"s{i}", "seed_idx": i} for i in range(MAX_CANDIDATES + 1)]
    assert error_of(dumps(request(seeds=seeds))).startswith("seeds:")
    assert len(decode(dumps(request(seeds=seeds[:MAX_CANDIDATES]))).seeds) == MAX_CANDIDATES


def test_duplicate_seed_id_rejected():
    seeds = [{"seed_id": "a", "seed_idx": 0}, {"seed_id": "a", "seed_idx": 1}]
    message = error_of(dumps(request(seeds=seeds)))
    assert "seeds" in message and "duplicate seed_id" in message and "'a'" in message


def test_duplicate_seed_idx_rejected():
    seeds = [{"seed_id": "a", "seed_idx": 3}, {"seed_id": "b", "seed_idx": 3}]
    message = error_of(dumps(request(seeds=seeds)))
    assert "seeds" in message and "duplicate seed_idx" in message and "3" in message


@pytest.mark.parametrize(
    "seed, field",
    [
        ({"seed_id": "", "seed_idx": 0}, "seeds.0.seed_id"),
        ({"seed_id": "a", "seed_idx": -1}, "seeds.0.seed_idx"),
        ({"seed_idx": 0}, "seeds.0.seed_id"),
        ({"seed_id": "a"}, "seeds.0.seed_idx"),
    ],
)
def test_bad_seed_rejected_naming_the_field(seed, field):
    assert error_of(dumps(request(seeds=[seed]))).startswith(field + ":")


@pytest.mark.parametrize("field", ["request_id", "blueprint_id", "seeds"])
def test_request_needs_its_fields(field):
    payload = request()
    del payload[field]
    message = error_of(dumps(payload))
    assert message.startswith(field + ":"), message
    assert "required" in message.lower()


# -- bytes that are not an event -------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"a": 1,}', b"\x00\x01", "{'single': 'quotes'}"])
def test_invalid_json(data):
    assert "invalid JSON" in error_of(data)


@pytest.mark.parametrize("data", [b"[]", b"[1, 2]", b'"graft.requested"', b"42", b"null", b"true"])
def test_non_object_json(data):
    message = error_of(data)
    assert "expected a JSON object" in message


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe\xfd",
        b'{"request_id": "caf\xe9", "blueprint_id": "b", "seeds": []}',  # latin-1, not UTF-8
        json.dumps(request()).encode("utf-16"),
        json.dumps(request()).encode("utf-16-le"),
        json.dumps(request()).encode("utf-32"),
        json.dumps(request(context={"current_loss": float("nan")})).encode("utf-16-le"),
    ],
    ids=["garbage", "latin-1", "utf-16", "utf-16-le", "utf-32", "utf-16-le-with-NaN"],
)
def test_non_utf8_bytes_are_rejected(data):
    with pytest.raises(EventError):
        decode(data)


def test_utf8_text_is_fine():
    event = decode(dumps(request(layer_name="écluse → 層")).encode("utf-8"))
    assert event.layer_name == "écluse → 層"


# -- outcomes and decision ids ---------------------------------------------------------------------------------------
def test_outcome_needs_decision_id_or_request_id():
    payload = outcome()
    del payload["request_id"]
    message = error_of(dumps(payload))
    assert "decision_id" in message and "request_id" in message
    assert "decision_id" in error_of(dumps(outcome(request_id="", decision_id=None)))
    assert decode(dumps(outcome(request_id=None, decision_id="d-1"))).resolved_decision_id == "d-1"


def test_decision_id_is_deterministic():
    assert decision_id_for("req-1") == decision_id_for("req-1")
    assert decision_id_for("req-1") != decision_id_for("req-2")
    assert decision_id_for("req-1") == str(uuid.uuid5(DECISION_NAMESPACE, "req-1"))
    assert uuid.UUID(decision_id_for("req-1")).version == 5


@pytest.mark.parametrize("request_id", ["", "r", "req-123456", "ünïcødé-✓", "x" * 300, "a\x00b"])
def test_decision_id_is_the_uuid5_string(request_id):
    assert decision_id_for(request_id) == str(uuid.uuid5(DECISION_NAMESPACE, request_id))


def test_default_event_ids_are_distinct_uuid4_strings():
    from seedworker.contract.events import new_event_id

    ids = [new_event_id() for _ in range(1000)]  # more than one pool of OS randomness
    assert len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 4 and u.variant == uuid.RFC_4122
    assert outcome_event_ids_differ()


def outcome_event_ids_differ() -> bool:
    a = AdaptationOutcome(blueprint_id="bp", seed_id="s", request_id="r")
    b = AdaptationOutcome(blueprint_id="bp", seed_id="s", request_id="r")
    return a.event_id != b.event_id


def test_request_and_outcome_agree_on_the_decision_id():
    req = decode(dumps(request()))
    assert isinstance(req, GraftRequested)
    by_request = decode(dumps(outcome()))
    assert isinstance(by_request, AdaptationOutcome)
    assert req.decision_id == decision_id_for("req-1") == by_request.resolved_decision_id
    # an explicit decision id wins over the request id
    explicit = decode(dumps(outcome(decision_id="other")))
    assert explicit.resolved_decision_id == "other"


# -- timestamps ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, make",
    [
        ("occurred_at", request),
        ("occurred_at", outcome),
        ("request_time", selection),
        ("occurred_at", switch),
    ],
)
def test_timestamp_without_timezone_rejected(field, make):
    message = error_of(dumps(make(**{field: "2024-05-01T12:00:00"})))
    assert message.startswith(field + ":"), message
    assert "timezone" in message


def test_timestamps_are_normalised_to_utc():
    event = decode(dumps(request(occurred_at="2024-05-01T14:00:00+02:00")))
    assert event.occurred_at == T0
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert orjson.loads(encode(event))["occurred_at"] in ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00+00:00")


def test_naive_datetime_rejected_in_python_too():
    with pytest.raises(ValueError, match="timezone"):
        GraftRequested(
            request_id="r",
            blueprint_id="b",
            seeds=[{"seed_id": "a", "seed_idx": 0}],
            occurred_at=datetime(2024, 5, 1, 12, 0),
        )


# -- context ---------------------------------------------------------------------------------------------------------
def test_extra_numeric_context_signals_are_kept():
    event = decode(dumps(request(context={"current_loss": 0.5, "plateau_epochs": 3, "grad_noise": 0.01})))
    assert event.context.values() == {"current_loss": 0.5, "plateau_epochs": 3.0, "grad_noise": 0.01}
    assert event.context.current_loss == 0.5
    raw = orjson.loads(encode(event))
    assert raw["context"] == {"current_loss": 0.5, "plateau_epochs": 3.0, "grad_noise": 0.01}
    assert decode(encode(event)).context.values() == event.context.values()


def test_empty_context_is_fine():
    payload = request()
    del payload["context"]
    assert decode(dumps(payload)).context.values() == {}


@pytest.mark.parametrize("value", ["high", [1, 2], {"x": 1}])
def test_non_numeric_context_signal_rejected(value):
    assert error_of(dumps(request(context={"plateau": value}))).startswith("context.plateau:")
    assert error_of(dumps(request(context={"current_loss": value}))).startswith("context.current_loss:")


# -- models are immutable --------------------------------------------------------------------------------------------
def test_events_are_frozen():
    event = decode(dumps(request()))
    with pytest.raises(ValidationError):
        event.request_id = "other"  # type: ignore[misc]


def test_all_models_are_registered():
    assert set(MODELS) == {"graft.requested", "seed.selected", "adaptation.outcome", "strategy.switch"}
    assert MODELS["seed.selected"] is SeedSelected and MODELS["strategy.switch"] is StrategySwitch


def _by_dict_path(data, expected, default_time):
    """What decode gave before its bytes-to-model path: parse to a dict (Python's json where orjson refuses), then
    validate the dict."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        raw = json.loads(data)
    return from_dict(raw, expected, default_time=default_time)


_T = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
_CASES = [
    ("graft.requested", request()),
    ("graft.requested", request(occurred_at=None)),
    ("graft.requested", {k: v for k, v in request().items() if k != "occurred_at"}),
    ("graft.requested", request(context={"current_loss": float("nan")})),
    ("graft.requested", request(schema_version="2.0")),
    ("graft.requested", request(schema_version="1.9")),
    ("graft.requested", request(event_type="adaptation.outcome")),
    ("graft.requested", request(seeds=[])),
    ("graft.requested", {k: v for k, v in request().items() if k != "event_type"}),
    ("graft.requested", request(occurred_at="2024-05-01T12:00:00")),
    ("adaptation.outcome", outcome()),
    ("adaptation.outcome", outcome(latency_ms=-1)),
    ("adaptation.outcome", outcome(request_id=None)),
    ("seed.selected", selection()),
    ("seed.selected", selection(propensity=0)),
    ("strategy.switch", switch()),
]


@pytest.mark.parametrize("default_time", [None, _T], ids=["no default time", "default time"])
@pytest.mark.parametrize("expected, payload", _CASES)
def test_decode_from_bytes_agrees_with_the_dict_path(expected, payload, default_time):
    for data in (dumps(payload), dumps(payload).encode(), b"[1, 2]", b"{not json", "\u00e9".encode("latin-1")):
        try:
            want = _by_dict_path(data, expected, default_time)
        except (EventError, ValueError) as exc:
            with pytest.raises(EventError) as info:
                decode(data, expected, default_time=default_time)
            if isinstance(exc, EventError):
                assert str(info.value) == str(exc)
            continue
        got = decode(data, expected, default_time=default_time)
        assert type(got) is type(want)
        # A default event id is random, a default time is the clock's: not compared.
        unset = {"event_id", "occurred_at"} - got.model_fields_set
        assert got.model_dump(exclude=unset) == want.model_dump(exclude=unset)
        assert got.model_fields_set == want.model_fields_set


def test_event_ids_are_formatted_as_uuid_formats_the_same_bytes():
    import os

    from seedworker.contract.events import _format_ids

    pool = os.urandom(4096) + bytes(16) + b"\xff" * 16
    ids = _format_ids(pool)
    assert ids == [str(uuid.UUID(bytes=pool[j : j + 16], version=4)) for j in range(0, len(pool), 16)]


def test_context_values_are_the_present_signals_in_field_order_then_the_extra_ones():
    from seedworker.contract.events import TrainingContext

    named = list(TrainingContext.model_fields)
    raw = {"urgency": 0.5, "zeta": 1.0, "current_loss": 2.0, "alpha": -1.0, "batch_size": None}
    values = TrainingContext.model_validate(raw).values()
    expected = {k: raw[k] for k in named if raw.get(k) is not None} | {"zeta": 1.0, "alpha": -1.0}
    assert values == expected and list(values) == list(expected)
    assert TrainingContext().values() == {}


@hypothesis_settings(max_examples=500, deadline=None)
@given(request_id=text())
def test_decision_id_is_the_uuid5_string_for_any_request_id(request_id):
    assert decision_id_for(request_id) == str(uuid.uuid5(DECISION_NAMESPACE, request_id))
