"""The checked-in event contract (`schemas/`): up to date, valid, and in agreement with the models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from seedworker import SeedSelector
from seedworker.contract import schemas as contract
from seedworker.contract.events import (
    MODELS,
    SCHEMA_VERSION,
    AdaptationOutcome,
    EventError,
    GraftRequested,
    StrategySwitch,
    decode,
    encode,
)
from seedworker.core.config import Topics

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
EVENT_TYPES = sorted(MODELS)


def load(name: str) -> Any:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def validator(event_type: str) -> Draft202012Validator:
    return Draft202012Validator(load(contract.schema_file(event_type)))


def request_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event_type": "graft.requested",
        "schema_version": SCHEMA_VERSION,
        "occurred_at": "2024-05-01T12:00:00Z",
        "request_id": "req-1",
        "blueprint_id": "bp-1",
        "layer_name": "layer3",
        "seeds": [
            {"seed_id": "s0", "seed_idx": 0, "state": "dormant", "features": {"params": 1200.0}},
            {"seed_id": "s1", "seed_idx": 1, "state": "dormant"},
            {"seed_id": "s2", "seed_idx": 2, "state": "active"},
        ],
        "context": {"current_loss": 0.7, "learning_rate": 0.001, "plateau_epochs": 3},
        "constraints": {"memory_budget_mb": 512, "max_latency_ms": 20},
        "trace_id": "trace-1",
    }
    payload.update(changes)
    return payload


def outcome_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event_type": "adaptation.outcome",
        "request_id": "req-1",
        "blueprint_id": "bp-1",
        "seed_id": "s0",
        "accuracy_delta": 0.02,
        "loss_delta": -0.05,
        "latency_ms": 3.5,
        "memory_mb": 12.0,
        "throughput": 900.0,
        "success": True,
    }
    payload.update(changes)
    return payload


# (1) drift ----------------------------------------------------------------------------------------------------------
def test_checked_in_files_match_the_models():
    rendered = contract.render()
    drifted = contract.check(SCHEMAS)
    assert not drifted, (
        f"schemas/ is out of date with seedworker/contract/events.py ({', '.join(drifted)}): run `make schemas`"
    )
    on_disk = {p.name for p in SCHEMAS.iterdir() if p.is_file()}
    assert set(rendered) <= on_disk
    assert set(rendered) == {f"{t}.schema.json" for t in EVENT_TYPES} | {"asyncapi.json"}


def test_render_is_deterministic_and_canonical():
    first, second = contract.render(), contract.render()
    assert first == second
    for name, text in first.items():
        assert text.endswith("}\n") and not text.endswith("\n\n"), name
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n", name


def test_write_then_check_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "schemas"
    assert contract.main(["--check", "--dir", str(out)]) == 1
    assert "run `make schemas`" in capsys.readouterr().err
    assert sorted(contract.write(out)) == sorted(contract.render())
    assert contract.check(out) == []
    assert contract.write(out) == []  # nothing to do the second time
    assert contract.main(["--dir", str(out)]) == 0  # --check is the default

    (out / "seed.selected.schema.json").write_text("{}\n")
    (out / "old.event.schema.json").write_text("{}\n")  # an event that no longer exists
    assert contract.check(out) == ["old.event.schema.json", "seed.selected.schema.json"]
    assert contract.main(["--check", "--dir", str(out)]) == 1
    assert contract.main(["--write", "--dir", str(out)]) == 0
    assert contract.check(out) == []
    assert not (out / "old.event.schema.json").exists()


# (2) valid JSON Schema 2020-12 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_schema_is_valid_2020_12(event_type: str):
    schema = load(contract.schema_file(event_type))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://esper.example/seedworker/schemas/{event_type}/1.json"
    assert schema["title"] and schema["description"]
    assert schema["properties"]["event_type"]["const"] == event_type


# Keywords pydantic may emit that 2020-12 defines; anything else (e.g. pydantic's "ge" when a bound follows a
# validator) is silently ignored by validators, so the schema would promise a check it does not make.
KNOWN_KEYWORDS = {
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "type",
    "const",
    "enum",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "properties",
    "additionalProperties",
    "required",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
}


def subschemas(schema: Any, where: str = "#") -> Iterator[tuple[str, dict]]:
    if not isinstance(schema, dict):
        return
    yield where, schema
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            for name, sub in value.items():
                yield from subschemas(sub, f"{where}/{key}/{name}")
        elif key in ("items", "additionalProperties", "not"):
            yield from subschemas(value, f"{where}/{key}")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for i, sub in enumerate(value):
                yield from subschemas(sub, f"{where}/{key}/{i}")


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_schema_uses_only_standard_keywords(event_type: str):
    for where, sub in subschemas(load(contract.schema_file(event_type))):
        unknown = set(sub) - KNOWN_KEYWORDS
        assert not unknown, f"{event_type}: {where} has non-standard keywords {sorted(unknown)}"


# (3) real events validate -------------------------------------------------------------------------------------------
def as_json(event) -> Any:
    return json.loads(encode(event))


def test_encoded_graft_request_validates():
    validator("graft.requested").validate(as_json(GraftRequested.model_validate(request_payload())))
    minimal = GraftRequested(request_id="r", blueprint_id="b", seeds=[{"seed_id": "a", "seed_idx": 0}])
    validator("graft.requested").validate(as_json(minimal))


def test_encoded_selection_validates():
    selector = SeedSelector()
    for i in range(5):
        selected = selector.select(request_payload(request_id=f"req-{i}"))
        validator("seed.selected").validate(as_json(selected))
        # and the bytes survive a decode/encode through the contract unchanged
        assert encode(decode(encode(selected), "seed.selected")) == encode(selected)


def test_encoded_outcome_and_switch_validate():
    validator("adaptation.outcome").validate(as_json(AdaptationOutcome.model_validate(outcome_payload())))
    by_decision = AdaptationOutcome(decision_id="d-1", blueprint_id="bp", seed_id="s")
    validator("adaptation.outcome").validate(as_json(by_decision))
    validator("strategy.switch").validate(as_json(StrategySwitch(strategy="ucb1", blueprint_id="bp-1")))
    validator("strategy.switch").validate(as_json(StrategySwitch(strategy="thompson")))


def test_newer_minor_with_extra_fields_validates():
    payload = request_payload(schema_version="1.7", new_field={"anything": True})
    validator("graft.requested").validate(payload)
    decode(json.dumps(payload))


# (4) invalid payloads fail the schema (and the models agree) --------------------------------------------------------
def _without(payload: dict, key: str) -> dict:
    return {k: v for k, v in payload.items() if k != key}


INVALID = {
    "empty seeds": ("graft.requested", request_payload(seeds=[])),
    "too many seeds": (
        "graft.requested",
        request_payload(seeds=[{"seed_id": f"s{i}", "seed_idx": i} for i in range(257)]),
    ),
    "missing request_id": ("graft.requested", _without(request_payload(), "request_id")),
    "empty request_id": ("graft.requested", request_payload(request_id="")),
    "negative seed_idx": ("graft.requested", request_payload(seeds=[{"seed_id": "a", "seed_idx": -1}])),
    "non-numeric context signal": ("graft.requested", request_payload(context={"current_loss": "high"})),
    "negative memory budget": ("graft.requested", request_payload(constraints={"memory_budget_mb": -1})),
    "other major": ("graft.requested", request_payload(schema_version="2.0")),
    "wrong event_type": ("graft.requested", request_payload(event_type="seed.selected")),
    "negative latency": ("adaptation.outcome", outcome_payload(latency_ms=-1.0)),
    "negative memory": ("adaptation.outcome", outcome_payload(memory_mb=-0.5)),
    "negative throughput": ("adaptation.outcome", outcome_payload(throughput=-1)),
    "no join key": ("adaptation.outcome", _without(outcome_payload(), "request_id")),
    "empty join key": ("adaptation.outcome", outcome_payload(request_id="")),
    "missing seed_id": ("adaptation.outcome", _without(outcome_payload(), "seed_id")),
    "empty strategy": ("strategy.switch", {"event_type": "strategy.switch", "strategy": ""}),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_payload_fails_schema_and_model(case: str):
    event_type, payload = INVALID[case]
    assert list(validator(event_type).iter_errors(payload)), f"{case}: the schema accepted it"
    with pytest.raises(EventError):
        decode(json.dumps(payload), event_type)


def test_valid_fixtures_pass_the_schema():
    # guards the negative cases above: they fail for the reason named, not because the base payload is wrong
    validator("graft.requested").validate(request_payload())
    validator("adaptation.outcome").validate(outcome_payload())
    validator("adaptation.outcome").validate(outcome_payload(request_id=None, decision_id="d-1"))


# (5) the AsyncAPI document ------------------------------------------------------------------------------------------
def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def pointer(document: Any, fragment: str) -> Any:
    node = document
    for part in fragment.lstrip("/").split("/") if fragment else ():
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_asyncapi_document():
    doc = load("asyncapi.json")
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "seedworker"
    import seedworker

    assert doc["info"]["version"] == seedworker.__version__
    assert doc["servers"]["local"] == {**doc["servers"]["local"], "host": "127.0.0.1:9092", "protocol": "kafka"}
    addresses = sorted(channel["address"] for channel in doc["channels"].values())
    # The changelog is the workers' own state, not part of the contract Tamiyo talks to.
    assert addresses == sorted(v for k, v in Topics().model_dump().items() if k != "changelog")


def test_asyncapi_refs_resolve():
    doc = load("asyncapi.json")
    found = list(refs(doc))
    assert found
    for ref in found:
        target, _, fragment = ref.partition("#")
        if target:
            path = (SCHEMAS / target).resolve()
            assert path.is_file(), f"{ref} points at a missing file"
            pointer(json.loads(path.read_text(encoding="utf-8")), fragment)
        else:
            try:
                pointer(doc, fragment)
            except (KeyError, IndexError) as exc:
                raise AssertionError(f"{ref} does not resolve in asyncapi.json") from exc
    payload_files = {ref for ref in found if ref.endswith(".schema.json")}
    assert payload_files == {f"./{t}.schema.json" for t in EVENT_TYPES}


def test_asyncapi_messages_keys_and_headers():
    doc = load("asyncapi.json")
    messages = doc["components"]["messages"]
    for message_id, message in messages.items():
        key = message["bindings"]["kafka"]["key"]
        assert key["type"] == "string", message_id
        headers = message["headers"]["properties"]
        if message_id == "deadLetter":
            assert {"dlq.reason", "dlq.source.topic", "dlq.source.partition", "dlq.source.offset"} <= set(headers)
            assert message["payload"]["format"] == "binary"
            continue
        assert "blueprint_id" in key["description"]
        expected = {"event_type", "schema_version", "trace_id", "content-type"}
        if message_id == "seedSelected":
            expected |= {"decision_id", "source.partition", "source.offset", "source.timestamp", "seed.warm_start"}
        assert set(headers) == expected, message_id
        assert headers["content-type"]["const"] == "application/json"
        event_type = headers["event_type"]["const"]
        assert message["payload"] == {"$ref": f"./{event_type}.schema.json"}


def test_asyncapi_operations():
    doc = load("asyncapi.json")
    by_action: dict[str, set[str]] = {"send": set(), "receive": set()}
    for operation_id, operation in doc["operations"].items():
        channel = pointer(doc, operation["channel"]["$ref"].lstrip("#"))
        for message_ref in operation["messages"]:
            # AsyncAPI 3: an operation's messages must be messages of its channel
            assert message_ref["$ref"].startswith(operation["channel"]["$ref"] + "/messages/"), operation_id
        by_action[operation["action"]].add(channel["address"])
    topics = Topics()
    assert by_action["receive"] == {topics.requests, topics.outcomes, topics.control}
    assert by_action["send"] == {topics.selections, topics.dead_letters}


def test_header_constants_match_document():
    doc = load("asyncapi.json")
    messages = doc["components"]["messages"]
    assert set(contract.EVENT_HEADERS) == set(messages["graftRequested"]["headers"]["properties"])
    assert set(contract.EVENT_HEADERS) | {
        contract.HEADER_DECISION_ID,
        contract.HEADER_SOURCE_PARTITION,
        contract.HEADER_SOURCE_OFFSET,
        contract.HEADER_SOURCE_TIMESTAMP,
        contract.HEADER_WARM_START,
    } == set(messages["seedSelected"]["headers"]["properties"])
    assert set(contract.DEAD_LETTER_HEADERS) == set(messages["deadLetter"]["headers"]["required"])


def test_worker_selection_headers_are_documented():
    from seedworker.contract import headers

    selected = SeedSelector().select(request_payload())
    sent = {
        name
        for name, _ in headers.selection(
            decision_id=selected.decision_id,
            schema_version=selected.schema_version,
            trace_id="t-1",
            source=(0, 17),
            source_timestamp=1_700_000_000_000,
            warm_start=b"none",
        )
    }
    documented = load("asyncapi.json")["components"]["messages"]["seedSelected"]["headers"]["properties"]
    assert sent <= set(documented), f"worker sends undocumented headers {sorted(sent - set(documented))}"
    assert {
        "event_type",
        "schema_version",
        "content-type",
        "source.partition",
        "source.offset",
        "seed.warm_start",
    } <= sent
