"""The exceptions onceflow raises, and what the runtime does with each.

Every error derives from ``OnceflowError`` so that a caller can catch the framework's failures in
one place. Each class says how a task that raised it is handled (``disposition``, see
docs/architecture.md, *Failures*)::

    OnceflowError                          retriable  (the default)
    ├── ConfigurationError                 fatal      a setting or the App is wrong: fix, restart
    │   ├── TopicNotFoundError             fatal      a source topic does not exist
    │   ├── CopartitioningError            fatal      co-partitioned sources differ in partitions
    │   └── AuthorizationError             fatal      the broker refused an operation (ACLs)
    ├── SerdeError                         retriable  a key or value did not (de)serialize
    ├── RecordRejectedError                retriable  a handler's output cannot be produced
    │   ├── RecordTooLargeError            retriable  over ONCEFLOW_MAX_REQUEST_SIZE
    │   └── UnknownPartitionError          retriable  sent to a partition the topic lacks
    ├── StateError                         retriable  a state store could not be used
    │   ├── StoreLockedError               retriable  another worker on this host holds the store
    │   ├── StoreCorruptError              retriable  unreadable SQLite file (wiped and restored)
    │   ├── WrongPartitionError            retriable  a handler wrote another partition's key
    │   └── RestoreChildGoneError          retriable  a store I/O child process died
    ├── TaskFencedError                    fenced     another instance took over the task
    ├── TaskCorruptedError                 retriable  the open transaction cannot be committed
    ├── RestoreCancelledError              cancelled  the task was revoked while it restored
    ├── ChangelogMissingError              fatal      a changelog was deleted, recreated, truncated
    ├── GlobalTopicChangedError            fatal      a global table's topic changed while running
    └── HandlerFailedError                 fatal      a handler kept failing under policy ``fail``

* **fatal**: the operator must act; the worker stops and ``onceflow worker`` exits non-zero.
* **fenced**: not a failure of this instance; the task is closed without committing and waits
  for the rebalance that gives it to its new owner.
* **retriable**: the task aborts its transaction and is rebuilt from the committed state, with
  a growing backoff while it keeps failing.
* **cancelled**: the task's owner is closing it already; nothing else to do.

A ``RecordRejectedError`` never reaches the worker: the task sends the input record that caused
it to the dead-letter topic at once, without retries (it would fail the same way again).

Exceptions from outside onceflow (``KafkaError``, ``TimeoutError``, a handler's bug escaping
the retries) count as retriable. Messages quote the topic, partition, offset, store or setting
involved and say what to do.
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = [
    "AuthorizationError",
    "ChangelogMissingError",
    "ConfigurationError",
    "CopartitioningError",
    "Disposition",
    "GlobalTopicChangedError",
    "HandlerFailedError",
    "OnceflowError",
    "RecordRejectedError",
    "RecordTooLargeError",
    "RestoreCancelledError",
    "RestoreChildGoneError",
    "SerdeError",
    "StateError",
    "StoreCorruptError",
    "StoreLockedError",
    "TaskCorruptedError",
    "TaskFencedError",
    "TopicNotFoundError",
    "UnknownPartitionError",
    "WrongPartitionError",
    "disposition_of",
]

Disposition = Literal["fatal", "fenced", "retriable", "cancelled"]


class OnceflowError(Exception):
    """Root of every error onceflow raises."""

    disposition: ClassVar[Disposition] = "retriable"


class ConfigurationError(OnceflowError):
    """A setting or the App definition is invalid; the message names it and the accepted values."""

    disposition = "fatal"


class TopicNotFoundError(ConfigurationError):
    """A source topic does not exist; create it (``onceflow topics create``) and restart."""


class CopartitioningError(ConfigurationError):
    """Source topics handled together must have the same number of partitions."""


class AuthorizationError(ConfigurationError):
    """The broker refused an operation for lack of permission (an ACL): grant it and restart."""


class SerdeError(OnceflowError):
    """A key or value could not be serialized or deserialized by its serde."""


class RecordRejectedError(OnceflowError):
    """A record a handler sent or wrote cannot be produced: its input record goes to the
    dead-letter topic without retries (under error policy ``fail`` the task stops)."""


class RecordTooLargeError(RecordRejectedError):
    """A record (an output, or a table write's changelog record) is larger than the producer's
    ``ONCEFLOW_MAX_REQUEST_SIZE``."""


class UnknownPartitionError(RecordRejectedError):
    """A handler sent a record to a partition its topic does not have."""


class StateError(OnceflowError):
    """A state store could not be opened, read or written."""


class StoreLockedError(StateError):
    """Another process on this host has the task's store open."""


class StoreCorruptError(StateError):
    """The store's SQLite file cannot be read; it will be wiped and restored from the changelog."""


class WrongPartitionError(StateError):
    """A handler wrote a table key that the current task does not own."""


class RestoreChildGoneError(StateError):
    """A store I/O child process (``onceflow.state.sqlite.store_io``) exited before it
    answered, twice (killed, or out of memory)."""


class TaskFencedError(OnceflowError):
    """The task's transactional producer was fenced: a newer instance owns the task now."""

    disposition = "fenced"


class TaskCorruptedError(OnceflowError):
    """The task's open transaction cannot be committed; recover from the committed state."""


class RestoreCancelledError(OnceflowError):
    """A restore was stopped because its task was revoked while starting."""

    disposition = "cancelled"


class ChangelogMissingError(OnceflowError):
    """A changelog topic lost records a store applied: it was deleted under the running app, or
    recreated or truncated since (a store's checkpoint is beyond its end). Fatal: restoring
    from it would silently diverge; the message says how to restore or accept the loss."""

    disposition = "fatal"


class GlobalTopicChangedError(OnceflowError):
    """A global table's topic was deleted, recreated or repartitioned while the worker ran.
    Fatal: the restart reloads the table from the topic as it is then (a global table holds no
    state of the app's own), or reports the topic missing."""

    disposition = "fatal"


class HandlerFailedError(OnceflowError):
    """A handler failed for a record after its retries and the error policy is ``fail``."""

    disposition = "fatal"


def disposition_of(exc: BaseException) -> Disposition:
    """How the runtime handles a task that raised ``exc`` (see the table above)."""
    if isinstance(exc, OnceflowError):
        return exc.disposition
    return "retriable"
