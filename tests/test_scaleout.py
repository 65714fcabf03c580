"""Several workers in one consumer group, each with its own store, on the in-memory bus (seedworker.engine.ownership).

The MemoryBus members share the topics and the group's commits; ``assign`` moves partitions as Kafka's eager
rebalance does. Checked: whose state of a partition is current; a partition taken over is rebuilt from the topics;
a worker that stored a batch but could not publish it does not publish it once another worker has taken its
partitions over (nor when it gets them back), but does when nobody did; a claim that does not go through pauses the
partitions; strategy switches reach every worker. In every scenario the union of the owners' states equals the
state computed independently from the logged decisions and outcomes, and every request is answered once.

The same on the real broker, with worker processes: tests/test_scaleout_kafka.py.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path

import pytest

from seedworker.broker.base import BusError, Committed
from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.core.config import Settings, Topics
from seedworker.core.selector import SeedSelector
from seedworker.engine.ownership import co_partitioned, own_state_current
from seedworker.engine.worker import Worker
from seedworker.store.readers import read_all
from tests.support import T0, FlakyBus, assert_state_equal, outcome
from tests.support import training_request as request

REQUESTS, OUTCOMES, SELECTIONS, CONTROL = "graft.requested", "adaptation.outcome", "seed.selected", "seedworker.control"
PARTITIONS = 4
BLUEPRINTS = [f"bp-{b}" for b in range(8)]
TOPICS = Topics()


def partition_of(bp: str) -> int:
    return zlib.crc32(bp.encode()) % PARTITIONS  # the MemoryBus's partitioner


def gain(s: ev.SeedSelected) -> float:
    return 0.02 * s.seed_idx + (0.05 if s.seed_idx == int(s.blueprint_id[3:]) % 4 else 0.0)


class Group:
    """Workers on members of one MemoryBus group, and a Tamiyo that answers every new selection with an outcome."""

    def __init__(self, tmp_path: Path, **settings):
        self.tmp_path, self.settings = tmp_path, settings
        self.bus = MemoryBus()
        self.workers: dict[str, Worker] = {}
        self.sent: dict[str, str] = {}  # request id -> blueprint
        self.answered: set[str] = set()  # decision ids Tamiyo sent an outcome for
        self.read = 0  # selections read so far

    async def create_topics(self) -> None:
        await self.bus.ensure_topics({REQUESTS: PARTITIONS, OUTCOMES: PARTITIONS})

    def settings_of(self, name: str) -> Settings:
        return Settings(
            db=str(self.tmp_path / f"{name}.sqlite"),
            kafka={"partitions": PARTITIONS, "output_partitions": PARTITIONS},
            **self.settings,
        )

    async def join(self, name: str, assignment, bus: MemoryBus | None = None) -> Worker:
        if bus is None:
            bus = self.bus.member(assignment)
        else:
            bus.assignment = set(assignment)
        w = self.workers[name] = Worker(self.settings_of(name), bus=bus)
        await w.start()
        return w

    async def leave(self, name: str) -> None:
        await self.workers.pop(name).close()

    def requests(self, ids: range) -> None:
        for i in ids:
            bp = BLUEPRINTS[i % len(BLUEPRINTS)]
            self.sent[f"req-{i}"] = bp
            self.bus.produce(REQUESTS, bp.encode(), request(i, bp))

    def produced(self, topic: str) -> list:
        """The records of a topic in the order they were produced (a MemoryBus record's timestamp)."""
        return sorted(self.bus.read(topic), key=lambda m: m.timestamp_ms)

    def tamiyo(self) -> int:
        """An outcome for each decision answered for the first time."""
        new = self.produced(SELECTIONS)[self.read :]
        self.read += len(new)
        n = 0
        for m in new:
            s = ev.decode(m.value)
            if s.decision_id not in self.answered:
                self.answered.add(s.decision_id)
                self.bus.produce(OUTCOMES, s.blueprint_id.encode(), outcome(s, gain(s)))
                n += 1
        return n

    async def pump(self) -> None:
        """Every worker processes what it is assigned, Tamiyo answers, until nothing moves."""
        while True:
            moved = 0
            for w in self.workers.values():
                messages = await w.bus.poll(1, 100)
                if messages:
                    await w.process(messages)
                    moved += len(messages)
            moved += self.tamiyo()
            if not moved:
                return

    async def close(self) -> None:
        for name in list(self.workers):
            await self.leave(name)

    def check(self, owners: dict[int, str]) -> None:
        """Every request answered, all copies of an answer alike; the owners' stored offsets at the ends of their
        partitions; the union of their states equals the one computed from the logged decisions and outcomes."""
        first: dict[str, ev.SeedSelected] = {}
        copies: dict[str, set[bytes]] = defaultdict(set)
        for m in self.bus.read(SELECTIONS):
            s = ev.decode(m.value)
            first.setdefault(s.decision_id, s)
            copies[s.decision_id].add(m.value)
        assert {s.request_id for s in first.values()} == set(self.sent)
        assert all(len(values) == 1 for values in copies.values()), "one decision id with different answers"
        independent = SeedSelector(self.settings_of("independent"))
        for s in first.values():  # each blueprint's selections in the order of its partition
            independent.apply_selection(s)
        learned = set()
        for m in self.bus.read(OUTCOMES):
            o = ev.decode(m.value)
            if o.resolved_decision_id not in learned:
                learned.add(o.resolved_decision_id)
                independent.learn(first[o.resolved_decision_id], o)
        assert learned == set(first)
        for m in self.produced(CONTROL):  # a switch changes no statistics, only the strategy a blueprint uses
            sw = ev.decode(m.value)
            independent.switch_strategy(sw.strategy, sw.blueprint_id)
        stores = {name: read_all(self.settings_of(name).db) for name in set(owners.values())}
        for p, name in owners.items():
            for topic in (REQUESTS, OUTCOMES):
                assert stores[name]["offsets"].get((topic, p), 0) == len(self.bus.topics[topic][p]), (name, topic, p)
        for bp, state in independent.blueprints.items():
            got = stores[owners[partition_of(bp)]]["blueprints"][bp]
            assert_state_equal(got, state.to_dict(), bp)


@pytest.fixture
def blueprints_spread():
    assert {partition_of(bp) for bp in BLUEPRINTS} == set(range(PARTITIONS))


# -- whose state is current ------------------------------------------------------------------------------------------
def test_own_state_is_current_only_when_nobody_else_committed_since():
    stored = {(REQUESTS, 0): 10, (OUTCOMES, 0): 7}

    def verdict(committed: dict) -> bool:
        return own_state_current(0, TOPICS, stored, committed, "me")[0]

    assert verdict({})  # nobody committed yet: the store is trusted
    assert verdict({(REQUESTS, 0): Committed(10, "me"), (OUTCOMES, 0): Committed(7, "me")})
    # killed before its group commit caught up with its store: the batches after it are still its own
    assert verdict({(REQUESTS, 0): Committed(4, "me"), (OUTCOMES, 0): Committed(2, "me")})
    assert verdict({(REQUESTS, 0): Committed(10, "")})  # a commit without an owner (older seedworker)
    assert not verdict({(REQUESTS, 0): Committed(10, "me"), (OUTCOMES, 0): Committed(7, "other")})
    assert not verdict({(REQUESTS, 0): Committed(3, "other"), (OUTCOMES, 0): Committed(1, "other")})
    assert not verdict({(REQUESTS, 0): Committed(11, "me")})  # the store lost batches it had committed
    assert "other" in own_state_current(0, TOPICS, stored, {(REQUESTS, 0): Committed(3, "other")}, "me")[1]


def test_an_assignment_must_be_co_partitioned():
    assert co_partitioned([(REQUESTS, 2), (OUTCOMES, 2), (REQUESTS, 0), (OUTCOMES, 0)], TOPICS) == [0, 2]
    with pytest.raises(BusError, match="co-partition|outcomes"):
        co_partitioned([(REQUESTS, 1), (OUTCOMES, 2)], TOPICS)


# -- partitions moving between workers -------------------------------------------------------------------------------
async def test_partitions_moving_between_workers_keep_one_consistent_state(tmp_path, blueprints_spread):
    g = Group(tmp_path)
    await g.create_topics()
    a = await g.join("a", {0, 1})
    b = await g.join("b", {2, 3})
    try:
        g.requests(range(0, 48))
        await g.pump()
        g.check({0: "a", 1: "a", 2: "b", 3: "b"})
        assert a.counters["rebuilt_partitions"] == b.counters["rebuilt_partitions"] == 0

        # b leaves, a owns everything: 2 and 3 are rebuilt from the topics (b committed them on revocation)
        await g.leave("b")
        await a.bus.assign(range(PARTITIONS))
        assert a.counters["rebuilt_partitions"] == 2
        g.requests(range(48, 80))
        await g.pump()
        g.check(dict.fromkeys(range(PARTITIONS), "a"))

        # b comes back with its old store and gets 2 and 3 again: a processed them meanwhile, so they are stale
        await a.bus.assign({0, 1})
        b = await g.join("b", {2, 3})
        assert b.counters["rebuilt_partitions"] == 2
        # a keeps 0 and 1 without a rebuild: nobody else processed them
        assert a.counters["rebuilt_partitions"] == 2
        g.requests(range(80, 120))
        await g.pump()
        g.check({0: "a", 1: "a", 2: "b", 3: "b"})

        # a partition moves from b to a and back within the group: a rebuilds 3, then b rebuilds 3
        await a.bus.assign({0, 1, 3})
        await b.bus.assign({2})
        g.requests(range(120, 140))
        await g.pump()
        await a.bus.assign({0, 1})
        await b.bus.assign({2, 3})
        g.requests(range(140, 160))
        await g.pump()
        assert (a.counters["rebuilt_partitions"], b.counters["rebuilt_partitions"]) == (3, 3)
        g.check({0: "a", 1: "a", 2: "b", 3: "b"})
        # the group's commits name the owners
        assert {p: g.bus.owners[(REQUESTS, p)] for p in range(PARTITIONS)} == {
            0: a.worker_id,
            1: a.worker_id,
            2: b.worker_id,
            3: b.worker_id,
        }
        # counters count what each worker did: together every decision and outcome once
        assert a.counters["decisions"] + b.counters["decisions"] >= 160  # b's first store decided 0..47 of 2, 3
    finally:
        await g.close()


@pytest.mark.parametrize("back", [(2, 3), (0, 1)], ids=["its-old-partitions", "other-partitions"])
async def test_stale_unsent_answers_are_dropped_not_published(tmp_path, blueprints_spread, back):
    """b stores a batch but cannot publish it and stops; a takes b's partitions over and answers those requests
    itself (from the topics, where b's answers are missing). When b comes back it must not publish its stored
    answers, whether it gets those partitions back or others: one decision id could get two different answers."""
    g = Group(tmp_path)
    await g.create_topics()
    a = await g.join("a", {0, 1})
    flaky = FlakyBus(
        topics=g.bus.topics, committed=g.bus.committed, owners=g.bus.owners, clock=g.bus.clock, fenced=g.bus.fenced
    )
    b = await g.join("b", {2, 3}, bus=flaky)
    try:
        g.requests(range(0, 40))
        await g.pump()
        flaky.fail_sends = True
        g.requests(range(40, 64))
        with pytest.raises(BusError, match="broker gone"):
            await g.pump()
        unsent = b.store and len(await b.store.unsent())
        assert unsent > 0
        await g.leave("b")

        await a.bus.assign(range(PARTITIONS))  # b is gone
        await g.pump()
        assert a.counters["rebuilt_partitions"] == 2

        # b comes back: whichever partitions it gets are stale (a processed all of them), and its unsent rows of 2
        # and 3 are superseded
        rest = set(range(PARTITIONS)) - set(back)
        await a.bus.assign(rest)
        b = await g.join("b", back)
        assert b.counters["rebuilt_partitions"] == 2
        assert b.counters["superseded_outbox_rows"] == unsent
        assert await b.store.unsent() == []
        g.requests(range(64, 96))
        await g.pump()
        g.check({**dict.fromkeys(back, "b"), **dict.fromkeys(rest, "a")})
        assert len(g.bus.read(SELECTIONS)) == 96  # one answer per request: nothing of b's stale batch went out
    finally:
        await g.close()


async def test_unsent_answers_go_out_when_nobody_took_the_partitions_over(tmp_path, blueprints_spread):
    g = Group(tmp_path)
    await g.create_topics()
    await g.join("a", {0, 1})
    flaky = FlakyBus(
        topics=g.bus.topics, committed=g.bus.committed, owners=g.bus.owners, clock=g.bus.clock, fenced=g.bus.fenced
    )
    b = await g.join("b", {2, 3}, bus=flaky)
    try:
        g.requests(range(0, 24))
        flaky.fail_sends = True
        with pytest.raises(BusError):
            await g.pump()
        stored = [row.message.value for row in await b.store.unsent() if row.message.topic == SELECTIONS]
        assert stored
        await g.leave("b")
        flaky.fail_sends = False
        b = await g.join("b", {2, 3}, bus=flaky)  # its own partitions back, nobody touched them: current
        assert b.counters["rebuilt_partitions"] == 0
        published = [m.value for m in g.bus.read(SELECTIONS)]
        # Byte for byte; the outbox's order across partitions is the batch's (by time), the republication's by
        # partition, so compared as a multiset.
        assert sorted(published[-len(stored) :]) == sorted(stored)
        await g.pump()
        g.check({0: "a", 1: "a", 2: "b", 3: "b"})
    finally:
        await g.close()


async def test_a_partition_stays_paused_until_its_claim_goes_through(tmp_path, blueprints_spread):
    class Refusing(MemoryBus):
        refuse = True

        async def commit(self, offsets, owner=""):
            return False if self.refuse else await super().commit(offsets, owner)

    g = Group(tmp_path)
    await g.create_topics()
    bus = Refusing(topics=g.bus.topics, committed=g.bus.committed, owners=g.bus.owners, clock=g.bus.clock)
    w = await g.join("a", range(PARTITIONS), bus=bus)
    try:
        g.requests(range(8))
        assert w._unclaimed and await bus.poll(1, 100) == []  # nothing of an unclaimed partition is read
        bus.refuse = False
        await w._claim_again()
        assert not w._unclaimed
        await g.pump()
        g.check(dict.fromkeys(range(PARTITIONS), "a"))
    finally:
        await g.close()


async def test_every_worker_applies_every_strategy_switch(tmp_path, blueprints_spread):
    g = Group(tmp_path, default_strategy="thompson")
    await g.create_topics()
    a = await g.join("a", {0, 1})
    b = await g.join("b", {2, 3})
    try:
        g.requests(range(16))
        await g.pump()
        on_b = next(bp for bp in BLUEPRINTS if partition_of(bp) in (2, 3))
        g.bus.produce(CONTROL, None, ev.encode(ev.StrategySwitch(strategy="ucb", occurred_at=T0)))
        g.bus.produce(
            CONTROL, None, ev.encode(ev.StrategySwitch(strategy="epsilon-greedy", blueprint_id=on_b, occurred_at=T0))
        )
        await g.pump()
        for w in (a, b):
            assert w.counters["strategy_switches"] == 2
            assert w.selector.default_strategy == "ucb"
            assert w.selector.blueprints[on_b].strategy == "epsilon-greedy"
        # a takes b's partitions over: the rebuilt blueprint keeps the switched strategy
        await g.leave("b")
        await a.bus.assign(range(PARTITIONS))
        assert a.counters["rebuilt_partitions"] == 2
        g.requests(range(16, 32))
        await g.pump()
        later = [ev.decode(m.value) for m in g.produced(SELECTIONS)][-16:]
        assert {s.strategy for s in later if s.blueprint_id == on_b} == {"epsilon-greedy"}
        assert {s.strategy for s in later if s.blueprint_id != on_b} == {"ucb"}
        assert read_all(g.settings_of("a").db)["blueprints"][on_b]["strategy"] == "epsilon-greedy"
        g.check(dict.fromkeys(range(PARTITIONS), "a"))
    finally:
        await g.close()
