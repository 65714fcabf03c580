"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests agree with the worker.

There is no Docker or cluster here, so nothing is built or run: the files are parsed and checked against
seedworker's own settings (every SEEDWORKER_* name is a real setting, topics and partition counts, the metrics port,
the probe paths and the server's routes, the state directory, the user).
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import pytest
import yaml
from pydantic import BaseModel

from seedworker.core.config import ENV_ALIASES, ENV_PREFIX, ConfigError, Settings, load_settings
from seedworker.engine.worker import Worker
from seedworker.ops.http_server import LIVENESS_PATH, METRICS_PATH, READINESS_PATH, ROUTES
from seedworker.tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SHUTDOWN_S = inspect.signature(Worker.__init__).parameters["shutdown_timeout_s"].default


# -- readers -------------------------------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def docker_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile():
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
                docs[doc["kind"]] = doc
    return docs


def env_list(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def setting_for(name: str) -> tuple[str, ...]:
    """The settings path a SEEDWORKER_* name sets; fails unless every step is a declared field."""
    assert name.startswith(ENV_PREFIX), name
    key = name[len(ENV_PREFIX) :].lower()
    path = ENV_ALIASES.get(key) or tuple(key.split("__"))
    model = Settings
    for step in path:
        assert isinstance(model, type) and issubclass(model, BaseModel), f"{name}: {step!r} is below a plain value"
        assert step in model.model_fields, f"{name}: no setting {'.'.join(path)}"
        model = model.model_fields[step].annotation
    return path


def check_env_names(env: dict[str, str | None]) -> Settings:
    names = [n for n in env if n.startswith(ENV_PREFIX)]
    assert names
    for name in names:
        setting_for(name)
    # And the values are valid (load_settings refuses unknown names and bad values alike).
    return load_settings(environ={k: v for k, v in env.items() if v is not None})


def mount_dir(settings: Settings) -> str:
    return str(PurePosixPath(settings.db).parent)


def pom_kafka_version() -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(DEPLOY / "pom.xml").getroot()
    node = root.find("m:properties/m:kafka.version", ns)
    if node is None:
        node = root.find("properties/kafka.version")
    return node.text.strip()


# -- the checks can fail -------------------------------------------------------------------------------------------
def test_a_misspelled_environment_name_is_caught():
    with pytest.raises(AssertionError, match="no setting"):
        setting_for("SEEDWORKER_METRICS__PROT")
    with pytest.raises(AssertionError, match="below a plain value"):
        setting_for("SEEDWORKER_DB__PATH")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(environ={"SEEDWORKER_METRICS__PROT": "9464"})


# -- Dockerfile ----------------------------------------------------------------------------------------------------
def test_dockerfile_runs_the_worker_as_a_non_root_user():
    steps = dockerfile()
    words = [w for w, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    users = [rest for w, rest in steps if w == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0 and group.isdigit() and int(group) != 0, users[-1]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "RUN after USER runs as the user"
    created = next(rest for w, rest in steps if w == "RUN" and "useradd" in rest)
    assert f"--uid {user}" in created and f"--gid {group}" in created
    entry = json.loads(next(rest for w, rest in steps if w == "ENTRYPOINT"))
    assert entry == ["seedworker", "run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["seedworker"] == "seedworker.tools.cli:main"
    build_parser().parse_args(entry[1:])  # "run" is a subcommand


def test_dockerfile_settings_port_and_volume_agree_with_the_worker():
    steps = dockerfile()
    settings = check_env_names(docker_env())
    assert settings.metrics.port > 0 and settings.metrics.host == "0.0.0.0"  # reachable from outside the container
    assert settings.log_format == "json"
    exposed = [int(p.split("/")[0]) for w, rest in steps if w == "EXPOSE" for p in rest.split()]
    assert exposed == [settings.metrics.port]
    volumes = [v for w, rest in steps if w == "VOLUME" for v in json.loads(rest)]
    assert volumes == [mount_dir(settings)]
    state_dir = next(rest for w, rest in steps if w == "RUN" and "install -d" in rest)
    assert state_dir.split()[-1] == mount_dir(settings) and "-o 10001" in state_dir
    health = next(rest for w, rest in steps if w == "HEALTHCHECK")
    assert LIVENESS_PATH in health and "SEEDWORKER_METRICS__PORT" in health
    for w, rest in steps:
        if w == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert f"!{src.rstrip('/')}" in (DEPLOY / "Dockerfile.dockerignore").read_text().replace("/\n", "\n")


# -- docker-compose.yml --------------------------------------------------------------------------------------------
def test_compose_topics_partitions_and_env_agree_with_the_worker():
    c = compose()
    kafka, init, worker = c["services"]["kafka"], c["services"]["topic-init"], c["services"]["worker"]
    settings = check_env_names(worker["environment"])
    k = settings.kafka
    script = "\n".join(init["command"])
    created = {m.group(1): int(m.group(2)) for m in re.finditer(r"--topic (\S+) --partitions (\d+)", script)}
    t = k.topics
    assert set(created) == {t.requests, t.outcomes, t.selections, t.dead_letters, t.control}
    assert created[t.requests] == created[t.outcomes] == k.partitions  # co-partitioning, which the worker checks
    assert created[t.selections] == created[t.dead_letters] == k.output_partitions
    assert created[t.control] == 1
    assert all(
        f"--bootstrap-server {k.bootstrap_servers} " in line for line in script.splitlines() if "--topic" in line
    )
    env = kafka["environment"]
    assert f"PLAINTEXT://{k.bootstrap_servers}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]  # KRaft
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    version = pom_kafka_version()
    assert kafka["image"] == init["image"] == f"apache/kafka:{version}"


def test_compose_worker_port_volume_and_health_agree_with_the_worker():
    c = compose()
    worker = c["services"]["worker"]
    settings = check_env_names(worker["environment"])
    host_ip, host_port, container_port = worker["ports"][0].split(":")
    assert host_ip == "127.0.0.1" and int(container_port) == settings.metrics.port
    assert settings.metrics.host == "0.0.0.0"
    volume, target = worker["volumes"][0].split(":")
    assert target == mount_dir(settings) and volume in c["volumes"]
    probe = " ".join(worker["healthcheck"]["test"])
    assert f":{settings.metrics.port}{READINESS_PATH}" in probe
    assert worker["depends_on"] == {"topic-init": {"condition": "service_completed_successfully"}}
    assert c["services"]["topic-init"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert (ROOT / worker["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert (DEPLOY / worker["build"]["context"]).resolve() == ROOT
    assert _seconds(worker["stop_grace_period"]) > SHUTDOWN_S


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)s", str(text))
    assert m, text
    return float(m.group(1))


# -- Kubernetes ----------------------------------------------------------------------------------------------------
@pytest.fixture
def manifests():
    return k8s()


@pytest.fixture
def container(manifests):
    (c,) = manifests["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture
def k8s_settings(manifests, container, tmp_path) -> Settings:
    """The settings the pod runs with: its ConfigMap's file, then its environment."""
    spec = manifests["StatefulSet"]["spec"]["template"]["spec"]
    args = build_parser().parse_args(["run", *container["args"]])
    config_path = PurePosixPath(args.config)
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config_path.parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    cm = manifests["ConfigMap"]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    text = cm["data"][config_path.name]
    local = tmp_path / config_path.name
    local.write_text(text)
    check_env_names(env_list(container))
    # The pod's environment is the image's ENV, then the container's env.
    environ = {**docker_env(), **{k: v for k, v in env_list(container).items() if v is not None}}
    effective = load_settings(local, environ=environ)
    # A value in the ConfigMap that the environment replaces by another would mislead whoever edits the file.
    tree, from_file = tomllib.loads(text), load_settings(local, environ={})
    for name in environ:
        if name.startswith(ENV_PREFIX):
            path = setting_for(name)
            node = tree
            for step in path[:-1]:
                node = node.get(step, {})
            if path[-1] in node:
                assert _get(from_file, path) == _get(effective, path), f"{'.'.join(path)}: {name} overrides the file"
    return effective


def _get(settings: Settings, path: tuple[str, ...]):
    value = settings
    for step in path:
        value = getattr(value, step)
    return value


def test_k8s_probes_port_and_annotations_agree_with_the_server(manifests, container, k8s_settings):
    port = k8s_settings.metrics.port
    assert port > 0 and k8s_settings.metrics.host == "0.0.0.0"
    (cport,) = container["ports"]
    assert cport["containerPort"] == port and cport["name"] == "metrics"
    for probe, path in (("livenessProbe", LIVENESS_PATH), ("readinessProbe", READINESS_PATH)):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in ROUTES
        assert get["port"] in (cport["name"], port)
    template = manifests["StatefulSet"]["spec"]["template"]
    for notes in (template["metadata"]["annotations"], manifests["Service"]["metadata"]["annotations"]):
        assert notes["prometheus.io/scrape"] == "true"
        assert notes["prometheus.io/port"] == str(port)
        assert notes["prometheus.io/path"] == METRICS_PATH and METRICS_PATH in ROUTES
    assert k8s_settings.log_format == "json"


def test_k8s_state_volume_topics_and_user(manifests, container, k8s_settings):
    sts = manifests["StatefulSet"]["spec"]
    (claim,) = sts["volumeClaimTemplates"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert mount["mountPath"] == mount_dir(k8s_settings)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    t, k = k8s_settings.kafka.topics, k8s_settings.kafka
    # Replicas share the group's partitions (each with its own volume); more than the partitions would idle.
    assert 1 <= sts["replicas"] <= k.partitions
    assert (t.requests, t.outcomes, t.selections, t.dead_letters, t.control) == (
        "graft.requested",
        "adaptation.outcome",
        "seed.selected",
        "seedworker.dlq",
        "seedworker.control",
    )
    assert k.partitions == k.output_partitions == 3
    pod = sts["template"]["spec"]
    users = [rest for w, rest in dockerfile() if w == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid) and pod["securityContext"]["fsGroup"] == int(gid)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_S


def test_k8s_service_selects_the_pods_and_targets_the_metrics_port(manifests, container):
    sts, svc = manifests["StatefulSet"], manifests["Service"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (sport,) = svc["spec"]["ports"]
    assert sport["targetPort"] in {p["name"] for p in container["ports"]}
    assert sport["port"] == container["ports"][0]["containerPort"]
