"""The code behind scripts/kafka_local.py (see its docstring for the command line and data dir).

Stdlib only: it runs before any virtualenv exists. Modules, each importing only those above it::

    errors    KafkaLocalError
    maven     Kafka's jars from Maven Central into the cache (fetch, versions)
    tls       openssl: a throwaway CA and the brokers' PEM key store
    config    ClusterSpec (cluster.json), server.properties
    java      finding java, JVM command lines, formatting a node's storage
    ports     free and busy loopback ports
    process   launching nodes detached, their pids (checked against /proc), signals
    probe     readiness: a raw Metadata v4 request
    cluster   start/stop a cluster, kill/restart one node, bootstrap addresses
    cli       the argparse command line

This package is loaded as ``kafkalocal`` by scripts/kafka_local.py, which re-exports
``__all__``: the Python API that tests and bench use through that file.
"""

from __future__ import annotations

from .cli import build_parser, main, run
from .cluster import (
    STOP_TIMEOUT_S,
    add_acls,
    kill_node,
    sasl_bootstrap,
    start_cluster,
    start_node,
    stop_cluster,
    tls_bootstrap,
    tls_cafile,
)
from .config import (
    ClusterSpec,
    check_sasl_users,
    load_spec,
    new_cluster_id,
    node_dir,
    parse_sasl_plain,
    save_spec,
    server_properties,
)
from .errors import KafkaLocalError
from .java import (
    CONFIG_DIR,
    DEFAULT_HEAP,
    JAVA_HINT,
    check_java_version,
    find_java,
    format_storage,
    java_command,
    log_config_flag,
)
from .maven import DEFAULT_VERSION, DEPENDENCY_PLUGIN, cache_dir, fetch, major, pom_xml
from .ports import check_ports_free, free_ports, port_in_use
from .probe import READY_TIMEOUT_S, probe_metadata, wait_ready
from .process import launch, log_tail, node_pid, signal_and_wait
from .tls import BROKER_EXTENSIONS, EC_KEY, KEYSTORE, TLS_DAYS, make_tls_files, new_ca, tls_dir

__all__ = [
    "BROKER_EXTENSIONS",
    "CONFIG_DIR",
    "DEFAULT_HEAP",
    "DEFAULT_VERSION",
    "DEPENDENCY_PLUGIN",
    "EC_KEY",
    "JAVA_HINT",
    "KEYSTORE",
    "READY_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "TLS_DAYS",
    "ClusterSpec",
    "KafkaLocalError",
    "add_acls",
    "build_parser",
    "cache_dir",
    "check_java_version",
    "check_ports_free",
    "check_sasl_users",
    "fetch",
    "find_java",
    "format_storage",
    "free_ports",
    "java_command",
    "kill_node",
    "launch",
    "load_spec",
    "log_config_flag",
    "log_tail",
    "main",
    "major",
    "make_tls_files",
    "new_ca",
    "new_cluster_id",
    "node_dir",
    "node_pid",
    "parse_sasl_plain",
    "pom_xml",
    "port_in_use",
    "probe_metadata",
    "run",
    "sasl_bootstrap",
    "save_spec",
    "server_properties",
    "signal_and_wait",
    "start_cluster",
    "start_node",
    "stop_cluster",
    "tls_bootstrap",
    "tls_cafile",
    "tls_dir",
    "wait_ready",
]
