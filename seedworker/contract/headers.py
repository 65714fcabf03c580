"""Kafka headers of the contract: their names, how seedworker builds them and how it reads them.

Every producer of a header and every reader goes through this module, so a name is written once and a header is
read by one rule: the first occurrence counts (``value``). Dead letters keep the original headers except the
``dlq.*`` ones of an earlier dead-lettering (a dead letter put back on its topic and rejected again names only its
latest source), so a reader never has to choose between two ``dlq.source.offset`` headers.

Outbox rows keep their headers as one JSON blob (``to_blob`` / ``from_blob``): latin-1 maps every byte to one code
point, so binary header values survive the round trip.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

Headers = tuple[tuple[str, bytes], ...]

EVENT_TYPE = "event_type"
SCHEMA_VERSION = "schema_version"
TRACE_ID = "trace_id"
CONTENT_TYPE = "content-type"
DECISION_ID = "decision_id"  # seed.selected only
# seed.selected only: which graft.requested record it answers, and the warm-start prior of the seeds it registered,
# so a replay or a partition rebuild reproduces offsets and priors exactly from the decision log.
SOURCE_PARTITION = "source.partition"
SOURCE_OFFSET = "source.offset"
# seed.selected only: the graft.requested record's timestamp (ms), where a replay merges the decision among the
# outcomes (seedworker.engine.merge): the live worker took the request in then, not when it published its answer.
SOURCE_TIMESTAMP = "source.timestamp"
WARM_START = "seed.warm_start"  # "none", or "<pseudo_count>,<mean>" (repr floats: exact)
EVENT_HEADERS = (EVENT_TYPE, SCHEMA_VERSION, TRACE_ID, CONTENT_TYPE)

DLQ_PREFIX = "dlq."
DLQ_REASON = "dlq.reason"
DLQ_TOPIC = "dlq.source.topic"
DLQ_PARTITION = "dlq.source.partition"
DLQ_OFFSET = "dlq.source.offset"
DEAD_LETTER_HEADERS = (DLQ_REASON, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET)
MAX_REASON_BYTES = 4000

JSON = b"application/json"


def value(headers: Iterable[tuple[str, bytes]] | None, name: str) -> str | None:
    """The first header called ``name``, as text (None when absent)."""
    for key, raw in headers or ():
        if key == name:
            return raw.decode("utf-8", "replace")
    return None


def int_value(headers: Iterable[tuple[str, bytes]] | None, name: str) -> int | None:
    """``value`` as an integer; None when absent or not an integer."""
    text = value(headers, name)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def selection(
    *,
    decision_id: str,
    schema_version: str,
    trace_id: str | None,
    source: tuple[int, int] | None = None,
    source_timestamp: int | None = None,
    warm_start: bytes | None = None,
) -> Headers:
    """The headers of a seed.selected record: the event headers, its decision id, the graft.requested record it
    answers (partition, offset, timestamp) and, when the decision registered new seeds, their warm start."""
    out = [
        (EVENT_TYPE, b"seed.selected"),
        (SCHEMA_VERSION, schema_version.encode()),
        (CONTENT_TYPE, JSON),
        (DECISION_ID, decision_id.encode()),
    ]
    if trace_id:
        out.append((TRACE_ID, trace_id.encode()))
    if source is not None:
        out += [(SOURCE_PARTITION, b"%d" % source[0]), (SOURCE_OFFSET, b"%d" % source[1])]
    if source_timestamp is not None:
        out.append((SOURCE_TIMESTAMP, b"%d" % source_timestamp))
    if warm_start is not None:
        out.append((WARM_START, warm_start))
    return tuple(out)


def dead_letter(
    original: Iterable[tuple[str, bytes]] | None, *, reason: str, topic: str, partition: int, offset: int
) -> Headers:
    """The original headers without earlier ``dlq.*`` ones, then the reason and the source record."""
    kept = [(k, v) for k, v in original or () if not k.startswith(DLQ_PREFIX)]
    return tuple(kept) + (
        (DLQ_REASON, reason.encode()[:MAX_REASON_BYTES]),
        (DLQ_TOPIC, topic.encode()),
        (DLQ_PARTITION, b"%d" % partition),
        (DLQ_OFFSET, b"%d" % offset),
    )


def dead_letter_source(headers: Iterable[tuple[str, bytes]] | None) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the record a dead letter stands for; None when a header is missing."""
    topic = value(headers, DLQ_TOPIC)
    p, o = int_value(headers, DLQ_PARTITION), int_value(headers, DLQ_OFFSET)
    return None if topic is None or p is None or o is None else (topic, p, o)


def to_blob(headers: Iterable[tuple[str, bytes]]) -> bytes:
    return orjson.dumps([[k, v.decode("latin-1")] for k, v in headers])


def from_blob(blob: bytes) -> Headers:
    return tuple((k, v.encode("latin-1")) for k, v in orjson.loads(blob))
