"""Kafka benchmark: the worker beside a no-logic aiokafka consume→produce passthrough, through a real broker.

Both pipelines run in the same benchmark run, against the same broker, each in its own child process
(``python -m bench.kafka_worker pipe CONFIG``); this process is the driver (it produces the requests and consumes
the outputs), so the load generator never shares an event loop with the pipeline it measures.

- passthrough: an ``AIOKafkaConsumer`` in a consumer group (manual commits, ``max_poll_records`` = the worker's
  ``max_batch``), ``getmany`` batches, one small output per input with the same key (and the input's headers), the
  producer configured like the worker's (idempotent, acks=all, linger 1 ms), the whole batch's acks awaited, then
  the offsets committed. No decoding, no state, no SQLite: the floor any Kafka worker in Python stands on.
- worker: ``seedworker.engine.worker.Worker`` with the default settings (default strategy, ``max_batch``, poll timeout),
  its own SQLite file, started like ``seedworker run`` does. Subclasses of ``KafkaBus`` and ``Worker`` only add
  timers (and, for the profile run, cProfile around ``process()``).

(a) Throughput: N requests (K=8 seeds, several blueprints, 3 partitions) are produced up front, one copy per
pipeline and round; the pipeline is started and the rate is N / (first non-empty poll → the last output
acknowledged by the broker); the driver then checks the output topic holds exactly N records.
(b) Latency: requests produced at a fixed rate (a warm-up second, then the measured window); latency = request
handed to the producer → its output consumed by the driver's consumer (same process, same monotonic clock),
matched through the ``decision_id`` header (the worker's selections carry it; the driver sets it on every request
and the passthrough copies the input's headers).

Rounds (``--rounds``, default 2) alternate which pipeline runs first, so that noise from elsewhere on the machine
hits both; throughput takes each pipeline's best round, latency pools the rounds. When a goal is missed, a further
worker run over a fresh input is profiled with cProfile around ``process()``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 3
K = 8
BLUEPRINTS = 6
MAX_BATCH = 500  # seedworker's default kafka.max_batch; the passthrough polls the same batch size
POLL_MS = 200  # seedworker's default kafka.poll_timeout_ms
OUT_VALUE = b'{"ok":true}'  # the passthrough's small output
HEADER = "decision_id"
GOAL_TPUT = 0.5  # worker events/s >= 50% of the passthrough's
GOAL_P99 = 2.0  # worker p99 decision latency <= 2x the passthrough's


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------------
def _emit(tag: str, payload: dict) -> None:
    print(f"{tag} {json.dumps(payload)}", flush=True)


def build_requests(tag: str, n: int, seed: int) -> list[tuple[bytes, bytes, list, str]]:
    """n ``graft.requested`` messages: (key, value, headers, decision_id). Key = blueprint id, as a producer
    would key them so a blueprint's requests stay on one partition."""
    import orjson

    from seedworker.contract.events import SCHEMA_VERSION, decision_id_for

    rng = np.random.default_rng([seed, n, len(tag)])
    seeds = [{"seed_id": f"seed-{j}", "seed_idx": j, "state": "dormant"} for j in range(K)]
    ctx = {
        "current_loss": rng.uniform(0.05, 2.5, n),
        "current_accuracy": rng.uniform(0.3, 0.95, n),
        "learning_rate": 10 ** rng.uniform(-4, -2, n),
        "current_epoch": rng.integers(0, 100, n).astype(float),
        "total_epochs": np.full(n, 100.0),
        "loss_momentum": rng.normal(0, 0.1, n),
        "gradient_norm": rng.uniform(0.1, 5.0, n),
        "batch_size": rng.choice([32.0, 64.0, 128.0], n),
        "gpu_memory_used": rng.uniform(1000, 8000, n),
        "available_memory_mb": rng.uniform(1000, 16000, n),
        "urgency": rng.uniform(0, 1, n),
    }
    cols = {k: v.tolist() for k, v in ctx.items()}
    t0 = time.time()
    out = []
    for i in range(n):
        rid = f"{tag}-{i}"
        did = decision_id_for(rid)
        bp = f"bp-{i % BLUEPRINTS}"
        body = {
            "event_id": f"ev-{rid}",
            "event_type": "graft.requested",
            "schema_version": SCHEMA_VERSION,
            "occurred_at": datetime.fromtimestamp(t0 + i * 1e-3, UTC).isoformat(),
            "source": "bench",
            "request_id": rid,
            "blueprint_id": bp,
            "layer_name": f"layer-{i % 4}",
            "seeds": seeds,
            "context": {k: c[i] for k, c in cols.items()},
        }
        out.append((bp.encode(), orjson.dumps(body), [(HEADER, did.encode())], did))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The child: one pipeline, until it has had `expect` outputs acknowledged
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Clock:
    expect: int
    t_first: float | None = None  # first non-empty poll returned
    t_done: float | None = None  # the expect-th output acknowledged
    outputs: int = 0
    batches: int = 0
    messages: int = 0
    poll: float = 0.0
    process: float = 0.0
    statuses: float = 0.0
    write: float = 0.0
    send: float = 0.0
    settle: float = 0.0  # the worker's process() waiting for the previous batch's publish
    commit: float = 0.0
    polled_ms: list | None = None  # per record: its producer timestamp (CreateTime) → returned by poll, ms
    cpu_first: float = 0.0  # process CPU time (all threads) at t_first
    cpu_done: float = 0.0  # ... and at t_done

    def stats(self) -> dict:
        d = dict(self.__dict__)
        d["elapsed"] = (self.t_done - self.t_first) if self.t_done and self.t_first else None
        d["cpu"] = self.cpu_done - self.cpu_first  # CPU seconds over the same span
        lags = np.asarray(d.pop("polled_ms") or [0.0])
        d["polled"] = [float(np.median(lags)), float(np.percentile(lags, 99)), float(lags.max())]
        return d

    def polled(self, timestamps_ms) -> None:
        now = time.time() * 1000.0
        if self.polled_ms is None:
            self.polled_ms = []
        self.polled_ms.extend(now - t for t in timestamps_ms)


async def _passthrough(cfg: dict) -> dict:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.abc import ConsumerRebalanceListener

    st = Clock(cfg["expect"])
    b = cfg["bootstrap"]
    producer = AIOKafkaProducer(
        bootstrap_servers=b, client_id="bench-passthrough", enable_idempotence=True, acks="all", linger_ms=1
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=b,
        client_id="bench-passthrough",
        group_id=cfg["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=MAX_BATCH,
        isolation_level="read_uncommitted",
    )
    ready = []

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            pass

        async def on_partitions_assigned(self, assigned):
            if assigned and not ready:
                ready.append(1)
                _emit("READY", {"partitions": len(assigned)})

    await producer.start()
    await consumer.start()
    out_topic = cfg["out"]
    pc = time.perf_counter
    deadline = pc() + cfg["timeout_s"]
    try:
        consumer.subscribe([cfg["in"]], listener=Listener())
        while st.outputs < st.expect and pc() < deadline:
            t0 = pc()
            batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_BATCH)
            t1 = pc()
            if st.t_first is not None:  # the wait for the very first records is not the pipeline's time
                st.poll += t1 - t0
            if not batches:
                continue
            if st.t_first is None:
                st.t_first, st.cpu_first = t1, time.process_time()
            st.polled([r.timestamp for records in batches.values() for r in records])
            futures, offsets = [], {}
            for tp, records in batches.items():
                for r in records:
                    futures.append(await producer.send(out_topic, OUT_VALUE, key=r.key, headers=list(r.headers)))
                offsets[tp] = records[-1].offset + 1
            await asyncio.gather(*futures)
            t2 = pc()
            st.send += t2 - t1
            await consumer.commit(offsets)
            st.commit += pc() - t2
            st.batches += 1
            st.messages += len(futures)
            st.outputs += len(futures)
            if st.outputs >= st.expect and st.t_done is None:
                st.t_done, st.cpu_done = t2, time.process_time()
    finally:
        await consumer.stop()
        await producer.stop()
    return st.stats()


async def _worker(cfg: dict) -> dict:
    import cProfile

    from seedworker.broker.kafka import KafkaBus
    from seedworker.core.config import Settings
    from seedworker.engine.worker import Worker
    from seedworker.ops import collector

    st = Clock(cfg["expect"])
    settings = Settings(
        db=cfg["db"],
        kafka={
            "bootstrap_servers": cfg["bootstrap"],
            "group_id": cfg["group"],
            "client_id": "bench-worker",
            "topics": cfg["topics"],
            "connect_timeout_s": 30,
        },
    )
    selections = settings.kafka.topics.selections
    pc = time.perf_counter
    prof = cProfile.Profile() if cfg.get("profile") else None
    holder: dict = {}

    class TimedBus(KafkaBus):
        async def start(self, topics, on_assign, on_revoke):
            async def assigned(tps):
                await on_assign(tps)
                if tps and "ready" not in holder:
                    holder["ready"] = True
                    _emit("READY", {"partitions": len(tps)})

            await super().start(topics, assigned, on_revoke)

        async def poll(self, timeout_ms, max_records):
            t0 = pc()
            out = await super().poll(timeout_ms, max_records)
            t1 = pc()
            if st.t_first is not None:  # the wait for the very first records is not the pipeline's time
                st.poll += t1 - t0
            if out and st.t_first is None:
                st.t_first, st.cpu_first = t1, time.process_time()
            if out:
                st.polled([m.timestamp_ms for m in out])
            return out

        async def send(self, messages, *, owner=None):
            # The wall time while any send is in flight: the worker sends the partitions' transactions together.
            t0 = pc()
            if not holder.get("sending"):
                holder["send_since"] = t0
            holder["sending"] = holder.get("sending", 0) + 1
            msgs = list(messages)
            try:
                await super().send(msgs, owner=owner)
            finally:
                holder["sending"] -= 1
            t1 = pc()
            if not holder["sending"]:
                st.send += t1 - holder["send_since"]
            st.outputs += sum(1 for m in msgs if m.topic == selections)
            if st.outputs >= st.expect and st.t_done is None:
                st.t_done, st.cpu_done = t1, time.process_time()
                holder["worker"].stop()

        async def commit(self, offsets, owner=""):
            t0 = pc()
            done = await super().commit(offsets, owner)
            st.commit += pc() - t0
            return done

    class TimedWorker(Worker):
        async def process(self, messages, **kw):
            t0 = pc()
            holder["in_process"] = True
            if prof is not None:
                prof.enable()
            try:
                await super().process(messages, **kw)
            finally:
                if prof is not None:
                    prof.disable()
                holder["in_process"] = False
                st.process += pc() - t0
                st.batches += 1
                st.messages += len(messages)

    worker = holder["worker"] = TimedWorker(settings, bus=TimedBus(settings.kafka))
    store = worker.store

    def timed(fn, attr):
        async def wrapper(*a, **kw):
            t0 = pc()
            try:
                return await fn(*a, **kw)
            finally:
                if holder.get("in_process"):  # not the final flush at close
                    setattr(st, attr, getattr(st, attr) + pc() - t0)

        return wrapper

    store.write = timed(store.write, "write")
    worker.settle = timed(worker.settle, "settle")
    store.decision_statuses = timed(store.decision_statuses, "statuses")
    timeout = False
    collector.tune()  # as `seedworker run` does (seedworker.tools.cli)
    try:
        await asyncio.wait_for(collector.freezing(worker.ready, worker.run()), cfg["timeout_s"])
    except TimeoutError:
        timeout = True
    if prof is not None:
        prof.dump_stats(cfg["profile"])
    out = st.stats()
    out["counters"] = dict(worker.counters.values)
    out["timeout"] = timeout
    return out


def _pipe_main(raw: str) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = json.loads(raw)
    run = _passthrough if cfg["kind"] == "passthrough" else _worker
    stats = asyncio.run(run(cfg))
    _emit("DONE", stats)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------------
def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _machine_busy(before, after) -> str:
    """Share of all CPUs busy between two _cpu_ticks() readings: everything on the machine, this run included."""
    if before is None or after is None or after[1] <= before[1]:
        return "n/a"
    return f"{(after[0] - before[0]) / (after[1] - before[1]):.0%}"


def _progress(msg: str) -> None:
    print(f"  [kafka_worker] {msg}", file=sys.stderr, flush=True)


class Child:
    """A pipeline in a child process; speaks READY/DONE lines on stdout, stderr goes to a file."""

    def __init__(self, cfg: dict, workdir: Path):
        self.cfg = cfg
        self.err_path = workdir / f"{cfg['kind']}-{cfg['group']}.stderr"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.err_path, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.kafka_worker",
                "pipe",
                json.dumps(self.cfg),
                cwd=str(REPO),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )

    def _stderr_tail(self) -> str:
        try:
            return "\n".join(self.err_path.read_text(errors="replace").splitlines()[-25:])
        except OSError:
            return ""

    async def expect(self, tag: str, timeout: float) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{self.cfg['kind']} child: no {tag} within {timeout:.0f}s; stderr:\n" + self._stderr_tail()
                )
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not line:
                code = await self.proc.wait()
                raise RuntimeError(
                    f"{self.cfg['kind']} child exited ({code}) before {tag}; stderr:\n" + self._stderr_tail()
                )
            text = line.decode(errors="replace").strip()
            if text.startswith(tag + " "):
                return json.loads(text[len(tag) + 1 :])

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # only our own child, by its pid

    async def finish(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()  # only our own child, by its pid
                await self.proc.wait()


@dataclass
class Plan:
    rounds: int  # rounds per pipeline, alternating passthrough and worker (machine noise hits both alike)
    n: int  # throughput: requests per pipeline per round
    rate: float  # latency: offered requests/s
    warm_s: float  # latency: warm-up seconds per round (not measured)
    window_s: float  # latency: measured seconds per round
    profile_n: int  # requests of the cProfile run (only when a goal is missed)

    @property
    def warm(self) -> int:
        return int(self.rate * self.warm_s)

    @property
    def measured(self) -> int:
        return int(self.rate * self.window_s)


def make_plan(report) -> Plan:
    o = report.options
    rounds = max(1, o.rounds or (1 if report.quick else 2))
    if report.quick:
        return Plan(rounds, n=o.events or 2000, rate=300, warm_s=0.5, window_s=2.0 / rounds, profile_n=1000)
    # 20k requests and 10 s at 500 req/s per pipeline in all, split over the rounds
    return Plan(rounds, n=o.events or 20_000 // rounds, rate=500, warm_s=1.0, window_s=10.0 / rounds, profile_n=5000)


class Driver:
    def __init__(self, bootstrap: str, workdir: Path, seed: int):
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.seed = seed
        self.run_id = f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"

    def topic(self, name: str) -> str:
        return f"bench.{self.run_id}.{name}"

    async def create_topics(self, names: list[str]) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
            for _ in range(100):  # until every partition has a leader
                if set(names) <= set(await admin.list_topics()):
                    desc = await admin.describe_topics(names)
                    if all(
                        t.get("error_code", 0) == 0
                        and len(t.get("partitions", ())) == PARTITIONS
                        and all(p.get("error_code", 0) == 0 and p.get("leader", -1) >= 0 for p in t["partitions"])
                        for t in desc
                    ):
                        break
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    async def delete_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(f"bench.{self.run_id}.")]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    async def produce(self, topic: str, msgs) -> float:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
        await p.start()
        t0 = time.perf_counter()
        try:
            futures = []
            for key, value, headers, _ in msgs:
                futures.append(await p.send(topic, value, key=key, headers=headers))
                if len(futures) >= 2000:
                    await asyncio.gather(*futures)
                    futures = []
            await asyncio.gather(*futures)
        finally:
            await p.stop()
        return time.perf_counter() - t0

    async def end_offsets(self, topic: str) -> int:
        """The number of committed records in the topic. Counted by reading them: the worker publishes in Kafka
        transactions, whose commit markers take an offset each, so the end offsets overcount."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            c.assign(tps)
            ends = await c.end_offsets(tps)
            await c.seek_to_beginning(*tps)
            n = 0
            left = [tp for tp in tps if ends[tp] > 0]
            while left:
                for records in (await c.getmany(*left, timeout_ms=500, max_records=5000)).values():
                    n += len(records)
                left = [tp for tp in left if await c.position(tp) < ends[tp]]  # markers count as read
            return n
        finally:
            await c.stop()

    def pipeline_cfg(self, kind: str, tag: str, expect: int, timeout_s: float, profile: str | None = None) -> dict:
        cfg = {
            "kind": kind,
            "bootstrap": self.bootstrap,
            "group": f"bench-{self.run_id}-{tag}",
            "expect": expect,
            "timeout_s": timeout_s,
            "in": self.topic(f"{tag}.in"),
            "out": self.topic(f"{tag}.out"),
        }
        if kind == "worker":
            cfg["db"] = str(self.workdir / f"{tag}.sqlite")
            cfg["topics"] = {
                "requests": cfg["in"],
                "selections": cfg["out"],
                "outcomes": self.topic(f"{tag}.outcomes"),
                "dead_letters": self.topic(f"{tag}.dlq"),
                "control": self.topic(f"{tag}.control"),
            }
            cfg["profile"] = profile
        return cfg

    async def throughput(self, kind: str, tag: str, n: int, timeout_s: float, profile: str | None = None) -> dict:
        """The input (n requests) is already in topic `tag.in`: run the pipeline over it and time it."""
        cfg = self.pipeline_cfg(kind, tag, n, timeout_s, profile)
        if kind == "passthrough":
            await self.create_topics([cfg["out"]])
        child = Child(cfg, self.workdir)
        t0 = time.perf_counter()
        await child.start()
        try:
            await child.expect("READY", 90)
            t_ready = time.perf_counter()
            ticks = _cpu_ticks()
            done = await child.expect("DONE", timeout_s + 40)
            done["machine_busy"] = _machine_busy(ticks, _cpu_ticks())
        except BaseException:
            child.kill()
            raise
        finally:
            await child.finish()
        done["ready_s"] = t_ready - t0
        done["outputs_in_topic"] = await self.end_offsets(cfg["out"])
        if done.get("elapsed") is None or done["outputs_in_topic"] != n:
            raise RuntimeError(
                f"{kind}: {done['outputs']} outputs acknowledged, {done['outputs_in_topic']} in the "
                f"output topic, {n} expected: {done}"
            )
        if kind == "worker" and (done["counters"].get("decisions") != n or done["counters"].get("dead_letters")):
            raise RuntimeError(f"worker counters: {done['counters']}")
        return done

    async def latency(self, kind: str, tag: str, plan: Plan, msgs) -> dict:
        """Paced requests; per request: handed to the producer → its output consumed here."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        total = len(msgs)
        cfg = self.pipeline_cfg(kind, tag, total, plan.warm_s + plan.window_s + 60)
        await self.create_topics([cfg["in"]] + ([cfg["out"]] if kind == "passthrough" else []))
        child = Child(cfg, self.workdir)
        await child.start()
        producer = collector = None
        try:
            await child.expect("READY", 90)
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)
            collector = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
            )
            await producer.start()
            await collector.start()
            tps = [TopicPartition(cfg["out"], p) for p in range(PARTITIONS)]
            collector.assign(tps)
            await collector.seek_to_beginning(*tps)
            for tp in tps:
                await collector.position(tp)
            sent: dict[str, int] = {}
            got: dict[str, int] = {}
            out_bytes = [0, 0]
            ns = time.perf_counter_ns
            pc = time.perf_counter

            async def produce() -> float:
                futures = []
                t0 = pc()
                for i, (key, value, headers, did) in enumerate(msgs):
                    delay = t0 + i / plan.rate - pc()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent[did] = ns()
                    futures.append(await producer.send(cfg["in"], value, key=key, headers=headers))
                await asyncio.gather(*futures)
                return pc() - t0

            async def collect() -> None:
                deadline = pc() + plan.warm_s + plan.window_s + 30
                while len(got) < total and pc() < deadline:
                    batches = await collector.getmany(timeout_ms=100)
                    t = ns()
                    for records in batches.values():
                        for r in records:
                            out_bytes[0] += len(r.value or b"")
                            out_bytes[1] += 1
                            for k, v in r.headers or ():
                                if k == HEADER:
                                    got.setdefault(v.decode(), t)

            t_start = pc()
            ticks = _cpu_ticks()
            produced_s, _ = await asyncio.gather(produce(), collect())
            window = pc() - t_start
            busy_machine = _machine_busy(ticks, _cpu_ticks())
            done = await child.expect("DONE", 60)
        except BaseException:
            child.kill()
            raise
        finally:
            for client in (producer, collector):
                if client is not None:
                    await client.stop()
            await child.finish()
        measured = [m[3] for m in msgs[plan.warm :]]
        lat = np.array([got[d] - sent[d] for d in measured if d in got], dtype=np.int64)
        return {
            "lat_ns": lat,
            "lost": sum(1 for d in measured if d not in got),
            "n": len(measured),
            "rate": total / produced_s,
            "child": done,
            "window": window,
            "machine_busy": busy_machine,
            "out_bytes": out_bytes[0] / max(out_bytes[1], 1),
        }


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
def _ms(ns_arr: np.ndarray) -> tuple[float, float, float]:
    if len(ns_arr) == 0:
        return float("nan"), float("nan"), float("nan")
    ms = ns_arr / 1e6
    return float(np.median(ms)), float(np.percentile(ms, 99)), float(ms.max())


def _breakdown(label: str, d: dict, per: str = "messages", scale: float = 1e6, total: float | None = None) -> list:
    """Time of each part of the pipeline loop per event (µs) or per batch (ms, scale 1e3)."""
    m = max(d[per], 1)
    us = lambda s: f"{s / m * scale:.1f}"  # noqa: E731
    if total is None:
        total = d["elapsed"] or 0
    if not d.get("process"):  # the passthrough
        return [label, us(d["poll"]), us(d["send"]), "-", "-", "-", "-", us(d["commit"]), us(total)]
    # The worker's publish of a batch runs beside the next batch (Worker.process): process() waits for it only in
    # settle, so its CPU is process() less that wait and its other awaits.
    cpu = d["process"] - d["statuses"] - d["write"] - d["settle"] - d["commit"]
    return [
        label,
        us(d["poll"]),
        us(d["send"]),
        us(d["settle"]),
        us(cpu),
        us(d["statuses"]),
        us(d["write"]),
        us(d["commit"]),
        us(total),
    ]


BREAKDOWN = ["poll", "produce+acks", "waits for it", "worker CPU", "statuses", "SQLite write", "commit"]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and np.isfinite(a) and np.isfinite(b) else float("nan")


PROFILE_FUNCS = (
    "_decode",
    "_on_request",
    "decide",
    "apply_selection",
    "encode",
    "decode",
    "_headers_blob",
    "_outgoing",
    "selection_headers",
    "model_dump",
    "model_validate",
    "dump_state",
    "_event",
    "_statuses",
    "_expire",
    "_choose",
    "_viability",
    "transform",
    "update",
)


def report_profile(report, path: str, events: int) -> None:
    import pstats

    stats = pstats.Stats(path).stats  # {(file, line, func): (cc, ncalls, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values()) or 1e-12

    def name(file, line, func):
        if file == "~":
            return func
        where = file.rsplit("/", 1)[-1]
        for marker in ("/seedworker/", "/site-packages/", "/bench/", "/lib/python3.11/"):
            if marker in file:
                where = file.split(marker, 1)[1]
                break
        return f"{where}:{line}({func})"

    report.line()
    report.line(
        f"cProfile of the worker's process() over {events} requests (main thread only: while process() "
        f"awaits, aiokafka's own tasks run and are counted too, and the SQLite transaction runs on aiosqlite's "
        f"thread, so it shows as the event loop's epoll wait). Profiled time {total:.2f} s; per request:"
    )
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:16]
    report.table(
        ["function (by own time)", "calls/event", "own µs/event", "own share", "cumulative µs/event"],
        [
            [
                name(*k),
                f"{v[1] / events:.1f}",
                f"{v[2] / events * 1e6:.1f}",
                f"{v[2] / total:.0%}",
                f"{v[3] / events * 1e6:.1f}",
            ]
            for k, v in top
        ],
        "lrrrr",
    )
    picked = [(k, v) for k, v in stats.items() if k[2] in PROFILE_FUNCS and "/seedworker/" in k[0]]
    picked.sort(key=lambda kv: kv[1][3], reverse=True)
    report.line()
    report.table(
        ["seedworker function (cumulative, cProfile-inflated)", "calls/event", "cumulative µs/event", "share"],
        [
            [name(*k), f"{v[1] / events:.1f}", f"{v[3] / events * 1e6:.1f}", f"{v[3] / total:.0%}"]
            for k, v in picked[:16]
        ],
        "lrrr",
    )


async def _run(report, plan: Plan, bootstrap: str, broker_note: str, workdir: Path) -> None:
    from seedworker.contract import events as ev

    d = Driver(bootstrap, workdir, report.options.seed)
    kinds = ("passthrough", "worker")
    short = {"passthrough": "pt", "worker": "w"}
    try:
        # (a) throughput: one input copy per pipeline and round, all produced before any pipeline runs
        _progress(f"building {plan.n} requests")
        msgs = build_requests(f"tp-{d.run_id}", plan.n, d.seed)
        ev.decode(msgs[0][1], ev.GRAFT_REQUESTED)  # the requests are valid events
        size = int(np.mean([len(m[1]) for m in msgs]))
        inputs = [f"{short[k]}{r}" for r in range(plan.rounds) for k in kinds]
        await d.create_topics([d.topic(f"{t}.in") for t in inputs])
        for t in inputs:
            await d.produce(d.topic(f"{t}.in"), msgs)
        _progress(f"pre-produced {plan.n} requests to {len(inputs)} input topics")
        tput: dict[str, list[dict]] = {k: [] for k in kinds}
        for r in range(plan.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                _progress(f"throughput round {r + 1}/{plan.rounds}: {kind}")
                tput[kind].append(await d.throughput(kind, f"{short[kind]}{r}", plan.n, 150))

        # (b) latency, the same alternation
        lat: dict[str, list[dict]] = {k: [] for k in kinds}
        for r in range(plan.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                _progress(
                    f"latency round {r + 1}/{plan.rounds}: {kind} at {plan.rate:g} req/s for "
                    f"{plan.warm_s + plan.window_s:g} s"
                )
                tag = f"{short[kind]}l{r}"
                lmsgs = build_requests(f"{tag}-{d.run_id}", plan.warm + plan.measured, d.seed + 1 + r)
                lat[kind].append(await d.latency(kind, tag, plan, lmsgs))

        # ---- the report
        report.line(f"broker: {broker_note}; topics bench.{d.run_id}.*, {PARTITIONS} partitions each, replication 1")
        report.line(
            f"requests: graft.requested, K={K} seeds, {BLUEPRINTS} blueprints (key = blueprint id), 11 context "
            f"signals, ~{size} bytes. Passthrough output: {len(OUT_VALUE)} bytes + the input's headers; worker "
            f"output: the seed.selected event. Each pipeline runs in a child process (worker: "
            f"seedworker.engine.worker.Worker, default strategy, max_batch {MAX_BATCH}, its own SQLite file); the "
            f"driver (producer, consumer) is this process. {plan.rounds} round(s) per measurement, alternating "
            f"which pipeline goes first."
        )
        report.section(f"(a) throughput: {plan.n} pre-produced requests per pipeline and round")
        report.line(
            "events/s = N / (first non-empty poll → last output acknowledged by the broker); the output "
            "topic then holds exactly N records (checked). CPU = the pipeline process's CPU time (all "
            "threads) over the same span. start = process start → partitions assigned. machine busy = share "
            "of all CPUs in use meanwhile (everything: broker, pipeline, driver, other processes). The best "
            "round of each pipeline is the figure."
        )
        rows = []
        best = {}
        for kind in kinds:
            rates = [plan.n / x["elapsed"] for x in tput[kind]]
            best[kind] = int(np.argmax(rates))
            for r, x in enumerate(tput[kind]):
                rows.append(
                    [
                        kind,
                        r + 1,
                        x["messages"],
                        f"{x['elapsed']:.2f}",
                        f"{rates[r]:,.0f}",
                        f"{x['cpu'] / x['messages'] * 1e6:.0f}",
                        x["batches"],
                        f"{x['messages'] / max(x['batches'], 1):.0f}",
                        f"{x['ready_s']:.1f}",
                        x["machine_busy"],
                        "best" if r == best[kind] and plan.rounds > 1 else "",
                    ]
                )
        report.table(
            [
                "pipeline",
                "round",
                "events",
                "seconds",
                "events/s",
                "CPU µs/event",
                "batches",
                "events/batch",
                "start s",
                "machine busy",
                "",
            ],
            rows,
        )
        report.line()
        report.line(
            "where the time of the best round goes, µs per event (wall clock summed over batches): poll = "
            "getmany and record conversion (after the first records); produce+acks = send() of the batch's "
            "outputs and waiting for their acks (while any send is in flight: the worker's per-partition "
            "transactions overlap, and a batch's publish runs beside the worker's next poll and batch, so it is "
            "not part of the total); waits for it = the worker's process() waiting for the previous batch's "
            "publish before starting its own; worker CPU = process() minus its awaits (decode, decide, "
            "encode, build the batch); statuses = the batch's SQLite id lookup; SQLite write = the batch's "
            "transaction (aiosqlite thread)."
        )
        report.table(["pipeline", *BREAKDOWN, "total"], [_breakdown(k, tput[k][best[k]]) for k in kinds])

        report.section(
            f"(b) decision latency at {plan.rate:g} req/s offered, {plan.window_s * plan.rounds:g} s "
            f"measured per pipeline ({plan.rounds} x ({plan.warm_s:g} s warm-up + {plan.window_s:g} s))"
        )
        report.line(
            "latency = request handed to the driver's producer → its output returned by the driver's "
            "consumer (one process, monotonic clock), matched by the decision_id header. polled = the "
            "request's producer timestamp → returned by the pipeline's poll (ms clock, across processes). "
            "batches, events/batch, busy (share of the run in batch handling: the worker's process(), the "
            "passthrough's produce+acks+commit) and CPU (the pipeline process's CPU time per event) include "
            "the warm-up; machine busy = share of all CPUs in use while requests were produced and collected "
            "(everything on the machine): near 100%, the pipeline was short of CPU and the tail shows it."
        )
        rows = []
        pooled = {}
        for kind in kinds:
            for r, x in enumerate(lat[kind]):
                p50, p99, mx = _ms(x["lat_ns"])
                c = x["child"]
                busy = c["process"] or c["send"] + c["commit"]
                rows.append(
                    [
                        kind,
                        r + 1,
                        f"{x['rate']:.0f}",
                        len(x["lat_ns"]),
                        x["lost"],
                        f"{p50:.1f}",
                        f"{p99:.1f}",
                        f"{mx:.1f}",
                        f"{c['polled'][0]:.1f}",
                        f"{c['polled'][1]:.1f}",
                        c["batches"],
                        f"{c['messages'] / max(c['batches'], 1):.1f}",
                        f"{busy / x['window']:.0%}",
                        f"{c['cpu'] / max(c['messages'], 1) * 1e6:.0f}",
                        f"{x['out_bytes']:.0f}",
                        x["machine_busy"],
                    ]
                )
            pooled[kind] = np.concatenate([x["lat_ns"] for x in lat[kind]])
            if plan.rounds > 1:
                p50, p99, mx = _ms(pooled[kind])
                rows.append(
                    [
                        kind,
                        "all",
                        "",
                        len(pooled[kind]),
                        sum(x["lost"] for x in lat[kind]),
                        f"{p50:.1f}",
                        f"{p99:.1f}",
                        f"{mx:.1f}",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
        report.table(
            [
                "pipeline",
                "round",
                "offered/s",
                "n",
                "lost",
                "p50 ms",
                "p99 ms",
                "max ms",
                "polled p50",
                "polled p99",
                "batches",
                "events/batch",
                "busy",
                "CPU µs/event",
                "output B",
                "machine busy",
            ],
            rows,
        )
        report.line()
        report.line(
            "ms per batch in these runs (all rounds; 'handling' = produce+acks+commit for the passthrough, "
            "process() for the worker; poll includes waiting for records):"
        )
        rows = []
        for kind in kinds:
            c = {
                key: sum(x["child"][key] for x in lat[kind])
                for key in ("poll", "send", "commit", "process", "settle", "statuses", "write", "batches", "messages")
            }
            rows.append(_breakdown(kind, c, "batches", 1e3, c["process"] or c["send"] + c["commit"]))
        report.table(["pipeline", *BREAKDOWN, "handling"], rows)

        # ---- ratios and goals
        t_pt = plan.n / tput["passthrough"][best["passthrough"]]["elapsed"]
        t_w = plan.n / tput["worker"][best["worker"]]["elapsed"]
        ratio_t = t_w / t_pt
        (p50_pt, p99_pt, _), (p50_w, p99_w, _) = _ms(pooled["passthrough"]), _ms(pooled["worker"])
        ratio_99 = _ratio(p99_w, p99_pt)
        lost = sum(x["lost"] for k in kinds for x in lat[k])
        report.section("ratios (worker / passthrough) and goals")
        report.line(
            f"throughput:  worker {t_w:,.0f} events/s / passthrough {t_pt:,.0f} events/s = {ratio_t:.2f} "
            f"({ratio_t:.0%})"
        )
        report.line(f"latency p50: worker {p50_w:.1f} ms / passthrough {p50_pt:.1f} ms = {_ratio(p50_w, p50_pt):.2f}x")
        report.line(f"latency p99: worker {p99_w:.1f} ms / passthrough {p99_pt:.1f} ms = {ratio_99:.2f}x")
        ok_t = ratio_t >= GOAL_TPUT
        ok_l = ratio_99 <= GOAL_P99 and lost == 0
        report.line(
            f"  {'PASS' if ok_t else 'MISS'}  worker throughput {ratio_t:.0%} of the passthrough's "
            f"(goal >= {GOAL_TPUT:.0%})"
        )
        report.line(
            f"  {'PASS' if ok_l else 'MISS'}  worker p99 decision latency {ratio_99:.2f}x the passthrough's "
            f"(goal <= {GOAL_P99:g}x)" + (f"; {lost} outputs never arrived" if lost else "")
        )

        if not (ok_t and ok_l):
            _progress(f"a goal is missed: profiling the worker over {plan.profile_n} requests")
            await d.create_topics([d.topic("wp.in")])
            await d.produce(d.topic("wp.in"), msgs[: plan.profile_n])
            path = str(workdir / "worker.prof")
            prof = await d.throughput("worker", "wp", plan.profile_n, 150, profile=path)
            report.line()
            report.line(
                f"profiled run: {plan.profile_n / prof['elapsed']:,.0f} events/s under cProfile (unprofiled "
                f"best round: {t_w:,.0f})"
            )
            report_profile(report, path, plan.profile_n)
        try:
            load = "%.2f %.2f %.2f" % os.getloadavg()
        except OSError:
            load = "n/a"
        report.line()
        report.line(
            f"loadavg at the end: {load} ({os.cpu_count()} CPUs, shared by the broker, the pipeline, the "
            f"driver and anything else running)"
        )
    finally:
        try:
            await d.delete_topics()
        except Exception as exc:  # noqa: BLE001  cleanup must not hide the result
            _progress(f"could not delete the run's topics: {exc}")


def main(report) -> None:
    from seedworker.dev.local_kafka import REPO_ROOT, LocalKafka, free_port

    report.section("kafka_worker: seedworker worker vs a no-logic aiokafka passthrough, through a real broker")
    plan = make_plan(report)
    workdir = Path(tempfile.mkdtemp(prefix="seedworker-kafka-bench-"))
    kafka = None
    # aiokafka logs (and retries) NotLeaderForPartition on a just-created topic whose partitions are not served
    # yet; every count is checked (outputs in the topic, lost requests), so keep that noise off the console.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if env:
            bootstrap, note = env, f"KAFKA_BOOTSTRAP_SERVERS={env}"
        else:
            kafka = LocalKafka(
                port=free_port(),
                workdir=workdir / "kafka",
                libs_dir=REPO_ROOT / ".cache/kafka/libs",
                die_with_parent=True,
            )
            kafka.ensure_jars()
            t0 = time.perf_counter()
            _progress(f"starting LocalKafka on {kafka.bootstrap_servers}")
            kafka.start(timeout=120)
            bootstrap = kafka.bootstrap_servers
            note = (
                f"LocalKafka (Apache Kafka {kafka.kafka_version()}, KRaft, one JVM) on {bootstrap}, started in "
                f"{time.perf_counter() - t0:.1f} s"
            )
        asyncio.run(_run(report, plan, bootstrap, note, workdir))
    finally:
        quiet.setLevel(level)
        if kafka is not None:
            kafka.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "pipe":
        sys.exit(_pipe_main(sys.argv[2]))
    sys.exit("usage: python -m bench.kafka_worker pipe CONFIG_JSON (run by `python -m bench --only kafka`)")
