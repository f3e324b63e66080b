"""``serve()``: bind first, advertise the real port, run the server beside the worker, stop
together, and let the worker's own error through."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from test_http_routes import FakeWorker

from onceflow.errors import ConfigurationError
from onceflow.http._server import _bind, serve
from onceflow.settings import Settings


class RunningWorker(FakeWorker):
    """A worker whose ``run()`` lasts until ``stop()``, then fails if told to."""

    def __init__(self, settings: Settings, error: Exception | None = None) -> None:
        super().__init__("http://unset", mine=[0])
        self.settings = settings
        self.error = error
        self.url_at_run: str | None = None
        self.started = asyncio.Event()
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        self.url_at_run = self.assignor.advertised_url
        self.started.set()
        await self._stopped.wait()
        self.phase = "stopped"
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stopped.set()


def local(**overrides: object) -> Settings:
    return Settings(**{"http_host": "127.0.0.1", "http_port": 0, **overrides})  # type: ignore[arg-type]


async def test_serves_on_the_bound_port_and_stops_with_the_worker() -> None:
    worker = RunningWorker(local())
    serving = asyncio.create_task(serve(worker))
    await asyncio.wait_for(worker.started.wait(), 5)
    assert worker.http_port
    url = f"http://127.0.0.1:{worker.http_port}"
    assert worker.url_at_run == url  # advertised before the group join
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(50):  # the server task starts listening right after run() is called
            try:
                response = await client.get("/health/ready")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
        assert response.status_code == 200
    worker.stop()
    await asyncio.wait_for(serving, 10)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{url}/health/live")


async def test_advertised_url_setting_wins() -> None:
    worker = RunningWorker(local(advertised_url="http://pod-0.svc:8080/"))
    serving = asyncio.create_task(serve(worker))
    await asyncio.wait_for(worker.started.wait(), 5)
    assert worker.url_at_run == "http://pod-0.svc:8080"
    worker.stop()
    await asyncio.wait_for(serving, 10)


async def test_the_worker_error_is_reraised_as_it_is() -> None:
    worker = RunningWorker(local(), error=ConfigurationError("bad handler"))
    serving = asyncio.create_task(serve(worker))
    await asyncio.wait_for(worker.started.wait(), 5)
    worker.stop()
    with pytest.raises(ConfigurationError, match="bad handler"):
        await asyncio.wait_for(serving, 10)


async def test_disabled_http_only_runs_the_worker() -> None:
    worker = RunningWorker(local(http_enabled=False))
    serving = asyncio.create_task(serve(worker))
    await asyncio.wait_for(worker.started.wait(), 5)
    assert worker.http_port is None
    assert worker.url_at_run == ""  # peers get an immediate 503 for its keys
    worker.stop()
    await asyncio.wait_for(serving, 10)


async def test_a_taken_port_fails_before_the_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = RunningWorker(local(http_port=taken.getsockname()[1]))
        with pytest.raises(ConfigurationError, match="ONCEFLOW_HTTP_PORT"):
            await serve(worker)
    assert not worker.started.is_set()


def test_the_listening_socket_says_it_is_tcp() -> None:
    # asyncio only sets TCP_NODELAY on accepted sockets whose proto is IPPROTO_TCP; with
    # proto 0 every keep-alive answer waited ~40 ms for the client's delayed ACK.
    sock = _bind("127.0.0.1", 0)
    with sock:
        assert sock.proto == socket.IPPROTO_TCP
