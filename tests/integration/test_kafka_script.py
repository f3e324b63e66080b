"""scripts/kafka_local.py on bad input: one clear line, exit 1, and nothing left running.

None of these needs the network or the Kafka jars: a stand-in ``java`` on a private PATH plays
the broker, and an empty cache marked complete stands in for the Maven download.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_helpers import REPO, load_kafka_local

SCRIPT = REPO / "scripts/kafka_local.py"

# Answers `java -version`, "formats" storage, and otherwise runs BEHAVIOUR with the broker's
# arguments kept in its command line (the script only signals pids whose argv is the broker's).
FAKE_JAVA = """#!/bin/sh
case "$*" in
  *-version*) echo 'openjdk version "17.0.9" 2023-10-17' >&2; exit 0 ;;
  *StorageTool*) exit 0 ;;
esac
exec {python} -c "$FAKE_BROKER" "$@"
"""


def start_args(data: Path, port: int | None = None) -> list[str]:
    """`start` on free ports (or a given broker port), so a running dev broker cannot interfere."""
    free, controller = load_kafka_local().free_ports(2)
    return [
        "start",
        "--data-dir",
        str(data),
        "--port",
        str(port or free),
        "--controller-port",
        str(controller),
    ]


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_text(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode == 1, done
    line = done.stderr.splitlines()[0]
    assert line.startswith("kafka_local: error: ")
    for needle in needles:
        assert needle in line
    return line


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with an empty bin dir on PATH and an empty jar cache."""
    (tmp_path / "bin").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "KAFKA_VERSION")}
    env.update(PATH=str(tmp_path / "bin"), ONCEFLOW_KAFKA_CACHE=str(tmp_path / "cache"))
    return env


@pytest.fixture
def fake_java(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """``env`` plus a stand-in java and a cache that claims the jars are there."""
    java = tmp_path / "bin/java"
    java.write_text(FAKE_JAVA.format(python=sys.executable))
    java.chmod(0o755)
    cache = tmp_path / "cache/3.9.1"
    cache.mkdir(parents=True)
    (cache / ".complete").write_text("fake\n")
    yield env
    for pid in processes_mentioning(str(tmp_path)):  # in case a test failed half-way
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_busy_port_is_named_and_nothing_starts(
    env: dict[str, str], busy_port: int, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    done = run_script(*start_args(data, busy_port), env=env)
    assert_one_line_error(done, f"port {busy_port} is already in use")
    assert not list(data.glob("node-*/kafka.pid"))
    assert processes_mentioning(str(data)) == []


def test_missing_java_says_how_to_install_it(env: dict[str, str], tmp_path: Path) -> None:
    done = run_script(*start_args(tmp_path / "data"), env=env)
    assert_one_line_error(done, "java not found", "apt-get install openjdk-17")


def test_missing_maven_says_how_to_install_it(fake_java: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cache/3.9.1/.complete").unlink()
    done = run_script("fetch", env=fake_java)
    assert_one_line_error(done, "mvn not found", "apt-get install maven")


def test_broker_that_exits_early_is_reported(fake_java: dict[str, str], tmp_path: Path) -> None:
    fake_java["FAKE_BROKER"] = "import sys; print('ERROR fake broker cannot bind'); sys.exit(1)"
    data = tmp_path / "data"
    done = run_script(*start_args(data), env=fake_java)
    assert_one_line_error(done, "node 1 exited during start-up", str(data / "node-1/kafka.out"))
    assert "ERROR fake broker cannot bind" in done.stderr  # the log tail under the error line
    assert not list(data.glob("node-*/kafka.pid"))


def test_broker_that_never_answers_is_killed(fake_java: dict[str, str], tmp_path: Path) -> None:
    fake_java["FAKE_BROKER"] = "import time; time.sleep(120)"
    fake_java["ONCEFLOW_KAFKA_READY_TIMEOUT"] = "1"
    data = tmp_path / "data"
    done = run_script(*start_args(data), env=fake_java)
    assert_one_line_error(done, "node 1 not ready", "after 1 s")
    assert processes_mentioning(str(data)) == []
    assert not list(data.glob("node-*/kafka.pid"))


def test_stop_never_signals_a_stranger(fake_java: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    spec = '{"version": "3.9.1", "nodes": 1, "port": 1, "controller_port": 2, "cluster_id": "x"}'
    (data / "node-1").mkdir(parents=True)
    (data / "cluster.json").write_text(spec)
    with subprocess.Popen(["sleep", "30"]) as stranger:
        (data / "node-1/kafka.pid").write_text(f"{stranger.pid}\n")
        for _ in range(2):  # safe to call twice
            assert run_script("stop", "--data-dir", str(data), env=fake_java).returncode == 0
        assert stranger.poll() is None
        stranger.kill()
    assert not (data / "node-1/kafka.pid").exists()


def test_bad_version_and_unknown_cluster(env: dict[str, str], tmp_path: Path) -> None:
    done = run_script("fetch", "--version", "latest", env=env)
    assert_one_line_error(done, "bad Kafka version 'latest'")
    done = run_script("kill-node", "--data-dir", str(tmp_path), "--node", "1", env=env)
    assert_one_line_error(done, "no cluster in", "run `start")


def test_failed_maven_download_is_named(env: dict[str, str], tmp_path: Path) -> None:
    mvn = tmp_path / "bin/mvn"
    mvn.write_text(
        "#!/bin/sh\necho '[ERROR] Could not resolve org.apache.kafka:kafka_2.13'\nexit 1\n"
    )
    mvn.chmod(0o755)
    done = run_script("fetch", "--version", "3.9.9", env=env)
    assert_one_line_error(done, "Maven could not fetch Kafka 3.9.9", "Could not resolve")
    assert not (tmp_path / "cache/3.9.9/libs").exists()
    assert not (tmp_path / "cache/3.9.9/.complete").exists()


def test_overlapping_ports_are_refused(env: dict[str, str], tmp_path: Path) -> None:
    args = ["--port", "9092", "--controller-port", "9093", "--nodes", "3"]
    done = run_script("start", "--data-dir", str(tmp_path / "data"), *args, env=env)
    assert_one_line_error(done, "broker ports 9092-9094 overlap controller ports 9093-9095")


@pytest.mark.parametrize(("nodes", "min_isr"), [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_min_insync_replicas_follows_the_cluster_size(
    nodes: int, min_isr: int, tmp_path: Path
) -> None:
    """acks=all needs 2 in-sync replicas on a 3+ node cluster (topics at RF 3 survive one dead
    broker), 1 where a second replica may not exist."""
    kafka_local = load_kafka_local()
    spec = kafka_local.ClusterSpec("3.9.1", nodes, 20000, 20100, "id")
    props = kafka_local.server_properties(spec, 1, tmp_path).splitlines()
    assert f"min.insync.replicas={min_isr}" in props
    assert f"default.replication.factor={min(nodes, 3)}" in props


def test_tls_without_openssl_says_how_to_install_it(
    fake_java: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    port, _, controller = load_kafka_local().free_ports(3)  # PLAINTEXT, SSL, controller
    args = ["--data-dir", str(data), "--port", str(port), "--controller-port", str(controller)]
    done = run_script("start", *args, "--tls", env=fake_java)
    assert_one_line_error(done, "openssl not found", "apt-get install openssl")
    assert processes_mentioning(str(data)) == []
