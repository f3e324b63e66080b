"""Runtime settings, read once from ``ONCEFLOW_*`` environment variables at start.

Components receive typed values from a ``Settings`` instance and never read ``os.environ``
themselves. A bad value fails at start with a message that names the variable and what it
accepts (see ``load_settings``).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from onceflow.errors import ConfigurationError

__all__ = ["ProcessingGuarantee", "Settings", "load_settings"]

ProcessingGuarantee = Literal["exactly_once", "at_least_once"]


class Settings(BaseSettings):
    """Every ``ONCEFLOW_`` setting, with defaults that work against a local broker."""

    model_config = SettingsConfigDict(env_prefix="ONCEFLOW_", extra="ignore", frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str | None = None
    processing_guarantee: ProcessingGuarantee = "exactly_once"
    commit_interval_ms: int | None = Field(default=None, ge=1)
    commit_every: int = Field(default=10_000, ge=1)
    state_dir: Path = Path("/tmp/onceflow-state")
    # One read cache of committed values for every store partition of the worker process,
    # an LRU over all of them: the hot store partitions hold most of it.
    state_cache_mib: float = Field(default=32.0, ge=0)
    # Replaced by state_cache_mib (per worker, not per store partition): refused, naming both.
    state_read_cache_mib: str | None = None
    # SQLite's page cache per store partition (a worker holds tables x partitions of them).
    state_page_cache_mib: int = Field(default=4, ge=1)
    # Child processes that run SQLite for the worker's stores (None: one per core, at most 4;
    # 0: SQLite in the worker process).
    state_io_processes: int | None = Field(default=None, ge=0, le=64)
    # Stores of tasks this worker no longer owns are deleted once unused this long.
    state_cleanup_delay_ms: int = Field(default=600_000, ge=0)
    # How often the records every reader committed are deleted from repartition topics.
    repartition_purge_interval_ms: int = Field(default=30_000, ge=100)
    # How long a task with several partitions waits for one with nothing fetched before it goes
    # on in timestamp order without it (Kafka Streams' max.task.idle.ms); 0: never waits.
    max_task_idle_ms: int = Field(default=0, ge=0)
    # High availability (docs/architecture.md, *High availability*): standby copies of each
    # task's stores on other instances, and Kafka Streams' KIP-441 lag-aware assignment.
    num_standby_replicas: int = Field(default=0, ge=0)
    acceptable_recovery_lag: int = Field(default=10_000, ge=0)
    max_warmup_replicas: int = Field(default=2, ge=1)
    probing_rebalance_interval_ms: int = Field(default=600_000, ge=1000)
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_enabled: bool = True
    http_token: SecretStr | None = None
    advertised_url: str | None = None
    replication_factor: int = Field(default=-1, ge=-1)
    group_instance_id: str | None = None
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    transaction_timeout_ms: int = Field(default=60_000, ge=1000)
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    # The largest produce request, hence the largest record a handler may send or a table may
    # changelog (aiokafka's and Kafka's default; keep it <= the topics' max.message.bytes).
    max_request_size: int = Field(default=1_048_576, ge=1024)
    shutdown_grace_ms: int = Field(default=30_000, ge=0)
    max_poll_records: int = Field(default=2_000, ge=1)
    stuck_after_ms: int = Field(default=120_000, ge=1000)
    error_policy: Literal["dlq", "fail"] = "dlq"
    max_retries: int = Field(default=3, ge=0)
    retry_backoff_ms: int = Field(default=100, ge=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    # SQL sinks (docs/architecture.md, *Exactly-once into a database*): the DSN of sinks
    # declared without database=, named DSNs (a JSON object) for database="name", and what
    # every sink's engine and batches use.
    sql_sink_dsn: SecretStr | None = None
    sql_databases: dict[str, SecretStr] = Field(default_factory=dict)
    sql_sink_pool_size: int = Field(default=5, ge=1)
    sql_sink_statement_timeout_ms: int = Field(default=30_000, ge=1)
    sql_sink_batch_size: int = Field(default=500, ge=1)
    sql_sink_max_batch_wait_ms: int = Field(default=100, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("processing_guarantee", mode="before")
    @classmethod
    def _alias_v2(cls, value: Any) -> Any:
        # Kafka Streams calls the same protocol exactly_once_v2; accept its spelling.
        return "exactly_once" if value == "exactly_once_v2" else value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        # A missing TLS file fails here, naming its variable, and not in the first client built.
        if value is not None:
            try:
                with value.open("rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"cannot read the file: {exc.strerror}") from None
        return value

    @property
    def eos(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    @property
    def effective_commit_interval_ms(self) -> int:
        """100 ms under exactly-once and 5 s under at-least-once, as in Kafka Streams."""
        if self.commit_interval_ms is not None:
            return self.commit_interval_ms
        return 100 if self.eos else 5_000

    def effective_advertised_url(self, port: int | None = None) -> str:
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        host = self.http_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"http://{host}:{port if port is not None else self.http_port}"

    def kafka_security(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client (consumer, producers, admin, restore)."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol.endswith("SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        """The client side of TLS: brokers are verified (certificate and host name) against
        ``ssl_cafile``, or the system CAs without one; ``ssl_certfile`` adds a client certificate.

        Raises ``ConfigurationError`` naming the variable whose file does not load.
        """
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"ONCEFLOW_SSL_CAFILE: no CA certificate loads from {self.ssl_cafile} ({exc}) -- "
                "it should be the PEM certificate of the CA that signed the brokers' certificates"
            ) from None
        if self.ssl_certfile is not None:
            # Never None: OpenSSL would prompt on the terminal for the key's password.
            password = self.ssl_password.get_secret_value() if self.ssl_password else ""
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigurationError(
                    f"ONCEFLOW_SSL_CERTFILE / ONCEFLOW_SSL_KEYFILE: the client certificate "
                    f"{self.ssl_certfile} and key {self.ssl_keyfile or '(in the certificate file)'}"
                    f" do not load ({exc}) -- they must be PEM and match each other; an encrypted "
                    "key needs ONCEFLOW_SSL_PASSWORD"
                ) from None
        return context


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus explicit overrides) or raise a ``ConfigurationError``.

    The error names each bad variable as it is spelled in the environment, e.g.
    ``ONCEFLOW_PROCESSING_GUARANTEE: Input should be 'exactly_once' or 'at_least_once'``.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = "_".join(str(p) for p in err["loc"])
            # Never echo what was given for a secret, even a malformed one.
            secret = field.endswith(("password", "token", "dsn")) or field.startswith(
                "sql_databases"
            )
            shown = "***" if secret else repr(err.get("input"))
            lines.append(f"ONCEFLOW_{field.upper()}: {err['msg']} (got {shown})")
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(lines)) from None
    except SettingsError as exc:  # a JSON setting (ONCEFLOW_SQL_DATABASES) that does not parse
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise ConfigurationError(
            f"invalid settings:\n  ONCEFLOW_{field.upper()}: not valid JSON (a JSON object, "
            'e.g. {"main": "postgresql+asyncpg://user:password@host/db"})'
        ) from None
    if settings.state_read_cache_mib is not None:
        raise ConfigurationError(
            "ONCEFLOW_STATE_READ_CACHE_MIB is no longer read: the store partitions of a worker "
            "now share one read cache, sized by ONCEFLOW_STATE_CACHE_MIB (MiB per worker process, "
            f"default {Settings.model_fields['state_cache_mib'].default:g}). The old setting was "
            "per store partition (tables x partitions of them): set ONCEFLOW_STATE_CACHE_MIB "
            "instead and unset ONCEFLOW_STATE_READ_CACHE_MIB"
        )
    if settings.security_protocol.startswith("SASL") and not settings.sasl_username:
        raise ConfigurationError(
            f"ONCEFLOW_SASL_USERNAME: required when ONCEFLOW_SECURITY_PROTOCOL="
            f"{settings.security_protocol}"
        )
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        raise ConfigurationError(
            "ONCEFLOW_SSL_KEYFILE is set without ONCEFLOW_SSL_CERTFILE: a client key needs its "
            "certificate (mutual TLS), or unset it"
        )
    if settings.security_protocol.endswith("SSL"):
        settings.ssl_context()  # a file that does not load fails now, named
    return settings
