"""The HTTP routes against a worker-shaped object: health edge cases, owner lookup, proxying.

The real worker end to end is in tests/integration/test_http.py; here every state a worker can
be in is set up directly, and the owner instance is a second API behind an ASGI transport.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from onceflow import App, Tumbling
from onceflow.errors import StateError
from onceflow.http import create_api
from onceflow.partitioner import partition_for_key
from onceflow.runtime.metrics import Metrics
from onceflow.settings import Settings

SELF = "http://self:8080"
OTHER = "http://other:8080"
PARTITIONS = 4


@dataclass
class Progress:
    store: str
    partition: int
    end_offset: int = 0
    position: int = 0
    done: bool = False

    @property
    def remaining(self) -> int:
        return max(0, self.end_offset - self.position)


class Store:
    def __init__(self, data: dict[bytes, bytes], on_read: Callable[[], None] | None = None):
        self.data = data
        self.on_read = on_read

    def committed_get(self, key: bytes) -> bytes | None:
        if self.on_read:
            self.on_read()
        return self.data.get(key)


class WindowStore:
    def __init__(self, data: dict[bytes, dict[int, bytes]]):
        self.data = data

    def fetch(
        self, key: bytes, from_ms: int, to_ms: int, *, committed: bool = True
    ) -> list[tuple[int, bytes]]:
        assert committed
        return sorted((s, v) for s, v in self.data.get(key, {}).items() if from_ms <= s <= to_ms)


@dataclass
class FakeTask:
    group: str
    partition: int
    state: str = "running"
    committed_stream_time: int = -1
    restores: dict[str, Progress] = field(default_factory=dict)
    stores: dict[str, Any] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        return f"{self.group}_{self.partition}"

    def store(self, name: str) -> Any:
        return self.stores[name]

    def windowed_store(self, name: str) -> Any:
        return self.stores[name]


@dataclass
class FakeAssignor:
    advertised_url: str
    owners: dict[tuple[str, int], str] = field(default_factory=dict)
    owned: list[tuple[str, int]] = field(default_factory=list)


def make_app() -> App:
    app = App("http-unit")
    app.table("sum", key_serde="str", value_serde="int64")
    app.table("by_id", key_serde="int64", value_serde="json")
    app.windowed_table("counts", window=Tumbling(minutes=5), value_serde="int64")
    return app


class NoSqlSinks:
    """An app without SQL sinks: nothing for readiness to wait for."""

    def not_ready(self) -> str | None:
        return None


class FakeWorker:
    """What create_api reads of a Worker; owns tasks for the partitions in ``mine``."""

    def __init__(self, url: str, mine: list[int], token: str | None = None) -> None:
        self.app = make_app()
        self.settings = Settings(http_token=SecretStr(token) if token else None)
        self.phase = "running"
        self.partitions = {"0": PARTITIONS}
        self.last_loop_at = time.monotonic()
        self.metrics = Metrics(self.app.app_id, eos=True)
        self.http_port: int | None = None
        self.tasks: dict[tuple[str, int], FakeTask] = {}
        self.standbys: dict[tuple[str, int], Any] = {}  # see test_http_stale.py
        self.assignor = FakeAssignor(url)
        self.current: tuple[bool, str] = (True, "current")
        self.sql_sinks = NoSqlSinks()
        for p in range(PARTITIONS):
            owner = url if p in mine else (OTHER if url == SELF else SELF)
            self.assignor.owners[("0", p)] = owner
        for p in mine:
            self.assignor.owned.append(("0", p))
            self.tasks[("0", p)] = FakeTask(
                "0",
                p,
                stores={"sum": Store({}), "by_id": Store({}), "counts": WindowStore({})},
            )

    def membership(self) -> tuple[bool, str]:
        return self.current

    def put(self, table: str, key: bytes, value: bytes) -> None:
        task = self.tasks[("0", partition_for_key(key, PARTITIONS))]
        task.stores[table].data[key] = value

    async def run(self) -> None:  # pragma: no cover - not used by the route tests
        pass

    def stop(self) -> None:  # pragma: no cover
        pass


def key_on(partition: int, prefix: str = "k") -> str:
    """A str key that lands on ``partition``."""
    return next(
        f"{prefix}{i}"
        for i in range(10_000)
        if partition_for_key(f"{prefix}{i}".encode(), PARTITIONS) == partition
    )


def int64(n: int) -> bytes:
    return n.to_bytes(8, "big", signed=True)


def client_for(worker: FakeWorker, owner_client: httpx.AsyncClient | None = None) -> Any:
    api = create_api(worker, client=owner_client)
    return httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url=SELF)


@pytest.fixture
def worker() -> FakeWorker:
    return FakeWorker(SELF, mine=[0, 1])


@pytest.fixture
async def client(worker: FakeWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(worker) as c:
        yield c


# -- health ----------------------------------------------------------------------------------


async def test_live_while_the_loop_turns(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_not_live_when_the_loop_is_wedged(worker: FakeWorker, client: Any) -> None:
    worker.last_loop_at = time.monotonic() - worker.settings.stuck_after_ms / 1000 - 5
    response = await client.get("/health/live")
    assert response.status_code == 503
    assert response.json()["status"] == "not live"
    assert "stuck" in response.json()["reason"]


async def test_not_live_when_stopped(worker: FakeWorker, client: Any) -> None:
    worker.phase = "stopped"
    response = await client.get("/health/live")
    assert (response.status_code, response.json()["reason"]) == (503, "worker stopped")


@pytest.mark.parametrize(
    ("phase", "reason"),
    [
        ("starting", "starting"),
        ("joining", "joining group"),
        ("rebalancing", "rebalancing"),
        ("stopping", "stopping"),
    ],
)
async def test_not_ready_outside_the_running_phase(
    worker: FakeWorker, client: Any, phase: str, reason: str
) -> None:
    worker.phase = phase
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "reason": reason}


async def test_not_ready_while_a_store_restores(worker: FakeWorker, client: Any) -> None:
    task = worker.tasks[("0", 1)]
    task.state = "restoring"
    task.restores["sum"] = Progress("sum", 1, end_offset=0)
    reason = (await client.get("/health/ready")).json()["reason"]
    assert reason == "restoring store sum partition 1: reading the changelog end offset"
    task.restores["sum"] = Progress("sum", 1, end_offset=20_000, position=7655)
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["reason"] == "restoring store sum partition 1: 12345 records left"
    task.restores["sum"].done = True
    reason = (await client.get("/health/ready")).json()["reason"]
    assert reason == "starting task 0_1"  # restored, not yet running (resuming partitions)
    task.state = "running"
    assert (await client.get("/health/ready")).status_code == 200


async def test_not_ready_while_a_failed_task_is_rebuilt(worker: FakeWorker, client: Any) -> None:
    del worker.tasks[("0", 0)]  # the worker drops a failed task and revives it after a delay
    response = await client.get("/health/ready")
    assert (response.status_code, response.json()["reason"]) == (503, "rebuilding task 0_0")


async def test_not_ready_while_a_failed_task_waits_to_be_closed(
    worker: FakeWorker, client: Any
) -> None:
    worker.tasks[("0", 1)].state = "failed"  # its commit failed; the worker closes it next
    response = await client.get("/health/ready")
    assert (response.status_code, response.json()["reason"]) == (
        503,
        "task 0_1 failed; rebuilding it",
    )


async def test_not_ready_while_the_membership_is_not_current(
    worker: FakeWorker, client: Any
) -> None:
    worker.current = (False, "no heartbeat confirmed for 9.0s, beyond the session timeout (6s)")
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "reason": "group membership not current: no heartbeat confirmed for 9.0s, beyond the "
        "session timeout (6s)",
    }
    live = await client.get("/health/live")  # the loop turns: not a reason to restart
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    worker.current = (True, "current")
    assert (await client.get("/health/ready")).status_code == 200


async def test_ready_with_no_tasks(client: Any, worker: FakeWorker) -> None:
    worker.tasks.clear()
    worker.assignor.owned.clear()  # more instances than partitions: an idle standby is ready
    assert (await client.get("/health/ready")).json() == {"status": "ok"}


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'onceflow_eos_enabled{app="http-unit"} 1.0' in response.text


# -- /tables ---------------------------------------------------------------------------------


async def test_tables_list_kinds_serdes_and_owned_partitions(
    worker: FakeWorker, client: Any
) -> None:
    worker.tasks[("0", 1)].state = "restoring"
    tables = {t["name"]: t for t in (await client.get("/tables")).json()["tables"]}
    assert sorted(tables) == ["by_id", "counts", "sum"]
    assert tables["sum"] == {
        "name": "sum",
        "kind": "table",
        "key_serde": "str",
        "value_serde": "int64",
        "group": "0",
        "changelog_topic": "http-unit-sum-changelog",
        "num_partitions": PARTITIONS,
        "partitions": [0],
        "restoring": [1],
        "standby": [],
        "window_size_ms": None,
    }
    assert tables["counts"]["kind"] == "windowed"
    assert tables["counts"]["window_size_ms"] == 300_000


# -- key lookups answered here -----------------------------------------------------------------


async def test_local_key_from_committed_state(worker: FakeWorker, client: Any) -> None:
    key = key_on(0)
    worker.put("sum", key.encode(), int64(42))
    response = await client.get(f"/tables/sum/keys/{key}")
    assert (response.status_code, response.json()) == (200, {"key": key, "value": 42})
    assert response.headers["x-onceflow-owner"] == SELF


async def test_int64_keys_parse_from_text(worker: FakeWorker, client: Any) -> None:
    data = int64(7)
    worker.tasks[("0", partition_for_key(data, PARTITIONS))] = FakeTask(
        "0", partition_for_key(data, PARTITIONS), stores={"by_id": Store({data: b'{"a":[1]}'})}
    )
    response = await client.get("/tables/by_id/keys/7")
    assert response.json() == {"key": 7, "value": {"a": [1]}}


async def test_unknown_table_and_key_are_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/tables/nope/keys/x")
    assert response.status_code == 404
    assert "unknown table 'nope'" in response.json()["detail"]
    response = await client.get(f"/tables/sum/keys/{key_on(0)}")
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]
    assert response.headers["x-onceflow-owner"] == SELF


@pytest.mark.parametrize("text", ["abc", "1.5", "99999999999999999999", "", " 7"])
async def test_a_key_that_does_not_parse_is_400_naming_the_serde(
    client: httpx.AsyncClient, text: str
) -> None:
    response = await client.get(f"/tables/by_id/keys/{text}")
    assert response.status_code == 400
    assert "serde 'int64'" in response.json()["detail"]


@pytest.mark.parametrize("query", ["from=x", "to=1.5", "from=-1", f"to={2**63}"])
async def test_bad_window_params_are_422(client: httpx.AsyncClient, query: str) -> None:
    assert (await client.get(f"/tables/counts/keys/a?{query}")).status_code == 422


async def test_windows_of_a_key_and_their_range(worker: FakeWorker, client: Any) -> None:
    key = key_on(1)
    worker.tasks[("0", 1)].stores["counts"].data[key.encode()] = {
        0: int64(3),
        300_000: int64(5),
        600_000: int64(1),
    }
    everything = (await client.get(f"/tables/counts/keys/{key}")).json()
    assert everything == {
        "key": key,
        "windows": [
            {"start": 0, "end": 300_000, "value": 3},
            {"start": 300_000, "end": 600_000, "value": 5},
            {"start": 600_000, "end": 900_000, "value": 1},
        ],
    }
    some = (await client.get(f"/tables/counts/keys/{key}?from=1&to=600000")).json()
    assert [w["start"] for w in some["windows"]] == [300_000, 600_000]
    response = await client.get(f"/tables/counts/keys/{key}?from=900000")
    assert response.status_code == 404
    response = await client.get(f"/tables/counts/keys/{key}?from=5&to=4")
    assert response.status_code == 404  # an empty range, as in Kafka Streams: not an error
    assert response.json()["detail"] == f"key '{key}' has no windows starting in [5, 4] in 'counts'"


async def test_slashes_and_dots_in_keys() -> None:
    worker = FakeWorker(SELF, mine=[0, 1, 2, 3])
    async with client_for(worker) as client:
        for key in ("a/b", "..", "é x?#", "%41"):
            worker.put("sum", key.encode(), int64(1))
            # ".." has to travel percent-encoded, or URL normalization eats it
            path = "/tables/sum/keys/" + quote(key, safe="/").replace(".", "%2E")
            response = await client.get(path)
            assert response.json() == {"key": key, "value": 1}, key


# -- when this instance must not answer --------------------------------------------------------


async def test_503_with_retry_after_during_a_rebalance(worker: FakeWorker, client: Any) -> None:
    worker.phase = "rebalancing"
    response = await client.get(f"/tables/sum/keys/{key_on(0)}")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "rebalancing" in response.json()["detail"]


async def test_503_while_the_task_restores(worker: FakeWorker, client: Any) -> None:
    worker.tasks[("0", 0)].state = "restoring"
    response = await client.get(f"/tables/sum/keys/{key_on(0)}")
    assert response.status_code == 503
    assert response.json()["detail"] == "task 0_0 is restoring here; retry"


async def test_503_while_a_failed_task_waits_to_be_closed(worker: FakeWorker, client: Any) -> None:
    key = key_on(0)
    worker.put("sum", key.encode(), int64(1))
    worker.tasks[("0", 0)].state = "failed"  # its commit failed: it may be fenced already
    response = await client.get(f"/tables/sum/keys/{key}")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json() == {"detail": "task 0_0 is failed here; retry"}


NOT_CURRENT = "no heartbeat confirmed for 8.2s, beyond the session timeout (6s)"


@pytest.mark.parametrize("partition", [0, 2], ids=["owned here", "owned by the other"])
async def test_503_while_the_membership_is_not_current(worker: FakeWorker, partition: int) -> None:
    """A zombie (paused past its session timeout) neither answers from its state nor proxies
    with its stale view of the owners."""
    key = key_on(partition)
    if partition == 0:
        worker.put("sum", key.encode(), int64(1))
    worker.current = (False, NOT_CURRENT)
    never = httpx.MockTransport(lambda r: pytest.fail(f"proxied to {r.url}"))
    async with client_for(worker, httpx.AsyncClient(transport=never)) as client:
        response = await client.get(f"/tables/sum/keys/{key}")
        assert (response.status_code, response.headers["retry-after"]) == (503, "1")
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "detail": f"group membership of this instance is not current ({NOT_CURRENT}); retry"
        }
        assert "x-onceflow-owner" not in response.headers


async def test_membership_lapsing_during_the_read_is_503(worker: FakeWorker, client: Any) -> None:
    key = key_on(0)
    worker.put("sum", key.encode(), int64(1))

    def lapse() -> None:
        worker.current = (False, NOT_CURRENT)

    worker.tasks[("0", 0)].stores["sum"].on_read = lapse
    response = await client.get(f"/tables/sum/keys/{key}")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert NOT_CURRENT in response.json()["detail"]


async def test_503_when_no_owner_is_known(worker: FakeWorker, client: Any) -> None:
    del worker.assignor.owners[("0", 2)]
    response = await client.get(f"/tables/sum/keys/{key_on(2)}")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")


async def test_503_when_assigned_here_but_not_started(worker: FakeWorker, client: Any) -> None:
    del worker.tasks[("0", 0)]
    response = await client.get(f"/tables/sum/keys/{key_on(0)}")
    assert response.status_code == 503
    assert "assigned here but not running" in response.json()["detail"]


async def test_store_closed_under_the_read_is_503(worker: FakeWorker, client: Any) -> None:
    key = key_on(0)

    def revoke() -> None:
        task = worker.tasks.pop(("0", 0))
        task.state = "closed"
        raise StateError("store 'sum' is closed; it was released by its task")

    worker.tasks[("0", 0)].stores["sum"].on_read = revoke
    response = await client.get(f"/tables/sum/keys/{key}")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert "revoked during the read" in response.json()["detail"]


async def test_value_read_just_before_a_revocation_is_not_served(
    worker: FakeWorker, client: Any
) -> None:
    key = key_on(0)
    worker.put("sum", key.encode(), int64(1))
    worker.tasks[("0", 0)].stores["sum"].on_read = lambda: worker.tasks.pop(("0", 0))
    assert (await client.get(f"/tables/sum/keys/{key}")).status_code == 503


async def test_a_store_fault_on_a_running_task_is_a_json_500(worker: FakeWorker) -> None:
    def broken() -> None:
        raise RuntimeError("disk on fire")

    worker.tasks[("0", 0)].stores["sum"].on_read = broken
    api = create_api(worker)
    transport = httpx.ASGITransport(api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=SELF) as client:
        response = await client.get(f"/tables/sum/keys/{key_on(0)}")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error; see the worker log"}


# -- key lookups answered by the owner ---------------------------------------------------------


@pytest.fixture
def owner() -> FakeWorker:
    return FakeWorker(OTHER, mine=[2, 3])


async def test_proxied_to_the_owner(worker: FakeWorker, owner: FakeWorker) -> None:
    key = key_on(2)
    owner.put("sum", key.encode(), int64(-5))
    owner_api = create_api(owner)
    to_owner = httpx.AsyncClient(transport=httpx.ASGITransport(owner_api))
    async with client_for(worker, to_owner) as client:
        response = await client.get(f"/tables/sum/keys/{key}")
        assert (response.status_code, response.json()) == (200, {"key": key, "value": -5})
        assert response.headers["x-onceflow-owner"] == OTHER
        # the owner's 404 comes back as it is, with the owner named
        response = await client.get(f"/tables/sum/keys/{key_on(2, 'missing')}")
        assert (response.status_code, response.headers["x-onceflow-owner"]) == (404, OTHER)


async def test_a_forwarded_request_is_never_forwarded_again(
    worker: FakeWorker, client: Any
) -> None:
    response = await client.get(
        f"/tables/sum/keys/{key_on(2)}", headers={"X-Onceflow-Forwarded": "1"}
    )
    assert response.status_code == 503
    assert "not owned here" in response.json()["detail"]


async def test_proxy_sends_the_key_verbatim_and_only_to_the_owner(worker: FakeWorker) -> None:
    seen: list[httpx.Request] = []

    def owner(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"key": "x", "value": 1})

    key = next(
        k
        for k in (f"../../metrics?{i}/x" for i in range(1000))
        if partition_for_key(k.encode(), PARTITIONS) == 2
    )
    quoted = quote(key, safe="").replace(".", "%2E")
    to_owner = httpx.AsyncClient(transport=httpx.MockTransport(owner))
    async with client_for(worker, to_owner) as client:
        response = await client.get(
            f"/tables/sum/keys/{quoted}?from=1",
            headers={"Authorization": "Bearer t", "Host": "evil.example"},
        )
    assert response.status_code == 200
    (request,) = seen
    assert (request.url.scheme, request.url.host, request.url.port) == ("http", "other", 8080)
    assert request.url.raw_path.startswith(b"/tables/sum/keys/%2E%2E%2F%2E%2E%2Fmetrics%3F")
    assert request.url.params["from"] == "1"
    assert request.headers["x-onceflow-forwarded"] == "1"
    assert request.headers["authorization"] == "Bearer t"


async def test_503_when_the_owner_does_not_answer(worker: FakeWorker) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    to_owner = httpx.AsyncClient(transport=httpx.MockTransport(down))
    async with client_for(worker, to_owner) as client:
        response = await client.get(f"/tables/sum/keys/{key_on(3)}")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert OTHER in response.json()["detail"]


async def test_an_oversized_owner_answer_is_cut(worker: FakeWorker) -> None:
    huge = httpx.MockTransport(lambda r: httpx.Response(200, content=b"x" * (17 * 1024 * 1024)))
    async with client_for(worker, httpx.AsyncClient(transport=huge)) as client:
        response = await client.get(f"/tables/sum/keys/{key_on(3)}")
    assert response.status_code == 502


@pytest.mark.parametrize("url", ["", "ftp://other/", "not a url", "http://"])
async def test_an_unusable_owner_url_is_never_called(worker: FakeWorker, url: str) -> None:
    worker.assignor.owners[("0", 3)] = url
    never = httpx.MockTransport(lambda r: pytest.fail(f"called {r.url}"))
    async with client_for(worker, httpx.AsyncClient(transport=never)) as client:
        response = await client.get(f"/tables/sum/keys/{key_on(3)}")
    assert response.status_code == 503


# -- bearer token --------------------------------------------------------------------------------


async def test_token_guards_tables_only() -> None:
    worker = FakeWorker(SELF, mine=[0, 1, 2, 3], token="s3cret")
    async with client_for(worker) as client:
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
            response = await client.get("/tables", headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
        response = await client.get(
            "/tables", headers={"Authorization": "Bearer s3cr\xe9t".encode("latin-1")}
        )
        assert response.status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert (await client.get("/tables", headers=good)).status_code == 200
        assert (await client.get("/tables/sum/keys/a", headers=good)).status_code == 404
        assert (await client.get("/tables/sum/keys/a")).status_code == 401


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {
        "/health/live",
        "/health/ready",
        "/metrics",
        "/tables",
        "/tables/{table}/keys/{key}",
    } <= set(spec["paths"])
    operation = spec["paths"]["/tables/{table}/keys/{key}"]["get"]
    assert {"200", "400", "404", "422", "503"} <= set(operation["responses"])
    (table,) = [p for p in operation["parameters"] if p["name"] == "table"]
    assert table["schema"]["enum"] == ["by_id", "counts", "sum"]
