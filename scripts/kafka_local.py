#!/usr/bin/env python3
"""Run a throwaway Apache Kafka (KRaft) cluster on loopback, for onceflow's tests and local dev.

Jars come from Maven Central through ``mvn`` into a cache outside the repo
(``$ONCEFLOW_KAFKA_CACHE/<version>/libs``, default ``~/.cache/onceflow/kafka``). Every node is a
plain ``java -cp 'libs/*' kafka.Kafka server.properties`` process, combined broker and controller,
in a session of its own so that it outlives this script. A cluster lives in its data dir::

    DATA_DIR/cluster.json                 version, node count, ports, cluster id
    DATA_DIR/node-N/server.properties     written once, reused by start-node
    DATA_DIR/node-N/data/                 log.dirs (formatted once, never again)
    DATA_DIR/node-N/logs/server.log       INFO and up; kafka.out gets WARN and up, and crashes
    DATA_DIR/node-N/kafka.pid

A node counts as up when it answers a real Kafka Metadata request (v4, sent over a raw socket)
with our cluster id and the brokers we expect. A pid is only ever signalled after checking that
its command line is the ``kafka.Kafka`` of that very node, so ``stop`` cannot hit a stranger.

Command line::

    kafka_local.py fetch [--version V]
    kafka_local.py start --data-dir D [--port 9092] [--controller-port PORT+NODES] [--nodes 1|3]
                         [--sasl-plain USER:PASS ...] [--tls]
    kafka_local.py stop --data-dir D
    kafka_local.py kill-node --data-dir D --node N [--signal KILL|TERM]
    kafka_local.py start-node --data-dir D --node N
    kafka_local.py free-ports N

From Python (tests load this file with importlib)::

    bootstrap = start_cluster(data_dir, nodes=1, port=p, controller_port=c)
    stop_cluster(data_dir)

SASL (``--sasl-plain USER:PASS``, repeatable; ``sasl_users={user: password}`` from Python): each
node also gets a SASL_PLAINTEXT listener with mechanism PLAIN and those users. Node N's SASL port
is ``port + nodes + N - 1``, right after the broker ports (one node: the port after the plain
one), and the controller ports then default to after the SASL ports. Inter-broker and controller
traffic and the readiness probe stay on PLAINTEXT; ``start`` prints ``sasl_bootstrap=...`` before
its ``bootstrap=...`` line and ``sasl_bootstrap(data_dir)`` returns it. The users are recorded
in ``cluster.json`` (a throwaway test cluster: the passwords are stored in clear there and in
``server.properties``), so ``start`` without ``--sasl-plain`` and ``start-node`` keep them.

TLS (``--tls``; ``tls=True`` from Python): ``openssl`` makes a throwaway CA and one broker
certificate for 127.0.0.1 and localhost in ``DATA_DIR/tls`` (``ca.pem``, and the broker's PEM key
store ``broker-keystore.pem``), and each node gets an SSL listener in the next block of ports
(with SASL users, a SASL_SSL listener in the block after that). Clients must verify the brokers
against ``ca.pem``; there is no client authentication. ``start`` prints ``ssl_bootstrap=``,
``sasl_ssl_bootstrap=`` and ``ssl_cafile=`` lines; ``tls_bootstrap(data_dir[, sasl=True])`` and
``tls_cafile(data_dir)`` return them, and ``new_ca(dir)`` makes another CA (a wrong one, for tests).

Every failure is a ``KafkaLocalError`` whose first line says what is wrong and how to fix it; the
command line prints it and exits 1, after stopping whatever this call had started.
Environment: ``KAFKA_VERSION`` (default 3.9.1), ``ONCEFLOW_KAFKA_CACHE``, ``ONCEFLOW_KAFKA_HEAP``
(default ``-Xmx512m -Xms256m``), ``JAVA_HOME``. Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

DEFAULT_VERSION = "3.9.1"
DEFAULT_HEAP = "-Xmx512m -Xms256m"
DEPENDENCY_PLUGIN = "3.8.1"  # maven-dependency-plugin; Maven 3.8's default (2.8) is from 2013
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
CONFIG_DIR = Path(__file__).resolve().parent / "kafka"  # log4j configs, one per Kafka major
JAVA_HINT = "install JDK 17 (apt-get install openjdk-17-jre-headless) or set JAVA_HOME"


class KafkaLocalError(Exception):
    """A failure with a one-line message; ``detail`` holds optional log lines shown under it."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


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


# --- fetching jars -------------------------------------------------------------------------------


def cache_dir(version: str) -> Path:
    base = os.environ.get("ONCEFLOW_KAFKA_CACHE") or Path.home() / ".cache/onceflow/kafka"
    return Path(base) / version


def major(version: str) -> int:
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise KafkaLocalError(f"bad Kafka version {version!r}: expected X.Y.Z, e.g. 3.9.1")
    if version.split(".")[0] not in ("3", "4"):
        raise KafkaLocalError(f"Kafka {version} is not supported: use a 3.x (3.7+) or 4.x release")
    return int(version.split(".")[0])


def pom_xml(version: str) -> str:
    """A pom whose runtime dependencies are a Kafka broker plus its logging backend (3.x)."""
    dependency = (
        "<dependency><groupId>{}</groupId><artifactId>{}</artifactId>"
        "<version>{}</version></dependency>"
    )
    deps = [dependency.format("org.apache.kafka", "kafka_2.13", version)]
    if major(version) == 3:  # 4.x brings log4j2 itself; its slf4j binding is added by fetch()
        deps.append(dependency.format("org.slf4j", "slf4j-reload4j", "1.7.36"))
    dependencies = "\n    ".join(deps)
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>onceflow.local</groupId><artifactId>kafka-runtime</artifactId><version>{version}</version>
  <dependencies>
    {dependencies}
  </dependencies>
</project>
"""


def log_config_flag(version: str) -> str:
    """The JVM flag pointing the version's logging backend at our config in scripts/kafka/."""
    if major(version) == 3:
        return f"-Dlog4j.configuration=file:{CONFIG_DIR / 'log4j.properties'}"
    return f"-Dlog4j2.configurationFile={CONFIG_DIR / 'log4j2.properties'}"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise fetches of one version (parallel test sessions share the cache)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch(version: str) -> Path:
    """Download Kafka ``version`` and its runtime dependencies; return the ``libs`` dir."""
    cache = cache_dir(version)
    pom = pom_xml(version)
    with _locked(cache):
        if not (cache / ".complete").exists():
            _maven_copy(cache, pom, version)
    return cache / "libs"


def _maven_copy(cache: Path, pom: str, version: str) -> None:
    """Copy the runtime jars into ``libs`` through a staging dir, so a failure leaves no half."""
    (cache / "pom.xml").write_text(pom)
    staging = cache / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    _mvn(
        cache,
        version,
        "copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    )
    if major(version) == 4:
        # Kafka 4.x logs via slf4j 1.7 to log4j2 but leaves the binding to its distribution;
        # take the one that matches the log4j-core it ships.
        cores = sorted(staging.glob("log4j-core-*.jar"))
        if not cores:
            raise KafkaLocalError(f"Kafka {version} ships no log4j-core: update kafka_local.py")
        log4j = cores[-1].name.removeprefix("log4j-core-").removesuffix(".jar")
        artifact = f"-Dartifact=org.apache.logging.log4j:log4j-slf4j-impl:{log4j}"
        _mvn(cache, version, "copy", artifact, f"-DoutputDirectory={staging}")
    shutil.rmtree(cache / "libs", ignore_errors=True)
    staging.rename(cache / "libs")
    (cache / ".complete").write_text(f"{len(list((cache / 'libs').glob('*.jar')))} jars\n")


def _mvn(cache: Path, version: str, goal: str, *options: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError("mvn not found: install Maven 3 (apt-get install maven)")
    plugin = f"org.apache.maven.plugins:maven-dependency-plugin:{DEPENDENCY_PLUGIN}:{goal}"
    cmd = [mvn, "-B", "-q", "-f", str(cache / "pom.xml"), plugin, *options]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    with (cache / "maven.log").open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        errors = [line for line in done.stdout.splitlines() if "[ERROR]" in line] or ["?"]
        raise KafkaLocalError(
            f"Maven could not fetch Kafka {version} (see {cache / 'maven.log'}): "
            f"{errors[0][:300]} -- check that the version exists on Maven Central and is reachable"
        )


# --- checks before starting anything ----------------------------------------------------------


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin/java") if home else shutil.which("java")
    if java is None or not os.access(java, os.X_OK):
        raise KafkaLocalError(f"java not found: {JAVA_HINT}")
    return java


def check_java_version(java: str, version: str) -> None:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    java_major = 0 if found is None else int(found[1]) if found[1] != "1" else int(found[2] or 0)
    needed = 17 if major(version) == 4 else 11
    if java_major < needed:
        raise KafkaLocalError(
            f"Kafka {version} needs Java {needed}+, {java} is {java_major}: {JAVA_HINT}"
        )


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The JVM binds with SO_REUSEADDR too, so a TIME_WAIT leftover is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports_free(ports: list[int]) -> None:
    busy = [str(p) for p in ports if port_in_use(p)]
    if busy:
        which = f"port {busy[0]} is" if len(busy) == 1 else f"ports {', '.join(busy)} are"
        raise KafkaLocalError(
            f"{which} already in use on 127.0.0.1: stop what listens there (ss -ltnp) "
            "or pick other ports (--port/--controller-port)"
        )


def free_ports(count: int) -> list[int]:
    """``count`` consecutive free loopback ports, below Linux's ephemeral range (32768+)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        ports = list(range(base, base + count))
        if not any(port_in_use(p) for p in ports):
            return ports
    raise KafkaLocalError(f"found no {count} consecutive free ports in 20000-32000")


# --- configuration -----------------------------------------------------------------------------


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


def java_command(
    spec: ClusterSpec, node: int, data_dir: Path, main: list[str], tool: bool = False
) -> list[str]:
    """The JVM command line for ``main``; ``tool`` trades peak speed for a faster start."""
    if tool:
        jvm = [find_java(), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    else:
        heap = os.environ.get("ONCEFLOW_KAFKA_HEAP", DEFAULT_HEAP).split()
        jvm = [find_java(), *heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
    logs = node_dir(data_dir, node) / "logs"
    jvm += ["-Djava.awt.headless=true", f"-Dkafka.logs.dir={logs}", log_config_flag(spec.version)]
    return [*jvm, "-cp", f"{cache_dir(spec.version) / 'libs'}/*", *main]


def format_storage(spec: ClusterSpec, node: int, data_dir: Path) -> None:
    """Format the node's log dir once; a restart reuses it (that is the point of a restart)."""
    ndir = node_dir(data_dir, node)
    if (ndir / "data/meta.properties").exists():
        return
    tool = ["kafka.tools.StorageTool", "format", "-t", spec.cluster_id]
    cmd = java_command(spec, node, data_dir, [*tool, "-c", str(ndir / "server.properties")], True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines() or ["no output"]
        raise KafkaLocalError(
            f"formatting node {node} storage failed: {lines[-1]}", "\n".join(lines)
        )


# --- TLS: a throwaway CA and one broker certificate for 127.0.0.1 and localhost ------------------

KEYSTORE = "broker-keystore.pem"  # the broker's private key, then its certificate chain
TLS_DAYS = 3650  # a dev broker's data dir may live for years; nothing here is a real secret
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]  # fast to make
BROKER_EXTENSIONS = """subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def _openssl(directory: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise KafkaLocalError("openssl not found: install it (apt-get install openssl)")
    cmd = [openssl, *args]
    done = subprocess.run(cmd, cwd=directory, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise KafkaLocalError(f"openssl {args[0]} failed in {directory}: {lines[-1]}", done.stderr)


def new_ca(directory: str | Path, name: str = "onceflow-test-ca") -> Path:
    """Make a self-signed CA (``ca.pem`` and ``ca.key``) in ``directory``; return ``ca.pem``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        directory,
        *["req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.pem"],
        *["-days", str(TLS_DAYS), "-subj", f"/CN={name}"],
        *["-addext", "basicConstraints=critical,CA:TRUE"],
        *["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    )
    return directory / "ca.pem"


def make_tls_files(data_dir: Path) -> None:
    """A CA and a broker key store signed by it in ``data_dir/tls``; made once, then reused."""
    directory = tls_dir(data_dir)
    if (directory / KEYSTORE).exists():
        return
    new_ca(directory)
    (directory / "broker.ext").write_text(BROKER_EXTENSIONS)
    _openssl(
        directory,
        *["req", *EC_KEY, "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost"],
    )
    _openssl(
        directory,
        *["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key"],
        *["-CAcreateserial", "-days", str(TLS_DAYS), "-extfile", "broker.ext"],
        *["-out", "broker.pem"],
    )
    # Kafka's PEM key store: an unencrypted PKCS#8 key, then the chain up to the CA.
    parts = [directory / name for name in ("broker.key", "broker.pem", "ca.pem")]
    staging = directory / f"{KEYSTORE}.partial"
    staging.write_text("".join(part.read_text() for part in parts))
    staging.rename(directory / KEYSTORE)


# --- processes ---------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    stat = _read(Path(f"/proc/{pid}/stat"))  # "pid (comm) S ..."; a zombie (Z) is dead
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def node_pid(data_dir: Path, node: int) -> int | None:
    """The pid of this node's live broker, or None. Checks the pid really is that broker."""
    pid_file = node_dir(data_dir, node) / "kafka.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    argv = _read(Path(f"/proc/{pid}/cmdline")).split("\0")
    is_ours = "kafka.Kafka" in argv and str(node_dir(data_dir, node) / "server.properties") in argv
    return pid if is_ours and _alive(pid) else None


def launch(cmd: list[str], out: Path) -> int:
    """Start ``cmd`` detached, output appended to ``out``; return its pid.

    The broker must outlive the caller (a CLI call or a whole pytest session) and must never be
    its child: a child that dies lingers as a zombie until reaped, which is both noise and a
    ResourceWarning. ``sh`` backgrounds the JVM in a new session and exits at once.
    """
    script = '"$@" >>"$0" 2>&1 </dev/null & echo $!'
    done = subprocess.run(
        ["/bin/sh", "-c", script, str(out), *cmd],
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    return int(done.stdout.strip())


def log_tail(data_dir: Path, node: int, lines: int = 15) -> str:
    """The end of the node's console output, or of server.log when the console said nothing."""
    ndir = node_dir(data_dir, node)
    text = _read(ndir / "kafka.out") or _read(ndir / "logs/server.log")
    return "\n".join(text.splitlines()[-lines:])


def _signal_and_wait(pids: dict[int, int], sig: int, timeout: float) -> dict[int, int]:
    """Send ``sig`` to every pid (by node); return those still alive after ``timeout``."""
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = {node: pid for node, pid in pids.items() if _alive(pid)}
    return pids


# --- readiness: a Kafka Metadata v4 request over a raw socket ----------------------------------


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
            if node_pid(data_dir, node) is None:
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


# --- cluster operations ------------------------------------------------------------------------


def start_cluster(
    data_dir: str | Path,
    nodes: int = 1,
    port: int = 9092,
    controller_port: int | None = None,
    version: str | None = None,
    sasl_users: dict[str, str] | None = None,
    tls: bool | None = None,
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
    if sasl_users:
        check_sasl_users(sasl_users)
    wanted = ClusterSpec(version, nodes, port, 0, "", sasl_users or None, tls)
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
    (data_dir / "cluster.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
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
        _signal_and_wait(started, signal.SIGKILL, 10)
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
    left = _signal_and_wait(pids, signal.SIGTERM, timeout)
    _signal_and_wait(left, signal.SIGKILL, 10)
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
    left = _signal_and_wait({node: pid}, sig, STOP_TIMEOUT_S)
    _signal_and_wait(left, signal.SIGKILL, 10)
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


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        cluster = (args.nodes, args.port, args.controller_port, args.version, users, args.tls)
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


if __name__ == "__main__":
    sys.exit(main())
