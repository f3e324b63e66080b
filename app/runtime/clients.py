"""Kafka client factories: every client the worker makes gets the same connection and security
settings. Inject a different ``Clients`` into ``Worker`` to wrap or replace them."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from onceflow.errors import ConfigurationError
from onceflow.settings import Settings

__all__ = ["Clients"]

LOGIN_ERRORS = (
    AuthenticationFailedError,
    IllegalSaslStateError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)


class Clients:
    """Builds aiokafka clients from ``Settings``."""

    def __init__(self, settings: Settings, *, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        # One TLS context for every client: the CA and key files are read once.
        self._security = settings.kafka_security()

    def _common(self) -> dict[str, Any]:
        s = self._settings
        return {
            "bootstrap_servers": s.bootstrap_servers,
            "client_id": self._client_id,
            "request_timeout_ms": s.request_timeout_ms,
            **self._security,
        }

    def consumer(self, **overrides: Any) -> AIOKafkaConsumer:
        """A consumer; the group consumer passes ``group_id`` and its assignor."""
        kwargs: dict[str, Any] = {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "isolation_level": "read_committed",
            "fetch_max_wait_ms": 100,
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
            **self._common(),
        }
        kwargs.update(overrides)
        return AIOKafkaConsumer(**kwargs)

    def producer(self, **overrides: Any) -> AIOKafkaProducer:
        """An idempotent producer (``transactional_id=`` makes it transactional)."""
        s = self._settings
        kwargs: dict[str, Any] = {
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": 5,
            "max_batch_size": 256 * 1024,
            "max_request_size": s.max_request_size,
            "transaction_timeout_ms": s.transaction_timeout_ms,
            **self._common(),
        }
        kwargs.update(overrides)
        return AIOKafkaProducer(**kwargs)

    def admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**self._common())

    async def start(
        self, client: AIOKafkaAdminClient | AIOKafkaConsumer | AIOKafkaProducer
    ) -> None:
        """Start ``client``; a refused login or an untrusted broker certificate becomes a
        ``ConfigurationError`` that says so.

        aiokafka only logs why a bootstrap failed and raises a bare "Unable to bootstrap", so
        after one, a single direct connection recovers the broker's answer for the message.
        """
        try:
            await client.start()
        except KafkaConnectionError:
            cause = await self._bootstrap_failure()
            if cause is None:
                raise
            raise cause from None

    async def _bootstrap_failure(self) -> ConfigurationError | None:
        """Why the first bootstrap broker that answers refuses us (login or TLS), or None."""
        s = self._settings
        for host, port, _ in collect_hosts(s.bootstrap_servers):
            try:
                conn = await create_conn(
                    host,
                    port,
                    client_id=self._client_id,
                    request_timeout_ms=s.request_timeout_ms,
                    **self._security,
                )
            except LOGIN_ERRORS as exc:
                return ConfigurationError(
                    f"Kafka authentication failed for SASL {s.sasl_mechanism} user "
                    f"{s.sasl_username!r} at {s.bootstrap_servers}: {exc} -- check "
                    "ONCEFLOW_SASL_USERNAME, ONCEFLOW_SASL_PASSWORD and ONCEFLOW_SASL_MECHANISM"
                )
            except ssl.SSLError as exc:
                return ConfigurationError(_tls_failure(s, f"{host}:{port}", exc))
            except (OSError, KafkaError, TimeoutError):
                continue
            conn.close()
        return None


def _tls_failure(s: Settings, broker: str, exc: ssl.SSLError) -> str:
    """One line: what the TLS handshake with ``broker`` said, and the likely fix."""
    where = f"broker {broker} (ONCEFLOW_BOOTSTRAP_SERVERS={s.bootstrap_servers})"
    if not isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS handshake failed with {where}: {exc.reason or exc} -- check that the address "
            f"is a TLS listener of the broker (ONCEFLOW_SECURITY_PROTOCOL={s.security_protocol})"
        )
    reason = str(exc.verify_message).rstrip(".")
    if "hostname" in reason.lower() or "ip address" in reason.lower():
        fix = "use a broker address the certificate names (its subjectAltName)"
    else:
        trusted = f"only {s.ssl_cafile}" if s.ssl_cafile else "the system CAs (it is unset)"
        fix = (
            "set ONCEFLOW_SSL_CAFILE to the PEM certificate of the CA that signed the brokers' "
            f"certificates; it trusts {trusted}"
        )
    return f"TLS certificate verify failed for {where}: {reason} -- {fix}"
