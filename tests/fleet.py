"""A fleet of up to three workers of one app, and the random faults the soaks inject into it:
kill -9, SIGSTOP past the session timeout then SIGCONT, SIGTERM rolling restarts, scaling
1 -> 3 -> 1. Every action keeps at least one worker alive."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable

import psutil
from workers import WorkerProcess


class Fleet:
    """Up to three workers of one app; every action keeps at least one alive."""

    def __init__(self, spawn: Callable[[int], WorkerProcess]) -> None:
        self._spawn = spawn
        self._count = 0
        self.workers: list[WorkerProcess] = []
        self.faults: dict[str, int] = {}

    def add(self) -> WorkerProcess:
        self._count += 1
        worker = self._spawn(self._count)
        self.workers.append(worker)
        return worker

    def _note(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1

    async def act(self, rng: random.Random) -> None:
        live = [w for w in self.workers if w.alive]
        victim = rng.choice(live)
        action = rng.choice(["kill", "stop", "term", "scale"])
        if action == "kill":
            victim.kill()
            self.workers.remove(victim)
            self.add()
        elif action == "stop":
            victim.signal(signal.SIGSTOP)  # past the 6 s session timeout: a zombie
            await asyncio.sleep(8)
            victim.signal(signal.SIGCONT)
        elif action == "term":
            assert victim.stop() == 0, victim.log_text()[-3000:]
            self.workers.remove(victim)
            self.add()
        elif len(live) < 3:
            self.add()
            action = "scale-up"
        else:
            for extra in live[1:]:
                assert extra.stop() == 0, extra.log_text()[-3000:]
                self.workers.remove(extra)
            action = "scale-down"
        self._note(action)

    def rss_mb(self) -> list[float]:
        return [
            psutil.Process(w.proc.pid).memory_info().rss / 2**20
            for w in self.workers
            if w.alive and w.proc
        ]
