"""The runtime: what runs an ``App`` on Kafka (docs/architecture.md, *Layers*).

``worker`` (group membership, the poll loop, the commit schedule, failures), ``task`` (one
partition of a task group: hand-over, the per-record loop), ``checkpoint`` (the commit
protocol), ``stores`` (a task's store partitions: open, restore, apply, persist), ``restore``
(reading a changelog into a store), ``outbox`` and ``sinks`` (a task's output: the transactional
producer or the shared at-least-once one), ``failures`` (classification, backoff, revive),
``assignor`` (whole tasks to members, with their URLs), ``clients`` and ``admin`` (aiokafka
clients from settings; topic checks and creation), ``metrics``, ``describe`` / ``cluster_check``
/ ``describe_text`` (``onceflow describe``, ``GET /topology``), ``reset`` / ``reset_plan``
(``onceflow reset``), and ``compat``, the one module
that touches aiokafka's and prometheus_client's private API.

The HTTP API, the test driver and the command line import the runtime through this package.
"""

from onceflow.runtime.admin import TopicAdmin
from onceflow.runtime.clients import Clients
from onceflow.runtime.cluster_check import ClusterReport, describe_app
from onceflow.runtime.describe import Topology, describe_topology, source_counts
from onceflow.runtime.describe_text import render_text
from onceflow.runtime.metrics import Metrics
from onceflow.runtime.reset import reset_app
from onceflow.runtime.reset_plan import Target, parse_datetime, parse_duration
from onceflow.runtime.task import Task, TaskState
from onceflow.runtime.worker import Worker

__all__ = [
    "Clients",
    "ClusterReport",
    "Metrics",
    "Target",
    "Task",
    "TaskState",
    "TopicAdmin",
    "Topology",
    "Worker",
    "describe_app",
    "describe_topology",
    "parse_datetime",
    "parse_duration",
    "render_text",
    "reset_app",
    "source_counts",
]
