"""The public API is exactly what we mean to export, and its three lists agree: ``__all__``, the
lazy ``_WHERE`` map and the ``TYPE_CHECKING`` imports of ``onceflow/__init__.py``."""

from __future__ import annotations

import ast
import importlib
import inspect

import onceflow

PUBLIC = {
    "App", "ChangelogMissingError", "ConfigurationError", "Context", "CopartitioningError",
    "GlobalTable", "Handler", "HandlerFailedError", "Hopping", "OnceflowError", "Serde",
    "SerdeError", "Session", "SessionTable", "Settings", "Sliding", "SlidingWindowedTable",
    "SourceTable", "SinkRecord", "SinkTransaction",
    "StateError", "StoreCorruptError", "StoreLockedError", "Table",
    "TaskFencedError", "TaskScope", "Topic", "TopicNotFoundError", "Tumbling", "WindowValue",
    "WindowedTable", "WrongPartitionError", "load_settings", "resolve_serde",
}  # fmt: skip


def _type_checking_imports() -> dict[str, str]:
    """name -> module of every ``from M import name`` under ``if TYPE_CHECKING:``."""
    tree = ast.parse(inspect.getsource(onceflow))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module
                for alias in stmt.names:
                    found[alias.asname or alias.name] = stmt.module
    return found


def test_public_api_is_what_we_mean_to_export() -> None:
    assert set(onceflow.__all__) == PUBLIC
    assert len(onceflow.__all__) == len(PUBLIC)  # no name twice


def test_all_where_and_type_checking_imports_agree() -> None:
    where = onceflow._WHERE
    assert set(where) == PUBLIC
    assert _type_checking_imports() == where


def test_every_name_resolves_to_the_object_in_its_module() -> None:
    for name, module in onceflow._WHERE.items():
        assert getattr(onceflow, name) is getattr(importlib.import_module(module), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        onceflow.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "onceflow" in str(exc)
    else:
        raise AssertionError("onceflow.NoSuchThing resolved")


def test_errors_share_one_root() -> None:
    for name in onceflow.__all__:
        obj = getattr(onceflow, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, onceflow.OnceflowError)
