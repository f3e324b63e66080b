"""The command line: ``fetch``, ``start``, ``stop``, ``kill-node``, ``start-node``, ``free-ports``.

Each command prints one result on stdout (``start`` a few ``name=value`` lines, ``bootstrap=``
last, which scripts/with_broker.sh relies on) and exits 0; a ``KafkaLocalError`` prints
``kafka_local: error: ...`` and its log lines indented under it on stderr and exits 1; Ctrl-C
exits 130. See scripts/kafka_local.py for the synopsis.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .cluster import (
    kill_node,
    sasl_bootstrap,
    start_cluster,
    start_node,
    stop_cluster,
    tls_bootstrap,
    tls_cafile,
)
from .config import parse_sasl_plain
from .errors import KafkaLocalError
from .maven import DEFAULT_VERSION, fetch
from .ports import free_ports

DESCRIPTION = (
    "Run a throwaway Apache Kafka (KRaft) cluster on loopback, for onceflow's tests and local dev."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch").add_argument("--version")
    start = sub.add_parser("start")
    start.add_argument("--port", type=int, default=9092)
    start.add_argument("--controller-port", type=int, help="default: --port + --nodes")
    start.add_argument("--nodes", type=int, default=1)
    start.add_argument("--version")
    start.add_argument(
        "--sasl-plain",
        action="append",
        metavar="USER:PASS",
        help="add a SASL_PLAINTEXT listener (PLAIN) with this user, on --port + --nodes",
    )
    start.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="add an SSL listener (and SASL_SSL with --sasl-plain); certificates in DATA_DIR/tls",
    )
    start.add_argument(
        "--acls",
        action="store_true",
        default=None,
        help="turn on the authorizer: SASL users may only do what an ACL allows (see add_acls)",
    )
    kill = sub.add_parser("kill-node")
    kill.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    restart = sub.add_parser("start-node")
    for cmd in (start, sub.add_parser("stop"), kill, restart):
        cmd.add_argument("--data-dir", type=Path, required=True)
    for cmd in (kill, restart):
        cmd.add_argument("--node", type=int, required=True)
    sub.add_parser("free-ports").add_argument("count", type=int)
    return parser


def run(args: argparse.Namespace) -> str:
    """Carry out one command; return what to print on stdout."""
    if args.command == "fetch":
        version = args.version or os.environ.get("KAFKA_VERSION") or DEFAULT_VERSION
        return f"libs={fetch(version)}"
    if args.command == "start":
        users = parse_sasl_plain(args.sasl_plain)
        cluster = (
            args.nodes,
            args.port,
            args.controller_port,
            args.version,
            users,
            args.tls,
            args.acls,
        )
        bootstrap = start_cluster(args.data_dir, *cluster)
        extra = {
            "sasl_bootstrap": sasl_bootstrap(args.data_dir),
            "ssl_bootstrap": tls_bootstrap(args.data_dir),
            "sasl_ssl_bootstrap": tls_bootstrap(args.data_dir, sasl=True),
            "ssl_cafile": tls_cafile(args.data_dir),
        }
        lines = [f"{name}={value}\n" for name, value in extra.items() if value]
        # bootstrap= stays the last line: scripts/with_broker.sh takes what follows it.
        return "".join(lines) + f"bootstrap={bootstrap}"
    if args.command == "stop":
        stop_cluster(args.data_dir)
        return f"stopped {args.data_dir}"
    if args.command == "kill-node":
        kill_node(args.data_dir, args.node, getattr(signal, f"SIG{args.signal}"))
        return f"killed node {args.node}"
    if args.command == "start-node":
        return f"bootstrap={start_node(args.data_dir, args.node)}"
    return " ".join(map(str, free_ports(args.count)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(run(args), flush=True)
    except KafkaLocalError as error:
        print(f"kafka_local: error: {error}", file=sys.stderr)
        if error.detail:
            print("\n".join(f"  | {line}" for line in error.detail.splitlines()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
