"""The one exception of kafka_local: a message that says what is wrong and how to fix it."""

from __future__ import annotations


class KafkaLocalError(Exception):
    """A failure with a one-line message; ``detail`` holds optional log lines shown under it."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail
