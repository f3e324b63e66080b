"""Chart a benchmark result: ``python -m bench.chart [RESULT.json] [-o docs/bench.png]
[--latency OTHER.json]``.

Three panels: throughput per scenario (labelled with its ratio to raw-alos; the peers of
``--peers`` in green, with their verification), CPU per record (worker and broker), and the
end-to-end latency distribution at each offered load.
Without an argument it charts the newest file in bench/results/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display on servers
from matplotlib.ticker import ScalarFormatter

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "bench.png"


def _newest() -> Path:
    files = sorted(RESULTS.glob("*.json"), key=lambda p: p.stat().st_mtime)
    files = [f for f in files if not f.name.startswith("profile")]
    if not files:
        raise SystemExit("no results in bench/results/: run python -m bench first")
    return files[-1]


def _color(name: str) -> str:
    if name.startswith("raw"):
        return "#888888"
    return "#2ca02c" if name.startswith("peer-") else "#1f77b4"


def _throughput(ax: Any, summary: dict[str, Any]) -> None:
    rows = [(name, s) for name, s in summary.items() if "worker_cpu_us_per_record" in s]
    names = [name for name, _ in rows]
    rates = [s["throughput"] for _, s in rows]
    bars = ax.barh(names, rates, color=[_color(name) for name in names])
    for bar, (_, s) in zip(bars, rows, strict=True):
        unverified = "" if s["verified"] else "  NOT verified"
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {s['throughput']:,.0f}  ({s['ratio']:.2f}x raw-alos){unverified}",
            va="center",
            fontsize=8,
        )
    ax.invert_yaxis()
    ax.set_xlabel("records/s (median; grey: bare aiokafka loops, green: peers)")
    ax.set_title("Throughput, 100-byte records, 6 partitions unless named (-12p)")
    ax.set_xlim(0, max(rates) * 1.6)


def _cpu(ax: Any, summary: dict[str, Any]) -> None:
    rows = [(name, s) for name, s in summary.items() if "worker_cpu_us_per_record" in s]
    names = [name for name, _ in rows]
    worker = [s["worker_cpu_us_per_record"] for _, s in rows]
    broker = [s.get("broker_cpu_us_per_record") or 0.0 for _, s in rows]
    ax.barh(names, worker, label="worker process", color="#1f77b4")
    ax.barh(names, broker, left=worker, label="broker", color="#ff7f0e")
    ax.invert_yaxis()
    ax.set_xlabel("CPU microseconds per record (median)")
    ax.set_title("CPU cost per record")
    ax.legend(loc="lower right", fontsize=8)


def _latency(ax: Any, result: dict[str, Any]) -> None:
    """One percentile curve per latency scenario: its run with the median p99."""
    names = [n for n, s in result["summary"].items() if "latency_p99_ms" in s]
    if not names:
        ax.set_axis_off()
        ax.set_title("latency: not measured")
        return
    for name in names:
        runs = sorted(result["runs"][name], key=lambda r: r["latency_ms"]["p99"])
        run = runs[len(runs) // 2]
        points = sorted((ms, float(q[1:])) for q, ms in run["histogram_ms"].items())
        ax.plot(
            [ms for ms, _ in points],
            [q for _, q in points],
            label=f"{name}: {run['offered_rate']:,.0f} rec/s, p50 {run['latency_ms']['p50']:,.0f}"
            f" ms, p99 {run['latency_ms']['p99']:,.0f} ms",
        )
    ax.axvline(300, color="red", linestyle="--", linewidth=1, label="target p99 300 ms")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("end-to-end latency, ms, log scale (produce -> read_committed consume)")
    ax.set_ylabel("percentile")
    ax.set_title("Latency, echo exactly_once, commit every 100 ms (median run per load)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")


def chart(result_path: Path, out: Path, latency_path: Path | None = None) -> Path:
    """Chart ``result_path``; the latency panel from ``latency_path`` when given."""
    result = json.loads(result_path.read_text())
    summary = result["summary"]
    latency = json.loads(latency_path.read_text()) if latency_path else result
    # A run without latency scenarios (--peers, --scaling): two panels, no empty third.
    panels = 3 if any("latency_p99_ms" in s for s in latency["summary"].values()) else 2
    fig, axes = plt.subplots(panels, 1, figsize=(10, 4.3 * panels + 0.1))
    _throughput(axes[0], summary)
    _cpu(axes[1], summary)
    if panels == 3:
        _latency(axes[2], latency)
    m = result["machine"]
    fig.suptitle(
        f"onceflow benchmarks - {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"Kafka {m['kafka']}, aiokafka {m['aiokafka']}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", nargs="?", type=Path, help="a bench/results/*.json file")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--latency", type=Path, help="take the latency panel from this result")
    args = parser.parse_args()
    print(chart(args.result or _newest(), args.output, args.latency))


if __name__ == "__main__":
    main()
