"""pytest plugin: a real Kafka broker for the test session.

Register it with ``pytest_plugins = ["tests.kafka_broker"]`` in the top-level conftest.py
(or ``-p tests.kafka_broker``).  It needs pytest-asyncio (for ``kafka_topic_factory``).

Fixtures:

* ``kafka_bootstrap`` (session) -- the bootstrap string, from the first source that works:
  1. env ``KAFKA_BOOTSTRAP_SERVERS`` (checked with a Kafka ApiVersions/Metadata probe);
  2. testcontainers' ``KafkaContainer`` when a Docker engine answers within a couple of
     seconds (image: env ``KAFKA_TEST_IMAGE``, default ``confluentinc/cp-kafka:7.9.0``);
  3. :class:`seedworker.dev.local_kafka.LocalKafka` on a free port, workdir
     ``.cache/kafka-test-<port>`` (removed afterwards), jars cached in ``.cache/kafka/libs``.
  If none works the session fails (``pytest.fail``) -- Kafka tests fail, they never skip.
* ``local_kafka`` (session) -- the :class:`LocalKafka` in use, or ``None`` when the broker
  comes from the environment or a container.  Tests may ``restart()`` it.
* ``kafka_topic_factory`` (function, async) -- ``await kafka_topic_factory(prefix="t",
  partitions=1)`` creates a uniquely named topic (deleted after the test) and returns its name.
* ``unique_topic(prefix)`` -- plain helper returning a unique topic name (no creation).

Other environment knobs: ``KAFKA_TEST_NO_DOCKER=1`` skips the Docker probe,
``KAFKA_TEST_KEEP_WORKDIR=1`` keeps the local broker's workdir (logs, data) after the session.
The local broker is started with ``die_with_parent=True``: if pytest is killed, Linux sends
the broker SIGTERM, so no orphan JVM is left behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from seedworker.dev.local_kafka import REPO_ROOT, LocalKafka, free_port, probe_kafka

DEFAULT_TEST_IMAGE = "confluentinc/cp-kafka:7.9.0"


def unique_topic(prefix: str = "test") -> str:
    """A topic name that no other test (or earlier run against the same broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class KafkaBroker:
    bootstrap_servers: str
    source: str  # "env" | "testcontainers" | "local"
    local: LocalKafka | None = None
    container: object | None = None
    notes: list[str] = field(default_factory=list)


def _probe_bootstrap(bootstrap: str, timeout: float = 10.0) -> None:
    """Raise unless the first reachable bootstrap address answers like a Kafka broker."""
    errors = []
    deadline = time.monotonic() + timeout
    while True:
        for addr in bootstrap.split(","):
            host, _, port = addr.strip().rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            try:
                probe_kafka(host, int(port), timeout=3.0)
                return
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"{addr}: {e!r}")
        if time.monotonic() > deadline:
            raise RuntimeError("; ".join(errors[-3:]))
        time.sleep(0.5)


def _docker_available(notes: list[str]) -> bool:
    if os.environ.get("KAFKA_TEST_NO_DOCKER"):
        notes.append("docker: disabled by KAFKA_TEST_NO_DOCKER")
        return False
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not Path("/var/run/docker.sock").exists():
        notes.append("docker: no DOCKER_HOST and no /var/run/docker.sock")
        return False
    try:
        import docker  # type: ignore[import-not-found]

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
        return True
    except Exception as e:  # noqa: BLE001 - any failure means "no docker"
        notes.append(f"docker: not usable ({e!r})")
        return False


def _try_testcontainers(notes: list[str]) -> KafkaBroker | None:
    if not _docker_available(notes):
        return None
    container = None
    try:
        try:
            from testcontainers.community.kafka import KafkaContainer  # testcontainers >= 4.10
        except ImportError:
            from testcontainers.kafka import KafkaContainer  # type: ignore[no-redef]

        image = os.environ.get("KAFKA_TEST_IMAGE", DEFAULT_TEST_IMAGE)
        container = KafkaContainer(image).with_kraft()
        container.with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        container.start(timeout=120)
        bootstrap = container.get_bootstrap_server()
        _probe_bootstrap(bootstrap, timeout=30)
        return KafkaBroker(bootstrap, "testcontainers", container=container, notes=notes)
    except Exception as e:  # noqa: BLE001
        notes.append(f"testcontainers: {e!r}")
        if container is not None:
            try:
                container.stop()
            except Exception:  # noqa: BLE001
                pass
        return None


def _remove_stale_test_workdirs(max_age_s: float = 900) -> None:
    """Delete ``.cache/kafka-test-*`` left by killed sessions (no live broker, untouched for a while)."""
    now = time.time()
    for d in (REPO_ROOT / ".cache").glob("kafka-test-*"):
        try:
            if now - d.stat().st_mtime > max_age_s and LocalKafka(workdir=d).pid is None:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _try_local(notes: list[str]) -> KafkaBroker | None:
    port = free_port()
    workdir = REPO_ROOT / ".cache" / f"kafka-test-{port}"
    _remove_stale_test_workdirs()
    kafka = LocalKafka(
        port=port,
        workdir=workdir,
        libs_dir=REPO_ROOT / ".cache" / "kafka" / "libs",
        die_with_parent=True,  # a killed pytest takes its broker along
    )
    try:
        kafka.ensure_jars()
        kafka.start(timeout=120)
        return KafkaBroker(kafka.bootstrap_servers, "local", local=kafka, notes=notes)
    except Exception as e:  # noqa: BLE001
        kept = f", workdir {workdir} kept for inspection" if workdir.exists() else ""
        notes.append(f"local broker (LocalKafka on port {port}{kept}): {e}")
        try:
            kafka.stop(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        return None


@pytest.fixture(scope="session")
def _kafka_broker() -> Iterator[KafkaBroker]:
    notes: list[str] = []
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env:
        try:
            _probe_bootstrap(env, timeout=15)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS={env!r} does not answer as a Kafka broker: {e}", pytrace=False)
        yield KafkaBroker(env, "env")
        return

    broker = _try_testcontainers(notes) or _try_local(notes)
    if broker is None:
        why = "\n  ".join(notes)
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a Kafka broker and none could be started:\n  {why}", pytrace=False)
        pytest.fail(
            "no Kafka broker for the tests (Kafka tests fail, never skip). Set KAFKA_BOOTSTRAP_SERVERS, "
            "run a Docker engine, or install Java 17+ and Maven for the local broker.\n  " + why,
            pytrace=False,
        )
    try:
        yield broker
    finally:
        if broker.local is not None:
            broker.local.stop()
            if not os.environ.get("KAFKA_TEST_KEEP_WORKDIR"):
                shutil.rmtree(broker.local.workdir, ignore_errors=True)
        if broker.container is not None:
            try:
                broker.container.stop()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_broker: KafkaBroker) -> str:
    """Bootstrap servers of the session's Kafka broker, e.g. ``"127.0.0.1:40123"``."""
    return _kafka_broker.bootstrap_servers


@pytest.fixture(scope="session")
def local_kafka(_kafka_broker: KafkaBroker) -> LocalKafka | None:
    """The session's :class:`LocalKafka` (restartable), or ``None`` if the broker is external."""
    return _kafka_broker.local


@pytest_asyncio.fixture
async def kafka_topic_factory(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``name = await kafka_topic_factory(prefix="t", partitions=1, config=None)``.

    Creates the topic (the broker does not auto-create topics), waits until every partition
    has a leader, and deletes the topics after the test.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    created: list[str] = []

    async def create(prefix: str = "test", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = unique_topic(prefix)
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config or {})]
        )
        created.append(name)
        await _wait_topic_ready(admin, name, partitions)
        return name

    try:
        yield create
    finally:
        try:
            if created:
                await admin.delete_topics(created)
        except Exception:  # noqa: BLE001 - cleanup only
            pass
        await admin.close()


async def _wait_topic_ready(admin, name: str, partitions: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            (desc,) = await admin.describe_topics([name])
            parts = desc.get("partitions") or []
            if (
                desc.get("error_code", 0) == 0
                and len(parts) == partitions
                and all(p.get("leader", -1) >= 0 for p in parts)
            ):
                return
            last = desc
        except Exception as e:  # noqa: BLE001
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} not ready after {timeout}s: {last!r}")
        await asyncio.sleep(0.1)
