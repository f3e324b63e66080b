"""The HTTP API of a worker (README, *HTTP API*): health, Prometheus metrics, interactive queries.

``create_api(worker)`` builds the FastAPI app; ``serve(worker)`` binds the port, advertises the
URL to the group, and runs uvicorn next to ``worker.run()`` in the same event loop::

    worker = Worker(app, settings)
    loop.add_signal_handler(signal.SIGTERM, worker.stop)   # the CLI does this
    await serve(worker)                                     # returns when the worker stops

Routes: ``/health/live``, ``/health/ready``, ``/metrics``, ``/tables``,
``/tables/{table}/keys/{key}`` (see ``_queries``), ``/topology`` (``_topology``) and
``/openapi.json``. With ``ONCEFLOW_HTTP_TOKEN`` set, ``/tables*`` and ``/topology`` require
``Authorization: Bearer <token>``; health and metrics stay open for probes and scrapers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from onceflow.errors import ConfigurationError, OnceflowError
from onceflow.http._global_queries import global_infos
from onceflow.http._health import health_routes
from onceflow.http._queries import KEEP_ALIVE_S, OWNER, KeyQueries
from onceflow.http._topology import topology_routes
from onceflow.http._types import (
    Error,
    KeyValue,
    TableInfo,
    Tables,
    WindowedKeyValue,
    WorkerView,
)
from onceflow.sessions import SessionTable
from onceflow.sliding import SlidingWindowedTable
from onceflow.source_tables import SourceTable
from onceflow.tables import WindowedTable
from onceflow.topology import AnyTable

__all__ = ["create_api", "serve"]

log = logging.getLogger("onceflow.http")
_SHUTDOWN_GRACE_S = 5.0
_INT64_MAX = 2**63 - 1
_BEARER = HTTPBearer(auto_error=False, description="the value of ONCEFLOW_HTTP_TOKEN")


def create_api(worker: WorkerView, *, client: httpx.AsyncClient | None = None) -> FastAPI:
    """The FastAPI app serving ``worker``; ``client`` calls other instances (default: httpx)."""
    queries = KeyQueries(worker, client)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await queries.aclose()

    api = FastAPI(
        title=f"onceflow: {worker.app.app_id}",
        summary="Health, metrics and interactive queries of one onceflow worker",
        lifespan=lifespan,
    )
    api.include_router(health_routes(worker))
    api.include_router(_table_routes(worker, queries), dependencies=_auth(worker))
    api.include_router(topology_routes(worker), dependencies=_auth(worker))

    @api.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the error after this response: the server logs its traceback.
        return JSONResponse({"detail": "internal error; see the worker log"}, status_code=500)

    def openapi() -> dict[str, Any]:
        return _with_table_names(api, sorted([*worker.app.tables, *worker.app.global_tables]))

    api.openapi = openapi  # type: ignore[method-assign]
    return api


def _with_table_names(api: FastAPI, names: list[str]) -> dict[str, Any]:
    """FastAPI's schema, with this app's table names as the ``{table}`` enum (built once)."""
    if api.openapi_schema is None:
        schema = FastAPI.openapi(api)  # generates and caches api.openapi_schema
        for operation in schema["paths"].values():
            for param in operation.get("get", {}).get("parameters", []):
                if param["in"] == "path" and param["name"] == "table":
                    param["schema"]["enum"] = names
    return api.openapi_schema or {}


def _table_routes(worker: WorkerView, queries: KeyQueries) -> APIRouter:
    router = APIRouter(tags=["tables"])
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": Error} for code in (400, 401, 404, 502, 503)
    }

    @router.get("/tables", response_model=Tables, responses={401: {"model": Error}})
    async def tables() -> Tables:
        """The app's tables and the partitions this instance owns."""
        infos = [_table_info(worker, name) for name in sorted(worker.app.tables)]
        if worker.app.global_tables:
            infos = sorted([*infos, *global_infos(worker)], key=lambda info: info.name)
        return Tables(tables=infos)

    @router.get(
        "/tables/{table}/keys/{key:path}",
        response_model=KeyValue | WindowedKeyValue,
        responses=errors,
    )
    async def key(
        request: Request,
        table: Annotated[str, Path(description="table name")],
        key: Annotated[str, Path(description="the key, as text for the table's key serde")],
        from_ms: Annotated[
            int | None, Query(alias="from", ge=0, le=_INT64_MAX, description="window start ≥ ms")
        ] = None,
        to_ms: Annotated[
            int | None, Query(alias="to", ge=0, le=_INT64_MAX, description="window start ≤ ms")
        ] = None,
        stale_ok: Annotated[
            bool,
            Query(
                description="may be answered from a standby copy here, behind the owner's "
                "state by the records in the X-Onceflow-Standby-Lag header"
            ),
        ] = False,
    ) -> Any:
        """The key's committed value (windowed tables: its windows), from the key's owner.

        Answered here if this instance owns the key's partition, else by the owner (header
        ``X-Onceflow-Owner``); 503 with ``Retry-After`` while ownership is changing.
        """
        answer = await queries.lookup(request, table, key, from_ms, to_ms, stale_ok=stale_ok)
        if isinstance(answer, Response):
            return answer
        own = worker.assignor.advertised_url
        return JSONResponse(answer.model_dump(mode="json"), headers={OWNER: own})

    return router


def _table_info(worker: WorkerView, name: str) -> TableInfo:
    table = worker.app.tables[name]
    running: list[int] = []
    restoring: list[int] = []
    for (group, partition), task in sorted(worker.tasks.items()):
        if group == table.group:
            (running if task.state == "running" else restoring).append(partition)
    return TableInfo(
        name=table.name,
        kind=_kind(table),
        key_serde=table.key_serde.name,
        value_serde=table.value_serde.name,
        group=table.group,
        changelog_topic=table.changelog_topic,
        num_partitions=worker.partitions.get(table.group),
        partitions=running,
        restoring=restoring,
        standby=sorted(
            p
            for (group, p), copy in worker.standbys.items()
            if group == table.group and copy.table_lag(table.name) is not None
        ),
        window_size_ms=_window_size_ms(table),
    )


def _kind(table: AnyTable) -> Literal["table", "windowed", "session", "sliding", "source"]:
    if isinstance(table, SourceTable):
        return "source"
    if isinstance(table, SessionTable):
        return "session"
    if isinstance(table, SlidingWindowedTable):
        return "sliding"
    return "windowed" if isinstance(table, WindowedTable) else "table"


def _window_size_ms(table: AnyTable) -> int | None:
    """A tumbling, hopping or sliding window's size; None for tables without one."""
    if isinstance(table, WindowedTable | SlidingWindowedTable):
        return table.window.size_ms
    return None


def _auth(worker: WorkerView) -> list[Any]:
    token = worker.settings.http_token
    if token is None:
        return []
    expected = token.get_secret_value().encode()

    # Annotations are strings here (PEP 563): FastAPI resolves Depends(_BEARER) in the globals.
    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        if credentials is None or not hmac.compare_digest(given, expected):
            raise HTTPException(
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer <ONCEFLOW_HTTP_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return [Depends(check)]


# -- serving -------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without signal handlers of its own: SIGTERM stops the worker (the CLI's handler),
    and the worker's end stops the server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot serve HTTP on ONCEFLOW_HTTP_HOST={host} ONCEFLOW_HTTP_PORT={port}: "
            f"{exc.strerror or exc}. Pick a free port (0 = any), or ONCEFLOW_HTTP_ENABLED=false"
        ) from exc
    return sock


async def serve(worker: WorkerView) -> None:
    """Run ``worker`` with its HTTP API until the worker stops; re-raise the worker's error.

    The port is bound before the worker joins its group, so the URL it advertises (for query
    proxying) carries the real port, even with ``ONCEFLOW_HTTP_PORT=0``. If the server dies, the
    worker is stopped: a worker that cannot answer its probes would be restarted anyway.
    """
    settings = worker.settings
    if not settings.http_enabled:
        # Advertise no URL: other instances then answer this one's keys with an immediate 503
        # ("unusable URL") rather than trying a port nobody listens on.
        worker.assignor.advertised_url = ""
        await worker.run()
        return
    # httpx logs every request it sends at INFO: proxied queries are not operator events.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    sock = _bind(settings.http_host, settings.http_port)
    port = sock.getsockname()[1]
    worker.http_port = port
    worker.assignor.advertised_url = settings.effective_advertised_url(port)
    config = uvicorn.Config(
        create_api(worker),
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(_SHUTDOWN_GRACE_S),
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = _Server(config)
    host = f"[{settings.http_host}]" if ":" in settings.http_host else settings.http_host
    log.info(
        "HTTP API on http://%s:%d (advertised as %s)", host, port, worker.assignor.advertised_url
    )
    stopping = False

    def server_ended(task: asyncio.Task[None]) -> None:
        if not stopping:
            error = None if task.cancelled() else task.exception()
            log.error("the HTTP server stopped unexpectedly (%r); stopping the worker", error)
            worker.stop()

    server_task = asyncio.create_task(server.serve(sockets=[sock]), name="onceflow-http")
    server_task.add_done_callback(server_ended)
    try:
        await worker.run()
    finally:
        stopping = True
        server.should_exit = True
        await _wait_stopped(server_task)
        sock.close()
    if server_task.done() and not server_task.cancelled() and server_task.exception():
        raise OnceflowError("the HTTP server failed") from server_task.exception()


async def _wait_stopped(server_task: asyncio.Task[None]) -> None:
    _, pending = await asyncio.wait({server_task}, timeout=_SHUTDOWN_GRACE_S + 2)
    if pending:
        server_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await server_task
