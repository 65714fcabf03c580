"""End-to-end demo (``make run``): a real Kafka broker, the worker as a subprocess, and a simulated Tamiyo.

    python -m seedworker.dev.demo [--requests 400] [--blueprints 3] [--concurrency 16] [--port 9092]

1. Kafka: if something already answers as a Kafka broker on 127.0.0.1:PORT (``--port``, else env ``KAFKA_PORT``,
   else 9092) it is used as is; otherwise the local broker (``seedworker.dev.local_kafka``, workdir ``.cache/kafka``) is
   started — and stopped again at the end, but only if this demo started it.
2. The worker: ``python -m seedworker run --bootstrap-servers ... --db var/seedworker.sqlite``, logging to
   ``var/worker.log``; the demo waits until it has joined its consumer group.
3. A simulated Tamiyo: per blueprint, a stationary environment from ``seedworker.tools.simulation.envs`` with hidden seed
   qualities (seed 0, the old default, is never the best). Graft requests go through :class:`SeedClient`, several in
   flight at once; every selection's outcome (drawn by the environment for that step and seed) is reported back.
4. A summary: selection shares against the hidden best seed, mean reward against the always-seed-0 baseline on the
   same stream, decision latency, counts. The learned state stays in ``var/seedworker.sqlite``; running the demo
   again continues from it (request ids carry a per-run id, so they never collide).

Exit status 0 on success, 1 with a message on stderr when anything fails, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORKDIR = Path(".cache/kafka")
GROUP_WAIT_S = 90.0
LEARN_WAIT_S = 30.0
WORKER_STOP_S = 30.0


class DemoError(RuntimeError):
    """A failure with a message meant for the user."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"    <cannot read {path}: {exc}>"
    return "\n".join("    " + line for line in text[-lines:])


# -- the broker ----------------------------------------------------------------------------------------------------
@dataclass
class Broker:
    bootstrap_servers: str
    how: str
    local: object | None = None  # the LocalKafka to stop at the end, if this demo started it

    def stop(self) -> None:
        if self.local is not None:
            say(f"stopping the Kafka broker the demo started ({self.bootstrap_servers})")
            self.local.stop()  # type: ignore[attr-defined]
            self.local = None


def start_broker(port: int) -> Broker:
    from seedworker.dev.local_kafka import LocalKafka, probe_kafka

    try:
        probe_kafka("127.0.0.1", port, timeout=2.0)
        return Broker(f"127.0.0.1:{port}", f"using the Kafka broker already answering on 127.0.0.1:{port}")
    except (OSError, ValueError, Exception):  # noqa: BLE001 - anything but a proper answer means "no broker here"
        pass
    kafka = LocalKafka(port=port, workdir=WORKDIR)
    if kafka.is_running():  # the broker of .cache/kafka runs on another port (e.g. `make kafka-up KAFKA_PORT=...`)
        try:
            kafka.start(timeout=90)  # adopts it (port from its state file) and waits until it serves clients
        except RuntimeError as exc:
            raise DemoError(f"the local broker of {kafka.workdir} is running but not usable: {exc}") from None
        return Broker(kafka.bootstrap_servers, f"using the running local broker at {kafka.bootstrap_servers}")
    try:
        if not kafka.jars_present():
            say(
                f"downloading the Kafka {kafka.kafka_version()} jars with Maven into {kafka.libs_dir} "
                "(first run only; can take a few minutes) ..."
            )
        kafka.ensure_jars()
        say(f"starting a local Kafka broker on 127.0.0.1:{port} (workdir {kafka.workdir}) ...")
        t0 = time.monotonic()
        kafka.start(timeout=120)
    except RuntimeError as exc:
        hint = ""
        if "already in use" in str(exc):
            hint = f"\n  (something that is not Kafka listens on port {port}; choose another with --port or KAFKA_PORT)"
        raise DemoError(f"cannot start the local Kafka broker: {exc}{hint}") from None
    return Broker(
        kafka.bootstrap_servers,
        f"started a local Kafka broker at {kafka.bootstrap_servers} in {time.monotonic() - t0:.1f}s",
        local=kafka,
    )


# -- the worker ----------------------------------------------------------------------------------------------------
class WorkerProcess:
    def __init__(self, bootstrap: str, db: Path, log_path: Path, run_id: str):
        self.bootstrap, self.db, self.log_path, self.run_id = bootstrap, db, log_path, run_id
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from seedworker.dev.local_kafka import _parent_death_signal

        cmd = [sys.executable, "-m", "seedworker", "run", "--bootstrap-servers", self.bootstrap, "--db", str(self.db)]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== seedworker demo run {self.run_id}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to the demo, which stops it in order
                preexec_fn=_parent_death_signal(),
            )  # and it dies if the demo is killed

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoError(
                f"the worker exited unexpectedly (exit code {self.proc.returncode}); "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def stop(self) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop in time. Returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise DemoError(
                    f"the worker did not stop within {WORKER_STOP_S:.0f}s of SIGTERM and was killed; "
                    f"see {self.log_path}"
                ) from None
        return proc.returncode


async def group_members(admin, group: str) -> tuple[str, set[str]]:
    state, members = "Dead", set()
    for resp in await admin.describe_consumer_groups([group]):
        for g in resp.groups:
            _err, gid, gstate, _ptype, _proto, gmembers = g[:6]
            if gid == group:
                state, members = gstate, {m[0] for m in gmembers}
    return state, members


async def wait_until_worker_joined(bootstrap: str, group: str, worker: WorkerProcess, before: set[str]) -> float:
    """Wait until a member that was not there before the worker started is in the Stable group."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="seedworker-demo")
    await admin.start()
    t0 = time.monotonic()
    try:
        while True:
            worker.check_alive()
            try:
                state, members = await group_members(admin, group)
                if state == "Stable" and members - before:
                    return time.monotonic() - t0
            except KafkaError:
                pass  # the group coordinator is not there yet on a fresh broker
            if time.monotonic() - t0 > GROUP_WAIT_S:
                raise DemoError(
                    f"the worker did not join consumer group {group!r} within {GROUP_WAIT_S:.0f}s; "
                    f"last lines of {worker.log_path}:\n{tail(worker.log_path)}"
                )
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def members_before(bootstrap: str, group: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="seedworker-demo")
    try:
        await admin.start()
        return (await group_members(admin, group))[1]
    except KafkaError:
        return set()
    finally:
        await admin.close()


# -- the simulated Tamiyo ------------------------------------------------------------------------------------------
@dataclass
class Record:
    blueprint: int
    step: int
    seed_idx: int
    latency_s: float
    reward: float  # realized reward of the chosen seed
    expected: float  # its expected reward
    reward0: float  # what seed 0 would have realized at this very step
    expected0: float
    best_value: float
    explored: bool


async def drive(args, settings, envs, run_id: str, worker: WorkerProcess) -> tuple[list[Record], float]:
    from tqdm import tqdm

    from seedworker.broker.client import SeedClient

    total = len(envs) * args.requests
    records: list[Record] = []
    jobs = iter([(b, t) for t in range(args.requests) for b in range(len(envs))])  # blueprints interleaved
    candidates = [
        [{"seed_id": s, "seed_idx": k, "state": "dormant"} for k, s in enumerate(env.seed_ids)] for env in envs
    ]

    async with SeedClient.from_settings(
        settings.kafka, client_id=f"seedworker-demo-{run_id}", timeout_s=args.timeout, source="seedworker-demo"
    ) as client:
        progress = tqdm(total=total, desc="grafts", unit="req", mininterval=0.5, file=sys.stderr, dynamic_ncols=True)

        async def tamiyo() -> None:
            for b, t in jobs:
                env = envs[b]
                step = env.step(t)
                bp = blueprint_id(b)
                t0 = time.perf_counter()
                selected = await client.request_seed(
                    blueprint_id=bp,
                    seeds=candidates[b],
                    context=step.context,
                    layer_name=env.layer,
                    request_id=f"demo-{run_id}-{bp}-{t:05d}",
                )
                latency = time.perf_counter() - t0
                k = selected.seed_idx
                if not 0 <= k < env.n_seeds or selected.seed_id != env.seed_ids[k]:
                    raise DemoError(f"the worker selected {selected.seed_id!r} (seed_idx {k}), not a candidate")
                await client.report_outcome(selected, **step.outcome(k).fields())
                records.append(
                    Record(
                        b,
                        t,
                        k,
                        latency,
                        float(step.rewards[k]),
                        float(step.expected[k]),
                        float(step.rewards[0]),
                        float(step.expected[0]),
                        step.best_value,
                        selected.explored,
                    )
                )
                progress.update()

        async def watchdog() -> None:
            while True:
                worker.check_alive()
                await asyncio.sleep(0.5)

        t0 = time.perf_counter()
        guard = asyncio.create_task(watchdog())
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(args.concurrency):
                    tg.create_task(tamiyo())
                tg.create_task(_until_done(guard, lambda: len(records) == total))
        except BaseExceptionGroup as eg:
            raise _first(eg) from None
        finally:
            guard.cancel()
            progress.close()
        return records, time.perf_counter() - t0


async def _until_done(guard: asyncio.Task, done) -> None:
    """Lets the watchdog's failure cancel the Tamiyo tasks; returns once every request is answered."""
    while not done():
        if guard.done():
            guard.result()  # raises the watchdog's error
        await asyncio.sleep(0.1)


def _first(eg: BaseExceptionGroup) -> BaseException:
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return eg.exceptions[0]


def blueprint_id(b: int) -> str:
    return f"demo-bp-{b}"


async def wait_until_learned(db: Path, run_id: str, expected: int, worker: WorkerProcess) -> dict[str, int]:
    """Wait until the worker has stored every decision of this run as resolved (or LEARN_WAIT_S passes).
    Returns this run's decisions in the state file by status."""
    deadline = time.monotonic() + LEARN_WAIT_S
    while True:
        worker.check_alive()
        statuses = run_statuses(db, run_id)
        if statuses.get("resolved", 0) >= expected or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.2)


def run_statuses(db: Path, run_id: str) -> dict[str, int]:
    """This run's decisions in the worker's state file, by status (pending, resolved, ...)."""
    from seedworker.store import readers

    try:
        return readers.read_snapshot(db, lambda con: readers.request_statuses(con, f"demo-{run_id}-"))
    except Exception:  # noqa: BLE001 - no state file (or no tables) yet
        return {}


def snapshot(db: Path) -> dict:
    from seedworker.store.readers import read_all

    if not db.exists():
        return {"blueprints": {}, "counters": {}}
    try:
        return read_all(db)
    except Exception:  # noqa: BLE001 - a fresh file without tables yet
        return {"blueprints": {}, "counters": {}}


# -- the summary ---------------------------------------------------------------------------------------------------
def summary(
    args,
    envs,
    records: list[Record],
    wall_s: float,
    ready_s: float,
    before: dict,
    after: dict,
    statuses: dict[str, int],
    broker: Broker,
    db: Path,
    log_path: Path,
    run_id: str,
) -> list[str]:
    problems: list[str] = []
    n = args.requests
    say()
    say(
        f"=== seedworker demo, run {run_id}: {len(envs)} blueprints x {n} graft requests, "
        f"{args.concurrency} in flight, {envs[0].n_seeds} candidate seeds each ==="
    )
    say(f"broker: {broker.how}; worker joined its group {ready_s:.1f}s after start")
    for b, env in enumerate(envs):
        rec = sorted((r for r in records if r.blueprint == b), key=lambda r: r.step)
        picks = np.array([r.seed_idx for r in rec])
        share = np.bincount(picks, minlength=env.n_seeds) / max(len(picks), 1)
        prior = before["blueprints"].get(blueprint_id(b), {}).get("decisions", 0)
        say()
        say(
            f"blueprint {blueprint_id(b)}  (hidden qualities: stationary env seed {b}; hidden best {env.seed_ids[env.best]}"
            + (f"; continues from {prior} earlier decisions)" if prior else "; fresh state)")
        )
        say(f"  {'seed':<12}{'hidden mean gain':>17}{'share':>9}")
        for k, sid in enumerate(env.seed_ids):
            mark = "  <- hidden best" if k == env.best else ("  (old default)" if k == 0 else "")
            say(f"  {sid:<12}{env.means[k]:>17.4f}{share[k]:>9.1%}{mark}")
        q = max(len(picks) // 4, 1)
        first, last = (picks[:q] == env.best).mean(), (picks[-q:] == env.best).mean()
        say(f"  best-seed share: first quarter {first:.0%} -> last quarter {last:.0%}")
        mean = lambda f: float(np.mean([f(r) for r in rec]))  # noqa: E731, B023 (used at once, in this iteration)
        say(
            f"  mean reward: seedworker {mean(lambda r: r.reward):.4f} (expected {mean(lambda r: r.expected):.4f})"
            f" | always seed 0 on the same stream {mean(lambda r: r.reward0):.4f} "
            f"(expected {mean(lambda r: r.expected0):.4f}) | oracle {mean(lambda r: r.best_value):.4f}"
        )
        gain = mean(lambda r: r.expected) - mean(lambda r: r.expected0)
        say(
            f"  expected gain over the seed-0 baseline: {gain:+.4f} per graft "
            f"({gain / max(abs(mean(lambda r: r.expected0)), 1e-12):+.0%})"
        )
    lat = np.array([r.latency_s for r in records]) * 1000
    say()
    say(
        f"decision latency (request sent -> selection received), {len(lat)} requests: "
        f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms"
    )
    say(
        f"throughput: {len(records)} request/selection/outcome round trips in {wall_s:.1f}s "
        f"({len(records) / wall_s:.0f}/s)"
    )
    explored = sum(r.explored for r in records)
    c0, c1 = before["counters"], after["counters"]
    delta = {k: c1.get(k, 0) - c0.get(k, 0) for k in sorted(set(c0) | set(c1)) if c1.get(k, 0) != c0.get(k, 0)}
    stored = sum(statuses.values())
    learned = statuses.get("resolved", 0)
    say(
        f"counts: {len(records)} requests sent, {len(records)} selections received ({explored} explored), "
        f"{len(records)} outcomes reported; in the state file: {stored} decisions of this run, {learned} learned"
    )
    say("worker counters this run: " + (", ".join(f"{k}={v}" for k, v in delta.items()) or "(none)"))
    replayed = delta.get("decisions", 0) - stored
    if replayed > 0:
        say(
            f"  ({replayed} of those decisions answered older requests still on the topics: the state file "
            "started empty while the broker kept its history, so the worker read the topics from their start)"
        )
    if stored != len(records):
        problems.append(f"the state file holds {stored} decisions of this run, for {len(records)} requests")
    if learned < len(records):
        problems.append(
            f"the worker learned {learned} of {len(records)} outcomes within {LEARN_WAIT_S:.0f}s "
            f"(this run's decisions by status: {statuses})"
        )
    say()
    say(f"state: {db}  (all counters: " + ", ".join(f"{k}={v}" for k, v in sorted(c1.items())) + ")")
    say(f"inspect it with:  .venv/bin/seedworker inspect --db {db}")
    say(f"worker log:       {log_path}")
    return problems


# -- main ----------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env_port = os.environ.get("KAFKA_PORT", "9092")
    p = argparse.ArgumentParser(prog="python -m seedworker.dev.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=400, help="graft requests per blueprint (default 400)")
    p.add_argument("--blueprints", type=int, default=3, help="blueprints, each with its own hidden qualities")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default 16)")
    p.add_argument("--seeds", type=int, default=8, help="candidate seeds per request (default 8)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"Kafka port on 127.0.0.1 (default: env KAFKA_PORT, else 9092; now {env_port})",
    )
    p.add_argument("--db", type=Path, default=Path("var/seedworker.sqlite"), help="worker state (SQLite)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one selection (default 30)")
    args = p.parse_args(argv)
    if args.port is None:
        try:
            args.port = int(env_port)
        except ValueError:
            p.error(f"KAFKA_PORT={env_port!r} is not a port number")
    for name, low in (("requests", 1), ("blueprints", 1), ("concurrency", 1), ("seeds", 2)):
        if getattr(args, name) < low:
            p.error(f"--{name} must be at least {low}")
    if not 0 < args.port < 65536:
        p.error(f"--port {args.port} is not a port number")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def run(args: argparse.Namespace) -> int:
    from seedworker.core.config import load_settings
    from seedworker.tools.simulation.envs import Stationary

    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    db: Path = args.db
    db.parent.mkdir(parents=True, exist_ok=True)
    log_path = db.parent / "worker.log"
    envs = [Stationary(n_seeds=args.seeds, steps=args.requests, seed=b) for b in range(args.blueprints)]

    broker = start_broker(args.port)
    worker: WorkerProcess | None = None
    try:
        say(broker.how)
        # The worker's effective settings (SEEDWORKER_* variables apply to it as well): its group and topics.
        settings = load_settings(overrides={"kafka.bootstrap_servers": broker.bootstrap_servers, "db": str(db)})
        group = settings.kafka.group_id
        others = asyncio.run(members_before(broker.bootstrap_servers, group))
        if others:
            say(
                f"note: consumer group {group!r} already has {len(others)} member(s): another worker is running "
                "against this broker and will share the requests"
            )
        before = snapshot(db)
        worker = WorkerProcess(broker.bootstrap_servers, db, log_path, run_id)
        say(
            f"starting the worker: {sys.executable} -m seedworker run --bootstrap-servers "
            f"{broker.bootstrap_servers} --db {db}  (log: {log_path})"
        )
        worker.start()
        ready_s = asyncio.run(wait_until_worker_joined(broker.bootstrap_servers, group, worker, others))
        say(
            f"simulated Tamiyo: {args.blueprints} blueprints x {args.requests} requests, "
            f"{args.concurrency} in flight ..."
        )

        async def main_async():
            recs, wall = await drive(args, settings, envs, run_id, worker)
            statuses = await wait_until_learned(db, run_id, len(recs), worker)
            return recs, wall, statuses

        records, wall_s, statuses = asyncio.run(main_async())
        say("stopping the worker (SIGTERM) ...")
        code = worker.stop()
        if code != 0:
            raise DemoError(
                f"the worker exited with code {code} after SIGTERM; last lines of {log_path}:\n{tail(log_path)}"
            )
        after = snapshot(db)
        problems = summary(args, envs, records, wall_s, ready_s, before, after, statuses, broker, db, log_path, run_id)
    finally:
        try:
            if worker is not None:
                worker.stop()
        finally:
            broker.stop()
    if problems:
        for p in problems:
            print(f"seedworker demo: FAILED: {p}", file=sys.stderr)
        return 1
    return 0


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (e.g. make killed): clean up like Ctrl-C does


class _QuietTransient(logging.Filter):
    """aiokafka logs, at ERROR, the retried offset lookups on a topic whose partitions got their leader a moment ago."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.getMessage().startswith("Failed fetch offsets") and "NotLeaderForPartition" in record.getMessage()
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka.consumer.fetcher").addFilter(_QuietTransient())
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except KeyboardInterrupt:
        print(
            "\nseedworker demo: interrupted (the worker, and the broker if the demo started it, were stopped)",
            file=sys.stderr,
        )
        return 130
    except (DemoError, TimeoutError, ConnectionError) as exc:
        print(f"\nseedworker demo: FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the demo must always say what went wrong
        import traceback

        traceback.print_exc()
        print(f"\nseedworker demo: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
