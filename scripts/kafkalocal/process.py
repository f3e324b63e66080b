"""Node processes: launching them detached, finding their pids safely, signalling them.

A node's pid lives in ``DATA_DIR/node-N/kafka.pid`` and its console output in
``DATA_DIR/node-N/kafka.out``. A pid is only ever signalled after checking (in ``/proc``) that
its command line is the ``kafka.Kafka`` of that very node, so ``stop`` cannot hit a stranger.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from .config import node_dir


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    stat = _read(Path(f"/proc/{pid}/stat"))  # "pid (comm) S ..."; a zombie (Z) is dead
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def node_pid(data_dir: Path, node: int) -> int | None:
    """The pid of this node's live broker, or None. Checks the pid really is that broker."""
    pid_file = node_dir(data_dir, node) / "kafka.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    argv = _read(Path(f"/proc/{pid}/cmdline")).split("\0")
    is_ours = "kafka.Kafka" in argv and str(node_dir(data_dir, node) / "server.properties") in argv
    return pid if is_ours and _alive(pid) else None


def recorded_pid_alive(data_dir: Path, node: int) -> bool:
    """Whether the pid in the node's pid file is alive at all, whatever its command line.

    ``node_pid`` can miss a live broker for a moment: while a process is in ``execve`` (a
    ``java`` wrapper script exec'ing the JVM) its ``/proc/PID/cmdline`` may read empty. Start-up
    only reports a node as exited once this says its process is really gone.
    """
    try:
        pid = int((node_dir(data_dir, node) / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    return _alive(pid)


def launch(cmd: list[str], out: Path) -> int:
    """Start ``cmd`` detached, output appended to ``out``; return its pid.

    The broker must outlive the caller (a CLI call or a whole pytest session) and must never be
    its child: a child that dies lingers as a zombie until reaped, which is both noise and a
    ResourceWarning. ``sh`` backgrounds the JVM in a new session and exits at once.
    """
    script = '"$@" >>"$0" 2>&1 </dev/null & echo $!'
    done = subprocess.run(
        ["/bin/sh", "-c", script, str(out), *cmd],
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    return int(done.stdout.strip())


def log_tail(data_dir: Path, node: int, lines: int = 15) -> str:
    """The end of the node's console output, or of server.log when the console said nothing."""
    ndir = node_dir(data_dir, node)
    text = _read(ndir / "kafka.out") or _read(ndir / "logs/server.log")
    return "\n".join(text.splitlines()[-lines:])


def signal_and_wait(pids: dict[int, int], sig: int, timeout: float) -> dict[int, int]:
    """Send ``sig`` to every pid (by node); return those still alive after ``timeout``."""
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = {node: pid for node, pid in pids.items() if _alive(pid)}
    return pids
