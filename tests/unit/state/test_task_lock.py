"""TaskLock: one owner per store directory across processes on a host."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onceflow.errors import StoreLockedError
from onceflow.state.sqlite.lock import LOCK_FILE_NAME, TaskLock

ROOT = Path(__file__).resolve().parents[3]
HOLD = (
    "import sys, time; from pathlib import Path; from onceflow.state.sqlite.lock import TaskLock; "
    "lock = TaskLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); "
    "time.sleep(float(sys.argv[2]))"
)


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT)))),
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_is_exclusive_and_released_on_close(tmp_path: Path) -> None:
    first = TaskLock(tmp_path / "store" / "0")  # creates the directory
    first.acquire()
    assert first.locked
    assert (tmp_path / "store" / "0" / LOCK_FILE_NAME).read_text().strip() == str(os.getpid())
    with pytest.raises(StoreLockedError, match="another onceflow worker on this host"):
        TaskLock(tmp_path / "store" / "0").acquire()
    first.close()
    first.close()
    assert not first.locked
    with TaskLock(tmp_path / "store" / "0") as second:
        assert second.locked
    assert not second.locked
    assert (tmp_path / "store" / "0" / LOCK_FILE_NAME).exists()  # never deleted


def test_acquire_twice_is_a_no_op(tmp_path: Path) -> None:
    with TaskLock(tmp_path) as lock:
        lock.acquire()
        assert lock.locked


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(StoreLockedError) as caught:
            TaskLock(tmp_path).acquire(timeout_s=0.3)
        assert time.monotonic() - started >= 0.3
        message = str(caught.value)
        assert str(tmp_path) in message and f"pid {holder.pid}" in message
        assert "after waiting 0.3s" in message
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    with TaskLock(tmp_path):  # the kernel released the dead holder's lock
        pass


def test_acquire_waits_for_a_releasing_owner(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path, 0.5)  # the previous owner releases it shortly
    try:
        lock = TaskLock(tmp_path)
        lock.acquire(timeout_s=20)
        assert lock.locked
        lock.close()
    finally:
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
