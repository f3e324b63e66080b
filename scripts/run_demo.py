"""`make run`: the reference app end to end on a local broker, with a demo producer.

Creates `input-topic` / `output-topic` (6 partitions) if missing, starts
`onceflow worker onceflow.examples.windowed_count`, produces clicks for a handful of users, and
prints the counts as they come out of `output-topic` (read_committed) and as the HTTP API serves
them. Ctrl-C stops everything (the worker gets SIGTERM and commits). `--seconds N` stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

USERS = ["alice", "bob", "carol", "dave", "erin"]
REPO = Path(__file__).resolve().parents[1]


async def ensure_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, 6, 1) for n in names if n not in existing]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


async def produce_clicks(bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        while not stop.is_set():
            user = random.choice(USERS)
            await producer.send(topic, key=user.encode(), value=b"click")
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()


async def show_outputs(bootstrap: str, topic: str, port: int, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="latest",
        group_id=None,
    )
    await consumer.start()
    last_query = 0.0
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        print(f"output-topic  {r.key.decode():>6} -> {r.value.decode()}")
                if time.monotonic() - last_query > 5:
                    last_query = time.monotonic()
                    await query(http, port)
    finally:
        await consumer.stop()


async def query(http: httpx.AsyncClient, port: int) -> None:
    url = f"http://127.0.0.1:{port}/tables/counts/keys/{USERS[0]}"
    with contextlib.suppress(httpx.HTTPError):
        response = await http.get(url)
        print(f"GET {url} -> {response.status_code} {response.text[:200]}")


async def main(seconds: float | None) -> int:
    bootstrap = os.environ.setdefault("ONCEFLOW_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    port = int(os.environ.setdefault("ONCEFLOW_HTTP_PORT", "8080"))
    os.environ.setdefault("ONCEFLOW_STATE_DIR", str(Path.home() / ".cache/onceflow/demo-state"))
    await ensure_topics(bootstrap, ["input-topic", "output-topic"])
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onceflow", "worker", "onceflow.examples.windowed_count", cwd=REPO
    )
    print(
        f"worker pid {worker.pid}; query it: curl http://127.0.0.1:{port}/tables/counts/keys/alice"
    )
    print(f"metrics: curl http://127.0.0.1:{port}/metrics ; readiness: /health/ready")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if seconds:
        loop.call_later(seconds, stop.set)
    exited = asyncio.ensure_future(worker.wait())
    exited.add_done_callback(lambda _: stop.set())  # a worker that stops ends the demo
    try:
        await asyncio.gather(
            produce_clicks(bootstrap, "input-topic", stop),
            show_outputs(bootstrap, "output-topic", port, stop),
        )
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(exited, 60)
        print(f"worker exited with {code}")
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    sys.exit(asyncio.run(main(parser.parse_args().seconds)))
