"""Every name onceflow derives from the app id, in one place: internal topics, transactional ids,
task ids and the dead-letter headers. A name written here is read back by other processes (the
next owner of a task, an operator's tooling, the DLQ's consumers): change it only with a
migration.
"""

from __future__ import annotations

__all__ = [
    "DLQ_ERROR_MESSAGE",
    "DLQ_ERROR_STAGE",
    "DLQ_ERROR_TYPE",
    "DLQ_ORIGINAL_PREFIX",
    "DLQ_SOURCE_OFFSET",
    "DLQ_SOURCE_PARTITION",
    "DLQ_SOURCE_TABLE",
    "DLQ_SOURCE_TIMER",
    "DLQ_SOURCE_TIMESTAMP",
    "DLQ_SOURCE_TOPIC",
    "DLQ_SOURCE_WINDOW_START",
    "DLQ_TRUNCATED",
    "changelog_topic",
    "dlq_topic",
    "repartition_topic",
    "sink_group",
    "task_id",
    "transactional_id",
]


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog of ``table``: compacted, one partition per task of the table's group."""
    return f"{app_id}-{table}-changelog"


def repartition_topic(app_id: str, name: str) -> str:
    """An internal topic that re-keys a stream between two task groups."""
    return f"{app_id}-{name}-repartition"


def dlq_topic(app_id: str) -> str:
    """The dead-letter topic: records that could not be processed, with the headers below."""
    return f"{app_id}-dlq"


def sink_group(app_id: str, sink: str) -> str:
    """The consumer group of SQL sink ``sink``: its offsets live in the database, keyed by this
    name (``onceflow_offsets.consumer_group``); the group's Kafka commits are informational."""
    return f"{app_id}-sink-{sink}"


def task_id(group: str, partition: int) -> str:
    """A task's id, e.g. ``"0_3"``: partition 3 of task group ``"0"`` (Kafka Streams' form)."""
    return f"{group}_{partition}"


def transactional_id(app_id: str, group: str, partition: int) -> str:
    """The task's transactional id: stable across owners, so the next owner's InitProducerId
    fences the previous one (docs/architecture.md, *Fencing*)."""
    return f"{app_id}-{task_id(group, partition)}"


# Headers of a dead-letter record: where it came from and why it failed. The stage is
# "deserialize" (the input's serdes), "handler" (the handler raised) or "output" (a record the
# handler sent or wrote cannot be produced: too large, or to a partition that does not exist).
DLQ_SOURCE_TOPIC = "onceflow.source.topic"
DLQ_SOURCE_PARTITION = "onceflow.source.partition"
DLQ_SOURCE_OFFSET = "onceflow.source.offset"
DLQ_SOURCE_TIMESTAMP = "onceflow.source.timestamp"
# A failed callback that handles no record: the table (on_close) or timer, and the window.
DLQ_SOURCE_TABLE = "onceflow.source.table"
DLQ_SOURCE_TIMER = "onceflow.source.timer"
DLQ_SOURCE_WINDOW_START = "onceflow.source.window_start"
DLQ_ERROR_STAGE = "onceflow.error.stage"
DLQ_ERROR_TYPE = "onceflow.error.type"
DLQ_ERROR_MESSAGE = "onceflow.error.message"
DLQ_ORIGINAL_PREFIX = "onceflow.original."  # the source record's own headers, renamed
# Set when the dead letter had to be cut to fit: "key=<bytes>,value=<bytes>", the original sizes.
DLQ_TRUNCATED = "onceflow.truncated"
