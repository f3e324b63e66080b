"""Kafka client factories: every client the worker makes gets the same connection and security
settings. Inject a different ``Clients`` into ``Worker`` to wrap or replace them."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from app.settings import Settings

__all__ = ["Clients"]


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
