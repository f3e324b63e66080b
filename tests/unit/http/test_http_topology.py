"""``GET /topology`` against a worker-shaped object: the description ``onceflow describe --json``
prints, behind the token like ``/tables``; query parameters refused. The real worker:
tests/integration/test_reset.py."""

from __future__ import annotations

from test_http_routes import SELF, FakeWorker, client_for

from onceflow import Context
from onceflow.runtime import describe_topology, source_counts


def worker_with_a_handler(token: str | None = None) -> FakeWorker:
    worker = FakeWorker(SELF, mine=[0, 1], token=token)
    source = worker.app.topic("clicks", key_serde="str", value_serde="str")

    @worker.app.handler(source)
    async def handle(ctx: Context, key: str, value: str) -> None:
        pass

    return worker


async def test_topology_is_the_description_with_the_workers_counts() -> None:
    worker = worker_with_a_handler()
    async with client_for(worker) as client:
        response = await client.get("/topology")
    assert response.status_code == 200
    expected = describe_topology(worker.app, source_counts(worker.app, worker.partitions))
    assert response.json() == expected.model_dump(mode="json")
    assert response.json()["task_groups"][0]["partitions"] == 4
    assert {t["partitions"] for t in response.json()["internal_topics"]} == {4}


async def test_topology_needs_the_token_when_one_is_set() -> None:
    async with client_for(worker_with_a_handler(token="s3cret")) as client:
        assert (await client.get("/topology")).status_code == 401
        ok = await client.get("/topology", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_query_parameters_are_refused_not_ignored() -> None:
    async with client_for(worker_with_a_handler()) as client:
        response = await client.get("/topology", params={"cluster": "true"})
    assert response.status_code == 400
    assert "onceflow describe MODULE --bootstrap" in response.json()["detail"]


async def test_openapi_documents_topology() -> None:
    async with client_for(worker_with_a_handler()) as client:
        spec = (await client.get("/openapi.json")).json()
    responses = spec["paths"]["/topology"]["get"]["responses"]
    assert {"200", "400", "401"} <= set(responses)
    schema = responses["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Topology"}
    assert "internal_topics" in spec["components"]["schemas"]["Topology"]["properties"]
