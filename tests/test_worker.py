"""Worker behaviour: the same code path on the in-memory bus as on Kafka, minus the network.

The first tests run once per bus (the ``bus`` fixture of tests/support_buses.py: ``[memory]`` and, marked ``kafka``,
``[kafka]`` on the real broker): end to end request -> selection -> outcome -> learned, the dead-letter topic, the
co-partitioning refusal. The rest are in-memory scenarios; what only a broker has (a worker process SIGKILLed
mid-stream, compressed input) is in test_worker_kafka.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3

import orjson
import pytest

from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.config import ConfigError, Settings
from seedworker.engine.worker import Worker
from seedworker.store.readers import read_all
from seedworker.store.store import Store
from tests.support import check_selection, distinct_requests, drain, eventually, headers_of, outcome, selections
from tests.support import training_request as request
from tests.support_buses import bus, bus_backend  # noqa: F401 (fixtures)


# -- on both buses --------------------------------------------------------------------------------------------------
async def test_requests_are_answered_and_outcomes_learned(bus):
    """One answer per request, in order, keyed by its blueprint, with its headers and a propensity; every seed is
    tried once first; the outcomes are learned; learning shifts the later selections to the clearly better seed."""
    rng = random.Random(7)
    bp, k, best = "bp-e2e", 4, 2
    await bus.create_topics()
    settings = bus.settings()
    sent: dict[str, str] = {}
    async with bus.running(settings) as (worker, task):

        async def ask(indices) -> list[ev.SeedSelected]:
            for i in indices:
                await bus.send("requests", request(i, bp, k), bp.encode())
                sent[f"req-{i}"] = bp
            await bus.flush()
            want = {f"req-{i}" for i in indices}
            records = await bus.until(
                "selections", lambda rs: want <= distinct_requests(rs), f"answers to {len(want)} requests"
            )
            return [check_selection(r, sent) for r in records if orjson.loads(r.value)["request_id"] in want]

        first = await ask(range(40))
        assert [s.request_id for s in first] == [f"req-{i}" for i in range(40)]  # one answer per request, in order
        assert {s.seed_idx for s in first[:k]} == set(range(k))  # burn-in: every seed is tried once first
        for s in first:
            gain = (0.3 if s.seed_idx == best else 0.0) + rng.gauss(0.0, 0.02)
            await bus.send("outcomes", outcome(s, gain), bp.encode())
        await bus.flush()
        await eventually(
            lambda: worker.counters["outcomes_learned"] == 40, "40 outcomes learned", detail=lambda: repr(worker)
        )

        later = await ask(range(40, 100))
        assert len(later) == 60
        share = sum(s.seed_idx == best for s in later) / len(later)
        assert share >= 0.8, f"the clearly better seed got only {share:.0%} of the later selections"
        print(f"end to end ({bus.name}): the better seed got {share:.0%} of the selections after learning")
        assert not task.done()
    # after a clean stop: exactly one answer per request, nothing else on the topic
    records = await bus.to_end("selections")
    assert len(records) == 100 and len(distinct_requests(records)) == 100
    state = read_all(settings.db)
    c = state["counters"]
    assert (c["decisions"], c["outcomes_learned"], c.get("dead_letters", 0)) == (100, 40, 0)
    assert state["blueprints"][bp]["arms"]["pulls"].sum() == 40


# Odd input, each shape once: (input kind, value, expected fragment of dlq.reason; b"": any reason).
ODD_INPUT = [
    ("requests", b"\xff\xfe", b""),
    ("requests", b"not json", b""),
    ("requests", b"[1,2]", b""),
    ("requests", b'{"event_type":"graft.requested","schema_version":"2.0"}', b""),
    ("requests", b'{"event_type":"graft.requested","request_id":"x","blueprint_id":"b","seeds":[]}', b""),
    (
        "requests",
        b'{"event_type":"graft.requested","request_id":"x","blueprint_id":"b",'
        b'"seeds":[{"seed_id":"a","seed_idx":0}],"context":{"current_loss":NaN}}',
        b"",
    ),
    (
        "outcomes",
        b'{"event_type":"adaptation.outcome","blueprint_id":"b","seed_id":"a","request_id":"r","latency_ms":-1}',
        b"latency_ms",
    ),
]


def bad_message(kind: int, i: int, rng: random.Random) -> tuple[str, bytes, bytes]:
    """(input kind, value, expected fragment of dlq.reason)"""
    base = orjson.loads(request(10_000 + i, "bp-bad"))
    if kind == 0:
        return "requests", b"\xff\xfe" + rng.randbytes(12), b"invalid JSON"
    if kind == 1:
        return "requests", b'{"event_type": "graft.requested", "request_id": "r' + str(i).encode(), b"invalid JSON"
    if kind == 2:
        return "requests", orjson.dumps({**base, "schema_version": "2.0"}), b"major version"
    if kind == 3:
        return "requests", json.dumps({**base, "context": {"current_loss": float("nan")}}).encode(), b"current_loss"
    if kind == 4:
        return "requests", orjson.dumps({**base, "seeds": []}), b"seeds"
    if kind == 5:
        return (
            "requests",
            orjson.dumps({**base, "seeds": [{"seed_id": f"s{j}", "seed_idx": j} for j in range(300)]}),
            b"seeds",
        )
    return (
        "outcomes",
        json.dumps(
            {
                "event_type": "adaptation.outcome",
                "blueprint_id": "bp-bad",
                "seed_id": "s0",
                "request_id": f"req-{i}",
                "latency_ms": -5.0,
            }
        ).encode(),
        b"latency_ms",
    )


async def test_bad_input_goes_to_the_dead_letter_topic(bus):
    """A flood of bad input mixed with good: every bad record becomes exactly one dead letter (its key, value and
    headers, the source topic/partition/offset, the reason), every good request is answered, the worker keeps going."""
    rng = random.Random(3)
    await bus.create_topics()
    settings = bus.settings()
    messages = (
        [("good", i) for i in range(100)]
        + [("bad", i) for i in range(300)]
        + [("odd", j) for j in range(len(ODD_INPUT))]
    )
    rng.shuffle(messages)
    n_bad = 300 + len(ODD_INPUT)
    bad: dict[tuple[str, int, int], tuple] = {}  # (topic, partition, offset) -> (key, value, headers, reason)
    sent: dict[str, str] = {}
    async with bus.running(settings) as (worker, task):
        pending = []
        for what, i in messages:
            if what == "good":
                bp = f"bp-{i % 4}"
                sent[f"req-{i}"] = bp
                await bus.send("requests", request(i, bp), bp.encode())
                continue
            if what == "bad":
                kind, value, reason = bad_message(i % 7, i, rng)
                key, headers = f"bad-{i}".encode(), (("origin", bytes([i % 256, 255, 0])),)
            else:
                kind, value, reason = ODD_INPUT[i]
                key, headers = f"odd-{i}".encode(), (("h", bytes([i, 255])),)
            pending.append((await bus.send(kind, value, key, headers), (key, value, headers, reason)))
        for fut, original in pending:
            bad[await fut] = original
        await bus.until("dead_letters", lambda rs: len(rs) >= n_bad, f"{n_bad} dead letters")
        await bus.until("selections", lambda rs: len(distinct_requests(rs)) >= 100, "100 selections")
        assert not task.done(), "the worker stopped"
        assert (worker.counters["dead_letters"], worker.counters["decisions"]) == (n_bad, 100)
    # stopped cleanly: now nothing more can appear on either topic
    selected, dead = await bus.to_end("selections"), await bus.to_end("dead_letters")
    assert len(selected) == 100
    for r in selected:
        check_selection(r, sent)
    assert distinct_requests(selected) == set(sent)
    assert len(dead) == n_bad
    seen = set()
    for r in dead:
        h = headers_of(r)
        src = (h["dlq.source.topic"].decode(), int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        assert src in bad, f"dead letter from {src} is not one of the bad messages"
        assert src not in seen, f"{src} dead-lettered twice"
        seen.add(src)
        key, value, headers, reason = bad[src]
        assert r.key == key and r.value == value
        for name, original in headers:
            assert h[name] == original  # the original headers travel along
        assert h["dlq.reason"] and reason in h["dlq.reason"], (reason, h["dlq.reason"])
    assert seen == set(bad)
    assert read_all(settings.db)["counters"]["dead_letters"] == n_bad


async def test_refuses_to_start_without_co_partitioning(bus):
    await bus.create_topics(requests=2, outcomes=3)
    with pytest.raises(ConfigError, match="co-partitioning"):
        await bus.worker(bus.settings()).start()


# -- on the in-memory bus -------------------------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path):
    return Settings(db=str(tmp_path / "state.sqlite"), kafka={"partitions": 2})


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
    bus.produce(
        "adaptation.outcome",
        b"bp",
        ev.encode(
            ev.AdaptationOutcome(
                request_id="req-2",
                blueprint_id="bp",
                seed_id="layer3:0",
                accuracy_delta=0.1,
                occurred_at=early.occurred_at,
            )
        ),
    )
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
    bus.produce(
        "adaptation.outcome",
        b"bp",
        ev.encode(
            ev.AdaptationOutcome(
                request_id="req-1", blueprint_id="bp", seed_id=other, accuracy_delta=0.5, occurred_at=s.request_time
            )
        ),
    )
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


class GatedBus(MemoryBus):
    """A memory bus whose first publish of answers waits for ``gate``; it records what happened, in order."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = asyncio.Event()
        self.log: list[tuple] = []  # ("send", first and last source offset, done?) and ("commit", offsets)
        self.sent_offsets = 0  # the request offsets whose answers Kafka has

    async def send(self, messages, *, owner=None) -> None:
        batch = list(messages)
        sources = [hdr.int_value(m.headers, hdr.SOURCE_OFFSET) for m in batch if m.topic == "seed.selected"]
        if not sources:  # a partition's changelog snapshot at assignment
            return await super().send(batch, owner=owner)
        self.log.append(("send", min(sources), max(sources), "start"))
        if len([e for e in self.log if e[0] == "send"]) == 1:
            await self.gate.wait()
        await super().send(batch, owner=owner)
        self.sent_offsets = max(sources) + 1
        self.log.append(("send", min(sources), max(sources), "done"))

    async def commit(self, offsets, owner: str = "") -> bool:
        requests = offsets.get(("graft.requested", 0))
        # The group commit never runs ahead of what Kafka has.
        assert requests is None or requests <= self.sent_offsets, (requests, self.sent_offsets, self.log)
        self.log.append(("commit", requests))
        return await super().commit(offsets, owner)


async def test_a_batch_is_stored_while_the_previous_one_is_published_and_published_after_it(tmp_path):
    """The poll loop publishes a batch beside the next one (Worker.process(wait=False)): while batch 1's
    transaction waits for Kafka, batch 2 is decided and stored, but its publish starts only once batch 1's is done;
    the group commit never includes offsets whose answers Kafka does not have; every request is answered once, in
    offset order."""
    settings = Settings(db=str(tmp_path / "s.sqlite"), kafka={"partitions": 1, "max_batch": 5})
    bus = GatedBus()
    await bus.ensure_topics({"graft.requested": 1, "adaptation.outcome": 1})
    for i in range(17):
        bus.produce("graft.requested", b"bp", request(i, "bp"))
    worker = Worker(settings, bus=bus, burst=True, idle_polls=1)
    run = asyncio.create_task(worker.run())

    def stored() -> int:
        if not worker.ready.is_set():
            return 0  # the store may not exist yet
        return read_all(tmp_path / "s.sqlite")["counters"].get("decisions", 0)

    await eventually(lambda: stored() >= 10, "batch 2 stored while batch 1 is being published", timeout=30)
    assert [e for e in bus.log if e[0] == "send"] == [("send", 0, 4, "start")]  # batch 2 waits for batch 1
    bus.gate.set()
    await asyncio.wait_for(run, 30)
    sends = [(e[1], e[2]) for e in bus.log if e[0] == "send" and e[3] == "done"]
    assert sends == [(0, 4), (5, 9), (10, 14), (15, 16)]
    starts = [i for i, e in enumerate(bus.log) if e[0] == "send" and e[3] == "start"]
    dones = [i for i, e in enumerate(bus.log) if e[0] == "send" and e[3] == "done"]
    assert all(done < start for done, start in zip(dones, starts[1:]))  # one publish at a time, in batch order
    answers = [ev.decode(m.value).request_id for m in bus.read("seed.selected")]
    assert answers == [f"req-{i}" for i in range(17)]
    assert bus.committed[("graft.requested", 0)] == 17
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)  # every publish acknowledged, marked
