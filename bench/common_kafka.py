"""Machinery shared by the Kafka benchmarks beyond ``kafka_worker``: the broker, topics with a chosen partition
count, producing to explicit partitions, reading a topic back, child processes, and per-process readings (CPU
time, RSS) from /proc. (Not named ``kafka_*``: ``python -m bench`` would take it for a benchmark.)

``kafka_worker`` keeps its own copies (3 partitions, one pipeline per child); what it has that fits as it is —
its child process class, the machine busy share, the tagged stdout lines — is imported from it, so its results do
not move.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from bench.kafka_worker import REPO, Child
from bench.kafka_worker import _cpu_ticks as cpu_ticks
from bench.kafka_worker import _emit as emit
from bench.kafka_worker import _machine_busy as machine_busy

__all__ = [
    "REPO",
    "Admin",
    "BenchChild",
    "broker",
    "cpu_ticks",
    "emit",
    "listener_pid",
    "machine_busy",
    "parse_metrics",
    "produce",
    "proc_cpu_s",
    "progress",
    "quiet_aiokafka",
    "read_topic",
    "rss_kib",
    "scrape",
]

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def progress(name: str, msg: str) -> None:
    print(f"  [{name}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs (and retries) NotLeaderForPartition on a just-created topic; every count is checked, so keep
    that noise off the console."""
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quiet.setLevel(level)


@contextlib.contextmanager
def broker(workdir: Path, name: str) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap servers, description, broker pid or None): ``KAFKA_BOOTSTRAP_SERVERS`` when set (its pid when it
    listens on this machine), else an own LocalKafka on a free port, stopped on exit."""
    from seedworker.dev.local_kafka import REPO_ROOT, LocalKafka, free_port

    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env:
        pid = listener_pid(env)
        yield (
            env,
            f"KAFKA_BOOTSTRAP_SERVERS={env} (a broker shared with whatever else uses it"
            + (f"; pid {pid} on this machine)" if pid else ")"),
            pid,
        )
        return
    kafka = LocalKafka(
        port=free_port(), workdir=workdir / "kafka", libs_dir=REPO_ROOT / ".cache/kafka/libs", die_with_parent=True
    )
    kafka.ensure_jars()
    t0 = time.perf_counter()
    progress(name, f"starting LocalKafka on {kafka.bootstrap_servers}")
    kafka.start(timeout=120)
    try:
        yield (
            kafka.bootstrap_servers,
            f"LocalKafka (Apache Kafka {kafka.kafka_version()}, KRaft, one JVM) on "
            f"{kafka.bootstrap_servers}, started in {time.perf_counter() - t0:.1f} s",
            kafka.pid,
        )
    finally:
        kafka.stop()


class Admin:
    """Topic creation and deletion for one benchmark run: every topic is ``bench.<run_id>.<name>``."""

    def __init__(self, bootstrap: str, run_id: str):
        self.bootstrap = bootstrap
        self.run_id = run_id

    def topic(self, name: str) -> str:
        return f"bench.{self.run_id}.{name}"

    async def create(self, partitions: dict[str, int], configs: dict[str, dict[str, str]] | None = None) -> None:
        """Create the topics (full names → partition count; ``configs``: topic configurations by name) and wait
        until every partition has a leader."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            configs = configs or {}
            await admin.create_topics(
                [NewTopic(n, p, 1, topic_configs=configs.get(n, {})) for n, p in partitions.items()]
            )
            names = list(partitions)
            for _ in range(200):
                if set(names) <= set(await admin.list_topics()):
                    desc = await admin.describe_topics(names)
                    if all(
                        t.get("error_code", 0) == 0
                        and len(t.get("partitions", ())) == partitions[t["topic"]]
                        and all(p.get("error_code", 0) == 0 and p.get("leader", -1) >= 0 for p in t["partitions"])
                        for t in desc
                    ):
                        return
                await asyncio.sleep(0.1)
            raise RuntimeError(f"topics {names} not ready after 20 s")
        finally:
            await admin.close()

    async def delete(self, names: list[str]) -> None:
        """Delete these topics now (a run that makes large topics one after another frees the disk as it goes)."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(names)
        finally:
            await admin.close()

    async def delete_all(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(f"bench.{self.run_id}.")]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()


async def produce(bootstrap: str, topic: str, msgs: Iterable[tuple[bytes, bytes, list, int | None]]) -> dict[int, int]:
    """Produce (key, value, headers, partition or None for the key's partition); wait for every ack. Returns the
    number of records per partition."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await p.start()
    counts: dict[int, int] = {}
    try:
        futures = []

        async def settle():
            for md in await asyncio.gather(*futures):
                counts[md.partition] = counts.get(md.partition, 0) + 1
            futures.clear()

        for key, value, headers, partition in msgs:
            futures.append(await p.send(topic, value, key=key, headers=headers, partition=partition))
            if len(futures) >= 2000:
                await settle()
        await settle()
    finally:
        await p.stop()
    return counts


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list:
    """Every record of the topic, from the beginning to the end offsets as they are now."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        out = []
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batches = await c.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                out.extend(r for r in records if r.offset < ends[tp])
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
        return out
    finally:
        await c.stop()


class BenchChild(Child):
    """kafka_worker's child process (tagged lines on stdout, stderr to a file), for any command line and with a
    name of its own (two workers of one group must not share a stderr file)."""

    def __init__(self, cfg: dict, workdir: Path, name: str, argv: list[str]):
        super().__init__({"kind": name, "group": "", **cfg}, workdir)  # the fields kafka_worker's messages name
        self.name = name
        self.argv = argv
        self.err_path = workdir / f"{name}.stderr"

    async def start(self) -> None:
        # The child's settings come from the benchmark alone, not from SEEDWORKER_* variables of this shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDWORKER_")}
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.err_path, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=str(REPO),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def lines(self) -> AsyncIterator[tuple[str, dict]]:
        """(tag, payload) of every tagged line until the child closes its stdout."""
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            tag, _, rest = line.decode(errors="replace").strip().partition(" ")
            if tag.isupper() and rest.startswith("{"):
                yield tag, json.loads(rest)

    def stderr_tail(self) -> str:
        return self._stderr_tail()


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used so far, from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process in KiB, from /proc/<pid>/status; {} when it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


async def scrape(port: int, path: str = "/metrics", timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET on 127.0.0.1:port."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode(errors="replace")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {sample name: value}, samples with labels summed under their bare name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def listener_pid(bootstrap: str) -> int | None:
    """The pid of the process listening on the first bootstrap server's port on this machine (the broker), found
    through /proc/net/tcp{,6} and the processes' socket descriptors; None when not visible."""
    try:
        port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None
