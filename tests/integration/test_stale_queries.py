"""``?stale_ok=true`` on real workers with standby replicas: two instances of one app, each
keeping a standby of the other's tasks, answer every key from their own copy (with its lag,
which falls to 0) and, without ``stale_ok``, through the owner; the standby metrics agree.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from conftest import NewTopicFactory
from kafka_helpers import unique_name
from test_http import HttpWorker, owned_partitions, stop_all, total, wait_split
from workers import produce, worker_env

from onceflow.partitioner import partition_for_key

pytestmark = pytest.mark.timeout(240)
MODULE = "tests.apps.http_state"
PARTITIONS = 4
LAG = "x-onceflow-standby-lag"
OWNER = "x-onceflow-owner"
_STANDBY = re.compile(r"standby tasks (.*); warm-up tasks (.*)")
Start = Callable[[str], HttpWorker]


@pytest.fixture
async def start(
    bootstrap_servers: str, new_topic: NewTopicFactory, tmp_path: Path
) -> AsyncIterator[tuple[Start, str]]:
    """``start(name)`` → a started worker of this test's app, state in ``tmp_path/name``, one
    standby replica per task; yielded with the input topic."""
    source = await new_topic("stale-in", partitions=PARTITIONS)
    app_id = unique_name("stale")
    started: list[HttpWorker] = []
    async with httpx.AsyncClient(timeout=10) as http:

        def run(name: str) -> HttpWorker:
            env = worker_env(
                bootstrap_servers,
                app_id,
                tmp_path / f"state-{name}",  # as on two hosts: a standby is the only copy
                ONCEFLOW_TEST_INPUT=source,
                ONCEFLOW_NUM_STANDBY_REPLICAS=1,
                ONCEFLOW_COMMIT_INTERVAL_MS=200,
            )
            worker = HttpWorker(MODULE, env, tmp_path / f"{name}.log", http)
            started.append(worker.start())
            return worker

        yield run, source
        for worker in started:
            worker.stop()


def logged_standbys(worker: HttpWorker) -> set[str]:
    """The standby tasks of the worker's last ``standby tasks ...`` line."""
    found = _STANDBY.findall(worker.log_text())
    return {t for t in found[-1][0].split(", ") if t != "(none)"} if found else set()


async def wait_for_standbys(pair: list[HttpWorker], timeout: float = 60) -> dict[str, set[int]]:
    """Until each instance keeps a standby of exactly the other's tasks (its log and its
    ``onceflow_standby_tasks`` say so); returns the partitions each one runs, by URL."""
    deadline = time.monotonic() + timeout
    while True:
        owned = {w.url: await owned_partitions(w) for w in pair}
        seen = []
        for worker, other in (pair, pair[::-1]):
            want = {f"0_{p}" for p in owned[other.url]}
            kept = total(await worker.metrics(), "onceflow_standby_tasks")
            seen.append((worker.url, sorted(logged_standbys(worker)), kept, sorted(want)))
        if all(logged == want and kept == len(want) for _, logged, kept, want in seen):
            return owned
        assert time.monotonic() < deadline, f"standbys not placed: {seen}"
        await asyncio.sleep(0.5)


async def until_answer(
    worker: HttpWorker, path: str, ok: Callable[[httpx.Response], bool], timeout: float = 60
) -> httpx.Response:
    """GET ``path`` until ``ok(response)``; the last answer is in the assertion message."""
    deadline = time.monotonic() + timeout
    while True:
        assert worker.alive, worker.log_text()[-3000:]
        response = await worker.get(path)
        if ok(response):
            return response
        assert time.monotonic() < deadline, (
            f"{worker.url}{path}: {response.status_code} {dict(response.headers)} {response.text}"
        )
        await asyncio.sleep(0.1)


def caught_up(body: dict[str, object]) -> Callable[[httpx.Response], bool]:
    """An answer from the standby with ``body``, its lag 0."""
    return lambda r: r.status_code == 200 and r.json() == body and lag_of(r) == 0


def lag_of(response: httpx.Response) -> int:
    """The standby's lag header, checked to be a non-negative integer."""
    lag = int(response.headers[LAG])
    assert lag >= 0, response.headers
    return lag


async def test_each_instance_answers_stale_reads_from_its_standby(
    bootstrap_servers: str, start: tuple[Start, str]
) -> None:
    run, source = start
    a, b = run("a"), run("b")
    pair = [a, b]
    await wait_split(pair, PARTITIONS)
    owned = await wait_for_standbys(pair)
    keys = {f"user-{i}": i * 1000 - 7 for i in range(60)}
    await produce(
        bootstrap_servers, source, [(k.encode(), struct.pack(">q", v)) for k, v in keys.items()]
    )
    by_url = {w.url: w for w in pair}
    answered = dict.fromkeys(by_url, 0)
    for key, value in keys.items():
        body = {"key": key, "value": value}
        path = f"/tables/last/keys/{key}"
        fresh = await until_answer(a, path, lambda r: r.json() == body)  # noqa: B023
        owner = by_url[fresh.headers[OWNER]]
        (here,) = [w for w in pair if w is not owner]
        partition = partition_for_key(key.encode(), PARTITIONS)
        assert partition in owned[owner.url], (key, partition, owned)
        # Without stale_ok this instance answers through the owner, never from its standby.
        proxied = await here.get(path)
        assert (proxied.status_code, proxied.json()) == (200, body)
        assert proxied.headers[OWNER] == owner.url
        assert LAG not in proxied.headers
        # With it: from its own copy, which catches up with the owner's committed state.
        stale = await until_answer(here, f"{path}?stale_ok=true", caught_up(body))
        assert stale.headers[OWNER] == here.url
        # The owner runs the task: its answer is as without stale_ok.
        own = await owner.get(f"{path}?stale_ok=true")
        assert (own.status_code, own.json(), own.headers[OWNER]) == (200, body, owner.url)
        assert LAG not in own.headers
        answered[here.url] += 1
    assert all(answered.values()), answered  # both instances answered from their standbys

    # A key nobody wrote: the standby's "not found", with its lag and this instance named.
    missing = "no-such-key"
    fresh = await a.get(f"/tables/last/keys/{missing}")
    assert fresh.status_code == 404
    (here,) = [w for w in pair if w.url != fresh.headers[OWNER]]
    stale = await here.get(f"/tables/last/keys/{missing}?stale_ok=true")
    assert (stale.status_code, stale.headers[OWNER], lag_of(stale)) == (404, here.url, 0)
    assert (await here.get(f"/tables/last/keys/{missing}?stale_ok=maybe")).status_code == 422

    for worker, other in (pair, pair[::-1]):
        await check_standby_metrics(worker, owned[other.url], keys)
    stop_all(pair)


async def check_standby_metrics(
    worker: HttpWorker, partitions: set[int], keys: dict[str, int], timeout: float = 30
) -> None:
    """A standby of each of ``partitions`` (the other's tasks), caught up, having applied one
    changelog record per key of those partitions (each key was written once)."""
    written = sum(1 for k in keys if partition_for_key(k.encode(), PARTITIONS) in partitions)
    want = {f"0_{p}": 0.0 for p in partitions}
    deadline = time.monotonic() + timeout
    while True:
        metrics = await worker.metrics()
        lags = {
            dict(labels)["task"]: value
            for (name, labels), value in metrics.items()
            if name == "onceflow_standby_lag_records"
        }
        applied = total(metrics, "onceflow_standby_records_total")
        if lags == want and applied >= written:
            break
        assert time.monotonic() < deadline, (worker.url, lags, applied, written)
        await asyncio.sleep(0.2)
    assert applied == written, (worker.url, applied, written)
    assert total(metrics, "onceflow_standby_tasks") == len(partitions)
    assert total(metrics, "onceflow_warmup_tasks") == 0
