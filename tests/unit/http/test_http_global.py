"""Global tables over HTTP: listed as kind "global", answered by whichever instance is asked
(from its own SQLite store, never proxied), 503 while loading; readiness names the load."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_http_routes import SELF, FakeWorker, client_for

from onceflow.state.sqlite.global_store import GlobalStorePartition, open_global_store


class FakeGlobals:
    """What the API reads of ``GlobalTables``, over a real SQLite store."""

    def __init__(self, store: GlobalStorePartition) -> None:
        self.stores = {"countries": store}
        self.remaining: int | None = None

    def loading(self) -> str | None:
        if self.remaining is None:
            return None
        return f"loading global table countries: {self.remaining} records left"

    def store(self, name: str) -> GlobalStorePartition:
        return self.stores[name]

    def partitions(self, name: str) -> list[int]:
        return [0, 1, 2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GlobalStorePartition]:
    store, _ = open_global_store(tmp_path)
    store.set_positions({0: 1})
    store.restore_batch([(b"fr", json.dumps({"name": "France"}).encode())], 1)
    yield store
    store.close()


@pytest.fixture
def worker(store: GlobalStorePartition) -> FakeWorker:
    worker = FakeWorker(SELF, mine=[])  # owns no task: a plain table's keys would be proxied
    worker.app.global_table("countries-topic", name="countries", value_serde="json")
    worker.global_tables = FakeGlobals(store)  # type: ignore[attr-defined]
    return worker


@pytest.fixture
async def client(worker: FakeWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(worker) as c:
        yield c


async def test_answered_locally_whoever_owns_tasks(worker: FakeWorker, client: Any) -> None:
    worker.current = (False, "no heartbeat")  # group membership matters not: no owner to trust
    response = await client.get("/tables/countries/keys/fr")
    assert response.status_code == 200
    assert response.json() == {"key": "fr", "value": {"name": "France"}}
    assert response.headers["X-Onceflow-Owner"] == SELF
    missing = await client.get("/tables/countries/keys/xx")
    assert missing.status_code == 404
    assert "not found in global table 'countries'" in missing.json()["detail"]


async def test_listed_as_global(client: Any) -> None:
    tables = (await client.get("/tables")).json()["tables"]
    entry = next(t for t in tables if t["name"] == "countries")
    assert entry["kind"] == "global"
    assert entry["changelog_topic"] == "countries-topic"
    assert (entry["group"], entry["partitions"], entry["restoring"]) == ("", [0, 1, 2], [])
    assert [t["name"] for t in tables] == sorted(t["name"] for t in tables)


async def test_loading_is_503_and_not_ready(worker: FakeWorker, client: Any) -> None:
    worker.global_tables.remaining = 42  # type: ignore[attr-defined]
    worker.phase = "starting"
    response = await client.get("/tables/countries/keys/fr")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "42 records left" in response.json()["detail"]
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["reason"] == "loading global table countries: 42 records left"
    entry = next(t for t in (await client.get("/tables")).json()["tables"] if t["kind"] == "global")
    assert (entry["partitions"], entry["restoring"]) == ([], [0, 1, 2])
