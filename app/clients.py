"""Kafka client factories: every client the worker makes gets the same connection and security
settings. Inject a different ``Clients`` into ``Worker`` to wrap or replace them."""

from __future__ import annotations

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

from app.errors import ConfigurationError
from app.settings import Settings

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

    def _common(self) -> dict[str, Any]:
        s = self._settings
        return {
            "bootstrap_servers": s.bootstrap_servers,
            "client_id": self._client_id,
            "request_timeout_ms": s.request_timeout_ms,
            **s.kafka_security(),
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
        """Start ``client``; a refused login becomes a ``ConfigurationError`` that says so.

        aiokafka only logs why a bootstrap failed and raises a bare "Unable to bootstrap", so
        after one, a single direct connection recovers the broker's answer for the message.
        """
        try:
            await client.start()
        except KafkaConnectionError:
            refusal = await self._login_refusal()
            if refusal is None:
                raise
            s = self._settings
            raise ConfigurationError(
                f"Kafka authentication failed for SASL {s.sasl_mechanism} user "
                f"{s.sasl_username!r} at {s.bootstrap_servers}: {refusal} -- check "
                "ONCEFLOW_SASL_USERNAME, ONCEFLOW_SASL_PASSWORD and ONCEFLOW_SASL_MECHANISM"
            ) from None

    async def _login_refusal(self) -> str | None:
        """The first bootstrap broker's refusal of our credentials, or None if none refused."""
        s = self._settings
        for host, port, _ in collect_hosts(s.bootstrap_servers):
            try:
                conn = await create_conn(
                    host, port, client_id=self._client_id, **s.kafka_security()
                )
            except LOGIN_ERRORS as exc:
                return str(exc)
            except (OSError, KafkaError, TimeoutError):
                continue
            conn.close()
        return None
