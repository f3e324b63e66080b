"""The worker: one group consumer, the tasks it is assigned, and the poll-process-commit loop.

``Worker(app).run()`` joins the group ``app_id``; tasks are created on assignment and started in
the background (fence, seek, restore) with their partitions paused, so a long restore never
stalls heartbeats. The loop fetches and hands each task its records; each task commits every
``commit_interval_ms`` (or ``commit_every`` records) on its own staggered schedule, in the
background, while every task goes on processing, the committing one into its next transaction
(``commits.py``). A task that fails is closed without committing and rebuilt from the committed
state; a fenced task waits for the rebalance that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from onceflow import naming
from onceflow.errors import OnceflowError
from onceflow.runtime.admin import TopicAdmin, internal_topics
from onceflow.runtime.alos_sinks import AtLeastOnceSink, FencedAtLeastOnceSink
from onceflow.runtime.assignor import HaConfig, TaskAssignor, TaskKey
from onceflow.runtime.cleanup import StateCleaner
from onceflow.runtime.clients import Clients
from onceflow.runtime.commits import CommitSchedule, phase_of
from onceflow.runtime.compat import (
    membership_confirmed,
    membership_current,
    request_rejoin,
    watch_membership,
)
from onceflow.runtime.failures import FATAL_GRACE_S, Backoff, judge, should_revive
from onceflow.runtime.global_tables import GlobalTables
from onceflow.runtime.ha import HighAvailability
from onceflow.runtime.metrics import Metrics
from onceflow.runtime.ordering import HeldInputs, by_timestamp
from onceflow.runtime.sinks import Sink, TransactionalSink
from onceflow.runtime.sql_sinks import SqlSinks
from onceflow.runtime.standby import StandbyTask
from onceflow.runtime.task import Task, TaskState
from onceflow.runtime.watches import purge_repartitions, watch_changelogs
from onceflow.settings import Settings, load_settings
from onceflow.state.sqlite import store_io
from onceflow.topology import App

__all__ = ["Worker"]

log = logging.getLogger("onceflow.worker")

COMMIT_POLL_MS = 5
"""How long the loop waits for input at most while a commit runs: its task's next commit waits
until the loop collects it."""


@dataclass(frozen=True)
class Fetched:
    """A fetched batch, and the running task each of its partitions belonged to when it was
    fetched (None: none was running; its records are dropped)."""

    batch: dict[TopicPartition, list[Any]]
    owners: dict[TopicPartition, Task | None]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._worker._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._worker._on_assigned(set(assigned))


class Worker:
    """Runs an ``App``: ``await Worker(app).run()`` until ``stop()`` (SIGTERM in the CLI).

    ``phase`` is one of ``starting``, ``joining``, ``running``, ``rebalancing``, ``stopping``,
    ``stopped``; ``tasks`` are the tasks this instance owns, by (group, partition).
    """

    def __init__(
        self,
        app: App,
        settings: Settings | None = None,
        *,
        clients: Clients | None = None,
        metrics: Metrics | None = None,
        topic_check_interval_s: float = 10.0,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.app = app.configured(self.settings.app_id)
        self.clients = clients or Clients(
            self.settings, client_id=f"{app.app_id}-{socket.gethostname()}-{os.getpid()}"
        )
        self.metrics = metrics or Metrics(app.app_id, eos=self.settings.eos)
        self.phase = "starting"
        self.tasks: dict[TaskKey, Task] = {}
        self.partitions: dict[str, int] = {}  # task group -> partition count
        self.delete_retention_ms: dict[str, int] = {}  # changelog topic -> its delete.retention.ms
        self.changelog_ids: dict[str, str] = {}  # changelog topic -> its topic id at start
        self.http_port: int | None = None
        s = self.settings
        self.assignor = TaskAssignor(
            app.groups(),
            s.effective_advertised_url(),
            ha=HaConfig(s.num_standby_replicas, s.acceptable_recovery_lag, s.max_warmup_replicas),
        )
        # Standby and warm-up copies, the state this member reports, probing rebalances
        # (docs/architecture.md, *High availability*).
        self.ha = HighAvailability(
            app,
            s,
            self.clients,
            self.metrics,
            self.assignor,
            on_fatal=lambda exc: self._fatal(exc, "standby tasks"),
        )
        self.fatal_error: BaseException | None = None
        self.last_loop_at = time.monotonic()
        self.topic_check_interval_s = topic_check_interval_s
        self._assigned: set[TaskKey] = set()
        self._starting: dict[TaskKey, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._shared_producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._commits: CommitSchedule[TaskKey] = CommitSchedule(
            self.settings.effective_commit_interval_ms,
            self.settings.commit_every,
            lambda key: phase_of(key[0], key[1], self.partitions.get(key[0], 1)),
        )
        self._rebalances = 0
        self._backoff = Backoff(self.settings.retry_backoff_ms / 1000, time.monotonic)
        self._waiting: set[TaskKey] = set()  # tasks paused while a record waits for its retry
        # With ONCEFLOW_MAX_TASK_IDLE_MS > 0: what each task fetched and has not handled yet
        self._inputs: HeldInputs[TaskKey, Task] = HeldInputs(self.settings.max_task_idle_ms)
        self._loop_task: asyncio.Task[None] | None = None
        # Loaded before joining the group, then kept up to date (docs/architecture.md, *Global
        # tables*); a topic that changes under it stops the worker.
        self.global_tables = GlobalTables(
            app,
            self.settings,
            self.clients,
            check_interval_s=topic_check_interval_s,
            on_fatal=lambda exc: self._fatal(exc, "global tables"),
        )
        # Exactly-once into a database (docs/architecture.md): a DSN that is missing fails here.
        self.sql_sinks = SqlSinks(
            app,
            self.settings,
            self.clients,
            self.metrics,
            on_fatal=lambda exc: self._fatal(exc, "sql sinks"),
        )

    # -- public --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to finish: stop fetching, commit, leave the group. Safe to call twice."""
        self._stop.set()

    def membership(self) -> tuple[bool, str]:
        """Whether this instance is a current member of its group, else False and why.

        Not current while it is not in the group, a rebalance is pending, or no heartbeat was
        confirmed within the session timeout: the group may have given its tasks to another
        instance (a process paused past its session timeout), so its state must not be served
        (docs/architecture.md, *Fencing*).
        """
        if self._consumer is None:
            if not self.app.groups() and self.phase == "running":
                return True, "no tasks: SQL sinks only"
            return False, "not in the group yet"
        return membership_current(self._consumer, self.settings.session_timeout_ms / 1000)

    @property
    def standbys(self) -> Mapping[TaskKey, StandbyTask]:
        """The standby and warm-up copies kept here, by task."""
        return self.ha.standby_tasks

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise OnceflowError("the worker is not started")
        return self._consumer

    async def run(self) -> None:
        """Run until ``stop()``; re-raises a fatal error (bad config, handler under ``fail``, a
        changelog topic deleted)."""
        if not self.app.groups() and self.app.sql_sinks:
            await self._run_sql_sinks_only()
            return
        store_io.configure(self.settings.state_io_processes)
        try:
            await self._setup()
            self._spawn(
                watch_changelogs(
                    self.clients, self.app, self.partitions, self.changelog_ids,
                    replication_factor=self.settings.replication_factor,
                    interval_s=self.topic_check_interval_s,
                    stop=self._stop,
                    on_fatal=lambda exc: self._fatal(exc, "worker"),
                )
            )  # fmt: skip
            self._spawn(self.global_tables.run(self._stop))
            self._spawn(self.ha.run(self._stop))
            self._spawn(self.sql_sinks.run(self._stop))
            self._spawn(StateCleaner.of(self.app, self.settings).run(self._owned, self._stop))
            self._spawn(
                purge_repartitions(
                    self.clients, self.app, self._running,
                    interval_s=self.settings.repartition_purge_interval_ms / 1000,
                    stop=self._stop,
                )
            )  # fmt: skip
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
            try:
                await self._loop_task
            except asyncio.CancelledError:
                # _fatal() cancels a stuck loop; a cancel of run() itself goes on.
                current = asyncio.current_task()
                if self.fatal_error is None or (current is not None and current.cancelling()):
                    raise
        finally:
            await self._shutdown()
        if self.fatal_error is not None:
            raise self.fatal_error

    # -- setup and shutdown ----------------------------------------------------------------------

    async def _setup(self) -> None:
        admin_client = self.clients.admin()
        try:
            await self.clients.start(admin_client)
            admin = TopicAdmin(admin_client, replication_factor=self.settings.replication_factor)
            self.partitions = await admin.check_sources(self.app)
            await admin.check_known_changelogs(self.app)
            await admin.ensure(internal_topics(self.app, self.partitions))
            self.delete_retention_ms = await admin.delete_retention_ms(
                t.changelog_topic for t in self.app.tables.values()
            )
            self.changelog_ids = await admin.changelog_ids(self.app)
        finally:
            await admin_client.close()
        await self.global_tables.start(on_progress=self._alive)
        s = self.settings
        self._consumer = self.clients.consumer(
            group_id=self.app.app_id,
            group_instance_id=s.group_instance_id,
            partition_assignment_strategy=(self.assignor,),
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            max_poll_records=s.max_poll_records,
            isolation_level="read_committed",
        )
        if not s.eos:
            self._shared_producer = self.clients.producer()
            await self._shared_producer.start()
        await self._consumer.start()
        watch_membership(self._consumer)
        await self.ha.start(
            self._consumer, self.partitions, self.delete_retention_ms, self.changelog_ids
        )
        sources = sorted(t for topics in self.app.groups().values() for t in topics)
        self._consumer.subscribe(sources, listener=_Listener(self))
        self.phase = "joining"
        log.info(
            "joining group %r as %s (%s, commit every %d ms)",
            self.app.app_id,
            self.assignor.advertised_url,
            s.processing_guarantee,
            s.effective_commit_interval_ms,
        )

    async def _shutdown(self) -> None:
        self.phase = "stopping"
        grace = self.settings.shutdown_grace_ms / 1000
        # After a fatal error nothing more is committed: what the tasks hold is reprocessed.
        commit = self.fatal_error is None
        if not commit:
            grace = min(grace, FATAL_GRACE_S)
        if not await _within(self._close_tasks(list(self.tasks), commit=commit), grace):
            log.error(
                "tasks did not close within %.1fs; their transactions abort on fencing", grace
            )
        background = list(self._background)
        for bg in background:
            bg.cancel()
        if background:
            await asyncio.wait(background, timeout=grace or 1)
        if self._consumer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(self._consumer.stop(), grace or 1)
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(self.global_tables.close(), grace or 1)
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(self.ha.close(), grace or 1)
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(self.sql_sinks.close(), grace or 1)
        if self._shared_producer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(self._shared_producer.stop(), grace or 1)
        self.phase = "stopped"
        log.info("worker stopped")

    def _alive(self) -> None:
        """Progress outside the loop (the global tables' load) counts for liveness."""
        self.last_loop_at = time.monotonic()

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        consumer = self.consumer
        # The batch fetched last round, its loads begun (``Task.preload``), processed after the
        # next fetch: SQLite reads for one batch overlap the handlers of the one before
        # (docs/architecture.md, *The life of a record*). With the tasks it was fetched for: a
        # task closed and opened again meanwhile starts from its committed offsets and fetches
        # them again.
        ahead: Fetched | None = None
        while not self._stop.is_set():
            self.last_loop_at = now = time.monotonic()
            next_at = min(
                (d for t in self.tasks.values() for d in (t.retry_due, t.wall_clock_due) if d),
                default=None,
            )
            for at in (self._inputs.due, self._commits.next_due(self._with_work())):
                if at is not None:
                    next_at = at if next_at is None else min(next_at, at)
            wait_ms = 100 if next_at is None else max(1, min(100, int((next_at - now) * 1000)))
            if any(t.committing for t in self.tasks.values()):
                wait_ms = min(wait_ms, COMMIT_POLL_MS)  # collect it soon after it finishes
            try:
                batch = await consumer.getmany(
                    timeout_ms=0 if ahead else wait_ms, max_records=self.settings.max_poll_records
                )
            except KafkaError as exc:
                log.warning("fetch failed: %r; retrying", exc)
                await asyncio.sleep(0.5)
                continue
            async with self._lock:
                await self._finish_commits()
                fetched, ahead = ahead, self._preload(batch) if batch else None
                if fetched is not None or self._inputs.holding:
                    await self._process(fetched)
                await self._retry_due()
                await self._wall_clock_due()
                self._begin_commits()
                self._pause_waiting()

    async def _retry_due(self) -> None:
        """Retry the records whose backoff is over."""
        await self._run_due(lambda task: task.retry_due, lambda task: task.retry_held())

    def _pause_waiting(self) -> None:
        """Pause the partitions of a task while a record of it waits for its retry (what was
        fetched behind it waits in the task) or while it holds ``commit_every`` records
        processed since a commit that has not returned yet (their outputs wait in memory for
        the next transaction); resume them after."""
        limit = self.settings.commit_every
        for key, task in self.tasks.items():
            if task.state is not TaskState.RUNNING:
                continue
            waiting = task.retry_due is not None or (task.committing and task.uncommitted >= limit)
            if waiting and key not in self._waiting:
                self.consumer.pause(*task.tps)
                self._waiting.add(key)
            elif not waiting and key in self._waiting:
                self.consumer.resume(*task.tps)
                self._waiting.discard(key)

    async def _wall_clock_due(self) -> None:
        """Fire the wall-clock timers that are due, each in its task's transaction."""
        await self._run_due(lambda task: task.wall_clock_due, lambda task: task.run_wall_clock())

    async def _run_due(
        self,
        due_at: Callable[[Task], float | None],
        run: Callable[[Task], Awaitable[None]],
    ) -> None:
        """``run`` every running task whose ``due_at`` (``time.monotonic()``) has come."""
        now = time.monotonic()
        due = {
            k: None
            for k, t in self.tasks.items()
            if t.schedulable and (d := due_at(t)) is not None and d <= now
        }
        if due:
            await self._each(due, lambda task, _: run(task))

    def _preload(self, batch: dict[TopicPartition, list[Any]]) -> Fetched:
        """``batch`` with the tasks it was fetched for, each told to begin loading its keys."""
        owners: dict[TopicPartition, Task | None] = {}
        for tp in batch:
            task = self.tasks.get((self.app.group_of(tp.topic), tp.partition))
            # Only a running task's: one still starting seeks its committed offsets when it
            # starts, and fetches these records again.
            owners[tp] = task if task is not None and task.state is TaskState.RUNNING else None
            if task is not None:
                task.preload(tp, batch[tp])
        return Fetched(batch, owners)

    async def _process(self, fetched: Fetched | None) -> None:
        per_task: dict[TaskKey, list[tuple[TopicPartition, list[Any]]]] = {}
        consumed = self.metrics.records_consumed
        fetched = fetched or Fetched({}, {})
        for tp, records in fetched.batch.items():
            key = (self.app.group_of(tp.topic), tp.partition)
            task = self.tasks.get(key)
            consumed.labels(self.app.app_id, tp.topic, str(tp.partition)).inc(len(records))
            # Records of a task that is not running, or not the one they were fetched for, are
            # dropped: its start seeks explicitly.
            if task is not None and task is fetched.owners[tp] and task.state is TaskState.RUNNING:
                per_task.setdefault(key, []).append((tp, records))
        if self.settings.max_task_idle_ms > 0:  # a task may hold records back (HeldInputs)
            running = {k: t for k, t in self.tasks.items() if t.state is TaskState.RUNNING}
            per_task = self._inputs.ready(running, per_task, self._caught_up)
        await self._each(per_task, self._process_task)

    def _caught_up(self, task: Task, tp: TopicPartition) -> bool:
        """Whether ``task`` has handled every record of ``tp`` there is to fetch now."""
        consumer = self.consumer
        end = consumer.last_stable_offset(tp) if self.settings.eos else consumer.highwater(tp)
        position = task.positions.get(tp)
        return end is not None and position is not None and position >= end

    async def _process_task(self, task: Task, work: list[tuple[TopicPartition, list[Any]]]) -> None:
        for tp, records in by_timestamp(work):  # several partitions: in timestamp order
            await task.process(tp, records)

    def _with_work(self) -> list[TaskKey]:
        return [k for k, t in self.tasks.items() if t.schedulable and t.has_work]

    def _begin_commits(self) -> None:
        """Begin the commits that are due (``CommitSchedule``), each in the background."""
        now = time.monotonic()
        for key in self._commits.due(self.tasks, now):
            self.tasks[key].commit_in_background()
            self._commits.begun(key, now)

    async def _finish_commits(self) -> None:
        """Collect the commits that finished: fail the tasks whose commit failed."""
        done = {k: None for k, t in self.tasks.items() if t.commit_finished}
        if not done:
            return
        failed = await self._each(done, lambda task, _: task.finish_commit())
        for key in done.keys() - failed:
            self._backoff.healthy(key)  # a whole commit went through
        self._update_lag()

    async def _each(self, work: dict[TaskKey, Any], fn: Any) -> set[TaskKey]:
        """Run ``fn(task, item)`` for every task concurrently; fail tasks one by one and
        return their keys."""
        keys = list(work)
        results = await asyncio.gather(
            *(fn(self.tasks[k], work[k]) for k in keys), return_exceptions=True
        )
        failed = set()
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):
                failed.add(key)
                await self._task_failed(key, result)
        return failed

    def _update_lag(self) -> None:
        consumer = self.consumer
        for task in self.tasks.values():
            if task.state is not TaskState.RUNNING:
                continue
            for tp in task.tps:
                end = (
                    consumer.last_stable_offset(tp) if self.settings.eos else consumer.highwater(tp)
                )
                position = task.positions.get(tp)
                if end is not None and position is not None:
                    self.metrics.consumer_lag.labels(
                        self.app.app_id, tp.topic, str(tp.partition)
                    ).set(max(0, end - position))

    # -- failures --------------------------------------------------------------------------------

    async def _task_failed(self, key: TaskKey, exc: BaseException) -> None:
        task = self.tasks.pop(key, None)
        self._waiting.discard(key)
        if task is None:
            return
        verdict = judge(exc)
        delay: float | None
        if verdict.disposition == "cancelled":  # revoked while starting: not a failure
            await task.close(commit=False)
            self.metrics.assigned_tasks.labels(self.app.app_id).set(len(self.tasks))
            return
        if verdict.disposition == "fenced":
            # Never rebuilt on a timer: a member cut off from the group coordinator would fence
            # the real owner in turn, and so on. It rejoins; the rebalance decides who owns it.
            reason, delay = "fenced", None
            log.warning("task %s fenced: %s; rejoining the group", task.task_id, exc)
            request_rejoin(self.consumer)
        elif verdict.disposition == "fatal":
            self._fatal(exc, f"task {task.task_id}")
            reason, delay = "fatal", None
        else:
            delay = self._backoff.failed(key)
            reason = "corrupted"
            log.log(
                verdict.log_level,
                "task %s failed: %s; rebuilding it from the committed state in %.1fs",
                task.task_id,
                exc,
                delay,
                exc_info=exc if verdict.traceback else None,
            )
            self.metrics.transactions.labels(self.app.app_id, "aborted").inc()
        self.metrics.task_failures.labels(self.app.app_id, reason).inc()
        await task.close(commit=False)
        self.metrics.assigned_tasks.labels(self.app.app_id).set(len(self.tasks))
        if delay is not None:
            self._spawn(self._revive(key, delay, self._rebalances))

    def _fatal(self, exc: BaseException, where: str) -> None:
        """Stop the worker for an error the operator must fix; ``run()`` re-raises it."""
        log.error("%s failed fatally: %s", where, exc)
        if self.fatal_error is None:
            self.fatal_error = exc
        self.stop()
        # A loop stuck (in a handler, a prefetch) is cancelled: nothing it holds will be
        # committed, and its tasks abort at shutdown (cancelling their background commits).
        loop_task = self._loop_task
        if loop_task is not None and loop_task is not asyncio.current_task():
            loop_task.cancel()

    def _running(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.state is TaskState.RUNNING]

    def _owned(self) -> set[TaskKey] | None:
        """The tasks whose stores stay: owned, starting, or assigned and waiting to be rebuilt.
        None while the worker is not running (joining, rebalancing: all are revoked then)."""
        if self.phase != "running":
            return None
        return {*self.tasks, *self._starting, *self._assigned, *self.ha.standby_tasks}

    async def _revive(self, key: TaskKey, delay: float, rebalances: int) -> None:
        """Rebuild a failed task if this worker still owns it after ``delay``.

        After fencing, the delay lets a zombie notice it left the group (its next heartbeat)
        before it would fence the new owner in turn.
        """
        await asyncio.sleep(delay)
        async with self._lock:
            if should_revive(
                key,
                rebalances_then=rebalances,
                rebalances_now=self._rebalances,
                assigned=self._assigned,
                running=self.tasks,
            ):
                self._create_task(key)

    # -- rebalances ------------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            self.phase = "rebalancing"
            self._rebalances += 1
            self._assigned = set()
            keys = [k for k, t in self.tasks.items() if revoked.intersection(t.tps)]
            # What it ran counts as caught up at the join that follows, unless this member may
            # have been expelled meanwhile (a zombie: others may have run its tasks since).
            confirmed = membership_confirmed(self.consumer, self.settings.session_timeout_ms / 1000)
            self.ha.revoked(
                k for k in keys if confirmed and self.tasks[k].state is TaskState.RUNNING
            )
            await self._close_tasks(keys, commit=True)
            log.info("revoked %d tasks", len(keys))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.metrics.rebalances.labels(self.app.app_id).inc()
        keys = {(self.app.group_of(tp.topic), tp.partition) for tp in assigned}
        async with self._lock:
            self._assigned = keys
            # First: a standby of a task now active here closes before the task opens its stores
            self._spawn(self.ha.assigned())
            for key in sorted(keys - self.tasks.keys()):
                self._create_task(key)
            self.phase = "running"
        log.info("assigned tasks %s", ", ".join(f"{g}_{p}" for g, p in sorted(keys)) or "(none)")

    def _create_task(self, key: TaskKey) -> None:
        group, partition = key
        s = self.settings
        task = Task(
            app=self.app,
            group=group,
            partition=partition,
            num_partitions=self.partitions[group],
            sink=self._sink_for(group, partition),
            consumer=self.consumer,
            consumer_factory=self.clients.consumer,
            settings=s,
            metrics=self.metrics,
            delete_retention_ms=self.delete_retention_ms,
            changelog_ids=self.changelog_ids,
            global_stores=self.global_tables.stores,
        )
        self.tasks[key] = task
        self.consumer.pause(*task.tps)
        self._starting[key] = self._spawn(self._start_task(key, task))
        self.metrics.assigned_tasks.labels(self.app.app_id).set(len(self.tasks))

    def _sink_for(self, group: str, partition: int) -> Sink:
        """Exactly-once: the task's own transactional producer. At-least-once: the shared
        producer, unless the task has tables — then a fencing producer of its own, so that a
        zombie cannot overwrite its changelog (``FencedAtLeastOnceSink``)."""
        txn_id = naming.transactional_id(self.app.app_id, group, partition)
        timeout_ms = self.settings.request_timeout_ms
        if self.settings.eos:
            return TransactionalSink(
                self.clients.producer,
                transactional_id=txn_id,
                group_id=self.app.app_id,
                request_timeout_ms=timeout_ms,
            )
        if self.app.tables_of(group):
            return FencedAtLeastOnceSink(
                self.clients.producer,
                transactional_id=txn_id,
                group_id=self.app.app_id,
                request_timeout_ms=timeout_ms,
                consumer=self.consumer,
            )
        assert self._shared_producer is not None
        return AtLeastOnceSink(self._shared_producer, self.consumer)

    async def _start_task(self, key: TaskKey, task: Task) -> None:
        try:
            await self.ha.release(key)  # a promoted standby: its stores, restored to the tail
            await task.start()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # A revoked task is being closed by the revocation, which holds the lock.
            if self.tasks.get(key) is task and not task.closing:
                async with self._lock:
                    await self._task_failed(key, exc)
            return
        finally:
            self._starting.pop(key, None)
        if self.tasks.get(key) is task and task.state is TaskState.RUNNING:
            self.consumer.resume(*task.tps)

    async def _close_tasks(self, keys: list[TaskKey], *, commit: bool) -> None:
        tasks = [self.tasks.pop(k) for k in keys if k in self.tasks]
        self._waiting.difference_update(keys)
        for task in tasks:
            await self._stop_start(task)
        await asyncio.gather(*(t.close(commit=commit) for t in tasks), return_exceptions=True)
        self.metrics.assigned_tasks.labels(self.app.app_id).set(len(self.tasks))
        # The partitions' lag is now their new owner's to report: a value left here would stay
        # frozen and add to the app's lag in sums (docs/operations.md, OnceflowNotProcessing).
        for tp in (tp for task in tasks for tp in task.tps):
            self.metrics.consumer_lag.remove(self.app.app_id, tp.topic, str(tp.partition))

    async def _stop_start(self, task: Task) -> None:
        key = (task.group, task.partition)
        starting = self._starting.pop(key, None)
        if starting is None or starting.done():
            return
        task.cancel_start()
        done, _ = await asyncio.wait({starting}, timeout=5)
        if not done:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting

    async def _run_sql_sinks_only(self) -> None:
        """An app of SQL sinks and no handlers: no group of tasks, only the sinks' consumers
        (docs/architecture.md, *Exactly-once into a database*)."""
        admin_client = self.clients.admin()
        try:
            await self.clients.start(admin_client)
            admin = TopicAdmin(admin_client, replication_factor=self.settings.replication_factor)
            await admin.ensure(internal_topics(self.app, {}))  # the dead-letter topic
        finally:
            await admin_client.close()
        self.phase = "running"
        sinks = self._spawn(self.sql_sinks.run(self._stop))
        try:
            while not self._stop.is_set() and not sinks.done():
                self.last_loop_at = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1)
        finally:
            self.phase = "stopping"
            self._stop.set()  # the sinks finish their batch in flight, then stop
            await asyncio.wait({sinks}, timeout=self.settings.shutdown_grace_ms / 1000 or 1)
            sinks.cancel()  # if still running: a batch cut short rolls back, read again later
            await self.sql_sinks.close()
            self.phase = "stopped"
        if self.fatal_error is not None:
            raise self.fatal_error

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


async def _within(coro: Any, timeout: float) -> bool:
    """Run ``coro`` for at most ``timeout`` seconds; whether it finished.

    Unlike ``wait_for``, it does not then wait for the cancelled coroutine's cleanup, which
    may block in turn (closing a producer waits for batches a deleted topic never takes): the
    cancel is repeated every second, for up to five seconds.
    """
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    for _ in range(5):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: _close_tasks gathers its errors itself
    return bool(done)
