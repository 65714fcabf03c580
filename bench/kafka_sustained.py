"""Kafka benchmark: one worker over a sustained stream (default 1,000,000 input events), its memory sampled.

The worker is the product as deployed: ``python -m seedworker run --config FILE`` in a child process (default
strategy, its own SQLite file, ``join.reward_wait_s`` = 60 s and ``decision_retention_s`` = 90 s of event time, the
metrics endpoint on a free port).
The driver plays Tamiyo in a closed loop: it produces ``graft.requested`` (K=8 seeds, 12 blueprints keyed by
blueprint id, 3 partitions, event time advancing 10 ms per request), keeps at most ``WINDOW`` of them unanswered
so the worker always has a backlog but event time never runs far ahead, reads every ``seed.selected`` and answers
it on ``adaptation.outcome`` for the seed that was chosen, its event time 0.5–20 s after the request's, the reward
drawn from a per-blueprint quality of each seed. The mix, drawn per request from a seeded generator:

- 88% answered once; 2% answered twice (the second copy a duplicate outcome);
- 10% never answered: their decisions stay pending until the event time passes ``join.reward_wait_s``, then expire;
- 1% of requests are sent again once answered (a retry that raced the answer): the worker publishes the stored
  selection again and decides nothing new.

Every ``SAMPLE_S`` seconds the driver reads the worker's VmRSS/VmHWM from ``/proc/<pid>/status``, its CPU time
from ``/proc/<pid>/stat``, and scrapes ``/metrics``: ``decisions_pending``, ``outcomes_held`` and the counters
(input events processed = decisions + duplicate requests + outcome counters + dead letters). At the end the
counters are checked exactly against what the driver sent, and the output topic's record count against the
requests and retries. Verdicts: memory flat = least-squares RSS slope over the second half of the events (the
first is warm-up: the duplicate window and other bounded structures fill) at most 1 MiB per 100k events, no
verdict under 400,000 events; pending bounded = never above reward_wait_s / 10 ms + one batch (6,500), and not
creeping (mean of the last quarter of the samples at most 1.25x the second quarter's); storage bounded = the
least-squares slope of the SQLite file's size (sampled with the RSS) over the second half at most 1 MiB per 100k
events: resolved decisions are pruned after ``decision_retention_s``, 90 s of event time = 9,000 requests, so the
window of kept decisions is full after the first percent of the run. At the end: decisions pruned (counter
``pruned_decisions``) and kept (rows in the store).

Size: ``BENCH_SUSTAINED_EVENTS`` (default 1,000,000; ``--quick``: 20,000). At 2,500–3,300 events/s on 2 shared
cores (measured 2026-11-26) the default takes 5–7 minutes, 2,000,000 about 13; the SQLite file stays at tens of
MiB with pruning (it needed ~311 MiB per 100k events before decisions were pruned), in the temporary directory
(deleted afterwards).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.common_kafka import (
    Admin,
    BenchChild,
    broker,
    cpu_ticks,
    machine_busy,
    parse_metrics,
    proc_cpu_s,
    progress,
    quiet_aiokafka,
    rss_kib,
    scrape,
)

NAME = "kafka_sustained"
ENV_EVENTS = "BENCH_SUSTAINED_EVENTS"
DEFAULT_EVENTS = 1_000_000
QUICK_EVENTS = 20_000
PARTITIONS = 3
BLUEPRINTS = 12
K = 8
STEP_S = 0.01  # event time between consecutive requests
REWARD_WAIT_S = 60.0  # join.reward_wait_s (event time)
# decision_retention_s (event time): small, so the window of kept decisions (9,000 requests here) fills within
# the first percent of the run and the second half shows what the SQLite file does once pruning keeps pace.
RETENTION_S = 90.0
FLAT_DB_MIB_PER_100K = 1.0  # "bounded storage": SQLite file growth over the second half at most this
DELAY_S = (0.5, 20.0)  # event time from a request to its outcome
WINDOW = 1000  # requests sent but not yet answered by a selection, at most
MAX_BATCH = 500  # the worker's kafka.max_batch (default)
SAMPLE_S = 3.0  # seconds between samples (0.5 with --quick)
WARMUP_SHARE = 0.5  # the first half of the events is warm-up for the memory verdict (bounded structures filling)
FLAT_MIB_PER_100K = 1.0  # "flat": RSS slope after the warm-up at most this (about 10 bytes per event)
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # event time of request 0

ANSWER, TWICE, NEVER = 0, 1, 2
SHARES = (0.88, 0.02, 0.10)
RETRY_SHARE = 0.01
# Counters that each count one input event when it is processed (closed loop: no outcome is held, so none is
# counted twice as held and then learned; the check at the end says whether any was held).
EVENT_COUNTERS = (
    "decisions",
    "duplicate_requests",
    "outcomes_learned",
    "late_outcomes",
    "duplicate_outcomes",
    "mismatched_outcomes",
    "held_outcomes",
    "dead_letters",
)


def _say(msg: str) -> None:
    progress(NAME, msg)


@dataclass
class Plan:
    target: int  # input events asked for
    requests: int  # new requests (the smallest number whose events reach the target)
    fates: np.ndarray  # per request: ANSWER, TWICE or NEVER
    retry: np.ndarray  # per request: sent again once answered
    events: int = 0  # input events the driver will send: requests + retries + outcomes
    counts: dict = field(default_factory=dict)


def make_plan(report) -> Plan:
    if report.quick:
        target = QUICK_EVENTS
    else:
        raw = os.environ.get(ENV_EVENTS, "").strip()
        target = int(raw.replace("_", "")) if raw else DEFAULT_EVENTS
    if target < 1000:
        raise ValueError(f"{ENV_EVENTS}={target}: at least 1000 events")
    rng = np.random.default_rng([report.options.seed, 11])
    fates = rng.choice(3, size=target, p=SHARES).astype(np.int8)  # enough: every request is at least one event
    retry = rng.random(target) < RETRY_SHARE
    per_request = 1 + retry.astype(np.int64) + np.array([1, 2, 0])[fates]
    n = int(np.searchsorted(np.cumsum(per_request), target) + 1)
    plan = Plan(target, n, fates[:n], retry[:n])
    plan.events = int(per_request[:n].sum())
    plan.counts = {
        "answered once": int((plan.fates == ANSWER).sum()),
        "answered twice": int((plan.fates == TWICE).sum()),
        "never answered": int((plan.fates == NEVER).sum()),
        "retried": int(plan.retry.sum()),
    }
    return plan


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class Traffic:
    """The requests and outcomes, built on demand (a million events are not kept in memory)."""

    CHUNK = 4096

    def __init__(self, tag: str, seed: int):
        import orjson

        self.dumps = orjson.dumps
        self.tag = tag
        self.seed = seed
        self.seeds = [{"seed_id": f"seed-{j}", "seed_idx": j, "state": "dormant"} for j in range(K)]
        rng = np.random.default_rng([seed, 12])
        self.quality = rng.uniform(0.0, 0.03, (BLUEPRINTS, K))  # mean accuracy gain per blueprint and seed
        self._chunk = (-1, None)
        self.rng = np.random.default_rng([seed, 13])  # outcome noise and delays, in answering order

    def _context(self, i: int) -> dict:
        c, j = divmod(i, self.CHUNK)
        if self._chunk[0] != c:
            rng = np.random.default_rng([self.seed, 14, c])
            n = self.CHUNK
            cols = {
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
            self._chunk = (c, {k: v.tolist() for k, v in cols.items()})
        return {k: v[j] for k, v in self._chunk[1].items()}

    def request(self, i: int) -> tuple[bytes, bytes]:
        from seedworker.contract.events import SCHEMA_VERSION

        rid = f"{self.tag}-{i}"
        bp = f"bp-{i % BLUEPRINTS}"
        body = {
            "event_id": f"ev-{rid}",
            "event_type": "graft.requested",
            "schema_version": SCHEMA_VERSION,
            "occurred_at": _iso(T0 + i * STEP_S),
            "source": "bench",
            "request_id": rid,
            "blueprint_id": bp,
            "layer_name": f"layer-{i % 4}",
            "seeds": self.seeds,
            "context": self._context(i),
        }
        return bp.encode(), self.dumps(body)

    def outcome(self, i: int, decision_id: str, seed_id: str) -> tuple[bytes, bytes]:
        from seedworker.contract.events import SCHEMA_VERSION

        rid = f"{self.tag}-{i}"
        bp = i % BLUEPRINTS
        seed = int(seed_id.rsplit("-", 1)[1])
        ok = self.rng.random() >= 0.03  # a few grafts fail
        body = {
            "event_id": f"oc-{rid}",
            "event_type": "adaptation.outcome",
            "schema_version": SCHEMA_VERSION,
            "occurred_at": _iso(T0 + i * STEP_S + self.rng.uniform(*DELAY_S)),
            "source": "bench",
            "decision_id": decision_id,
            "request_id": rid,
            "blueprint_id": f"bp-{bp}",
            "seed_id": seed_id,
            "accuracy_delta": float(self.rng.normal(self.quality[bp, seed], 0.01)) if ok else 0.0,
            "success": ok,
        }
        return f"bp-{bp}".encode(), self.dumps(body)


@dataclass
class Sample:
    t: float  # seconds since the traffic started
    events: int  # input events the worker has processed (its counters)
    rss: int  # KiB
    hwm: int  # KiB
    cpu: float  # worker CPU seconds so far
    pending: int
    held: int
    sent: int  # input events the driver has sent
    tx: float = 0.0  # seconds the worker spent in its SQLite batch transactions so far (its histogram's sum)
    db: int = 0  # bytes of the SQLite file
    wal: int = 0  # bytes of its write-ahead log


def _config(path: Path, bootstrap: str, group: str, topics: dict, db: Path, port: int) -> None:
    lines = [
        f'db = "{db}"',
        f"decision_retention_s = {RETENTION_S}",
        "",
        "[kafka]",
        f'bootstrap_servers = "{bootstrap}"',
        f'group_id = "{group}"',
        'client_id = "bench-sustained"',
        f"partitions = {PARTITIONS}",
        f"output_partitions = {PARTITIONS}",
        f"max_batch = {MAX_BATCH}",
        "",
        "[kafka.topics]",
        *(f'{k} = "{v}"' for k, v in topics.items()),
        "",
        "[join]",
        f"reward_wait_s = {REWARD_WAIT_S}",
        "",
        "[metrics]",
        f"port = {port}",
        "",
    ]
    path.write_text("\n".join(lines))


async def _metrics(port: int) -> dict[str, float]:
    status, body = await scrape(port)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return parse_metrics(body)


def _tx(m: dict[str, float]) -> float:
    return m.get("seedworker_transaction_latency_seconds_sum", 0.0)


def _db_size(db: Path) -> tuple[int, int]:
    """(file, WAL) bytes of the worker's SQLite; 0 for a file not there (yet)."""
    out = []
    for path in (db, db.with_name(db.name + "-wal")):
        try:
            out.append(path.stat().st_size)
        except OSError:
            out.append(0)
    return out[0], out[1]


def _processed(m: dict[str, float]) -> int:
    return int(sum(m.get(f"seedworker_{c}_total", 0) for c in EVENT_COUNTERS))


async def _run(report, plan: Plan, bootstrap: str, note: str, broker_pid: int | None, workdir: Path) -> None:
    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from seedworker.dev.local_kafka import free_port

    run_id = f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
    admin = Admin(bootstrap, run_id)
    topics = {
        "requests": admin.topic("requests"),
        "outcomes": admin.topic("outcomes"),
        "selections": admin.topic("selected"),
        "dead_letters": admin.topic("dlq"),
        "control": admin.topic("control"),
    }
    traffic = Traffic(f"su-{run_id}", report.options.seed)
    db = workdir / "sustained.sqlite"
    port = free_port()
    cfg_path = workdir / "seedworker.toml"
    _config(cfg_path, bootstrap, f"bench-{run_id}", topics, db, port)
    child = BenchChild(
        {"group": f"bench-{run_id}"},
        workdir,
        "sustained-worker",
        [sys.executable, "-m", "seedworker", "run", "--config", str(cfg_path), "--log-level", "WARNING"],
    )
    producer = collector = None
    tasks: list[asyncio.Task] = []
    samples: list[Sample] = []
    try:
        await admin.create(
            {
                topics["requests"]: PARTITIONS,
                topics["outcomes"]: PARTITIONS,
                topics["selections"]: PARTITIONS,
                topics["dead_letters"]: PARTITIONS,
                topics["control"]: 1,
            }
        )
        await child.start()
        t_spawn = time.perf_counter()
        while True:  # ready = store open and consumer started (/readyz)
            try:
                if (await scrape(port, "/readyz"))[0] == 200:
                    break
            except OSError:
                pass
            if child.proc.returncode is not None or time.perf_counter() - t_spawn > 120:
                raise RuntimeError(f"the worker did not become ready; stderr:\n{child.stderr_tail()}")
            await asyncio.sleep(0.2)
        ready_s = time.perf_counter() - t_spawn
        await asyncio.sleep(2.0)  # let the group assignment finish before the baseline reading
        pid = child.pid
        base = rss_kib(pid)
        cpu_base = proc_cpu_s(pid) or 0.0

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
        # read_committed, as consumers of seed.selected should: the worker publishes in transactions.
        collector = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await producer.start()
        await collector.start()
        tps = [TopicPartition(topics["selections"], p) for p in range(PARTITIONS)]
        collector.assign(tps)
        await collector.seek_to_beginning(*tps)

        n = plan.requests
        seen = np.zeros(n, dtype=bool)
        retry_bytes: dict[int, tuple[bytes, bytes]] = {}
        state = {"next": 0, "answered": 0, "resent_selections": 0, "sent": 0, "outcomes": 0, "retries": 0}
        room = asyncio.Event()
        futures: list[asyncio.Future] = []

        async def settle(limit: int) -> None:
            if len(futures) >= limit:
                batch = futures[:]
                futures.clear()
                await asyncio.gather(*batch)

        async def send(topic: str, kv: tuple[bytes, bytes]) -> None:
            futures.append(await producer.send(topic, kv[1], key=kv[0]))
            state["sent"] += 1

        async def produce_requests() -> None:
            while state["next"] < n:
                free = WINDOW - (state["next"] - state["answered"])
                if free <= 0:
                    room.clear()
                    await room.wait()
                    continue
                for _ in range(min(free, 500, n - state["next"])):
                    i = state["next"]
                    kv = traffic.request(i)
                    if plan.retry[i]:
                        retry_bytes[i] = kv
                    await send(topics["requests"], kv)
                    state["next"] += 1
                await settle(2000)
                await asyncio.sleep(0)

        async def answer() -> None:
            while state["answered"] < n:
                batches = await collector.getmany(timeout_ms=200, max_records=2000)
                for records in batches.values():
                    for r in records:
                        body = orjson.loads(r.value)
                        i = int(body["request_id"].rsplit("-", 1)[1])
                        if seen[i]:
                            state["resent_selections"] += 1
                            continue
                        seen[i] = True
                        state["answered"] += 1
                        fate = plan.fates[i]
                        if fate != NEVER:
                            kv = traffic.outcome(i, body["decision_id"], body["seed_id"])
                            for _ in range(2 if fate == TWICE else 1):
                                await send(topics["outcomes"], kv)
                                state["outcomes"] += 1
                        if plan.retry[i]:
                            await send(topics["requests"], retry_bytes.pop(i))
                            state["retries"] += 1
                room.set()
                await settle(5000)
            await settle(1)

        ticks0 = cpu_ticks()
        driver0 = time.process_time()
        broker0 = proc_cpu_s(broker_pid) if broker_pid else None
        t_start = time.perf_counter()
        samples.append(Sample(0.0, 0, base.get("VmRSS", 0), base.get("VmHWM", 0), 0.0, 0, 0, 0))
        last_note = [t_start]

        async def sample() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    m = await _metrics(port)
                except (TimeoutError, OSError, RuntimeError) as exc:
                    _say(f"a /metrics scrape failed ({exc!r}); sample skipped")
                    continue
                mem = rss_kib(pid)
                s = Sample(
                    time.perf_counter() - t_start,
                    _processed(m),
                    mem.get("VmRSS", 0),
                    mem.get("VmHWM", 0),
                    (proc_cpu_s(pid) or 0.0) - cpu_base,
                    int(m.get("seedworker_decisions_pending", 0)),
                    int(m.get("seedworker_outcomes_held", 0)),
                    state["sent"],
                    _tx(m),
                    *_db_size(db),
                )
                samples.append(s)
                if time.perf_counter() - last_note[0] >= 30:
                    last_note[0] = time.perf_counter()
                    rate = s.events / s.t if s.t else 0.0
                    eta = (plan.events - s.events) / rate if rate else float("nan")
                    _say(
                        f"{s.events:,}/{plan.events:,} events in {s.t:.0f} s ({rate:,.0f}/s, ~{eta / 60:.1f} min "
                        f"left); RSS {s.rss / 1024:.1f} MiB, pending {s.pending}, held {s.held}"
                    )

        interval = 0.5 if report.quick else SAMPLE_S
        tasks = [asyncio.create_task(sample())]
        _say(
            f"{plan.events:,} input events ({n:,} requests); worker pid {pid}, RSS {base.get('VmRSS', 0) / 1024:.1f} "
            f"MiB at start; progress every 30 s"
        )

        async def watch() -> None:
            """Fail instead of waiting forever: the worker exited, or nothing was answered for two minutes."""
            last, since = -1, time.perf_counter()
            while True:
                if child.proc.returncode is not None:
                    raise RuntimeError(f"the worker exited ({child.proc.returncode}) during the run")
                if state["answered"] != last:
                    last, since = state["answered"], time.perf_counter()
                elif time.perf_counter() - since > 120:
                    raise RuntimeError(f"no selection for 120 s ({last:,} of {n:,} requests answered)")
                await asyncio.sleep(1.0)

        loop_task = asyncio.ensure_future(asyncio.gather(produce_requests(), answer()))
        watch_task = asyncio.create_task(watch())
        tasks += [loop_task, watch_task]
        await asyncio.wait([loop_task, watch_task], return_when=asyncio.FIRST_COMPLETED)
        if watch_task.done():
            watch_task.result()  # raises why
        loop_task.result()
        watch_task.cancel()
        t_sent = time.perf_counter() - t_start
        # The last outcomes and retries are sent; wait until the worker has processed every input event.
        deadline = time.perf_counter() + 300
        while True:
            m = await _metrics(port)
            if _processed(m) >= plan.events:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the worker processed {_processed(m)} of {plan.events} events")
            await asyncio.sleep(0.2)
        t_end = time.perf_counter() - t_start
        tasks[0].cancel()
        busy = machine_busy(ticks0, cpu_ticks())
        driver_cpu = time.process_time() - driver0
        broker_cpu = proc_cpu_s(broker_pid) - broker0 if broker0 is not None else None
        mem = rss_kib(pid)
        worker_cpu = (proc_cpu_s(pid) or 0.0) - cpu_base
        final = Sample(
            t_end,
            _processed(m),
            mem.get("VmRSS", 0),
            mem.get("VmHWM", 0),
            worker_cpu,
            int(m.get("seedworker_decisions_pending", 0)),
            int(m.get("seedworker_outcomes_held", 0)),
            state["sent"],
            _tx(m),
            *_db_size(db),
        )
        samples.append(final)
        db_bytes = {
            p.name.removeprefix("sustained.sqlite") or "db": p.stat().st_size for p in workdir.glob("sustained.sqlite*")
        }
        # The counters move when a batch is stored, its selections go out just after: wait for the last ones.
        # Counted as read (the end offsets would count the transactions' commit markers too).
        want = plan.requests + plan.counts["retried"]
        selections = state["answered"] + state["resent_selections"]
        for _ in range(100):
            if selections >= want:
                break
            for records in (await collector.getmany(timeout_ms=100, max_records=5000)).values():
                selections += len(records)
        child.proc.send_signal(signal.SIGTERM)  # our own child, by its pid
        rc = await asyncio.wait_for(child.proc.wait(), 60)
        kept = _kept_decisions(db)

        _report(
            report,
            plan,
            note,
            state,
            m,
            final,
            samples,
            {
                "ready_s": ready_s,
                "t_sent": t_sent,
                "busy": busy,
                "driver_cpu": driver_cpu,
                "broker_cpu": broker_cpu,
                "db_bytes": db_bytes,
                "interval": interval,
                "selections": selections,
                "rc": rc,
                "kept": kept,
                "base": base,
                "run_id": run_id,
            },
        )
    except BaseException:
        if child.proc is not None:
            _say(f"worker stderr:\n{child.stderr_tail()}")
        raise
    finally:
        for t in tasks:
            t.cancel()
        for client in (producer, collector):
            if client is not None:
                await client.stop()
        child.kill()
        await child.finish()
        try:
            await admin.delete_all()
        except Exception as exc:  # noqa: BLE001  cleanup must not hide the result
            _say(f"could not delete the run's topics: {exc}")


def _kept_decisions(db: Path) -> int | None:
    """Rows in the decisions table of the worker's SQLite (read after the worker has exited)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT count(*) FROM decisions").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return None


def _slope(xs: np.ndarray, ys: np.ndarray) -> float:
    """Least-squares slope of ys over xs (nan with fewer than 3 points)."""
    if len(xs) < 3 or np.ptp(xs) == 0:
        return float("nan")
    return float(np.polyfit(xs, ys, 1)[0])


def _report(report, plan: Plan, note: str, state: dict, m: dict, final: Sample, samples: list[Sample], x: dict) -> None:
    mib = 1 / 1024
    c = {
        k: int(m.get(f"seedworker_{k}_total", 0))
        for k in (
            "decisions",
            "duplicate_requests",
            "outcomes_learned",
            "duplicate_outcomes",
            "late_outcomes",
            "mismatched_outcomes",
            "held_outcomes",
            "dangling_outcomes",
            "expired_decisions",
            "dead_letters",
        )
    }
    report.line(f"broker: {note}; topics bench.{x['run_id']}.*, {PARTITIONS} partitions (control 1)")
    report.line(
        f"worker: `python -m seedworker run --config` in a child process, default strategy, "
        f"join.reward_wait_s {REWARD_WAIT_S:g} s and decision_retention_s {RETENTION_S:g} s of event time, "
        f"max_batch {MAX_BATCH}, metrics endpoint on; "
        f"ready {x['ready_s']:.1f} s after its start."
    )
    report.line(
        f"traffic (closed loop, the driver answers the selections): {plan.requests:,} requests (K={K}, "
        f"{BLUEPRINTS} blueprints, {STEP_S * 1e3:g} ms of event time apart, at most {WINDOW} unanswered), "
        + ", ".join(f"{v:,} {k}" for k, v in plan.counts.items())
        + f"; outcomes {DELAY_S[0]:g}–{DELAY_S[1]:g} s of event time after their request."
    )
    report.section(f"sustained run: {plan.events:,} input events through one worker")
    rate = final.events / final.t
    report.line(
        f"duration {final.t:.0f} s ({final.t / 60:.1f} min) for {final.events:,} input events = {rate:,.0f} "
        f"events/s overall (the driver had sent everything after {x['t_sent']:.0f} s). Machine busy "
        f"{x['busy']} of 2 CPUs; worker CPU {final.cpu:.0f} s ({final.cpu / final.t:.2f} cores, "
        f"{final.cpu / final.events * 1e6:.0f} µs/event); driver CPU {x['driver_cpu']:.0f} s "
        f"({x['driver_cpu'] / final.t:.2f} cores)"
        + (
            f"; broker CPU {x['broker_cpu']:.0f} s ({x['broker_cpu'] / final.t:.2f} cores)"
            if x["broker_cpu"] is not None
            else ""
        )
        + "."
    )
    # Throughput and memory over the run, in tenths of the events.
    ev = np.array([s.events for s in samples], dtype=float)
    t = np.array([s.t for s in samples])
    rss = np.array([s.rss for s in samples], dtype=float) * mib
    pend = np.array([s.pending for s in samples])
    held = np.array([s.held for s in samples])
    cpu = np.array([s.cpu for s in samples])
    tx = np.array([s.tx for s in samples])
    rows = []
    edges = np.linspace(0, final.events, 11)
    for a, b in zip(edges[:-1], edges[1:]):
        i0 = int(np.searchsorted(ev, a, side="left"))
        i1 = min(int(np.searchsorted(ev, b, side="left")), len(ev) - 1)
        if i1 <= i0:
            continue
        seg = slice(i0, i1 + 1)
        rows.append(
            [
                f"{ev[i0] / 1e3:,.0f}k–{ev[i1] / 1e3:,.0f}k",
                f"{(ev[i1] - ev[i0]) / (t[i1] - t[i0]):,.0f}",
                f"{(cpu[i1] - cpu[i0]) / max(ev[i1] - ev[i0], 1) * 1e6:.0f}",
                f"{(cpu[i1] - cpu[i0]) / (t[i1] - t[i0]):.2f}",
                f"{(tx[i1] - tx[i0]) / max(ev[i1] - ev[i0], 1) * 1e6:.0f}",
                f"{rss[i1]:.1f}",
                f"{rss[seg].max():.1f}",
                f"{pend[seg].max()}",
                f"{int(pend[seg].mean())}",
                f"{held[seg].max()}",
            ]
        )
    report.line()
    report.line(
        f"per tenth of the run (samples every {x['interval']:g} s): events/s; the worker's CPU time per event "
        f"and in cores (a rising cost per event is the worker slowing down; fewer cores at the same cost is "
        f"the machine giving it less); SQLite = wall time of the batch transactions per event (the worker's "
        f"transaction_latency histogram); RSS at the tenth's end and its max (MiB); pending decisions max and "
        f"mean; held outcomes max"
    )
    report.table(
        [
            "events",
            "events/s",
            "CPU µs/event",
            "worker cores",
            "SQLite µs/event",
            "RSS end",
            "RSS max",
            "pending max",
            "pending mean",
            "held max",
        ],
        rows,
    )

    warm = WARMUP_SHARE * final.events
    after = ev >= warm
    quarter = ev >= final.events / 4
    slope_all = _slope(ev, rss) * 1e5
    slope_quarter = _slope(ev[quarter], rss[quarter]) * 1e5
    slope_after = _slope(ev[after], rss[after]) * 1e5
    rss_warm = float(np.interp(warm, ev, rss))
    report.line()
    report.line(
        f"RSS (VmRSS of the worker process): start {x['base'].get('VmRSS', 0) * mib:.1f} MiB (ready, before "
        f"traffic), {float(np.interp(final.events / 4, ev, rss)):.1f} MiB after a quarter of the events, "
        f"{rss_warm:.1f} MiB after half, end {final.rss * mib:.1f} MiB, max sampled {rss.max():.1f} MiB, peak "
        f"(VmHWM) {final.hwm * mib:.1f} MiB. Slope in MiB per 100k events: {slope_all:+.2f} over the whole "
        f"run, {slope_quarter:+.2f} after the first quarter, {slope_after:+.2f} over the second half. Part of "
        f"the early growth is the worker's duplicate window (dedup_window = 100k decision ids in an "
        f"OrderedDict, ~17 MiB measured apart), full after ~100k resolved decisions (~195k events here)."
    )
    enough = final.events >= 400_000 and int(after.sum()) >= 10
    flat = bool(np.isfinite(slope_after) and abs(slope_after) <= FLAT_MIB_PER_100K)
    verdict = ("PASS" if flat else "FAIL") if enough else "N/A "
    report.line(
        f"  {verdict}  memory flat: least-squares RSS slope over the second half of the events "
        f"{slope_after:+.2f} MiB per 100k events (criterion: |slope| ≤ {FLAT_MIB_PER_100K:g} MiB per 100k "
        f"events, ~10 bytes per event: a leak of one small object per event exceeds it; the first half is "
        f"warm-up, where bounded structures fill)"
        + ("" if enough else "; no verdict under 400,000 events: the duplicate window alone takes ~195,000 to fill")
    )
    # Pending decisions: everything younger than reward_wait_s of event time may be pending, plus one batch.
    bound = int(REWARD_WAIT_S / STEP_S) + MAX_BATCH
    expected = int(SHARES[NEVER] * REWARD_WAIT_S / STEP_S)
    q = len(pend) // 4
    trend = q >= 3
    early, late = (pend[q : 2 * q].mean(), pend[3 * q :].mean()) if trend else (float("nan"), float("nan"))
    bounded = int(pend.max()) <= bound and (not trend or late <= 1.25 * early)
    report.line(
        f"  {'PASS' if bounded else 'FAIL'}  pending decisions bounded: max {pend.max()} (a priori bound "
        f"{bound:,}: requests within reward_wait_s of event time, {REWARD_WAIT_S / STEP_S:,.0f}, plus one "
        f"batch; expected level ≈ {expected} never answered + up to {WINDOW} in flight)"
        + (
            f"; mean {early:.0f} in the second quarter of the samples, {late:.0f} in the last (criterion: max "
            f"within the bound and the last quarter's mean at most 1.25× the second's)"
            if trend
            else " (too few samples for the trend)"
        )
        + f". Held outcomes max {held.max()}."
    )
    total = sum(x["db_bytes"].values())
    dbf = np.array([s.db for s in samples], dtype=float) / 2**20
    walf = np.array([s.wal for s in samples], dtype=float) / 2**20
    db_slope = _slope(ev[after], dbf[after]) * 1e5
    both_slope = _slope(ev[after], dbf[after] + walf[after]) * 1e5
    pruned = int(m.get("seedworker_pruned_decisions_total", 0))
    report.line(
        f"SQLite at the end: {total / 2**20:,.1f} MiB ("
        + ", ".join(f"{'file' if k == 'db' else k} {v / 2**20:,.1f} MiB" for k, v in sorted(x["db_bytes"].items()))
        + f"); the file {float(np.interp(final.events / 4, ev, dbf)):.1f} MiB after a quarter of the events, "
        f"{float(np.interp(warm, ev, dbf)):.1f} MiB after half, max {dbf.max():.1f} MiB; WAL max {walf.max():.1f} "
        f"MiB. decision_retention_s {RETENTION_S:g} s of event time ({RETENTION_S / STEP_S:,.0f} requests): "
        f"{pruned:,} decisions pruned (counter pruned_decisions), "
        + (f"{x['kept']:,} kept in the store at the end" if x["kept"] is not None else "kept: the store unreadable")
        + f" (of {c['decisions']:,} made)."
    )
    flat_db = bool(np.isfinite(db_slope) and db_slope <= FLAT_DB_MIB_PER_100K)
    report.line(
        f"  {('PASS' if flat_db else 'FAIL') if enough else 'N/A '}  storage bounded: least-squares slope of the "
        f"SQLite file size over the second half of the events {db_slope:+.2f} MiB per 100k events (file + WAL "
        f"{both_slope:+.2f}; criterion: file ≤ {FLAT_DB_MIB_PER_100K:g} MiB per 100k events; the WAL is reset at "
        f"checkpoints, its size is noise)" + ("" if enough else "; no verdict under 400,000 events")
    )

    # Exact checks against what the driver sent.
    expect = {
        "decisions": plan.requests,
        "duplicate_requests": plan.counts["retried"],
        "outcomes_learned": plan.counts["answered once"] + plan.counts["answered twice"],
        "duplicate_outcomes": plan.counts["answered twice"],
        "late_outcomes": 0,
        "mismatched_outcomes": 0,
        "held_outcomes": 0,
        "dangling_outcomes": 0,
        "dead_letters": 0,
    }
    wrong = [f"{k} {c[k]:,} (expected {v:,})" for k, v in expect.items() if c[k] != v]
    if c["expired_decisions"] + final.pending != plan.counts["never answered"]:
        wrong.append(
            f"expired {c['expired_decisions']:,} + still pending {final.pending:,} ≠ never answered "
            f"{plan.counts['never answered']:,}"
        )
    if x["selections"] != plan.requests + plan.counts["retried"]:
        wrong.append(
            f"{x['selections']:,} selections in the output topic (expected {plan.requests + plan.counts['retried']:,})"
        )
    if x["rc"] != 0:
        wrong.append(f"the worker exited with {x['rc']} after SIGTERM")
    report.line(
        ("  FAIL  counts: " + "; ".join(wrong))
        if wrong
        else (
            f"  PASS  counts: {c['decisions']:,} decisions, {c['duplicate_requests']:,} retried requests answered again, "
            f"{c['outcomes_learned']:,} outcomes learned, {c['duplicate_outcomes']:,} duplicates ignored, "
            f"{c['expired_decisions']:,} expired + {final.pending:,} still pending at the end = the "
            f"{plan.counts['never answered']:,} never answered; none late, mismatched, held or dead-lettered; "
            f"{x['selections']:,} records in the output topic; clean exit on SIGTERM."
        )
    )
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "n/a"
    report.line(
        f"loadavg at the end: {load} (2 CPUs shared by the broker, the worker, the driver and anything else running)"
    )


def main(report) -> None:
    report.section(f"{NAME}: one seedworker worker over a sustained closed-loop stream, memory sampled")
    plan = make_plan(report)
    _say(f"{plan.events:,} input events (set {ENV_EVENTS} to change; --quick: {QUICK_EVENTS:,})")
    workdir = Path(tempfile.mkdtemp(prefix="seedworker-sustained-bench-"))
    try:
        with quiet_aiokafka(), broker(workdir, NAME) as (bootstrap, note, broker_pid):
            asyncio.run(_run(report, plan, bootstrap, note, broker_pid, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
