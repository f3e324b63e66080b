"""Kafka's jars from Maven Central, fetched through ``mvn`` into a cache outside the repo.

One dir per version, ``$ONCEFLOW_KAFKA_CACHE/<version>`` (default ``~/.cache/onceflow/kafka``)::

    pom.xml      a pom whose runtime dependencies are the broker and its logging backend
    maven.log    every mvn command line and its output
    libs/        the jars (``java -cp 'libs/*'``); filled through ``libs.partial`` first
    .complete    written last: the jars are all there
    .lock        serialises fetches of the version (parallel test sessions share the cache)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .errors import KafkaLocalError

DEFAULT_VERSION = "3.9.1"
DEPENDENCY_PLUGIN = "3.8.1"  # maven-dependency-plugin; Maven 3.8's default (2.8) is from 2013


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
