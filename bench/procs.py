"""The processes under test: onceflow workers and the raw aiokafka loop, with their memory.

Each process logs to its own file; readiness is read from the log (the worker's HTTP API is not
needed). Peak RSS is sampled with psutil and, on Linux, also read exactly from ``VmHWM`` (the
kernel's high-water mark) before the process is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

__all__ = ["Proc", "onceflow_worker", "raw_loop", "wait_ready"]

REPO = Path(__file__).resolve().parents[1]
_ASSIGNED = re.compile(r"assigned tasks (.*)$")
_RUNNING = re.compile(r"task (\S+) running")


class Proc:
    """One subprocess under test; ``peak_rss`` in bytes."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.peak_rss = 0
        self.peak_own_rss = 0  # the process alone, without its children
        self._ps: psutil.Process | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.monotonic()
        self._ps = psutil.Process(self.popen.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def sample_rss(self) -> None:
        """Peak RSS so far: ``peak_own_rss`` the process's own (exact: the kernel's high-water
        mark), ``peak_rss`` with its live children's (a worker's store I/O children,
        ``ONCEFLOW_STATE_IO_PROCESSES``) added at each sample, as a container's memory use
        adds them: the largest sum sampled."""
        if self._ps is None or not self.alive:
            return
        with contextlib.suppress(psutil.Error, OSError):
            now = self._ps.memory_info().rss
            for child in self._ps.children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):
                    now += child.memory_info().rss
            own = max(self._ps.memory_info().rss, self._vmhwm(self.pid))
            self.peak_own_rss = max(self.peak_own_rss, own)
            self.peak_rss = max(self.peak_rss, now, own)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (all its threads), and its
        children's: the live ones' and the exited ones' it waited for."""
        if self._ps is None:
            return 0.0
        try:
            times = self._ps.cpu_times()
            live = self._ps.children(recursive=True)
        except psutil.Error:
            return 0.0
        total = times.user + times.system + times.children_user + times.children_system
        for child in live:
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
        return float(total)

    def loop_cpu_seconds(self) -> float:
        """CPU time of the process's main thread (a worker's event loop) so far."""
        if self.popen is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.pid}/task/{self.pid}/stat").read_text().rsplit(")", 1)[1]
        except OSError:
            return 0.0
        utime, stime = fields.split()[11:13]  # fields 14 and 15 of stat(5), after the name
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _vmhwm(pid: int) -> int:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return 0
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else 0

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() not in (None, 0):
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}; log {self.log_path}:\n"
                + self.log_text()[-3000:]
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Record the peak RSS, then SIGTERM (SIGKILL after ``timeout``)."""
        self.sample_rss()
        if not self.alive:
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running_tasks(self) -> set[str] | None:
        """The tasks of the latest assignment if every one of them is running, else None."""
        lines = self.log_text().splitlines()
        for i in range(len(lines) - 1, -1, -1):
            match = _ASSIGNED.search(lines[i])
            if match:
                assigned = {t.strip() for t in match.group(1).split(",") if "_" in t}
                running = {m.group(1) for line in lines[i + 1 :] if (m := _RUNNING.search(line))}
                return assigned if assigned <= running else None
            if "raw loop ready" in lines[i]:
                return {"raw"}
        return None


def onceflow_worker(
    name: str, module: str, env: dict[str, str], log_path: Path, *, python: str = sys.executable
) -> Proc:
    return Proc(name, [python, "-m", "onceflow", "worker", module], env, log_path)


def raw_loop(name: str, args: list[str], log_path: Path, *, python: str = sys.executable) -> Proc:
    return Proc(name, [python, "-m", "bench.raw", *args], {}, log_path)


async def wait_ready(procs: list[Proc], tasks: int, timeout: float = 120.0) -> float:
    """Wait until the processes own ``tasks`` running tasks between them, stable for 1 s.

    Returns the time the last start-up took (process start to ready), in seconds.
    """
    deadline = time.monotonic() + timeout
    ready_since: float | None = None
    while time.monotonic() < deadline:
        for proc in procs:
            proc.check_alive()
            proc.sample_rss()
        owned = [proc.running_tasks() for proc in procs]
        complete = all(o is not None for o in owned)
        total = set().union(*[o for o in owned if o is not None])
        if complete and (len(total) == tasks or total == {"raw"}):
            ready_since = ready_since or time.monotonic()
            if time.monotonic() - ready_since >= 1.0:
                return ready_since - min(p.started_at for p in procs)
        else:
            ready_since = None
        await asyncio.sleep(0.1)
    logs = "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in procs)
    raise TimeoutError(f"workers not ready after {timeout:.0f}s:\n{logs}")
