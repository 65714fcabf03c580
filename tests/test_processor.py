"""Plausible but untidy traffic: each case either changes the state or becomes a dead letter with its reason, good
traffic keeps flowing, and a restart or a replay of the same records gives the same state. On the in-memory bus;
the stateful property test of the same processor is test_processor_stateful.py."""

from __future__ import annotations

import random
import sqlite3
from datetime import timedelta

import pytest

from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.core.config import Settings
from seedworker.core.selector import SeedSelector
from seedworker.engine.processor import Processor
from seedworker.engine.replay import Replay
from seedworker.store.readers import read_all
from seedworker.store.rows import dump_state
from seedworker.store.store import Store
from tests.support import (
    CTL,
    DLQ,
    EXACT_STATE,
    OUT,
    REQ,
    SEL,
    T0,
    assert_state_equal,
    dead_letters,
    drain,
    new_bus,
    outcome,
    replay_order,
    request,
    selections,
)


@pytest.fixture
def settings(tmp_path):
    return Settings(
        db=str(tmp_path / "state.sqlite"),
        kafka={"partitions": 2},
        join={"reward_wait_s": 100.0, "hold_unknown_s": 50.0},
    )


async def replayed(settings, bus, tmp_path) -> dict:
    """The state `seedworker replay` rebuilds from the bus's topics (merged by record timestamp)."""
    t = settings.kafka.topics
    records = replay_order(bus, t)
    db = tmp_path / "replayed.sqlite"
    store = await Store(db).open()
    try:
        replay = await Replay(settings, store).start()
        for m in bus.read(t.dead_letters):  # read ahead, as `seedworker replay` does
            replay.read_ahead(m)
        for m in records:
            await replay.feed(m)
        await replay.finish({})
    finally:
        await store.close()
    return read_all(db)


def assert_same_blueprints(got: dict, want: dict) -> None:
    assert set(got["blueprints"]) == set(want["blueprints"])
    for bp, state in want["blueprints"].items():
        assert_state_equal(got["blueprints"][bp], state, bp, EXACT_STATE)


def pulls(db) -> int:
    return int(sum(s["arms"]["pulls"].sum() for s in read_all(db)["blueprints"].values()))


def statuses(db) -> dict[str, str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT request_id, status FROM decisions"))
    finally:
        con.close()


async def test_a_resent_outcome_before_its_request_is_learned_once_and_the_worker_goes_on(settings, tmp_path):
    bus = await new_bus()
    probe = SeedSelector(settings).select(ev.decode(request(0)))  # the answer the worker will give
    bus.produce(OUT, b"bp", outcome(probe, 0.3))
    bus.produce(OUT, b"bp", outcome(probe, 0.3))  # re-sent by Tamiyo: same decision, a fresh event id
    bus.produce(REQ, b"bp", request(0))
    bus.produce(REQ, b"bp", request(1))
    w = await drain(settings, bus)
    assert w.counters["outcomes_learned"] == 1 and w.counters["duplicate_outcomes"] == 1
    assert [s.request_id for s in selections(bus)] == ["req-0", "req-1"]
    assert pulls(settings.db) == 1
    w = await drain(settings, bus)  # a restart reads nothing again and learns nothing twice
    assert pulls(settings.db) == 1
    assert_same_blueprints(await replayed(settings, bus, tmp_path), read_all(settings.db))


@pytest.mark.parametrize("kind", ["request", "outcome", "switch"])
async def test_a_message_dated_far_ahead_is_dead_lettered_and_moves_no_clock(settings, kind):
    bus = await new_bus()
    bus.produce(REQ, b"bp", request(0))
    await drain(settings, bus)
    (s,) = selections(bus)
    future = T0 + timedelta(days=365 * 70)
    if kind == "request":
        bus.produce(REQ, b"bp", request("r-2099", t=(future - T0).total_seconds()))
    elif kind == "outcome":
        bus.produce(
            OUT,
            b"bp",
            ev.encode(ev.AdaptationOutcome(decision_id="x", blueprint_id="bp", seed_id="layer3:0", occurred_at=future)),
        )
    else:
        bus.produce(CTL, None, ev.encode(ev.StrategySwitch(strategy="ucb", occurred_at=future)))
    w = await drain(settings, bus)
    ((topic, reason),) = dead_letters(bus)
    assert "max_clock_skew_s" in reason and topic in (REQ, OUT, CTL)
    assert w.pending_decisions == 1 and w.counters["expired_decisions"] == 0
    assert max(w.processor.join.watermarks.values()) < future.timestamp()
    bus.produce(OUT, b"bp", outcome(s, 0.2))  # learning goes on
    w = await drain(settings, bus)
    assert w.counters["outcomes_learned"] == 1


async def test_expiry_is_per_partition(settings, tmp_path):
    """Partition 1 runs far ahead in event time; partition 0's decision does not expire because of it."""
    bus = await new_bus()
    a, b = "bp-a", next(f"bp-{i}" for i in range(100) if _partition(f"bp-{i}") != _partition("bp-a"))
    bus.produce(REQ, a.encode(), request("ra", bp=a, t=0))
    bus.produce(REQ, b.encode(), request("rb", bp=b, t=0))
    await drain(settings, bus)
    sel = {s.blueprint_id: s for s in selections(bus)}
    bus.produce(REQ, b.encode(), request("rb-late", bp=b, t=1000))  # partition of b: its clock moves on
    w = await drain(settings, bus)
    st = statuses(settings.db)
    assert st["rb"] == "expired" and st["ra"] == "pending"
    bus.produce(OUT, a.encode(), outcome(sel[a], 0.4, dt=5))
    w = await drain(settings, bus)
    assert w.counters["outcomes_learned"] == 1
    assert_same_blueprints(await replayed(settings, bus, tmp_path), read_all(settings.db))


def _partition(key: str) -> int:
    from seedworker.broker.base import partition_for

    return partition_for(key.encode(), 2)


async def test_an_outcome_without_occurred_at_takes_its_record_timestamp(settings, tmp_path):
    bus = await new_bus()
    bus.produce(REQ, b"bp", request("r0", t=0))
    await drain(settings, bus)
    (s,) = selections(bus)
    raw = ev.encode(
        ev.AdaptationOutcome(decision_id=s.decision_id, blueprint_id="bp", seed_id=s.seed_id, accuracy_delta=0.5)
    )
    body = {k: v for k, v in __import__("orjson").loads(raw).items() if k != "occurred_at"}
    m = bus.produce(OUT, b"bp", __import__("orjson").dumps(body))
    settings = settings.model_copy(update={"join": settings.join.model_copy(update={"reward_wait_s": 1e12})})
    w = await drain(settings, bus)
    assert w.counters["outcomes_learned"] == 1
    arms = read_all(settings.db)["blueprints"]["bp"]["arms"]
    assert arms["t_ref"].max() == pytest.approx(m.timestamp_ms / 1000)
    assert_same_blueprints(await replayed(settings, bus, tmp_path), read_all(settings.db))


@pytest.mark.parametrize("restart", [False, True])
async def test_learn_late_learns_an_expired_decision_once_and_replaces_the_default_reward(tmp_path, restart):
    def make(db, **join):
        return Settings(
            db=str(tmp_path / db),
            kafka={"partitions": 2},
            default_strategy="linucb",
            join={"reward_wait_s": 100.0, "hold_unknown_s": 50.0, **join},
        )

    late = make("late.sqlite", learn_late=True, default_reward=-0.5)
    bus = await new_bus()
    bus.produce(REQ, b"bp", request("r0", t=0))
    bus.produce(REQ, b"bp", request("r1", t=500))  # moves the clock past r0's deadline: r0 expires, -0.5 learned
    await drain(late, bus)
    assert statuses(late.db)["r0"] == "expired"
    s0 = next(s for s in selections(bus) if s.request_id == "r0")
    bus.produce(OUT, b"bp", outcome(s0, 0.25, dt=450))  # late; learned with learn_late, replacing the default
    if restart:
        await drain(late, bus)
    else:
        bus.produce(OUT, b"bp", outcome(s0, 0.25, dt=451))  # and a re-sent copy: a duplicate
    w = await drain(late, bus)
    st = read_all(late.db)
    arms = st["blueprints"]["bp"]["arms"]
    assert arms["pulls"].sum() == 1 and arms["reward_sum"].sum() == pytest.approx(0.25)
    assert statuses(late.db)["r0"] == "late"
    if not restart:
        assert w.counters["duplicate_outcomes"] == 1
    # The same state as a worker that saw the outcome before the expiry.
    direct = make("direct.sqlite", learn_late=True, default_reward=-0.5)
    bus2 = await new_bus()
    bus2.produce(REQ, b"bp", request("r0", t=0))
    await drain(direct, bus2)
    bus2.produce(OUT, b"bp", ev.encode(ev.AdaptationOutcome.model_validate_json(bus.read(OUT)[0].value)))
    bus2.produce(REQ, b"bp", request("r1", t=500))
    await drain(direct, bus2)
    assert_same_blueprints(read_all(direct.db), st)


async def test_a_late_outcome_naming_another_blueprint_is_dead_lettered_and_restarts_work(settings):
    bus = await new_bus()
    bus.produce(REQ, b"bp", request("r0", t=0))
    await drain(settings, bus)
    (s,) = selections(bus)
    bus.produce(
        OUT,
        b"elsewhere",
        ev.encode(
            ev.AdaptationOutcome(
                decision_id=s.decision_id,
                blueprint_id="elsewhere",
                seed_id=s.seed_id,
                occurred_at=T0 + timedelta(seconds=1),
            )
        ),
    )
    await drain(settings, bus)
    await drain(settings, bus)
    assert any("names blueprint 'elsewhere'" in r or "is not the blueprint_id" in r for _, r in dead_letters(bus))


async def test_a_request_id_reused_by_another_blueprint_or_candidate_list_is_dead_lettered(settings):
    bus = await new_bus()
    bus.produce(REQ, b"bp", request("r0"))
    bus.produce(REQ, b"bp2", request("r0", bp="bp2"))
    bus.produce(REQ, b"bp", request("r0", k=3))
    bus.produce(REQ, b"bp", request("r0"))  # a genuine retry: the stored answer again
    w = await drain(settings, bus)
    reasons = sorted(r for _, r in dead_letters(bus))
    assert len(reasons) == 2 and "already answered for blueprint 'bp'" in reasons[1]
    assert "other candidates" in reasons[0]
    first, again = selections(bus)
    assert first == again and w.counters["duplicate_requests"] == 1


async def test_mis_keyed_inputs_are_dead_lettered(settings):
    bus = await new_bus()
    bus.produce(REQ, None, request("r0"))
    bus.produce(REQ, b"other", request("r1"))
    bus.produce(REQ, b"bp", request("r2"))
    await drain(settings, bus)
    assert [s.request_id for s in selections(bus)] == ["r2"]
    assert [("is not the blueprint_id" in r) for _, r in dead_letters(bus)] == [True, True]


async def test_extreme_context_values_give_answers_that_meet_the_contract(settings):
    bus = await new_bus()
    for i, v in enumerate([1.7e308, -1.7e308, 1e300, 0.0, -1e-300]):
        bus.produce(REQ, b"bp", request(i, context={"current_loss": v, "gradient_norm": -v}))
    await drain(settings, bus)
    await drain(settings, bus)  # and it starts again
    sel = selections(bus)
    assert len(sel) == 5 and not dead_letters(bus)
    for m in bus.read(SEL):
        ev.check_selection(ev.decode(m.value))  # type: ignore[arg-type]
        ev.decode(m.value, ev.SEED_SELECTED)


async def test_an_answer_too_large_to_publish_dead_letters_its_request(tmp_path):
    settings = Settings(db=str(tmp_path / "s.sqlite"), kafka={"partitions": 2, "max_request_size": 4096})
    bus = await new_bus()
    bus.produce(REQ, b"bp", request("small"))
    bus.produce(REQ, b"bp", request("big", k=200))
    bus.produce(REQ, b"bp", request("after"))
    w = await drain(settings, bus)
    assert [s.request_id for s in selections(bus)] == ["small", "after"]
    ((_, reason),) = dead_letters(bus)
    assert "max_request_size" in reason
    assert w.counters["decisions"] == 2
    st = read_all(settings.db)["blueprints"]["bp"]["arms"]
    assert st["selections"].sum() == 2  # nothing of the refused decision is in the state


async def test_a_dead_letter_put_back_is_dead_lettered_again_with_only_its_latest_source(settings):
    bus = await new_bus()
    bus.produce(REQ, b"bp", b"not json", headers=(("trace_id", b"t-1"),))
    await drain(settings, bus)
    (first,) = bus.read(DLQ)
    bus.produce(REQ, first.key, first.value, first.headers)  # an operator puts it back as it was
    await drain(settings, bus)
    second = bus.read(DLQ)[1]
    names = [k for k, _ in second.headers]
    assert names.count(hdr.DLQ_OFFSET) == 1 and names.count(hdr.DLQ_REASON) == 1
    assert hdr.int_value(second.headers, hdr.DLQ_OFFSET) == 1 and hdr.value(second.headers, "trace_id") == "t-1"


async def test_a_switch_the_configuration_would_refuse_is_dead_lettered(settings):
    bus = await new_bus()
    bus.produce(CTL, None, ev.encode(ev.StrategySwitch(strategy="discounted-ucb")))
    bus.produce(REQ, b"bp", request(0))
    w = await drain(settings, bus)
    ((_, reason),) = dead_letters(bus)
    assert "needs decay.half_life_s" in reason
    assert w.selector.default_strategy == settings.default_strategy and len(selections(bus)) == 1


def test_a_default_reward_with_change_detection_is_refused():
    with pytest.raises(ValueError, match="change detector"):
        Settings(join={"default_reward": -0.1})  # the default strategy, glr-ucb, detects changes
    s = Settings(default_strategy="ucb", join={"default_reward": -0.1})
    assert s.strategy_problem("glr-ucb") is not None  # nor can a switch install one


async def test_an_exception_while_handling_one_record_dead_letters_it_and_the_batch_goes_on(settings, monkeypatch):
    bus = await new_bus()
    for i in range(6):
        bus.produce(REQ, b"bp", request(i))
    real = SeedSelector.decide

    def decide(self, req):
        if req.request_id == "req-3":
            self.blueprint(req.blueprint_id).arms.rows(["half-applied"])  # a change made before the failure
            raise ZeroDivisionError("boom")
        return real(self, req)

    monkeypatch.setattr(SeedSelector, "decide", decide)
    w = await drain(settings, bus)
    assert [s.request_id for s in selections(bus)] == ["req-0", "req-1", "req-2", "req-4", "req-5"]
    ((_, reason),) = dead_letters(bus)
    assert reason.startswith("ZeroDivisionError") and "boom" in reason
    assert "half-applied" not in read_all(settings.db)["blueprints"]["bp"]["arms"]["seed_ids"]
    assert w.counters["decisions"] == 5
    # The batch ran again from the stored state: what it stored are the bytes of dump_state (not of a state that
    # the failed run encoded).
    con = sqlite3.connect(settings.db)
    ((stored,),) = con.execute("SELECT state FROM blueprints WHERE blueprint_id = 'bp'").fetchall()
    con.close()
    assert stored == dump_state(w.selector.blueprints["bp"].to_dict())


async def test_a_batch_that_was_never_stored_leaves_no_trace_in_the_states_written_next(settings):
    # The processor encodes the states a batch touched from what it wrote before (seedworker.store.rows.
    # StateEncoder); a batch whose write failed is processed again from the store, and what that writes is
    # dump_state's bytes of the state it holds.
    bus = await new_bus()
    store = await Store(settings.db).open()
    try:
        processor = Processor(settings, store)
        await processor.restore()
        first = [bus.produce(REQ, b"bp", request(i, k=3)) for i in range(4)]
        await store.write(await processor.process(first))
        second = [bus.produce(REQ, b"bp", request(i, k=5)) for i in range(4, 8)]  # two new seeds: arrays grow
        lost = await processor.process(second)  # not stored (the write failed)
        assert lost.blueprints["bp"].state == dump_state(processor.selector.blueprints["bp"].to_dict())
        await processor.restore()
        again = await processor.process(second[:1])
        assert len(processor.selector.blueprints["bp"].arms) == 5  # the restored state, then request 4
        assert lost.blueprints["bp"].state != again.blueprints["bp"].state
        assert again.blueprints["bp"].state == dump_state(processor.selector.blueprints["bp"].to_dict())
    finally:
        await store.close()


async def test_a_stored_row_that_cannot_be_read_is_reported_and_skipped(settings, caplog):
    bus = await new_bus()
    bus.produce(REQ, b"bp", request(0))
    bus.produce(REQ, b"bp2", request(1, bp="bp2"))
    await drain(settings, bus)
    con = sqlite3.connect(settings.db)
    con.execute("UPDATE blueprints SET state = x'00ff' WHERE blueprint_id = 'bp'")
    con.commit()
    con.close()
    bus.produce(REQ, b"bp2", request(2, bp="bp2"))
    await drain(settings, bus)
    assert "blueprint 'bp'" in caplog.text
    assert [s.request_id for s in selections(bus)] == ["req-0", "req-1", "req-2"]


def test_the_in_process_api_uses_the_same_join():
    sel = SeedSelector(Settings(join={"reward_wait_s": 10.0}))
    req = {
        "request_id": "r",
        "blueprint_id": "bp",
        "occurred_at": T0.isoformat(),
        "seeds": [{"seed_id": "a", "seed_idx": 0}, {"seed_id": "b", "seed_idx": 1}],
    }
    s = sel.select(req)
    other = "b" if s.seed_id == "a" else "a"
    res = sel.record_outcome(
        {
            "decision_id": s.decision_id,
            "blueprint_id": "bp",
            "seed_id": other,
            "accuracy_delta": 1.0,
            "occurred_at": (T0 + timedelta(seconds=1)).isoformat(),
        }
    )
    assert res.status == "mismatched" and sel.blueprints["bp"].arms.pulls.sum() == 0
    s2 = sel.select({**req, "request_id": "r2"})
    sel.select({**req, "request_id": "r3", "occurred_at": (T0 + timedelta(seconds=60)).isoformat()})
    assert s2.decision_id not in sel.pending  # expired in event time, not kept forever
    again = sel.select({**req, "request_id": "r3"})
    assert again.decision_id in sel.pending and sel.blueprints["bp"].decisions == 3  # a retry decides nothing


async def test_a_rebuild_replaces_only_the_rebuilt_partitions(settings):
    """Blueprints of partitions this worker keeps are untouched by a rebuild of another partition."""
    from seedworker.engine import ownership

    a, b = "bp-a", next(f"bp-{i}" for i in range(100) if _partition(f"bp-{i}") != _partition("bp-a"))
    bus = await new_bus()
    bus.produce(REQ, a.encode(), request("ra", bp=a))
    bus.produce(REQ, b.encode(), request("rb", bp=b))
    bus.produce(OUT, None, b"{}")  # an outcome without a key: dead-lettered, and no reason to replace anything
    w = await drain(settings, bus)
    before = read_all(settings.db)
    store = await Store(settings.db).open()
    try:
        rebuilt = await ownership.rebuild(settings, bus, [_partition(b)], w._counts, {})
        await store.write(rebuilt.batch([], {}))
    finally:
        await store.close()
    after = read_all(settings.db)
    assert set(after["blueprints"]) == {a, b}
    assert_state_equal(after["blueprints"][a], before["blueprints"][a], a, EXACT_STATE)
    assert_state_equal(after["blueprints"][b], before["blueprints"][b], b, EXACT_STATE)


def test_processor_is_a_plain_object():
    """The worker, the replay and the rebuild compose the processor; nothing subclasses the worker."""
    from seedworker.engine import replay, worker

    assert not any(
        isinstance(v, type) and issubclass(v, worker.Worker) and v is not worker.Worker
        for m in (replay, worker)
        for v in vars(m).values()
    )
    assert Processor.__mro__ == (Processor, object)


_ = (SEL,)


async def test_a_dangling_outcome_is_dead_lettered_and_a_replay_drops_it_as_live_did(settings, tmp_path):
    """The outcome comes first; the partition's clock passes its hold before its request arrives. Live drops it
    (a dead letter saying so) and the late decision waits unanswered; a replay, which reads the selection by its
    timestamp and cannot know when live's hold ended, follows that dead letter instead of joining the two."""
    bus = await new_bus()
    probe = SeedSelector(settings).select(ev.decode(request(0, k=1)))
    bus.produce(OUT, b"bp", outcome(probe, 0.3))
    bus.produce(REQ, b"bp", request("later", k=1, t=100))  # hold_unknown_s is 50
    w = await drain(settings, bus)
    assert w.counters["dangling_outcomes"] == 1
    ((topic, reason),) = dead_letters(bus)
    assert topic == OUT and reason.startswith("dangling: ")
    bus.produce(REQ, b"bp", request(0, k=1))
    w = await drain(settings, bus)
    assert w.counters["outcomes_learned"] == 0 and pulls(settings.db) == 0
    got = await replayed(settings, bus, tmp_path)
    assert_same_blueprints(got, read_all(settings.db))
    assert got["counters"]["dangling_outcomes"] == 1 and got["counters"].get("outcomes_learned", 0) == 0


async def test_an_outcome_of_a_pruned_decision_is_one_of_an_unknown_decision(tmp_path):
    """Pruned from the store, a decision is forgotten in memory too: its outcome is held (then dangling), as it is
    for a worker that restarted since, and not learned against a deleted row."""
    settings = Settings(
        db=str(tmp_path / "state.sqlite"),
        kafka={"partitions": 2, "max_batch": 1},  # one record per batch: one worker, no restart in between
        join={"reward_wait_s": 100.0, "hold_unknown_s": 50.0},
        decision_retention_s=500.0,
    )
    bus = await new_bus()
    bus.produce(REQ, b"bp", request(0, k=1))
    await drain(settings, bus)
    (s,) = selections(bus)
    bus.produce(REQ, b"bp", request(1, k=1, t=200))  # req-0 expires
    bus.produce(REQ, b"bp", request(2, k=1, t=1000))  # and is pruned
    bus.produce(OUT, b"bp", outcome(s, 0.4))  # on time, delivered after the prune
    w = await drain(settings, bus)
    assert w.counters["pruned_decisions"] == 1 and w.counters["expired_decisions"] == 2
    assert w.counters["outcomes_learned"] == 0 and w.counters["held_outcomes"] == 1
    assert pulls(settings.db) == 0


async def test_pruning_is_a_function_of_the_records_and_batches_not_of_restarts(tmp_path):
    """A decision is pruned in the batch whose watermark crosses a step of the cutoff (a hundredth of the
    retention): the same batches for a worker that ran on and one restarted before every batch (its throttle state
    read back from the store), and far fewer queries than batches."""
    keep = 600.0  # steps of 6 s of event time; a request a second on each of two partitions
    runs = {}
    rng = random.Random(3)
    sizes = [rng.randint(1, 5) for _ in range(350)]  # ~1,000 s of event time
    for name in ("on", "restarted"):
        settings = Settings(
            db=str(tmp_path / f"{name}.sqlite"),
            kafka={"partitions": 2},
            join={"reward_wait_s": 20.0},
            decision_retention_s=keep,
        )
        bus = await new_bus()
        store = await Store(settings.db).open()
        queries = []
        aged = store.aged_decisions

        async def counted(before, aged=aged, queries=queries):
            queries.append(dict(before))
            return await aged(before)

        store.aged_decisions = counted  # type: ignore[method-assign]
        pruned: list[list[str]] = []
        answered: list[list[ev.SeedSelected]] = []
        i = 0
        try:
            processor = Processor(settings, store)
            await processor.restore()
            for n in sizes:
                if name == "restarted":
                    processor = Processor(settings, store)
                    await processor.restore()
                messages = [
                    bus.produce(REQ, bp, request(f"{bp.decode()}-{i + j}", bp.decode(), k=2, t=i + j))
                    for j in range(n)
                    for bp in (b"bp", b"bp-a")
                ]
                i += n
                # The outcomes of the decisions of two batches ago, but one in five (never answered: it expires).
                late = answered.pop(0) if len(answered) > 1 else []
                messages += [bus.produce(OUT, s.blueprint_id.encode(), outcome(s, 0.1)) for s in late[::5]]
                messages += [bus.produce(OUT, s.blueprint_id.encode(), outcome(s, 0.2)) for s in late[1::5]]
                b = await processor.process(messages)
                await store.write(b)
                answered.append([ev.decode(r.value, ev.SEED_SELECTED) for r in b.outbox if r.topic == SEL])
                pruned.append(sorted(b.pruned))
        finally:
            await store.close()
        runs[name] = pruned, queries
    (on, on_queries), (restarted, restarted_queries) = runs["on"], runs["restarted"]
    assert on == restarted and on_queries == restarted_queries
    assert sum(map(len, on)) > 500, "nothing was pruned: nothing was tested"
    # One query per step crossed (both partitions' clocks move together here), not one per batch.
    assert len([q for q in on_queries if q]) <= sum(sizes) / 6 + 2 < len(sizes) / 1.5
    for before in on_queries:
        assert all(cutoff % 6.0 == 0 for cutoff in before.values())  # the cutoff's step, not the watermark


async def test_a_replay_expires_a_decision_whose_request_id_the_live_worker_decided_again(tmp_path):
    """The live worker expires a decision (learning the default reward), prunes it, and decides its request id
    again; a replay reads both decisions in one batch, before any expiry: it expires the first when it reads the
    second, so it learns the same default."""
    settings = Settings(
        db=str(tmp_path / "state.sqlite"),
        kafka={"partitions": 2},
        default_strategy="ucb",
        join={"reward_wait_s": 100.0, "hold_unknown_s": 50.0, "default_reward": -0.25},
        decision_retention_s=500.0,
    )
    bus = await new_bus()
    bus.produce(REQ, b"bp", request(0, k=1))
    await drain(settings, bus)
    bus.produce(REQ, b"bp", request(1, k=1, t=1000))  # req-0 expires
    await drain(settings, bus)
    bus.produce(REQ, b"bp", request(2, k=1, t=1010))  # and is pruned (the next step of event time)
    await drain(settings, bus)
    bus.produce(REQ, b"bp", request(0, k=1, t=1011))  # the same request id: a new request now
    w = await drain(settings, bus)
    assert w.counters["pruned_decisions"] == 1 and len(selections(bus)) == 4
    got = await replayed(settings, bus, tmp_path)
    assert_same_blueprints(got, read_all(settings.db))


async def test_what_becomes_of_an_outcome_does_not_depend_on_where_batches_end(tmp_path):
    """The partition's clock jumps past a decision's deadline and its retention in the record just before the
    decision's outcome (on time, delivered late). Whether both records share a batch or not, the decision has
    expired (its default reward learned) and been forgotten by then, so the outcome is one of an unknown decision:
    held, not learned. (In one batch the decision used to be still waiting, because expiry runs at the end of a
    batch, and its outcome was learned.) A replay agrees: it merges the jumping request's selection where the
    worker read the request, before the outcome, not where it was published, after it."""
    runs = {}
    for name, batch in (("one batch", 100), ("batches of one", 1)):
        settings = Settings(
            db=str(tmp_path / f"{name}.sqlite"),
            kafka={"partitions": 2, "max_batch": batch},
            join={"reward_wait_s": 100.0, "hold_unknown_s": 5_000.0, "default_reward": -0.25},
            default_strategy="ucb",
            decision_retention_s=500.0,
        )
        bus = await new_bus()
        bus.produce(REQ, b"bp", request(0, k=1))
        await drain(settings, bus)
        (s,) = selections(bus)
        bus.produce(REQ, b"bp", request(1, k=1, t=1_000))
        bus.produce(OUT, b"bp", outcome(s, 0.4))
        w = await drain(settings, bus)
        state = read_all(settings.db)
        runs[name] = {k: w.counters[k] for k in ("expired_decisions", "held_outcomes", "outcomes_learned")}
        (tmp_path / name).mkdir()
        assert_same_blueprints(await replayed(settings, bus, tmp_path / name), state)
        runs[name]["pulls"] = pulls(settings.db)
        runs[name]["reward_sum"] = float(state["blueprints"]["bp"]["arms"]["reward_sum"].sum())
    assert runs["one batch"] == runs["batches of one"], runs
    assert runs["one batch"]["held_outcomes"] == 1 and runs["one batch"]["outcomes_learned"] == 0, runs
