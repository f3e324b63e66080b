"""Test an App without a broker: ``TestDriver`` runs its handlers through the worker's own
``Task`` with an in-memory sink and in-memory stores (see ``_driver``)."""

from onceflow.testing._driver import TableView, TestDriver
from onceflow.testing._sink import DeadLetter, InMemorySink, Output, RecordOptions

__all__ = ["DeadLetter", "InMemorySink", "Output", "RecordOptions", "TableView", "TestDriver"]
