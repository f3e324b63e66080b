"""Offline checks of the monitoring the Helm chart ships: the Grafana dashboard
(helm/onceflow/dashboards/onceflow.json) and the alerting rules (helm/onceflow/rules/).

scripts/check_deploy.sh runs it with the deploy tools' Python (PyYAML only); the tests import it
for the metric names the dashboard and the rules use.

    check_monitoring.py dashboard DASHBOARD.json OUT.rules.yaml
        the dashboard's structure; every PromQL expression (panel targets, and the selectors of
        the template variables' label_values queries) written to OUT as a recording rule, with
        Grafana's variables replaced, for `promtool check rules`
    check_monitoring.py rules RULES.yaml OPERATIONS.md
        every alert has a severity, a summary, a description and a runbook_url whose anchor is
        a heading of docs/operations.md
    check_monitoring.py embedded MANIFESTS.yaml CHART_DIR
        the PrometheusRule and the dashboard ConfigMap, rendered without overrides, hold the
        chart's rules file and dashboard file unchanged
    check_monitoring.py rendered MANIFESTS.yaml OUT.rules.yaml
        the rules of every rendered PrometheusRule written to OUT (for promtool), and the
        dashboard of every rendered ConfigMap checked as above

Each prints one summary line on stdout; problems go to stderr and make the exit status 1.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import yaml

# Grafana's built-in interval variables, and a value that parses where they stand in PromQL.
_INTERVAL_VARIABLES = re.compile(
    r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"
)
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$", re.S)
_METRIC = re.compile(r"\bonceflow_[a-z0-9_]+\b")
SEVERITIES = ("critical", "warning", "info")
TEMPLATE_VARIABLES = ("datasource", "namespace", "job", "app", "pod")


def promql(expr: str) -> str:
    """A Grafana expression with its variables replaced, so that promtool can parse it."""
    expr = _INTERVAL_VARIABLES.sub("5m", expr)
    return _VARIABLE.sub(".*", expr)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) of every panel target and template variable query."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            out.append((f"panel {panel.get('id')} {target.get('refId')}", target.get("expr", "")))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = _LABEL_VALUES.match(query.strip())
        expr = match["selector"] if match else query
        if expr:  # label_values(label) reads no series
            out.append((f"variable {var.get('name')}", expr))
    return out


def dashboard_problems(dashboard: dict[str, Any]) -> list[str]:
    """What makes the dashboard unusable: no uid, panels without a data source or targets, ..."""
    problems = [f"no {key}" for key in ("uid", "title", "schemaVersion") if not dashboard.get(key)]
    names = [v.get("name") for v in dashboard.get("templating", {}).get("list", [])]
    problems += [
        f"no template variable {name!r}" for name in TEMPLATE_VARIABLES if name not in names
    ]
    ids: set[int] = set()
    for panel in panels(dashboard):
        where = f"panel {panel.get('id')} ({panel.get('title')!r})"
        if panel.get("id") in ids or not isinstance(panel.get("id"), int):
            problems.append(f"{where}: id missing or not unique")
        ids.add(panel.get("id", -1))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: gridPos {grid} is not within the 24 columns")
        if panel.get("type") == "row":
            continue
        if not panel.get("title") or not panel.get("description"):
            problems.append(f"{where}: no title or description")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not the $datasource variable")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            problems.append(f"{where}: refIds missing or repeated: {refs}")
        for target in targets:
            if not target.get("expr"):
                problems.append(f"{where} {target.get('refId')}: no expr")
            for name in ("namespace", "job", "app", "pod"):
                if f'{name}=~"${name}"' not in target.get("expr", ""):
                    problems.append(f"{where} {target.get('refId')}: not filtered by ${name}")
    return problems


def dashboard_rules(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's expressions as one group of recording rules."""
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs(dashboard)):
        name = re.sub(r"\W+", "_", where).strip("_")
        rules.append({"record": f"onceflow_dashboard:{name}:{i}", "expr": promql(expr)})
    return {"groups": [{"name": "onceflow-dashboard", "rules": rules}]}


def alerts(rules: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in rules.get("groups", []):
        yield from (rule for rule in group.get("rules", []) if "alert" in rule)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def rule_problems(rules: dict[str, Any], operations_md: str) -> list[str]:
    """Alerts without severity, summary, description, or a runbook anchor in operations.md."""
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in operations_md.splitlines()
        if line.startswith("#")
    }
    problems = []
    for rule in alerts(rules):
        name = rule["alert"]
        severity = rule.get("labels", {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{name}: severity {severity!r} is not one of {SEVERITIES}")
        notes = rule.get("annotations", {})
        problems += [
            f"{name}: no {key}" for key in ("summary", "description") if not notes.get(key)
        ]
        anchor = notes.get("runbook_url", "").partition("#")[2]
        if anchor not in anchors or anchor != name.lower():
            problems.append(
                f"{name}: runbook_url anchor {anchor!r} is not a heading {name} of operations.md"
            )
    return problems


def metric_names(exprs: list[str]) -> set[str]:
    """The onceflow_* series names the expressions read (recording rule names aside)."""
    return {
        m for expr in exprs for m in _METRIC.findall(expr) if not m.startswith("onceflow_dashboard")
    }


def rendered(manifests: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rules of every PrometheusRule and the dashboards of every ConfigMap in manifests."""
    groups: list[Any] = []
    dashboards = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        if doc["kind"] == "PrometheusRule":
            groups += doc["spec"]["groups"]
        elif doc["kind"] == "ConfigMap":
            dashboards += [
                json.loads(v) for k, v in doc.get("data", {}).items() if k.endswith(".json")
            ]
    return {"groups": groups}, dashboards


def _write(path: str, rules: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(rules, fh, sort_keys=False, width=1000)


def main(argv: list[str]) -> int:
    command, source, other = argv
    with open(source) as fh:
        text = fh.read()
    if command == "dashboard":
        dashboard = json.loads(text)
        problems = dashboard_problems(dashboard)
        _write(other, dashboard_rules(dashboard))
        count = sum(1 for _ in panels(dashboard))
        summary = f"{count} panels, {len(dashboard_exprs(dashboard))} expressions"
    elif command == "rules":
        rules = yaml.safe_load(text)
        with open(other) as fh:
            problems = rule_problems(rules, fh.read())
        summary = (
            f"{sum(1 for _ in alerts(rules))} alerts with severity, summary, description, runbook"
        )
    elif command == "embedded":
        rules, dashboards = rendered(text)
        with open(f"{other}/rules/onceflow.rules.yaml") as fh:
            problems = [] if rules == yaml.safe_load(fh) else ["the rendered rules differ"]
        with open(f"{other}/dashboards/onceflow.json") as fh:
            if dashboards != [json.load(fh)]:
                problems.append("the rendered dashboard differs")
        summary = "rules and dashboard rendered as in the files"
    elif command == "rendered":
        rules, dashboards = rendered(text)
        problems = [p for d in dashboards for p in dashboard_problems(d)]
        if not rules["groups"] or not dashboards:
            problems.append("no PrometheusRule or no dashboard ConfigMap rendered")
        _write(other, rules)
        summary = f"{sum(1 for _ in alerts(rules))} alerts, {len(dashboards)} dashboard(s)"
    else:
        raise SystemExit(f"unknown command {command!r}: dashboard, rules or rendered")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
