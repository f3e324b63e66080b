"""``GET /topology``: the app's topology, as ``onceflow describe --json`` prints it
(``onceflow.runtime.describe_topology``), with the partition counts this worker runs with.

The comparison with the cluster (``describe --bootstrap``) is not served: it costs an admin
client and several requests to the brokers per call, for what the command line shows better. A
query parameter (``?cluster=true`` for one) is refused with a 400 rather than ignored.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from onceflow.http._types import Error, WorkerView
from onceflow.runtime import Topology, describe_topology, source_counts

__all__ = ["topology_routes"]


def topology_routes(worker: WorkerView) -> APIRouter:
    router = APIRouter(tags=["topology"])
    responses: dict[int | str, dict[str, Any]] = {code: {"model": Error} for code in (400, 401)}

    @router.get("/topology", response_model=Topology, responses=responses)
    async def topology(request: Request) -> Topology:
        """Task groups, sources, handlers, tables and internal topics; partition counts are
        those this worker runs with (none before it checked the sources at start)."""
        if request.query_params:
            names = ", ".join(sorted(request.query_params))
            raise HTTPException(
                400,
                f"/topology takes no query parameters (got {names}); the comparison with the "
                "cluster is `onceflow describe MODULE --bootstrap`'s",
            )
        app = worker.app
        return describe_topology(app, source_counts(app, worker.partitions))

    return router
