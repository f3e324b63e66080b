"""Interactive queries: ``GET /tables/{table}/keys/{key}`` answered by the key's owner only.

The key's partition comes from the same murmur2 partitioner as the producer's; the group
assignment says which instance owns that task. This instance answers from committed state when
it runs the task; otherwise it proxies the request to the owner's advertised URL, which it only
ever learns from the assignment (no client-chosen hosts). Whenever the answer could come from
a non-owner — a rebalance under way, a task still restoring or failed, an owner that does not
answer, or this instance's group membership not current (a process paused past its session
timeout: its tasks and its view of the owners may be stale) — it is a 503 with ``Retry-After``
instead: a client retries rather than reads stale state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

import httpx
from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from onceflow.http._global_queries import global_lookup
from onceflow.http._types import (
    KeyValue,
    StandbyView,
    TaskView,
    Window,
    WindowedKeyValue,
    WorkerView,
)
from onceflow.partitioner import partition_for_key
from onceflow.serdes import parse_text_key, render_value
from onceflow.tables import WindowedTable
from onceflow.topology import AnyTable
from onceflow.window_ranges import RangeTable

__all__ = ["FORWARDED", "OWNER", "STANDBY_LAG", "KeyQueries"]

log = logging.getLogger("onceflow.http")

STANDBY_LAG = "X-Onceflow-Standby-Lag"  # an answer from a standby copy: records it lacks
FORWARDED = "X-Onceflow-Forwarded"  # set on proxied requests: an owner never proxies them again
OWNER = "X-Onceflow-Owner"  # the URL of the instance whose state answered
MAX_PROXIED_BYTES = 16 * 1024 * 1024
READER_THREADS = 4
KEEP_ALIVE_S = 5  # uvicorn's keep-alive timeout, set by onceflow.http.serve
_PASSED_BACK = ("content-type", "retry-after", "www-authenticate")

P = ParamSpec("P")
T = TypeVar("T")
_INT64_MAX = 2**63 - 1


def unavailable(reason: str) -> HTTPException:
    """A 503 that tells the client to retry shortly (rebalance, restore, owner away)."""
    return HTTPException(503, reason, headers={"Retry-After": "1"})


def default_client() -> httpx.AsyncClient:
    """The client that calls owners: short timeouts, no redirects, no proxies from the env."""
    # Idle connections are dropped before the owner's uvicorn drops them (KEEP_ALIVE_S): reusing
    # one the server is closing fails the request, which would be a spurious 503.
    limits = httpx.Limits(
        max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEP_ALIVE_S / 2
    )
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(limits=limits, retries=1),  # retries: connects only
        timeout=httpx.Timeout(5.0, connect=2.0),
        follow_redirects=False,
        trust_env=False,
    )


class KeyQueries:
    """Answers key lookups for one worker; owns the HTTP client that calls other instances."""

    def __init__(self, worker: WorkerView, client: httpx.AsyncClient | None = None) -> None:
        self._worker = worker
        self._client = client
        # Store reads get threads of their own: a burst of queries must not queue the
        # runtime's flushes and restores behind it in the loop's default executor.
        self._readers: ThreadPoolExecutor | None = None

    async def aclose(self) -> None:
        """Close the client to the owners and the reader threads; safe to call twice."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._readers is not None:
            self._readers.shutdown(wait=False, cancel_futures=True)
            self._readers = None

    async def lookup(
        self,
        request: Request,
        table_name: str,
        text: str,
        from_ms: int | None,
        to_ms: int | None,
        *,
        stale_ok: bool = False,
    ) -> KeyValue | WindowedKeyValue | Response:
        """Answer for ``text`` (the key as typed) in ``table_name``: locally, proxied, or raise.
        ``stale_ok``: when this instance does not run the key's task but keeps a standby copy of
        it, answer from that copy, with the records it lacks in ``X-Onceflow-Standby-Lag``."""
        if table_name in self._worker.app.global_tables:  # every instance holds all of it
            return await global_lookup(self._worker, table_name, text, self._in_reader)
        table = self._table(table_name)
        key, key_bytes = _parse_key(table, text)
        worker = self._worker
        count = worker.partitions.get(table.group)
        if count is None:
            raise unavailable(f"partition count of task group {table.group!r} not known yet")
        task_key = (table.group, partition_for_key(key_bytes, count))
        task_id = f"{task_key[0]}_{task_key[1]}"
        task = worker.tasks.get(task_key)
        running = worker.phase == "running" and task is not None and task.state == "running"
        if stale_ok and not running:
            # A copy's answer does not depend on the group (it is the changelog's committed
            # state, its lag stated): it serves through rebalances, and on a member the group
            # may have dropped, which could answer nothing else.
            standby = worker.standbys.get(task_key)
            if standby is not None and (lag := standby.table_lag(table.name)) is not None:
                return await self._from_standby(task_key, standby, lag, table, key, key_bytes,
                                                from_ms, to_ms)  # fmt: skip
        if worker.phase != "running":
            raise unavailable(f"worker is {worker.phase}: owners are not known; retry")
        self._check_member()
        if task is not None:
            if task.state != "running":
                raise unavailable(f"task {task_id} is {task.state} here; retry")
            return await self._local(task_key, task, table, key, key_bytes, from_ms, to_ms)
        owner = worker.assignor.owners.get(task_key)
        if owner is None:
            raise unavailable(f"no owner is known for task {task_id}; retry")
        if owner == worker.assignor.advertised_url:
            raise unavailable(f"task {task_id} is assigned here but not running yet; retry")
        if request.headers.get(FORWARDED):
            # The sender thinks this instance owns the task: one of us has a stale assignment.
            raise unavailable(f"task {task_id} is not owned here (assignment changing); retry")
        return await self._proxy(request, owner, task_id, table.name, text, from_ms, to_ms)

    async def _from_standby(
        self,
        task_key: tuple[str, int],
        standby: StandbyView,
        lag: int,
        table: AnyTable,
        key: Any,
        key_bytes: bytes,
        from_ms: int | None,
        to_ms: int | None,
    ) -> Response:
        """A stale answer, asked for: a standby's copy is committed state (read from the
        changelog with read_committed) ``lag`` records behind the active's. It knows no stream
        time, so windows and ttl keys that expired but were not deleted yet may show."""
        headers = {OWNER: self._worker.assignor.advertised_url, STANDBY_LAG: str(lag)}
        try:
            answer = await self._local(task_key, standby, table, key, key_bytes, from_ms, to_ms)
        except HTTPException as exc:
            if exc.status_code == 404:
                exc.headers = {**(exc.headers or {}), **headers}
            raise
        return JSONResponse(answer.model_dump(mode="json"), headers=headers)

    def _check_member(self) -> None:
        """503 unless this instance's group membership is current: a member the group may have
        dropped neither answers from its state nor trusts its view of the owners."""
        current, why = self._worker.membership()
        if not current:
            raise unavailable(f"group membership of this instance is not current ({why}); retry")

    def _table(self, name: str) -> AnyTable:
        tables = self._worker.app.tables
        table = tables.get(name)
        if table is None:
            known = ", ".join(sorted([*tables, *self._worker.app.global_tables])) or "(none)"
            raise HTTPException(404, f"unknown table {name!r}; tables: {known}")
        return table

    # -- answering locally ---------------------------------------------------------------------

    async def _local(
        self,
        task_key: tuple[str, int],
        task: TaskView,
        table: AnyTable,
        key: Any,
        key_bytes: bytes,
        from_ms: int | None,
        to_ms: int | None,
    ) -> KeyValue | WindowedKeyValue:
        shown = render_value(table.key_serde, key)
        if isinstance(table, RangeTable):
            return await self._local_ranges(task_key, task, table, shown, key_bytes, from_ms, to_ms)
        if isinstance(table, WindowedTable):
            low = 0 if from_ms is None else from_ms
            high = _INT64_MAX if to_ms is None else to_ms
            # Expired windows may still be on disk (expiry deletes at commit, segment-wise)
            visible = max(low, table.expired_before(task.committed_stream_time))
            fetch = task.windowed_store(table.name).fetch
            rows = await self._read(task_key, task, fetch, key_bytes, visible, high, committed=True)
            if not rows:
                span = "" if from_ms is None and to_ms is None else f" starting in [{low}, {high}]"
                raise self._not_found(f"key {shown!r} has no windows{span} in {table.name!r}")
            size = table.window.size_ms
            windows = [Window(start=s, end=s + size, value=_value(table, v)) for s, v in rows]
            return WindowedKeyValue(key=shown, windows=windows)
        get = task.store(table.name).committed_get
        # A ttl table's keys are gone as of the committed stream time (taken before the read:
        # the state read is that commit's or newer, never older).
        stream_time = task.committed_stream_time
        raw = await self._read(task_key, task, get, table.store_key(key_bytes))
        raw = table.visible(raw, stream_time)
        if raw is None:
            raise self._not_found(f"key {shown!r} not found in table {table.name!r}")
        return KeyValue(key=shown, value=_value(table, raw))

    async def _local_ranges(
        self,
        task_key: tuple[str, int],
        task: TaskView,
        table: RangeTable[Any, Any],
        shown: str,
        key_bytes: bytes,
        from_ms: int | None,
        to_ms: int | None,
    ) -> WindowedKeyValue:
        """A session table's sessions of the key (or a sliding table's windows), by start; the
        ``end`` of each is inclusive. Hides what the task's committed stream time expired."""
        low = 0 if from_ms is None else from_ms
        high = _INT64_MAX if to_ms is None else to_ms
        fetch = partial(task.windowed_store(table.name).fetch, committed=True)
        read = partial(table.committed_windows, fetch, key_bytes, low, high)
        found = await self._read(task_key, task, read, task.committed_stream_time)
        if not found:
            span = "" if from_ms is None and to_ms is None else f" starting in [{low}, {high}]"
            raise self._not_found(f"key {shown!r} has no windows{span} in {table.name!r}")
        windows = [
            Window(start=w.start, end=w.end, value=render_value(table.value_serde, w.value))
            for w in found
        ]
        return WindowedKeyValue(key=shown, windows=windows)

    async def _read(
        self,
        task_key: tuple[str, int],
        task: TaskView,
        read: Callable[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``read(...)`` off the event loop (SQLite); 503 if the task was revoked meanwhile (a
        standby copy: dropped), or if this instance's membership lapsed (a running task)."""
        revoked = f"task {task.task_id} was revoked during the read; retry"
        if self._readers is None:
            self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="onceflow-query")
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._readers, partial(read, *args, **kwargs))
        except Exception:
            if self._still_running(task_key, task):
                raise  # not explained by a revocation: a real fault, let it be a 500
            raise unavailable(revoked) from None
        if not self._still_running(task_key, task):
            raise unavailable(revoked)  # its store may be the next owner's by now
        if task.state != "standby":
            self._check_member()  # the membership may have lapsed during the read
        return result

    async def _in_reader(self, read: Callable[[bytes], T], arg: bytes) -> T:
        """``read(arg)`` in a reader thread (SQLite)."""
        if self._readers is None:
            self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="onceflow-query")
        return await asyncio.get_running_loop().run_in_executor(self._readers, read, arg)

    def _not_found(self, detail: str) -> HTTPException:
        # The owner's "no such key" is an answer like any other: name who gave it.
        return HTTPException(404, detail, headers={OWNER: self._worker.assignor.advertised_url})

    def _still_running(self, task_key: tuple[str, int], task: TaskView) -> bool:
        """Whether ``task`` still serves its key's partition here: running, or the standby copy
        a stale read was answered from."""
        if task.state == "standby":
            return self._worker.standbys.get(task_key) is task
        return self._worker.tasks.get(task_key) is task and task.state == "running"

    # -- answering through the owner -----------------------------------------------------------

    async def _proxy(
        self,
        request: Request,
        owner: str,
        task_id: str,
        table: str,
        text: str,
        from_ms: int | None,
        to_ms: int | None,
    ) -> Response:
        url = _owner_url(owner, task_id, table, text)
        params = {k: v for k, v in (("from", from_ms), ("to", to_ms)) if v is not None}
        headers = {FORWARDED: "1", "Accept": "application/json"}
        if auth := request.headers.get("authorization"):
            headers["Authorization"] = auth  # already checked here; the owner checks it again
        if self._client is None:
            self._client = default_client()
        try:
            async with self._client.stream("GET", url, params=params, headers=headers) as reply:
                body = await _read_capped(reply, owner)
        except httpx.HTTPError as exc:
            log.warning("owner %s of task %s did not answer: %r", owner, task_id, exc)
            raise unavailable(f"owner {owner} of task {task_id} did not answer; retry") from None
        passed = {h: reply.headers[h] for h in _PASSED_BACK if h in reply.headers}
        return Response(body, status_code=reply.status_code, headers={**passed, OWNER: owner})


def _parse_key(table: AnyTable, text: str) -> tuple[Any, bytes]:
    serde = table.key_serde
    try:
        key = parse_text_key(serde, text)
        return key, serde.serialize(key)
    except Exception as exc:  # custom serdes may raise anything: it is still the client's text
        raise HTTPException(
            400, f"key {text!r:.80} is not a valid key for serde {serde.name!r}: {exc}"
        ) from None


def _value(table: AnyTable, raw: bytes) -> Any:
    return render_value(table.value_serde, table.value_serde.deserialize(raw))


def _owner_url(owner: str, task_id: str, table: str, text: str) -> httpx.URL:
    """The owner's URL for the same query, built from parts (never from the client's path)."""
    try:
        base = httpx.URL(owner)
    except httpx.InvalidURL:
        base = None
    if base is None or base.scheme not in ("http", "https") or not base.host:
        raise unavailable(f"owner of task {task_id} advertised an unusable URL {owner!r}")
    # Quote every character that could change the path: '/', and dots, which would otherwise
    # form '.' / '..' segments that URL normalization removes.
    segments = [quote(part, safe="").replace(".", "%2E") for part in (table, text)]
    path = f"/tables/{segments[0]}/keys/{segments[1]}"
    return base.copy_with(raw_path=base.raw_path.rstrip(b"/") + path.encode("ascii"))


async def _read_capped(reply: httpx.Response, owner: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in reply.aiter_bytes():
        size += len(chunk)
        if size > MAX_PROXIED_BYTES:
            raise HTTPException(502, f"owner {owner} answered more than {MAX_PROXIED_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
