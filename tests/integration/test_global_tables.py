"""Global tables on a real broker, with workers as subprocesses: the load finishes before the
worker is ready and before any handler runs; updates reach handlers; a restart reads only the
topic's tail from its local positions; every instance answers queries itself; a missing topic
stops the start, a recreated one is reloaded."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from conftest import NewTopicFactory
from kafka_helpers import create_topics, unique_name
from test_http import HttpWorker
from workers import collect, produce, worker_env

pytestmark = pytest.mark.timeout(240)
MODULE = "tests.apps.global_enrich"
Start = Callable[..., HttpWorker]


@pytest.fixture
async def topics(new_topic: NewTopicFactory) -> dict[str, str]:
    return {
        "ONCEFLOW_TEST_GLOBAL": await new_topic("countries", partitions=3),
        "ONCEFLOW_TEST_INPUT": await new_topic("orders", partitions=2),
        "ONCEFLOW_TEST_OUTPUT": await new_topic("enriched", partitions=2),
    }


@pytest.fixture
async def start(
    bootstrap_servers: str, topics: dict[str, str], tmp_path: Path
) -> AsyncIterator[Start]:
    """``start(name, **env)`` → a started worker of one app id (per test), state in tmp_path."""
    app_id = unique_name("global")
    started: list[HttpWorker] = []
    async with httpx.AsyncClient(timeout=10) as http:

        def run(name: str = "w0", **env: str) -> HttpWorker:
            base = worker_env(bootstrap_servers, app_id, tmp_path / "state", **topics)
            worker = HttpWorker(MODULE, {**base, **env}, tmp_path / f"{name}.log", http)
            started.append(worker.start())
            return worker

        yield run
        for worker in started:
            worker.stop()


def countries(n: int, version: str) -> list[tuple[bytes, bytes]]:
    return [(f"c{i}".encode(), f"{version}-{i}".encode()) for i in range(n)]


async def enriched(bootstrap: str, topic: str, expected: int, worker: HttpWorker) -> dict[str, str]:
    records = await collect(bootstrap, topic, expected, 60, workers=[worker], settle=0.5)
    return {r.key.decode(): r.value.decode() for r in records if r.key and r.value}


async def test_loaded_before_ready_then_kept_up_to_date(
    bootstrap_servers: str, topics: dict[str, str], start: Start
) -> None:
    countries_topic, orders = topics["ONCEFLOW_TEST_GLOBAL"], topics["ONCEFLOW_TEST_INPUT"]
    await produce(bootstrap_servers, countries_topic, countries(1000, "old"))
    await produce(bootstrap_servers, countries_topic, countries(100_000, "v1"))
    # Orders wait in their topic before the worker starts: none may be handled before the load.
    await produce(
        bootstrap_servers, orders, [(f"o{i}".encode(), f"c{i}".encode()) for i in range(50)]
    )
    worker = start()
    reasons = await worker.wait_ready()
    assert any(r.startswith("loading global table countries:") for _, r in reasons), reasons
    log = worker.log_text()
    assert log.index("global table countries loaded") < log.index("joining group")
    assert re.search(r"loaded: 3 partitions, read 101000 records, 100000 keys", log), log[-2000:]
    out = await enriched(bootstrap_servers, topics["ONCEFLOW_TEST_OUTPUT"], 50, worker)
    assert out == {f"o{i}": f"c{i}=v1-{i}" for i in range(50)}

    # An update, then an order: the order sees it once the background consumer applied it.
    await produce(bootstrap_servers, countries_topic, [(b"c7", b"v2-7"), (b"c8", None)])
    deadline, seen = time.monotonic() + 30, ""
    n = 50
    while time.monotonic() < deadline and seen != "c7=v2-7":
        await produce(bootstrap_servers, orders, [(f"o{n}".encode(), b"c7")])
        seen = (await enriched(bootstrap_servers, topics["ONCEFLOW_TEST_OUTPUT"], n + 1, worker))[
            f"o{n}"
        ]
        n += 1
    assert seen == "c7=v2-7"
    await produce(bootstrap_servers, orders, [(b"last", b"c8")])
    out = await enriched(bootstrap_servers, topics["ONCEFLOW_TEST_OUTPUT"], n + 1, worker)
    assert out["last"] == "c8=-"  # the tombstone deleted it
    answer = await worker.get("/tables/countries/keys/c7")
    assert answer.json() == {"key": "c7", "value": "v2-7"}
    assert (await worker.get("/tables/countries/keys/c8")).status_code == 404


async def test_restart_reads_only_the_tail_and_every_instance_answers(
    bootstrap_servers: str, topics: dict[str, str], start: Start
) -> None:
    countries_topic = topics["ONCEFLOW_TEST_GLOBAL"]
    await produce(bootstrap_servers, countries_topic, countries(5000, "v1"))
    first = start("w0")
    await first.wait_ready()
    assert "loaded: 3 partitions, read 5000 records, 5000 keys" in first.log_text()
    second = start("w1")  # same host and state dir: its own slot, its own full copy
    await second.wait_ready()
    assert "loaded: 3 partitions, read 5000 records, 5000 keys" in second.log_text()
    for worker in (first, second):
        answer = await worker.get("/tables/countries/keys/c4321")
        assert answer.status_code == 200 and answer.json()["value"] == "v1-4321"
        assert answer.headers["X-Onceflow-Owner"] == worker.url  # answered locally
        listed = (await worker.get("/tables")).json()["tables"]
        assert {"name": "countries", "kind": "global"}.items() <= listed[0].items()
    assert first.stop() == 0 and second.stop() == 0

    await produce(bootstrap_servers, countries_topic, countries(7, "v2"))
    again = start("w0-again")
    await again.wait_ready()
    assert "loaded: 3 partitions, read 7 records, 5000 keys" in again.log_text()
    answer = await again.get("/tables/countries/keys/c3")
    assert answer.json()["value"] == "v2-3"


async def test_a_missing_topic_stops_the_start(start: Start) -> None:
    worker = start(ONCEFLOW_TEST_GLOBAL="no-such-countries-topic")
    code = await asyncio.to_thread(worker.wait, 60)
    assert code not in (None, 0)
    assert "global table topic(s) 'no-such-countries-topic' (global table countries)" in (
        worker.log_text()
    )


async def test_a_recreated_topic_is_reloaded(
    bootstrap_servers: str, topics: dict[str, str], start: Start
) -> None:
    countries_topic = topics["ONCEFLOW_TEST_GLOBAL"]
    await produce(bootstrap_servers, countries_topic, countries(300, "v1"))
    worker = start()
    await worker.wait_ready()
    assert worker.stop() == 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([countries_topic])
        for _ in range(100):
            try:
                await create_topics(admin, [countries_topic], 3)
                break
            except AssertionError:  # still being deleted
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
    await produce(bootstrap_servers, countries_topic, countries(10, "new"))
    again = start("w0-again")
    await again.wait_ready()
    log = again.log_text()
    assert "global table countries: topic" in log and "was recreated" in log, log[-2000:]
    assert "loaded: 3 partitions, read 10 records, 10 keys" in log
    assert (await again.get("/tables/countries/keys/c5")).json()["value"] == "new-5"
    assert (await again.get("/tables/countries/keys/c200")).status_code == 404


async def test_a_topic_deleted_while_running_stops_the_worker(
    bootstrap_servers: str, topics: dict[str, str], start: Start
) -> None:
    countries_topic = topics["ONCEFLOW_TEST_GLOBAL"]
    await produce(bootstrap_servers, countries_topic, countries(10, "v1"))
    worker = start()
    await worker.wait_ready()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([countries_topic])
    finally:
        await admin.close()
    code = await asyncio.to_thread(worker.wait, 60)  # the topics are checked every 10 s
    assert code not in (None, 0)
    log = worker.log_text()
    assert f"topic '{countries_topic}' of global table 'countries' was deleted while the" in log


async def test_aborted_records_never_reach_the_table(
    bootstrap_servers: str, topics: dict[str, str], start: Start
) -> None:
    countries_topic = topics["ONCEFLOW_TEST_GLOBAL"]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, transactional_id=unique_name("countries-writer")
    )
    await producer.start()
    try:

        async def transaction(value: bytes, *, commit: bool) -> None:
            await producer.begin_transaction()
            for i in range(20):
                await producer.send_and_wait(countries_topic, value, key=f"c{i}".encode())
            await (producer.commit_transaction() if commit else producer.abort_transaction())

        await transaction(b"committed-1", commit=True)
        await transaction(b"aborted-1", commit=False)
        worker = start()
        await worker.wait_ready()  # loaded over the aborted transaction
        assert await values_of(worker) == {"committed-1"}
        await transaction(b"aborted-2", commit=False)
        await asyncio.sleep(2)  # many flushes later
        assert await values_of(worker) == {"committed-1"}
        await transaction(b"committed-2", commit=True)
    finally:
        await producer.stop()
    deadline = time.monotonic() + 30
    while (values := await values_of(worker)) != {"committed-2"}:
        assert time.monotonic() < deadline and values <= {"committed-1", "committed-2"}, values
        await asyncio.sleep(0.2)


async def values_of(worker: HttpWorker) -> set[str]:
    answers = [await worker.get(f"/tables/countries/keys/c{i}") for i in range(20)]
    return {a.json()["value"] for a in answers}
