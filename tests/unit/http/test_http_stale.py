"""``GET /tables/{t}/keys/{k}?stale_ok=true``: answered from a standby copy kept here, with the
records it lacks in ``X-Onceflow-Standby-Lag``, only when asked and only when no running task
here answers; never otherwise (docs/deploy.md, *High availability: standby replicas*).

The standby is a worker-shaped fake (``StandbyView``) over real SQLite store partitions in
``tmp_path``, filled the way a standby fills them: ``restore_batch`` with changelog records. The
real standbys on a broker are in tests/integration/test_stale_queries.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_http_routes import (
    OTHER,
    SELF,
    FakeTask,
    FakeWorker,
    Store,
    client_for,
    int64,
    key_on,
)

from onceflow.http import create_api
from onceflow.state.sqlite.partition import SqliteStorePartition
from onceflow.state.windowed import WindowedStorePartition, changelog_key
from onceflow.tables import WindowedTable

LAG = "x-onceflow-standby-lag"
OWNER = "x-onceflow-owner"
STANDBY = ("0", 2)  # owned by OTHER in FakeWorker(SELF, mine=[0, 1])


class Hooked:
    """A real store partition whose reads first call ``before_read`` (to act during a read)."""

    def __init__(self, inner: SqliteStorePartition, before_read: Callable[[], None]) -> None:
        self.inner = inner
        self.before_read = before_read

    def committed_get(self, key: bytes) -> bytes | None:
        self.before_read()
        return self.inner.committed_get(key)


@dataclass
class FakeStandby(FakeTask):
    """What queries read of a ``StandbyTask``: its stores and, per table it keeps, its lag."""

    lags: dict[str, int] = field(default_factory=dict)
    state: str = "standby"

    def table_lag(self, table: str) -> int | None:
        return self.lags.get(table)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Real SQLite partitions of ``sum`` and ``counts`` for the standby of task 0_2."""
    counts = FakeWorker(SELF, mine=[]).app.tables["counts"]
    assert isinstance(counts, WindowedTable)
    kv = SqliteStorePartition(tmp_path / "sum" / "2")
    windowed = WindowedStorePartition(
        SqliteStorePartition(tmp_path / "counts" / "2"),
        segment_interval_ms=counts.segment_interval_ms,
    )
    yield {"sum": kv, "counts": windowed}
    kv.close()
    windowed.close()


@pytest.fixture
def worker(stores: dict[str, Any]) -> FakeWorker:
    """Runs tasks 0_0 and 0_1; OTHER runs 0_2 and 0_3; a standby of 0_2 is kept here."""
    worker = FakeWorker(SELF, mine=[0, 1])
    worker.standbys[STANDBY] = FakeStandby(*STANDBY, stores=stores, lags={"sum": 3, "counts": 0})
    return worker


def never_called() -> httpx.AsyncClient:
    """A client to the owners that fails the test if anything is proxied."""
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda r: pytest.fail(f"to {r.url}")))


@pytest.fixture
async def client(worker: FakeWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(worker, never_called()) as c:
        yield c


def restoring_here(worker: FakeWorker) -> None:
    """Task 0_2 assigned here (its standby promoted) and still restoring."""
    worker.assignor.owners[STANDBY] = SELF
    worker.tasks[STANDBY] = FakeTask(*STANDBY, state="restoring", stores={"sum": Store({})})


WHERE = pytest.mark.parametrize(
    "restoring", [False, True], ids=["active on the other", "restoring here"]
)


# -- answered from the standby -----------------------------------------------------------------


@WHERE
async def test_stale_ok_answers_from_the_standby_with_its_lag(
    worker: FakeWorker, client: httpx.AsyncClient, stores: dict[str, Any], restoring: bool
) -> None:
    if restoring:
        restoring_here(worker)
    key = key_on(2)
    stores["sum"].restore_batch([(key.encode(), int64(7))], 41)
    response = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert (response.status_code, response.json()) == (200, {"key": key, "value": 7})
    assert (response.headers[LAG], response.headers[OWNER]) == ("3", SELF)
    assert response.headers["content-type"] == "application/json"


async def test_the_standby_answer_follows_its_store(
    worker: FakeWorker, client: httpx.AsyncClient, stores: dict[str, Any]
) -> None:
    key = key_on(2)
    standby = worker.standbys[STANDBY]
    stores["sum"].restore_batch([(key.encode(), int64(1))], 0)
    first = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    stores["sum"].restore_batch([(key.encode(), int64(2))], 1)  # the next changelog batch
    standby.lags["sum"] = 0
    second = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert [first.json()["value"], second.json()["value"]] == [1, 2]
    assert [first.headers[LAG], second.headers[LAG]] == ["3", "0"]
    stores["sum"].restore_batch([(key.encode(), None)], 2)  # a tombstone
    gone = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert (gone.status_code, gone.headers[LAG]) == (404, "0")


@WHERE
async def test_a_key_missing_from_the_standby_is_404_with_both_headers(
    worker: FakeWorker, client: httpx.AsyncClient, restoring: bool
) -> None:
    if restoring:
        restoring_here(worker)
    key = key_on(2, "missing")
    response = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert response.status_code == 404
    assert response.json() == {"detail": f"key {key!r} not found in table 'sum'"}
    assert (response.headers[LAG], response.headers[OWNER]) == ("3", SELF)
    assert "retry-after" not in response.headers


async def test_windows_from_the_standby(client: httpx.AsyncClient, stores: dict[str, Any]) -> None:
    """A standby knows no stream time: every window on disk shows, within from/to."""
    key = key_on(2)
    records = [(changelog_key(key.encode(), s), int64(v)) for s, v in [(0, 3), (300_000, 5)]]
    stores["counts"].restore_batch(records, 9)
    response = await client.get(f"/tables/counts/keys/{key}?stale_ok=true")
    assert response.status_code == 200
    assert response.json() == {
        "key": key,
        "windows": [
            {"start": 0, "end": 300_000, "value": 3},
            {"start": 300_000, "end": 600_000, "value": 5},
        ],
    }
    assert (response.headers[LAG], response.headers[OWNER]) == ("0", SELF)
    later = await client.get(f"/tables/counts/keys/{key}?stale_ok=true&from=1")
    assert [w["start"] for w in later.json()["windows"]] == [300_000]
    none = await client.get(f"/tables/counts/keys/{key}?stale_ok=true&from=600000")
    assert (none.status_code, none.headers[LAG]) == (404, "0")


@pytest.mark.parametrize("value", ["true", "1", "yes", "on", "True"])
async def test_stale_ok_spellings(
    client: httpx.AsyncClient, stores: dict[str, Any], value: str
) -> None:
    key = key_on(2)
    stores["sum"].restore_batch([(key.encode(), int64(7))], 0)
    response = await client.get(f"/tables/sum/keys/{key}", params={"stale_ok": value})
    assert (response.status_code, response.headers.get(LAG)) == (200, "3")


# -- never from the standby ----------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?stale_ok=false", "?stale_ok=0"])
async def test_without_stale_ok_the_owner_answers(
    worker: FakeWorker, stores: dict[str, Any], query: str
) -> None:
    key = key_on(2)
    stores["sum"].restore_batch([(key.encode(), int64(7))], 0)
    owner = FakeWorker(OTHER, mine=[2, 3])
    owner.put("sum", key.encode(), int64(8))
    to_owner = httpx.AsyncClient(transport=httpx.ASGITransport(create_api(owner)))
    async with client_for(worker, to_owner) as client:
        response = await client.get(f"/tables/sum/keys/{key}{query}")
    assert (response.status_code, response.json()) == (200, {"key": key, "value": 8})
    assert response.headers[OWNER] == OTHER
    assert LAG not in response.headers


@pytest.mark.parametrize("query", ["", "?stale_ok=false"])
async def test_without_stale_ok_a_restoring_task_is_503(
    worker: FakeWorker, client: httpx.AsyncClient, stores: dict[str, Any], query: str
) -> None:
    restoring_here(worker)
    key = key_on(2)
    stores["sum"].restore_batch([(key.encode(), int64(7))], 0)
    response = await client.get(f"/tables/sum/keys/{key}{query}")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json() == {"detail": "task 0_2 is restoring here; retry"}
    assert LAG not in response.headers


async def test_a_running_task_here_answers_even_with_stale_ok(
    worker: FakeWorker, client: httpx.AsyncClient, stores: dict[str, Any]
) -> None:
    key = key_on(0)
    worker.put("sum", key.encode(), int64(1))
    # A standby of the same task (never kept next to its active; here to see which answers)
    worker.standbys[("0", 0)] = FakeStandby("0", 0, stores=stores, lags={"sum": 0})
    stores["sum"].restore_batch([(key.encode(), int64(99))], 0)
    response = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert (response.status_code, response.json()) == (200, {"key": key, "value": 1})
    assert response.headers[OWNER] == SELF
    assert LAG not in response.headers
    missing = await client.get(f"/tables/sum/keys/{key_on(0, 'missing')}?stale_ok=true")
    assert (missing.status_code, missing.headers[OWNER]) == (404, SELF)
    assert LAG not in missing.headers


async def test_stale_ok_without_a_standby_here_asks_the_owner_for_a_fresh_answer(
    worker: FakeWorker,
) -> None:
    seen: list[httpx.Request] = []

    def owner(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"key": "x", "value": 1})

    to_owner = httpx.AsyncClient(transport=httpx.MockTransport(owner))
    async with client_for(worker, to_owner) as client:
        response = await client.get(f"/tables/sum/keys/{key_on(3)}?stale_ok=true&from=1")
    assert (response.status_code, response.headers[OWNER]) == (200, OTHER)
    assert LAG not in response.headers
    (request,) = seen
    assert dict(request.url.params) == {"from": "1"}  # the owner answers from its own state


@WHERE
async def test_a_table_the_standby_does_not_keep_is_not_answered_from_it(
    worker: FakeWorker, stores: dict[str, Any], restoring: bool
) -> None:
    """``table_lag`` None (a source table's copy is not kept): as without ``stale_ok``."""
    if restoring:
        restoring_here(worker)
    worker.standbys[STANDBY].lags = {"counts": 0}
    key = key_on(2)
    stores["sum"].restore_batch([(key.encode(), int64(7))], 0)
    proxied: list[httpx.Request] = []

    def owner(request: httpx.Request) -> httpx.Response:
        proxied.append(request)
        return httpx.Response(200, json={"key": key, "value": 8})

    async with client_for(worker, httpx.AsyncClient(transport=httpx.MockTransport(owner))) as c:
        response = await c.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert LAG not in response.headers
    if restoring:
        assert (response.status_code, proxied) == (503, [])
        assert response.json() == {"detail": "task 0_2 is restoring here; retry"}
    else:
        assert (response.status_code, response.json()["value"], len(proxied)) == (200, 8, 1)
        assert response.headers[OWNER] == OTHER


@pytest.mark.parametrize("phase", ["running", "rebalancing"])
async def test_the_standby_answers_through_rebalances_and_a_lapsed_membership(
    worker: FakeWorker, client: httpx.AsyncClient, stores: dict[str, Any], phase: str
) -> None:
    """A copy's answer is the changelog's committed state with its lag: the group does not
    matter to it. Without stale_ok the same instance answers 503."""
    key = key_on(2)
    stores["sum"].restore_batch([(key.encode(), int64(7))], 0)
    worker.current = (False, "no heartbeat confirmed for 8.2s, beyond the session timeout (6s)")
    worker.phase = phase
    response = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert (response.status_code, response.json()["value"]) == (200, 7)
    assert response.headers[LAG] == str(worker.standbys[("0", 2)].table_lag("sum"))
    fresh = await client.get(f"/tables/sum/keys/{key}")
    assert (fresh.status_code, fresh.headers["retry-after"]) == (503, "1")
    assert LAG not in fresh.headers


async def test_a_standby_closed_during_the_read_is_503(
    worker: FakeWorker, client: httpx.AsyncClient, stores: dict[str, Any]
) -> None:
    """The next assignment dropped the copy under the read: its store is closed (StateError)."""
    key = key_on(2)
    stores["sum"].restore_batch([(key.encode(), int64(7))], 0)

    def drop() -> None:
        worker.standbys.pop(STANDBY)
        stores["sum"].close()

    worker.standbys[STANDBY].stores["sum"] = Hooked(stores["sum"], drop)
    response = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json() == {"detail": "task 0_2 was revoked during the read; retry"}
    assert LAG not in response.headers


async def test_a_value_read_just_before_the_standby_was_dropped_is_not_served(
    worker: FakeWorker, client: httpx.AsyncClient, stores: dict[str, Any]
) -> None:
    key = key_on(2)
    stores["sum"].restore_batch([(key.encode(), int64(7))], 0)
    worker.standbys[STANDBY].stores["sum"] = Hooked(
        stores["sum"], lambda: worker.standbys.pop(STANDBY)
    )
    response = await client.get(f"/tables/sum/keys/{key}?stale_ok=true")
    assert response.status_code == 503


# -- the parameter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["maybe", "", "2", "truee"])
async def test_a_bad_stale_ok_value_is_422_naming_the_parameter(
    client: httpx.AsyncClient, value: str
) -> None:
    response = await client.get(f"/tables/sum/keys/{key_on(2)}", params={"stale_ok": value})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "stale_ok"]
    assert error["msg"] == "Input should be a valid boolean, unable to interpret input"
    assert LAG not in response.headers


async def test_openapi_documents_stale_ok_and_the_lag_header(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/tables/{table}/keys/{key}"]
    (param,) = [p for p in operation["get"]["parameters"] if p["name"] == "stale_ok"]
    assert (param["in"], param["required"], param["schema"]["type"]) == ("query", False, "boolean")
    assert "X-Onceflow-Standby-Lag" in param["description"]


async def test_tables_lists_the_partitions_kept_as_standby(
    worker: FakeWorker, client: httpx.AsyncClient
) -> None:
    worker.standbys[("0", 3)] = FakeStandby("0", 3, stores={}, lags={"counts": 0})
    tables = {t["name"]: t for t in (await client.get("/tables")).json()["tables"]}
    assert (tables["sum"]["partitions"], tables["sum"]["standby"]) == ([0, 1], [2])
    assert tables["counts"]["standby"] == [2, 3]  # 0_3's copy keeps counts only
