"""The HTTP API of real workers on a real broker: owner lookup and proxying between two
instances, readiness during a long restore, metrics that move, and a schema fuzz (schemathesis).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from kafka_helpers import load_kafka_local, recent_window_start, unique_name
from prometheus_client.parser import text_string_to_metric_families
from workers import WorkerProcess, collect, produce, worker_env

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class HttpWorker(WorkerProcess):
    """A worker subprocess with its HTTP API on a port chosen here, on 127.0.0.1."""

    def __init__(
        self, module: str, env: dict[str, str], log_path: Path, http: httpx.AsyncClient
    ) -> None:
        self.http = http
        self.port = load_kafka_local().free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        listen = {"ONCEFLOW_HTTP_HOST": "127.0.0.1", "ONCEFLOW_HTTP_PORT": str(self.port)}
        super().__init__(module, {**env, **listen}, log_path)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.get(self.url + path, headers=headers)

    async def wait_ready(
        self, timeout: float = 90, probe: str | None = None
    ) -> list[tuple[int, str]]:
        """Poll /health/ready every 20 ms until 200; return each distinct (status, reason).

        With ``probe`` (a path), also GET it whenever not ready: each distinct (status, detail)
        of those answers is added as ``(-status, detail)``.
        """
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive, f"worker died:\n{self.log_text()[-3000:]}"
            try:
                response = await self.get("/health/ready")
            except httpx.TransportError:
                await asyncio.sleep(0.05)
                continue
            entries = [(response.status_code, response.json().get("reason", ""))]
            if response.status_code != 200 and probe is not None:
                answer = await self.get(probe)
                body = answer.json()
                entries.append((-answer.status_code, str(body.get("detail", body))))
            seen += [e for e in entries if e not in seen]
            if response.status_code == 200:
                return seen
            await asyncio.sleep(0.02)
        raise AssertionError(f"not ready after {timeout}s: {seen[-5:]}\n{self.log_text()[-3000:]}")

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = await self.get("/metrics")
        assert response.status_code == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }


StartWorker = Callable[[str, dict[str, str], str], HttpWorker]


@pytest.fixture
async def start_worker(tmp_path: Path) -> AsyncIterator[StartWorker]:
    """``start_worker(module, env, name)`` → a started HttpWorker, stopped after the test."""
    started: list[HttpWorker] = []
    async with httpx.AsyncClient(timeout=10) as http:

        def start(module: str, env: dict[str, str], name: str) -> HttpWorker:
            worker = HttpWorker(module, env, tmp_path / f"{name}.log", http).start()
            started.append(worker)
            return worker

        yield start
        for worker in started:
            worker.stop()


def total(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


def aggregates(records: Iterable[tuple[str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for key, value in records:
        a = out.setdefault(key, {"sum": 0, "count": 0, "min": value, "max": value})
        a["sum"] += value
        a["count"] += 1
        a["min"] = min(a["min"], value)
        a["max"] = max(a["max"], value)
    return out


async def owned_partitions(worker: HttpWorker) -> set[int]:
    tables = (await worker.get("/tables", headers=AUTH)).json()["tables"]
    return set(tables[0]["partitions"])


async def wait_split(workers: list[HttpWorker], partitions: int, timeout: float = 90) -> None:
    """Until both instances are ready and own disjoint, non-empty shares of every partition."""
    deadline = time.monotonic() + timeout
    while True:
        for worker in workers:
            await worker.wait_ready()
        owned = [await owned_partitions(w) for w in workers]
        covered = set().union(*owned) == set(range(partitions))
        if all(owned) and covered and sum(map(len, owned)) == partitions:
            return
        assert time.monotonic() < deadline, f"no stable split: {owned}"
        await asyncio.sleep(0.5)


# -- two instances, one table: every key answered the same through both ----------------------


async def test_every_key_answers_the_same_through_both_instances(
    bootstrap_servers: str, new_topic, tmp_path: Path, start_worker: StartWorker
) -> None:
    source = await new_topic("http-in", partitions=6)
    sink = await new_topic("http-out", partitions=6)
    env = worker_env(
        bootstrap_servers,
        unique_name("http"),
        tmp_path / "state-a",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_HTTP_TOKEN=TOKEN,
    )
    a = start_worker("tests.apps.aggregates", env, "a")
    b_env = {**env, "ONCEFLOW_STATE_DIR": str(tmp_path / "state-b")}
    b = start_worker("tests.apps.aggregates", b_env, "b")
    await wait_split([a, b], 6)
    inputs = [(f"key-{i % 150}", (i * 7919) % 1000 - 500) for i in range(6000)]
    await produce(
        bootstrap_servers, source, ((k.encode(), struct.pack(">q", v)) for k, v in inputs)
    )
    await collect(bootstrap_servers, sink, len(inputs), timeout=120, workers=[a, b], settle=0)
    expected = aggregates(inputs)
    owners = {a.url: 0, b.url: 0}
    for key, want in sorted(expected.items()):
        answers = [await poll_value(w, "sum", key, want["sum"]) for w in (a, b)]
        assert answers[0].json() == answers[1].json() == {"key": key, "value": want["sum"]}
        owner = answers[0].headers["x-onceflow-owner"]
        assert answers[1].headers["x-onceflow-owner"] == owner  # the non-owner names it
        owners[owner] += 1
        for table in ("count", "min", "max"):
            for w in (a, b):
                response = await w.get(f"/tables/{table}/keys/{key}", headers=AUTH)
                assert response.json() == {"key": key, "value": want[table]}, (w.url, table)
    assert all(owners.values()), owners  # both instances owned keys: both proxied some
    missing = [await w.get("/tables/sum/keys/no-such-key", headers=AUTH) for w in (a, b)]
    assert [r.status_code for r in missing] == [404, 404]
    assert missing[0].headers["x-onceflow-owner"] == missing[1].headers["x-onceflow-owner"]
    # the token is forwarded to the owner, and required by every instance
    assert (await a.get("/tables/sum/keys/key-1")).status_code == 401
    stop_all([a, b])


async def poll_value(worker: HttpWorker, table: str, key: str, want: int) -> httpx.Response:
    """The key's answer once it shows ``want`` (outputs are visible a moment before the store
    flush of the same commit)."""
    for _ in range(100):
        response = await worker.get(f"/tables/{table}/keys/{key}", headers=AUTH)
        if response.status_code == 200 and response.json()["value"] == want:
            return response
        await asyncio.sleep(0.05)
    return response


def stop_all(workers: list[HttpWorker]) -> None:
    codes = [w.stop() for w in workers]
    for worker, code in zip(workers, codes, strict=True):
        assert code == 0, f"{worker.url} exited with {code}:\n{worker.log_text()[-3000:]}"


# -- a windowed table through both instances ---------------------------------------------------


async def test_windowed_table_through_both_instances(
    bootstrap_servers: str, new_topic, tmp_path: Path, start_worker: StartWorker
) -> None:
    source = await new_topic("http-win-in", partitions=4)
    sink = await new_topic("http-win-out", partitions=4)
    env = worker_env(
        bootstrap_servers,
        unique_name("http-win"),
        tmp_path / "state-a",
        ONCEFLOW_APP_ID=unique_name("http-win"),
        ONCEFLOW_INPUT_TOPIC=source,
        ONCEFLOW_OUTPUT_TOPIC=sink,
    )
    a = start_worker("onceflow.examples.windowed_count", env, "a")
    b_env = {**env, "ONCEFLOW_STATE_DIR": str(tmp_path / "state-b")}
    b = start_worker("onceflow.examples.windowed_count", b_env, "b")
    minute = 60_000
    base = recent_window_start(5 * minute)  # a window boundary
    await wait_split([a, b], 4)
    keys = [f"user-{i}" for i in range(20)]
    # Five records in one window and one at the next window's start: stream time stops there,
    # so the first window is still retained (retention = window size in the reference app).
    records = [(k, base + t * minute) for t in range(6) for k in keys]
    producer_records = [(k.encode(), b"x") for k, _ in records]
    await produce_at(bootstrap_servers, source, producer_records, [ts for _, ts in records])
    await collect(bootstrap_servers, sink, len(records), timeout=120, workers=[a, b], settle=0)
    want = [
        {"start": base, "end": base + 5 * minute, "value": 5},
        {"start": base + 5 * minute, "end": base + 10 * minute, "value": 1},
    ]
    for key in keys:
        for w in (a, b):
            body = (await w.get(f"/tables/counts/keys/{key}")).json()
            assert body == {"key": key, "windows": want}, w.url
            later = await w.get(f"/tables/counts/keys/{key}?from={base + 1}")
            assert later.json()["windows"] == want[1:]
            first = await w.get(f"/tables/counts/keys/{key}?to={base}")
            assert first.json()["windows"] == want[:1]
            assert (await w.get(f"/tables/counts/keys/{key}?from=x")).status_code == 422
    stop_all([a, b])


async def produce_at(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], timestamps: list[int]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=v, key=k, timestamp_ms=ts)
            for (k, v), ts in zip(records, timestamps, strict=True)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# -- readiness while a large changelog restores ------------------------------------------------


@pytest.mark.timeout(600)  # the first worker builds the state at the runtime's pace
async def test_not_ready_while_restoring_a_large_changelog(
    bootstrap_servers: str, new_topic, tmp_path: Path, start_worker: StartWorker
) -> None:
    n = 300_000
    source = await new_topic("http-restore-in", partitions=1)
    env = worker_env(
        bootstrap_servers,
        unique_name("http-restore"),
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
    )
    await produce(
        bootstrap_servers,
        source,
        ((f"k{i:07d}".encode(), struct.pack(">q", i)) for i in range(n)),
    )
    builder = start_worker("tests.apps.http_state", env, "a")
    await builder.wait_ready()
    await wait_for_value(builder, f"k{n - 1:07d}", n - 1, timeout=240)
    stop_all([builder])
    shutil.rmtree(tmp_path / "state")  # the next worker restores the whole changelog

    worker = start_worker("tests.apps.http_state", env, "b")
    seen = await worker.wait_ready(timeout=240, probe="/tables/last/keys/k0000001")
    restoring = [
        int(m.group(1))
        for status, reason in seen
        if status == 503
        and (m := re.fullmatch(r"restoring store last partition 0: (\d+) records left", reason))
    ]
    assert restoring, seen
    assert max(restoring) > 0
    assert seen[-1] == (200, "")
    # A store still restoring never answers; the task may finish between two requests, so a
    # probe may get the (complete) answer just before readiness says 200.
    key = "k0000001"
    probes = {(-status, detail) for status, detail in seen if status < 0}
    assert (503, "task 0_0 is restoring here; retry") in probes, seen
    assert probes <= {(503, d) for _, d in probes} | {(200, str({"key": key, "value": 1}))}
    metrics = await worker.metrics()
    assert total(metrics, "onceflow_restored_records_total", store="last") == n
    assert total(metrics, "onceflow_restore_remaining_records", store="last") == 0
    body = (await worker.get(f"/tables/last/keys/k{n // 2:07d}")).json()
    assert body == {"key": f"k{n // 2:07d}", "value": n // 2}
    stop_all([worker])


async def wait_for_value(worker: HttpWorker, key: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.alive, worker.log_text()[-3000:]
        response = await worker.get(f"/tables/last/keys/{key}")
        if response.status_code == 200 and response.json()["value"] == want:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{key} never reached {want}")


# -- metrics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
async def test_metrics_move_with_a_batch(
    bootstrap_servers: str,
    new_topic,
    tmp_path: Path,
    start_worker: StartWorker,
    guarantee: str,
) -> None:
    source = await new_topic("http-m-in", partitions=3)
    sink = await new_topic("http-m-out", partitions=3)
    env = worker_env(
        bootstrap_servers,
        unique_name("http-m"),
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_PROCESSING_GUARANTEE=guarantee,
        ONCEFLOW_COMMIT_INTERVAL_MS=100,
    )
    worker = start_worker("tests.apps.aggregates", env, "w")
    eos = guarantee == "exactly_once"
    await worker.wait_ready()
    before = await worker.metrics()
    assert total(before, "onceflow_eos_enabled") == (1 if eos else 0)
    assert total(before, "onceflow_assigned_tasks") == 3
    assert total(before, "onceflow_records_processed_total") == 0
    assert total(before, "onceflow_restore_remaining_records") == 0
    n = 3000
    await produce(
        bootstrap_servers,
        source,
        ((f"k{i % 97}".encode(), struct.pack(">q", i)) for i in range(n)),
    )
    await collect(bootstrap_servers, sink, n, timeout=120, workers=[worker], settle=0)
    after = await settled_metrics(worker, n)
    assert total(after, "onceflow_records_consumed_total", topic=source) == n
    assert total(after, "onceflow_records_processed_total", topic=source) == n
    assert total(after, "onceflow_records_produced_total", topic=sink) == n
    commits = total(after, "onceflow_commit_latency_seconds_count")
    assert commits > total(before, "onceflow_commit_latency_seconds_count")
    assert total(after, "onceflow_commit_latency_seconds_sum") > 0
    committed = total(after, "onceflow_transactions_total", result="committed")
    if eos:
        assert committed > total(before, "onceflow_transactions_total", result="committed")
        assert committed == commits  # one transaction per task commit
    assert total(after, "onceflow_transactions_total", result="aborted") == 0
    assert total(after, "onceflow_consumer_lag", topic=source) == 0
    assert total(after, "onceflow_eos_enabled") == (1 if eos else 0)
    assert total(after, "onceflow_task_failures_total") == 0
    assert total(after, "onceflow_restore_remaining_records") == 0
    stop_all([worker])


async def settled_metrics(
    worker: HttpWorker, n: int
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Metrics once the last commit (which updates the lag gauge) followed the last record."""
    for _ in range(100):
        metrics = await worker.metrics()
        lag = total(metrics, "onceflow_consumer_lag")
        if total(metrics, "onceflow_records_processed_total") == n and lag == 0:
            return metrics
        await asyncio.sleep(0.1)
    return metrics


# -- schema fuzzing -------------------------------------------------------------------------------


async def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    bootstrap_servers: str, new_topic, tmp_path: Path, start_worker: StartWorker
) -> None:
    """Fuzz one of two instances: half of the existing keys it answers itself, half it proxies."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    source = await new_topic("http-st-in", partitions=4)
    sink = await new_topic("http-st-out", partitions=4)
    env = worker_env(
        bootstrap_servers,
        unique_name("http-st"),
        tmp_path / "state-a",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
    )
    a = start_worker("tests.apps.aggregates", env, "a")
    b = start_worker(
        "tests.apps.aggregates", {**env, "ONCEFLOW_STATE_DIR": str(tmp_path / "b")}, "b"
    )
    await wait_split([a, b], 4)
    keys = ["alice", "bob", "carol", "dave", "a/b", "..", "x y?", "ü", "%2F", "-1"]
    await produce(bootstrap_servers, source, [(k.encode(), struct.pack(">q", 5)) for k in keys])
    await collect(bootstrap_servers, sink, len(keys), timeout=60, workers=[a, b], settle=0)
    # Half the generated keys are existing ones, so the 200 answers (local and proxied) are
    # checked against the schema too, not only the 404s of random keys.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f"[dictionaries.keys]\nvalues = {json.dumps(keys)}\n\n"
        '[parameters]\n"path.key" = { dictionary = "keys", probability = 0.5 }\n'
    )
    run = await asyncio.to_thread(
        subprocess.run,
        [
            st,
            "--config-file",
            str(config),
            "run",
            f"{a.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "150",
            "--seed",
            "1",
            "--no-color",
            "--generation-database",
            "none",
            "--report-dir",
            str(tmp_path / "schemathesis"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    stop_all([a, b])
