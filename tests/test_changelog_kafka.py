"""The changelog, pruning and fencing against a real Kafka broker (seedworker.store.changelog,
seedworker.engine.ownership).

1. Retention, then a move: worker A learns six blueprints over a few hundred request/outcome rounds with a short
   ``decision_retention_s`` (so it prunes); then ``delete_records`` removes most of ``seed.selected`` and the early
   half of the inputs, and the partitions move to worker B, a new store in the same group. B's state equals A's
   (states to 1e-9 with counts, times and identities exact; decisions, held outcomes, offsets, watermarks), B
   restored every partition from the changelog (a rebuild from the truncated log would have been incomplete), and
   B then answers new requests and learns new outcomes exactly as A's own store does when it is given the same
   records (a copy of A's store, driven by the processor directly).
2. Forced compaction: the same with the changelog created with tiny segments and aggressive cleaning, and the
   partitions moved only once the log cleaner has removed records from it.
3. ``kill -9`` mid-publish: the worker is SIGKILLed between the Kafka transactions of one batch (a test hook in
   seedworker.engine.worker), some of its partitions published and the others not, and a transaction under one
   partition's transactional.id is left open (as a worker killed inside one leaves it). After a restart every
   request has one answer per decision id for a read_committed consumer, the open transaction stays invisible,
   every outcome is learned once (the state equals an independent replay), and the changelog folds to the store.
4. A zombie: worker Z is SIGSTOPped past its session timeout between the transactions of a batch it stored, a
   strategy switch follows (so answers decided afresh differ from Z's stored ones), and worker W takes the
   partitions over and answers. On SIGCONT, Z's next transaction is fenced: it exits 1 saying so, none of its
   stale answers becomes visible to a read_committed consumer, and nothing is lost (W's state equals an
   independent replay).

Every wait is for an observable condition (answers read, offsets stored, a log line, records compacted), bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from seedworker.broker.base import Message
from seedworker.broker.kafka import KafkaBus
from seedworker.contract import events as ev
from seedworker.core.config import Settings
from seedworker.core.selector import SeedSelector
from seedworker.engine import ownership
from seedworker.engine.processor import Processor
from seedworker.store import changelog, readers
from seedworker.store.readers import open_readonly, read_all
from seedworker.store.rows import load_state
from seedworker.store.store import Store
from tests.kafka_broker import unique_topic
from tests.support import (
    T0,
    assert_same,
    assert_state_equal,
    check_selection,
    eventually,
    held_outcomes,
    outcome,
    running_worker,
    stored_decisions,
)
from tests.support import training_request as request
from tests.support_kafka import PARTITIONS, CommittedReader, Reader, WorkerProcess, create_topics

pytestmark = [pytest.mark.asyncio, pytest.mark.kafka]

BLUEPRINTS = {f"bp-{b}": 3 + b % 3 for b in range(6)}  # blueprint -> number of candidate seeds
HOOK = "TEST_SEEDWORKER_PAUSE_BEFORE_PUBLISH"
INPUTS = ("requests", "outcomes")


class Tamiyo:
    """Sends requests keyed by blueprint (event time: one second per request), reads the answers, and sends one
    outcome per first answer, now or later (``withhold``). Records everything for the checks."""

    def __init__(self, producer: AIOKafkaProducer, topics: dict[str, str], seed: int):
        self.producer, self.topics, self.seed = producer, topics, seed
        self.rng = random.Random(seed)
        self.best = {bp: b % k for b, (bp, k) in enumerate(BLUEPRINTS.items())}
        self.request_bp: dict[str, str] = {}
        self.copies: dict[str, set[tuple]] = defaultdict(set)  # decision id -> {(key, value)} of every copy read
        self.first: dict[str, ev.SeedSelected] = {}
        self.order: dict[int, list[str]] = defaultdict(list)  # selections partition -> first copies, in order
        self.outcomes: list[tuple[str, bytes]] = []
        self.withheld: list[tuple[str, bytes]] = []
        self.sent = 0

    async def ask(self, n: int) -> None:
        for _ in range(n):
            i = self.sent
            bp = self.rng.choice(list(BLUEPRINTS))
            self.request_bp[f"req-{i}"] = bp
            await self.producer.send(self.topics["requests"], request(i, bp, BLUEPRINTS[bp]), key=bp.encode())
            self.sent += 1
        await self.producer.flush()

    async def answer(self, records, *, withhold: bool = False) -> None:
        for r in records:
            s = check_selection(r, self.request_bp)
            self.copies[s.decision_id].add((r.key, r.value))
            if s.decision_id in self.first:
                continue
            self.first[s.decision_id] = s
            self.order[r.partition].append(s.decision_id)
            rng = random.Random(f"{self.seed}:{s.request_id}")
            gain = (0.2 if s.seed_idx == self.best[s.blueprint_id] else 0.05) + rng.gauss(0.0, 0.03)
            value = outcome(s, gain, dt=rng.uniform(0.1, 0.9))
            if withhold:
                self.withheld.append((s.decision_id, value))
            else:
                await self._send_outcome(s.decision_id, value)
        await self.producer.flush()

    async def _send_outcome(self, did: str, value: bytes) -> None:
        self.outcomes.append((did, value))
        await self.producer.send(self.topics["outcomes"], value, key=self.first[did].blueprint_id.encode())

    async def release(self) -> None:
        """The withheld outcomes, now."""
        for did, value in self.withheld:
            await self._send_outcome(did, value)
        self.withheld = []
        await self.producer.flush()

    async def converse(self, sel, total: int, *, withhold_last: int = 0, alive=lambda: None, extra=None) -> None:
        """Requests up to ``total`` in all, 20 ahead of the answers, until every one is answered; the outcomes of
        the last ``withhold_last`` answers are withheld. ``extra``: another reader kept up to date meanwhile."""
        deadline = time.monotonic() + 120
        while len(self.first) < total:
            assert time.monotonic() < deadline, f"only {len(self.first)} of {total} requests answered"
            alive()
            ahead = min(total, len(self.first) + 20) - self.sent
            if ahead > 0:
                await self.ask(ahead)
            for r in await sel.poll(50):
                await self.answer([r], withhold=len(self.first) >= total - withhold_last)
            if extra is not None:
                await extra.poll(0)

    def replay(self, settings: Settings) -> SeedSelector:
        """The state computed independently from the first copy of every answer and every outcome sent."""
        selector = SeedSelector(settings)
        for p in sorted(self.order):
            for did in self.order[p]:
                selector.apply_selection(self.first[did])
        learned = set()
        for did, value in self.outcomes:
            if did not in learned:
                learned.add(did)
                selector.learn(self.first[did], ev.decode(value, ev.ADAPTATION_OUTCOME))
        return selector


# -- helpers -----------------------------------------------------------------------------------------------------
async def worker_topics(factory, prefix: str, changelog_config: dict[str, str]) -> dict[str, str]:
    """The worker's topics, the changelog among them (created here, so that it is deleted after the test)."""
    topics = await create_topics(factory, prefix)
    topics["changelog"] = await factory(f"{prefix}-changelog", PARTITIONS, changelog_config)
    return topics


def in_process_settings(bootstrap: str, db: Path, topics: dict[str, str], group: str) -> Settings:
    # Resolved decisions older than a minute of event time (a request a second) are pruned: the store and the
    # changelog keep a window, not the history.
    return Settings(
        db=str(db),
        decision_retention_s=60.0,
        join={"reward_wait_s": 30.0},
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "topics": topics,
            "partitions": PARTITIONS,
            "output_partitions": PARTITIONS,
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
        },
    )


def worker_process(bootstrap: str, tmp_path: Path, name: str, topics: dict[str, str], group: str) -> WorkerProcess:
    wp = WorkerProcess(bootstrap, tmp_path / f"{name}.sqlite", topics, group, tmp_path / f"{name}.log")
    # A stopped member is out of the group after 3 s (the local broker allows sessions from 1 s).
    wp.env.update(
        SEEDWORKER_KAFKA__SESSION_TIMEOUT_MS="3000",
        SEEDWORKER_KAFKA__HEARTBEAT_INTERVAL_MS="500",
        SEEDWORKER_KAFKA__CLIENT_ID=f"seedworker-{name}",
    )
    return wp


def since_last_start(wp: WorkerProcess) -> str:
    return wp.log.read_text(errors="replace").rsplit(f"===== start #{wp.starts} =====", 1)[-1]


async def input_ends(consumer, topics: dict[str, str]) -> dict[tuple[str, int], int]:
    tps = [TopicPartition(topics[k], p) for k in INPUTS for p in range(PARTITIONS)]
    return {(tp.topic, tp.partition): o for tp, o in (await consumer.end_offsets(tps)).items()}


async def consumed(db: Path | str, ends: dict[tuple[str, int], int], what: str, detail=lambda: "") -> None:
    """Until the store's offsets reach ``ends`` (the worker has processed everything up to them)."""
    await eventually(
        lambda: all(read_all(db)["offsets"].get(tp, 0) >= o for tp, o in ends.items()),
        what,
        timeout=60,
        interval=0.1,
        detail=lambda: f"{read_all(db)['offsets']} vs {ends}{detail()}",
    )


def state_of(db: Path | str, topics: dict[str, str]) -> dict:
    """What a store holds of the input partitions' state (the counters are the worker's own and not compared)."""
    snap = read_all(db)
    con = open_readonly(db)
    try:
        watermarks = {r.partition: r.event_time for r in readers.watermarks(con)}
    finally:
        con.close()
    inputs = {topics[k] for k in INPUTS}
    return {
        "blueprints": snap["blueprints"],
        "decisions": stored_decisions(db),
        "held": held_outcomes(db),
        "offsets": {tp: o for tp, o in snap["offsets"].items() if tp[0] in inputs},
        "watermarks": watermarks,
    }


def decision(payload: bytes) -> dict:
    """A seed.selected value without its ``occurred_at``: the wall-clock time the answer was made at, which two
    workers making the same decision from the same state and request do not share."""
    return {k: v for k, v in orjson.loads(payload).items() if k != "occurred_at"}


def decision_id(m) -> str:
    return ev.decode(m.value, ev.SEED_SELECTED).decision_id


def assert_same_state(got: dict, want: dict, *, decided_apart: frozenset[str] = frozenset()) -> None:
    """``decided_apart``: decisions the two stores made each for itself (their payloads differ in occurred_at)."""
    assert set(got["blueprints"]) == set(want["blueprints"])
    for bp, state in want["blueprints"].items():
        assert_same(got["blueprints"][bp], state, bp)
    assert set(got["decisions"]) == set(want["decisions"]), (
        f"decisions only in one store: {sorted(set(got['decisions']) ^ set(want['decisions']))}"
    )
    for did, row in want["decisions"].items():
        g = got["decisions"][did]
        if did in decided_apart:
            g, row = (*g[:-1], decision(g[-1])), (*row[:-1], decision(row[-1]))
        assert g == row, did  # status, reward, outcome time, seed, strategy, payload: exact
    assert got["held"] == want["held"]
    assert got["offsets"] == want["offsets"]
    assert got["watermarks"] == want["watermarks"]


def copy_store(db: Path, to: Path) -> Path:
    """A closed store's files (the database and, if any, its WAL)."""
    for suffix in ("", "-wal"):
        src = db.with_name(db.name + suffix)
        if src.exists():
            shutil.copyfile(src, to.with_name(to.name + suffix))
    return to


async def input_messages(bootstrap: str, topics: dict[str, str], start: dict, end: dict) -> list[Message]:
    """The input records from ``start`` to ``end`` (offsets per topic partition), as the worker's bus gives them."""
    out = []
    for kind in INPUTS:
        async with Reader(bootstrap, topics[kind]) as r:
            for rec in await r.to_end():
                tp = (rec.topic, rec.partition)
                if start.get(tp, 0) <= rec.offset < end[tp]:
                    out.append(
                        Message(
                            rec.topic,
                            rec.partition,
                            rec.offset,
                            rec.key,
                            rec.value,
                            tuple(rec.headers or ()),
                            rec.timestamp,
                        )
                    )
    return sorted(out, key=lambda m: (m.topic, m.partition, m.offset))


async def changelog_records(bootstrap: str, topic: str) -> list:
    async with CommittedReader(bootstrap, topic) as r:
        return list(await r.to_end())


@contextlib.asynccontextmanager
async def brisk_log_cleaner(admin: AIOKafkaAdminClient, local_kafka):
    """The log cleaner checks for work every 200 ms instead of every 15 s (``log.cleaner.backoff.ms``, a dynamic
    broker setting), while the test runs; undone afterwards. Only on the tests' own local broker: another broker is
    left alone and the test waits for its cleaner as it is."""
    if local_kafka is None:
        yield
        return
    node = local_kafka.server_properties()["node.id"]

    async def alter(configs: dict[str, str]) -> None:
        for response in await admin.alter_configs([ConfigResource(ConfigResourceType.BROKER, node, configs)]):
            for error_code, message, *_ in response.resources:
                assert error_code == 0, f"altering the broker's configuration {configs}: {message}"

    await alter({"log.cleaner.backoff.ms": "200"})
    try:
        yield
    finally:
        await alter({})  # AlterConfigs replaces the broker's dynamic settings: none, as before


# -- 1 and 2: learn, lose the early log (retention or compaction), move the partitions -----------------------------
async def learn_then_move(bootstrap, factory, tmp_path, caplog, *, prefix, changelog_config, delete, compact):
    caplog.set_level("INFO", logger="seedworker")
    topics = await worker_topics(factory, prefix, changelog_config)
    group = unique_topic(f"{prefix}-group")
    sa = in_process_settings(bootstrap, tmp_path / "a.sqlite", topics, group)
    sb = in_process_settings(bootstrap, tmp_path / "b.sqlite", topics, group)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await producer.start()
    await admin.start()
    tamiyo = Tamiyo(producer, topics, 20261203)
    n1, n2 = 240, 30
    try:
        async with (
            CommittedReader(bootstrap, topics["selections"]) as sel,
            CommittedReader(bootstrap, topics["changelog"]) as live_changelog,
        ):
            # -- A learns; the last answers' outcomes are withheld (pending decisions move with the partitions)
            async with running_worker(sa) as (a, task):

                def alive() -> None:
                    assert not task.done(), f"worker A stopped: {task.exception() if task.done() else ''}"

                await tamiyo.converse(sel, n1, withhold_last=12, alive=alive, extra=live_changelog)
                ends = await input_ends(sel.consumer, topics)
                await consumed(sa.db, ends, "worker A to consume every request and outcome", lambda: repr(a))
            # Stopped: its revocation committed the offsets under its id, so B finds A's state of every partition
            # stale and takes it from the changelog.
            written = list(await live_changelog.to_end())
            a_state = state_of(sa.db, topics)
            a_counters = read_all(sa.db)["counters"]
            assert a_counters.get("pruned_decisions", 0) > 0, f"A pruned nothing: nothing was tested {a_counters}"
            copy = copy_store(Path(sa.db), tmp_path / "a-copy.sqlite")

            if delete:
                # Retention: most of the decision log, and the early half of the inputs, are gone.
                sel_tps = [TopicPartition(topics["selections"], p) for p in range(PARTITIONS)]
                sel_end = await sel.consumer.end_offsets(sel_tps)
                cut = {tp: RecordsToDelete(max(o - 3, 0)) for tp, o in sel_end.items()}
                cut.update({TopicPartition(*tp): RecordsToDelete(o // 2) for tp, o in ends.items()})
                low = await admin.delete_records(cut)
                assert sum(low[tp] for tp in sel_tps) >= sum(sel_end.values()) - 3 * PARTITIONS, low
                async with Reader(bootstrap, topics["selections"]) as r:
                    left = len(await r.to_end())
                assert left <= 3 * PARTITIONS, f"{left} selections left after delete_records"

            if compact:
                # Compaction removed records: fewer on the topic now than were read as A wrote them, and fewer
                # batch-end ("o") records (one per batch and partition as written).
                def o_records(records) -> int:
                    return sum(r.key == changelog.OFFSETS for r in records)

                now: list = []
                deadline = time.monotonic() + 120
                while True:
                    now = await changelog_records(bootstrap, topics["changelog"])
                    if len(now) < len(written) and o_records(now) < o_records(written):
                        break
                    assert time.monotonic() < deadline, (
                        f"the log cleaner removed nothing from the changelog within 120 s ({len(now)} records now, "
                        f"{len(written)} written, {o_records(now)} of {o_records(written)} offsets records)"
                    )
                    await asyncio.sleep(0.3)
                print(
                    f"compaction: {len(written)} changelog records written, {len(now)} left "
                    f"({o_records(written)} -> {o_records(now)} offsets records)"
                )

            # -- the partitions move to B, a new store in the same group
            async with running_worker(sb) as (b, task):
                await eventually(
                    lambda: b.counters["restored_partitions"] == PARTITIONS,
                    "worker B to restore every partition from the changelog",
                    detail=lambda: f"counters {b.counters.values}",
                )
                assert b.counters["rebuilt_partitions"] == PARTITIONS  # the restored ones, and no other
                assert_same_state(state_of(sb.db, topics), a_state)

                # B goes on: the withheld outcomes, new requests (their outcomes withheld), then those outcomes.
                steps = [ends]
                for step in ("outcomes", "requests", "outcomes"):
                    if step == "requests":
                        await tamiyo.ask(n2)
                        await sel.until(
                            lambda rs: (
                                len({check_selection(r, tamiyo.request_bp).decision_id for r in rs}) >= tamiyo.sent
                            ),
                            f"B's answers to {n2} new requests",
                        )
                        await tamiyo.answer(sel.records, withhold=True)
                    else:
                        await tamiyo.release()
                    steps.append(await input_ends(sel.consumer, topics))
                    await consumed(sb.db, steps[-1], f"worker B to consume the new {step}", lambda: repr(b))
                assert not task.done()
            b_state = state_of(sb.db, topics)
    finally:
        await producer.stop()
        await admin.close()
    log_text = caplog.text
    assert "restoring it from the changelog" in log_text
    assert "rebuilding it from the decision log" not in log_text and "INCOMPLETE" not in log_text

    # What A's own store does with the same records, in the same steps: the same answers, byte for byte, and the
    # same state. (B's restored state is what it decides and learns from, so any difference in it shows here.)
    store = await Store(copy).open()
    answers: dict[str, tuple] = {}
    try:
        processor = Processor(sa, store)
        await processor.restore()
        for start, end in zip(steps, steps[1:]):
            batch = await processor.process(await input_messages(bootstrap, topics, start, end))
            await store.write(batch)
            for row in batch.outbox:
                if row.topic == topics["selections"]:
                    answers[ev.decode(row.value, ev.SEED_SELECTED).decision_id] = (row.key, row.value)
    finally:
        await store.close()
    new = {ev.decision_id_for(f"req-{i}") for i in range(n1, n1 + n2)}
    assert set(answers) == new
    for did in new:
        ((key, value),) = tamiyo.copies[did]
        assert (key, decision(value)) == (answers[did][0], decision(answers[did][1])), (
            f"B answered {did} otherwise than A would have"
        )
    assert_same_state(b_state, state_of(copy, topics), decided_apart=frozenset(new))
    # Neither is wrong: both equal the state computed from everything Tamiyo saw and sent.
    for bp, state in tamiyo.replay(sa).blueprints.items():
        assert_state_equal(b_state["blueprints"][bp], state.to_dict(), bp)
    print(
        f"{prefix}: A pruned {a_counters.get('pruned_decisions', 0)} decisions and kept {len(a_state['decisions'])}; "
        f"B restored {b.counters['restored_partitions']} partitions and answered {n2} new requests as A would"
    )


@pytest.mark.timeout(300)  # a bound, not a speed goal: a loaded machine takes minutes
async def test_retention_then_a_move_restores_from_the_changelog(
    kafka_bootstrap, kafka_topic_factory, tmp_path, caplog
):
    await learn_then_move(
        kafka_bootstrap,
        kafka_topic_factory,
        tmp_path,
        caplog,
        prefix="retain",
        changelog_config=changelog.TOPIC_CONFIG,
        delete=True,
        compact=False,
    )


# Segments roll every 100 ms (segment.bytes cannot go below 1 MiB in Kafka 4), and everything but the active
# segment is cleaned at once; tombstones go too (delete.retention.ms 0).
COMPACTING = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.compaction.lag.ms": "0",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "0",
}


@pytest.mark.timeout(300)  # a bound, not a speed goal: a loaded machine takes minutes
async def test_compacted_changelog_restores_exactly(
    kafka_bootstrap, kafka_topic_factory, local_kafka, tmp_path, caplog
):
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        async with brisk_log_cleaner(admin, local_kafka):
            await learn_then_move(
                kafka_bootstrap,
                kafka_topic_factory,
                tmp_path,
                caplog,
                prefix="compact",
                changelog_config=COMPACTING,
                delete=False,
                compact=True,
            )
    finally:
        await admin.close()


# -- 3 and 4: processes killed or stopped mid-publish --------------------------------------------------------------
def assert_changelog_folds_to(states: dict[int, changelog.PartitionState], db: Path, topics: dict[str, str]) -> None:
    """The changelog's last value per key (read_committed) is the store's state, partition by partition."""
    snap = read_all(db)
    decisions = stored_decisions(db)
    by_partition = defaultdict(set)
    con = open_readonly(db)
    try:
        for bp, row in readers.blueprints(con).items():
            by_partition[row.partition].add(bp)
    finally:
        con.close()
    for p, s in states.items():
        assert s.found, f"no changelog for partition {p}"
        assert set(s.blueprints) == by_partition[p], p
        for bp, row in s.blueprints.items():
            assert_same(load_state(row.state), snap["blueprints"][bp], f"changelog[{p}].{bp}")
        for d in s.decisions:
            status, reward, outcome_time, *_rest, payload = decisions[d.row.decision_id]
            assert (d.status, d.reward, d.outcome_time, d.row.payload) == (status, reward, outcome_time, payload)
        assert s.offsets == {k: snap["offsets"].get((topics[k], p), 0) for k in INPUTS}, p
    assert sum(len(s.decisions) for s in states.values()) == len(decisions)


@pytest.mark.timeout(300)  # a bound, not a speed goal: a loaded machine takes minutes
async def test_kill_mid_publish_answers_once_and_learns_once(kafka_bootstrap, kafka_topic_factory, tmp_path):
    topics = await worker_topics(kafka_topic_factory, "kill", changelog.TOPIC_CONFIG)
    group = unique_topic("kill-group")
    wp = worker_process(kafka_bootstrap, tmp_path, "w", topics, group)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=2)
    await producer.start()
    tamiyo = Tamiyo(producer, topics, 20261204)
    dangling = None
    bogus = b'{"event_type": "seed.selected", "from": "an open transaction"}'

    def alive() -> None:
        assert wp.alive(), f"the worker exited ({wp.proc.returncode}){wp.tail()}"

    try:
        async with CommittedReader(kafka_bootstrap, topics["selections"]) as sel:
            wp.start()
            await tamiyo.converse(sel, 120, withhold_last=10, alive=alive)
            assert await wp.terminate() == 0, wp.tail()

            # A batch over every partition: requests, and the withheld outcomes. The worker stores it, publishes
            # one partition's transaction, and is killed before the next.
            await tamiyo.ask(30)
            await tamiyo.release()
            wp.env[HOOK] = "60"
            wp.start()
            await eventually(
                lambda: "test hook: pausing" in since_last_start(wp) or not wp.alive(),
                "the worker to pause between the transactions of a batch",
                detail=wp.tail,
            )
            wp.kill()
            assert "before transaction 2 of" in since_last_start(wp), wp.tail()

            # A worker killed inside a transaction leaves it open: its records are in the log, not committed. Here
            # an answer, and a changelog record no later batch overwrites (a decision under a key of its own): a
            # restore reading it would hold one decision too many. The restarted worker's fence must abort the
            # transaction, or read_committed readers of partition 0 would wait at it for ever.
            dangling = AIOKafkaProducer(
                bootstrap_servers=kafka_bootstrap, transactional_id=f"{group}-0", enable_idempotence=True
            )
            await dangling.start()
            await dangling.begin_transaction()
            some = next(iter(tamiyo.first.values()))
            ((_key, payload),) = tamiyo.copies[some.decision_id]
            await (await dangling.send(topics["selections"], bogus, key=some.blueprint_id.encode(), partition=0))
            await (
                await dangling.send(
                    topics["changelog"], orjson.dumps({"payload": payload.decode()}), key=b"d:never-made", partition=0
                )
            )

            del wp.env[HOOK]
            wp.start()
            await tamiyo.converse(sel, tamiyo.sent, alive=alive)
            ends = await input_ends(sel.consumer, topics)
            await consumed(wp.settings.db, ends, "the worker to consume everything", wp.tail)
            assert await wp.terminate() == 0, wp.tail()
            seen = len(sel.records)
            await tamiyo.answer((await sel.to_end())[seen:])
            restart_log = since_last_start(wp)
        async with Reader(kafka_bootstrap, topics["selections"], isolation_level="read_uncommitted") as uncommitted:
            assert bogus in {r.value for r in await uncommitted.to_end()}, "the open transaction wrote nothing"
        states = await ownership.read_changelog(wp.settings, KafkaBus(wp.settings.kafka), range(PARTITIONS))
    finally:
        wp.cleanup()
        if dangling is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dangling.stop(), 10)
        await producer.stop()

    assert "re-publishing" in restart_log, "nothing was left unpublished by the kill"
    n = tamiyo.sent
    assert set(tamiyo.first) == {ev.decision_id_for(f"req-{i}") for i in range(n)}
    for did, copies in tamiyo.copies.items():
        assert len(copies) == 1, f"decision {did} has {len(copies)} different answers: {copies}"
    c = read_all(wp.settings.db)["counters"]
    assert (c["decisions"], c["outcomes_learned"]) == (n, n), c
    for name in ("dead_letters", "duplicate_outcomes", "held_outcomes", "dangling_outcomes"):
        assert c.get(name, 0) == 0, (name, c)
    snap = read_all(wp.settings.db)
    replayed = tamiyo.replay(wp.settings)
    assert set(snap["blueprints"]) == set(replayed.blueprints)
    for bp, state in replayed.blueprints.items():
        assert_state_equal(snap["blueprints"][bp], state.to_dict(), bp)
    assert_changelog_folds_to(states, Path(wp.settings.db), topics)


@pytest.mark.timeout(300)  # a bound, not a speed goal: a loaded machine takes minutes
async def test_a_zombie_is_fenced_and_its_stale_answers_stay_invisible(kafka_bootstrap, kafka_topic_factory, tmp_path):
    topics = await worker_topics(kafka_topic_factory, "zombie", changelog.TOPIC_CONFIG)
    group = unique_topic("zombie-group")
    z = worker_process(kafka_bootstrap, tmp_path, "z", topics, group)
    w = worker_process(kafka_bootstrap, tmp_path, "w", topics, group)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=2)
    await producer.start()
    tamiyo = Tamiyo(producer, topics, 20261205)
    stopped = False
    try:
        async with CommittedReader(kafka_bootstrap, topics["selections"]) as sel:
            z.start()
            await tamiyo.converse(sel, 90, alive=lambda: None if z.alive() else pytest.fail(z.tail()))
            assert await z.terminate() == 0, z.tail()

            # Z stores a batch over every partition, publishes one partition's transaction, and stops (SIGSTOP:
            # no heartbeats) before the next, past its 3 s session.
            await tamiyo.ask(30)
            z.env[HOOK] = "8"
            z.start()
            await eventually(
                lambda: "test hook: pausing" in since_last_start(z) or not z.alive(),
                "Z to pause between the transactions of a batch",
                detail=z.tail,
            )
            assert z.alive(), z.tail()
            z.proc.send_signal(signal.SIGSTOP)
            stopped = True
            # A new default strategy: what is decided from now on differs from what Z stored before it. W is also
            # started with it, because a worker reads the control topic beside its inputs, not before them: W could
            # otherwise decide a few requests before it applies the switch, exactly as Z had.
            switch = ev.StrategySwitch(strategy="thompson", occurred_at=T0 + timedelta(seconds=tamiyo.sent))
            await (await producer.send(topics["control"], ev.encode(switch)))

            w.env["SEEDWORKER_DEFAULT_STRATEGY"] = "thompson"
            w.start()
            deadline = time.monotonic() + 90
            while len(tamiyo.first) < tamiyo.sent:
                assert time.monotonic() < deadline, f"{len(tamiyo.first)} of {tamiyo.sent} answered{w.tail()}"
                assert w.alive(), w.tail()
                await tamiyo.answer(await sel.poll(100), withhold=True)
            assert read_all(w.settings.db)["counters"].get("restored_partitions") == PARTITIONS, w.tail()

            z.proc.send_signal(signal.SIGCONT)
            stopped = False
            rc = await asyncio.to_thread(z.proc.wait, 60)
            z_log = since_last_start(z)
            assert rc == 1, f"the zombie exited with {rc}{z.tail()}"
            # Whether the fencing reached Z's send first or its background sender (then aiokafka refuses the send
            # as "not in transaction"), Z says it was fenced.
            assert "was fenced: another worker took the partition over" in z_log, z.tail()
            assert "Start it again to rejoin the group" in z_log, z.tail()
            assert "dropping" not in z_log, f"the zombie took partitions over on its way out{z.tail()}"

            # Z's answers still in its outbox: those of the transaction it committed before its pause (visible,
            # byte for byte: W restored them from the changelog) and those it never published, which W decided
            # afresh after the switch, so that they would show as second answers had any leaked.
            con = open_readonly(z.settings.db)
            try:
                unsent = [row.message for row in readers.unsent(con) if row.message.topic == topics["selections"]]
            finally:
                con.close()
            published = [m for m in unsent if tamiyo.copies[decision_id(m)] == {(m.key, m.value)}]
            stale = [m for m in unsent if m not in published]
            assert len({m.partition for m in published}) <= 1, "more than Z's first transaction became visible"
            assert stale, f"the zombie held no unpublished answers: nothing was tested{z.tail()}"
            for m in stale:
                ((_key, value),) = tamiyo.copies[decision_id(m)]
                assert decision(value) != decision(m.value), (
                    f"W answered {decision_id(m)} as Z had: a leak would not show"
                )
                assert ev.decode(value, ev.SEED_SELECTED).strategy == "thompson"

            await tamiyo.release()
            ends = await input_ends(sel.consumer, topics)
            await consumed(w.settings.db, ends, "W to consume everything", w.tail)
            assert await w.terminate() == 0, w.tail()
            seen = len(sel.records)
            await tamiyo.answer((await sel.to_end())[seen:])
    finally:
        if stopped:
            z.proc.send_signal(signal.SIGCONT)
        z.cleanup()
        w.cleanup()
        await producer.stop()

    n = tamiyo.sent
    assert set(tamiyo.first) == {ev.decision_id_for(f"req-{i}") for i in range(n)}
    for did, copies in tamiyo.copies.items():
        assert len(copies) == 1, f"decision {did} has {len(copies)} different answers: {copies}"
    snap = read_all(w.settings.db)
    replayed = tamiyo.replay(w.settings)
    assert set(snap["blueprints"]) == set(replayed.blueprints)
    for bp, state in replayed.blueprints.items():
        assert_state_equal(snap["blueprints"][bp], state.to_dict(), bp)
    print(
        f"zombie: {len(published)} answers of Z's committed transaction visible, {len(stale)} stored but unpublished "
        f"ones answered otherwise by W, none of them visible"
    )
