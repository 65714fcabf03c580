"""A Hypothesis state machine over the batch processor: random interleavings of requests, outcomes, duplicates (the
same event id and fresh ones), re-sent and reused request ids, out-of-order, future and missing timestamps, unknown
blueprints, mis-keyed records, extreme values, bad JSON, strategy switches, random batch boundaries, restarts (a new
processor on the same store) and rebuilds of a partition from the published log.

Invariants, checked after every step:
- no exception escapes the processor;
- every processed request is answered (a selection naming it as its source) or dead-lettered, exactly once;
- every processed outcome is dead-lettered, learned, counted (duplicate, late, mismatched, dangling) or held;
- every outcome is learned at most once: the arms hold exactly one pull per learned decision (plus one per default
  reward still standing);
- no decision id has two different answers;
- a rebuild of a partition from the log gives back that partition's state, and at the end a replay of the whole log
  into a fresh store gives the live state.
Seeded (derandomized) and bounded, so it runs the same way in every `make test`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from datetime import timedelta
from pathlib import Path

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from seedworker.broker.base import Message, partition_for
from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.config import Settings
from seedworker.core.join import DANGLING
from seedworker.engine import ownership
from seedworker.engine.processor import Processor
from seedworker.engine.replay import Replay
from seedworker.store import readers
from seedworker.store.readers import read_all
from seedworker.store.rows import dump_state, load_state
from seedworker.store.store import Store
from tests.support import CTL, DLQ, EXACT_STATE, OUT, REQ, SEL, T0, assert_state_equal, replay_order

PARTITIONS = 2
BLUEPRINTS = ["bp-a", "bp-b", "bp-c"]
REQUEST_IDS = [f"r{i}" for i in range(8)]
EXACT = EXACT_STATE  # counts, versions and identities exactly; times of the arms' clocks to 1e-9


class ProcessorMachine(RuleBasedStateMachine):
    join: dict = {"reward_wait_s": 100.0, "hold_unknown_s": 10_000.0}
    default_strategy = "glr-ucb"

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.settings = Settings(
            db=str(Path(self.dir.name) / "live.sqlite"),
            kafka={"partitions": PARTITIONS},
            join=self.join,
            default_strategy=self.default_strategy,
            blueprint_strategies={"bp-c": "linucb"},
        )
        self.bus = MemoryBus()
        changelog = self.settings.kafka.topics.changelog
        self.run(
            self.bus.ensure_topics({REQ: PARTITIONS, OUT: PARTITIONS, SEL: 2, DLQ: 2, CTL: 1, changelog: PARTITIONS})
        )
        self.store = self.run(Store(self.settings.db).open())
        self.processor = self._new_processor()
        self.queue: list[Message] = []
        self.processed: list[Message] = []
        self.published: list[ev.SeedSelected] = []
        self.outcomes_sent: list[bytes] = []
        self.counters_valid = True
        self.pruned: set[str] = set()  # decisions deleted as older than decision_retention_s
        self.pruned_learned = 0  # of which had been learned from
        self.pruned_late = 0  # of which from a late outcome (learn_late)
        self.answers: dict[str, tuple] = {}  # decision id -> its answer, while the decision is kept

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def _new_processor(self) -> Processor:
        p = Processor(self.settings, self.store)
        p.writer = "machine"  # a live worker's processor: its batches carry changelog records
        self.run(p.restore())
        return p

    def teardown(self):
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()
            self.dir.cleanup()

    # -- inputs --------------------------------------------------------------------------------------------------
    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.queue.append(self.bus.produce(topic, key, value))

    @rule(
        bp=st.sampled_from(BLUEPRINTS),
        rid=st.sampled_from(REQUEST_IDS),
        k=st.integers(2, 3),
        t=st.integers(0, 600),
        kind=st.sampled_from(["plain", "plain", "plain", "future", "miskeyed", "extreme", "no-time"]),
    )
    def request(self, bp, rid, k, t, kind):
        context = {"current_loss": 1.0 + t / 100.0}
        if kind == "extreme":
            context = {"current_loss": 1.7e308, "gradient_norm": -1.7e308}
        when = T0 + timedelta(seconds=t) if kind != "future" else T0 + timedelta(days=36500)
        req = ev.GraftRequested(
            request_id=rid,
            blueprint_id=bp,
            occurred_at=when,
            context=context,
            seeds=[ev.SeedCandidate(seed_id=f"s{j}", seed_idx=j) for j in range(k)],
        )
        body = orjson.loads(ev.encode(req))
        if kind == "no-time":
            del body["occurred_at"]
        self._produce(REQ, b"wrong-key" if kind == "miskeyed" else bp.encode(), orjson.dumps(body))

    @precondition(lambda self: self.published)
    @rule(
        data=st.data(),
        dt=st.integers(-5, 300),
        gain=st.floats(-0.5, 0.5),
        kind=st.sampled_from(["chosen", "chosen", "chosen", "other-seed", "miskeyed", "no-time", "huge"]),
    )
    def outcome(self, data, dt, gain, kind):
        s = data.draw(st.sampled_from(self.published))
        seed = s.seed_id
        if kind == "other-seed":
            seed = next(c.seed_id for c in s.scores if c.seed_id != s.seed_id)
        o = ev.AdaptationOutcome(
            decision_id=s.decision_id,
            blueprint_id=s.blueprint_id,
            seed_id=seed,
            accuracy_delta=1e308 if kind == "huge" else gain,
            occurred_at=s.request_time + timedelta(seconds=dt),
        )
        body = orjson.loads(ev.encode(o))
        if kind == "no-time":
            del body["occurred_at"]
        value = orjson.dumps(body)
        self.outcomes_sent.append(value)
        self._produce(OUT, b"wrong-key" if kind == "miskeyed" else s.blueprint_id.encode(), value)

    @precondition(lambda self: self.outcomes_sent)
    @rule(data=st.data())
    def resend_outcome(self, data):
        """The same outcome again, the same event id."""
        value = data.draw(st.sampled_from(self.outcomes_sent))
        self._produce(OUT, ev.decode(value).blueprint_id.encode(), value)  # type: ignore[attr-defined]

    @rule(bp=st.sampled_from(BLUEPRINTS + ["bp-unknown"]), t=st.integers(0, 600))
    def outcome_before_or_without_its_request(self, bp, t):
        rid = f"early-{t % 5}"
        self._produce(
            OUT,
            bp.encode(),
            ev.encode(
                ev.AdaptationOutcome(
                    request_id=rid,
                    blueprint_id=bp,
                    seed_id="s0",
                    accuracy_delta=0.1,
                    occurred_at=T0 + timedelta(seconds=t),
                )
            ),
        )

    @rule(bp=st.sampled_from(BLUEPRINTS), t=st.integers(0, 600))
    def request_after_its_outcome(self, bp, t):
        rid = f"early-{t % 5}"
        self._produce(
            REQ,
            bp.encode(),
            ev.encode(
                ev.GraftRequested(
                    request_id=rid,
                    blueprint_id=bp,
                    occurred_at=T0 + timedelta(seconds=t),
                    seeds=[ev.SeedCandidate(seed_id="s0", seed_idx=0), ev.SeedCandidate(seed_id="s1", seed_idx=1)],
                )
            ),
        )

    @rule(
        strategy=st.sampled_from(["ucb", "thompson", "epsilon-greedy", "discounted-ucb", "no-such"]),
        bp=st.sampled_from([None, *BLUEPRINTS]),
    )
    def switch(self, strategy, bp):
        body = {
            "event_type": "strategy.switch",
            "strategy": strategy,
            "blueprint_id": bp,
            "occurred_at": T0.isoformat(),
        }
        self._produce(CTL, None, orjson.dumps(body))

    @rule(topic=st.sampled_from([REQ, OUT, CTL]), value=st.sampled_from([b"not json", b"{}", b"[1]", b"\xff"]))
    def garbage(self, topic, value):
        self._produce(topic, b"bp-a", value)

    # -- processing ----------------------------------------------------------------------------------------------
    @precondition(lambda self: self.queue)
    @rule(n=st.integers(1, 12))
    def process(self, n):
        batch, self.queue = self.queue[:n], self.queue[n:]
        b = self.run(self.processor.process(batch))
        for bp, row in b.blueprints.items():  # the processor's cached encoding: dump_state's bytes, always
            assert row.state == dump_state(self.processor.selector.blueprints[bp].to_dict()), bp
        if b.pruned:
            # A pruned decision was learned from if what became of it says so: its resolution in this very batch
            # (an outcome can resolve it in the batch that prunes it), else its stored row.
            became = {r.decision_id: (r.status, r.reward) for r in b.resolutions}
            marks = ",".join("?" * len(b.pruned))
            con = sqlite3.connect(self.settings.db)
            try:
                stored = dict(
                    (did, (status, reward))
                    for did, status, reward in con.execute(
                        f"SELECT decision_id, status, reward FROM decisions WHERE decision_id IN ({marks})",
                        tuple(b.pruned),
                    )
                )
            finally:
                con.close()
            for did in b.pruned:
                status, reward = became.get(did) or stored.get(did, ("pending", None))
                self.pruned_learned += status in ("resolved", "late") or (status == "expired" and reward is not None)
                self.pruned_late += status == "late"
            self.pruned |= set(b.pruned)
        self.run(self.store.write(b))
        for row in b.outbox:  # published, as the worker does once the batch is stored
            m = self.bus.produce(row.topic, row.key, row.value, row.headers, row.partition)
            if row.topic == SEL:
                s = ev.decode(m.value)
                self.published.append(s)  # type: ignore[arg-type]
                # One answer per decision id for as long as the decision is kept (decision_retention_s).
                answer = (s.seed_id, s.propensity, s.strategy, s.request_id, s.blueprint_id)  # type: ignore[union-attr]
                assert self.answers.setdefault(s.decision_id, answer) == answer, s.decision_id  # type: ignore[union-attr]
        for did in b.pruned:
            self.answers.pop(did, None)
        self.processed += batch

    @rule()
    def restart(self):
        self.processor = self._new_processor()

    @precondition(lambda self: not self.queue)
    @rule(p=st.integers(0, PARTITIONS - 1))
    def rebuild_partition(self, p):
        """The partition's state rebuilt from the published log replaces the stored one and equals it."""
        before = read_all(self.settings.db)["blueprints"]
        counts = {REQ: PARTITIONS, OUT: PARTITIONS, SEL: 2, DLQ: 2, CTL: 1}
        rebuilt = self.run(ownership.rebuild(self.settings, self.bus, [p], counts, {}))
        sel = self.processor.selector  # as the worker does: per-blueprint strategies come from its own state
        strategies = {bp: sel.blueprints[bp].strategy for bp in rebuilt.blueprints if bp in sel.blueprints}
        self.run(self.store.write(rebuilt.batch([], strategies)))
        self.processor = self._new_processor()
        # As the worker does after a rebuild: the partition's whole state goes to its changelog.
        offsets = self.run(self.store.offsets())
        for row in self.run(ownership.snapshot(self.processor, self.store, p, offsets, "machine")):
            self.bus.produce(row.topic, row.key, row.value, row.headers, row.partition)
        self.counters_valid = False  # counters stay what this worker counted; the rows were replaced
        # The rebuild pruned on its own batch boundaries: the learned decisions no longer kept are the rest.
        self.pruned_learned = self._pulls() - self._learned_rows()
        after = read_all(self.settings.db)["blueprints"]
        for bp, state in before.items():
            if partition_for(bp.encode(), PARTITIONS) == p and state["arms"]["seed_ids"]:
                assert bp in after, bp
                assert_state_equal(after[bp], state, bp, EXACT)

    @precondition(lambda self: not self.queue)
    @rule(p=st.integers(0, PARTITIONS - 1))
    def restore_partition_from_changelog(self, p):
        """The partition's state read back from its changelog (what its next owner restores) is the stored one:
        blueprints exactly, the same decisions with what became of them, the same held outcomes, offsets."""
        state = self.run(ownership.read_changelog(self.settings, self.bus, [p]))[p]
        restored = ownership.from_changelog([state], self.settings.kafka.topics)
        con = sqlite3.connect(f"file:{self.settings.db}?mode=ro", uri=True)
        try:
            stored = [d for d in readers.decisions(con) if d.row.partition == p]
            held = {e for (e,) in con.execute("SELECT event_id FROM held_outcomes WHERE partition = ?", (p,))}
            blueprints = {bp: blob for bp, blob in readers.blueprint_states(con, None).items()}
            parts = dict(con.execute("SELECT blueprint_id, partition FROM blueprints"))
            offsets = dict(((t, q), o) for t, q, o in con.execute("SELECT topic, partition, next_offset FROM offsets"))
        finally:
            con.close()
        key = lambda d: d.row.decision_id  # noqa: E731
        assert sorted(restored.decisions, key=key) == sorted(stored, key=key)
        assert {h.event_id for h in restored.held} == held
        mine = {bp for bp, q in parts.items() if q == p}
        assert set(restored.blueprints) == mine
        for bp in mine:
            assert_state_equal(load_state(restored.blueprints[bp].state), load_state(blueprints[bp]), bp, EXACT)
        if state.found:
            assert restored.offsets == {tp: offsets.get(tp, 0) for tp in restored.offsets}

    # -- invariants ----------------------------------------------------------------------------------------------
    def _rows(self, sql: str) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.settings.db}?mode=ro", uri=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    @invariant()
    def requests_answered_or_dead_lettered_once(self):
        answered: dict[tuple[int, int], int] = {}
        for m in self.bus.read(SEL):
            key = (hdr.int_value(m.headers, hdr.SOURCE_PARTITION), hdr.int_value(m.headers, hdr.SOURCE_OFFSET))
            answered[key] = answered.get(key, 0) + 1  # type: ignore[index]
        for m in self.bus.read(DLQ):
            source = hdr.dead_letter_source(m.headers)
            if source and source[0] == REQ:
                answered[source[1:]] = answered.get(source[1:], 0) + 1
        for m in self.processed:
            if m.topic == REQ:
                assert answered.get((m.partition, m.offset)) == 1, (m.offset, m.value)

    @invariant()
    def every_kept_answer_is_stored(self):
        stored = {d for (d,) in self._rows("SELECT decision_id FROM decisions")}
        assert set(self.answers) <= stored

    def _learned_rows(self) -> int:
        return self._rows(
            "SELECT COUNT(*) FROM decisions WHERE status IN ('resolved', 'late') OR "
            "(status = 'expired' AND reward IS NOT NULL)"
        )[0][0]

    def _pulls(self) -> int:
        return sum(int(s["arms"]["pulls"].sum()) for s in read_all(self.settings.db)["blueprints"].values())

    @invariant()
    def learned_at_most_once(self):
        assert self._pulls() == self._learned_rows() + self.pruned_learned

    @invariant()
    def every_outcome_accounted_for(self):
        if not self.counters_valid:
            return
        c = read_all(self.settings.db)["counters"]
        # A dangling outcome is counted as such and dead-lettered too (saying so): counted once here.
        dead = sum(
            1
            for m in self.bus.read(DLQ)
            if (hdr.dead_letter_source(m.headers) or ("",))[0] == OUT
            and not (hdr.value(m.headers, hdr.DLQ_REASON) or "").startswith(DANGLING)
        )
        held = self._rows("SELECT COUNT(*) FROM held_outcomes")[0][0]
        late_learned = self._rows("SELECT COUNT(*) FROM decisions WHERE status = 'late'")[0][0] + self.pruned_late
        fed = sum(1 for m in self.processed if m.topic == OUT)
        accounted = (
            dead
            + c.get("outcomes_learned", 0)
            + c.get("duplicate_outcomes", 0)
            + c.get("late_outcomes", 0)
            - late_learned
            + c.get("mismatched_outcomes", 0)
            + c.get("dangling_outcomes", 0)
            + held
        )
        assert accounted == fed, (accounted, fed, c)

    def check_replay(self):
        """The whole log replayed into a fresh store gives the live state."""
        records = replay_order(self.bus, self.settings.kafka.topics)
        db = Path(self.dir.name) / "replayed.sqlite"
        store = self.run(Store(db).open())
        try:
            replay = self.run(Replay(self.settings, store).start())
            for m in self.bus.read(DLQ):  # read ahead, as `seedworker replay` does
                replay.read_ahead(m)
            for m in records:
                self.run(replay.feed(m))
            self.run(replay.finish({}))
        finally:
            self.run(store.close())
        live, got = read_all(self.settings.db)["blueprints"], read_all(db)["blueprints"]
        for bp, state in live.items():
            if state["arms"]["seed_ids"]:
                assert_state_equal(got[bp], state, bp, EXACT)

    @initialize()
    def start(self):
        pass


class LateAndDefaultMachine(ProcessorMachine):
    """The same with join.learn_late and join.default_reward: a late outcome replaces the default reward."""

    join = {"reward_wait_s": 100.0, "hold_unknown_s": 10_000.0, "learn_late": True, "default_reward": -0.25}
    default_strategy = "ucb"  # a default reward cannot be combined with change detection (glr-ucb, the default)


SETTINGS = settings(
    derandomize=True,
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _with_final_replay(machine):
    class Checked(machine):
        def teardown(self):
            try:
                if not self.queue:
                    self.check_replay()
            finally:
                super().teardown()

    Checked.__name__ = machine.__name__
    return Checked


TestProcessor = SETTINGS(_with_final_replay(ProcessorMachine)).TestCase
TestProcessorLateAndDefault = SETTINGS(_with_final_replay(LateAndDefaultMachine)).TestCase
