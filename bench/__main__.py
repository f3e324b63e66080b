"""``python -m bench``: run the benchmarks, print the table, write ``bench/results/<time>.json``.

    python -m bench                    # every scenario, 3 repeats, own broker on free ports
    python -m bench --quick            # ~3-minute smoke: small sizes, 1 repeat
    python -m bench --only echo-eos --only latency --repeat 5 --bootstrap 127.0.0.1:29092
    python -m bench --only failover --only failover-standby --only scale-out --repeat 1
    python -m bench --peers --repeat 1   # faust-streaming and Quix Streams beside onceflow
    python -m bench --scaling --repeat 1 # 1/2/3 workers, 6 -> 12 partitions
    python -m bench --sql --repeat 3     # SQL sink into PostgreSQL vs. bare asyncpg
    python -m bench --only sum-100k --base /work/wt-base   # and the same on another checkout

``raw-alos`` always runs too (every figure is reported as a ratio to it, measured in the same
run), and ``latency*`` brings ``echo-eos`` along: ``latency`` offers 50 % of echo-eos's median
(the issue's definition), ``latency-25`` and ``latency-10`` 25 % and 10 %.
Repeats go round-robin over the scenarios, so slow drifts of a shared machine spread evenly.
``sum-1m`` runs once whatever ``--repeat`` says (it takes the longest).
The HA scenarios (``failover``, ``failover-standby``, ``scale-out``) run only when named; they
share one filled 5M-record changelog (``bench.failover``).
``--peers`` adds the peer comparison (``bench.peers``: pinned virtualenvs of faust-streaming and
Quix Streams, created once under ~/.cache/onceflow/bench-peers/) and ``--scaling`` the scaling
runs; with ``--only``, only what is named, plus the baselines the named scenarios are compared
to. Peers run only when named or with ``--peers``. ``--base DIR`` runs every selected onceflow
throughput and restore scenario a second time as ``<name>.base`` on the onceflow of another
checkout (``DIR``, its ``build/typecheck`` view first on the workers' PYTHONPATH): two versions
of the code in one run, round-robin, on the same broker — the only comparison this noisy machine
allows.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.env import broker, machine
from bench.failover import run_failover
from bench.latency import run_latency
from bench.peers import PINS, ensure, peer_info
from bench.report import format_table, summarize, targets
from bench.restore import Changelog, restore_once
from bench.scale_out import run_scale_out
from bench.scenarios import SCENARIOS, RunContext, Scenario, checkout_pythonpath, run_throughput

RESULTS = Path(__file__).resolve().parent / "results"
ONCE = {"sum-1m"}
Runs = dict[str, list[dict[str, Any]]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (~4 min)")
    parser.add_argument("--repeat", type=int, help="runs per scenario, median reported (3)")
    parser.add_argument("--records", type=int, help="records per throughput run (100000)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run this scenario (repeatable)"
    )
    parser.add_argument(
        "--peers", action="store_true", help="the peer comparison: faust-streaming, Quix Streams"
    )
    parser.add_argument("--scaling", action="store_true", help="1/2/3 workers, 12 partitions")
    parser.add_argument(
        "--sql", action="store_true", help="only the SQL sink into PostgreSQL (bench.sql_sink)"
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("ONCEFLOW_BOOTSTRAP_SERVERS"),
        help="use this broker (default $ONCEFLOW_BOOTSTRAP_SERVERS, as `make bench` sets it; "
        "else start one on free ports and stop it after)",
    )
    parser.add_argument(
        "--latency-rate", type=float, help="the 'latency' load (default 50 %% of echo-eos)"
    )
    parser.add_argument("--latency-seconds", type=float, help="latency run length (30; quick 10)")
    parser.add_argument(
        "--harness",
        choices=("rdkafka", "aiokafka"),
        default="rdkafka",
        help="latency load generator and timing consumer: librdkafka (confluent-kafka, a small "
        "fraction of a core) or the first, aiokafka one (over half a core at 50 %% load)",
    )
    parser.add_argument(
        "--ha-rate", type=float, default=2_000.0, help="records/s offered in the HA scenarios"
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="also run each onceflow throughput and restore scenario on this checkout's code "
        "(<name>.base)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onceflow-bench"))
    parser.add_argument("--output", type=Path, help="JSON file (bench/results/<time>.json)")
    return parser


def _selection(
    only: list[str] | None, quick: bool, suites: frozenset[str] = frozenset()
) -> list[str]:
    """The scenarios to run, in declaration order. Without ``--only``: the default set (no
    experiments, no suites), or only the suites' scenarios when a suite flag is given."""
    # --quick keeps one latency load: the smoke is about every code path, not the curve.
    default = [
        name
        for name, s in SCENARIOS.items()
        if not s.experiment
        and s.suite is None
        and not (quick and s.kind == "latency" and s.load != 0.5)
    ]
    chosen = [name for name, s in SCENARIOS.items() if s.suite in suites]
    if "scaling" in suites:  # echo-eos-2w is in the default run and in the scaling suite
        chosen += [name for name, s in SCENARIOS.items() if s.suite is None and s.baseline]
    wanted = set(only or []) | set(chosen)
    if not wanted:
        wanted = set(default)
    wanted.add("raw-alos")
    if any(SCENARIOS[name].kind == "latency" for name in wanted):
        wanted.add("echo-eos")
    wanted |= {b for name in wanted if (b := SCENARIOS[name].baseline) is not None}
    return [name for name in SCENARIOS if name in wanted]  # declaration order


def _with_base(names: list[str], base: Path) -> list[str]:
    """``names`` with ``<name>.base`` after each onceflow throughput and restore scenario,
    registered in ``SCENARIOS``: the same scenario on the code of the checkout ``base``."""
    path = checkout_pythonpath(base)
    out = []
    for name in names:
        out.append(name)
        scenario = SCENARIOS[name]
        if scenario.kind in ("throughput", "restore") and scenario.module is not None:
            SCENARIOS[f"{name}.base"] = dataclasses.replace(
                scenario,
                name=f"{name}.base",
                title=f"{scenario.title}, on {base}",
                env={**scenario.env, "PYTHONPATH": path},
                experiment=True,
            )
            out.append(f"{name}.base")
    return out


class Changelogs:
    """Filled changelogs, one per app and size: the restore repeats share one, the HA runs
    another."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._filled: dict[tuple[str | None, int], Changelog] = {}

    async def of(self, scenario: Scenario) -> Changelog:
        key = (scenario.module, self.ctx.keys_of(scenario))
        if key not in self._filled:
            name = "restore" if scenario.kind == "restore" else "ha"
            changelog = self._filled[key] = Changelog(self.ctx, scenario, name)
            print(f"    filling {changelog.records:,} changelog records ...", flush=True)
            await changelog.fill()
            print(f"    filled in {changelog.fill_s:.0f}s", flush=True)
        return self._filled[key]


async def _run_ha(ctx: RunContext, scenario: Scenario, changelogs: Changelogs) -> dict[str, Any]:
    store = await changelogs.of(scenario)
    if scenario.kind == "failover":
        result = await run_failover(ctx, scenario, store)
        print(f"    tasks of the killed worker ran again after {result['resume_s']:.1f}s; p99 "
              f"{result['latency_before_ms'].get('p99', math.nan):.0f} ms before, "
              f"{result['latency_after_ms'].get('p99', math.nan):.0f} ms after; restored "
              f"{result['restored_records']:,.0f} records ({result['restored_fraction']:.2%} of "
              "the store)", flush=True)  # fmt: skip
    else:
        result = await run_scale_out(ctx, scenario, store)
        print(f"    longest task stop {result['max_stop_s']:.1f}s, full restores at new members "
              f"{len(result['full_restores'])}, balanced {result['balanced']} after "
              f"{result['balanced_after_s']}s", flush=True)  # fmt: skip
    return result


async def _run_all(
    args: argparse.Namespace, ctx: RunContext, names: list[str], save: Callable[[Runs], None]
) -> Runs:
    runs: Runs = {name: [] for name in names}
    repeat = args.repeat or (1 if args.quick else 3)
    changelogs = Changelogs(ctx)
    for i in range(repeat):
        for name in names:
            scenario = SCENARIOS[name]
            if (name in ONCE and i > 0) or scenario.kind == "latency":
                continue
            print(f"[{i + 1}/{repeat}] {name}: {scenario.title} ...", flush=True)
            if scenario.kind == "restore":
                result = await restore_once(await changelogs.of(scenario), i, scenario)
                print(f"    {result['restore_rate']:,.0f} records/s restored", flush=True)
            elif scenario.kind in ("failover", "scale-out"):
                result = await _run_ha(ctx, scenario, changelogs)
            else:
                result = await run_throughput(ctx, scenario)
                print(
                    f"    {result['throughput']:,.0f} records/s, "
                    f"{result['worker_cpu_us_per_record']:.1f} us CPU/record, "
                    f"event loop busy {result.get('loop_cpu_util', math.nan):.0%}, "
                    f"RSS {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            runs[name].append({**result, "repeat": i, "load_average": os.getloadavg()})
            save(runs)
    latency = [name for name in names if SCENARIOS[name].kind == "latency"]
    max_rate = 0.0
    if latency:
        max_rate = args.latency_rate / 0.5 if args.latency_rate else 0.0
        max_rate = max_rate or float(summarize(runs)["echo-eos"]["throughput"])
    for i in range(repeat):
        for name in latency:
            rate = SCENARIOS[name].load * max_rate
            print(f"[{i + 1}/{repeat}] {name} at {rate:,.0f} records/s ...", flush=True)
            result = await run_latency(ctx, SCENARIOS[name], rate)
            print(f"    p50 {result['latency_ms']['p50']:.0f} ms, p99 "
                  f"{result['latency_ms']['p99']:.0f} ms", flush=True)  # fmt: skip
            runs[name].append({**result, "repeat": i, "load_average": os.getloadavg()})
            save(runs)
    return runs


def _peer_settings(names: list[str]) -> dict[str, dict[str, Any]]:
    """How each scenario of the peer suite was configured, for the report."""
    out = {}
    for name in names:
        s = SCENARIOS[name]
        if s.suite == "peers":
            store = PINS[s.peer].store if s.peer else "SQLite (changelog topic)"
            guarantee = {"faust": "exactly_once", "quix": "exactly-once"}.get(s.peer or "", "")
            out[name] = {
                "framework": s.peer or "onceflow",
                "partitions": s.partitions,
                "commit_interval_ms": s.commit_interval_ms,
                "store": store,
                "processing_guarantee": guarantee or s.guarantee,
                "keys": s.keys,
            }
    return out


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(result), indent=1))


async def _main(args: argparse.Namespace) -> Path:
    suites = frozenset(s for s in ("peers", "scaling") if getattr(args, s))
    names = _selection(args.only, args.quick, suites)
    if args.base is not None:
        names = _with_base(names, args.base)
    peers = sorted({p for name in names if (p := SCENARIOS[name].peer) is not None})
    for peer in peers:  # before the broker and the clock: the first time, this installs
        ensure(peer)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.workdir / stamp
    out = args.output or RESULTS / f"{stamp}.json"
    started = time.monotonic()
    async with broker(args.bootstrap, args.workdir) as kafka:
        info = machine(kafka)

        def save(partial: Runs) -> None:  # after every run: a crash keeps what was measured
            _write(out, {"machine": info, "partial": True, "runs": partial})

        print(f"machine: {info}", flush=True)
        ctx = RunContext(
            bootstrap=kafka.bootstrap,
            workdir=workdir,
            records=args.records or (10_000 if args.quick else 100_000),
            quick=args.quick,
            broker_pid=kafka.pid,
            latency_rate=args.latency_rate,
            latency_seconds=args.latency_seconds or (10.0 if args.quick else 30.0),
            harness=args.harness,
            ha_rate=args.ha_rate,
        )
        runs = await _run_all(args, ctx, names, save)
    summary = summarize(runs)
    target_rows = targets(summary)
    info["load_average_at_end"] = os.getloadavg()
    info["total_minutes"] = (time.monotonic() - started) / 60
    baselines = {name: b for name in names if (b := SCENARIOS[name].baseline)}
    result = {
        "machine": info,
        "settings": {"records": ctx.records, "quick": args.quick, "partitions": 6,
                     "value_bytes": 100, "repeat": args.repeat or (1 if args.quick else 3),
                     "latency_harness": args.harness},
        "scenarios": {name: SCENARIOS[name].title for name in names},
        "baselines": baselines,
        "peers": {peer: peer_info(peer) for peer in peers},
        "peer_settings": _peer_settings(names),
        "summary": summary,
        "targets": target_rows,
        "runs": runs,
    }  # fmt: skip
    _write(out, result)
    print()
    print(format_table(summary, target_rows, baselines))
    print(f"\nwrote {out} ({info['total_minutes']:.1f} min)")
    return out


def main() -> None:
    # The input producer's retries right after topic creation (NotLeaderForPartition) are noise.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    args = _parser().parse_args()
    if args.sql:
        from bench.sql_sink import main as sql_main

        sql_main(args.bootstrap, args.repeat or 3, args.records or 50_000, args.workdir)
        return
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
