"""A real single-node Apache Kafka broker (KRaft, broker+controller in one JVM), without Docker.

The broker jars come from Maven Central through ``deploy/pom.xml`` and are cached in
``<repo>/.cache/kafka/libs``; the broker itself is ``java -cp 'libs/*' kafka.Kafka
server.properties`` started as a detached process group.  Stdlib only.

Python API::

    from seedworker.dev.local_kafka import LocalKafka

    with LocalKafka(port=19092, workdir=Path("/tmp/k")) as kafka:   # ensure_jars() + start()
        print(kafka.bootstrap_servers)                               # "127.0.0.1:19092"

CLI::

    python -m seedworker.dev.local_kafka up [--port N] [--workdir DIR]   # detached, returns when ready
    python -m seedworker.dev.local_kafka status [--workdir DIR]
    python -m seedworker.dev.local_kafka down [--workdir DIR]

Relative ``workdir``/``libs_dir`` given to :class:`LocalKafka` are taken relative to the
repository root (the parent of the ``seedworker`` package), so the same broker is found
whatever the current directory is.  The CLI resolves ``--workdir`` against the current
directory, like any other command-line path.

Listeners: ``PLAINTEXT://127.0.0.1:<port>`` (clients) and ``CONTROLLER://127.0.0.1:<controller
port>`` (KRaft quorum), and with ``sasl_port`` a ``SASL_PLAINTEXT://127.0.0.1:<sasl_port>``
listener offering SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN to the ``scram_users`` ({name:
password}; their SCRAM credentials are written when the storage is formatted, i.e. on the
first start of a fresh workdir, and the PLAIN ones into server.properties, mode 0600); with
``ssl_port`` an ``SSL://127.0.0.1:<ssl_port>`` listener presenting ``ssl_keystore`` (PEM: an
unencrypted PKCS#8 key and the certificate chain) and, with ``ssl_truststore`` (PEM CA
certificates), requiring a client certificate signed by them.  The broker talks to itself over
PLAINTEXT on loopback.  ``port`` must stay a PLAINTEXT listener (the
readiness probe speaks plain Kafka protocol to it); other listeners go in through
``extra_config`` (which overrides any generated key), other format options through
``format_args``.  Passwords are masked in the format command line written to ``kafka.log``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "LocalKafka",
    "REPO_ROOT",
    "DEFAULT_WORKDIR",
    "DEFAULT_LIBS_DIR",
    "free_port",
    "probe_kafka",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "deploy" / "pom.xml"
DEFAULT_WORKDIR = Path(".cache/kafka")
DEFAULT_LIBS_DIR = Path(".cache/kafka/libs")

DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

_JARS_MARKER = ".complete"
_PID_FILE = "kafka.pid"
_STATE_FILE = "kafka.json"
_LOG_FILE = "kafka.log"
_CONFIG_FILE = "server.properties"
_LOG4J_FILE = "log4j2.properties"
_DATA_DIR = "data"

SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_LOGIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SAFE_PASSWORD = re.compile(r"[!#-+\--<>-Z^-~]+")  # printable ASCII without space " , = [ \ ]
_PASSWORD_ARG = re.compile(r"(password=)[^,\]]*")


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # like the JVM's server sockets: only a live socket on the port counts, not TIME_WAIT
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError:
            return False
    return True


def _random_cluster_id() -> str:
    """Same format as ``kafka-storage random-uuid``: url-safe base64 of 16 random bytes."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like CLI options
            return cid


def _tail(path: Path, lines: int = 60) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(data.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _pid_cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return None


def _parent_death_signal():
    """A preexec_fn asking Linux to SIGTERM the child when this process dies (None elsewhere).

    Used by test fixtures so a killed pytest does not leave an orphan broker behind.  Linux
    sends the signal when the *thread* that forked exits, so this is only armed from the main
    thread (a broker (re)started from a worker thread, e.g. ``asyncio.to_thread(kafka.restart)``,
    would otherwise die with that thread).
    """
    import threading

    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved in the parent, called in the child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec


# ------------------------------------------------------------- tiny Kafka protocol probe


def _kafka_request(host: str, port: int, api_key: int, api_version: int, body: bytes, timeout: float) -> bytes:
    """Send one request (request header v1) and return the response body after the correlation id."""
    correlation_id = 0x5EED
    client_id = b"seedworker-local-kafka"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    payload = header + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(payload)) + payload)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        data = _recv_exact(s, size)
    (corr,) = struct.unpack_from(">i", data, 0)
    if corr != correlation_id:
        raise ConnectionError(f"unexpected correlation id {corr}")
    return data[4:]


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def _read_string(data: bytes, off: int) -> tuple[str | None, int]:
    (n,) = struct.unpack_from(">h", data, off)
    off += 2
    if n < 0:
        return None, off
    return data[off : off + n].decode("utf-8", "replace"), off + n


def probe_kafka(host: str, port: int, timeout: float = 3.0) -> dict:
    """Ask a broker for ApiVersions (v0) and Metadata (v4); raise if it does not answer properly.

    Returns ``{"api_versions": {key: (min, max)}, "brokers": [(id, host, port)],
    "cluster_id": str, "controller_id": int}``.  Both versions are served by every broker
    from 1.0 to 4.x (KIP-896 left them in), and a non-empty broker list means the broker has
    registered with the KRaft controller and serves clients.
    """
    body = _kafka_request(host, port, 18, 0, b"", timeout)  # ApiVersions v0
    error_code, n = struct.unpack_from(">hi", body, 0)
    if error_code != 0:
        raise ConnectionError(f"ApiVersions error_code={error_code}")
    versions = {}
    off = 6
    for _ in range(n):
        key, vmin, vmax = struct.unpack_from(">hhh", body, off)
        versions[key] = (vmin, vmax)
        off += 6
    # Metadata v4: topics=null (all), allow_auto_topic_creation=false
    body = _kafka_request(host, port, 3, 4, struct.pack(">ib", -1, 0), timeout)
    off = 4  # throttle_time_ms
    (nb,) = struct.unpack_from(">i", body, off)
    off += 4
    brokers = []
    for _ in range(nb):
        (node_id,) = struct.unpack_from(">i", body, off)
        bhost, off = _read_string(body, off + 4)
        (bport,) = struct.unpack_from(">i", body, off)
        _rack, off = _read_string(body, off + 4)
        brokers.append((node_id, bhost, bport))
    cluster_id, off = _read_string(body, off)
    (controller_id,) = struct.unpack_from(">i", body, off)
    if not brokers:
        raise ConnectionError("broker answered Metadata with an empty broker list (not registered yet)")
    return {
        "api_versions": versions,
        "brokers": brokers,
        "cluster_id": cluster_id,
        "controller_id": controller_id,
    }


# ------------------------------------------------------------------------- LocalKafka


class LocalKafka:
    """A single-node KRaft Kafka broker in a subprocess, owning ``workdir``.

    Files in ``workdir``: ``server.properties``, ``log4j2.properties``, ``data/`` (log.dirs and
    the KRaft metadata log), ``kafka.log`` (broker log, stdout+stderr; the previous run's is
    kept as ``kafka.log.1``), ``kafka.pid`` and ``kafka.json`` (pid, ports) while running.
    """

    def __init__(
        self,
        *,
        port: int = 9092,
        controller_port: int | None = None,
        workdir: Path | str = DEFAULT_WORKDIR,
        libs_dir: Path | str | None = None,
        extra_config: Mapping[str, str] | None = None,
        java: str = "java",
        mvn: str = "mvn",
        jvm_opts: Sequence[str] = DEFAULT_JVM_OPTS,
        format_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        die_with_parent: bool = False,
        sasl_port: int | None = None,
        scram_users: Mapping[str, str] | None = None,
        ssl_port: int | None = None,
        ssl_keystore: Path | str | None = None,
        ssl_truststore: Path | str | None = None,
    ) -> None:
        self.port = int(port)
        self.sasl_port = int(sasl_port) if sasl_port is not None else None
        self.ssl_port = int(ssl_port) if ssl_port is not None else None
        if self.ssl_port is not None and ssl_keystore is None:
            raise ValueError("an SSL listener (ssl_port) needs ssl_keystore")
        self.ssl_keystore = self._abs(ssl_keystore) if ssl_keystore is not None else None
        self.ssl_truststore = self._abs(ssl_truststore) if ssl_truststore is not None else None
        self.scram_users = dict(scram_users or {})
        for name, password in self.scram_users.items():
            # Both go verbatim into `--add-scram 'SCRAM-SHA-256=[name=..,password=..]'` and a JAAS line.
            if not _SAFE_NAME.fullmatch(name) or not _SAFE_PASSWORD.fullmatch(password):
                raise ValueError(
                    f"SCRAM user {name!r}: names are [A-Za-z0-9._-]+, passwords printable ASCII "
                    "without spaces, quotes, backslashes, commas, '=' or brackets"
                )
        self._requested_controller_port = controller_port
        self.controller_port: int | None = controller_port
        self.workdir = self._abs(workdir)
        self.libs_dir = self._abs(libs_dir if libs_dir is not None else DEFAULT_LIBS_DIR)
        self.extra_config = {str(k): str(v) for k, v in (extra_config or {}).items()}
        self.java = java
        self.mvn = mvn
        self.jvm_opts = list(jvm_opts)
        self.format_args = list(format_args)
        self.host = host
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen | None = None

    # -- paths / properties

    @staticmethod
    def _abs(p: Path | str) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else REPO_ROOT / p

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        """The SASL_PLAINTEXT listener (SCRAM-SHA-256/512, PLAIN), if ``sasl_port`` was given."""
        return f"{self.host}:{self.sasl_port}" if self.sasl_port is not None else None

    @property
    def ssl_bootstrap_servers(self) -> str | None:
        """The SSL listener, if ``ssl_port`` was given."""
        return f"{self.host}:{self.ssl_port}" if self.ssl_port is not None else None

    @property
    def config_path(self) -> Path:
        return self.workdir / _CONFIG_FILE

    @property
    def log_path(self) -> Path:
        return self.workdir / _LOG_FILE

    @property
    def pid_path(self) -> Path:
        return self.workdir / _PID_FILE

    @property
    def data_dir(self) -> Path:
        return self.workdir / _DATA_DIR

    @property
    def pid(self) -> int | None:
        """Pid of the broker owning ``workdir`` (ours or one started by another process), if running."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        pid = self._read_pid()
        if pid is not None and self._is_our_broker(pid):
            return pid
        return None

    # -- jars

    @staticmethod
    def kafka_version() -> str:
        """The ``kafka.version`` property of deploy/pom.xml."""
        ns = {"m": "http://maven.apache.org/POM/4.0.0"}
        root = ET.parse(POM).getroot()
        el = root.find("m:properties/m:kafka.version", ns)
        if el is None or not (el.text or "").strip():
            raise RuntimeError(f"{POM} has no <kafka.version> property")
        return el.text.strip()

    def jars_present(self) -> bool:
        marker = self.libs_dir / _JARS_MARKER
        try:
            version = marker.read_text().strip()
        except OSError:
            return False
        return version == self.kafka_version() and (self.libs_dir / f"kafka_2.13-{version}.jar").is_file()

    def ensure_jars(self) -> Path:
        """Download the broker jars with Maven into ``libs_dir`` unless they are already there.

        Safe against concurrent callers (file lock) and against half-finished downloads (the
        jars are copied to a temporary directory which is renamed into place).
        """
        if self.jars_present():
            return self.libs_dir
        if not POM.is_file():
            raise RuntimeError(f"cannot download Kafka: {POM} not found")
        mvn = shutil.which(self.mvn)
        if mvn is None:
            raise RuntimeError(f"cannot download Kafka: Maven executable {self.mvn!r} not found on PATH")
        import fcntl

        self.libs_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.libs_dir.parent / (self.libs_dir.name + ".lock")
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.jars_present():  # someone else finished while we waited
                return self.libs_dir
            version = self.kafka_version()
            tmp = self.libs_dir.parent / f"{self.libs_dir.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
            ]
            try:
                res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
            except subprocess.TimeoutExpired as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise RuntimeError(f"Maven timed out after {e.timeout}s: {' '.join(cmd)}") from e
            out = res.stdout.decode("utf-8", "replace")
            if res.returncode != 0 or not (tmp / f"kafka_2.13-{version}.jar").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                raise RuntimeError(
                    f"Maven failed to fetch Kafka {version} (exit {res.returncode}): {' '.join(cmd)}\n"
                    + "\n".join(out.splitlines()[-40:])
                )
            (tmp / _JARS_MARKER).write_text(version + "\n")
            if self.libs_dir.exists():  # stale jars of another version: never mix them
                shutil.rmtree(self.libs_dir)
            os.rename(tmp, self.libs_dir)
        return self.libs_dir

    # -- config

    def _pick_controller_port(self) -> int:
        if self._requested_controller_port is not None:
            return int(self._requested_controller_port)
        taken = (self.port, self.sasl_port, self.ssl_port)
        previous = self.controller_port  # keep the port across restart()
        if previous and previous not in taken and _port_is_free(previous, self.host):
            return int(previous)
        candidate = self.port + 1000
        if candidate < 65536 and candidate not in taken and _port_is_free(candidate, self.host):
            return candidate
        while True:
            p = free_port(self.host)
            if p not in taken:
                return p

    def server_properties(self) -> dict[str, str]:
        """The broker configuration (``extra_config`` applied last)."""
        if self.controller_port is None:
            self.controller_port = self._pick_controller_port()
        h, p, c = self.host, self.port, self.controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static quorum: the controller endpoint is not written into the metadata log, so
            # the controller port may change between runs of the same workdir.
            "controller.quorum.voters": f"1@{h}:{c}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
            "advertised.listeners": f"PLAINTEXT://{h}:{p}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Topics are created explicitly (tests and the app); a typo must not create a topic.
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # modest footprint for a 2-core machine
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "4",
            "log.retention.hours": "24",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        }
        props.update(self._listener_properties())
        props.update(self.extra_config)
        return props

    def _listener_properties(self) -> dict[str, str]:
        """SASL_PLAINTEXT and SSL listeners next to PLAINTEXT; the broker's own traffic stays on PLAINTEXT."""
        extra = {
            name: port
            for name, port in (("SASL_PLAINTEXT", self.sasl_port), ("SSL", self.ssl_port))
            if port is not None
        }
        if not extra:
            return {}
        h = self.host
        client = [f"PLAINTEXT://{h}:{self.port}", *(f"{name}://{h}:{port}" for name, port in extra.items())]
        props = {
            "listeners": ",".join([*client, f"CONTROLLER://{h}:{self.controller_port}"]),
            "advertised.listeners": ",".join(client),
            "listener.security.protocol.map": ",".join(
                ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT", *(f"{name}:{name}" for name in extra)]
            ),
        }
        if self.sasl_port is not None:
            sasl = "listener.name.sasl_plaintext."
            plain_users = "".join(f' user_{name}="{pw}"' for name, pw in self.scram_users.items())
            props.update(
                {
                    sasl + "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
                    # SCRAM users live in the cluster metadata (added at format time); the login modules take no options.
                    sasl + "scram-sha-256.sasl.jaas.config": f"{_SCRAM_LOGIN} required;",
                    sasl + "scram-sha-512.sasl.jaas.config": f"{_SCRAM_LOGIN} required;",
                    sasl + "plain.sasl.jaas.config": f"{_PLAIN_LOGIN} required{plain_users};",
                }
            )
        if self.ssl_port is not None:
            tls = "listener.name.ssl.ssl."
            props.update({tls + "keystore.type": "PEM", tls + "keystore.location": str(self.ssl_keystore)})
            if self.ssl_truststore is not None:
                props.update(
                    {
                        tls + "truststore.type": "PEM",
                        tls + "truststore.location": str(self.ssl_truststore),
                        tls + "client.auth": "required",
                    }
                )
        return props

    def _scram_format_args(self) -> list[str]:
        return [
            arg
            for name, pw in self.scram_users.items()
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for arg in ("--add-scram", f"{mechanism}=[name={name},password={pw}]")
        ]

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = ["# generated by seedworker.dev.local_kafka; rewritten on every start"]
        lines += [f"{k}={v}" for k, v in self.server_properties().items()]
        # It may hold the PLAIN users' passwords: readable by us only, from its creation on.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        (self.workdir / _LOG4J_FILE).write_text(_LOG4J2_PROPERTIES)

    def _is_formatted(self) -> bool:
        log_dirs = self.server_properties()["log.dirs"].split(",")
        return all((Path(d) / "meta.properties").is_file() for d in log_dirs)

    def _classpath(self) -> str:
        return str(self.libs_dir / "*")

    def _format_storage(self) -> None:
        cluster_id = _random_cluster_id()
        cmd = [
            self.java,
            *self.jvm_opts,
            f"-Dlog4j2.configurationFile={self.workdir / _LOG4J_FILE}",
            "-cp",
            self._classpath(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config_path),
            *self.format_args,
            *self._scram_format_args(),
        ]
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        out = res.stdout.decode("utf-8", "replace")
        shown = _PASSWORD_ARG.sub(r"\1***", " ".join(cmd))
        with open(self.log_path, "a") as f:
            f.write(f"$ {shown}\n{out}\n")
        if res.returncode != 0:
            raise RuntimeError(f"kafka storage format failed (exit {res.returncode}):\n{out[-4000:]}")

    # -- state files

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _read_state(self) -> dict:
        try:
            return json.loads((self.workdir / _STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _clear_state(self) -> None:
        for name in (_PID_FILE, _STATE_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / name).unlink()

    def _is_our_broker(self, pid: int) -> bool:
        if not _pid_alive(pid):
            return False
        cmdline = _pid_cmdline(pid)
        if cmdline is None:  # no /proc: trust the pid file
            return True
        return "kafka.Kafka" in cmdline and str(self.config_path) in cmdline

    # -- lifecycle

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 90) -> LocalKafka:
        """Start the broker (formatting the storage on first use) and wait until it serves clients.

        If a broker started from this ``workdir`` is already running, wait for it to be ready
        and adopt it (its port is taken from the state file).
        """
        if self.is_running():
            state = self._read_state()
            if state.get("port"):
                self.port = int(state["port"])
                self.controller_port = state.get("controller_port", self.controller_port)
                self.sasl_port = state.get("sasl_port", self.sasl_port)
                self.ssl_port = state.get("ssl_port", self.ssl_port)
            self._wait_ready(timeout)
            return self
        if shutil.which(self.java) is None:
            raise RuntimeError(f"cannot start Kafka: Java executable {self.java!r} not found (Kafka 4 needs Java 17+)")
        if not self.jars_present():
            raise RuntimeError(f"Kafka jars missing in {self.libs_dir}: call ensure_jars() first")
        if not _port_is_free(self.port, self.host):
            raise RuntimeError(f"cannot start Kafka: {self.host}:{self.port} is already in use")
        for what, extra_port in (("SASL", self.sasl_port), ("SSL", self.ssl_port)):
            if extra_port is not None and (extra_port == self.port or not _port_is_free(extra_port, self.host)):
                raise RuntimeError(f"cannot start Kafka: {what} port {self.host}:{extra_port} is in use")
        self._clear_state()
        self.controller_port = self._pick_controller_port()
        if not _port_is_free(self.controller_port, self.host):
            raise RuntimeError(f"cannot start Kafka: controller port {self.host}:{self.controller_port} is in use")
        self._write_config()
        if self.log_path.exists():
            os.replace(self.log_path, self.log_path.with_name(_LOG_FILE + ".1"))
        if not self._is_formatted():
            self._format_storage()
        cmd = [
            self.java,
            *self.jvm_opts,
            f"-Dlog4j2.configurationFile={self.workdir / _LOG4J_FILE}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.config_path),
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session + process group: stop() signals the group
                close_fds=True,
                preexec_fn=_parent_death_signal() if self.die_with_parent else None,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        (self.workdir / _STATE_FILE).write_text(
            json.dumps(
                {
                    "pid": self._proc.pid,
                    "port": self.port,
                    "controller_port": self.controller_port,
                    "sasl_port": self.sasl_port,
                    "ssl_port": self.ssl_port,
                    "bootstrap_servers": self.bootstrap_servers,
                    "kafka_version": self.kafka_version(),
                    "started_at": time.time(),
                },
                indent=2,
            )
            + "\n"
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop(timeout=10)
            raise
        return self

    def _wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            pid = self.pid
            if pid is None:
                code = self._proc.poll() if self._proc is not None else None
                raise RuntimeError(
                    f"Kafka broker exited during startup (exit code {code}); last lines of {self.log_path}:\n"
                    + _tail(self.log_path)
                )
            try:
                return probe_kafka(self.host, self.port, timeout=2.0)
            except (OSError, struct.error) as e:
                last_error = e
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Kafka broker not ready on {self.bootstrap_servers} after {timeout}s "
                    f"(last probe error: {last_error!r}); last lines of {self.log_path}:\n" + _tail(self.log_path)
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the broker's process group (controlled shutdown), SIGKILL after ``timeout``."""
        pid = self.pid
        if pid is None:
            if self._proc is not None:
                self._proc.poll()  # reap
                self._proc = None
            self._clear_state()
            return
        try:
            # start() puts the broker in its own process group; signal the whole group, but
            # never our own group (should the pid file point at something else).
            group = os.getpgid(pid) == pid and pid != os.getpgrp()
        except ProcessLookupError:
            group = False

        def signal_broker(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)

        signal_broker(signal.SIGTERM)  # Kafka's controlled shutdown
        if not self._wait_exit(pid, timeout):
            signal_broker(signal.SIGKILL)
            self._wait_exit(pid, 10)
        if group:  # the JVM is gone; make sure nothing else of its group lingers
            signal_broker(signal.SIGKILL)
        self._proc = None
        self._clear_state()

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return not _pid_alive(pid)

    def restart(self, timeout: float = 90) -> LocalKafka:
        self.stop()
        return self.start(timeout=timeout)

    def __enter__(self) -> LocalKafka:
        self.ensure_jars()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalKafka(bootstrap_servers={self.bootstrap_servers!r}, workdir={str(self.workdir)!r})"


_LOG4J2_PROPERTIES = """\
# generated by seedworker.dev.local_kafka: everything to stdout, which goes to kafka.log
status = warn
name = seedworker-local-kafka
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.raft.name = org.apache.kafka.raft
logger.raft.level = WARN
logger.metadata.name = org.apache.kafka.image.loader
logger.metadata.level = WARN
# the full config dumps (thousands of lines per start) are in server.properties anyway
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


# --------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seedworker.dev.local_kafka",
        description="Run a local single-node KRaft Kafka broker from the Maven Central jars (no Docker).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("up", "start a detached broker and wait until it is ready"),
        ("down", "stop the broker of WORKDIR"),
        ("status", "tell whether the broker of WORKDIR is running"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--workdir", type=Path, default=None, help=f"default: <repo>/{DEFAULT_WORKDIR}")
        if name == "up":
            p.add_argument("--port", type=int, default=9092)
            p.add_argument("--controller-port", type=int, default=None)
            p.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve() if args.workdir is not None else REPO_ROOT / DEFAULT_WORKDIR
    kafka = LocalKafka(
        port=getattr(args, "port", 9092),
        controller_port=getattr(args, "controller_port", None),
        workdir=workdir,
    )
    state = kafka._read_state()

    if args.command == "status":
        pid = kafka.pid
        if pid is None:
            print(f"not running (workdir {workdir})")
            return 1
        print(f"running: pid {pid}, bootstrap {state.get('bootstrap_servers', '?')}, workdir {workdir}")
        return 0

    if args.command == "down":
        pid = kafka.pid
        if pid is None:
            print(f"not running (workdir {workdir})")
            kafka.stop()  # clears stale pid files
            return 0
        kafka.stop()
        print(f"stopped pid {pid}")
        return 0

    # up
    if kafka.is_running():
        print(f"already running: pid {kafka.pid}, bootstrap {state.get('bootstrap_servers', '?')}, workdir {workdir}")
        return 0
    try:
        t0 = time.monotonic()
        kafka.ensure_jars()
        t1 = time.monotonic()
        kafka.start(timeout=args.timeout)
        t2 = time.monotonic()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"Kafka {kafka.kafka_version()} ready at {kafka.bootstrap_servers} "
        f"(pid {kafka.pid}, workdir {workdir}, jars {t1 - t0:.1f}s, start {t2 - t1:.1f}s)",
        file=sys.stderr,
    )
    print(kafka.bootstrap_servers)
    kafka._proc = None  # detach: the broker outlives this command
    return 0


if __name__ == "__main__":
    sys.exit(main())
