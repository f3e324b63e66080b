"""The container image's command, run without a container engine.

CI has no Docker daemon, so this runs what the image would run: the Dockerfile's ENTRYPOINT +
CMD, with the final stage's ENV, both parsed from the Dockerfile (nothing is copied here, so the
test follows the file). Two things differ from the image, by necessity:

* ``ONCEFLOW_STATE_DIR`` points into tmp_path instead of the image's /var/lib/onceflow volume,
  and ``ONCEFLOW_HTTP_PORT`` is a free port instead of 8080, which other tests or a developer's
  worker may hold. The HEALTHCHECK reads its port from ``ONCEFLOW_HTTP_PORT`` (in the image
  too), so the very same healthcheck command is run against that port, not a rewritten one.
* The image's ``PATH=/opt/onceflow/bin:$PATH`` becomes this interpreter's bin directory: the
  test venv plays the image's venv, where ``onceflow`` and ``python`` resolve.

The reference app then counts records from a fresh input topic to a fresh output topic, the
healthcheck must pass against the running process (and fail when nothing listens), and the
STOPSIGNAL must stop it cleanly (exit 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import REPO, create_topics, recent_window_start, unique_name
from workers import WorkerProcess, collect, produce

DOCKERFILE = REPO / "Dockerfile"
IMAGE_STATE_DIR = "/var/lib/onceflow"
WINDOW_MS = 5 * 60 * 1000
T0 = recent_window_start(WINDOW_MS)  # a window start: all records in one
KEYS = [f"user-{i}" for i in range(3)]
PER_KEY = 4


# -- the Dockerfile, as the image builder reads it ------------------------------------------------


@dataclass
class Stage:
    """The final build stage: what the image runs and with which environment."""

    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"the Dockerfile's final stage has no {name} instruction"
        return found[-1]

    def exec_form(self, name: str) -> list[str]:
        """A JSON-array instruction (shell form would add /bin/sh -c and its signal issues)."""
        args = self.last(name)
        assert args.startswith("["), f"{name} must use the exec (JSON) form, got: {args}"
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            tokens = shlex.split(args)
            if "=" not in tokens[0]:  # legacy form: ENV KEY value with spaces
                env[tokens[0]] = args.split(None, 1)[1]
                continue
            for token in tokens:
                key, _, value = token.partition("=")
                env[key] = value
        return env

    @property
    def command(self) -> list[str]:
        entrypoint = self.exec_form("ENTRYPOINT") if self.all("ENTRYPOINT") else []
        return entrypoint + self.exec_form("CMD")

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options such as {"timeout": "5s"}, the exec-form command)."""
        match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(\[.*\])", self.last("HEALTHCHECK"))
        assert match, 'HEALTHCHECK must be `HEALTHCHECK [--opt=value ...] CMD ["exec", ...]`'
        options = dict(opt[2:].split("=", 1) for opt in match.group(1).split())
        return options, json.loads(match.group(2))


def final_stage(path: Path = DOCKERFILE) -> Stage:
    """Instructions after the last FROM, with continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue  # comments may sit inside a continued instruction too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if pending or line:
            logical.append((pending + line).strip())
        pending = ""
    stage = Stage()
    for line in logical:
        instr, _, args = line.partition(" ")
        if instr.upper() == "FROM":
            stage = Stage()
        else:
            stage.instructions.append((instr.upper(), args.strip()))
    return stage


def seconds(duration: str) -> float:
    """A Dockerfile duration such as 5s, 1m30s or 500ms."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def container_env(stage: Stage, **overrides: str) -> dict[str, str]:
    """The image's ENV over this process's environment, with PATH mapped to this venv.

    ONCEFLOW_* variables of this process are dropped: the worker sees the image's settings and
    the overrides, as `docker run -e` would give them, and nothing else.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCEFLOW_")}
    for key, value in stage.env.items():
        if key == "PATH":
            continue  # /opt/onceflow/bin:$PATH: here the test venv is the image's venv
        env[key] = value
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env.update(overrides)
    return env


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no output)"


def run_healthcheck(stage: Stage, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    options, command = stage.healthcheck
    return subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds(options.get("timeout", "30s")),
        check=False,
    )


# -- the image's contract, read from the Dockerfile alone ----------------------------------------


def test_dockerfile_runs_the_reference_worker_as_a_non_root_user() -> None:
    stage = final_stage()
    env = stage.env
    assert stage.command[:2] == ["onceflow", "worker"]
    assert stage.command[2:] == ["onceflow.examples.windowed_count"]
    assert env["ONCEFLOW_STATE_DIR"] == IMAGE_STATE_DIR
    assert IMAGE_STATE_DIR in json.loads(stage.last("VOLUME")), "the state dir must be a VOLUME"
    assert env["ONCEFLOW_LOG_FORMAT"] == "json"
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"
    assert stage.last("EXPOSE") == env["ONCEFLOW_HTTP_PORT"] == "8080"
    assert stage.last("STOPSIGNAL") == "SIGTERM"
    user = stage.last("USER").split(":")[0]
    uid = re.fullmatch(r"\$\{?(\w+)\}?", user)
    if uid:  # USER ${ONCEFLOW_UID}: the ARG's default
        (arg,) = [a for a in stage.all("ARG") if a.startswith(uid.group(1) + "=")]
        user = arg.split("=", 1)[1]
    assert user.isdigit() and int(user) >= 10000, "a numeric uid lets Kubernetes check non-root"


def test_healthcheck_fails_when_nothing_listens() -> None:
    stage = final_stage()
    env = container_env(stage, ONCEFLOW_HTTP_PORT=str(free_port()))
    result = run_healthcheck(stage, env)
    assert result.returncode != 0, "a healthcheck that passes with no server checks nothing"


# -- the image's command against the test broker ---------------------------------------------------


class ImageProcess(WorkerProcess):
    """The image's command line as a worker subprocess, started (like the image's WORKDIR) in a
    directory without the sources: the command must not rely on the repo being its cwd."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        super().__init__(command[-1], env, log_path)
        self.command = command

    def start(self) -> ImageProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.log_path.parent,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self


@dataclass
class Container:
    stage: Stage
    env: dict[str, str]
    worker: ImageProcess
    source: str
    sink: str


@pytest.fixture(scope="module")
async def container(
    bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Container]:
    """The image's command running the reference app on fresh topics, stopped with STOPSIGNAL."""
    tmp = tmp_path_factory.mktemp("container")
    source, sink = unique_name("ctr-in"), unique_name("ctr-out")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    stage = final_stage()
    env = container_env(
        stage,
        ONCEFLOW_STATE_DIR=str(tmp / "state"),
        ONCEFLOW_HTTP_PORT=str(free_port()),
        ONCEFLOW_BOOTSTRAP_SERVERS=bootstrap_servers,
        ONCEFLOW_APP_ID=unique_name("eos-stream-app"),
        ONCEFLOW_INPUT_TOPIC=source,
        ONCEFLOW_OUTPUT_TOPIC=sink,
    )
    worker = ImageProcess(stage.command, env, tmp / "worker.log")
    try:
        await create_topics(admin, [source, sink], partitions=2)
        worker.start()
        yield Container(stage, env, worker, source, sink)
        stop = signal.Signals[stage.last("STOPSIGNAL")]
        grace = int(env.get("ONCEFLOW_SHUTDOWN_GRACE_MS", "30000")) / 1000
        worker.signal(stop)
        code = worker.wait(grace + 10)
        assert code == 0, f"{stop.name} → exit {code}:\n{worker.log_text()[-3000:]}"
    finally:
        worker.kill()
        await admin.delete_topics([source, sink])
        await admin.close()


async def test_image_command_counts_records_into_the_output_topic(
    container: Container, bootstrap_servers: str
) -> None:
    records = [
        (key.encode(), b"click", T0 + 1000 * n + i)
        for n in range(PER_KEY)
        for i, key in enumerate(KEYS)
    ]
    await produce(bootstrap_servers, container.source, records)
    output = await collect(
        bootstrap_servers,
        container.sink,
        len(records),
        timeout=90,
        workers=[container.worker],
    )
    counts: dict[str, list[str]] = defaultdict(list)
    for record in output:
        counts[record.key.decode()].append(record.value.decode())
    expected = [str(n) for n in range(1, PER_KEY + 1)]
    assert dict(counts) == {key: expected for key in KEYS}, container.worker.log_text()[-3000:]


async def test_image_healthcheck_passes_against_the_running_worker(container: Container) -> None:
    options, _ = container.stage.healthcheck
    # Like Docker: failures during --start-period do not count; after it, the check must pass.
    deadline = time.monotonic() + seconds(options.get("start-period", "0s")) + 10
    while True:
        assert container.worker.alive, f"worker died:\n{container.worker.log_text()[-3000:]}"
        result = await asyncio.to_thread(run_healthcheck, container.stage, container.env)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert result.returncode == 0, (
        f"HEALTHCHECK exited {result.returncode} against the worker's port "
        f"{container.env['ONCEFLOW_HTTP_PORT']}: {last_line(result.stderr)}\n"
        "If the connection was refused, `onceflow worker` does not serve the HTTP API: "
        "onceflow.cli must run the worker through onceflow.http.serve.\n"
        f"worker log:\n{container.worker.log_text()[-2000:]}"
    )
