"""The JVM side: finding ``java``, the command line of a node or a Kafka tool, storage format.

Every node is a plain ``java -cp 'libs/*' kafka.Kafka server.properties`` process, combined
broker and controller, logging through our config in ``scripts/kafka/`` (one per Kafka major) to
``DATA_DIR/node-N/logs/server.log`` (INFO and up) and its console (WARN and up, and crashes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .config import ClusterSpec, node_dir
from .errors import KafkaLocalError
from .maven import cache_dir, major

DEFAULT_HEAP = "-Xmx512m -Xms256m"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "kafka"  # log4j configs, one per Kafka major
JAVA_HINT = "install JDK 17 (apt-get install openjdk-17-jre-headless) or set JAVA_HOME"


def log_config_flag(version: str) -> str:
    """The JVM flag pointing the version's logging backend at our config in scripts/kafka/."""
    if major(version) == 3:
        return f"-Dlog4j.configuration=file:{CONFIG_DIR / 'log4j.properties'}"
    return f"-Dlog4j2.configurationFile={CONFIG_DIR / 'log4j2.properties'}"


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
