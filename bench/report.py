"""Summaries of the runs: medians, ratios to ``raw-alos`` of the same run, the issue's targets,
the printed table; ``python -m bench.report RESULT.json`` prints them as Markdown."""

from __future__ import annotations

import math
from statistics import median
from typing import Any

__all__ = [
    "format_table",
    "peer_markdown",
    "relative_rows",
    "scaling_markdown",
    "summarize",
    "targets",
]

BASELINE = "raw-alos"


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in runs if key in r and not math.isnan(float(r[key]))]
    return median(values) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per scenario: medians of its repeats and ratios to raw-alos's medians.

    ``cpu_ratio`` is raw-alos's worker CPU per record over the scenario's: the throughput ratio
    one core would give with nothing else on the machine (the wall-clock ratio on a shared,
    CPU-starved machine also carries the scheduler's noise).
    """
    base = runs.get(BASELINE, [])
    base_rate = _median(base, "throughput")
    base_cpu = _median(base, "worker_cpu_us_per_record")
    base_rss = max((r["peak_rss_mb"] for r in base), default=float("nan"))
    out: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        if not rs:
            continue
        rss = max(r["peak_rss_mb"] for r in rs)
        row: dict[str, Any] = {
            "repeats": len(rs),
            "peak_rss_mb": rss,
            "rss_ratio": _ratio(rss, base_rss),
            "verified": all(r.get("verified", True) for r in rs),
        }
        if "throughput" in rs[0]:
            rate = _median(rs, "throughput")
            cpu = _median(rs, "worker_cpu_us_per_record")
            row |= {
                "records": rs[0]["records"],
                "keys": rs[0].get("keys"),
                "workers": rs[0].get("workers", 1),
                "partitions": rs[0].get("partitions", 6),
                "verify_note": "; ".join(
                    sorted({r["verify_note"] for r in rs if r.get("verify_note")})
                ),
                "throughput": rate,
                "ratio": _ratio(rate, base_rate),
                "seconds": _median(rs, "seconds"),
                "worker_cpu_us_per_record": cpu,
                "cpu_ratio": _ratio(base_cpu, cpu),
                "broker_cpu_us_per_record": _median(rs, "broker_cpu_us_per_record"),
                "worker_cpu_util": _median(rs, "worker_cpu_util"),
            }
        elif "latency_ms" in rs[0]:
            for q in ("p50", "p99", "p99.9", "max"):
                row[f"latency_{q}_ms"] = median(r["latency_ms"][q] for r in rs)
            rate = rs[0]["offered_rate"]
            row |= {"offered_rate": rate, "ratio": _ratio(rate, base_rate)}
        elif "resume_s" in rs[0]:
            row |= _failover_row(rs)
        elif "max_stop_s" in rs[0]:
            row |= {
                "max_stop_s": _median(rs, "max_stop_s"),
                "full_restores": max(len(r["full_restores"]) for r in rs),
                "balanced": all(r["balanced"] for r in rs),
                "balanced_after_s": _median(rs, "balanced_after_s"),
            }
        elif "restore_rate" in rs[0]:
            rate = _median(rs, "restore_rate")
            row |= {
                "records": rs[0]["records"],
                "restore_rate": rate,
                "ratio": _ratio(rate, base_rate),
                "ready_s": _median(rs, "ready_s"),
                "ready_rate": _median(rs, "ready_rate"),
            }
        out[name] = row
    standby, none = out.get("failover-standby"), out.get("failover")
    if standby and none:
        standby["resume_ratio_to_no_standby"] = _ratio(standby["resume_s"], none["resume_s"])
        standby["restored_ratio_to_no_standby"] = _ratio(
            standby["restored_records"], none["restored_records"]
        )
    return out


def _failover_row(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the failover figures; the target's bound is that of the runs' session timeout."""
    return {
        "standby_replicas": rs[0]["standby_replicas"],
        "resume_s": _median(rs, "resume_s"),
        "resume_target_s": rs[0]["resume_target_s"],
        "latency_p99_before_ms": median(r["latency_before_ms"]["p99"] for r in rs),
        "latency_p99_after_ms": median(r["latency_after_ms"]["p99"] for r in rs),
        "latency_max_after_ms": median(r["latency_after_ms"]["max"] for r in rs),
        "restored_records": _median(rs, "restored_records"),
        "restored_fraction": _median(rs, "restored_fraction"),
        "store_records": rs[0]["store_records"],
    }


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value (wall clock and, where it applies, the
    CPU-per-record equivalent) and whether it is met."""

    def get(name: str, key: str) -> float:
        return float(summary.get(name, {}).get(key, float("nan")))

    rows = [
        ("echo EOS >= 0.6 x raw-alos", get("echo-eos", "ratio"), get("echo-eos", "cpu_ratio"),
         0.6, ">="),
        ("windowed_count EOS >= 0.5 x raw-alos", get("windowed-eos", "ratio"),
         get("windowed-eos", "cpu_ratio"), 0.5, ">="),
        ("windowed_count, 200k keys >= 0.6 x raw-alos", get("windowed-200k", "ratio"),
         get("windowed-200k", "cpu_ratio"), 0.6, ">="),
        ("sum/count, 100k keys >= 0.4 x raw-alos", get("sum-100k", "ratio"),
         get("sum-100k", "cpu_ratio"), 0.4, ">="),
        ("echo EOS >= 0.9 x echo ALOS", _ratio(get("echo-eos", "throughput"),
         get("echo-alos", "throughput")), _ratio(get("echo-alos", "worker_cpu_us_per_record"),
         get("echo-eos", "worker_cpu_us_per_record")), 0.9, ">="),
        ("p99 <= 150 ms at 50 % load", get("latency", "latency_p99_ms"), float("nan"), 150, "<="),
        ("restore >= 300k records/s", get("restore", "restore_rate"), float("nan"), 300_000, ">="),
        ("RSS with 1M keys <= 300 MB", get("sum-1m", "peak_rss_mb"), float("nan"), 300, "<="),
        ("failover, 1 standby: resume <= 2 x session + 2 s", get("failover-standby", "resume_s"),
         float("nan"), get("failover-standby", "resume_target_s"), "<="),
        ("failover, 1 standby: restored < 1 % of store", 100 * get("failover-standby",
         "restored_fraction"), float("nan"), 1.0, "<"),
        ("scale-out: no task stops > 5 s", get("scale-out", "max_stop_s"), float("nan"), 5.0,
         "<="),
        ("scale-out: ends balanced (1 = yes)", get("scale-out", "balanced"), float("nan"), 1.0,
         ">="),
    ]  # fmt: skip
    out = []
    for label, value, cpu_value, goal, op in rows:
        met = {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]
        cpu_met = cpu_value >= goal if not math.isnan(cpu_value) else None
        out.append(
            {"target": label, "value": value, "cpu_equivalent": cpu_value, "goal": goal,
             "met": None if math.isnan(value) else met, "cpu_met": cpu_met}
        )  # fmt: skip
    return out


def _f(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def format_table(
    summary: dict[str, dict[str, Any]],
    target_rows: list[dict[str, Any]],
    baselines: dict[str, str] | None = None,
) -> str:
    head = (
        f"{'scenario':<15} {'records':>9} {'rec/s':>9} {'x raw':>6} {'cpu us/rec':>10} "
        f"{'x raw':>6} {'broker us':>9} {'RSS MB':>7} {'x raw':>6} {'s':>7} {'ok':>3}"
    )
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        rate = s.get("throughput", s.get("restore_rate", s.get("offered_rate")))
        seconds = s.get("seconds", s.get("ready_s"))
        lines.append(
            f"{name:<15} {_f(s.get('records'), ',d'):>9} {_f(rate, ',.0f'):>9} "
            f"{_f(s.get('ratio'), '.2f'):>6} {_f(s.get('worker_cpu_us_per_record'), '.1f'):>10} "
            f"{_f(s.get('cpu_ratio'), '.2f'):>6} {_f(s.get('broker_cpu_us_per_record'), '.1f'):>9} "
            f"{_f(s['peak_rss_mb'], '.0f'):>7} {_f(s['rss_ratio'], '.2f'):>6} "
            f"{_f(seconds, '.1f'):>7} {'yes' if s['verified'] else 'NO':>3}"
        )
    for name, s in summary.items():
        if "latency_p99_ms" in s:
            lines.append(
                f"{name}: at {s['offered_rate']:.0f} records/s (EOS, commit 100 ms): p50 "
                f"{s['latency_p50_ms']:.0f} ms, p99 {s['latency_p99_ms']:.0f} ms, p99.9 "
                f"{s['latency_p99.9_ms']:.0f} ms, max {s['latency_max_ms']:.0f} ms"
            )
    lines += _ha_lines(summary)
    for r in relative_rows(summary, baselines or {}):
        note = summary[r["scenario"]].get("verify_note")
        lines.append(
            f"{r['scenario']}: {r['ratio']:.2f}x {r['baseline']} (CPU per record "
            f"{r['cpu_ratio']:.2f}x){'; NOT verified: ' + note if note else ''}"
        )
    lines.append("\ntargets (wall clock | CPU-per-record equivalent):")
    for t in target_rows:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        cpu = "" if t["cpu_met"] is None else (
            f" | {t['cpu_equivalent']:.2f} {'met' if t['cpu_met'] else 'NOT met'}"
        )  # fmt: skip
        lines.append(f"  {t['target']:<40} {_f(t['value'], ',.2f'):>10} {verdict}{cpu}")
    return "\n".join(lines)


def _ha_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, s in summary.items():
        if "resume_s" in s:
            lines.append(
                f"{name}: {s['standby_replicas']} standby, killed worker's tasks ran again after "
                f"{s['resume_s']:.1f} s (target {s['resume_target_s']:.0f}), p99 "
                f"{s['latency_p99_before_ms']:.0f} ms before / {s['latency_p99_after_ms']:.0f} ms "
                f"after, restored {s['restored_records']:,.0f} records "
                f"({s['restored_fraction']:.2%} of {s['store_records']:,})"
            )
        elif "max_stop_s" in s:
            lines.append(
                f"{name}: longest task stop {s['max_stop_s']:.1f} s, full restores at new "
                f"members {s['full_restores']}, balanced {s['balanced']} "
                f"(after {_f(s['balanced_after_s'], '.0f')} s)"
            )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The summary of a result file as Markdown tables (for docs/benchmarks.md)."""
    summary = result["summary"]
    rows = [
        "| scenario | records | records/s | x raw-alos | worker CPU us/rec | CPU x raw-alos "
        "| broker CPU us/rec | peak RSS MB | RSS x raw-alos | repeats | verified |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name, s in summary.items():
        rate = s.get("throughput", s.get("restore_rate", s.get("offered_rate")))
        rows.append(
            f"| {name} | {_f(s.get('records'), ',d')} | {_f(rate, ',.0f')} "
            f"| {_f(s.get('ratio'), '.2f')} | {_f(s.get('worker_cpu_us_per_record'), '.0f')} "
            f"| {_f(s.get('cpu_ratio'), '.2f')} | {_f(s.get('broker_cpu_us_per_record'), '.0f')} "
            f"| {_f(s['peak_rss_mb'], '.0f')} | {_f(s['rss_ratio'], '.2f')} | {s['repeats']} "
            f"| {'yes' if s['verified'] else 'NO'} |"
        )
    ha = _ha_lines(summary)
    rows += [""] + [f"* {line}" for line in ha] if ha else []
    for title, section in (("Scaling", scaling_markdown(result)), ("Peers", peer_markdown(result))):
        rows += ["", f"{title}:", "", section] if section else []
    rows += ["", "| target | measured | CPU-per-record equivalent | met |", "|---|--:|--:|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        rows.append(
            f"| {t['target']} | {_f(t['value'], ',.2f')} | {_f(t['cpu_equivalent'], '.2f')} "
            f"| {met} |"
        )
    return "\n".join(rows)


def relative_rows(
    summary: dict[str, dict[str, Any]], baselines: dict[str, str]
) -> list[dict[str, Any]]:
    """Each scenario that has a baseline (scaling: its one-worker, 6-partition run; a peer:
    onceflow's run of the same app and keys) against it: throughput and CPU-per-record ratios."""
    rows = []
    for name, base in baselines.items():
        s, b = summary.get(name), summary.get(base)
        if not s or not b or "throughput" not in s:
            continue
        rows.append({
            "scenario": name, "baseline": base,
            "ratio": _ratio(s["throughput"], b["throughput"]),
            "cpu_ratio": _ratio(b["worker_cpu_us_per_record"], s["worker_cpu_us_per_record"]),
        })  # fmt: skip
    return rows


def _relative(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = relative_rows(result["summary"], result.get("baselines", {}))
    return {r["scenario"]: r for r in rows}


def peer_markdown(result: dict[str, Any]) -> str:
    """The peer comparison: each framework's windowed count, with versions and settings."""
    settings: dict[str, dict[str, Any]] = result.get("peer_settings", {})
    if not settings:
        return ""
    peers, summary, rel = result.get("peers", {}), result["summary"], _relative(result)
    rows = [
        "| scenario | framework | keys | records | records/s | x raw-alos | x onceflow "
        "| worker CPU us/rec | broker CPU us/rec | peak RSS MB | verified | store |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for name, conf in settings.items():
        s = summary.get(name)
        if s is None:
            continue
        framework = conf["framework"]
        if framework in peers:
            framework = f"{peers[framework]['package']} {peers[framework]['version']}"
        ok = "yes" if s["verified"] else f"**no**: {s.get('verify_note') or 'see the run'}"
        vs = rel[name]["ratio"] if name in rel else 1.0
        rows.append(
            f"| {name} | {framework} | {_f(conf['keys'], ',d')} | {_f(s.get('records'), ',d')} "
            f"| {_f(s.get('throughput'), ',.0f')} | {_f(s.get('ratio'), '.2f')} | {vs:.2f} "
            f"| {_f(s.get('worker_cpu_us_per_record'), '.0f')} "
            f"| {_f(s.get('broker_cpu_us_per_record'), '.0f')} | {_f(s['peak_rss_mb'], '.0f')} "
            f"| {ok} | {conf['store']} |"
        )
    first = next(iter(settings.values()))
    rows.append(
        f"\nAll: {first['partitions']} partitions, exactly-once "
        f"({', '.join(sorted({c['processing_guarantee'] for c in settings.values()}))} "
        "as each names it), "
        f"commit interval {first['commit_interval_ms']} ms, one process each."
    )
    for info in peers.values():
        rows.append(f"* {info['package']} {info['version']}: {info['commit_setting']}")
    return "\n".join(rows)


def scaling_markdown(result: dict[str, Any]) -> str:
    """Workers and partitions against the one-worker, 6-partition run of the same app."""
    rel = _relative(result)
    summary = result["summary"]
    peers = result.get("peer_settings", {})
    bases = sorted({r["baseline"] for name, r in rel.items() if name not in peers})
    rows = [
        "| scenario | workers | partitions | records/s | x raw-alos | x 1 worker, 6 partitions "
        "| worker CPU us/rec | CPU x 1 worker | workers' CPU, cores | verified |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for base in bases:
        for name in [base] + [n for n, r in rel.items() if r["baseline"] == base]:
            s = summary[name]
            r = rel.get(name, {"ratio": 1.0, "cpu_ratio": 1.0})
            rows.append(
                f"| {name} | {s.get('workers', 1)} | {s.get('partitions', 6)} "
                f"| {_f(s['throughput'], ',.0f')} | {_f(s['ratio'], '.2f')} "
                f"| {_f(r['ratio'], '.2f')} | {_f(s['worker_cpu_us_per_record'], '.1f')} "
                f"| {_f(r['cpu_ratio'], '.2f')} | {_f(s.get('worker_cpu_util'), '.2f')} "
                f"| {'yes' if s['verified'] else 'NO'} |"
            )
    return "\n".join(rows) if bases else ""


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    loaded = json.loads(Path(sys.argv[1]).read_text())
    if "runs" in loaded:  # the summary as this version computes it (older files lack columns)
        loaded["summary"] = summarize(loaded["runs"])
    print(markdown(loaded))
