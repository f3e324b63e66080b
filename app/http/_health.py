"""Health and metrics routes: liveness (is the loop turning?), readiness (am I a current
member of the group, with all my tasks restored and running?), and the Prometheus scrape.

Kubernetes restarts a pod that is not live and routes no traffic to one that is not ready; the
503 bodies name the reason, e.g. ``restoring store counts partition 3: 12345 records left``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from onceflow.http._types import NotOk, Status, TaskView, WorkerView

__all__ = ["health_routes", "liveness", "readiness"]


def readiness(worker: WorkerView) -> str | None:
    """Why ``worker`` is not ready to serve its tasks, or None when it is."""
    phase = worker.phase
    if phase == "starting" and worker.app.global_tables:
        loading = worker.global_tables.loading()
        if loading is not None:
            return loading  # "loading global table countries: 1234 records left"
    if phase in ("starting", "joining"):
        return "joining group" if phase == "joining" else "starting"
    if phase != "running":
        return phase  # rebalancing, stopping, stopped
    current, why = worker.membership()
    if not current:
        return f"group membership not current: {why}"
    for key in sorted(worker.tasks):
        reason = _task_not_ready(worker.tasks[key])
        if reason is not None:
            return reason
    for group, partition in worker.assignor.owned:
        if (group, partition) not in worker.tasks:
            return f"rebuilding task {group}_{partition}"  # it failed; see the worker log
    return worker.sql_sinks.not_ready()  # a database down, a partition not claimed yet


def _task_not_ready(task: TaskView) -> str | None:
    if task.state == "running":
        return None
    if task.state == "failed":
        return f"task {task.task_id} failed; rebuilding it"  # see the worker log
    for progress in task.restores.values():
        if not progress.done:
            where = f"restoring store {progress.store} partition {progress.partition}"
            if progress.end_offset == 0:  # not started: the end offset is not read yet
                return f"{where}: reading the changelog end offset"
            return f"{where}: {progress.remaining} records left"
    return f"starting task {task.task_id}"


def liveness(worker: WorkerView) -> str | None:
    """Why ``worker`` should be restarted (its loop is wedged or gone), or None."""
    if worker.phase == "stopped":
        return "worker stopped"
    limit = worker.settings.stuck_after_ms / 1000
    idle = time.monotonic() - worker.last_loop_at
    if idle > limit:
        return f"worker loop stuck: no iteration for {idle:.0f}s (limit {limit:.0f}s)"
    return None


def health_routes(worker: WorkerView) -> APIRouter:
    """``/health/live``, ``/health/ready`` and ``/metrics`` of ``worker``."""
    router = APIRouter()
    down: dict[int | str, dict[str, Any]] = {503: {"model": NotOk}}

    @router.get("/health/live", response_model=Status, responses=down, tags=["health"])
    async def live() -> Any:
        """200 while the worker loop runs; 503 when it is wedged or stopped (restart me)."""
        reason = liveness(worker)
        if reason is None:
            return Status()
        return JSONResponse({"status": "not live", "reason": reason}, status_code=503)

    @router.get("/health/ready", response_model=Status, responses=down, tags=["health"])
    async def ready() -> Any:
        """200 when the worker is a current member of its group and every task it owns is
        restored and running."""
        reason = readiness(worker)
        if reason is None:
            return Status()
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @router.get("/metrics", response_class=PlainTextResponse, tags=["metrics"])
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(worker.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
