"""seedworker.engine.merge: the k-way merge by time that the worker and the replay share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from seedworker.broker.base import Message
from seedworker.contract import headers as hdr
from seedworker.engine.merge import in_time_order, merge_timestamp

TOPICS = ("sel", "ctl", "out")
RANK = {name: i for i, name in enumerate(TOPICS)}

records = st.lists(
    st.tuples(st.sampled_from(TOPICS), st.integers(0, 2), st.integers(0, 50), st.none() | st.integers(0, 50)),
    max_size=40,
)


def _messages(spec) -> list[Message]:
    out, offsets = [], {}
    for topic, p, ts, source_ts in spec:
        o = offsets.get((topic, p), 0)
        offsets[(topic, p)] = o + 1
        headers = () if source_ts is None else ((hdr.SOURCE_TIMESTAMP, b"%d" % source_ts),)
        out.append(Message(topic, p, o, None, b"", headers, ts))
    return out


def _at(m: Message) -> int:
    return merge_timestamp(m.topic, m.timestamp_ms, m.headers, "sel")


@given(records)
def test_a_permutation_that_keeps_every_partition_in_offset_order(spec):
    messages = _messages(spec)
    merged = in_time_order(messages, RANK, "sel")
    assert sorted(merged, key=id) == sorted(messages, key=id)
    for tp in {(m.topic, m.partition) for m in messages}:
        assert [m.offset for m in merged if (m.topic, m.partition) == tp] == sorted(
            m.offset for m in messages if (m.topic, m.partition) == tp
        )
    # Idempotent: merging a merged batch again changes nothing (the replay's batches come merged).
    assert in_time_order(merged, RANK, "sel") == merged


@given(records)
def test_sorted_by_time_then_rank_when_each_partition_is(spec):
    messages = _messages(spec)
    runs = {}
    for m in messages:
        runs.setdefault((m.topic, m.partition), []).append(_at(m))
    if all(ts == sorted(ts) for ts in runs.values()):
        merged = in_time_order(messages, RANK, "sel")
        keys = [(_at(m), RANK[m.topic], m.topic, m.partition, m.offset) for m in merged]
        assert keys == sorted(keys)


def test_a_selection_stands_at_its_request_and_other_topics_at_their_own_time():
    m = Message("sel", 0, 0, None, b"", ((hdr.SOURCE_TIMESTAMP, b"7"),), 99)
    assert merge_timestamp("sel", 99, m.headers, "sel") == 7
    assert merge_timestamp("out", 99, m.headers, "sel") == 99  # the header counts on selections only
    assert merge_timestamp("sel", 99, (), "sel") == 99  # a selection from before the header
