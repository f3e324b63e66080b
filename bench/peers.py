"""The peers: faust-streaming and Quix Streams running the reference app, each in a pinned
virtualenv of its own, outside the project's.

``ensure(peer)`` creates ``~/.cache/onceflow/bench-peers/<peer>-<version>/`` once
(``python3 -m venv`` + ``pip install <package>==<version>``; ``ONCEFLOW_BENCH_PEERS_DIR``
moves it) and records ``pip freeze`` there. ``peer_proc`` runs ``bench/apps/peer_<peer>.py``
with that virtualenv's Python in isolated mode (``-I``: no ``PYTHONPATH``, so onceflow is not
importable). Peers log differently from onceflow, so a peer is *ready* when its consumer group
is ``Stable`` and holds every input partition, unchanged for ``STABLE_S``
(``wait_group_ready``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from bench.procs import REPO, Proc

__all__ = [
    "PINS",
    "PeerSettings",
    "Pin",
    "assigned_partitions",
    "ensure",
    "peer_info",
    "peer_proc",
    "wait_group_ready",
]

Peer = Literal["faust", "quix"]
STABLE_S = 2.0


@dataclass(frozen=True)
class Pin:
    """A peer's package, pinned: the newest release that installs on Python 3.11 here
    (checked 2026-11-30)."""

    package: str
    version: str
    store: str  # its default state store, which the app keeps
    commit_setting: str  # the name of its commit interval setting

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


PINS: dict[Peer, Pin] = {
    "faust": Pin(
        "faust-streaming", "0.15.3", "memory:// (in-memory, changelog topic)",
        "broker_commit_interval (s); broker_commit_every left at its default 10,000 records",
    ),
    "quix": Pin(
        "quixstreams", "3.28.1", "RocksDB (rocksdict, changelog topic)",
        "commit_interval (s); commit_every left at its default 0 (off)",
    ),
}  # fmt: skip


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "onceflow" / "bench-peers"
    return Path(os.environ.get("ONCEFLOW_BENCH_PEERS_DIR", default))


def venv_dir(peer: Peer) -> Path:
    return cache_dir() / f"{peer}-{PINS[peer].version}"


def ensure(peer: Peer) -> Path:
    """The peer's virtualenv Python, created and installed the first time (needs PyPI)."""
    venv = venv_dir(peer)
    python = venv / "bin" / "python"
    done = venv / "freeze.txt"  # written last: its presence means the install completed
    if done.exists():
        return python
    print(f"    creating {venv} ({PINS[peer].requirement}) ...", flush=True)
    subprocess.run(["python3", "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", PINS[peer].requirement], check=True)
    freeze = subprocess.run([*pip, "freeze"], check=True, capture_output=True, text=True)
    done.write_text(freeze.stdout)
    return python


def peer_info(peer: Peer) -> dict[str, Any]:
    """What the results record of a peer: the pin, its store, and every installed package."""
    freeze = venv_dir(peer) / "freeze.txt"
    packages = freeze.read_text().split() if freeze.exists() else []
    return {**asdict(PINS[peer]), "packages": packages}


@dataclass(frozen=True)
class PeerSettings:
    """What a peer app is told (as ``PEER_*`` variables); the same as onceflow gets."""

    bootstrap: str
    group: str  # consumer group = app id (faust) / consumer_group (Quix)
    input: str
    output: str
    partitions: int
    commit_interval_ms: int
    state_dir: str

    def env(self) -> dict[str, str]:
        return {f"PEER_{k.upper()}": str(v) for k, v in asdict(self).items()}


def peer_proc(peer: Peer, name: str, settings: PeerSettings, log_path: Path) -> Proc:
    script = REPO / "bench" / "apps" / f"peer_{peer}.py"
    return Proc(name, [str(ensure(peer)), "-I", str(script)], settings.env(), log_path)


def assigned_partitions(members: list[Any], topic: str) -> list[int]:
    """The partitions of ``topic`` in a described group's member assignments (sorted, with
    duplicates if two members claim one). Both peers use the standard consumer protocol's
    assignment layout (faust with user data of its own)."""
    out: list[int] = []
    for member in members:
        raw = member[4]  # (member_id, client_id, client_host, metadata, assignment)
        if not raw:
            continue
        decoded = ConsumerProtocolMemberAssignment.decode(raw)
        out += [p for t, parts in decoded.assignment if t == topic for p in parts]
    return sorted(out)


async def _group_state(admin: AIOKafkaAdminClient, group: str, topic: str) -> tuple[str, Any]:
    response = (await admin.describe_consumer_groups([group]))[0]
    _error, _gid, state, _ptype, _protocol, members = response.groups[0][:6]
    return state, tuple(assigned_partitions(members, topic))


async def wait_group_ready(
    bootstrap: str, group: str, topic: str, partitions: int, procs: list[Proc],
    timeout: float = 180.0,
) -> float:  # fmt: skip
    """Wait until ``group`` is Stable with each of ``topic``'s partitions assigned once, the
    same assignment for ``STABLE_S``; returns process start -> ready, in seconds."""
    want = tuple(range(partitions))
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        since: float | None = None
        while time.monotonic() < deadline:
            for proc in procs:
                proc.check_alive()
                proc.sample_rss()
            state, assigned = await _group_state(admin, group, topic)
            if state == "Stable" and assigned == want:
                since = since or time.monotonic()
                if time.monotonic() - since >= STABLE_S:
                    return since - min(p.started_at for p in procs)
            else:
                since = None
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    logs = "\n".join(f"--- {p.name}\n{p.log_text()[-3000:]}" for p in procs)
    raise TimeoutError(
        f"{group} not stable with {partitions} partitions in {timeout:.0f}s:\n{logs}"
    )
