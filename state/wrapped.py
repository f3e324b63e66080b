"""``Wrapped``: what a store wrapper (windowed, ttl) passes straight to the store partition it
keeps its rows in — the changelog checkpoint and topic id a restore reads and records, and the
open state."""

from __future__ import annotations

from onceflow.state.typing import StorePartition

__all__ = ["Wrapped"]


class Wrapped:
    """The part of ``Restorable`` and of the store's state that a wrapper delegates to
    ``inner``; transactions are ``inner``'s too."""

    inner: StorePartition

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

    @property
    def has_pending(self) -> bool:
        """Whether the open transaction has writes."""
        return self.inner.has_pending

    @property
    def closed(self) -> bool:
        """Whether the inner store is closed."""
        return self.inner.closed
