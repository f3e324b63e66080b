"""A zombie never answers a key from state it no longer owns.

Two ``onceflow worker`` instances of a stateful app with their HTTP APIs (separate state
directories, as on two hosts). Worker A is frozen with SIGSTOP past its 6 s session timeout;
worker B takes A's tasks over and serves new values for A's old keys. Then A is woken with
SIGCONT while requests for those keys are already waiting in its sockets, and more follow in a
tight loop for two seconds: every answer A gives must be the new value (proxied to B, or from A
once it owns the task again and restored it) or a 503 — never a 200 with the old value.

Worker logs stay in the test's tmp_path (``a.log``, ``b.log``).
"""

from __future__ import annotations

import asyncio
import re
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from kafka_helpers import load_kafka_local, unique_name
from workers import WorkerProcess, produce, worker_env

pytestmark = pytest.mark.chaos

PARTITIONS = 4
KEYS = [f"key-{i}" for i in range(40)]
OLD, NEW = 1, 2
WINDOW_S = 2.0  # how long A is queried after SIGCONT
CONCURRENCY = 8  # requests in flight to A at any time


class HttpWorker(WorkerProcess):
    """A worker subprocess with its HTTP API on 127.0.0.1, on a port chosen here."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.port = load_kafka_local().free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        listen = {"ONCEFLOW_HTTP_HOST": "127.0.0.1", "ONCEFLOW_HTTP_PORT": str(self.port)}
        super().__init__(module, {**env, **listen}, log_path)


@dataclass
class Answers:
    """What the zombie answered, by kind; ``stale`` keeps (seconds after SIGCONT, key, body)."""

    new: dict[str, int] = field(default_factory=dict)  # owner URL -> count
    unavailable: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # 503 detail (digits dropped) -> count
    no_answer: int = 0  # timeouts and refused connections: not an answer
    stale: list[tuple[float, str, str]] = field(default_factory=list)
    other: list[tuple[int, str]] = field(default_factory=list)

    def note(self, at: float, key: str, response: httpx.Response) -> None:
        status = response.status_code
        if status == 503:
            self.unavailable += 1
            assert response.headers.get("retry-after") == "1", response.headers
            reason = re.sub(r"[\d.]+s\b", "Ns", response.json()["detail"])
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        elif status == 200 and response.json() == {"key": key, "value": NEW}:
            owner = response.headers.get("x-onceflow-owner", "?")
            self.new[owner] = self.new.get(owner, 0) + 1
        elif status == 200:
            self.stale.append((round(at, 4), key, response.text))
        else:
            self.other.append((status, response.text[:200]))


async def wait_serving(
    http: httpx.AsyncClient,
    workers: list[HttpWorker],
    keys: list[str],
    value: int,
    timeout: float = 90,
) -> dict[str, str]:
    """Until every worker answers ``value`` for every key; the owner URL of each key."""

    def want(key: str) -> dict[str, object]:
        return {"key": key, "value": value}

    owners: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    pending = [(w, k) for w in workers for k in keys]
    while pending:
        assert time.monotonic() < deadline, f"not served after {timeout}s: {pending[:5]}"
        worker, key = pending[0]
        assert worker.alive, f"{worker.url} died:\n{worker.log_text()[-3000:]}"
        try:
            response = await http.get(f"{worker.url}/tables/last/keys/{key}")
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200 and response.json() == want(key):
            owners[key] = response.headers["x-onceflow-owner"]
            pending.pop(0)
            continue
        await asyncio.sleep(0.05)
    return owners


async def wait_owns_everything(http: httpx.AsyncClient, worker: HttpWorker) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert worker.alive, worker.log_text()[-3000:]
        try:
            tables = (await http.get(f"{worker.url}/tables")).json()["tables"]
            if tables[0]["partitions"] == list(range(PARTITIONS)):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{worker.url} never took every task over"
        await asyncio.sleep(0.1)


async def hammer(url: str, keys: list[str], until: float, woken: list[float], out: Answers) -> None:
    """GET ``keys`` round-robin from ``url`` until ``until``; note each answer in ``out``."""
    timeout = httpx.Timeout(3.0, connect=1.0)  # long enough for requests queued before SIGCONT
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as http:

        async def one_lane(lane: int) -> None:
            i = lane
            while time.monotonic() < until:
                key = keys[i % len(keys)]
                i += CONCURRENCY
                try:
                    response = await http.get(f"{url}/tables/last/keys/{key}")
                except httpx.TransportError:
                    out.no_answer += 1
                    continue
                at = time.monotonic() - woken[0] if woken else -1.0
                out.note(at, key, response)

        await asyncio.gather(*(one_lane(lane) for lane in range(CONCURRENCY)))


def int64(n: int) -> bytes:
    return struct.pack(">q", n)


async def test_a_woken_zombie_never_answers_from_state_it_lost(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("zombie-q-in", partitions=PARTITIONS)
    env = worker_env(
        bootstrap_servers,
        unique_name("zombie-q"),
        tmp_path / "state-a",
        ONCEFLOW_TEST_INPUT=source,
    )
    a = HttpWorker("tests.apps.http_state", env, tmp_path / "a.log").start()
    b_env = {**env, "ONCEFLOW_STATE_DIR": str(tmp_path / "state-b")}
    b = HttpWorker("tests.apps.http_state", b_env, tmp_path / "b.log").start()
    woken = False
    try:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            await produce(bootstrap_servers, source, [(k.encode(), int64(OLD)) for k in KEYS])
            # Both serve every key, each task owned by one of them (no rebalance under way).
            deadline = time.monotonic() + 90
            owners = await wait_serving(http, [a, b], KEYS, OLD)
            while set(owners.values()) != {a.url, b.url}:
                assert time.monotonic() < deadline, f"no split between A and B: {owners}"
                await asyncio.sleep(0.5)
                owners = await wait_serving(http, [a, b], KEYS, OLD)
            lost = sorted(k for k, owner in owners.items() if owner == a.url)

            a.signal(signal.SIGSTOP)  # past the session timeout: B takes A's tasks
            await wait_owns_everything(http, b)  # so the broker expelled A: its session expired
            await produce(bootstrap_servers, source, [(k.encode(), int64(NEW)) for k in lost])
            await wait_serving(http, [b], lost, NEW)

            # Requests wait in A's sockets before it wakes; the loop goes on after.
            answers = Answers()
            woke_at: list[float] = []
            until = time.monotonic() + 0.5 + WINDOW_S
            hammering = asyncio.create_task(hammer(a.url, lost, until, woke_at, answers))
            await asyncio.sleep(0.5)
            woke_at.append(time.monotonic())
            a.signal(signal.SIGCONT)
            woken = True
            await hammering
        names = {a.url: "A", b.url: "B"}
        print(
            f"\nzombie answers in {WINDOW_S}s after SIGCONT: new value by owner "
            f"{ {names.get(u, u): n for u, n in answers.new.items()} }, "
            f"503 {answers.unavailable}, no answer {answers.no_answer}, "
            f"stale {len(answers.stale)}, other {len(answers.other)}; 503 reasons {answers.reasons}"
        )
        assert not answers.stale, (
            f"{len(answers.stale)} stale answers from the zombie (s after SIGCONT, key, body): "
            f"{answers.stale[:5]}"
        )
        assert not answers.other, answers.other[:5]
        assert answers.unavailable or answers.new, "the zombie answered nothing at all"
        assert set(answers.new) <= {a.url, b.url}, answers.new
        assert a.alive, f"the zombie crashed:\n{a.log_text()[-3000:]}"
    finally:
        if not woken:
            a.signal(signal.SIGCONT)
        a.stop()
        b.stop()
