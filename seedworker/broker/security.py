"""Kafka security settings (SASL PLAIN/SCRAM, TLS) turned into aiokafka's keyword arguments, in one place.

The worker's bus, its admin client and Tamiyo's client all connect with :func:`client_options`. The SASL password
and the key password leave their ``SecretStr`` only here, into the dictionary handed to aiokafka, and never into a
message: :func:`describe` names the protocol, mechanism, user and broker, nothing else.

aiokafka logs every request it sends at DEBUG, SASL logins included, whose bytes hold a PLAIN password in clear:
importing this module puts a filter on the ``aiokafka.conn`` logger that blanks those bytes.

aiokafka reports a refused login the same way as a broker that is down ("Unable to bootstrap"), which would make a
worker retry a wrong password until its connect timeout. :func:`refusal` tells the two apart by connecting once
itself, so callers can fail at once when the credentials or the TLS handshake are refused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seedworker.core.config import ConfigError, KafkaSettings


class _SaslBytesFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(map(_blank_sasl, record.args))
        return True


def _blank_sasl(arg: Any) -> Any:
    name = type(arg).__name__
    return f"{name}(<redacted>)" if name.startswith("SaslAuthenticate") else arg


_aiokafka_conn_log = logging.getLogger("aiokafka.conn")
if not any(isinstance(f, _SaslBytesFilter) for f in _aiokafka_conn_log.filters):
    _aiokafka_conn_log.addFilter(_SaslBytesFilter())


def ssl_context(
    *,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    password: str | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A TLS client context: the broker's certificate is always verified (against ``cafile``, else the system's
    CAs); ``check_hostname`` also matches it to the broker's address; ``certfile``/``keyfile`` for mutual TLS."""
    for key, path in (("ssl_cafile", cafile), ("ssl_certfile", certfile), ("ssl_keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"kafka.{key}: {path} is not a readable file")
    try:
        context = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise ConfigError(f"kafka.ssl_cafile: {cafile} holds no usable CA certificate ({exc})") from None
    context.check_hostname = check_hostname
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile, password)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"kafka.ssl_certfile/ssl_keyfile: cannot load the client certificate {certfile} "
                f"(wrong key or key password?): {exc}"
            ) from None
    return context


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """The security keyword arguments shared by aiokafka's producer, consumer and admin client."""
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol.startswith("SASL_"):
        assert kafka.sasl_password is not None  # KafkaSettings validates SASL settings as a whole
        options.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password.get_secret_value(),
        )
    if kafka.security_protocol.endswith("SSL"):
        key_password = kafka.ssl_keyfile_password
        options["ssl_context"] = ssl_context(
            cafile=kafka.ssl_cafile,
            certfile=kafka.ssl_certfile,
            keyfile=kafka.ssl_keyfile,
            password=key_password.get_secret_value() if key_password is not None else None,
            check_hostname=kafka.ssl_check_hostname,
        )
    return options


def describe(bootstrap_servers: str, options: Mapping[str, Any]) -> str:
    """How we connect, for messages: ``"SASL_PLAINTEXT, SCRAM-SHA-256 as user 'alice', at 127.0.0.1:9093"``."""
    parts = [str(options.get("security_protocol", "PLAINTEXT"))]
    if options.get("sasl_mechanism"):
        parts.append(f"{options['sasl_mechanism']} as user {options.get('sasl_plain_username')!r}")
    return f"{', '.join(parts)}, at {bootstrap_servers}"


def _refusals() -> dict[type[BaseException], str]:
    from aiokafka import errors

    # What a broker answers to credentials it does not accept, or to a client that does not speak its listener's
    # protocol, and a TLS handshake that fails on a certificate: none of them heals by trying again.
    credentials = "check kafka.sasl_username and kafka.sasl_password"
    mechanism = "the broker does not offer it: check kafka.sasl_mechanism"
    return {
        errors.SaslAuthenticationFailed: credentials,
        errors.AuthenticationFailedError: credentials,
        errors.UnsupportedSaslMechanismError: mechanism,
        errors.AuthenticationMethodNotSupported: mechanism,
        errors.IllegalSaslStateError: "the listener does not speak SASL: check kafka.security_protocol, the port",
        ssl.SSLError: "check kafka.ssl_cafile and ssl_check_hostname, and that the listener speaks TLS",
    }


def refusal_reason(exc: BaseException) -> str | None:
    """The broker's reason and a hint if ``exc`` is a refusal (credentials, mechanism, TLS), else None."""
    from aiokafka.errors import BrokerResponseError

    for kind, hint in _refusals().items():
        if isinstance(exc, kind):
            detail = str(exc) if isinstance(exc, BrokerResponseError) else f"{type(exc).__name__}: {exc}"
            return f"{detail} ({hint})"
    return None


async def refusal(bootstrap_servers: str, options: Mapping[str, Any], timeout_s: float = 10.0) -> str | None:
    """Connect once to each bootstrap address as aiokafka would; the broker's reason if it refuses us, else None
    (reachable and accepted, or not reachable at all: a broker that is still starting may yet answer)."""
    if options.get("security_protocol", "PLAINTEXT") == "PLAINTEXT":
        return None
    from aiokafka.conn import create_conn

    security = {
        k: options[k]
        for k in ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
        if options.get(k) is not None
    }
    for address in bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        if not port.isdigit():
            continue
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host.strip("[]") or "127.0.0.1", int(port), request_timeout_ms=int(timeout_s * 1000), **security
                ),
                timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - unreachable or timed out is not a refusal: try the next address
            if (reason := refusal_reason(exc)) is not None:
                return reason
            continue
        conn.close()
    return None
