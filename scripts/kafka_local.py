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
                         [--sasl-plain USER:PASS ...] [--tls] [--acls]
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

ACLs (``--acls``, with ``--sasl-plain``; ``acls=True`` from Python): KRaft's StandardAuthorizer.
The PLAINTEXT listener's principal stays a super user; SASL users may only do what an ACL allows
(``add_acls(data_dir, user, "--operation", "All", "--topic", "*")`` runs Kafka's AclCommand).

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
(default ``-Xmx512m -Xms256m``), ``ONCEFLOW_KAFKA_READY_TIMEOUT`` (seconds, default 120),
``JAVA_HOME``. Linux only (reads ``/proc``).

The code is in the package next to this file, ``scripts/kafkalocal/`` (its ``__init__`` lists
the modules); this file loads it, re-exports its API (``kafkalocal.__all__``) and runs its
command line. Stdlib only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_package() -> None:
    """Import ``kafkalocal`` from this file's directory, which need not be on ``sys.path``.

    Tests and bench load this file by path with importlib, from any working directory.
    """
    if "kafkalocal" in sys.modules:
        return
    package = Path(__file__).resolve().parent / "kafkalocal"
    spec = importlib.util.spec_from_file_location(
        "kafkalocal", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None and spec.loader is not None
    sys.modules["kafkalocal"] = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(sys.modules["kafkalocal"])
    except BaseException:
        del sys.modules["kafkalocal"]
        raise


_load_package()

from kafkalocal import *  # noqa: E402, F403 -- the API, as listed in kafkalocal.__all__
from kafkalocal.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
