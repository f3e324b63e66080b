"""What a store wrapper (windowed, ttl, a restore filter) passes straight to the store it wraps:
the changelog checkpoint and topic id a restore reads and records, the wipe, and the open
state."""

from __future__ import annotations

from onceflow.state.typing import Restorable, StorePartition

__all__ = ["Wrapped", "WrappedRestorable"]


class WrappedRestorable:
    """The part of ``Restorable`` a wrapper delegates to ``inner``: it only changes how
    ``restore_batch`` applies records."""

    inner: Restorable

    @property
    def checkpoint(self) -> int | None:
        """The inner store's changelog checkpoint."""
        return self.inner.checkpoint

    @property
    def changelog_topic_id(self) -> str | None:
        """The inner store's changelog topic id."""
        return self.inner.changelog_topic_id

    def set_changelog_topic_id(self, topic_id: str) -> None:
        """See ``Restorable.set_changelog_topic_id``."""
        self.inner.set_changelog_topic_id(topic_id)


class Wrapped(WrappedRestorable):
    """``WrappedRestorable`` over a whole store partition, with its open state; transactions
    are ``inner``'s too."""

    inner: StorePartition

    @property
    def has_pending(self) -> bool:
        """Whether the open transaction has writes."""
        return self.inner.has_pending

    @property
    def closed(self) -> bool:
        """Whether the inner store is closed."""
        return self.inner.closed
