"""What a cluster is: its spec (``cluster.json``) and each node's ``server.properties``.

``DATA_DIR/cluster.json`` records a ``ClusterSpec``: the Kafka version, node count, first broker
and controller ports, cluster id, SASL users and whether there is TLS, enough to restart any
node exactly as it was. The client listeners come in blocks of one port per node, in the order
of ``ClusterSpec.protocols()`` (PLAINTEXT, SASL_PLAINTEXT, SSL, SASL_SSL, as configured); the
controller (KRaft quorum) ports follow unless given. ``DATA_DIR/node-N/server.properties`` is
written once and reused by restarts.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import KafkaLocalError
from .maven import major
from .tls import KEYSTORE, tls_dir


@dataclass(frozen=True)
class ClusterSpec:
    """What ``cluster.json`` records: enough to restart any node exactly as it was."""

    version: str
    nodes: int
    port: int
    controller_port: int
    cluster_id: str
    sasl_users: dict[str, str] | None = None
    tls: bool = False
    acls: bool = False  # StandardAuthorizer: SASL users may only do what an ACL allows

    def node_ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))

    def protocols(self) -> list[str]:
        """The client listeners, in the order of their port blocks (one port per node each)."""
        protocols = ["PLAINTEXT"]
        if self.sasl_users:
            protocols.append("SASL_PLAINTEXT")
        if self.tls:
            protocols.append("SSL")
        if self.tls and self.sasl_users:
            protocols.append("SASL_SSL")
        return protocols

    def listener_port(self, protocol: str, node: int) -> int | None:
        """Node N's port for ``protocol``, or None when the cluster has no such listener."""
        protocols = self.protocols()
        if protocol not in protocols:
            return None
        return self.port + protocols.index(protocol) * self.nodes + node - 1

    def broker_port(self, node: int) -> int:
        return self.port + node - 1

    def quorum_port(self, node: int) -> int:
        return self.controller_port + node - 1

    def sasl_port(self, node: int) -> int | None:
        return self.listener_port("SASL_PLAINTEXT", node)

    def ports(self, node: int) -> list[int]:
        listeners = [self.listener_port(p, node) for p in self.protocols()]
        return [p for p in listeners if p is not None] + [self.quorum_port(node)]

    def bootstrap_for(self, protocol: str) -> str | None:
        """The bootstrap servers of the ``protocol`` listener (None if there is none)."""
        if protocol not in self.protocols():
            return None
        return ",".join(f"127.0.0.1:{self.listener_port(protocol, n)}" for n in self.node_ids())

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.broker_port(n)}" for n in self.node_ids())

    @property
    def sasl_bootstrap(self) -> str | None:
        return self.bootstrap_for("SASL_PLAINTEXT")


def node_dir(data_dir: Path, node: int) -> Path:
    return data_dir / f"node-{node}"


def check_sasl_users(users: dict[str, str]) -> None:
    """Refuse names and passwords that would need escaping in a JAAS line in a .properties file."""
    for user, password in users.items():
        if not re.fullmatch(r"[A-Za-z0-9_.@-]+", user):
            raise KafkaLocalError(
                f"SASL user name {user!r} is not supported: use letters, digits and _ . @ -"
            )
        if not password or any(c in password for c in '"\\;\n\r'):
            raise KafkaLocalError(
                f"the SASL password of {user!r} is empty or holds a quote, backslash, semicolon "
                "or line break: pick a simpler test password"
            )


def parse_sasl_plain(values: list[str] | None) -> dict[str, str] | None:
    """``["alice:secret", ...]`` from ``--sasl-plain`` → ``{"alice": "secret"}``."""
    if not values:
        return None
    users = {}
    for value in values:
        user, colon, password = value.partition(":")
        if not colon or not user:
            raise KafkaLocalError("--sasl-plain wants USER:PASS, e.g. --sasl-plain alice:secret")
        users[user] = password
    return users


def _sasl_settings(spec: ClusterSpec) -> dict[str, object]:
    """The PLAIN mechanism with ``spec.sasl_users`` on the SASL listener(s)."""
    users = " ".join(f'user_{u}="{p}"' for u, p in sorted((spec.sasl_users or {}).items()))
    jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
    settings: dict[str, object] = {"sasl.enabled.mechanisms": "PLAIN"}
    for protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if protocol in spec.protocols():
            settings[f"listener.name.{protocol.lower()}.plain.sasl.jaas.config"] = jaas
    return settings


def _acl_settings() -> dict[str, object]:
    """KRaft's authorizer. The PLAINTEXT and CONTROLLER listeners' principal (ANONYMOUS) is a
    super user, so brokers, controllers and the test harness are unaffected; SASL users get
    only what ``add_acls`` grants them."""
    return {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }


def _tls_settings(data_dir: Path) -> dict[str, object]:
    """The SSL listener(s) serve the broker certificate from ``make_tls_files`` (PEM, no JKS)."""
    files = tls_dir(data_dir)
    return {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": files / KEYSTORE,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": files / "ca.pem",
        "ssl.client.auth": "none",
    }


def server_properties(spec: ClusterSpec, node: int, data_dir: Path) -> str:
    voters = ",".join(f"{n}@127.0.0.1:{spec.quorum_port(n)}" for n in spec.node_ids())
    replicas = min(spec.nodes, 3)
    clients = ",".join(f"{p}://127.0.0.1:{spec.listener_port(p, node)}" for p in spec.protocols())
    protocols = ",".join(f"{p}:{p}" for p in spec.protocols()) + ",CONTROLLER:PLAINTEXT"
    settings = {
        "process.roles": "broker,controller",
        "node.id": node,
        "controller.quorum.voters": voters,
        "listeners": f"{clients},CONTROLLER://127.0.0.1:{spec.quorum_port(node)}",
        "advertised.listeners": clients,
        "listener.security.protocol.map": protocols,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": node_dir(data_dir, node) / "data",
        "num.partitions": 1,
        "default.replication.factor": replicas,
        # As in production, acks=all needs 2 in-sync replicas on 3+ nodes (1 on one node): a topic
        # at RF 3 takes writes with one broker down, and no acknowledged write is on one disk only.
        # (Kafka 3.9 caps it at a topic's replica count: an RF 1 topic still takes writes.)
        "min.insync.replicas": max(1, replicas - 1),
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
        # Fewer internal partitions: the first group / transaction of a test run waits less.
        "offsets.topic.num.partitions": 5,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.num.partitions": 5,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": max(1, replicas - 1),
        # Tests wait for timed-out transactions to be aborted; the default check runs every 10 s.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": 5000,
    }
    if major(spec.version) == 4:
        settings["share.coordinator.state.topic.replication.factor"] = replicas
        settings["share.coordinator.state.topic.min.isr"] = max(1, replicas - 1)
    if spec.sasl_users:
        settings.update(_sasl_settings(spec))
    if spec.tls:
        settings.update(_tls_settings(data_dir))
    if spec.acls:
        settings.update(_acl_settings())
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def new_cluster_id() -> str:
    """A Kafka ``Uuid`` string: 16 random bytes, url-safe base64, never starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def load_spec(data_dir: Path) -> ClusterSpec | None:
    path = data_dir / "cluster.json"
    return ClusterSpec(**json.loads(path.read_text())) if path.exists() else None


def save_spec(spec: ClusterSpec, data_dir: Path) -> None:
    (data_dir / "cluster.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
