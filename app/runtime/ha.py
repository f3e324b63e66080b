"""High availability: standby tasks, the state each member reports, the changelog ends the
leader assigns with, and probing rebalances (docs/architecture.md, *High availability*).

The worker owns one ``HighAvailability``; it tells it what it revoked (``revoked``) and
assigned (``assigned``), and releases a standby before starting its task as active
(``release``). Everything else runs here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from onceflow.runtime.compat import before_assignment, request_rejoin
from onceflow.runtime.local_state import process_id, stored_positions
from onceflow.runtime.placement import RUNNING
from onceflow.runtime.standby import Standbys, StandbyTask

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from onceflow.runtime.assignor import TaskAssignor, TaskKey
    from onceflow.runtime.clients import Clients
    from onceflow.runtime.metrics import Metrics
    from onceflow.settings import Settings
    from onceflow.topology import App

__all__ = ["ENDS_TIMEOUT_S", "HighAvailability"]

log = logging.getLogger("onceflow.standby")

ENDS_TIMEOUT_S = 5.0
"""How long the leader waits for the changelogs' end offsets before it assigns with the last
ones it read (the rebalance waits meanwhile)."""
PROBE_CHECK_S = 1.0


class HighAvailability:
    """Standbys, warm-ups and the assignor's inputs of one worker."""

    def __init__(
        self,
        app: App,
        settings: Settings,
        clients: Clients,
        metrics: Metrics,
        assignor: TaskAssignor,
        *,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.assignor = assignor
        self.root = Path(settings.state_dir) / app.app_id
        self.ran: set[TaskKey] = set()  # running when the last rebalance revoked them
        self._clients = clients
        self._on_fatal = on_fatal
        self._partitions: Mapping[str, int] = {}
        self._delete_retention_ms: Mapping[str, int] = {}
        self._group: AIOKafkaConsumer | None = None
        self._standbys: Standbys | None = None

    @property
    def standbys(self) -> Standbys:
        if self._standbys is None:
            raise RuntimeError("high availability is not started")
        return self._standbys

    async def start(
        self,
        group_consumer: AIOKafkaConsumer,
        partitions: Mapping[str, int],
        delete_retention_ms: Mapping[str, int],
        changelog_ids: Mapping[str, str],
    ) -> None:
        """Before joining the group: the standby consumer, this state directory's process id,
        and the hooks the assignor reads at every join."""
        self._group = group_consumer
        self._partitions = partitions
        self._delete_retention_ms = delete_retention_ms
        self._standbys = Standbys(
            self.app,
            self.settings,
            self._clients.consumer,
            self.metrics,
            delete_retention_ms=delete_retention_ms,
            changelog_ids=changelog_ids,
            on_fatal=self._on_fatal,
            on_warm=self._warm,
        )
        await self._standbys.start()
        self.assignor.process = await asyncio.to_thread(process_id, self.root)
        self.assignor.positions = self.positions
        before_assignment(group_consumer, self._read_ends)

    def positions(self) -> dict[TaskKey, int]:
        """What this member holds of each task's state (its subscription, at every join)."""
        standbys = self.standbys.positions()
        skip = {*standbys, *self.ran}
        found = stored_positions(
            self.app, self.root, self._partitions, self._delete_retention_ms, skip
        )
        return {**found, **standbys, **dict.fromkeys(self.ran, RUNNING)}

    def revoked(self, running: Iterable[TaskKey]) -> None:
        self.ran = set(running)

    async def assigned(self) -> None:
        """Keep the standby and warm-up copies of the new assignment."""
        a = self.assignor
        wanted = {**dict.fromkeys(a.standby, False), **dict.fromkeys(a.warmup, True)}
        for key in a.owned:
            wanted.pop(key, None)
        await self.standbys.update(wanted, a.owned, a.moving)

    async def release(self, key: TaskKey) -> None:
        await self.standbys.release(key)

    @property
    def standby_tasks(self) -> Mapping[TaskKey, StandbyTask]:
        return self._standbys.tasks if self._standbys is not None else {}

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self.standbys.run(stop), self._probe(stop))

    async def close(self) -> None:
        if self._standbys is not None:
            await self._standbys.close()

    async def _read_ends(self) -> None:
        try:
            ends = await asyncio.wait_for(self.standbys.ends(self._partitions), ENDS_TIMEOUT_S)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning(
                "reading the changelogs' end offsets failed (%r): assigning with those of the "
                "last rebalance",
                exc,
            )
            return
        self.assignor.ends = ends

    async def _probe(self, stop: asyncio.Event) -> None:
        """On the leader of an unbalanced placement: rebalance again every
        ``ONCEFLOW_PROBING_REBALANCE_INTERVAL_MS``, until the placement is balanced."""
        interval_s = self.settings.probing_rebalance_interval_ms / 1000
        while not stop.is_set():
            await asyncio.sleep(PROBE_CHECK_S)
            placed = self.assignor.leading
            if placed is None or placed.balanced:
                continue
            if time.monotonic() - self.assignor.placed_at >= interval_s:
                self._rejoin(
                    f"probing rebalance: {len(placed.held)} tasks wait to move to their "
                    "balanced place"
                )

    def _warm(self, standby: StandbyTask) -> None:
        self._rejoin(
            f"the copy of task {standby.task_id} caught up (lag {standby.lag}): rebalancing so "
            "that it can move here"
        )

    def _rejoin(self, why: str) -> None:
        if self._group is None:
            return
        log.info("%s", why)
        self.metrics.probing_rebalances.labels(self.app.app_id).inc()
        request_rejoin(self._group)
        self.assignor.placed = None  # one probe per placement
