"""Operations: Prometheus metrics, the health/readiness endpoint, JSON logs, the trace id carried to the selection.

The worker runs for real (MemoryBus, burst mode) and /metrics is scraped over HTTP on 127.0.0.1; the text is read
with prometheus_client's parser and with a strict line check of our own. Two tests use the real broker: the bus's
lag against known offsets, and ``seedworker run`` as a subprocess serving its endpoint with JSON logs.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.core.config import ConfigError, Settings, load_settings
from seedworker.dev.local_kafka import REPO_ROOT, free_port
from seedworker.engine.worker import Worker
from seedworker.ops.http_server import HttpServer, endpoint_for
from seedworker.ops.logs import JsonFormatter, configure
from seedworker.ops.metrics import COUNTER_HELP, Registry, WorkerMetrics, exposition
from seedworker.tools.cli import build_parser
from tests.kafka_broker import unique_topic
from tests.support import T0, outcome
from tests.support import training_request as request
from tests.support_buses import bus, bus_backend  # noqa: F401 (fixtures)

REQ, OUT, CTL = "graft.requested", "adaptation.outcome", "seedworker.control"
SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
    r"(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$"
)


# -- helpers -----------------------------------------------------------------------------------------------------
async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str, dict]:
    """A plain HTTP client (urllib, no proxy) in a thread, so the server on this loop can answer."""

    def fetch():
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        try:
            with opener.open(req, timeout=10) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    return await asyncio.to_thread(fetch)


def check_format(text: str) -> None:
    """Text format 0.0.4, strictly: HELP then TYPE once per family, samples of that family after it."""
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    family = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            family = line.split()[2]
            assert family not in typed, f"{family} described twice"
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == family and kind in ("counter", "gauge", "histogram"), line
            typed[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name = m.group(1)
            suffixes = ("_bucket", "_sum", "_count") if typed[family] == "histogram" else ("",)
            assert any(name == family + s for s in suffixes), f"{name} outside its family {family}"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    check_format(text)
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    status, body, headers = await http_get(port, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(body)


def value(s: dict, name: str, **labels) -> float:
    return s[(name, tuple(sorted(labels.items())))]


async def eventually(cond, what: str, timeout: float = 60.0):
    """A hang guard, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def serve(worker: Worker) -> HttpServer:
    return HttpServer(port=0, exposition=WorkerMetrics.of(worker).exposition, readiness=worker.readiness)


@pytest.fixture
def settings(tmp_path):
    return Settings(
        db=str(tmp_path / "state.sqlite"),
        kafka={"partitions": 2, "max_batch": 4},
        join={"hold_unknown_s": 60, "reward_wait_s": 600},
    )


# -- the registry and the format ---------------------------------------------------------------------------------
def test_histogram_buckets_are_cumulative_and_inclusive():
    reg = Registry()
    h = Histogram("x_seconds", "a histogram", buckets=(1, 2, 5), registry=reg)
    for v in (0.5, 1, 1.5, 2, 7):
        h.observe(v)
    s = samples(exposition(reg).decode())
    # "le": a value equal to a bound counts in that bound's bucket.
    assert [value(s, "x_seconds_bucket", le=b) for b in ("1.0", "2.0", "5.0", "+Inf")] == [2, 4, 4, 5]
    assert value(s, "x_seconds_count") == 5 == reg.get_sample_value("x_seconds_count")
    assert value(s, "x_seconds_sum") == pytest.approx(12.0)


def test_label_values_and_help_are_escaped():
    reg = Registry()
    g = Gauge("odd_gauge", "help with a \\ and a\nnewline", ("a", "b"), registry=reg)
    g.labels('q"uote', "back\\slash\nnewline").set(3)
    text = exposition(reg).decode()
    (fam,) = list(text_string_to_metric_families(text))
    assert fam.documentation == "help with a \\ and a\nnewline"
    assert fam.samples[0].labels == {"a": 'q"uote', "b": "back\\slash\nnewline"}
    check_format(text)


def test_bad_names_and_duplicates_are_refused():
    # prometheus_client (since 0.22) takes any UTF-8 name and would escape it on output; older ones refuse it when
    # the metric is made. Either way it never reaches an exposition: the registry refuses it at the scrape.
    reg = Registry()
    with pytest.raises(ValueError, match="(?i)invalid metric name"):
        Gauge("bad-name", "x", registry=reg)
        exposition(reg)
    reg = Registry()
    bad_label = GaugeMetricFamily("good", "x", labels=("bad-label",))  # families do not check their label names
    bad_label.add_metric(("v",), 1)
    reg.register(FixedFamilies(bad_label))
    with pytest.raises(ValueError, match="invalid label name"):
        exposition(reg)
    with pytest.raises(ValueError, match="[Rr]eserved label"):  # refused by prometheus_client itself
        Gauge("good", "x", ("__reserved",), registry=None)
    reg = Registry()
    Gauge("same", "x", registry=reg)
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # refused by prometheus_client when registered
        Gauge("same", "y", registry=reg)
    # Collectors that read their families at scrape time have no names to check when they are registered.
    reg = Registry()
    reg.register(FixedFamilies(GaugeMetricFamily("same", "x", value=1)))
    reg.register(FixedFamilies(GaugeMetricFamily("same", "y", value=2)))
    with pytest.raises(ValueError, match="registered twice"):
        exposition(reg)


class FixedFamilies:
    def __init__(self, *families):
        self.families = families

    def collect(self):
        return self.families


def test_histograms_leave_out_the_openmetrics_created_series():
    reg = Registry()
    Histogram("x_seconds", "a histogram", buckets=(1,), registry=reg).observe(0.5)
    text = exposition(reg).decode()
    check_format(text)
    assert "_created" not in text
    assert {(s.name, s.value) for f in text_string_to_metric_families(text) for s in f.samples} == {
        ("x_seconds_bucket", 1),
        ("x_seconds_sum", 0.5),
        ("x_seconds_count", 1),
    }


# -- the worker's metrics over HTTP --------------------------------------------------------------------------------
async def test_scrape_counts_match_the_events_fed(settings):
    bus = MemoryBus()
    await bus.ensure_topics({REQ: 2, OUT: 2})
    for i in range(10):
        bus.produce(REQ, b"bp", request(i))
    bus.produce(REQ, b"bp", b"not json")
    bus.produce(REQ, b"bp", b'{"event_type": "graft.requested", "request_id": "x", "blueprint_id": "bp", "seeds": []}')

    w1 = Worker(settings, bus=bus, burst=True, idle_polls=1)
    server = serve(w1)
    await server.start()
    try:
        await w1.run()
        s = await scrape(server.port)
    finally:
        await server.stop()
    assert value(s, "seedworker_decisions_total") == 10 == w1.counters["decisions"]
    assert value(s, "seedworker_dead_letters_total") == 2
    assert value(s, "seedworker_decisions_pending") == 10
    assert value(s, "seedworker_selection_latency_seconds_count") == 10
    assert value(s, "seedworker_selection_latency_seconds_sum") > 0
    assert value(s, "seedworker_transaction_latency_seconds_count") == 3  # 12 messages in batches of 4
    assert value(s, "seedworker_ready") == 0  # a burst run has stopped: its store is closed

    sel = {x.request_id: x for x in (ev.decode(m.value) for m in bus.read("seed.selected"))}
    bus.produce(REQ, b"bp", request(0))  # two retried requests: answered again, not decided again
    bus.produce(REQ, b"bp", request(1))
    for i in range(6):
        bus.produce(OUT, b"bp", outcome(sel[f"req-{i}"], 0.01))
    bus.produce(OUT, b"bp", outcome(sel["req-0"], 0.01))  # a second outcome for a resolved decision
    other = next(f"layer3:{j}" for j in range(4) if f"layer3:{j}" != sel["req-6"].seed_id)
    bus.produce(
        OUT,
        b"bp",
        ev.encode(
            ev.AdaptationOutcome(
                decision_id=sel["req-6"].decision_id,
                blueprint_id="bp",
                seed_id=other,
                accuracy_delta=0.1,
                occurred_at=T0 + timedelta(seconds=7),
            )
        ),
    )
    bus.produce(
        OUT,
        b"bp",
        ev.encode(
            ev.AdaptationOutcome(  # its decision never comes: held, then dangling
                request_id="ghost", blueprint_id="bp", seed_id="layer3:0", occurred_at=T0 + timedelta(seconds=20)
            )
        ),
    )
    bus.produce(OUT, b"bp", b"{broken")
    # After reward_wait_s (600 s): late, not learned, so req-7 goes on waiting. It also moves event time on, expiring
    # req-7/8/9 and releasing the ghost.
    bus.produce(OUT, b"bp", outcome(sel["req-7"], 0.01, dt=700))
    bus.produce(CTL, None, ev.encode(ev.StrategySwitch(strategy="ucb")))

    w2 = Worker(settings, bus=bus, burst=True, idle_polls=1)
    server = serve(w2)
    await server.start()
    try:
        await w2.run()
        s = await scrape(server.port)
    finally:
        await server.stop()
    expected = {
        "decisions": 10,
        "dead_letters": 4,  # the three bad records and the dangling outcome
        "duplicate_requests": 2,
        "outcomes_learned": 6,
        "duplicate_outcomes": 1,
        "mismatched_outcomes": 1,
        "held_outcomes": 1,
        "dangling_outcomes": 1,
        "late_outcomes": 1,
        "expired_decisions": 3,
        "strategy_switches": 1,
    }
    assert set(expected) == set(COUNTER_HELP)
    for name, n in expected.items():
        assert value(s, f"seedworker_{name}_total") == n == w2.counters[name], name
    assert value(s, "seedworker_decisions_pending") == 0
    assert value(s, "seedworker_outcomes_held") == 0
    # Counters come from the worker (restored from SQLite); histograms measure this process only.
    assert value(s, "seedworker_selection_latency_seconds_count") == 0
    # The switch was on the control topic when the worker started: read first, in a batch of its own; then the 13
    # inputs in batches of 4.
    assert value(s, "seedworker_transaction_latency_seconds_count") == 5
    assert value(s, "seedworker_transaction_latency_seconds_bucket", le="+Inf") == 5


async def test_two_workers_in_one_process_have_their_own_registries(tmp_path):
    workers = []
    for n in (3, 5):
        bus = MemoryBus()
        await bus.ensure_topics({REQ: 2, OUT: 2})
        for i in range(n):
            bus.produce(REQ, b"bp", request(i))
        workers.append(
            Worker(
                Settings(db=str(tmp_path / f"state-{n}.sqlite"), kafka={"partitions": 2}),
                bus=bus,
                burst=True,
                idle_polls=1,
            )
        )
    w3, w5 = workers
    for w in workers:
        WorkerMetrics(w)
    assert w3.metrics.registry is not w5.metrics.registry
    for w in workers:
        await w.run()
    w5.metrics.transaction.observe(42.0)  # only w5's histogram has a value in its +Inf bucket
    s3, s5 = [samples((await w.metrics.exposition()).decode()) for w in workers]
    assert set(s3) == set(s5)  # the same names and labels in both, not refused as duplicates
    assert value(s3, "seedworker_decisions_total") == 3 and value(s5, "seedworker_decisions_total") == 5
    assert value(s3, "seedworker_selection_latency_seconds_count") == 3
    assert value(s5, "seedworker_selection_latency_seconds_count") == 5
    assert (
        value(s5, "seedworker_transaction_latency_seconds_bucket", le="+Inf")
        - value(s5, "seedworker_transaction_latency_seconds_bucket", le="10.0")
    ) == 1
    assert (
        value(s3, "seedworker_transaction_latency_seconds_bucket", le="+Inf")
        - value(s3, "seedworker_transaction_latency_seconds_bucket", le="10.0")
    ) == 0
    # Nothing of theirs in prometheus_client's process-global registry.
    assert not [f.name for f in REGISTRY.collect() if f.name.startswith("seedworker_")]


async def test_a_deep_copy_of_a_worker_has_a_metric_set_of_its_own(settings):
    bus = MemoryBus()
    await bus.ensure_topics({REQ: 2, OUT: 2})
    for i in range(3):
        bus.produce(REQ, b"bp", request(i))
    worker = Worker(settings, bus=bus, burst=True, idle_polls=1)
    WorkerMetrics(worker)
    await worker.run()
    copy.deepcopy(bus)  # the bus still holds the worker's callbacks: the worker is copied with it
    twin = copy.deepcopy(worker)
    assert twin.metrics.worker is twin and twin.metrics.registry is not worker.metrics.registry
    s = samples((await twin.metrics.exposition()).decode())
    assert value(s, "seedworker_decisions_total") == 3  # the counters are the worker's, copied with it
    assert value(s, "seedworker_selection_latency_seconds_count") == 0  # measuring from nothing
    s = samples((await worker.metrics.exposition()).decode())
    assert value(s, "seedworker_selection_latency_seconds_count") == 3


async def test_the_lag_gauge_shows_the_snapshot_taken_before_the_scrape(settings):
    bus = MemoryBus()
    await bus.ensure_topics({REQ: 1, OUT: 1})
    worker = Worker(settings, bus=bus)
    WorkerMetrics(worker)
    calls = []

    async def lag():
        calls.append(len(calls))
        return {(REQ, 0): 7 + len(calls)} if len(calls) == 1 else {(OUT, 0): 2}

    bus.lag = lag
    s = samples((await worker.metrics.exposition()).decode())
    assert {k: v for k, v in s.items() if k[0] == "seedworker_consumer_lag_messages"} == {
        ("seedworker_consumer_lag_messages", (("partition", "0"), ("topic", REQ))): 8
    }
    s = samples((await worker.metrics.exposition()).decode())
    # The whole snapshot is replaced: a partition gone from the bus's answer (revoked) is gone from the gauge.
    assert {k: v for k, v in s.items() if k[0] == "seedworker_consumer_lag_messages"} == {
        ("seedworker_consumer_lag_messages", (("partition", "0"), ("topic", OUT))): 2
    }
    assert calls == [0, 1]


async def test_readiness_follows_the_worker_and_lag_is_exported(settings):
    bus = MemoryBus()
    await bus.ensure_topics({REQ: 2, OUT: 2})
    worker = Worker(settings, bus=bus)
    server = serve(worker)
    await server.start()
    try:
        status, body, headers = await http_get(server.port, "/readyz")
        assert status == 503 and headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"ready": False, "store_open": False, "consumer_started": False, "running": True}
        assert (await http_get(server.port, "/healthz"))[:2] == (200, "ok\n")

        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 30)
        status, body, _ = await http_get(server.port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        for i in range(5):
            bus.produce(REQ, f"bp-{i}".encode(), request(i, bp=f"bp-{i}"))

        async def decided():
            return worker.counters["decisions"] == 5

        await eventually(decided, "5 decisions")
        s = await scrape(server.port)
        assert value(s, "seedworker_decisions_total") == 5
        assert value(s, "seedworker_ready") == 1
        lag = {k: v for k, v in s.items() if k[0] == "seedworker_consumer_lag_messages"}
        assert {dict(k[1])["topic"] + f"[{dict(k[1])['partition']}]" for k in lag} == {
            f"{REQ}[0]",
            f"{REQ}[1]",
            f"{OUT}[0]",
            f"{OUT}[1]",
            f"{CTL}[0]",
        }
        assert set(lag.values()) == {0}

        assert (await http_get(server.port, "/metrics", method="HEAD"))[:2] == (200, "")
        assert (await http_get(server.port, "/nope"))[0] == 404
        assert (await http_get(server.port, "/metrics", method="POST"))[0] == 405

        worker.stop()
        await asyncio.wait_for(task, 30)
        status, body, _ = await http_get(server.port, "/readyz")
        assert status == 503
        assert json.loads(body) == {"ready": False, "store_open": False, "consumer_started": True, "running": False}
        assert (await http_get(server.port, "/healthz"))[0] == 200
    finally:
        await server.stop()


async def test_a_failing_scrape_answers_500_and_the_server_goes_on():
    async def broken() -> str:
        raise RuntimeError("boom")

    server = HttpServer(port=0, exposition=broken, readiness=lambda: {"ok": True})
    await server.start()
    try:
        assert (await http_get(server.port, "/metrics"))[0] == 500
        assert (await http_get(server.port, "/readyz"))[0] == 200
    finally:
        await server.stop()


def test_endpoint_is_off_when_the_port_is_zero(settings):
    worker = Worker(settings, bus=MemoryBus())
    assert endpoint_for(worker, settings.metrics) is None
    server = endpoint_for(worker, Settings(metrics={"port": 9464}).metrics)
    assert (server.host, server.port) == ("127.0.0.1", 9464)


# -- settings and flags ----------------------------------------------------------------------------------------------
def test_metrics_settings_from_environment_and_flags():
    s = load_settings(
        environ={
            "SEEDWORKER_METRICS__PORT": "9464",
            "SEEDWORKER_METRICS__HOST": "0.0.0.0",
            "SEEDWORKER_LOG_FORMAT": "json",
        }
    )
    assert (s.metrics.host, s.metrics.port, s.log_format) == ("0.0.0.0", 9464, "json")
    assert Settings().metrics.port == 0 and Settings().log_format == "plain"
    with pytest.raises(ConfigError, match="metrics.port"):
        load_settings(environ={"SEEDWORKER_METRICS__PORT": "70000"})
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(environ={"SEEDWORKER_LOG_FORMAT": "xml"})
    args = build_parser().parse_args(["run", "--metrics-port", "9100", "--log-format", "json"])
    assert (args.metrics_port, args.log_format) == (9100, "json")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--log-format", "yaml"])


# -- trace id ------------------------------------------------------------------------------------------------------
async def test_trace_id_is_carried_from_the_body_or_the_header(settings):
    bus = MemoryBus()
    await bus.ensure_topics({REQ: 2, OUT: 2})

    def req(i: int, trace: str | None) -> bytes:
        r = ev.decode(request(i))
        return ev.encode(r.model_copy(update={"trace_id": trace}))

    bus.produce(REQ, b"bp", req(1, "body-1"))
    bus.produce(REQ, b"bp", req(2, None), headers=(("trace_id", b"hdr-2"),))
    bus.produce(REQ, b"bp", req(3, None))
    bus.produce(REQ, b"bp", req(4, "body-4"), headers=(("trace_id", b"hdr-4"),))
    bus.produce(REQ, b"bp", req(2, None), headers=(("trace_id", b"hdr-2"),))  # a retry: the same answer again
    await Worker(settings, bus=bus, burst=True, idle_polls=1).run()
    out = [(ev.decode(m.value), dict(m.headers)) for m in bus.read("seed.selected")]
    assert [(s.request_id, s.trace_id, h.get("trace_id")) for s, h in out] == [
        ("req-1", "body-1", b"body-1"),
        ("req-2", "hdr-2", b"hdr-2"),
        ("req-3", None, None),
        ("req-4", "body-4", b"body-4"),  # the body wins over the header
        ("req-2", "hdr-2", b"hdr-2"),
    ]
    assert out[1][0].decision_id == ev.decision_id_for("req-2")


# -- logs ----------------------------------------------------------------------------------------------------------
def test_json_formatter_writes_one_object_per_line():
    record = logging.LogRecord("seedworker.x", logging.WARNING, __file__, 1, "value %s", ("v",), None)
    record.trace_id = "t-1"
    record.path = REPO_ROOT  # not JSON-serializable: written as text
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "WARNING" and obj["logger"] == "seedworker.x" and obj["message"] == "value v"
    assert obj["trace_id"] == "t-1" and obj["path"] == str(REPO_ROOT)
    assert "ValueError: bad" in obj["exception"]
    assert obj["time"].endswith("+00:00")
    assert not {"args", "msg", "levelno", "pathname"} & set(obj)


async def test_worker_log_lines_in_json_carry_their_fields(settings):
    bus = MemoryBus()
    await bus.ensure_topics({REQ: 2, OUT: 2})
    bus.produce(REQ, b"bp", b"not json", headers=(("trace_id", b"t-bad"),))
    bus.produce(REQ, b"bp", request(1))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("seedworker.engine")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        await Worker(settings, bus=bus, burst=True, idle_polls=1).run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (dead,) = [x for x in lines if x["message"].startswith("dead letter")]
    assert dead["level"] == "WARNING" and dead["logger"] == "seedworker.engine.processor"
    assert (dead["trace_id"], dead["topic"], dead["offset"]) == ("t-bad", REQ, 0)
    assert isinstance(dead["partition"], int)
    assert any(x["message"].startswith("worker started") for x in lines)


def test_configure_replaces_only_its_own_handler():
    root = logging.getLogger()
    others = list(root.handlers)
    level = root.level
    a, b = io.StringIO(), io.StringIO()
    try:
        configure("INFO", "plain", a)
        configure("INFO", "json", b)
        logging.getLogger("seedworker.test").info("hello %d", 1, extra={"trace_id": "t"})
    finally:
        for h in [h for h in root.handlers if h not in others]:
            root.removeHandler(h)
        root.setLevel(level)
    assert root.handlers == others  # pytest's own handlers were left alone
    assert a.getvalue() == ""
    obj = json.loads(b.getvalue())
    assert (obj["message"], obj["trace_id"]) == ("hello 1", "t")
    with pytest.raises(ValueError, match="log format"):
        configure("INFO", "xml", io.StringIO())


# -- against the real broker -----------------------------------------------------------------------------------------
async def test_bus_lag_counts_unconsumed_messages(bus):
    """lag(), on the memory bus and on the real broker (high watermark minus position): per assigned partition, the
    messages not consumed yet; nothing before the start or after the stop."""
    topic = await bus.topic("lag", 1)
    for i in range(10):
        await bus.send_to(topic, b"%d" % i)
    await bus.flush()
    consumer = bus.consumer()

    async def on_assign(tps):
        for tp in tps:
            consumer.seek(tp, 0)

    async def on_revoke(tps):
        pass

    assert await consumer.lag() == {}  # not started: nothing to report
    await consumer.start([topic], on_assign, on_revoke)
    try:
        got = []
        deadline = time.monotonic() + 60
        while not got:
            assert time.monotonic() < deadline, "no records within 60 s"
            got = await consumer.poll(200, 3)
        assert [m.offset for m in got] == [0, 1, 2]
        assert await consumer.lag() == {(topic, 0): 7}
        got += await consumer.poll(5000, 7)
        assert await consumer.lag() == {(topic, 0): 10 - len(got)}
    finally:
        await consumer.stop()
    assert await consumer.lag() == {}


@pytest.mark.kafka
async def test_seedworker_run_serves_metrics_health_and_json_logs(kafka_bootstrap, kafka_topic_factory, tmp_path):
    topics = {
        kind: await kafka_topic_factory(f"ops-{kind.replace('_', '-')}", 1 if kind == "control" else 3)
        for kind in ("requests", "outcomes", "selections", "dead_letters", "control")
    }
    port = free_port()
    env = {
        **os.environ,
        "SEEDWORKER_GROUP_ID": unique_topic("group"),
        "SEEDWORKER_KAFKA__PARTITIONS": "3",
        "SEEDWORKER_KAFKA__OUTPUT_PARTITIONS": "3",
        **{f"SEEDWORKER_KAFKA__TOPICS__{kind.upper()}": name for kind, name in topics.items()},
    }
    cmd = [
        sys.executable,
        "-m",
        "seedworker",
        "run",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--db",
        str(tmp_path / "state.sqlite"),
        "--metrics-port",
        str(port),
        "--log-format",
        "json",
    ]
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:

        async def ready():
            try:
                return (await http_get(port, "/readyz"))[0] == 200
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, log_path.read_text()
                return False

        await eventually(ready, "the worker's /readyz")
        assert (await http_get(port, "/healthz"))[0] == 200

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(30):
                await producer.send(topics["requests"], request(i, bp=f"bp-{i % 10}"), key=f"bp-{i % 10}".encode())
            await producer.flush()
        finally:
            await producer.stop()

        last: dict = {}

        async def drained():
            last.update(await scrape(port))
            lag = {
                (dict(k[1])["topic"], dict(k[1])["partition"]): v
                for k, v in last.items()
                if k[0] == "seedworker_consumer_lag_messages"
            }
            wanted = {(topics[k], str(p)) for k in ("requests", "outcomes") for p in range(3)}
            return (
                last.get(("seedworker_decisions_total", ())) == 30
                and wanted <= set(lag)
                and all(lag[tp] == 0 for tp in wanted)
            )

        await eventually(drained, "30 decisions and zero lag on every input partition")
        assert value(last, "seedworker_selection_latency_seconds_count") == 30
        assert value(last, "seedworker_transaction_latency_seconds_count") >= 1
        assert value(last, "seedworker_ready") == 1
        assert value(last, "seedworker_consumer_lag_messages", topic=topics["control"], partition="0") == 0

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["logger"] == "seedworker.engine.worker" and r["message"].startswith("worker started") for r in records)
    assert any(r["logger"] == "seedworker.http" and str(port) in r["message"] for r in records)
