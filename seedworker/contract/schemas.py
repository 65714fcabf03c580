"""The published event contract: a JSON Schema per event and an AsyncAPI 3.0 document, generated from the models.

``schemas/`` is checked in so that other teams can read the contract without Python; this module is the only thing
that writes it, and ``tests/test_schemas.py`` fails when the checked-in files drift from what it renders.

    seedworker schemas --write     # regenerate (what `make schemas` runs)
    seedworker schemas --check     # exit 1 when the files are out of date (the default)

The JSON Schemas are what pydantic derives from the models in :mod:`seedworker.contract.events`, plus the few rules the models
enforce in Python that JSON Schema can state too (the major version in ``schema_version``; an outcome needs a
``decision_id`` or a ``request_id``). Rules JSON Schema cannot state (unique ``seed_id``/``seed_idx`` within
``seeds``; no NaN or infinity, which strict JSON cannot carry anyway) are enforced by :func:`seedworker.contract.events.decode`
only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seedworker import __version__
from seedworker.contract import headers
from seedworker.contract import topics as default_topics
from seedworker.contract.events import (
    ADAPTATION_OUTCOME,
    GRAFT_REQUESTED,
    MODELS,
    SCHEMA_MAJOR,
    SCHEMA_VERSION,
    SEED_SELECTED,
    STRATEGY_SWITCH,
)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://esper.example/seedworker/schemas"
ASYNCAPI_FILE = "asyncapi.json"
DEFAULT_DIR = Path("schemas")
CONTENT_TYPE = "application/json"
KAFKA_BINDING_VERSION = "0.5.0"
# schema_version values this major accepts ("1" or "1.<minor>"); newer minors only add fields.
SCHEMA_VERSION_PATTERN = rf"^{SCHEMA_MAJOR}(\.[0-9]+)?$"

# Kafka header names: one definition, in seedworker.contract.headers.
HEADER_EVENT_TYPE = headers.EVENT_TYPE
HEADER_SCHEMA_VERSION = headers.SCHEMA_VERSION
HEADER_TRACE_ID = headers.TRACE_ID
HEADER_CONTENT_TYPE = headers.CONTENT_TYPE
HEADER_DECISION_ID = headers.DECISION_ID
HEADER_SOURCE_PARTITION = headers.SOURCE_PARTITION
HEADER_SOURCE_OFFSET = headers.SOURCE_OFFSET
HEADER_SOURCE_TIMESTAMP = headers.SOURCE_TIMESTAMP
HEADER_WARM_START = headers.WARM_START
EVENT_HEADERS = headers.EVENT_HEADERS
HEADER_DLQ_REASON = headers.DLQ_REASON
HEADER_DLQ_TOPIC = headers.DLQ_TOPIC
HEADER_DLQ_PARTITION = headers.DLQ_PARTITION
HEADER_DLQ_OFFSET = headers.DLQ_OFFSET
DEAD_LETTER_HEADERS = headers.DEAD_LETTER_HEADERS

DESCRIPTIONS = {
    GRAFT_REQUESTED: (
        "A request to graft one of the candidate seeds of a blueprint (sent by Tamiyo). seedworker answers with "
        "exactly one seed.selected whose decision_id is uuid5(request_id) in the decision namespace. "
        "seed_id and seed_idx must each be unique within seeds."
    ),
    SEED_SELECTED: (
        "The seed seedworker chose for one graft.requested, with the strategy, the propensity of the choice and "
        "the score of every candidate, so the decision can be evaluated off-policy later."
    ),
    ADAPTATION_OUTCOME: (
        "What happened after a selected seed was grafted. It is joined to its seed.selected by decision_id, or by "
        "request_id when decision_id is absent (the decision id is then uuid5(request_id))."
    ),
    STRATEGY_SWITCH: (
        "Control message: switch the strategy of one blueprint, or the default strategy when blueprint_id is "
        "absent. Learned statistics are kept."
    ),
}


def schema_file(event_type: str) -> str:
    return f"{event_type}.schema.json"


def schema_id(event_type: str) -> str:
    return f"{SCHEMA_ID_BASE}/{event_type}/{SCHEMA_MAJOR}.json"


def event_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one event type, as a dict."""
    model = MODELS[event_type]
    generated = model.model_json_schema(mode="validation")
    schema: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_id(event_type), **generated}
    schema["title"] = f"{model.__name__} ({event_type}, schema version {SCHEMA_MAJOR}.x)"
    schema["description"] = DESCRIPTIONS[event_type]
    version = schema["properties"]["schema_version"]
    version["pattern"] = SCHEMA_VERSION_PATTERN
    version["description"] = (
        f"major.minor; a reader of major {SCHEMA_MAJOR} rejects other majors and ignores fields added by newer minors"
    )
    if event_type == ADAPTATION_OUTCOME:
        # AdaptationOutcome._needs_a_join_key, in JSON Schema terms.
        schema["anyOf"] = [
            {"required": [key], "properties": {key: {"type": "string", "minLength": 1}}}
            for key in ("decision_id", "request_id")
        ]
    return schema


# -- AsyncAPI --------------------------------------------------------------------------------------------------------
_CHANNELS = {
    # channel id: (Topics field, message id, event type or None for dead letters, description)
    "graftRequested": (
        "requests",
        "graftRequested",
        GRAFT_REQUESTED,
        "Graft requests. seedworker consumes them and answers each on seed.selected.",
    ),
    "seedSelected": (
        "selections",
        "seedSelected",
        SEED_SELECTED,
        "One selection per graft request, keyed like the request.",
    ),
    "adaptationOutcome": (
        "outcomes",
        "adaptationOutcome",
        ADAPTATION_OUTCOME,
        "Outcomes of grafted seeds; seedworker learns from them.",
    ),
    "control": (
        "control",
        "strategySwitch",
        STRATEGY_SWITCH,
        "Control messages for running workers (strategy switches).",
    ),
    "deadLetters": (
        "dead_letters",
        "deadLetter",
        None,
        "Input messages seedworker could not accept, byte for byte, with the reason in the headers.",
    ),
}

_OPERATIONS = {
    # operation id: (action, channel id, summary)
    "receiveGraftRequested": ("receive", "graftRequested", "Consume graft requests and choose a seed for each."),
    "receiveAdaptationOutcome": (
        "receive",
        "adaptationOutcome",
        "Consume outcomes and update the statistics of the selected seed.",
    ),
    "receiveStrategySwitch": ("receive", "control", "Consume strategy switches."),
    "sendSeedSelected": ("send", "seedSelected", "Publish the selection made for a graft request."),
    "sendDeadLetter": ("send", "deadLetters", "Publish an input message that could not be accepted."),
}


def _event_headers(event_type: str) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "type": "object",
        "description": (
            "Kafka headers (UTF-8 strings). seedworker sets them on every event it produces; on input they are "
            "optional and the payload is authoritative."
        ),
        "properties": {
            HEADER_EVENT_TYPE: {"type": "string", "const": event_type, "description": "the payload's event_type"},
            HEADER_SCHEMA_VERSION: {
                "type": "string",
                "pattern": SCHEMA_VERSION_PATTERN,
                "examples": [SCHEMA_VERSION],
                "description": "the payload's schema_version",
            },
            HEADER_TRACE_ID: {"type": "string", "description": "the payload's trace_id, when it has one"},
            HEADER_CONTENT_TYPE: {"type": "string", "const": CONTENT_TYPE},
        },
    }
    if event_type == SEED_SELECTED:
        headers["properties"][HEADER_DECISION_ID] = {
            "type": "string",
            "description": "the payload's decision_id, so consumers can join without parsing it",
        }
        headers["properties"][HEADER_SOURCE_PARTITION] = {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "partition of the graft.requested record this selection answers",
        }
        headers["properties"][HEADER_SOURCE_OFFSET] = {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "offset of that record (a retried request's answer names the retry's record)",
        }
        headers["properties"][HEADER_SOURCE_TIMESTAMP] = {
            "type": "string",
            "pattern": "^-?[0-9]+$",
            "description": "that record's Kafka timestamp in ms: a replay merges the decision there, where the "
            "worker read the request, rather than at its own publication",
        }
        headers["properties"][HEADER_WARM_START] = {
            "type": "string",
            "description": "only on the decision that first saw new seeds: 'none', or '<pseudo_count>,<mean>' of "
            "the blueprint prior they started from (exact floats), for replay",
        }
    return headers


def _key(description: str) -> dict[str, Any]:
    return {
        "bindings": {
            "kafka": {"bindingVersion": KAFKA_BINDING_VERSION, "key": {"type": "string", "description": description}}
        }
    }


def _event_message(event_type: str) -> dict[str, Any]:
    model = MODELS[event_type]
    if event_type == STRATEGY_SWITCH:
        key = "the blueprint_id the switch applies to; absent for a switch of the default strategy"
    else:
        key = "the event's blueprint_id (UTF-8), so all events of one blueprint share a partition and stay in order"
    return {
        "name": event_type,
        "title": model.__name__,
        "summary": DESCRIPTIONS[event_type],
        "contentType": CONTENT_TYPE,
        "headers": _event_headers(event_type),
        "payload": {"$ref": f"./{schema_file(event_type)}"},
        **_key(key),
    }


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": "dead.letter",
        "title": "DeadLetter",
        "summary": (
            "An input message that failed to decode or validate, republished unchanged (same key, value and "
            "headers) with headers naming why and where it came from."
        ),
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "description": "The original headers, plus these (UTF-8 strings).",
            "required": list(DEAD_LETTER_HEADERS),
            "properties": {
                HEADER_DLQ_REASON: {
                    "type": "string",
                    "description": "why it was rejected, naming the field (e.g. 'seeds: ...'); at most 4000 bytes",
                },
                HEADER_DLQ_TOPIC: {"type": "string", "description": "topic the message was read from"},
                HEADER_DLQ_PARTITION: {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "partition it was read from (decimal)",
                },
                HEADER_DLQ_OFFSET: {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "offset it was read at (decimal)",
                },
            },
        },
        "payload": {
            "type": "string",
            "format": "binary",
            "description": "The original message value, byte for byte; it may not be valid JSON or UTF-8.",
        },
        **_key("the original message key, unchanged"),
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of seedworker's topics, as a dict."""
    topics = {
        "requests": default_topics.REQUESTS,
        "outcomes": default_topics.OUTCOMES,
        "selections": default_topics.SELECTIONS,
        "dead_letters": default_topics.DEAD_LETTERS,
        "control": default_topics.CONTROL,
    }
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for channel_id, (field, message_id, event_type, description) in _CHANNELS.items():
        messages[message_id] = _event_message(event_type) if event_type else _dead_letter_message()
        channels[channel_id] = {
            "address": topics[field],
            "description": description,
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        }
    operations: dict[str, Any] = {}
    for operation_id, (action, channel_id, summary) in _OPERATIONS.items():
        message_id = _CHANNELS[channel_id][1]
        operation: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
        }
        if action == "receive":
            operation["bindings"] = {
                "kafka": {
                    "bindingVersion": KAFKA_BINDING_VERSION,
                    "groupId": {"type": "string", "enum": [default_topics.GROUP_ID]},
                    "clientId": {"type": "string", "enum": [default_topics.CLIENT_ID]},
                }
            }
        operations[operation_id] = operation
    operations["receiveGraftRequested"]["reply"] = {
        "channel": {"$ref": "#/channels/seedSelected"},
        "messages": [{"$ref": "#/channels/seedSelected/messages/seedSelected"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "seedworker",
            "version": __version__,
            "description": (
                "Seed selection for Esper by bandit learning, over Kafka. Every event is one JSON object (UTF-8) "
                "with an envelope (event_id, event_type, schema_version, occurred_at, source, trace_id, "
                "correlation_id); its JSON Schema is the file next to this document. The Kafka key is the "
                "blueprint_id. A reader rejects another major schema_version and ignores fields added by a newer "
                "minor one. Messages that cannot be accepted go to the dead-letter topic. "
                f"Event contract version {SCHEMA_VERSION}."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": default_topics.BOOTSTRAP_SERVERS,
                "protocol": "kafka",
                "description": "The broker `make kafka-up` starts for development.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


# -- files -----------------------------------------------------------------------------------------------------------
def dumps(document: Any) -> str:
    """The one serialization of a generated file: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def render() -> dict[str, str]:
    """Every generated file: file name -> exact text."""
    files = {schema_file(event_type): dumps(event_schema(event_type)) for event_type in sorted(MODELS)}
    files[ASYNCAPI_FILE] = dumps(asyncapi())
    return dict(sorted(files.items()))


def _stale(directory: Path, expected: dict[str, str]) -> list[str]:
    """Generated-looking files in directory that render() no longer produces (e.g. of a removed event)."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.glob("*.schema.json") if p.name not in expected)


def check(directory: str | Path = DEFAULT_DIR) -> list[str]:
    """Names of the files in directory that differ from render(): changed, missing, or stale."""
    directory = Path(directory)
    expected = render()
    drifted = []
    for name, text in expected.items():
        path = directory / name
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            drifted.append(name)
            continue
        if current != text.encode("utf-8"):
            drifted.append(name)
    return sorted(drifted + _stale(directory, expected))


def write(directory: str | Path = DEFAULT_DIR) -> list[str]:
    """Bring directory up to date with render(); returns the names of the files written or removed."""
    directory = Path(directory)
    expected = render()
    changed = check(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in changed:
        path = directory / name
        if name in expected:
            path.write_bytes(expected[name].encode("utf-8"))
        else:
            path.unlink()
    return changed


# -- command line ----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--write",
        dest="schemas_mode",
        action="store_const",
        const="write",
        help="regenerate the files (what `make schemas` runs)",
    )
    mode.add_argument(
        "--check",
        dest="schemas_mode",
        action="store_const",
        const="check",
        help="exit 1 when the files differ from the models (the default)",
    )
    parser.add_argument(
        "--dir",
        dest="schemas_dir",
        type=Path,
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"directory of the generated files (default: {DEFAULT_DIR})",
    )


def run(args: argparse.Namespace) -> int:
    directory = Path(getattr(args, "schemas_dir", None) or DEFAULT_DIR)
    if getattr(args, "schemas_mode", None) == "write":
        changed = write(directory)
        if changed:
            print(f"updated {len(changed)} file(s) in {directory}: {', '.join(changed)}")
        else:
            print(f"{directory} is up to date")
        return 0
    drifted = check(directory)
    if drifted:
        print(
            f"{directory} is out of date with the event models ({', '.join(drifted)}); "
            "run `make schemas` (seedworker schemas --write) and commit the result",
            file=sys.stderr,
        )
        return 1
    print(f"{directory} is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seedworker schemas",
        description="Generate or check the JSON Schemas and the AsyncAPI document of the event contract.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
