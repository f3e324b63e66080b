"""What the HTTP API needs from a worker (protocols), and what it answers (response models).

The API reads a running worker but never imports ``onceflow.runtime``'s modules: it works
against these protocols, which ``Worker`` and ``Task`` fulfil, so the routes can be tested
against a plain object that has the same attributes. The pydantic models document the answers
in ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from onceflow.runtime import Metrics
from onceflow.settings import Settings
from onceflow.topology import App

__all__ = [
    "AssignorView",
    "Error",
    "GlobalTablesView",
    "KeyValue",
    "KeyValueReader",
    "NotOk",
    "RestoreView",
    "SqlSinksView",
    "Status",
    "TableInfo",
    "Tables",
    "TaskView",
    "Window",
    "WindowReader",
    "WindowedKeyValue",
    "WorkerView",
]

TaskKey = tuple[str, int]  # (task group, partition), as in onceflow.runtime.assignor


# -- what the API reads ------------------------------------------------------------------------


class KeyValueReader(Protocol):
    """A key-value store partition, as queries see it."""

    def committed_get(self, key: bytes) -> bytes | None:
        """Committed value of ``key`` (blocking: SQLite)."""
        ...


class WindowReader(Protocol):
    """A windowed store partition, as queries see it."""

    def fetch(
        self, key: bytes, from_ms: int, to_ms: int, *, committed: bool = True
    ) -> list[tuple[int, bytes]]:
        """``(window start, value)`` of ``key`` for starts in ``[from_ms, to_ms]`` (blocking)."""
        ...


class RestoreView(Protocol):
    """Progress of one store partition's restore (``onceflow.runtime.restore.RestoreProgress``)."""

    @property
    def store(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def end_offset(self) -> int: ...
    @property
    def remaining(self) -> int: ...
    @property
    def done(self) -> bool: ...


class TaskView(Protocol):
    """A task (``onceflow.runtime.Task``); ``state`` is a ``TaskState``, which is a ``str``."""

    @property
    def state(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def committed_stream_time(self) -> int:
        """The stream time of the task's last commit: queries hide what it expired."""
        ...

    @property
    def restores(self) -> Mapping[str, RestoreView]: ...
    def store(self, name: str) -> KeyValueReader: ...
    def windowed_store(self, name: str) -> WindowReader: ...


class StandbyView(TaskView, Protocol):
    """A standby copy of a task (``onceflow.runtime.standby.StandbyTask``): ``state`` is
    ``"standby"``, ``committed_stream_time`` -1 (a standby knows none)."""

    def table_lag(self, table: str) -> int | None:
        """Changelog records its copy of ``table`` lacks; None if it keeps none."""


class AssignorView(Protocol):
    """The group assignor (``onceflow.runtime.assignor.TaskAssignor``): who owns which task, at
    which URL."""

    advertised_url: str

    @property
    def owners(self) -> Mapping[TaskKey, str]: ...
    @property
    def owned(self) -> Sequence[TaskKey]: ...


class GlobalTablesView(Protocol):
    """The worker's global tables (``onceflow.runtime.global_tables.GlobalTables``)."""

    def loading(self) -> str | None:
        """Why they are not loaded yet (readiness), or None."""
        ...

    def store(self, name: str) -> KeyValueReader: ...
    def partitions(self, name: str) -> list[int]:
        """The topic partitions table ``name`` holds (empty before the start read them)."""
        ...


class SqlSinksView(Protocol):
    """The worker's SQL sinks (``onceflow.runtime.sql_sinks.SqlSinks``)."""

    def not_ready(self) -> str | None:
        """Why a sink cannot write now (readiness), or None."""
        ...


class WorkerView(Protocol):
    """The worker (``onceflow.runtime.Worker``) as the HTTP API sees it."""

    http_port: int | None

    @property
    def app(self) -> App: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def phase(self) -> str: ...
    @property
    def tasks(self) -> Mapping[TaskKey, TaskView]: ...
    @property
    def standbys(self) -> Mapping[TaskKey, StandbyView]: ...
    @property
    def partitions(self) -> Mapping[str, int]: ...
    @property
    def last_loop_at(self) -> float: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def assignor(self) -> AssignorView: ...
    @property
    def global_tables(self) -> GlobalTablesView:
        """Read only when the app declares global tables."""
        ...

    @property
    def sql_sinks(self) -> SqlSinksView: ...

    def membership(self) -> tuple[bool, str]:
        """Whether this instance is a current member of its group; if not, why (then its tasks
        may be another instance's already, and its view of the owners is stale)."""
        ...

    async def run(self) -> None: ...
    def stop(self) -> None: ...


# -- what the API answers ------------------------------------------------------------------------


class Status(BaseModel):
    """All is well."""

    status: Literal["ok"] = "ok"


class NotOk(BaseModel):
    """Not live or not ready, and why."""

    status: Literal["not live", "not ready"]
    reason: str = Field(examples=["restoring store counts partition 3: 12345 records left"])


class Error(BaseModel):
    """An error, as FastAPI reports them."""

    detail: str


class TableInfo(BaseModel):
    """One table of the app and the partitions this instance serves."""

    name: str
    kind: Literal["table", "windowed", "session", "sliding", "global", "source"]
    key_serde: str
    value_serde: str
    group: str = Field(
        description="task group whose tasks own the table's partitions ('' for a global table)"
    )
    changelog_topic: str = Field(description="a global table's: its source topic, its only copy")
    num_partitions: int | None = Field(description="partitions of the group (None before start)")
    partitions: list[int] = Field(description="partitions owned here and running: queryable")
    restoring: list[int] = Field(description="partitions owned here, not running yet")
    standby: list[int] = Field(
        default_factory=list,
        description="partitions of which this instance keeps a standby or warm-up copy: "
        "answered with ?stale_ok=true",
    )
    window_size_ms: int | None = Field(None, description="windowed tables only")


class Tables(BaseModel):
    """The app's tables."""

    tables: list[TableInfo]


class KeyValue(BaseModel):
    """A key's committed value in a key-value table."""

    key: Any
    value: Any


class Window(BaseModel):
    """One window of a key: ``[start, end)`` in epoch milliseconds; for session and sliding
    windows ``[start, end]`` (``end`` inclusive, as in Kafka Streams)."""

    start: int
    end: int
    value: Any


class WindowedKeyValue(BaseModel):
    """A key's committed windows in a windowed table, by ascending start."""

    key: Any
    windows: list[Window]
