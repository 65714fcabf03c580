"""Worker behaviour on the in-memory bus: the same code path as on Kafka, minus the network.

The real-broker versions of these scenarios are in test_worker_kafka.py.
"""

from __future__ import annotations

import json

import pytest

from seedworker.contract import events as ev
from seedworker.broker.memory import MemoryBus
from seedworker.core.config import ConfigError, Settings
from seedworker.store.readers import read_all
from seedworker.store.store import Store
from seedworker.engine.worker import Worker
from tests.support import drain, outcome, selections
from tests.support import training_request as request


@pytest.fixture
def settings(tmp_path):
    return Settings(db=str(tmp_path / "state.sqlite"), kafka={"partitions": 2})


async def test_requests_are_answered_and_outcomes_learned(settings):
    bus = MemoryBus()
    await bus.ensure_topics({"graft.requested": 2, "adaptation.outcome": 2})
    for i in range(20):
        bus.produce("graft.requested", b"bp", request(i))
    await drain(settings, bus)
    sel = selections(bus)
    assert [s.request_id for s in sel] == [f"req-{i}" for i in range(20)]
    assert {s.seed_id for s in sel[:4]} == {f"layer3:{j}" for j in range(4)}  # untried first
    for s in sel:
        bus.produce("adaptation.outcome", b"bp", outcome(s, 0.05 if s.seed_idx == 2 else 0.0))
    w = await drain(settings, bus)
    assert w.counters["outcomes_learned"] == 20
    state = read_all(settings.db)
    arms = state["blueprints"]["bp"]["arms"]
    assert arms["pulls"].sum() == 20
    assert state["counters"]["decisions"] == 20


async def test_restart_resumes_from_stored_offsets_without_double_counting(settings):
    bus = MemoryBus()
    await bus.ensure_topics({"graft.requested": 2, "adaptation.outcome": 2})
    for i in range(10):
        bus.produce("graft.requested", b"bp", request(i))
    await drain(settings, bus)
    for s in selections(bus):
        bus.produce("adaptation.outcome", b"bp", outcome(s, 0.01))
    await drain(settings, bus)
    bus.committed.clear()  # Kafka's group offsets are not the truth; SQLite's are
    w = await drain(settings, bus)
    assert w.counters["outcomes_learned"] == 10
    assert len(selections(bus)) == 10
    assert read_all(settings.db)["blueprints"]["bp"]["arms"]["pulls"].sum() == 10


async def test_duplicates_unknown_and_retried_requests(settings):
    bus = MemoryBus()
    await bus.ensure_topics({"graft.requested": 2, "adaptation.outcome": 2})
    bus.produce("graft.requested", b"bp", request(1))
    await drain(settings, bus)
    (s,) = selections(bus)
    # outcome twice (distinct event ids), an outcome for a decision that only comes later, a retried request
    bus.produce("adaptation.outcome", b"bp", outcome(s, 0.02))
    bus.produce("adaptation.outcome", b"bp", outcome(s, 0.02))
    # Request 2 offers one candidate, so its decision (and the early outcome's seed) is known before it is made.
    early = ev.GraftRequested.model_validate(json.loads(request(2, k=1)))
    bus.produce("adaptation.outcome", b"bp", ev.encode(ev.AdaptationOutcome(
        request_id="req-2", blueprint_id="bp", seed_id="layer3:0", accuracy_delta=0.1,
        occurred_at=early.occurred_at)))
    bus.produce("graft.requested", b"bp", request(1))
    w = await drain(settings, bus)
    assert w.counters["duplicate_outcomes"] == 1
    assert w.counters["held_outcomes"] == 1
    assert w.counters["duplicate_requests"] == 1
    again = selections(bus)
    assert len(again) == 2 and again[1].model_dump() == again[0].model_dump()
    bus.produce("graft.requested", b"bp", request(2, k=1))
    w = await drain(settings, bus)
    assert w.counters["outcomes_learned"] == 2  # the held outcome joined its late decision


async def test_bad_input_goes_to_the_dead_letter_topic(settings):
    bus = MemoryBus()
    await bus.ensure_topics({"graft.requested": 2, "adaptation.outcome": 2})
    bad = [b"\xff\xfe", b"not json", b"[1,2]", b'{"event_type":"graft.requested","schema_version":"2.0"}',
           b'{"event_type":"graft.requested","request_id":"x","blueprint_id":"b","seeds":[]}',
           b'{"event_type":"graft.requested","request_id":"x","blueprint_id":"b",'
           b'"seeds":[{"seed_id":"a","seed_idx":0}],"context":{"current_loss":NaN}}']
    for i, value in enumerate(bad):
        bus.produce("graft.requested", b"k", value, (("h", bytes([i, 255])),))
        bus.produce("graft.requested", b"bp", request(i))
    bus.produce("adaptation.outcome", b"bp", b'{"event_type":"adaptation.outcome","blueprint_id":"b","seed_id":"a",'
                                             b'"request_id":"r","latency_ms":-1}')
    w = await drain(settings, bus)
    dlq = bus.read("seedworker.dlq")
    assert len(dlq) == len(bad) + 1 == w.counters["dead_letters"]
    assert len(selections(bus)) == len(bad)
    by_value = {m.value: dict(m.headers) for m in dlq}
    for i, value in enumerate(bad):
        h = by_value[value]
        assert h["h"] == bytes([i, 255])
        assert h["dlq.source.topic"] == b"graft.requested" and h["dlq.reason"]
    (from_outcomes,) = [dict(m.headers) for m in dlq if dict(m.headers)["dlq.source.topic"] == b"adaptation.outcome"]
    assert b"latency_ms" in from_outcomes["dlq.reason"]


async def test_refuses_to_start_without_co_partitioning(settings):
    bus = MemoryBus()
    await bus.ensure_topics({"graft.requested": 2, "adaptation.outcome": 3})
    with pytest.raises(ConfigError, match="co-partitioning"):
        await Worker(settings, bus=bus).start()


async def test_store_file_is_private(settings):
    store = await Store(settings.db).open()
    await store.close()
    import os
    assert os.stat(settings.db).st_mode & 0o777 == 0o600


async def test_outcome_for_another_seed_is_not_credited_to_the_chosen_one(settings):
    bus = MemoryBus()
    await bus.ensure_topics({"graft.requested": 2, "adaptation.outcome": 2})
    bus.produce("graft.requested", b"bp", request(1))
    await drain(settings, bus)
    (s,) = selections(bus)
    other = next(f"layer3:{j}" for j in range(4) if f"layer3:{j}" != s.seed_id)
    bus.produce("adaptation.outcome", b"bp", ev.encode(ev.AdaptationOutcome(
        request_id="req-1", blueprint_id="bp", seed_id=other, accuracy_delta=0.5, occurred_at=s.request_time)))
    w = await drain(settings, bus)
    assert w.counters["mismatched_outcomes"] == 1 and w.counters["outcomes_learned"] == 0
    assert read_all(settings.db)["blueprints"]["bp"]["arms"]["pulls"].sum() == 0


class OutcomesFirstBus(MemoryBus):
    """Polls the outcomes topic before the requests topic, as a Kafka fetch may."""

    async def start(self, topics, on_assign, on_revoke):
        await super().start(sorted(topics, key=lambda t: t != "adaptation.outcome"), on_assign, on_revoke)


async def test_retry_after_its_outcome_in_one_batch_is_not_decided_again(settings):
    bus = OutcomesFirstBus()
    await bus.ensure_topics({"graft.requested": 2, "adaptation.outcome": 2})
    bus.produce("graft.requested", b"bp", request(1))
    await drain(settings, bus)
    (s,) = selections(bus)
    bus.produce("adaptation.outcome", b"bp", outcome(s, 0.02))
    bus.produce("graft.requested", b"bp", request(1))
    w = await drain(settings, bus)
    assert w.counters["decisions"] == 1 and w.counters["duplicate_requests"] == 1
    first, again = bus.read("seed.selected")
    assert first.value == again.value
