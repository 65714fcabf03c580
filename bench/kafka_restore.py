"""Kafka benchmark: restoring one input partition that another worker owned, after 10k, 100k and 1M decisions over
1,000 blueprints: from the changelog (``<group_id>-changelog``) against the rebuild from ``seed.selected``.

**What is timed** is the restore path of ``Worker._replace``, in this process, against a real broker: for the
changelog ``ownership.read_changelog`` (read_committed, partition 0 from its first to its end offset) +
``ownership.from_changelog`` + the one store transaction that replaces the partition (``Rebuilt.batch`` written to
a fresh SQLite file) + ``Processor.restore()`` (the state read back into memory, as the worker does before it
answers); for the rebuild ``ownership.rebuild`` (the replay of that partition of ``seed.selected`` and
``adaptation.outcome`` through the processor) + the same write and read-back. Not included: fencing, the group's
rebalance and the claim commit (the same for both paths, independent of history), nor the snapshot the worker
publishes after a rebuild.

**How the history is made** (written straight to the topics with the project's own record builders, not by
running a worker: the changelog of 1M decisions as the worker writes it would be ~20 GB, see below):

- blueprint states: 1,000 real ``BlueprintState``s (the default strategy), each after a few real
  ``SeedSelector.select`` + ``record_outcome`` calls, stored with ``rows.dump_state`` as the worker stores them;
- decisions: one real ``seed.selected`` event per blueprint (``SeedSelector.select``, ``events.encode``) is the
  template of that blueprint's decisions; each decision is the template with its own request id, decision id
  (``decision_id_for``), event id and times. Event time advances ``STEP_S`` per decision; 90% are answered
  ``DELAY_S`` later (status learned), the others expire after ``join.reward_wait_s``; ``decision_retention_s``
  keeps the last ``RETAIN`` decisions' worth;
- the changelog holds what the log cleaner leaves of the history: one value per live key (every blueprint's
  ``b:``, the retained decisions' ``d:`` and ``r:``, ``w``, ``o``) as of ``HEAD`` batches before the end, then those
  last ``HEAD`` batches of ``max_batch`` decisions uncompacted, exactly as ``changelog.batch_records`` writes them
  (the active segment, which the cleaner never touches: up to 64 MiB or 10 minutes; ``HEAD`` batches are ~60 MB
  here, nearly a full segment: the slow end; each batch carries the state of every blueprint it touched, ~30 KiB
  each). Beside it, the fast end: the same history with the segment just rolled and compacted (no head). Tombstones older than the head are left out: the history is taken to be older than
  ``delete.retention.ms`` (1 day). A restore within a day of heavy pruning also reads the day's tombstones (two
  per pruned decision); the records/s column gives what that costs. Whether the broker's cleaner gets the topic
  to this shape is not measured here;
- ``seed.selected`` and ``adaptation.outcome`` (for the rebuild) hold the whole history of the partition, records
  with the worker's headers, timestamps in decision order so the replay merges them as they came. The rebuild is
  run up to ``REBUILD_MAX`` decisions (it replays every record: minutes at 1M) and extrapolated linearly beyond.

Topics have one partition (the restored one); other partitions would change nothing (both paths read only it).
``--quick``: 100 blueprints, 1,000 and 3,000 decisions, numbers not meaningful.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from bench.common_kafka import Admin, broker, progress, quiet_aiokafka

NAME = "kafka_restore"
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 3_000)
BLUEPRINTS = 1000
QUICK_BLUEPRINTS = 100
K = 8
LEARN_PER_BLUEPRINT = 10  # real decisions + outcomes per blueprint before its state is taken
STEP_S = 1.0  # event time between decisions
DELAY_S = 30.0  # event time from a decision to its outcome
REWARD_WAIT_S = 600.0
RETAIN = 10_000  # decisions kept: decision_retention_s = RETAIN * STEP_S
NEVER_EVERY = 10  # every 10th decision is never answered (expires)
MAX_BATCH = 500  # the worker's kafka.max_batch (default): decisions per changelog batch
HEAD = 4  # uncompacted batches at the end of the changelog (the active segment): ~60 MB, under 64 MiB
REBUILD_MAX = 100_000  # larger histories: the rebuild is extrapolated (linear in records)
GOAL_S = 2.0  # changelog restore of 1,000 blueprints
FLAT = 1.5  # "flat": the largest history's restore at most this times the smallest's
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def _say(msg: str) -> None:
    progress(NAME, msg)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class History:
    """The decisions of one partition, by index; their fates and times follow from the index."""

    def __init__(self, tag: str, n: int, templates: dict[str, dict], states: dict[str, bytes]):
        self.tag = tag
        self.n = n
        self.templates = templates
        self.bps = list(templates)
        self.states = states
        self.delay_n = int(DELAY_S / STEP_S)
        self.wait_n = int(REWARD_WAIT_S / STEP_S)

    def bp(self, i: int) -> str:
        return self.bps[i % len(self.bps)]

    def rid(self, i: int) -> str:
        return f"{self.tag}-{i}"

    def never(self, i: int) -> bool:
        return i % NEVER_EVERY == NEVER_EVERY - 1

    def resolved_at(self, i: int) -> int:
        """The decision index at which decision i is resolved (its outcome, or its expiry)."""
        return i + (self.wait_n if self.never(i) else self.delay_n)

    def pruned_at(self, i: int) -> int:
        return i + RETAIN

    def selected(self, i: int) -> tuple[str, bytes, dict]:
        from seedworker.contract.events import decision_id_for

        rid = self.rid(i)
        did = decision_id_for(rid)
        body = dict(self.templates[self.bp(i)])
        t = _iso(T0 + i * STEP_S)
        body.update(event_id=f"sel-{rid}", request_id=rid, decision_id=did, occurred_at=t, request_time=t)
        return did, orjson.dumps(body), body

    def decision_row(self, i: int):
        from seedworker.store.rows import DecisionRow

        did, payload, b = self.selected(i)
        return DecisionRow(
            did,
            b["request_id"],
            b["blueprint_id"],
            b["seed_id"],
            b["seed_idx"],
            b["strategy"],
            b["propensity"],
            int(b["explored"]),
            b["state_version"],
            T0 + i * STEP_S,
            payload,
            0,
        )

    def resolution(self, i: int):
        from seedworker.contract.events import decision_id_for
        from seedworker.core.join import Resolution

        did = decision_id_for(self.rid(i))
        if self.never(i):
            return Resolution(did, "expired", None, None, 0)
        return Resolution(did, "learned", 0.01, T0 + (i + self.delay_n) * STEP_S, 0)

    def outcome(self, i: int) -> bytes:
        from seedworker.contract.events import SCHEMA_VERSION

        did, _, b = self.selected(i)
        return orjson.dumps(
            {
                "event_id": f"oc-{b['request_id']}",
                "event_type": "adaptation.outcome",
                "schema_version": SCHEMA_VERSION,
                "occurred_at": _iso(T0 + (i + self.delay_n) * STEP_S),
                "source": "bench",
                "decision_id": did,
                "request_id": b["request_id"],
                "blueprint_id": b["blueprint_id"],
                "seed_id": b["seed_id"],
                "accuracy_delta": 0.01,
                "success": True,
            }
        )


def _pool(n_bp: int, settings) -> tuple[dict[str, dict], dict[str, bytes]]:
    """A real seed.selected per blueprint (the template of its decisions) and each blueprint's real state."""
    from seedworker.contract.events import SCHEMA_VERSION
    from seedworker.contract.events import encode as encode_event
    from seedworker.core.selector import SeedSelector
    from seedworker.store.rows import dump_state

    sel = SeedSelector(settings)
    seeds = [{"seed_id": f"seed-{j}", "seed_idx": j, "state": "dormant"} for j in range(K)]
    rng = np.random.default_rng(5)
    templates: dict[str, dict] = {}
    for r in range(LEARN_PER_BLUEPRINT):
        for b in range(n_bp):
            i = r * n_bp + b
            t = _iso(T0 + i)
            req = {
                "event_id": f"ev-pool-{i}",
                "event_type": "graft.requested",
                "schema_version": SCHEMA_VERSION,
                "occurred_at": t,
                "source": "bench",
                "request_id": f"pool-{i}",
                "blueprint_id": f"bp-{b}",
                "layer_name": f"layer-{b % 4}",
                "seeds": seeds,
                "context": {
                    "current_loss": float(rng.uniform(0.05, 2.5)),
                    "current_accuracy": float(rng.uniform(0.3, 0.95)),
                    "learning_rate": 1e-3,
                    "current_epoch": float(r),
                    "total_epochs": 100.0,
                    "urgency": float(rng.uniform(0, 1)),
                },
            }
            x = sel.select(req)
            templates[x.blueprint_id] = orjson.loads(encode_event(x))
            sel.record_outcome(
                {
                    "event_id": f"oc-pool-{i}",
                    "event_type": "adaptation.outcome",
                    "schema_version": SCHEMA_VERSION,
                    "occurred_at": t,
                    "source": "bench",
                    "decision_id": x.decision_id,
                    "request_id": x.request_id,
                    "blueprint_id": x.blueprint_id,
                    "seed_id": x.seed_id,
                    "accuracy_delta": float(rng.normal(0.01, 0.01)),
                }
            )
    states = {bp: dump_state(state.to_dict()) for bp, state in sel.blueprints.items()}
    return templates, states


def _changelog_records(h: History, topics, head: int = HEAD) -> list[tuple[bytes, bytes | None]]:
    """(key, value) of the changelog partition after h.n decisions: the compacted tail, then ``head`` batches."""
    from seedworker.store import changelog
    from seedworker.store.rows import Batch, BlueprintRow

    n = h.n
    head_from = max(0, n - head * MAX_BATCH)
    writer = "previous-owner"
    inputs = (topics.requests, topics.outcomes)
    out: list[tuple[bytes, bytes | None]] = []
    # The tail: the state as of decision head_from, one value per key (what compaction keeps).
    m = head_from
    b = Batch()
    for k, bp in enumerate(h.bps):
        decided = (m - k + len(h.bps) - 1) // len(h.bps) if m > k else 0
        b.blueprints[bp] = BlueprintRow(h.states[bp], LEARN_PER_BLUEPRINT + decided, 0)
    for i in range(max(0, m - RETAIN), m):
        b.decisions.append(h.decision_row(i))
        if h.resolved_at(i) < m:
            b.resolutions.append(h.resolution(i))
    if m:
        b.watermarks[0] = T0 + (m - 1) * STEP_S
    b.offsets = {(topics.requests, 0): m, (topics.outcomes, 0): 0}
    offsets = {(topics.requests, 0): m, (topics.outcomes, 0): m}  # outcomes: one per answered decision, roughly
    if m:
        out += [(r.key, r.value) for r in changelog.batch_records(topics.changelog, b, writer, inputs, offsets)]
    # The head: HEAD batches as the worker writes them.
    for s in range(head_from, n, MAX_BATCH):
        e = min(n, s + MAX_BATCH)
        b = Batch()
        for i in range(s, e):
            b.decisions.append(h.decision_row(i))
            bp = h.bp(i)  # a decision changes its blueprint's state (the join touches it)
            b.blueprints[bp] = BlueprintRow(h.states[bp], LEARN_PER_BLUEPRINT + i // len(h.bps), 0)
        first = max(0, s - max(h.wait_n, h.delay_n) - 1)
        for i in range(first, e):
            if s <= h.resolved_at(i) < e:
                b.resolutions.append(h.resolution(i))
                if not h.never(i):
                    bp = h.bp(i)
                    b.blueprints[bp] = BlueprintRow(h.states[bp], LEARN_PER_BLUEPRINT + i // len(h.bps), 0)
        for i in range(max(0, s - RETAIN), max(0, e - RETAIN)):
            b.pruned[h.decision_row(i).decision_id] = 0
        b.watermarks[0] = T0 + (e - 1) * STEP_S
        b.offsets = {(topics.requests, 0): e}
        offsets = {(topics.requests, 0): e, (topics.outcomes, 0): e}
        out += [(r.key, r.value) for r in changelog.batch_records(topics.changelog, b, writer, inputs, offsets)]
    return out


def _retained(h: History) -> int:
    return min(h.n, RETAIN)


async def _produce(bootstrap: str, records, what: str) -> tuple[int, int]:
    """Send (topic, key, value, headers, timestamp_ms or None); wait for every ack. Returns (records, bytes)."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1024 * 1024, max_request_size=4 << 20
    )
    await p.start()
    n = size = 0
    t0 = time.perf_counter()
    try:
        futures = []
        for topic, key, value, headers, ts in records:
            futures.append(await p.send(topic, value, key=key, headers=list(headers), partition=0, timestamp_ms=ts))
            n += 1
            size += len(key or b"") + len(value or b"")
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await p.stop()
    _say(f"wrote {n:,} {what} records ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    return n, size


async def _restore(settings, db: Path, source: str, h: History) -> dict:
    """Restore partition 0 into a fresh store the way Worker._replace does; seconds per step."""
    from seedworker.broker.kafka import KafkaBus
    from seedworker.engine import ownership
    from seedworker.engine.processor import Processor
    from seedworker.store.store import Store

    t = settings.kafka.topics
    bus = KafkaBus(settings.kafka)
    store = await Store(db).open()
    try:
        processor = Processor(settings, store)
        await processor.restore()
        t0 = time.perf_counter()
        if source == "changelog":
            states = await ownership.read_changelog(settings, bus, [0])
            rebuilt = ownership.from_changelog([states[0]], t)
        else:
            counts = {t.requests: 1, t.outcomes: 1, t.selections: 1, t.dead_letters: 1}
            rebuilt = await ownership.rebuild(settings, bus, [0], counts, {(t.requests, 0): h.n})
        t1 = time.perf_counter()
        await store.write(rebuilt.batch([], {}))
        t2 = time.perf_counter()
        await processor.restore()
        t3 = time.perf_counter()
        pending = sum(1 for d in rebuilt.decisions if d.status == "pending")
        return {
            "records": rebuilt.records,
            "read": t1 - t0,
            "write": t2 - t1,
            "load": t3 - t2,
            "total": t3 - t0,
            "blueprints": len(processor.selector.blueprints),
            "decisions": len(rebuilt.decisions),
            "pending": pending,
            "complete": rebuilt.complete,
        }
    finally:
        await store.close()


async def _run(report, sizes, n_bp: int, bootstrap: str, note: str, workdir: Path) -> None:
    from seedworker.contract import headers as hdr
    from seedworker.core.config import JoinSettings, KafkaSettings, Settings, Topics
    from seedworker.store.changelog import TOPIC_CONFIG

    run_id = f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
    admin = Admin(bootstrap, run_id)

    def settings_for(n: int) -> Settings:
        topics = Topics(
            requests=admin.topic(f"{n}.requests"),
            outcomes=admin.topic(f"{n}.outcomes"),
            selections=admin.topic(f"{n}.selected"),
            dead_letters=admin.topic(f"{n}.dlq"),
            control=admin.topic(f"{n}.control"),
            changelog=admin.topic(f"{n}.changelog"),
        )
        return Settings(
            db=str(workdir / "unused.sqlite"),
            kafka=KafkaSettings(
                bootstrap_servers=bootstrap,
                group_id=f"bench-{run_id}-{n}",
                partitions=1,
                output_partitions=1,
                max_batch=MAX_BATCH,
                topics=topics,
            ),
            join=JoinSettings(reward_wait_s=REWARD_WAIT_S),
            decision_retention_s=RETAIN * STEP_S,
        )

    _say(f"building {n_bp} blueprint states ({LEARN_PER_BLUEPRINT} real decisions each)")
    templates, states = _pool(n_bp, settings_for(0))
    state_kib = np.mean([len(s) for s in states.values()]) / 1024
    results = []
    try:
        for n in sizes:
            s = settings_for(n)
            t = s.kafka.topics
            bare = t.changelog + "-compacted"
            names = [t.requests, t.outcomes, t.selections, t.dead_letters, t.control, t.changelog, bare]
            await admin.create({x: 1 for x in names}, configs={t.changelog: TOPIC_CONFIG, bare: TOPIC_CONFIG})
            h = History(f"rs{n}-{run_id}", n, templates, states)
            row = {"n": n}
            recs = _changelog_records(h, t)
            row["cl_written"], row["cl_bytes"] = await _produce(
                bootstrap, ((t.changelog, k, v, (), None) for k, v in recs), "changelog"
            )
            del recs
            _say(f"{n:,} decisions: restoring from the changelog")
            row["cl"] = await _restore(s, workdir / f"cl-{n}.sqlite", "changelog", h)
            # The best case beside it: the active segment just rolled and compacted (no head).
            recs = _changelog_records(h, t, head=0)
            _, row["cl0_bytes"] = await _produce(bootstrap, ((bare, k, v, (), None) for k, v in recs), "changelog")
            del recs
            s0 = s.model_copy(
                update={"kafka": s.kafka.model_copy(update={"topics": t.model_copy(update={"changelog": bare})})}
            )
            row["cl0"] = await _restore(s0, workdir / f"cl0-{n}.sqlite", "changelog", h)
            if n <= REBUILD_MAX:
                base = int(time.time() * 1000) - 10 * 60 * 1000  # in order, within the broker's retention

                def log(h=h, t=t, base=base):
                    for i in range(h.n):
                        did, payload, _b = h.selected(i)
                        headers = hdr.selection(
                            decision_id=did, schema_version=_b["schema_version"], trace_id=None, source=(0, i)
                        )
                        yield t.selections, h.bp(i).encode(), payload, headers, base + i
                        j = i - h.delay_n  # the outcome of decision j comes with decision i
                        if j >= 0 and not h.never(j):
                            yield t.outcomes, h.bp(j).encode(), h.outcome(j), (), base + i

                row["log_written"], row["log_bytes"] = await _produce(bootstrap, log(), "seed.selected + outcome")
                _say(f"{n:,} decisions: rebuilding from seed.selected")
                row["rb"] = await _restore(s, workdir / f"rb-{n}.sqlite", "rebuild", h)
            row["load"] = "%.2f %.2f %.2f" % os.getloadavg()
            row["at"] = datetime.now(UTC).strftime("%H:%M:%S")
            results.append(row)
            await admin.delete(names)  # the disk: the next size's topics are larger
            for f in workdir.glob("*.sqlite*"):
                f.unlink()
    finally:
        await admin.delete_all()

    report.line(f"broker: {note}")
    report.line(
        f"{n_bp} blueprints (default strategy, K={K}; state ~{state_kib:.0f} KiB of JSON each), one partition, "
        f"max_batch {MAX_BATCH}; event time {STEP_S:g} s per decision, outcome {DELAY_S:g} s later for "
        f"{1 - 1 / NEVER_EVERY:.0%} (the rest expire after reward_wait_s {REWARD_WAIT_S:g}), decision_retention_s "
        f"{RETAIN * STEP_S:g} ({RETAIN:,} decisions kept). Changelog = the compacted tail (one value per key) + the "
        f"last {HEAD} batches uncompacted (the active segment; 'compacted': without them), no tombstones before it; seed.selected = the whole history "
        f"(see the module docstring). Restore = read + fold, one SQLite transaction, Processor.restore()."
    )
    rows = []
    for r in results:
        for key, what in (("cl", f"changelog (+{HEAD} batches)"), ("cl0", "changelog, compacted")):
            cl = r[key]
            rows.append(
                [
                    f"{r['n']:,}" if key == "cl" else "",
                    what,
                    f"{cl['records']:,}",
                    f"{r[key + '_bytes'] / 2**20:.0f}",
                    f"{cl['read']:.2f}",
                    f"{cl['write']:.2f}",
                    f"{cl['load']:.2f}",
                    f"{cl['total']:.2f}",
                    f"{cl['records'] / max(cl['read'], 1e-9):,.0f}",
                    f"{cl['blueprints']}/{cl['decisions']:,}/{cl['pending']}",
                    r["at"] if key == "cl" else "",
                    r["load"] if key == "cl" else "",
                ]
            )
        if "rb" in r:
            rb = r["rb"]
            rows.append(
                [
                    "",
                    "seed.selected rebuild",
                    f"{rb['records']:,}",
                    f"{r['log_bytes'] / 2**20:.0f}",
                    f"{rb['read']:.2f}",
                    f"{rb['write']:.2f}",
                    f"{rb['load']:.2f}",
                    f"{rb['total']:.2f}",
                    f"{rb['records'] / max(rb['read'], 1e-9):,.0f}",
                    f"{rb['blueprints']}/{rb['decisions']:,}/{rb['pending']}",
                    "",
                    "",
                ]
            )
    report.table(
        [
            "decisions",
            "restore from",
            "records read",
            "MiB",
            "read+fold s",
            "write s",
            "load s",
            "total s",
            "records/s",
            "blueprints/decisions/pending",
            "at (UTC)",
            "loadavg",
        ],
        rows,
    )
    # The rebuild is linear in the records it replays: per-record cost of the largest measured size.
    measured = [r for r in results if "rb" in r]
    report.line()
    if measured:
        ref = measured[-1]
        per_decision = ref["rb"]["total"] / ref["n"]
        for r in results:
            rb_s = r["rb"]["total"] if "rb" in r else per_decision * r["n"]
            how = "measured" if "rb" in r else f"extrapolated at {per_decision * 1e3:.2f} ms/decision"
            report.line(
                f"{r['n']:>9,} decisions: changelog {r['cl']['total']:.2f} s, rebuild {rb_s:.1f} s ({how}): "
                f"rebuild / changelog = {rb_s / r['cl']['total']:.1f}x"
            )
    for key, what in (("cl", f"with {HEAD} uncompacted batches"), ("cl0", "compacted only")):
        big, small = results[-1][key]["total"], results[0][key]["total"]
        worst = max(r[key]["total"] for r in results)
        report.line(
            f"  {'PASS' if worst <= GOAL_S else 'MISS'}  changelog restore ({what}) of {n_bp} blueprints <= "
            f"{GOAL_S:g} s at every size (worst {worst:.2f} s)"
        )
        report.line(
            f"  {'PASS' if big <= FLAT * small else 'MISS'}  changelog restore ({what}) flat in history: "
            f"{big:.2f} s at {results[-1]['n']:,} vs {small:.2f} s at {results[0]['n']:,} (goal <= {FLAT:g}x)"
        )


def main(report) -> None:
    report.section("kafka_restore: one partition's restore from the changelog vs the rebuild from seed.selected")
    sizes = QUICK_SIZES if report.quick else SIZES
    n_bp = QUICK_BLUEPRINTS if report.quick else BLUEPRINTS
    workdir = Path(tempfile.mkdtemp(prefix="seedworker-restore-bench-"))
    try:
        with quiet_aiokafka(), broker(workdir, NAME) as (bootstrap, note, _pid):
            asyncio.run(_run(report, sizes, n_bp, bootstrap, note, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
