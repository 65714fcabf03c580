"""SeedClient against a real broker, with the worker running in-process (topics unique per test)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from seedworker.broker.client import SeedClient
from seedworker.contract import events as ev
from seedworker.core.config import Settings, Topics
from seedworker.engine.worker import Worker
from tests.kafka_broker import unique_topic

pytestmark = pytest.mark.kafka

SEEDS = [{"seed_id": f"layer3:{k}", "seed_idx": k, "state": "dormant"} for k in range(4)]
CONTEXT = {"current_loss": 0.8, "current_accuracy": 0.7, "current_epoch": 3.0, "total_epochs": 100.0}


def unique_topics() -> dict[str, str]:
    return {name: unique_topic(f"client-{name}") for name in Topics.model_fields}


async def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_request_selection_round_trip_and_outcome_learned(kafka_bootstrap, tmp_path):
    topics = unique_topics()
    settings = Settings(
        kafka={
            "bootstrap_servers": kafka_bootstrap,
            "topics": topics,
            "group_id": f"client-test-{uuid.uuid4().hex[:8]}",
        },
        db=str(tmp_path / "s.sqlite"),
    )
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        async with SeedClient(
            bootstrap_servers=kafka_bootstrap, topics=Topics(**topics), client_id="test-tamiyo", timeout_s=30
        ) as client:
            selected = await client.request_seed(
                blueprint_id="bp-1", seeds=SEEDS, context=CONTEXT, request_id="req-1", trace_id="trace-1", timeout=60
            )
            assert selected.request_id == "req-1"
            assert selected.decision_id == ev.decision_id_for("req-1")
            assert selected.blueprint_id == "bp-1"
            assert (selected.seed_id, selected.seed_idx) in {(s["seed_id"], s["seed_idx"]) for s in SEEDS}
            assert selected.selection_reason and selected.trace_id == "trace-1"

            # Several in flight at once, each answered with its own selection.
            many = await asyncio.gather(
                *(
                    client.request_seed(blueprint_id=f"bp-{i % 2}", seeds=SEEDS, context=CONTEXT, timeout=30)
                    for i in range(10)
                )
            )
            assert len({s.request_id for s in many}) == 10

            outcome = await client.report_outcome(
                selected, accuracy_delta=0.02, latency_ms=12.0, memory_mb=64.0, throughput=300.0, success=True
            )
            assert outcome.decision_id == selected.decision_id
            await wait_for(lambda: worker.counters["outcomes_learned"] >= 1, what="the outcome to be learned")

            # A retried request gets the decision already made, not a new one.
            again = await client.request_seed(
                blueprint_id="bp-1", seeds=SEEDS, context=CONTEXT, request_id="req-1", timeout=30
            )
            assert (again.decision_id, again.seed_id) == (selected.decision_id, selected.seed_id)
        assert worker.counters["decisions"] == 11
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def test_timeout_when_no_worker_runs(kafka_bootstrap, kafka_topic_factory):
    # The topics exist (a worker ran once) but nobody consumes the requests now.
    topics = Topics(
        requests=await kafka_topic_factory("client-req"), selections=await kafka_topic_factory("client-sel")
    )
    async with SeedClient(bootstrap_servers=kafka_bootstrap, topics=topics, timeout_s=5) as client:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no seed selection for request 'lonely-1'.*within 1\.5s"):
            await client.request_seed(blueprint_id="bp", seeds=["a", "b"], request_id="lonely-1", timeout=1.5)
        assert time.monotonic() - t0 < 10
        assert not client._waiting  # nothing left behind


async def test_bad_request_is_rejected_before_sending(kafka_bootstrap):
    async with SeedClient(bootstrap_servers=kafka_bootstrap, topics=Topics(**unique_topics()), timeout_s=5) as client:
        with pytest.raises(ev.EventError, match="duplicate seed_id"):
            await client.request_seed(blueprint_id="bp", seeds=["a", "a"], timeout=1)
