"""Kafka benchmark: two workers in one consumer group against one worker, on the same input.

Input (the same bytes for every run): N ``graft.requested`` (kafka_worker's requests: K=8 seeds, 6 blueprints, 11
context signals) on a 6-partition topic, blueprint j on partition j, and for every request one
``adaptation.outcome`` reporting the seed the worker will choose, on a 6-partition outcomes topic (the same
partition as its request: co-partitioned). So every outcome joins its decision and is learned.

The outcomes are written before the workers decide, so the choices must be known in advance: the workers run
``round-robin`` (its choice depends only on how many decisions the blueprint had, and the burn-in draw on the
request id), and the driver computes every choice with a ``SeedSelector`` of the same settings. Learning does not
depend on the strategy (the statistics belong to the arms); only the choice itself is cheaper than Thompson's
(tens of µs per decision, see ``core``). Each run checks that no outcome was mismatched.

A run: its own topics, consumer group and SQLite file per worker; each worker is ``seedworker.engine.worker.Worker`` in a
child process (``python -m bench.kafka_scaleout worker CONFIG``) whose bus does not poll until released. The driver
waits until the group has settled (every input partition assigned to exactly one worker) on still-empty input
topics — so the rebalance that the second worker's arrival causes, and whatever a worker does when partitions
move (restore or rebuild from the topics), happen before there is anything to take in — then produces the whole
input, then releases the workers together through a file (which also tells them the input's end offsets). A
worker that has consumed its partitions stays in the group until all are done, so no rebalance happens while
measuring (checked).

events/s = 2N input events / (the earliest first non-empty poll of any worker → the latest moment a worker had
consumed every assigned partition to its end with the outputs of that batch acknowledged), on the system-wide
monotonic clock shared by the processes. Then the selections topic is read back: every request must be answered
exactly once per decision id; the workers' counters must add up to N decisions and N outcomes learned.

Rounds (``--rounds``, default 2) alternate which configuration runs first; the best round of each is the figure.
``--events N``: N requests (default 20,000; 1,500 with ``--quick``). ``BENCH_WORKER_LOG_LEVEL=INFO`` shows the
workers' own log lines in their stderr files, whose tail a failed run prints.
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
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.common_kafka import (
    Admin,
    BenchChild,
    broker,
    cpu_ticks,
    emit,
    machine_busy,
    proc_cpu_s,
    produce,
    progress,
    quiet_aiokafka,
    read_topic,
)
from bench.kafka_worker import BLUEPRINTS, HEADER, K, build_requests

NAME = "kafka_scaleout"
PARTITIONS = 6
STRATEGY = "round-robin"
OUTCOME_DELAY_S = 0.5  # event time between a request and its outcome (well inside join.reward_wait_s)


def _say(msg: str) -> None:
    progress(NAME, msg)


def _settings(cfg: dict):
    from seedworker.core.config import Settings

    return Settings(
        db=cfg["db"],
        default_strategy=STRATEGY,
        kafka={
            "bootstrap_servers": cfg["bootstrap"],
            "group_id": cfg["group"],
            "client_id": cfg["name"],
            "topics": cfg["topics"],
            "partitions": PARTITIONS,
            "output_partitions": PARTITIONS,
            "connect_timeout_s": 30,
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# The child: one Worker, held back until the go file exists, stopped by the stop file once all are done
# ---------------------------------------------------------------------------------------------------------------
async def _worker(cfg: dict) -> dict:
    from seedworker.broker.kafka import KafkaBus
    from seedworker.engine.worker import Worker

    settings = _settings(cfg)
    selections = settings.kafka.topics.selections
    ends: dict[tuple[str, int], int] = {}  # the input's end offsets: in the go file
    go, stop = Path(cfg["go"]), Path(cfg["stop"])
    clock = time.monotonic  # CLOCK_MONOTONIC: one clock for every process on the machine
    st = {
        "t_first": None,
        "t_done": None,
        "cpu_first": 0.0,
        "cpu_done": 0.0,
        "outputs": 0,
        "batches": 0,
        "messages": 0,
        "rebalances_after_go": 0,
        "taken_before_go": 0,
    }
    assigned: set[tuple[str, int]] = set()
    consumed: dict[tuple[str, int], int] = {}
    released = []

    class GatedBus(KafkaBus):
        # Signatures pass through what they do not use, so the benchmark survives additions to the bus contract.
        async def start(self, topics, on_assign, on_revoke, *args, **kwargs):
            async def assign(tps):
                await on_assign(tps)
                assigned.clear()
                assigned.update(tps)
                if released:
                    st["rebalances_after_go"] += 1
                emit("ASSIGN", {"tps": sorted(tps)})

            async def revoke(tps):
                await on_revoke(tps)
                assigned.difference_update(tps)
                emit("REVOKE", {"tps": sorted(tps)})

            await super().start(topics, assign, revoke, *args, **kwargs)

        async def poll(self, *args, **kwargs):
            if st["t_done"] is not None and stop.exists():
                worker.stop()
                return []
            if not released:
                if not go.exists():
                    await asyncio.sleep(0.01)
                    return []
                released.append(clock())
                for t, parts in json.loads(go.read_text()).items():
                    ends.update({(t, int(p)): n for p, n in parts.items()})
                # Where the worker goes on from in its store: input already taken in at assignment (a restore or a
                # rebuild from the topics) is not the measured run's, and must show.
                stored = await worker.store.offsets()
                consumed.update(stored)
                st["taken_before_go"] = sum(n for tp, n in stored.items() if tp in ends)
            out = await super().poll(*args, **kwargs)
            if out and st["t_first"] is None:
                st["t_first"], st["cpu_first"] = clock(), time.process_time()
            return out

        async def send(self, messages, *args, **kwargs):
            msgs = list(messages)
            await super().send(msgs, *args, **kwargs)
            st["outputs"] += sum(1 for m in msgs if m.topic == selections)

    class CountingWorker(Worker):
        async def process(self, messages, *args, **kwargs):
            await super().process(messages, *args, **kwargs)  # returns once the batch's outputs are acknowledged
            st["batches"] += 1
            st["messages"] += len(messages)
            for m in messages:
                tp = (m.topic, m.partition)
                consumed[tp] = max(consumed.get(tp, 0), m.offset + 1)
            if st["t_done"] is None and assigned and all(consumed.get(tp, 0) >= ends.get(tp, 0) for tp in assigned):
                st["t_done"], st["cpu_done"] = clock(), time.process_time()
                # Stay in the group until every worker is done: leaving would hand this worker's partitions to the
                # others (a rebalance) while they are still being measured.
                emit("FINISHED", dict(st))

    worker = CountingWorker(settings, bus=GatedBus(settings.kafka))
    timeout = False
    try:
        await asyncio.wait_for(worker.run(), cfg["timeout_s"])
    except TimeoutError:
        timeout = True
    out = dict(st)
    out["released"] = released[0] if released else None
    out["assigned"] = sorted(assigned)
    out["counters"] = dict(worker.counters.values)
    out["pending"] = worker.pending_decisions
    out["held"] = worker.held_outcomes
    out["timeout"] = timeout
    return out


def _child_main(raw: str) -> int:
    cfg = json.loads(raw)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("seedworker").setLevel(os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"))
    emit("DONE", asyncio.run(_worker(cfg)))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    n: int  # requests (and as many outcomes)
    rounds: int


def make_plan(report) -> Plan:
    o = report.options
    if report.quick:
        return Plan(n=o.events or 1500, rounds=max(1, o.rounds or 1))
    return Plan(n=o.events or 20_000, rounds=max(1, o.rounds or 2))


def build_input(tag: str, n: int, seed: int):
    """(requests, outcomes, decision ids): requests as (key, value, headers, partition), blueprint j on partition j;
    each outcome reports the seed a round-robin worker chooses for its request."""
    import orjson

    from seedworker.contract import events as ev
    from seedworker.core.config import Settings
    from seedworker.core.selector import SeedSelector

    msgs = build_requests(tag, n, seed)
    selector = SeedSelector(Settings(default_strategy=STRATEGY))
    rng = np.random.default_rng([seed, n, 1])
    quality = rng.uniform(0.0, 0.03, (BLUEPRINTS, K))  # mean accuracy gain per blueprint and seed
    requests, outcomes, ids = [], [], []
    for key, value, headers, did in msgs:
        req = ev.decode(value, ev.GRAFT_REQUESTED)
        bp = int(req.blueprint_id.split("-")[1])
        part = bp % PARTITIONS
        # Per blueprint, the worker sees its requests in this order (one partition), whatever the other blueprints do.
        selected = selector.decide(req)
        selector.apply_selection(selected)
        requests.append((key, value, headers, part))
        ids.append(did)
        body = {
            "event_id": f"oc-{req.request_id}",
            "event_type": ev.ADAPTATION_OUTCOME,
            "schema_version": ev.SCHEMA_VERSION,
            "occurred_at": datetime.fromtimestamp(req.occurred_at.timestamp() + OUTCOME_DELAY_S, UTC).isoformat(),
            "source": "bench",
            "decision_id": did,
            "request_id": req.request_id,
            "blueprint_id": req.blueprint_id,
            "seed_id": selected.seed_id,
            "accuracy_delta": float(rng.normal(quality[bp, selected.seed_idx], 0.01)),
            "success": True,
        }
        outcomes.append((key, orjson.dumps(body), [(HEADER, did.encode())], part))
    ev.decode(outcomes[0][1], ev.ADAPTATION_OUTCOME)  # the outcomes are valid events
    return requests, outcomes, ids


class Scaleout:
    def __init__(self, bootstrap: str, workdir: Path, seed: int, broker_pid: int | None):
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.seed = seed
        self.broker_pid = broker_pid
        self.run_id = f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.admin = Admin(bootstrap, self.run_id)

    def prepare(self, n: int) -> list[str]:
        _say(f"building {n} requests and their {n} outcomes")
        self.requests, self.outcomes, ids = build_input(f"so-{self.run_id}", n, self.seed)
        self.size = (int(np.mean([len(m[1]) for m in self.requests])), int(np.mean([len(m[1]) for m in self.outcomes])))
        return ids

    async def run(self, workers: int, tag: str, ids: list[str], timeout_s: float) -> dict:
        """The group settles on empty input topics (so whatever a worker does on assignment has nothing to take
        in), then the input is produced while the workers are held back, then they are released together."""
        topics = {
            "requests": self.admin.topic(f"{tag}.requests"),
            "outcomes": self.admin.topic(f"{tag}.outcomes"),
            "selections": self.admin.topic(f"{tag}.selected"),
            "dead_letters": self.admin.topic(f"{tag}.dlq"),
            "control": self.admin.topic(f"{tag}.control"),
        }
        await self.admin.create(
            {
                topics["requests"]: PARTITIONS,
                topics["outcomes"]: PARTITIONS,
                topics["selections"]: PARTITIONS,
                topics["dead_letters"]: PARTITIONS,
                topics["control"]: 1,
            }
        )
        go, stop = self.workdir / f"{tag}.go", self.workdir / f"{tag}.stop"
        group = f"bench-{self.run_id}-{tag}"
        children = []
        for i in range(workers):
            cfg = {
                "bootstrap": self.bootstrap,
                "group": group,
                "name": f"bench-{tag}-w{i}",
                "topics": topics,
                "db": str(self.workdir / f"{tag}-w{i}.sqlite"),
                "go": str(go),
                "stop": str(stop),
                "timeout_s": timeout_s,
            }
            children.append(
                BenchChild(
                    cfg,
                    self.workdir,
                    f"{tag}-w{i}",
                    [sys.executable, "-m", "bench.kafka_scaleout", "worker", json.dumps(cfg)],
                )
            )
        # The group's partitions: the control topic may be read outside the group (by every worker), so it is not
        # asked for here.
        inputs = {(t, p) for t in (topics["requests"], topics["outcomes"]) for p in range(PARTITIONS)}
        current: list[set] = [set() for _ in children]
        done: list[dict | None] = [None] * len(children)
        finished: list[dict | None] = [None] * len(children)
        ended = [False] * len(children)
        changed = asyncio.Event()

        async def listen(i: int, child: BenchChild) -> None:
            async for what, payload in child.lines():
                tps = {tuple(tp) for tp in payload.get("tps", ())}
                if what == "ASSIGN":
                    current[i] = tps
                elif what == "REVOKE":
                    current[i] -= tps
                elif what == "FINISHED":
                    finished[i] = payload
                elif what == "DONE":
                    done[i] = payload
                changed.set()
            ended[i] = True  # stdout closed: the child has exited
            changed.set()

        def settled() -> bool:
            union = set().union(*current)
            return all(current) and sum(map(len, current)) == len(union) and union >= inputs

        async def until(cond, timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while not cond():
                left = deadline - time.monotonic()
                gone = [
                    c.name
                    for c, d, e in zip(children, done, ended)
                    if (d is None and e) or (d is not None and d.get("t_done") is None)
                ]
                if left <= 0 or gone:
                    tails = "\n".join(f"--- {c.name}:\n{c.stderr_tail()}" for c in children)
                    why = f"{', '.join(gone)} stopped unfinished" if gone else f"not within {timeout:.0f} s"
                    brief = [
                        {
                            k: d.get(k)
                            for k in (
                                "messages",
                                "batches",
                                "rebalances_after_go",
                                "counters",
                                "pending",
                                "held",
                                "timeout",
                            )
                        }
                        if d
                        else None
                        for d in done
                    ]
                    raise RuntimeError(
                        f"{what}: {why}; assignments {current}; finished "
                        f"{[f is not None for f in finished]}; done {brief}\n{tails}"
                    )
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), min(left, 1.0))
                except TimeoutError:
                    pass

        t0 = time.perf_counter()
        listeners = []
        try:
            for c in children:
                await c.start()
            listeners = [asyncio.create_task(listen(i, c)) for i, c in enumerate(children)]
            await until(settled, 120, f"{workers} worker(s) settling in group {group}")
            await asyncio.sleep(0.5)  # a rebalance still on its way would show now
            await until(settled, 60, f"{workers} worker(s) settling again in group {group}")
            settle_s = time.perf_counter() - t0
            ends = {
                topics["requests"]: await produce(self.bootstrap, topics["requests"], self.requests),
                topics["outcomes"]: await produce(self.bootstrap, topics["outcomes"], self.outcomes),
            }
            if not settled():
                raise RuntimeError(f"the group rebalanced while the input was produced: {current}")
            ticks = cpu_ticks()
            driver0, broker0 = time.process_time(), proc_cpu_s(self.broker_pid) if self.broker_pid else None
            tmp = go.with_suffix(".tmp")
            tmp.write_text(json.dumps(ends))
            tmp.rename(go)  # whole or not at all: the workers read it as soon as it exists
            await until(
                lambda: all(f is not None for f in finished),
                timeout_s + 60,
                f"{workers} worker(s) consuming their partitions",
            )
            busy = machine_busy(ticks, cpu_ticks())
            driver_cpu = time.process_time() - driver0
            broker_cpu = (proc_cpu_s(self.broker_pid) - broker0) if broker0 is not None else None
            stop.touch()
            await until(lambda: all(d is not None for d in done), 60, f"{workers} worker(s) stopping")
        except BaseException:
            for c in children:
                c.kill()
            raise
        finally:
            for c in children:
                await c.finish()
            for task in listeners:
                task.cancel()
        stats = [d for d in done if d is not None]
        bad = [
            f"{c.name}: {d}" for c, d in zip(children, done) if d is None or d.get("timeout") or d.get("t_done") is None
        ]
        if bad:
            raise RuntimeError("a worker did not finish its partitions:\n" + "\n".join(bad))
        t_first = min(d["t_first"] for d in stats)
        t_done = max(d["t_done"] for d in stats)
        counters = Counter()
        for d in stats:
            counters.update(d["counters"])
        records = await read_topic(self.bootstrap, topics["selections"], PARTITIONS)
        answers = Counter(v.decode() for r in records for k, v in (r.headers or ()) if k == HEADER)
        expected = set(ids)
        check = {
            "records": len(records),
            "answered": len(expected & answers.keys()),
            "missing": len(expected - answers.keys()),
            "repeated": sum(n - 1 for n in answers.values() if n > 1),
            "unexpected": len(answers.keys() - expected),
            "dead_letters": sum(n for n in (await self._end_total(topics["dead_letters"])).values()),
        }
        return {
            "workers": workers,
            "tag": tag,
            "elapsed": t_done - t_first,
            "stats": stats,
            "counters": counters,
            "check": check,
            "machine_busy": busy,
            "driver_cpu": driver_cpu,
            "broker_cpu": broker_cpu,
            "settle_s": settle_s,
            "start_spread": max(d["t_first"] for d in stats) - t_first,
            "worker_cpu": sum(d["cpu_done"] - d["cpu_first"] for d in stats),
        }

    async def _end_total(self, topic: str) -> dict[int, int]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            ends = await c.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
            return {tp.partition: n for tp, n in ends.items()}
        finally:
            await c.stop()


def s_parts(parts: list[int]) -> str:
    return "partitions " + (",".join(map(str, parts)) or "none")


def _busy_cores(busy: str) -> float:
    try:
        return (
            float(busy.rstrip("%"))
            / 100
            * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        )
    except ValueError:
        return float("nan")


async def _run(report, plan: Plan, bootstrap: str, note: str, broker_pid: int | None, workdir: Path) -> None:
    s = Scaleout(bootstrap, workdir, report.options.seed, broker_pid)
    try:
        ids = s.prepare(plan.n)
        events = 2 * plan.n
        timeout = max(120.0, events / 200)  # 200 events/s would be far below anything measured here
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for r in range(plan.rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                _say(f"round {r + 1}/{plan.rounds}: {workers} worker(s) over {events} events")
                runs[workers].append(await s.run(workers, f"r{r}w{workers}", ids, timeout))

        report.line(f"broker: {note}; topics bench.{s.run_id}.*, {PARTITIONS} partitions (control: 1), replication 1")
        report.line(
            f"input, the same bytes for every run, produced into the run's own topics once its group has "
            f"settled and before its workers are released: {plan.n} "
            f"graft.requested (K={K} seeds, {BLUEPRINTS} blueprints, blueprint j on partition j, "
            f"~{s.size[0]} bytes) and {plan.n} adaptation.outcome (~{s.size[1]} bytes), one per request, "
            f"reporting the seed the worker chooses: {events} input events per run. Workers: "
            f"seedworker.engine.worker.Worker in child processes, one consumer group and one SQLite file each, "
            f"strategy {STRATEGY} (so the outcomes could be written in advance; see the module docstring), "
            f"other settings default (max_batch 500)."
        )
        report.section(f"two workers in one group vs one worker: {events} events per run, {plan.rounds} round(s)")
        report.line(
            "events/s = input events / (earliest first poll → latest 'every assigned partition consumed, "
            "outputs acknowledged'). split = input events per worker. worker CPU = CPU time of the worker "
            "processes over their own spans (all threads), per event and in cores (CPU s / elapsed s). "
            "broker cores = the broker process's CPU over the run (when it runs on this machine). machine busy "
            "= share of all CPUs in use during the run (broker, workers, driver, anything else); other = "
            "busy cores − worker − broker cores (the driver, idle while measuring, and other processes). "
            "answered once = requests with exactly one selection (decision id) in the output topic."
        )
        rows = []
        best: dict[int, dict] = {}
        for workers in (1, 2):
            for r, x in enumerate(runs[workers]):
                rate = events / x["elapsed"]
                if workers not in best or rate > events / best[workers]["elapsed"]:
                    best[workers] = x
                cores = x["worker_cpu"] / x["elapsed"]
                busy_cores = _busy_cores(x["machine_busy"])
                c = x["counters"]
                ch = x["check"]
                split = "/".join(str(d["messages"]) for d in sorted(x["stats"], key=lambda d: -d["messages"]))
                broker = x["broker_cpu"] / x["elapsed"] if x["broker_cpu"] is not None else float("nan")
                rows.append(
                    [
                        workers,
                        r + 1,
                        f"{x['elapsed']:.2f}",
                        f"{rate:,.0f}",
                        split,
                        f"{x['worker_cpu'] / events * 1e6:.0f}",
                        f"{cores:.2f}",
                        f"{broker:.2f}",
                        x["machine_busy"],
                        f"{busy_cores - cores - (broker if broker == broker else 0):.2f}",
                        f"{ch['answered']}/{plan.n}" + (f" (+{ch['repeated']} repeated)" if ch["repeated"] else ""),
                        f"{c.get('outcomes_learned', 0)}/{plan.n}",
                        f"{x['start_spread'] * 1e3:.0f}",
                    ]
                )
        report.table(
            [
                "workers",
                "round",
                "seconds",
                "events/s",
                "split",
                "CPU µs/event",
                "worker cores",
                "broker cores",
                "machine busy",
                "other cores",
                "answered once",
                "outcomes learned",
                "start spread ms",
            ],
            rows,
        )
        problems = []
        for workers in (1, 2):
            for x in runs[workers]:
                c, ch = x["counters"], x["check"]
                where = f"{workers} worker(s), {x['tag']}"
                if ch["missing"] or ch["repeated"] or ch["unexpected"] or ch["records"] != plan.n:
                    problems.append(f"{where}: output topic {ch}")
                for name in (
                    "mismatched_outcomes",
                    "late_outcomes",
                    "dangling_outcomes",
                    "duplicate_outcomes",
                    "dead_letters",
                    "expired_decisions",
                ):
                    if c.get(name):
                        problems.append(f"{where}: {name} = {c[name]}")
                if (
                    c.get("decisions") != plan.n
                    or c.get("outcomes_learned") != plan.n
                    or any(d["pending"] or d["held"] for d in x["stats"])
                ):
                    problems.append(
                        f"{where}: decisions {c.get('decisions')}, outcomes learned "
                        f"{c.get('outcomes_learned')} (expected {plan.n} each); pending "
                        f"{sum(d['pending'] for d in x['stats'])}, held "
                        f"{sum(d['held'] for d in x['stats'])}"
                    )
                for d in x["stats"]:
                    req = sorted(p for t, p in d["assigned"] if t.endswith(".requests"))
                    out = sorted(p for t, p in d["assigned"] if t.endswith(".outcomes"))
                    if req != out:
                        problems.append(
                            f"{where}: not co-partitioned: one worker has {s_parts(req)} of the requests "
                            f"but {s_parts(out)} of the outcomes (their outcomes wait for decisions made "
                            f"by the other worker)"
                        )
                if any(d["taken_before_go"] for d in x["stats"]):
                    problems.append(
                        f"{where}: input taken in before the start: {[d['taken_before_go'] for d in x['stats']]}"
                    )
                if any(d["rebalances_after_go"] for d in x["stats"]):
                    problems.append(f"{where}: the group rebalanced during the measurement")
        report.line()
        if problems:
            report.line("CHECKS FAILED (the rate of such a run is not a valid figure):")
            for p in problems:
                report.line(f"  {p}")
        else:
            report.line(
                f"checks: every run answered each of the {plan.n} requests exactly once (no missing, no "
                f"repeated decision id, {plan.n} records) and learned all {plan.n} outcomes (none mismatched, "
                f"late or dangling, nothing left pending or held), no dead letters, nothing taken in before "
                f"the start, no rebalance after it."
            )

        one, two = best[1], best[2]
        r1, r2 = events / one["elapsed"], events / two["elapsed"]
        ratio = r2 / r1
        report.section("ratio (two workers / one, best rounds)")
        report.line(f"throughput: two {r2:,.0f} events/s / one {r1:,.0f} events/s = {ratio:.2f}x")
        c1, c2 = one["worker_cpu"] / events * 1e6, two["worker_cpu"] / events * 1e6
        report.line(
            f"worker CPU per event: one {c1:.0f} µs, two {c2:.0f} µs (the same work split in two; more per "
            f"event with two means contention — cache, the shared broker — or per-batch costs on smaller "
            f"batches: {one['stats'][0]['messages'] / max(one['stats'][0]['batches'], 1):.0f} events/batch "
            f"with one worker, {np.mean([d['messages'] / max(d['batches'], 1) for d in two['stats']]):.0f} "
            f"with two)"
        )
        cap = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        w1, w2 = one["worker_cpu"] / one["elapsed"], two["worker_cpu"] / two["elapsed"]
        report.line(
            f"CPU: this machine has {cap} usable CPUs for everything: the broker, the worker(s), the driver "
            f"(idle while measuring: {one['driver_cpu'] + two['driver_cpu']:.2f} CPU s in the two best runs) "
            f"and whatever else runs. One worker used {w1:.2f} cores with the machine {one['machine_busy']} "
            f"busy; two used {w2:.2f} cores together with the machine {two['machine_busy']} busy."
        )
        report.line(
            f"  throughput ≈ worker cores × events per worker-CPU-second: one {w1:.2f} × {1e6 / c1:,.0f}, "
            f"two "
            f"{w2:.2f} × {1e6 / c2:,.0f}; so the ratio {ratio:.2f} = {w2 / w1:.2f} (more CPU for the workers) "
            f"× {c1 / c2:.2f} (per-event efficiency)."
        )
        b2 = _busy_cores(two["machine_busy"])
        bcpu = [x["broker_cpu"] for x in (one, two)]
        broker_us = (sum(bcpu) / (2 * events) * 1e6) if None not in bcpu else None
        if w1 >= 0.8:
            report.line(
                f"  → one worker ran at {w1:.2f} cores (machine {one['machine_busy']} busy): near the one core "
                f"it can use, its work running on one Python thread (plus aiosqlite's)."
            )
        else:
            report.line(
                f"  → one worker got {w1:.2f} cores, the machine {one['machine_busy']} busy: it was short of "
                f"CPU already."
            )
        if b2 >= 0.9 * cap:
            others = b2 - w2 - (two["broker_cpu"] / two["elapsed"] if two["broker_cpu"] is not None else 0.0)
            report.line(
                f"  → two workers saturated the machine ({two['machine_busy']}; the broker and other "
                f"processes took {b2 - w2:.2f} cores, of which {max(others, 0):.2f} other processes): the "
                f"second worker only gets what the rest leaves of the {cap} cores, so on this machine the "
                f"ratio is capped by the CPU, not by the design, and a ratio near 1 while other work runs "
                f"is the machine. Extrapolated, not measured: with a core per worker and the broker "
                f"elsewhere, two workers at {c2:.0f} µs per event would make about {2e6 / c2:,.0f} events/s "
                f"(each has its own partitions, SQLite file and state; nothing is shared but the broker"
                + (f", which spent {broker_us:.0f} µs of CPU per event here" if broker_us else "")
                + ")."
            )
        else:
            report.line(
                f"  → the machine was not saturated with two workers ({two['machine_busy']}): the ratio is "
                f"bounded by the workers themselves (waiting on the broker's acks and fetches, or on "
                f"SQLite), not by CPU."
            )
        try:
            load = "%.2f %.2f %.2f" % os.getloadavg()
        except OSError:
            load = "n/a"
        report.line(f"loadavg at the end: {load}")
    finally:
        try:
            await s.admin.delete_all()
        except Exception as exc:  # noqa: BLE001  cleanup must not hide the result
            _say(f"could not delete the run's topics: {exc}")


def main(report) -> None:
    report.section(f"{NAME}: two seedworker workers in one consumer group vs one, through a real broker")
    plan = make_plan(report)
    workdir = Path(tempfile.mkdtemp(prefix="seedworker-scaleout-bench-"))
    try:
        with quiet_aiokafka(), broker(workdir, NAME) as (bootstrap, note, broker_pid):
            asyncio.run(_run(report, plan, bootstrap, note, broker_pid, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        sys.exit(_child_main(sys.argv[2]))
    sys.exit(
        "usage: python -m bench.kafka_scaleout worker CONFIG_JSON (run by `python -m bench --only kafka_scaleout`)"
    )
