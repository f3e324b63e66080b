"""Compare code versions on one broker, interleaved: ``python -m bench.ab``.

    python -m bench.ab --tree base=/tmp/base --tree new=. --rate 33000 --rate 6700 \\
        --tput echo-alos --tput echo-eos --repeat 3 --bootstrap 127.0.0.1:19492 --output ab.json

Each ``--tree NAME=PATH`` is a checkout of the repository (``git worktree add PATH COMMIT``,
then ``python3 scripts/typecheck_view.py`` in it): its workers run with ``PYTHONPATH`` pointing
there, the harness (this ``bench``) stays the same. Every repeat runs each tree in turn, the
throughput scenarios (``--tput``) and then the latency load at each ``--rate`` (echo,
exactly-once, ``bench.latency``), so that a shared machine's drifts fall on all trees alike;
figures move by ±20 % between runs minutes apart on the 2-core box (docs/benchmarks.md).
Prints the medians per tree; writes every run to ``--output``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

from bench.env import broker
from bench.latency import run_latency
from bench.scenarios import SCENARIOS, RunContext, checkout_pythonpath, run_throughput


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH (repeatable)")
    p.add_argument("--rate", type=float, action="append", default=[], help="latency load /s")
    p.add_argument("--tput", action="append", default=[], choices=sorted(SCENARIOS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--harness", choices=("rdkafka", "aiokafka"), default="rdkafka")
    p.add_argument("--bootstrap", default=os.environ.get("ONCEFLOW_BOOTSTRAP_SERVERS"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/onceflow-bench/ab"))
    p.add_argument("--output", type=Path, required=True)
    return p


def _trees(specs: list[str]) -> dict[str, str]:
    """NAME -> the workers' PYTHONPATH for each ``--tree NAME=PATH``."""
    trees = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--tree {spec!r}: expected NAME=PATH of a onceflow checkout")
        trees[name] = checkout_pythonpath(Path(path))
    return trees


async def _run(args: argparse.Namespace, trees: dict[str, str]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    async with broker(args.bootstrap, args.workdir) as kafka:
        ctx = RunContext(
            bootstrap=kafka.bootstrap, workdir=args.workdir, records=100_000, quick=False,
            broker_pid=kafka.pid, latency_seconds=args.latency_seconds, harness=args.harness,
        )  # fmt: skip
        for i in range(args.repeat):
            for name, path in trees.items():
                os.environ["PYTHONPATH"] = path  # the workers'
                for scenario in args.tput:
                    result = await run_throughput(ctx, SCENARIOS[scenario])
                    runs.append({"tree": name, "scenario": scenario, "repeat": i, **result,
                                 "load_average": os.getloadavg()})  # fmt: skip
                    print(f"[{i + 1}] {name} {scenario}: {result['throughput']:,.0f}/s", flush=True)
                for rate in args.rate:
                    scenario = dataclasses.replace(SCENARIOS["latency"], name="latency")
                    result = await run_latency(ctx, scenario, rate)
                    runs.append({"tree": name, "scenario": "latency", "repeat": i, **result,
                                 "load_average": os.getloadavg()})  # fmt: skip
                    ms = result["latency_ms"]
                    print(f"[{i + 1}] {name} {rate:,.0f}/s: p50 {ms['p50']:.0f} ms, "
                          f"p99 {ms['p99']:.0f} ms", flush=True)  # fmt: skip
                args.output.write_text(json.dumps({"trees": trees, "runs": runs}))
    return runs


def medians(runs: list[dict[str, Any]]) -> list[str]:
    """One line per tree and scenario (and rate): the medians over the repeats."""
    lines = []
    keys = sorted({(r["tree"], r["scenario"], r.get("offered_rate", 0.0)) for r in runs})
    for tree, scenario, rate in keys:
        rs = [r for r in runs if (r["tree"], r["scenario"], r.get("offered_rate", 0.0)) == (
            tree, scenario, rate)]  # fmt: skip

        def med(path: tuple[str, ...], rs: list[dict[str, Any]] = rs) -> float:
            values = []
            for r in rs:
                for part in path:
                    r = r.get(part, {})
                values.append(float(r) if isinstance(r, int | float) else float("nan"))
            return statistics.median(values)

        if scenario == "latency":
            lines.append(
                f"{tree} latency at {rate:,.0f}/s: p50 {med(('latency_ms', 'p50')):.0f} ms, "
                f"p99 {med(('latency_ms', 'p99')):.0f} ms; cores: workers "
                f"{med(('cpu_cores', 'workers')):.2f}, broker {med(('cpu_cores', 'broker')):.2f}, "
                f"harness {med(('cpu_cores', 'harness')):.2f}; commit "
                f"{med(('worker_commits', 'commit_ms_mean')):.1f} ms mean"
            )
        else:
            lines.append(
                f"{tree} {scenario}: {med(('throughput',)):,.0f} records/s, worker "
                f"{med(('worker_cpu_us_per_record',)):.1f} µs/record"
            )
    return lines


def main() -> None:
    args = _parser().parse_args()
    runs = asyncio.run(_run(args, _trees(args.tree)))
    print("\n".join(medians(runs)))


if __name__ == "__main__":
    main()
