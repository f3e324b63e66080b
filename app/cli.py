"""The ``onceflow`` command line.

onceflow worker MODULE[:ATTR]            run the App found there (attribute ``app`` by default)
onceflow topics create MODULE[:ATTR]     create the App's source topics
onceflow send TOPIC VALUE [--key K]      produce one record (for trying things)
onceflow tables get TABLE KEY            read a key's committed value through the HTTP API
onceflow describe MODULE[:ATTR]          the App's topology (and, with --bootstrap, the cluster's)
onceflow reset MODULE[:ATTR]             make the App start over: offsets, internal topics, state
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

from onceflow.errors import ConfigurationError, OnceflowError

if TYPE_CHECKING:
    from onceflow.runtime import Target
    from onceflow.settings import Settings
    from onceflow.topology import App

# Heavy modules (aiokafka, pydantic, FastAPI) are imported inside the functions, after ``main``
# installed its early SIGTERM handler: importing them takes seconds on a loaded node.

__all__ = ["load_app", "main"]

log = logging.getLogger("onceflow.cli")


def load_app(spec: str) -> App:
    """Import ``module[:attr]`` and return the App there."""
    from onceflow.topology import App

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise ConfigurationError(
            f"{spec!r} is not an onceflow App (looked for attribute "
            f"{attr or 'app'!r} in module {module_name!r})"
        )
    return app


async def _run_worker(app: App, settings: Settings) -> None:
    from onceflow.http import serve
    from onceflow.runtime import Worker

    worker = Worker(app, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await serve(worker)


async def _create_topics(app: App, settings: Settings, partitions: int, rf: int) -> None:
    from aiokafka.admin import NewTopic

    from onceflow.runtime import Clients, TopicAdmin

    client = Clients(settings, client_id="onceflow-cli").admin()
    await client.start()
    try:
        admin = TopicAdmin(client, replication_factor=rf)
        internal = {t.name for t in app.repartition_topics}
        sources = [t for topics in app.groups().values() for t in topics if t not in internal]
        tables = {t.topic for t in app.source_tables()}  # compacted: a table keeps every key
        existing = await admin.partition_counts(sources)
        factor = await admin.resolve_replication_factor()  # -1: the broker's default
        wanted = [
            NewTopic(
                name,
                app.topics[name].partitions or partitions,
                factor,
                topic_configs={"cleanup.policy": "compact"} if name in tables else {},
            )
            for name in sources
            if name not in existing
        ]
        if wanted:
            await client.create_topics(wanted)
        for name in sources:
            state = "exists" if name in existing else "created"
            print(f"{name}: {state}")
        for name in sorted(internal):  # their partitions follow the sources: the worker's job
            print(f"{name}: internal (repartition), created by the worker at start")
    finally:
        await client.close()


async def _send(settings: Settings, topic: str, value: str, key: str | None) -> None:
    from onceflow.runtime import Clients

    producer = Clients(settings, client_id="onceflow-cli").producer()
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            topic, value=value.encode(), key=key.encode() if key is not None else None
        )
        print(f"{topic}[{meta.partition}]@{meta.offset}")
    finally:
        await producer.stop()


def _get_table(settings: Settings, url: str | None, table: str, key: str) -> int:
    import httpx

    base = (url or f"http://127.0.0.1:{settings.http_port}").rstrip("/")
    headers = {}
    if settings.http_token is not None:
        headers["Authorization"] = f"Bearer {settings.http_token.get_secret_value()}"
    response = httpx.get(f"{base}/tables/{table}/keys/{key}", headers=headers, timeout=10)
    print(response.text)
    return 0 if response.status_code == 200 else 1


async def _describe(app: App, settings: Settings, args: argparse.Namespace) -> None:
    import json

    from onceflow.runtime import describe_app, render_text

    if args.bootstrap:
        settings = settings.model_copy(update={"bootstrap_servers": args.bootstrap})
    cluster = args.bootstrap is not None or "bootstrap_servers" in settings.model_fields_set
    topology, report = await describe_app(app, settings, cluster=cluster)
    if args.json:
        described = {"topology": topology.model_dump(), "cluster": report and report.model_dump()}
        print(json.dumps(described, indent=2))
    else:
        print(render_text(topology, report), end="")


def _loaded(spec: str, settings: Settings) -> App:
    """The App at ``spec``, named as ``ONCEFLOW_APP_ID`` says (as the worker names it)."""
    return load_app(spec).configured(settings.app_id)


def _reset(app: App, settings: Settings, target: Target, args: argparse.Namespace) -> None:
    from onceflow.runtime import reset_app

    asyncio.run(
        reset_app(
            app,
            settings,
            target,
            include_dlq=args.include_dlq,
            local_state_only=args.local_state_only,
            dry_run=args.dry_run,
            say=print,
        )
    )


def _reset_parser(sub: Any) -> None:
    reset = sub.add_parser(
        "reset",
        help="with every worker stopped: reset the group's offsets of the sources, delete the "
        "internal topics and wipe the local state, to reprocess",
    )
    reset.add_argument("app", metavar="MODULE[:ATTR]")
    where = reset.add_mutually_exclusive_group()
    where.add_argument("--to-earliest", action="store_true", help="the log start (default)")
    where.add_argument("--to-latest", action="store_true", help="the log end: skip what is there")
    where.add_argument("--to-datetime", metavar="ISO8601", help="first record at or after it")
    where.add_argument("--by-duration", metavar="DURATION", help="ISO 8601 (PT1H) before now")
    reset.add_argument("--include-dlq", action="store_true", help="delete the dead-letter topic")
    reset.add_argument(
        "--local-state-only", action="store_true", help="only wipe this host's state directory"
    )
    reset.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def _check_reset_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command != "reset" or not args.local_state_only:
        return
    cluster = [
        flag
        for flag, on in (
            ("--to-earliest", args.to_earliest),
            ("--to-latest", args.to_latest),
            ("--to-datetime", args.to_datetime is not None),
            ("--by-duration", args.by_duration is not None),
            ("--include-dlq", args.include_dlq),
        )
        if on
    ]
    if cluster:
        parser.error(
            f"reset: --local-state-only wipes this host's state directory only; "
            f"{', '.join(cluster)} acts on the cluster: use one or the other"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onceflow",
        description="Exactly-once stateful stream processing on Apache Kafka. "
        "Settings come from ONCEFLOW_* environment variables (see the README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run an App (MODULE[:ATTR], attribute 'app' by default)")
    worker.add_argument("app", metavar="MODULE[:ATTR]")
    topics = sub.add_parser("topics", help="manage the App's source topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser("create", help="create the App's source topics if missing")
    create.add_argument("app", metavar="MODULE[:ATTR]")
    create.add_argument("--partitions", type=int, default=6)
    create.add_argument("--replication-factor", type=int, default=-1)
    send = sub.add_parser("send", help="produce one record with a UTF-8 value (and key)")
    send.add_argument("topic")
    send.add_argument("value")
    send.add_argument("--key")
    tables = sub.add_parser("tables", help="query tables through a worker's HTTP API")
    tables_sub = tables.add_subparsers(dest="tables_command", required=True)
    get = tables_sub.add_parser("get", help="a key's committed value")
    get.add_argument("table")
    get.add_argument("key")
    get.add_argument("--url", help="worker URL (default http://127.0.0.1:$ONCEFLOW_HTTP_PORT)")
    describe = sub.add_parser("describe", help="the App's topology, and its topics on a cluster")
    describe.add_argument("app", metavar="MODULE[:ATTR]")
    describe.add_argument("--json", action="store_true", help="JSON, for scripts")
    describe.add_argument(
        "--bootstrap",
        nargs="?",
        const="",
        metavar="SERVERS",
        help="compare with the cluster (default: ONCEFLOW_BOOTSTRAP_SERVERS, which also turns "
        "the comparison on when set)",
    )
    _reset_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        asyncio.run(_run_worker(load_app(args.app), settings))
    elif args.command == "topics":
        asyncio.run(
            _create_topics(load_app(args.app), settings, args.partitions, args.replication_factor)
        )
    elif args.command == "send":
        asyncio.run(_send(settings, args.topic, args.value, args.key))
    elif args.command == "tables":
        return _get_table(settings, args.url, args.table, args.key)
    elif args.command == "describe":
        asyncio.run(_describe(_loaded(args.app, settings), settings, args))
    elif args.command == "reset":
        from onceflow.runtime import Target

        target = Target.of(args.to_latest, args.to_datetime, args.by_duration)
        _reset(_loaded(args.app, settings), settings, target, args)
    return 0


def _exit_before_start(signum: int, _frame: object) -> None:
    # SIGTERM while importing or connecting: nothing is processed yet, so nothing to commit.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    # The worker installs its own graceful handler once its loop runs; until then, exit cleanly.
    signal.signal(signal.SIGTERM, _exit_before_start)
    parser = _parser()
    args = parser.parse_args(argv)
    _check_reset_args(parser, args)
    from aiokafka.errors import KafkaError

    from onceflow.logs import configure_logging
    from onceflow.settings import load_settings

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"onceflow: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    sys.path.insert(0, ".")
    try:
        return _dispatch(args, settings)
    except OnceflowError as exc:
        print(f"onceflow: {exc}", file=sys.stderr)
        return 1
    except KafkaError as exc:
        # What aiokafka raises when the cluster cannot be reached at start, for one.
        where = f"ONCEFLOW_BOOTSTRAP_SERVERS={settings.bootstrap_servers}"
        print(f"onceflow: Kafka error: {exc} ({where})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
