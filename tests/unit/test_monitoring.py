"""The chart's dashboard and alert rules against the metrics the worker registers, the runbooks
in docs/operations.md, the rules' unit tests and the README's metric table (no broker: the
integration test test_monitoring_metrics.py scrapes a running worker)."""

from __future__ import annotations

import copy
import re

import yaml
from kafka_helpers import REPO
from monitoring import (
    OPERATIONS,
    RULE_TESTS,
    check_monitoring,
    dashboard,
    exported_names,
    missing_names,
    rules,
    used_names,
)
from prometheus_client import generate_latest

from onceflow.runtime import Metrics
from onceflow.runtime.sql_health import SinkMetrics


def registered() -> str:
    """What a worker of an app with a SQL sink registers (an app without one has no sink_*)."""
    metrics = Metrics("app", eos=True)
    SinkMetrics(metrics)
    return generate_latest(metrics.registry).decode()


def test_every_name_the_dashboard_and_rules_read_is_registered() -> None:
    assert missing_names(registered()) == {}
    where = used_names()
    assert {w for ws in where.values() for w in ws} == {"dashboard", "rules"}
    # The panels: throughput, lag, commit latency, transactions, restore, failures,
    # DLQ, late records, tasks per pod, standby lag.
    for name in (
        "onceflow_records_processed_total",
        "onceflow_consumer_lag",
        "onceflow_commit_latency_seconds_bucket",
        "onceflow_transactions_total",
        "onceflow_restore_remaining_records",
        "onceflow_task_failures_total",
        "onceflow_dead_letter_records_total",
        "onceflow_late_records_dropped_total",
        "onceflow_assigned_tasks",
        "onceflow_standby_lag_records",
    ):
        assert "dashboard" in where[name], name


def test_a_misspelled_name_in_the_dashboard_is_reported() -> None:
    dash = copy.deepcopy(dashboard())
    target = dash["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace(
        "onceflow_records_processed_total", "onceflow_record_processed_total"
    )
    assert missing_names(registered(), dash) == {"onceflow_record_processed_total": {"dashboard"}}


def test_exported_names_come_from_type_lines() -> None:
    text = (
        "# HELP onceflow_x_total x\n# TYPE onceflow_x_total counter\n"
        "# TYPE onceflow_y counter\n# TYPE onceflow_h_seconds histogram\n"
        "# TYPE onceflow_g gauge\nonceflow_g 1.0\n"
    )
    assert exported_names(text) == {
        "onceflow_x_total", "onceflow_x_created", "onceflow_y_total", "onceflow_y_created",
        "onceflow_h_seconds_bucket", "onceflow_h_seconds_sum", "onceflow_h_seconds_count",
        "onceflow_h_seconds_created", "onceflow_g",
    }  # fmt: skip


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    cm = check_monitoring()
    assert cm.rule_problems(rules(), OPERATIONS.read_text()) == []
    broken = copy.deepcopy(rules())
    broken["groups"][0]["rules"][0]["annotations"]["runbook_url"] += "-typo"
    del broken["groups"][0]["rules"][1]["labels"]["severity"]
    assert len(cm.rule_problems(broken, OPERATIONS.read_text())) == 2


def test_every_alert_has_a_promtool_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    fired = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in check_monitoring().alerts(rules())}


def test_dashboard_structure() -> None:
    cm = check_monitoring()
    assert cm.dashboard_problems(dashboard()) == []
    broken = copy.deepcopy(dashboard())
    del broken["panels"][1]["datasource"]
    broken["panels"][2]["targets"][0]["expr"] = "sum(onceflow_consumer_lag)"
    problems = cm.dashboard_problems(broken)
    assert any("datasource" in p for p in problems)
    assert any("not filtered by $namespace" in p for p in problems)


def test_dashboard_exprs_become_parseable_promql() -> None:
    cm = check_monitoring()
    expr = 'sum(rate(onceflow_x_total{app=~"$app", pod=~"${pod}"}[$__rate_interval]))'
    assert cm.promql(expr) == 'sum(rate(onceflow_x_total{app=~".*", pod=~".*"}[5m]))'
    names = [w for w, _ in cm.dashboard_exprs(dashboard())]
    assert "variable namespace" in names  # label_values(onceflow_assigned_tasks, namespace)


def test_readme_metric_table_names_what_the_rules_alert_on() -> None:
    """Every metric an alert reads has a README row whose "alert on" column is not empty."""
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split(" | ")]
        if line.startswith("| `") and len(cells) == 3:
            for name in re.findall(r"`([a-z_]+)", cells[0]):
                rows[name] = cells[2].rstrip(" |")
    cm = check_monitoring()
    for rule in cm.alerts(rules()):
        for name in cm.metric_names([rule["expr"]]):
            family = re.sub(r"^onceflow_|_(bucket|sum|count)$", "", name)
            assert rows.get(family, "—") != "—", f"{rule['alert']} reads {name}: no README alert-on"
