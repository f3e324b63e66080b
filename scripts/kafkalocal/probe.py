"""Readiness: a real Kafka Metadata request (v4), sent over a raw socket.

A node counts as up when it answers with our cluster id and the brokers we expect. The probe
only ever talks to the PLAINTEXT listener, whatever SASL or TLS listeners the cluster has.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from pathlib import Path

from .config import ClusterSpec, node_dir
from .errors import KafkaLocalError
from .process import log_tail, node_pid, recorded_pid_alive

READY_TIMEOUT_S = 120.0  # ONCEFLOW_KAFKA_READY_TIMEOUT overrides it


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        self.pos += length
        return self.data[self.pos - length : self.pos].decode()


def probe_metadata(port: int, timeout: float = 2.0) -> tuple[str | None, set[int]]:
    """Send Metadata v4 (no topics) to 127.0.0.1:``port``; return (cluster id, broker ids).

    v4 because Kafka 4.0 removed v0-v3 (KIP-896) and 3.x speaks it too; non-flexible, so plain
    struct packing works. Raises OSError while the broker is not accepting requests yet.
    """
    client = b"onceflow-probe"
    header = struct.pack(">hhih", 3, 4, 1, len(client)) + client
    body = struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
        reader = _Reader(_recv_exactly(sock, size))
    reader.take(">i")  # correlation id
    reader.take(">i")  # throttle time
    brokers = set()
    for _ in range(reader.take(">i")):
        brokers.add(reader.take(">i"))
        reader.string()
        reader.take(">i")
        reader.string()  # rack
    return reader.string(), brokers


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def wait_ready(spec: ClusterSpec, data_dir: Path, nodes: set[int]) -> None:
    """Wait until each of ``nodes`` answers with our cluster id and all of ``nodes`` as brokers."""
    timeout = float(os.environ.get("ONCEFLOW_KAFKA_READY_TIMEOUT", READY_TIMEOUT_S))
    deadline = time.monotonic() + timeout
    pending = set(nodes)
    while pending:
        for node in list(pending):
            if node_pid(data_dir, node) is None and not recorded_pid_alive(data_dir, node):
                out = node_dir(data_dir, node) / "kafka.out"
                raise KafkaLocalError(
                    f"Kafka node {node} exited during start-up; see {out}",
                    log_tail(data_dir, node),
                )
            with contextlib.suppress(OSError, struct.error, UnicodeDecodeError):
                cluster_id, brokers = probe_metadata(spec.broker_port(node))
                if cluster_id == spec.cluster_id and nodes <= brokers:
                    pending.discard(node)
        if pending and time.monotonic() > deadline:
            node = min(pending)
            raise KafkaLocalError(
                f"Kafka node {node} not ready on 127.0.0.1:{spec.broker_port(node)} after "
                f"{timeout:.0f} s; see {node_dir(data_dir, node)}/logs/server.log",
                log_tail(data_dir, node),
            )
        time.sleep(0.2)
