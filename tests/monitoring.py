"""The metric names the chart's dashboard and alert rules read, and those a worker exports: what
tests/unit/test_monitoring.py and tests/integration/test_monitoring_metrics.py compare."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import yaml
from kafka_helpers import REPO, load_script

CHART = REPO / "helm/onceflow"
DASHBOARD = CHART / "dashboards/onceflow.json"
RULES = CHART / "rules/onceflow.rules.yaml"
RULE_TESTS = CHART / "rules/onceflow.rules.test.yaml"
OPERATIONS = REPO / "docs/operations.md"

# The series each metric type exposes, by suffix of the family name (text format 0.0.4).
_SERIES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "untyped": ("",),
}


def check_monitoring() -> ModuleType:
    """scripts/check_monitoring.py, which is a script rather than a package module."""
    return load_script("check_monitoring")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def rules() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def used_names(dash: dict[str, Any] | None = None) -> dict[str, set[str]]:
    """Where each onceflow_* series name is read: name -> {"dashboard", "rules"}."""
    cm = check_monitoring()
    exprs = {
        "dashboard": [e for _, e in cm.dashboard_exprs(dash or dashboard())],
        "rules": [r["expr"] for r in cm.alerts(rules())],
    }
    used: dict[str, set[str]] = {}
    for where, found in exprs.items():
        for name in cm.metric_names(found):
            used.setdefault(name, set()).add(where)
    return used


def exported_names(exposition: str) -> set[str]:
    """Every series name the Prometheus text ``exposition`` declares, from its ``# TYPE`` lines:
    a labelled family with no sample yet still counts. Counters also as ``<name>_total``
    whether or not the TYPE line carries the suffix; histograms with their _bucket/_sum/_count."""
    names = set()
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[:2] != ["#", "TYPE"]:
            continue
        name, kind = parts[2], parts[3]
        if kind == "counter":
            name = name.removesuffix("_total")
        names.update(name + suffix for suffix in _SERIES.get(kind, ("",)))
    return names


def missing_names(exposition: str, dash: dict[str, Any] | None = None) -> dict[str, set[str]]:
    """The names the dashboard or the rules read that ``exposition`` does not declare."""
    exported = exported_names(exposition)
    return {name: where for name, where in used_names(dash).items() if name not in exported}
