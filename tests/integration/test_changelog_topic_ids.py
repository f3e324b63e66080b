"""A changelog deleted and recreated is known by its topic id, not only by its offsets (issue 13,
item 3), with ``onceflow worker`` subprocesses on a real broker:

* a worker whose store's checkpoint is of the old topic refuses to restore from the new one, even
  when another worker (another state dir) has since written past that checkpoint there;
* a running worker whose changelog is deleted and recreated with the same partition count between
  two of its topic checks stops.

The Metadata v12 request itself (``runtime.protocol.topic_ids``) is checked here too; its bytes in
tests/unit/runtime/test_protocol.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_helpers import end_offsets, partitions_of, unique_name
from workers import AppUnderTest, WorkerProcess, app_under_test, collect, produce

_TOPIC_ALREADY_EXISTS = 36
_COMPACTED = {"cleanup.policy": "compact"}


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    return admin


async def _recreate(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete ``topic`` and create it again at once (compacted, same partitions), as an operator
    or a broker's auto-creation would: retried while the broker still finishes the deletion."""
    admin = await _admin(bootstrap)
    try:
        await admin.delete_topics([topic])
        deadline = time.monotonic() + 30
        while True:
            response = await admin.create_topics(
                [NewTopic(topic, partitions, 1, topic_configs=_COMPACTED)]
            )
            ((_, code, *_),) = response.topic_errors
            if code == 0:
                break
            assert code == _TOPIC_ALREADY_EXISTS and time.monotonic() < deadline, code
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    await partitions_of(bootstrap, topic)  # in the broker's metadata


async def _ids(bootstrap: str, names: list[str]) -> dict[str, str]:
    # Imported here: the worker scenarios below also run against code without it (before/after).
    from onceflow.runtime.protocol import topic_ids

    admin = await _admin(bootstrap)
    try:
        return await topic_ids(admin, names)
    finally:
        await admin.close()


async def _ids_once(bootstrap: str, names: list[str], ready, timeout: float = 10.0):
    """``_ids`` once ``ready(ids)``: the broker's metadata follows a creation within moments."""
    deadline = time.monotonic() + timeout
    while True:
        ids = await _ids(bootstrap, names)
        if ready(ids) or time.monotonic() >= deadline:
            return ids
        await asyncio.sleep(0.1)


async def test_topic_ids_come_from_the_broker_and_change_with_a_recreation(
    bootstrap_servers: str, new_topic
) -> None:
    topic = await new_topic("ids", partitions=2)
    missing = unique_name("ids-missing")
    first = await _ids_once(bootstrap_servers, [topic, missing], lambda ids: topic in ids)
    assert list(first) == [topic]  # a missing topic is left out...
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", first[topic]), first  # Kafka's Uuid.toString
    admin = await _admin(bootstrap_servers)
    try:
        assert missing not in await admin.list_topics()  # ...and not created
    finally:
        await admin.close()
    assert await _ids(bootstrap_servers, [topic]) == first  # stable
    await _recreate(bootstrap_servers, topic, 2)
    second = await _ids_once(
        bootstrap_servers, [topic], lambda ids: ids.get(topic, first[topic]) != first[topic]
    )
    assert second.keys() == {topic} and second[topic] != first[topic]


async def _absorb(bootstrap: str, app: AppUnderTest, i: int, keys: int, total: int) -> None:
    """Worker ``i`` absorbs ``keys`` new inputs (one distinct key each: one changelog record each)
    and commits them, until the sink holds ``total`` outputs; then it stops cleanly."""
    worker = app.spawn(i)
    try:
        tag = unique_name("k")
        await produce(bootstrap, app.source, [(f"{tag}-{n}".encode(), b"1") for n in range(keys)])
        await collect(bootstrap, app.sink, total, timeout=90, workers=[worker], settle=0)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]


async def _exit_code(worker: WorkerProcess, tasks: int, timeout: float) -> int | None:
    """Wait for ``worker`` to exit; fail at once when every one of its ``tasks`` runs instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = worker.wait(0.2)
        if code is not None:
            return code
        log = worker.log_text()
        running = len(re.findall(r"task \S+ running \(stream time", log))
        assert running < tasks, f"the worker restored and runs every task:\n{log[-4000:]}"
        await asyncio.sleep(0.3)
    return None


async def test_a_store_of_the_old_topic_is_refused_even_below_the_new_end(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    """Scenario (a): worker A commits state and stops; the changelog is deleted and recreated;
    worker B on another host restores it empty and writes more records than A's checkpoint; A,
    restarted on its own state, must refuse its store (its checkpoint is now below the end of a
    topic that never held what it applied) instead of restoring it plus the new suffix."""
    app = app_under_test(
        bootstrap_servers,
        "tests.apps.seen",
        await new_topic("ids-in", partitions=2),
        await new_topic("ids-out", partitions=2),
        tmp_path,
        state_dirs=2,  # worker i keeps its stores in state-{i % 2}: A = 0 and 2, B = 1
    )
    changelog = f"{app.env['ONCEFLOW_TEST_APP_ID']}-seen-changelog"
    await _absorb(bootstrap_servers, app, 0, keys=40, total=40)  # A
    old_ends = await end_offsets(bootstrap_servers, changelog, "read_uncommitted")
    await _recreate(bootstrap_servers, changelog, 2)
    await _absorb(bootstrap_servers, app, 1, keys=400, total=440)  # B
    new_ends = await end_offsets(bootstrap_servers, changelog, "read_uncommitted")
    # The offsets alone cannot tell: every one of A's checkpoints is below the new end.
    assert all(new_ends[p] > old_ends[p] for p in old_ends), (old_ends, new_ends)

    restarted = app.spawn(2)  # A again, on state-0
    try:
        code = await _exit_code(restarted, tasks=2, timeout=90)
        log = restarted.log_text()
        assert code == 1, f"exit code {code}:\n{log[-4000:]}"
        found = re.search(
            rf"ERROR .*failed fatally: store 'seen' partition \d has checkpoint \d+ of changelog "
            rf"topic '{changelog}' with topic id (\S+), but the topic now has id (\S+): it was "
            "deleted and recreated",
            log,
        )
        assert found, log[-4000:]
        assert "Traceback" not in log, log[-4000:]
        recorded, current = found.groups()
        assert recorded != current == (await _ids(bootstrap_servers, [changelog]))[changelog]
    finally:
        restarted.stop()


async def test_a_changelog_recreated_under_a_running_worker_stops_it(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    """Scenario (b): deleted and recreated at once, with the same partition count, while the
    worker is idle: no send fails and the topic is there at every check; only its id changed."""
    app = app_under_test(
        bootstrap_servers,
        "tests.apps.seen",
        await new_topic("ids-in", partitions=2),
        await new_topic("ids-out", partitions=2),
        tmp_path,
    )
    changelog = f"{app.env['ONCEFLOW_TEST_APP_ID']}-seen-changelog"
    worker = app.spawn(0)
    try:
        await produce(bootstrap_servers, app.source, [(f"k{n}".encode(), b"1") for n in range(40)])
        await collect(bootstrap_servers, app.sink, 40, timeout=90, workers=[worker], settle=1)
        await _recreate(bootstrap_servers, changelog, 2)
        recreated_at = time.monotonic()
        code = await asyncio.to_thread(worker.wait, 25)
        took = time.monotonic() - recreated_at
        log = worker.log_text()
        assert code == 1, f"exit code {code} {took:.1f}s after the recreation:\n{log[-4000:]}"
        print(f"worker exited {took:.1f}s after the changelog was recreated")
        # The check runs every 10 s; an idle worker then stops in about a second.
        assert took < 20, log[-4000:]
        assert re.search(
            rf"ERROR .*failed fatally: changelog topic '{changelog}' was deleted and recreated "
            r"under the running app \(topic id \S+, now \S+\)",
            log,
        ), log[-4000:]
        assert "Traceback" not in log, log[-4000:]
    finally:
        worker.stop()
