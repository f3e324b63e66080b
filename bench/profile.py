"""Profile a worker under load with py-spy, and summarize where its time goes.

    python -m bench.profile echo-eos [--records 200000] [--bootstrap HOST:PORT] [--rate 250]
                                     [--full] [--threads]

Runs one throughput scenario (bench.scenarios) and attaches ``py-spy record --nonblocking
--format raw`` to the first worker from the backlog's release until the last record is
committed, so the profile holds the steady state only (no start-up, no idle time: py-spy drops
idle threads; ``--threads`` keeps idle samples and puts each stack under its thread, to see
whether the event loop waits). Stateful scenarios run with ``--quick``'s key count unless
``--full``. For ``restore`` it samples from the worker's start until every task is running
(``--quick`` sizes: 200k changelog records). Writes the collapsed stacks to
``bench/results/profile-<scenario>.txt`` and prints the top functions by own time and by
inclusive time, and the time per layer (aiokafka, onceflow ``app``/``state``, prometheus_client,
asyncio, ...).

    python -m bench.profile --summarize bench/results/profile-echo-eos.txt
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.env import broker
from bench.procs import Proc
from bench.restore import Changelog, restore_once
from bench.scenarios import SCENARIOS, RunContext, run_throughput

RESULTS = Path(__file__).resolve().parent / "results"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# (layer, marker): the first whose marker starts the leaf frame's file path (as py-spy shortens
# it, relative to sys.path) or, for markers ending in "/" or ".py", occurs in it.
LAYERS = [
    ("onceflow app/", "app/"),
    ("onceflow state/", "state/"),
    ("handler (bench/apps, processors/)", "bench/"),
    ("handler (bench/apps, processors/)", "processors/"),
    ("aiokafka", "aiokafka/"),
    ("kafka-python compat", "kafka/"),
    ("prometheus_client", "prometheus_client/"),
    ("sqlitedict/sqlite3", "sqlitedict.py"),
    ("sqlitedict/sqlite3", "sqlite3/"),
    ("asyncio", "asyncio/"),
    ("selectors (epoll)", "selectors.py"),
    ("thread hand-offs (threading, queue)", "threading.py"),
    ("thread hand-offs (threading, queue)", "queue.py"),
]


def _pyspy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else "py-spy"


Stop = Callable[[], Awaitable[None]]


def profiler(
    out: Path, rate: int, *, threads: bool = False
) -> Callable[[list[Proc]], Awaitable[Stop]]:
    """An ``on_release`` hook: start py-spy on the first worker, return how to stop it.
    ``threads``: idle samples too, each stack under its thread (is the event loop waiting?)."""

    async def attach(procs: list[Proc]) -> Stop:
        spy = subprocess.Popen(  # noqa: ASYNC220 - starting it is quick; it runs on its own
            [_pyspy(), "record", "--pid", str(procs[0].pid), "--format", "raw", "--nonblocking",
             "--rate", str(rate), "--output", str(out), "--duration", "3600",
             *(["--idle", "--threads"] if threads else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # let it attach before the backlog is released

        async def stop() -> None:
            spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(spy.wait, 60)

        return stop

    return attach


def _frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    file = match.group("file")
    short = "/".join(file.split("/")[-2:])
    return f"{match.group('func')} ({short})", file


def _layer(file: str) -> str:
    for name, marker in LAYERS:
        if file.startswith(marker) or f"/{marker}" in file:
            return name
    return "other (stdlib, C calls)"


def summarize(path: Path, top: int = 25) -> str:
    """Own time, inclusive time and time per layer (of the leaf frame), in % of samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        if not frames:
            continue
        total += count
        own[frames[-1][0]] += count
        layers[_layer(frames[-1][1])] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
    if not total:
        return f"{path}: no samples"

    def table(title: str, counts: Counter[str], n: int) -> list[str]:
        rows = [f"{title}", "-" * len(title)]
        rows += [f"{100 * c / total:6.1f} %  {name}" for name, c in counts.most_common(n)]
        return [*rows, ""]

    # Drop the root chain (runpy, asyncio.run, the CLI, the event loop): present in every stack.
    busy = max(inclusive.values())
    branches = Counter({k: v for k, v in inclusive.items() if v < 0.85 * busy})
    lines = [f"{path.name}: {total} samples", ""]
    lines += table("time per layer (leaf frame)", layers, 20)
    lines += table("own time (leaf frame)", own, top)
    lines += table("inclusive time (below the event loop)", branches, top)
    return "\n".join(lines)


async def _profile(args: argparse.Namespace) -> None:
    scenario = SCENARIOS[args.scenario]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-{scenario.name}.txt"
    async with broker(args.bootstrap, Path("/tmp/onceflow-bench")) as kafka:
        ctx = RunContext(
            bootstrap=kafka.bootstrap,
            broker_pid=kafka.pid,
            workdir=Path("/tmp/onceflow-bench") / time.strftime("profile-%Y%m%d-%H%M%S"),
            records=args.records,
            quick=not args.full,
            on_release=profiler(out, args.rate, threads=args.threads),
        )
        if scenario.kind == "restore":
            changelog = Changelog(ctx, scenario)
            await changelog.fill()
            result = await restore_once(changelog, 0)
            rate = result["restore_rate"]
        else:
            rate = (await run_throughput(ctx, scenario))["throughput"]
    print(f"{scenario.name}: {rate:,.0f} records/s under py-spy")
    print(summarize(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", choices=sorted(SCENARIOS))
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--summarize", type=Path, help="only summarize a collapsed-stack file")
    parser.add_argument(
        "--full", action="store_true", help="the scenario's full key count (default: --quick's)"
    )
    parser.add_argument(
        "--threads", action="store_true", help="sample idle threads too, stacks by thread"
    )
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
    elif args.scenario:
        asyncio.run(_profile(args))
    else:
        parser.error("name a scenario or --summarize FILE")


if __name__ == "__main__":
    main()
