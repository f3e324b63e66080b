"""The SQL sinks of a worker: one ``SinkRunner`` per ``@app.sql_sink``, their metrics, their
dead letters and what readiness asks of them (docs/architecture.md, *Exactly-once into a
database*).

The worker builds ``SqlSinks`` at start (a sink without a usable DSN fails there, naming the
setting), runs it next to its own loop, and closes it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from onceflow import naming
from onceflow.errors import HandlerFailedError, TopicNotFoundError
from onceflow.runtime.admin import TopicAdmin
from onceflow.runtime.clients import Clients
from onceflow.runtime.dead_letters import dead_letter
from onceflow.runtime.metrics import Metrics
from onceflow.settings import Settings
from onceflow.topology import App

if TYPE_CHECKING:
    from onceflow.runtime.sql_runner import SinkRunner

__all__ = ["SqlSinks"]

log = logging.getLogger("onceflow.sql_sink")


class SqlSinks:
    """Every SQL sink of ``app``, run by the worker: ``await run(stop)`` then ``close()``."""

    def __init__(
        self,
        app: App,
        settings: Settings,
        clients: Clients,
        metrics: Metrics,
        *,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._on_fatal = on_fatal
        self._producer: AIOKafkaProducer | None = None
        self._dlq = app.dlq_topic
        self._policy = app.error_policy or settings.error_policy
        self.runners: list[SinkRunner] = []
        if not app.sql_sinks:
            return
        # Imported only for an app with SQL sinks: SQLAlchemy costs every worker ~19 MB of RSS
        # and ~0.35 s of start-up (docs/benchmarks.md, *Restore*, session 9).
        from onceflow.runtime.sql_health import SinkMetrics
        from onceflow.runtime.sql_offsets import make_engine, resolve_dsn
        from onceflow.runtime.sql_runner import SinkRunner

        sink_metrics = SinkMetrics(metrics)
        owner = f"{socket.gethostname()}-{os.getpid()}"
        for sink in app.sql_sinks.values():
            dsn = resolve_dsn(sink.database, settings, sink.name)  # fails at start, named
            self.runners.append(
                SinkRunner(
                    sink,
                    group=naming.sink_group(app.app_id, sink.name),
                    engine=make_engine(dsn, settings),
                    settings=settings,
                    clients=clients,
                    metrics=sink_metrics,
                    owner=owner,
                    on_bad_record=self._bad_record,
                )
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Run every sink until ``stop``."""
        if not self.runners:
            return
        try:
            await self._check_topics()
            self._producer = self._clients.producer()
            await self._producer.start()
            async with asyncio.TaskGroup() as group:
                for runner in self.runners:
                    group.create_task(runner.run(stop))
        except Exception as exc:  # a bug, or error policy "fail": the worker stops, saying why
            self._on_fatal(exc)
            raise

    async def _check_topics(self) -> None:
        """A sink whose topic does not exist fails at start, naming it (its consumer would wait
        for it silently, or a broker with auto-creation would create it with defaults)."""
        admin_client = self._clients.admin()
        try:
            await self._clients.start(admin_client)
            admin = TopicAdmin(admin_client, replication_factor=self._settings.replication_factor)
            counts = await admin.partition_counts(r.sink.topic.name for r in self.runners)
        finally:
            await admin_client.close()
        for runner in self.runners:
            if runner.sink.topic.name not in counts:
                raise TopicNotFoundError(
                    f"sql sink {runner.sink.name!r} reads topic {runner.sink.topic.name!r}, which "
                    "does not exist on the cluster; create it (`onceflow topics create MODULE`) "
                    "and restart"
                )

    def not_ready(self) -> str | None:
        """Why a sink cannot write now (readiness), or None."""
        for runner in self.runners:
            reason = runner.not_ready()
            if reason is not None:
                return reason
        return None

    async def close(self) -> None:
        """Stop the consumers, dispose the engines. Safe to call twice."""
        for runner in self.runners:
            await runner.close()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(KafkaError, TimeoutError):
                await producer.stop()

    async def _bad_record(
        self, sink: str, record: ConsumerRecord[bytes, bytes], exc: BaseException
    ) -> None:
        """A record whose own data fails (a constraint, a bad value, the sink function raised):
        dead-letter it and go on, or stop the worker under error policy ``fail``. The dead letter
        is acknowledged before the transaction that moves the offset past the record commits
        (docs/architecture.md, *Exactly-once into a database*: a crash in between repeats it)."""
        where = f"sql sink {sink!r}: {record.topic}[{record.partition}]@{record.offset}"
        if self._policy == "fail":
            error = HandlerFailedError(
                f"{where} failed with {type(exc).__name__}: {exc} (error policy 'fail'): fix the "
                "record or the sink, or use error policy 'dlq'"
            )
            self._on_fatal(error)
            raise error
        assert self._producer is not None
        stage = "deserialize" if type(exc).__name__ == "SerdeError" else "sql_sink"
        letter = dead_letter(
            record, exc, stage, topic=self._dlq, max_bytes=self._settings.max_request_size
        )
        await self._producer.send_and_wait(
            letter.topic, letter.value, key=letter.key, headers=letter.headers,
            timestamp_ms=letter.timestamp_ms,
        )  # fmt: skip
        self._metrics_dead_letter(record.topic, stage)
        log.warning("%s dead-lettered (%s: %s)", where, type(exc).__name__, str(exc)[:300])

    def _metrics_dead_letter(self, topic: str, stage: str) -> None:
        if self.runners:
            m = self.runners[0].metrics
            m.dead_letters.labels(m.app_id, topic, stage).inc()
