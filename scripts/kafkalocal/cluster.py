"""Cluster operations: start (idempotent), stop, kill and restart one node, and where to connect.

``start_cluster`` checks everything it can before launching anything (ports, Java, the jars),
writes the data dir, launches the nodes that are not running and waits until all of them are
ready; on failure it kills again every node it launched before the error propagates.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

from .config import (
    ClusterSpec,
    check_sasl_users,
    load_spec,
    new_cluster_id,
    node_dir,
    save_spec,
    server_properties,
)
from .errors import KafkaLocalError
from .java import check_java_version, find_java, format_storage, java_command
from .maven import DEFAULT_VERSION, fetch, major
from .ports import check_ports_free
from .probe import wait_ready
from .process import launch, node_pid, signal_and_wait
from .tls import make_tls_files, tls_dir

STOP_TIMEOUT_S = 30.0


def start_cluster(
    data_dir: str | Path,
    nodes: int = 1,
    port: int = 9092,
    controller_port: int | None = None,
    version: str | None = None,
    sasl_users: dict[str, str] | None = None,
    tls: bool | None = None,
    acls: bool | None = None,
) -> str:
    """Start (or finish starting) a cluster in ``data_dir``; return its (PLAINTEXT) bootstrap.

    Node N listens on ``port + N - 1`` and ``controller_port + N - 1`` (default: right after the
    last listener's ports). ``sasl_users`` adds a SASL_PLAINTEXT/PLAIN listener on
    ``port + nodes + N - 1`` (see ``sasl_bootstrap``), ``tls`` an SSL listener in the next block
    (and a SASL_SSL one after it with ``sasl_users``; see ``tls_bootstrap``); ``None`` keeps what
    ``data_dir`` recorded. Idempotent: nodes already running are left alone. On failure, every
    node this call started is killed again before the error propagates.
    """
    data_dir = Path(data_dir).resolve()
    version = version or os.environ.get("KAFKA_VERSION") or DEFAULT_VERSION
    if not 1 <= nodes <= 9:
        raise KafkaLocalError(f"--nodes must be between 1 and 9, not {nodes}")
    major(version)  # validates it
    existing = load_spec(data_dir)
    if sasl_users is None and existing is not None:
        sasl_users = existing.sasl_users
    if tls is None:
        tls = existing.tls if existing is not None else False
    if acls is None:
        acls = existing.acls if existing is not None else False
    if acls and not sasl_users:
        raise KafkaLocalError("ACLs need SASL users (--sasl-plain): they are what ACLs restrict")
    if sasl_users:
        check_sasl_users(sasl_users)
    wanted = ClusterSpec(version, nodes, port, 0, "", sasl_users or None, tls, acls)
    wanted = replace(wanted, controller_port=_controller_port(wanted, controller_port))
    spec = _spec_for(data_dir, existing, wanted)
    to_start = [n for n in spec.node_ids() if node_pid(data_dir, n) is None]
    check_ports_free([p for n in to_start for p in spec.ports(n)])
    check_java_version(find_java(), version)
    fetch(version)
    _write_cluster(spec, data_dir)
    _start_nodes(spec, data_dir, to_start, expect=set(spec.node_ids()))
    return spec.bootstrap


def _controller_port(spec: ClusterSpec, wanted: int | None) -> int:
    """``wanted``, or the port after the last listener block; refuse overlapping ranges."""
    listener_ports = spec.nodes * len(spec.protocols())
    port = wanted or spec.port + listener_ports
    if spec.port < port + spec.nodes and port < spec.port + listener_ports:
        raise KafkaLocalError(
            f"broker ports {spec.port}-{spec.port + listener_ports - 1} overlap controller ports "
            f"{port}-{port + spec.nodes - 1}: pick another --controller-port"
        )
    return port


def _spec_for(data_dir: Path, existing: ClusterSpec | None, wanted: ClusterSpec) -> ClusterSpec:
    if existing is None:
        return replace(wanted, cluster_id=new_cluster_id())
    if existing != replace(wanted, cluster_id=existing.cluster_id):
        sasl = f", SASL users {sorted(existing.sasl_users)}" if existing.sasl_users else ""
        tls = ", TLS" if existing.tls else ""
        raise KafkaLocalError(
            f"{data_dir} holds another cluster (Kafka {existing.version}, {existing.nodes} "
            f"node(s), ports {existing.port}/{existing.controller_port}{sasl}{tls}): "
            "run `stop` and remove that dir, or use another --data-dir"
        )
    return existing


def add_acls(data_dir: str | Path, user: str, *resource_and_operations: str) -> None:
    """Allow SASL ``user`` what ``kafka-acls.sh --add`` would, e.g. ``add_acls(d, "app",
    "--operation", "All", "--topic", "*")``: Kafka's own ``AclCommand``, over PLAINTEXT (a super
    user on a cluster started with ``acls``)."""
    data_dir = Path(data_dir).resolve()
    spec = load_spec(data_dir)
    if spec is None or not spec.acls:
        raise KafkaLocalError(f"{data_dir} holds no cluster started with ACLs")
    main = [
        "kafka.admin.AclCommand",
        "--bootstrap-server",
        spec.bootstrap,
        "--add",
        "--allow-principal",
        f"User:{user}",
        *resource_and_operations,
    ]
    done = subprocess.run(
        java_command(spec, 1, data_dir, main, tool=True),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise KafkaLocalError(f"kafka AclCommand failed ({done.returncode}): {done.stderr[-500:]}")


def sasl_bootstrap(data_dir: str | Path) -> str | None:
    """The SASL_PLAINTEXT bootstrap of the cluster in ``data_dir`` (None without SASL users)."""
    spec = load_spec(Path(data_dir).resolve())
    return spec.sasl_bootstrap if spec else None


def tls_bootstrap(data_dir: str | Path, sasl: bool = False) -> str | None:
    """The SSL (``sasl``: SASL_SSL) bootstrap of the cluster in ``data_dir``, or None."""
    spec = load_spec(Path(data_dir).resolve())
    return spec.bootstrap_for("SASL_SSL" if sasl else "SSL") if spec else None


def tls_cafile(data_dir: str | Path) -> Path | None:
    """The CA certificate that signed the brokers' certificates (None without TLS)."""
    data_dir = Path(data_dir).resolve()
    spec = load_spec(data_dir)
    return tls_dir(data_dir) / "ca.pem" if spec and spec.tls else None


def _write_cluster(spec: ClusterSpec, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if spec.tls:
        make_tls_files(data_dir)
    save_spec(spec, data_dir)
    for node in spec.node_ids():
        ndir = node_dir(data_dir, node)
        (ndir / "logs").mkdir(parents=True, exist_ok=True)
        props = ndir / "server.properties"
        if not props.exists():
            props.write_text(server_properties(spec, node, data_dir))
        format_storage(spec, node, data_dir)


def _start_nodes(spec: ClusterSpec, data_dir: Path, nodes: list[int], expect: set[int]) -> None:
    """Launch ``nodes``, then wait for all of ``expect``; kill what was launched on failure."""
    started: dict[int, int] = {}
    try:
        for node in nodes:
            ndir = node_dir(data_dir, node)
            main = ["kafka.Kafka", str(ndir / "server.properties")]
            started[node] = launch(java_command(spec, node, data_dir, main), ndir / "kafka.out")
            (ndir / "kafka.pid").write_text(f"{started[node]}\n")
        wait_ready(spec, data_dir, expect)
    except BaseException:
        signal_and_wait(started, signal.SIGKILL, 10)
        for node in started:
            (node_dir(data_dir, node) / "kafka.pid").unlink(missing_ok=True)
        raise


def stop_cluster(data_dir: str | Path, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every node of the cluster, SIGKILL what is left after ``timeout``. Safe twice."""
    data_dir = Path(data_dir).resolve()
    spec = load_spec(data_dir)
    if spec is None:
        return
    pids = {n: pid for n in spec.node_ids() if (pid := node_pid(data_dir, n)) is not None}
    left = signal_and_wait(pids, signal.SIGTERM, timeout)
    signal_and_wait(left, signal.SIGKILL, 10)
    for node in spec.node_ids():
        (node_dir(data_dir, node) / "kafka.pid").unlink(missing_ok=True)


def _require_spec(data_dir: Path, node: int) -> ClusterSpec:
    spec = load_spec(data_dir)
    if spec is None:
        raise KafkaLocalError(f"no cluster in {data_dir}: run `start --data-dir {data_dir}` first")
    if node not in spec.node_ids():
        raise KafkaLocalError(
            f"node {node} is not in the cluster in {data_dir} (nodes 1..{spec.nodes})"
        )
    return spec


def kill_node(data_dir: str | Path, node: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` (default SIGKILL) to one node and wait until it is gone."""
    data_dir = Path(data_dir).resolve()
    _require_spec(data_dir, node)
    pid = node_pid(data_dir, node)
    if pid is None:
        raise KafkaLocalError(f"node {node} in {data_dir} is not running")
    left = signal_and_wait({node: pid}, sig, STOP_TIMEOUT_S)
    signal_and_wait(left, signal.SIGKILL, 10)
    (node_dir(data_dir, node) / "kafka.pid").unlink(missing_ok=True)


def start_node(data_dir: str | Path, node: int) -> str:
    """Restart one node with its existing properties and storage; return its address."""
    data_dir = Path(data_dir).resolve()
    spec = _require_spec(data_dir, node)
    if node_pid(data_dir, node) is not None:
        raise KafkaLocalError(f"node {node} in {data_dir} is already running")
    check_ports_free(spec.ports(node))
    _start_nodes(spec, data_dir, [node], expect={node})
    return f"127.0.0.1:{spec.broker_port(node)}"
