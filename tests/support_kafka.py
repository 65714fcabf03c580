"""Helpers for the tests on the real Kafka broker (tests/kafka_broker.py): the worker's topics, its settings, a
worker running in-process or as a ``seedworker run`` subprocess, and a group-less reader of whole topics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from aiokafka import AIOKafkaConsumer, TopicPartition

from seedworker.core.config import Settings, load_settings
from seedworker.dev.local_kafka import REPO_ROOT
from tests.kafka_broker import unique_topic

PARTITIONS = 3
TOPIC_KINDS = ("requests", "outcomes", "selections", "dead_letters", "control")


def topic_names(prefix: str) -> dict[str, str]:
    return {kind: unique_topic(f"{prefix}-{kind.replace('_', '-')}") for kind in TOPIC_KINDS}


async def create_topics(factory, prefix: str) -> dict[str, str]:
    """The worker's five topics, created up front (and deleted after the test) by the broker fixture."""
    return {
        kind: await factory(f"{prefix}-{kind.replace('_', '-')}", 1 if kind == "control" else PARTITIONS)
        for kind in TOPIC_KINDS
    }


def make_settings(bootstrap: str, tmp_path: Path, topics: dict[str, str], **kafka) -> Settings:
    return Settings(
        db=str(tmp_path / "state.sqlite"),
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": unique_topic("group"),
            "topics": topics,
            "partitions": PARTITIONS,
            "output_partitions": PARTITIONS,
            **kafka,
        },
    )


class Reader:
    """A group-less consumer reading whole topics from the beginning (manual assignment: no rebalance delay)."""

    def __init__(
        self, bootstrap: str, topic: str, partitions: int = PARTITIONS, *, isolation_level: str = "read_committed"
    ):
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        # read_committed, as Tamiyo must read: a worker killed inside a batch's transaction leaves records that
        # the partition's next owner aborts (and answers again); an uncommitted reader sees both answers.
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
            isolation_level=isolation_level,
        )
        self.records: list = []

    async def __aenter__(self) -> Self:
        await self.consumer.start()
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_beginning(*self.tps)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()

    async def poll(self, timeout_ms: int = 100) -> list:
        new = [r for recs in (await self.consumer.getmany(timeout_ms=timeout_ms)).values() for r in recs]
        self.records.extend(new)
        return new

    async def until(self, cond, what: str, timeout: float = 60.0) -> list:
        deadline = time.monotonic() + timeout
        while not cond(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what} ({len(self.records)} records read)"
                )
            await self.poll()
        return self.records

    async def to_end(self, timeout: float = 30.0) -> list:
        """Everything up to the current end of the topic."""
        end = await self.consumer.end_offsets(self.tps)
        deadline = time.monotonic() + timeout
        while [tp for tp in self.tps if await self.consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read to the end of {self.tps[0].topic} within {timeout}s")
            await self.poll()
        return self.records


class WorkerProcess:
    """``python -m seedworker run`` as a subprocess; settings through SEEDWORKER_* like a deployment would."""

    def __init__(self, bootstrap: str, db: Path, topics: dict[str, str], group: str, log: Path):
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDWORKER_")}
        env.update({f"SEEDWORKER_KAFKA__TOPICS__{kind.upper()}": name for kind, name in topics.items()})
        env.update(
            SEEDWORKER_KAFKA__PARTITIONS=str(PARTITIONS),
            SEEDWORKER_KAFKA__OUTPUT_PARTITIONS=str(PARTITIONS),
            SEEDWORKER_KAFKA__GROUP_ID=group,
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.cmd = [sys.executable, "-m", "seedworker", "run", "--bootstrap-servers", bootstrap, "--db", str(db)]
        # The settings the worker process sees, for the independent replay.
        self.settings = load_settings(
            None, environ=env, overrides={"kafka.bootstrap_servers": bootstrap, "db": str(db)}
        )
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as f:
            f.write(f"\n===== start #{self.starts} =====\n".encode())
            self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.alive(), f"the worker died on its own (exit {self.proc.returncode}){self.tail()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def cleanup(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n--- worker log (tail) ---\n" + "\n".join(lines[-n:])


class CommittedReader(Reader):
    """A Reader with ``isolation.level=read_committed``: what a consumer of ``seed.selected`` (or a restore) sees,
    never the records of an aborted or still open transaction."""

    def __init__(
        self, bootstrap: str, topic: str, partitions: int = PARTITIONS, *, isolation_level: str = "read_committed"
    ):
        # Not Reader.__init__: a consumer created and never started warns when it is collected.
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.records = []
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
            isolation_level="read_committed",
        )
