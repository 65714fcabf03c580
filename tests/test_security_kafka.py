"""Kafka security: SASL (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN) and TLS (verified broker, client certificate) against
a real broker of this module's own, and passwords that never print.

The shared session broker has neither SASL nor TLS, so this module starts one more LocalKafka (one JVM for the
module) with a SASL_PLAINTEXT listener and a SCRAM user, and an SSL listener requiring client certificates, all from a
throwaway CA (trustme); it is stopped at the end. The TLS context is also checked by handshakes against an
in-process TLS server, where a certificate for the wrong name can be tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from seedworker.broker.base import AuthenticationError, BusError
from seedworker.broker.client import SeedClient
from seedworker.broker.security import client_options, describe, ssl_context
from seedworker.core.config import ConfigError, KafkaSettings, Settings, Topics, load_settings
from seedworker.dev.local_kafka import REPO_ROOT, LocalKafka, free_port
from seedworker.engine.worker import Worker
from seedworker.tools import cli
from tests.kafka_broker import unique_topic

USER = "alice"
# Fresh per run, so finding one in a log or a message can only mean it leaked from here.
PASSWORD = f"pw-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"
KEY_PASSWORD = f"key-{uuid.uuid4().hex}"
SEEDS = [{"seed_id": f"layer3:{k}", "seed_idx": k, "state": "dormant"} for k in range(4)]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (PASSWORD, WRONG, KEY_PASSWORD):
            assert secret not in text, f"a password leaked into: {text[:300]!r}"


def bootstrap_failures(caplog) -> int:
    """aiokafka's record of each failed attempt to bootstrap (one per try of a client's start)."""
    return sum(r.name == "aiokafka" and r.getMessage().startswith("Unable connect to") for r in caplog.records)


def exception_texts(exc: BaseException | None) -> list[str]:
    """str and repr of an exception and of everything it was raised from."""
    out = []
    while exc is not None:
        out += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return out


# -- the broker with SASL and SSL listeners -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """PEM files: a CA, the broker's key and certificate for 127.0.0.1 (its keystore), one for another name, a
    client certificate with its key encrypted, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    client = ca.issue_cert("tamiyo.example", common_name="tamiyo")
    paths = {name: str(d / f"{name}.pem") for name in ("ca", "other_ca", "server", "misnamed", "client", "client_key")}
    ca.cert_pem.write_to_path(paths["ca"])
    other_ca.cert_pem.write_to_path(paths["other_ca"])
    for name, identity in (("server", "127.0.0.1"), ("misnamed", "kafka.example")):
        cert = ca.issue_cert(identity)
        # Kafka's PEM keystore reads PKCS#8 keys only.
        key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        Path(paths[name]).write_bytes(key + b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    client.cert_chain_pems[0].write_to_path(paths["client"])
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    Path(paths["client_key"]).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    return paths


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory, pki) -> Iterator[LocalKafka]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    port, sasl_port, ssl_port = ports
    kafka = LocalKafka(
        port=port,
        sasl_port=sasl_port,
        workdir=tmp_path_factory.mktemp("sasl-kafka"),
        libs_dir=REPO_ROOT / ".cache" / "kafka" / "libs",
        scram_users={USER: PASSWORD},
        ssl_port=ssl_port,
        ssl_keystore=pki["server"],
        ssl_truststore=pki["ca"],
        die_with_parent=True,
    )
    kafka.ensure_jars()
    try:
        kafka.start(timeout=120)
        yield kafka
    finally:
        kafka.stop()


def sasl_settings(
    kafka: LocalKafka,
    tmp_path: Path,
    *,
    mechanism: str = "SCRAM-SHA-256",
    user: str = USER,
    password: str = PASSWORD,
    bootstrap: str | None = None,
    **overrides,
) -> Settings:
    topics = {name: unique_topic(f"sec-{name}") for name in Topics.model_fields}
    return Settings(
        db=str(tmp_path / "state.sqlite"),
        kafka={
            "bootstrap_servers": bootstrap or kafka.sasl_bootstrap_servers,
            "topics": topics,
            "group_id": unique_topic("sec-group"),
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_username": user,
            "sasl_password": password,
            "partitions": 2,
            "output_partitions": 2,
            **overrides,
        },
    )


def with_mechanism(kafka: KafkaSettings, mechanism: str) -> KafkaSettings:
    return KafkaSettings.model_validate({**kafka.model_dump(), "sasl_mechanism": mechanism})


@contextlib.asynccontextmanager
async def running(worker: Worker):
    task = asyncio.create_task(worker.run(), name="worker")
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()  # raises why the worker could not start
    assert worker.ready.is_set(), "the worker did not start within 90 s"
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def eventually(cond, what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


# -- SASL against the real broker ----------------------------------------------------------------------------------
@pytest.mark.kafka
async def test_authenticated_worker_and_clients_round_trip_through_the_sasl_listener(
    secure_kafka, tmp_path, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    settings = sasl_settings(secure_kafka, tmp_path, mechanism="SCRAM-SHA-256")
    async with running(Worker(settings)) as worker:
        # Tamiyo logs in with each mechanism the listener offers; every request is answered by the worker.
        for mechanism in ("SCRAM-SHA-512", "PLAIN", "SCRAM-SHA-256"):
            async with SeedClient.from_settings(
                with_mechanism(settings.kafka, mechanism), timeout_s=60, client_id=f"tamiyo-{mechanism}"
            ) as client:
                selected = await client.request_seed(
                    blueprint_id="bp-secure", seeds=SEEDS, timeout=60, request_id=f"req-{mechanism}"
                )
                assert selected.request_id == f"req-{mechanism}"
                assert selected.seed_id in {s["seed_id"] for s in SEEDS}
                await client.report_outcome(selected, accuracy_delta=0.01)
        await eventually(lambda: worker.counters["outcomes_learned"] == 3, "the three outcomes to be learned")
        assert worker.counters["decisions"] == 3
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"):
        assert f"Authenticated as {USER} via {mechanism}" in caplog.text  # aiokafka's own record of the login

    # inspect with the worker's own settings file, credentials included: they are read, never printed.
    config = tmp_path / "seedworker.toml"
    config.write_text(
        f'[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "SCRAM-SHA-256"\n'
        f'sasl_username = "{USER}"\nsasl_password = "{PASSWORD}"\n'
    )
    capsys.readouterr()
    assert cli.main(["inspect", "--db", settings.db, "--config", str(config)]) == 0
    as_text = capsys.readouterr()
    assert cli.main(["inspect", "--db", settings.db, "--config", str(config), "--json"]) == 0
    as_json = capsys.readouterr()
    assert "bp-secure" in as_text.out
    assert json.loads(as_json.out)["blueprints"]["bp-secure"]["decisions"] == 3
    assert_no_secret(
        caplog.text,
        as_text.out,
        as_text.err,
        as_json.out,
        as_json.err,
        repr(settings),
        str(settings),
        repr(worker),
        settings.model_dump_json(),
    )


CASES = {
    "wrong password, SCRAM-SHA-256": ("SCRAM-SHA-256", USER, WRONG, "sasl", "SaslAuthenticationFailed"),
    "unknown user, SCRAM-SHA-512": ("SCRAM-SHA-512", "mallory", PASSWORD, "sasl", "SaslAuthenticationFailed"),
    "wrong password, PLAIN": ("PLAIN", USER, WRONG, "sasl", "SaslAuthenticationFailed"),
    "SASL to the PLAINTEXT listener": ("SCRAM-SHA-256", USER, PASSWORD, "plain", "IllegalSaslStateError"),
}


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism,user,password,listener,error", CASES.values(), ids=CASES.keys())
async def test_refused_login_fails_at_once_with_a_clear_message(
    secure_kafka, tmp_path, caplog, mechanism, user, password, listener, error
):
    caplog.set_level(logging.DEBUG)
    address = secure_kafka.sasl_bootstrap_servers if listener == "sasl" else secure_kafka.bootstrap_servers
    # A long connect timeout: the refusal must end the start by itself, not the timeout.
    settings = sasl_settings(
        secure_kafka,
        tmp_path,
        mechanism=mechanism,
        user=user,
        password=password,
        bootstrap=address,
        connect_timeout_s=240,
    )
    worker = Worker(settings)
    with pytest.raises(AuthenticationError) as refused:
        await asyncio.wait_for(worker.run(), 120)
    with pytest.raises(AuthenticationError) as client_refused:
        async with SeedClient.from_settings(settings.kafka, timeout_s=240):
            pass

    for exc in (refused.value, client_refused.value):
        assert isinstance(exc, BusError) and isinstance(exc, ConnectionError)
        message = str(exc)
        for part in (mechanism, f"user {user!r}", address, error, "not retried"):
            assert part in message, f"{part!r} missing from: {message}"
    assert "the admin client" in str(refused.value)  # the first of the worker's clients to connect
    if error == "SaslAuthenticationFailed":
        assert "check kafka.sasl_username and kafka.sasl_password" in str(refused.value)
    # Failed on the broker's first answer: one attempt by the worker, one by the client, no retries.
    assert bootstrap_failures(caplog) == 2
    assert_no_secret(caplog.text, *exception_texts(refused.value), *exception_texts(client_refused.value))


@pytest.mark.kafka
def test_seedworker_run_reports_a_refused_login_without_the_password(
    secure_kafka, tmp_path, monkeypatch, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    for key, value in {
        "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "SASL_USERNAME": USER,
        "SASL_PASSWORD": WRONG,
        "CONNECT_TIMEOUT_S": "240",
    }.items():
        monkeypatch.setenv(f"SEEDWORKER_KAFKA__{key}", value)
    code = cli.main(
        [
            "run",
            "--bootstrap-servers",
            secure_kafka.sasl_bootstrap_servers,
            "--db",
            str(tmp_path / "run.sqlite"),
            "--group-id",
            unique_topic("sec-cli"),
        ]
    )
    out = capsys.readouterr()
    assert code == 1
    assert "refused" in out.err and "SCRAM-SHA-512" in out.err and secure_kafka.sasl_bootstrap_servers in out.err
    assert_no_secret(out.out, out.err, caplog.text)


# -- settings: validation, secrets ---------------------------------------------------------------------------------
def test_security_settings_are_checked_as_a_whole():
    def problem(**kafka) -> str:
        with pytest.raises(ConfigError) as info:
            load_settings(environ={}, overrides={f"kafka.{k}": v for k, v in kafka.items()})
        return str(info.value)

    assert "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'" in problem(security_protocol="SASL")
    assert "'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'" in problem(
        security_protocol="SASL_SSL", sasl_mechanism="GSSAPI", sasl_username=USER, sasl_password=PASSWORD
    )
    assert "security_protocol SASL_PLAINTEXT needs sasl_mechanism, sasl_password" in problem(
        security_protocol="SASL_PLAINTEXT", sasl_username=USER
    )
    assert "sasl_username, sasl_password: only used with security_protocol SASL_PLAINTEXT or SASL_SSL" in problem(
        sasl_username=USER, sasl_password=PASSWORD
    )
    assert "ssl_cafile: only used with security_protocol SSL or SASL_SSL, not SASL_PLAINTEXT" in problem(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username=USER,
        sasl_password=PASSWORD,
        ssl_cafile="/ca.pem",
    )
    assert "only used with ssl_certfile" in problem(security_protocol="SSL", ssl_keyfile="/key.pem")
    lower = load_settings(
        environ={},
        overrides={
            "kafka.security_protocol": "sasl_ssl",
            "kafka.sasl_mechanism": "scram-sha-512",
            "kafka.sasl_username": USER,
            "kafka.sasl_password": PASSWORD,
        },
    )
    assert (lower.kafka.security_protocol, lower.kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")


def test_passwords_never_print():
    environ = {
        "SEEDWORKER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "SEEDWORKER_KAFKA__SASL_MECHANISM": "PLAIN",
        "SEEDWORKER_KAFKA__SASL_USERNAME": USER,
        "SEEDWORKER_KAFKA__SASL_PASSWORD": PASSWORD,
        "SEEDWORKER_KAFKA__SSL_CERTFILE": "/client.pem",
        "SEEDWORKER_KAFKA__SSL_KEYFILE_PASSWORD": KEY_PASSWORD,
    }
    settings = load_settings(environ=environ)
    assert settings.kafka.sasl_password.get_secret_value() == PASSWORD
    assert settings.kafka.ssl_keyfile_password.get_secret_value() == KEY_PASSWORD
    assert "**********" in repr(settings.kafka)
    assert_no_secret(
        repr(settings),
        str(settings),
        repr(settings.kafka),
        str(settings.model_dump()),
        settings.model_dump_json(),
        json.dumps(settings.model_dump(mode="json")),
    )
    # Errors about other settings, and about the security settings themselves, do not echo the input.
    with pytest.raises(ConfigError) as bad_other:
        load_settings(environ={**environ, "SEEDWORKER_MIN_SAMPLES": "-1"})
    with pytest.raises(ConfigError) as bad_combination:
        load_settings(environ={**environ, "SEEDWORKER_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT"})
    with pytest.raises(ValidationError) as direct:
        Settings(default_strategy="nope", kafka={"security_protocol": "PLAINTEXT", "sasl_password": PASSWORD})
    assert "min_samples" in str(bad_other.value) and "sasl_mechanism" in str(bad_combination.value)
    assert_no_secret(
        *exception_texts(bad_other.value), *exception_texts(bad_combination.value), *exception_texts(direct.value)
    )


def test_client_options_carry_the_security_settings_to_aiokafka():
    assert client_options(KafkaSettings()) == {"security_protocol": "PLAINTEXT"}
    sasl = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", sasl_username=USER, sasl_password=PASSWORD
    )
    assert client_options(sasl) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": USER,
        "sasl_plain_password": PASSWORD,
    }
    assert describe("k1:9093,k2:9093", client_options(sasl)) == (
        "SASL_PLAINTEXT, SCRAM-SHA-512 as user 'alice', at k1:9093,k2:9093"
    )
    over_tls = client_options(sasl.model_copy(update={"security_protocol": "SASL_SSL"}))
    context = over_tls["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert over_tls["sasl_plain_password"] == PASSWORD


# -- TLS ----------------------------------------------------------------------------------------------------------
@pytest.mark.kafka
async def test_worker_and_client_over_mutual_tls(secure_kafka, pki, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    topics = {name: unique_topic(f"tls-{name}") for name in Topics.model_fields}
    kafka = {
        **tls_settings(pki).model_dump(),
        "bootstrap_servers": secure_kafka.ssl_bootstrap_servers,
        "topics": topics,
        "group_id": unique_topic("tls-group"),
        "partitions": 1,
        "output_partitions": 1,
    }
    settings = Settings(db=str(tmp_path / "tls.sqlite"), kafka=kafka)
    async with running(Worker(settings)) as worker:
        async with SeedClient.from_settings(settings.kafka, client_id="tamiyo-tls", timeout_s=60) as client:
            selected = await client.request_seed(blueprint_id="bp-tls", seeds=SEEDS, request_id="req-tls", timeout=60)
        assert selected.request_id == "req-tls" and worker.counters["decisions"] == 1

    # The broker requires the client certificate (so the run above presented one). TLS 1.3 reports the refusal as a
    # closed connection, which cannot be told from a broker going away: this one ends with the connect timeout.
    anonymous = KafkaSettings.model_validate(
        {
            **settings.kafka.model_dump(),
            "ssl_certfile": None,
            "ssl_keyfile": None,
            "ssl_keyfile_password": None,
            "connect_timeout_s": 2,
        }
    )
    with pytest.raises(BusError) as dropped:
        await asyncio.wait_for(Worker(settings.model_copy(update={"kafka": anonymous})).run(), 120)
    assert not isinstance(dropped.value, AuthenticationError)

    # A broker whose certificate our CA did not sign is refused at once, by the worker and by the client.
    untrusted = KafkaSettings.model_validate(
        {**settings.kafka.model_dump(), "ssl_cafile": pki["other_ca"], "connect_timeout_s": 240}
    )
    caplog.clear()
    with pytest.raises(AuthenticationError) as refused:
        await asyncio.wait_for(Worker(settings.model_copy(update={"kafka": untrusted})).run(), 120)
    with pytest.raises(AuthenticationError) as client_refused:
        async with SeedClient.from_settings(untrusted, timeout_s=240):
            pass
    for exc in (refused.value, client_refused.value):
        assert "SSLCertVerificationError" in str(exc) and secure_kafka.ssl_bootstrap_servers in str(exc)
        assert "check kafka.ssl_cafile" in str(exc)
    assert bootstrap_failures(caplog) == 2  # one attempt each, no retries
    assert_no_secret(caplog.text, *exception_texts(refused.value), *exception_texts(client_refused.value))


@contextlib.asynccontextmanager
async def tls_server(pki: dict[str, str], cert: str):
    """A TLS server on 127.0.0.1 that requires a client certificate from the CA; yields (port, peers seen)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(pki[cert])
    peers: list[dict] = []

    async def handle(reader, writer):
        peers.append(writer.get_extra_info("peercert"))
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], peers
    finally:
        server.close()
        await server.wait_closed()


async def handshake(context: ssl.SSLContext, port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    try:
        return await reader.read(5)
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


def tls_settings(pki: dict[str, str], **overrides) -> KafkaSettings:
    return KafkaSettings(
        **{
            "security_protocol": "SSL",
            "ssl_cafile": pki["ca"],
            "ssl_certfile": pki["client"],
            "ssl_keyfile": pki["client_key"],
            "ssl_keyfile_password": KEY_PASSWORD,
            **overrides,
        }
    )


async def test_tls_context_verifies_the_broker_and_presents_the_client_certificate(pki):
    async with tls_server(pki, "server") as (port, peers):
        assert await handshake(client_options(tls_settings(pki))["ssl_context"], port) == b"hello"
        subject = dict(item for rdn in peers[0]["subject"] for item in rdn)
        assert subject["commonName"] == "tamiyo"  # mutual TLS: the server saw our certificate

        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await handshake(client_options(tls_settings(pki, ssl_cafile=pki["other_ca"]))["ssl_context"], port)

    async with tls_server(pki, "misnamed") as (port, _):
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            await handshake(client_options(tls_settings(pki))["ssl_context"], port)
        relaxed = client_options(tls_settings(pki, ssl_check_hostname=False))["ssl_context"]
        assert relaxed.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified, only the name is not
        assert await handshake(relaxed, port) == b"hello"


def test_unusable_tls_files_are_config_errors_naming_the_setting(pki, tmp_path):
    with pytest.raises(ConfigError, match="kafka.ssl_cafile: .*missing.pem is not a readable file"):
        client_options(tls_settings(pki, ssl_cafile=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match="kafka.ssl_certfile/ssl_keyfile: cannot load") as wrong_key_password:
        client_options(tls_settings(pki, ssl_keyfile_password=WRONG))
    not_a_ca = tmp_path / "not-a-ca.pem"
    not_a_ca.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="kafka.ssl_cafile: .* holds no usable CA certificate"):
        ssl_context(cafile=str(not_a_ca))
    assert_no_secret(*exception_texts(wrong_key_password.value))
