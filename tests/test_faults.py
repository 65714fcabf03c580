"""Faults on the in-memory bus: the store cannot write, or the bus cannot publish.

Each store fault is injected right after the worker opened its store, so the first batch the worker consumes cannot be
stored. The worker must then stop with a StoreError naming the file and the cause, publish nothing from that batch,
store and commit none of its offsets; after the fault is fixed, a new worker processes the batch, and the end state
equals that of a run that never saw the fault (nothing lost, nothing counted twice).

How the faults are made (the tests run as root, so file modes stop nothing):
* disk full: ``PRAGMA max_page_count`` on the worker's own connection, set to the current size. SQLite then fails as
  on a full disk: SQLITE_FULL, "database or disk is full". A new connection (the restart) has no cap: the disk was
  cleaned up.
* WAL unwritable: the ``-wal`` file made immutable (``chattr +i``): every write to it fails with EPERM, which SQLite
  reports as SQLITE_IOERR_WRITE, "disk I/O error" — what a volume gone read-only or failing answers. (Not the
  ``-shm``: SQLite maps it into memory, and a write there would kill the process with SIGBUS.) Needs root and a
  file system with the immutable flag (ext4, xfs, btrfs).
* file deleted: the database file renamed away. In WAL mode SQLite would go on writing to it without an error;
  the store notices that its path no longer names the file it opened. Renaming it back fixes it.

The faults (and FaultyStore, which injects one) are in tests/support.py: test_faults_kafka.py uses them too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from seedworker.broker.base import BusError
from seedworker.broker.memory import MemoryBus
from seedworker.contract import events as ev
from seedworker.core.config import Settings
from seedworker.engine.worker import Worker
from seedworker.store.readers import read_all
from seedworker.store.store import Store, StoreError
from tests.support import FaultyStore, assert_state_equal, disk_full, file_deleted, outcome, wal_unwritable
from tests.support import training_request as request

REQUESTS, OUTCOMES, SELECTIONS = "graft.requested", "adaptation.outcome", "seed.selected"
# what a decision is, without the envelope's fresh event id and time
DECISION_FIELDS = {
    "decision_id",
    "request_id",
    "blueprint_id",
    "seed_id",
    "seed_idx",
    "strategy",
    "selection_reason",
    "propensity",
    "scores",
    "explored",
    "state_version",
    "request_time",
}


FAULTS = {
    "disk full": (disk_full, "database or disk is full (SQLITE_FULL)"),
    "WAL unwritable": (wal_unwritable, "disk I/O error (SQLITE_IOERR_WRITE)"),
    "file deleted": (file_deleted, "the file was deleted while the worker had it open"),
}


async def drain(settings, bus, store: Store | None = None) -> Worker:
    worker = Worker(settings, bus=bus, store=store, burst=True, idle_polls=1)
    await worker.run()
    return worker


def decisions(bus) -> list[dict]:
    return [ev.decode(m.value).model_dump(include=DECISION_FIELDS) for m in bus.read(SELECTIONS)]


async def stream(settings, bus, faulty=None) -> list[str]:
    """Two rounds of requests and outcomes; ``faulty(bus)`` runs between them (it must leave round two to process).
    Returns the selections' bytes in order."""
    await bus.ensure_topics({REQUESTS: 2, OUTCOMES: 2})
    for i in range(30):
        bus.produce(REQUESTS, f"bp-{i % 3}".encode(), request(i, f"bp-{i % 3}"))
    await drain(settings, bus)
    for s in (ev.decode(m.value) for m in bus.read(SELECTIONS)):
        bus.produce(OUTCOMES, s.blueprint_id.encode(), outcome(s, 0.1 if s.seed_idx == 1 else 0.02))
    for i in range(30, 50):
        bus.produce(REQUESTS, f"bp-{i % 3}".encode(), request(i, f"bp-{i % 3}"))
    if faulty is not None:
        await faulty(bus)
    await drain(settings, bus)
    return [m.value for m in bus.read(SELECTIONS)]


def assert_same_end_state(db: Path, reference_db: Path) -> None:
    got, want = read_all(db), read_all(reference_db)
    assert got["counters"] == want["counters"]
    assert got["offsets"] == want["offsets"]
    assert set(got["blueprints"]) == set(want["blueprints"])
    for bp in want["blueprints"]:
        assert_state_equal(got["blueprints"][bp], want["blueprints"][bp], bp)


@pytest.fixture
def max_batch():
    """Records per poll: by default one batch takes each round whole (a test may parametrize it)."""
    return 500


@pytest.fixture
def settings(tmp_path, max_batch):
    return Settings(db=str(tmp_path / "state.sqlite"), kafka={"partitions": 2, "max_batch": max_batch})


@pytest.fixture
def reference(tmp_path, max_batch):
    """The same stream on a store that never fails."""

    async def run():
        settings = Settings(db=str(tmp_path / "reference.sqlite"), kafka={"partitions": 2, "max_batch": max_batch})
        bus = MemoryBus()
        await stream(settings, bus)
        return Path(settings.db), decisions(bus)

    return run


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_store_fault_stops_the_worker_and_a_restart_processes_the_batch(fault, settings, reference):
    db = Path(settings.db)
    make, message = FAULTS[fault]
    inject, heal = make(db)
    seen = {}

    async def faulty(bus: MemoryBus) -> None:
        before = read_all(db)
        published, committed = len(bus.read(SELECTIONS)), dict(bus.committed)
        with pytest.raises(StoreError) as err:
            try:
                await drain(settings, bus, FaultyStore(db, inject))
            finally:
                heal()
        text = str(err.value)
        seen["error"] = text
        assert str(db) in text and message in text, text
        assert "stopped consuming" in text and "was not stored" in text, text
        # nothing of the batch was kept, published or acknowledged
        assert len(bus.read(SELECTIONS)) == published
        assert bus.committed == committed
        after = read_all(db)
        assert (after["offsets"], after["counters"]) == (before["offsets"], before["counters"])

    bus = MemoryBus()
    sent = await stream(settings, bus, faulty)
    reference_db, reference_decisions = await reference()
    assert "error" in seen
    # every request answered once, with the decision the fault-free run made
    assert decisions(bus) == reference_decisions
    assert len(sent) == 50 and len({ev.decode(v).request_id for v in sent}) == 50
    assert_same_end_state(db, reference_db)
    assert read_all(db)["counters"]["outcomes_learned"] == 30
    print(f"{fault}: {seen['error']}")


class UnreachableBus(MemoryBus):
    """Kafka stops taking messages after ``publish`` more: the bus gives up with a BusError (as KafkaBus does once
    connect_timeout_s passes without an acknowledgement)."""

    def __init__(self, publish: int, **kwargs):
        super().__init__(**kwargs)
        self.publish = publish

    async def send(self, messages, *, owner=None) -> None:
        for m in messages:
            if self.publish <= 0:
                raise BusError("Kafka at memory did not acknowledge 1 message within 60s")
            self.publish -= 1
            self.produce(m.topic, m.key, m.value, m.headers, m.partition)


# max_batch 4: full polls, so the worker publishes each batch beside the next one (Worker.process) and learns of the
# failure only when that batch is stored: both stay in the outbox.
@pytest.mark.parametrize("max_batch", [500, 4])
@pytest.mark.parametrize("publish", [0, 7])
async def test_publish_failure_keeps_the_outbox_and_a_restart_sends_it_again(publish, max_batch, settings, reference):
    db = Path(settings.db)
    seen = {}

    async def faulty(bus: MemoryBus) -> None:
        published, committed = len(bus.read(SELECTIONS)), dict(bus.committed)
        broken = UnreachableBus(publish, topics=bus.topics, committed=bus.committed)
        with pytest.raises(BusError) as err:
            await drain(settings, broken)
        seen["error"] = str(err.value)
        assert "stay in the outbox" in str(err.value)
        # stored, but only what Kafka took was published, and no group commit for it
        if max_batch == 500:
            assert len(bus.read(SELECTIONS)) == published + publish
        else:  # the messages Kafka took include the first batch's changelog records
            assert published <= len(bus.read(SELECTIONS)) <= published + publish
        assert bus.committed == committed
        seen["went_out"] = len(bus.read(SELECTIONS)) - published
        c = read_all(db)["counters"]
        if max_batch == 500:
            assert c["decisions"] == 50
        else:  # stopped after the batch stored beside the failed publish
            assert 30 <= c["decisions"] < 50

    bus = MemoryBus()
    sent = await stream(settings, bus, faulty)
    reference_db, reference_decisions = await reference()
    by_request: dict[str, list[bytes]] = {}
    for value in sent:
        by_request.setdefault(ev.decode(value).request_id, []).append(value)
    assert len(by_request) == 50
    # what went out before the failure went out again, byte for byte
    assert sum(len(v) - 1 for v in by_request.values()) == seen["went_out"]
    assert all(len(set(v)) == 1 for v in by_request.values())
    first = [ev.decode(v[0]).model_dump(include=DECISION_FIELDS) for v in by_request.values()]
    assert sorted(first, key=lambda d: d["request_id"]) == sorted(reference_decisions, key=lambda d: d["request_id"])
    assert_same_end_state(db, reference_db)


async def test_store_cannot_open(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match=r"cannot open .*a-file/state.sqlite"):
        await Store(tmp_path / "a-file" / "state.sqlite").open()
