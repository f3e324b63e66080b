"""The exceptions onceflow raises.

Every error derives from ``OnceflowError`` so that a caller can catch the framework's failures in
one place::

    OnceflowError
    ├── ConfigurationError        a setting or an App definition is wrong: fix it and restart
    │   ├── TopicNotFoundError    a source topic does not exist on the cluster
    │   └── CopartitioningError   co-partitioned source topics have different partition counts
    ├── SerdeError                a key or value could not be (de)serialized
    ├── StateError                a state store could not be used
    │   ├── StoreLockedError      another worker on this host holds the task's store
    │   ├── StoreCorruptError     the SQLite file is unreadable (the store is wiped and restored)
    │   └── WrongPartitionError   a handler wrote a key that belongs to another partition
    ├── TaskFencedError           another instance took over the task (not a failure of this one)
    ├── ChangelogMissingError     a changelog topic was deleted, recreated or truncated
    └── HandlerFailedError        a handler kept failing and the error policy is ``fail``

Messages quote the topic, partition, offset, store or setting involved and say what to do.
"""

from __future__ import annotations

__all__ = [
    "ChangelogMissingError",
    "ConfigurationError",
    "CopartitioningError",
    "HandlerFailedError",
    "OnceflowError",
    "SerdeError",
    "StateError",
    "StoreCorruptError",
    "StoreLockedError",
    "TaskFencedError",
    "TopicNotFoundError",
    "WrongPartitionError",
]


class OnceflowError(Exception):
    """Root of every error onceflow raises."""


class ConfigurationError(OnceflowError):
    """A setting or the App definition is invalid; the message names it and the accepted values."""


class TopicNotFoundError(ConfigurationError):
    """A source topic does not exist; create it (``onceflow topics create``) and restart."""


class CopartitioningError(ConfigurationError):
    """Source topics handled together must have the same number of partitions."""


class SerdeError(OnceflowError):
    """A key or value could not be serialized or deserialized by its serde."""


class StateError(OnceflowError):
    """A state store could not be opened, read or written."""


class StoreLockedError(StateError):
    """Another process on this host has the task's store open."""


class StoreCorruptError(StateError):
    """The store's SQLite file cannot be read; it will be wiped and restored from the changelog."""


class WrongPartitionError(StateError):
    """A handler wrote a table key that the current task does not own."""


class TaskFencedError(OnceflowError):
    """The task's transactional producer was fenced: a newer instance owns the task now."""


class ChangelogMissingError(OnceflowError):
    """A changelog topic lost records a store applied: it was deleted under the running app, or
    recreated or truncated since (a store's checkpoint is beyond its end). Fatal: restoring
    from it would silently diverge; the message says how to restore or accept the loss."""


class HandlerFailedError(OnceflowError):
    """A handler failed for a record after its retries and the error policy is ``fail``."""
