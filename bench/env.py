"""The benchmark's surroundings: a broker of its own (or a given one) and the machine record."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["Broker", "broker", "machine"]

REPO = Path(__file__).resolve().parents[1]


def _kafka_local() -> ModuleType:
    name = "onceflow_kafka_local"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "kafka_local.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look the module up while being built
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass(frozen=True)
class Broker:
    """The broker under the benchmark; ``pid`` when it runs on this machine (for its CPU time)."""

    bootstrap: str
    pid: int | None
    own: bool

    @property
    def version(self) -> str:
        """Kafka's version, from the broker's classpath when it runs here."""
        if self.pid is not None:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{self.pid}/cmdline").read_text()
                if match := re.search(r"kafka_[\d.]+-(\d+\.\d+\.\d+)\.jar", cmdline):
                    return match.group(1)
                libs = re.search(r"([^\0:]*/libs)/\*", cmdline)
                jars = sorted(Path(libs.group(1)).glob("kafka_*-*.jar")) if libs else []
                for jar in jars:
                    if match := re.search(r"kafka_[\d.]+-(\d+\.\d+\.\d+)\.jar", jar.name):
                        return match.group(1)
        return kafka_version() + ("" if self.own else " (external broker, assumed)")


def local_broker_pid(bootstrap: str) -> int | None:
    """The pid of a ``kafka.Kafka`` process on this host listening on ``bootstrap``'s port."""
    port = bootstrap.split(",")[0].rsplit(":", 1)[-1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_text().split("\0")
            if "kafka.Kafka" not in argv:
                continue
            properties = Path(argv[-1] if argv[-1] else argv[-2]).read_text()
            if re.search(rf"^listeners=.*:{port}\b", properties, re.MULTILINE):
                return int(proc.name)
    return None


@contextlib.asynccontextmanager
async def broker(bootstrap: str | None, parent: Path) -> AsyncIterator[Broker]:
    """Use ``bootstrap``, or start a single-node broker on free ports and stop it after."""
    if bootstrap:
        yield Broker(bootstrap, local_broker_pid(bootstrap), own=False)
        return
    kafka = _kafka_local()
    data_dir = Path(await asyncio.to_thread(_mkdtemp, parent))
    port, controller = kafka.free_ports(2)
    print(f"starting Kafka {kafka_version()} on 127.0.0.1:{port} (data in {data_dir})", flush=True)
    started = await asyncio.to_thread(
        kafka.start_cluster, data_dir, nodes=1, port=port, controller_port=controller
    )
    try:
        yield Broker(started, kafka.node_pid(data_dir, 1), own=True)
    finally:
        await asyncio.to_thread(kafka.stop_cluster, data_dir)
        await asyncio.to_thread(shutil.rmtree, data_dir, True)


def _mkdtemp(parent: Path) -> str:
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="broker-", dir=parent)


def kafka_version() -> str:
    return str(os.environ.get("KAFKA_VERSION", _kafka_local().DEFAULT_VERSION))


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def machine(kafka: Broker) -> dict[str, Any]:
    """Cores, CPU, memory, Python, Kafka and client versions, load: what the figures depend on."""
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": round(memory / 2**30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "kafka": kafka.version,
        "aiokafka": importlib.metadata.version("aiokafka"),
        "prometheus_client": importlib.metadata.version("prometheus_client"),
        "onceflow_commit": _commit(),
        "load_average_at_start": os.getloadavg(),
        "own_broker": kafka.own,
    }
