"""Helpers shared by the test modules: events, draining a worker on the in-memory bus, reading what it published."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.contract import headers as hdr
from seedworker.engine.worker import Worker

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
REQ, OUT, SEL, CTL, DLQ = "graft.requested", "adaptation.outcome", "seed.selected", "seedworker.control", "seedworker.dlq"


def request(i: int | str, bp: str = "bp", k: int = 4, *, t: float | None = None, **fields) -> bytes:
    rid = i if isinstance(i, str) else f"req-{i}"
    when = T0 + timedelta(seconds=t if t is not None else (i if isinstance(i, int) else 0))
    return ev.encode(ev.GraftRequested(
        request_id=rid, blueprint_id=bp, occurred_at=when,
        seeds=[ev.SeedCandidate(seed_id=f"layer3:{j}", seed_idx=j) for j in range(k)], **fields))


def outcome(selected: ev.SeedSelected, gain: float, dt: float = 1.0, *, seed_id: str | None = None,
            **fields) -> bytes:
    return ev.encode(ev.AdaptationOutcome(
        decision_id=selected.decision_id, blueprint_id=selected.blueprint_id,
        seed_id=seed_id or selected.seed_id, accuracy_delta=gain,
        occurred_at=selected.request_time + timedelta(seconds=dt), **fields))


async def new_bus(partitions: int = 2) -> MemoryBus:
    bus = MemoryBus()
    await bus.ensure_topics({REQ: partitions, OUT: partitions})
    return bus


async def drain(settings, bus) -> Worker:
    w = Worker(settings, bus=bus, burst=True, idle_polls=1)
    await w.run()
    return w


def selections(bus) -> list[ev.SeedSelected]:
    return [ev.decode(m.value) for m in bus.read(SEL)]  # type: ignore[misc]


def dead_letters(bus) -> list[tuple[str, str]]:
    """(source topic, reason) of every dead letter."""
    return [(hdr.value(m.headers, hdr.DLQ_TOPIC), hdr.value(m.headers, hdr.DLQ_REASON)) for m in bus.read(DLQ)]
