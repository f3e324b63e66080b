"""Several onceflow workers of one app, as a deployment runs them: each with its own state
directory and HTTP port. Start them, kill one with SIGKILL, read each one's log from a mark on,
scrape their metrics.

Figures come from the logs (``assigned tasks ...``, ``restored <store> partition N: X records
from offset Y in Zs``) and from ``/metrics`` (the standby gauges).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bench.kafka_io import unique
from bench.procs import Proc, onceflow_worker
from bench.scenarios import RunContext, Scenario, worker_env

__all__ = [
    "Fleet",
    "Member",
    "Restored",
    "Started",
    "assignments",
    "first_assignment_at",
    "restored_lines",
    "started_lines",
]

_ASSIGNED = re.compile(r"assigned tasks (.*)$")
_STARTED = re.compile(
    r"task (?P<task>\S+) running \(stream time -?\d+; fenced in (?P<f>[\d.]+)s, offsets in "
    r"(?P<o>[\d.]+)s, stores in (?P<s>[\d.]+)s\)"
)
_TIME = "%Y-%m-%d %H:%M:%S,%f"  # the text log format's timestamp (local time)
_RESTORED = re.compile(
    r"restored (?P<store>\S+) partition (?P<p>\d+): (?P<n>\d+) records from offset (?P<o>\d+) "
    r"in (?P<s>[\d.]+)s"
)


@dataclass(frozen=True)
class Restored:
    """One ``restored ...`` log line."""

    store: str
    partition: int
    records: int
    offset: int
    seconds: float


def restored_lines(log: str) -> list[Restored]:
    """Every restore a worker logged in ``log``."""
    return [
        Restored(m["store"], int(m["p"]), int(m["n"]), int(m["o"]), float(m["s"]))
        for line in log.splitlines()
        if (m := _RESTORED.search(line))
    ]


@dataclass(frozen=True)
class Started:
    """One ``task T running (...; fenced in F s, offsets in O s, stores in S s)`` log line."""

    at: float  # wall clock
    task: str
    fenced_s: float
    offsets_s: float
    stores_s: float


def _timestamp(line: str) -> float:
    return datetime.strptime(line[:23], _TIME).timestamp()


def started_lines(log: str) -> list[Started]:
    """Every task start a worker logged in ``log``, with how long its steps took."""
    return [
        Started(_timestamp(line), m["task"], float(m["f"]), float(m["o"]), float(m["s"]))
        for line in log.splitlines()
        if (m := _STARTED.search(line))
    ]


def first_assignment_at(log: str) -> float | None:
    """When the first ``assigned tasks`` line of ``log`` was written (wall clock)."""
    return next((_timestamp(line) for line in log.splitlines() if _ASSIGNED.search(line)), None)


def assignments(log: str) -> list[list[str]]:
    """Each ``assigned tasks`` line of ``log``, in order, as task ids (``0_3``)."""
    out = []
    for line in log.splitlines():
        if m := _ASSIGNED.search(line):
            out.append(sorted(t.strip() for t in m.group(1).split(",") if "_" in t))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    """One worker of the fleet."""

    index: int
    proc: Proc
    port: int
    state_dir: Path
    killed_at: float | None = None  # wall clock

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        """A position in the log: ``log_since`` reads what comes after it."""
        return self.proc.log_path.stat().st_size if self.proc.log_path.exists() else 0

    def log_since(self, mark: int = 0) -> str:
        with self.proc.log_path.open("rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def tasks(self) -> list[str]:
        """Its active tasks, from its latest ``assigned tasks`` line."""
        found = assignments(self.log_since())
        return found[-1] if found else []

    def kill(self) -> float:
        """SIGKILL, as a crashed pod: no leave-group, no commit. Returns the wall-clock time."""
        assert self.proc.popen is not None
        self.proc.sample_rss()
        self.killed_at = time.time()
        self.proc.popen.send_signal(signal.SIGKILL)
        self.proc.popen.wait(10)
        return self.killed_at

    async def metrics(self, client: httpx.AsyncClient) -> list[Sample]:
        """Its ``/metrics`` samples; none when the worker does not answer."""
        try:
            response = await client.get(f"{self.url}/metrics", timeout=5)
        except httpx.HTTPError:
            return []
        return [s for f in text_string_to_metric_families(response.text) for s in f.samples]


class Fleet:
    """The workers of one app id, started one by one; ``stop`` ends those still alive."""

    def __init__(
        self, ctx: RunContext, scenario: Scenario, app_id: str, inp: str, out: str
    ) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.env = worker_env(ctx, scenario, app_id, inp, out)
        self.root = ctx.workdir / "state" / unique(app_id)
        self.logs = ctx.workdir / "logs" / unique(app_id)
        self.members: list[Member] = []

    def start(self, extra_env: dict[str, str] | None = None) -> Member:
        i = len(self.members)
        port = _free_port()
        state_dir = self.root / f"w{i}"
        env = {
            **self.env,
            "ONCEFLOW_STATE_DIR": str(state_dir),
            "ONCEFLOW_HTTP_PORT": str(port),
            "ONCEFLOW_HTTP_HOST": "127.0.0.1",
            "ONCEFLOW_ADVERTISED_URL": f"http://127.0.0.1:{port}",
            **(extra_env or {}),
        }
        proc = onceflow_worker(
            f"{self.scenario.name}[{i}]", str(self.scenario.module), env,
            self.logs / f"worker-{i}.log", python=self.ctx.python,
        ).start()  # fmt: skip
        member = Member(i, proc, port, state_dir)
        self.members.append(member)
        return member

    @property
    def alive(self) -> list[Member]:
        return [m for m in self.members if m.killed_at is None]

    def procs(self, members: Iterable[Member] | None = None) -> list[Proc]:
        return [m.proc for m in (self.alive if members is None else members)]

    def check_alive(self) -> None:
        for m in self.alive:
            m.proc.check_alive()
            m.proc.sample_rss()

    async def metrics(self, members: list[Member] | None = None) -> list[Sample]:
        """The samples of the ``/metrics`` of ``members`` (default: the live ones)."""
        async with httpx.AsyncClient() as client:
            scraped = await asyncio.gather(*(m.metrics(client) for m in members or self.alive))
        return [s for samples in scraped for s in samples]

    async def metric_totals(self, members: list[Member] | None = None) -> dict[str, float]:
        """The HA metrics over the live members: standby and warm-up tasks, changelog records
        restored by active tasks and applied by standby copies, probing rebalances, summed; the
        largest standby lag."""
        scraped = await self.metrics(members)

        def total(name: str) -> float:
            return sum(s.value for s in scraped if s.name == name)

        lags = [s.value for s in scraped if s.name == "onceflow_standby_lag_records"]
        return {
            "standby_tasks": total("onceflow_standby_tasks"),
            "warmup_tasks": total("onceflow_warmup_tasks"),
            "standby_lag_records_max": max(lags, default=0.0),
            "restored_records": total("onceflow_restored_records_total"),
            "standby_records_applied": total("onceflow_standby_records_total"),
            "probing_rebalances": total("onceflow_probing_rebalances_total"),
        }

    async def restored_records(self, members: list[Member] | None = None) -> dict[int, float]:
        """Changelog records the active tasks of ``members`` (default: the live ones) restored
        so far, per partition
        (``onceflow_restored_records``: restores cut short by a rebalance count too, unlike
        the ``restored ...`` log lines, written only when a restore completes)."""
        out: dict[int, float] = {}
        for s in await self.metrics(members):
            if s.name == "onceflow_restored_records_total":
                p = int(s.labels["partition"])
                out[p] = out.get(p, 0.0) + s.value
        return out

    def balanced(self, tasks: int) -> bool:
        """Every live member runs ``tasks / members`` tasks of its latest assignment (all of them
        running), and together they run every task."""
        share = tasks // len(self.alive)
        running = [m.proc.running_tasks() for m in self.alive]
        if any(r is None or len(r) != share for r in running):
            return False
        return len(set().union(*(r for r in running if r is not None))) == tasks

    async def wait_settled(
        self, tasks: int, standbys: int, max_lag: int, stable_s: float, timeout: float
    ) -> tuple[float | None, dict[str, float]]:
        """Wait until the group is ``balanced``, with no warm-up left and ``standbys`` standby
        tasks in all, none more than ``max_lag`` records behind (``/metrics``), all of it
        unchanged for ``stable_s``. Returns (seconds until it first held, None on timeout; the
        last ``metric_totals``)."""
        started = time.monotonic()
        since: float | None = None
        totals: dict[str, float] = {}
        while time.monotonic() - started < timeout:
            self.check_alive()
            totals = await self.metric_totals()
            settled = (
                self.balanced(tasks)
                and totals["warmup_tasks"] == 0
                and totals["standby_tasks"] >= standbys
                and totals["standby_lag_records_max"] <= max_lag
            )
            if not settled:
                since = None
            elif since is None:
                since = time.monotonic()
            elif time.monotonic() - since >= stable_s:
                return since - started, totals
            await asyncio.sleep(1.0)
        return None, totals

    def peak_rss_mb(self) -> float:
        return max((m.proc.peak_rss for m in self.members), default=0) / 2**20

    def stop(self) -> None:
        """Stop the live members (SIGTERM) and delete the state directories."""
        for m in self.alive:
            m.proc.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def summary(self) -> list[dict[str, Any]]:
        """Per member: its assignments over the run and its restores (from its log)."""
        out = []
        for m in self.members:
            log = m.log_since() if m.proc.log_path.exists() else ""
            out.append({
                "worker": m.index,
                "killed": m.killed_at is not None,
                "assignments": assignments(log),
                "restores": [r.__dict__ for r in restored_lines(log)],
                "log": str(m.proc.log_path),
            })  # fmt: skip
        return out
