"""The distribution as a user gets it: the wheel built from this tree, installed into a fresh venv.

The repository keeps its own folder names (``app/``, ``state/``, ``processors/``), and
pyproject.toml maps them to one import package, ``onceflow`` (``package-dir`` plus an explicit
``packages`` list). The dev venv's editable install hides mistakes there: a subpackage missing
from ``packages`` still imports from the source tree, and ``app`` / ``state`` import from the
repository root whenever it is the working directory. So this builds the wheel from a copy of the
tree (what git tracks, plus untracked files it does not ignore; never the repository's ``build/``)
the way the Dockerfile does, installs it with its dependencies pinned by constraints.txt into a
new venv, and runs everything from directories that are not the repository.

It needs no broker, but it needs pip to reach its index (or a warm cache) for the dependencies.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka_helpers import REPO

# Building, creating the venv and installing the dependencies run in the first test's setup.
pytestmark = pytest.mark.timeout(600)

# pyproject.toml's [tool.setuptools.package-dir]: repository folder -> import package.
PACKAGE_DIRS = {"app": "onceflow", "state": "onceflow.state", "processors": "onceflow.examples"}
REQUIRED_IN_WHEEL = [
    "onceflow/__init__.py",
    "onceflow/cli.py",
    "onceflow/runtime/worker.py",
    "onceflow/http/__init__.py",
    "onceflow/testing/__init__.py",
    "onceflow/state/__init__.py",
    "onceflow/state/sqlite/_io_child.py",  # run as a script by path: it must ship as a file
    "onceflow/examples/windowed_count.py",
]
STEP_TIMEOUT_S = 280


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a command and fail with everything it printed if it does not exit 0."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} (in {cwd}) exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc


def _clean_env() -> dict[str, str]:
    """This process's environment without what would leak the dev setup into a child: no
    PYTHONPATH (it could point at the repository), no active venv, no ONCEFLOW_* settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "ONCEFLOW_"))
        and k not in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    }


def _source_files() -> list[str]:
    """The tree as git sees it: tracked and untracked-but-not-ignored files that exist."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    names = sorted({n for n in out.decode().split("\0") if n})
    return [n for n in names if (REPO / n).is_file()]  # deleted in the working tree: skipped


def _expected_wheel_path(source: str) -> str | None:
    """Where a module file of the repository belongs in the wheel, or None if it does not."""
    top, _, rest = source.partition("/")
    package = PACKAGE_DIRS.get(top)
    if package is None or not rest or "__pycache__" in rest:
        return None
    if not (rest.endswith((".py", ".pyi")) or rest.rsplit("/", 1)[-1] == "py.typed"):
        return None
    return f"{package.replace('.', '/')}/{rest}"


@dataclass(frozen=True)
class Built:
    wheel: Path
    sources: list[str]  # repository-relative paths the wheel was built from


@dataclass(frozen=True)
class Installed:
    python: Path
    bin: Path
    site_packages: Path
    env: dict[str, str]

    def run(self, cmd: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess:
        return _run(cmd, cwd=cwd, env={**self.env, **env})

    def python_c(self, code: str, cwd: Path) -> subprocess.CompletedProcess:
        return self.run([self.python, "-c", textwrap.dedent(code)], cwd)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The wheel, built from a clean copy of the tree in an isolated build environment.

    Not ``--no-build-isolation``: pyproject's build-system asks for setuptools>=77 (its
    ``license = "Apache-2.0"`` string needs it) and the dev venv may hold an older one. As in the
    Dockerfile, constraints.txt applies to the build environment too (it leaves setuptools free).
    """
    root = tmp_path_factory.mktemp("packaging-build")
    src, dist = root / "src", root / "dist"
    sources = _source_files()
    for name in sources:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    env = {**_clean_env(), "PIP_CONSTRAINT": str(src / "constraints.txt")}
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist, src],
        cwd=root,
        env=env,
    )
    wheels = list(dist.glob("onceflow-*.whl"))
    assert len(wheels) == 1, f"expected one onceflow wheel, got {wheels}"
    return Built(wheels[0], sources)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A new venv with the wheel and its pinned dependencies, as a user would install it."""
    root = tmp_path_factory.mktemp("packaging-venv")
    venv = root / "venv"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", venv], cwd=root, env=env)
    python = venv / "bin" / "python"
    _run(
        [python, "-m", "pip", "install", "-c", REPO / "constraints.txt", built.wheel],
        cwd=root,
        env=env,
    )
    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root, env=env
    ).stdout.strip()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return Installed(python, venv / "bin", Path(site), env)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """An empty working directory, far from the repository's app/ and state/ folders."""
    assert REPO not in (tmp_path, *tmp_path.parents)
    return tmp_path


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A user's project with its own ``app`` and ``state`` packages, the names of our folders."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text('NAME = "user-app"\n')
    (tmp_path / "app" / "pipeline.py").write_text(
        textwrap.dedent(
            """\
            import state
            from onceflow import App, Context

            app = App("user-app")
            words = app.topic("user-words", key_serde="str", value_serde="str")


            @app.handler(words)
            async def handle(ctx: Context, key: str, value: str) -> None:
                state.SEEN.append(value)
            """
        )
    )
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "__init__.py").write_text('NAME = "user-state"\nSEEN = []\n')
    return tmp_path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the wheel ------------------------------------------------------------------------------------


def test_wheel_has_one_top_level_package(built: Built):
    with zipfile.ZipFile(built.wheel) as wheel:
        names = wheel.namelist()
        dist_info = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        assert len(dist_info) == 1, dist_info
        (meta,) = dist_info
        top_level = wheel.read(f"{meta}/top_level.txt").decode().split()
        entry_points = wheel.read(f"{meta}/entry_points.txt").decode()
    outside_package = [n for n in names if not n.startswith(("onceflow/", f"{meta}/"))]
    assert outside_package == []
    assert {n.split("/", 1)[0] for n in names} == {"onceflow", meta}
    assert not any(n.startswith(("app/", "state/", "processors/")) for n in names)
    assert top_level == ["onceflow"]
    assert "onceflow = onceflow.cli:main" in entry_points


def test_wheel_holds_every_module_of_the_tree(built: Built):
    """Each module under app/, state/ and processors/ is in the wheel, at its mapped path: a
    subpackage missing from pyproject's ``packages`` list shows up here by name."""
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
    expected = {p for s in built.sources if (p := _expected_wheel_path(s)) is not None}
    missing = sorted(expected - names)
    assert missing == [], (
        f"not in the wheel: {missing} -- add their packages to [tool.setuptools] packages"
    )
    for name in REQUIRED_IN_WHEEL:
        assert name in names, name
    if (REPO / "app" / "py.typed").exists():
        assert "onceflow/py.typed" in names
    # Nothing extra either: no stray module the tree does not have (e.g. from a stale build/).
    extra = sorted(n for n in names if n.endswith(".py") and n not in expected)
    assert extra == []


# -- the installed distribution -------------------------------------------------------------------


def test_only_onceflow_is_importable(installed: Installed, outside: Path):
    installed.python_c(
        f"""
        import importlib.util
        from pathlib import Path

        site = Path({str(installed.site_packages)!r}).resolve()
        for name in ("onceflow", "onceflow.state", "onceflow.examples.windowed_count",
                     "onceflow.runtime", "onceflow.http", "onceflow.testing",
                     "onceflow.state.sqlite"):
            spec = importlib.util.find_spec(name)
            assert spec is not None, name
            # From the wheel in this venv, not from the repository (an editable install).
            assert site in Path(spec.origin).resolve().parents, (name, spec.origin)
        for name in ("app", "state", "processors"):
            assert importlib.util.find_spec(name) is None, name
        """,
        outside,
    )


def test_public_imports_work(installed: Installed, outside: Path):
    installed.python_c(
        """
        from pathlib import Path

        from onceflow import App, Context, Tumbling
        import onceflow.state
        import onceflow.examples.windowed_count as example
        from onceflow.state.sqlite import store_io

        assert isinstance(example.app, App), example.app
        assert Context.__name__ == "Context" and Tumbling(minutes=5)
        # The store I/O pool runs its children by file path (python -I -S): the file must exist.
        assert Path(store_io._SCRIPT).is_file(), store_io._SCRIPT
        """,
        outside,
    )


def test_console_script(installed: Installed, outside: Path):
    script = installed.bin / "onceflow"
    assert script.is_file()
    for cmd in ([script, "--help"], [installed.python, "-m", "onceflow", "--help"]):
        out = installed.run(cmd, outside).stdout
        assert "worker" in out, out


def test_user_packages_named_app_and_state_import(installed: Installed, user_project: Path):
    installed.python_c(
        """
        import app, app.pipeline, state
        import onceflow.state
        from onceflow.cli import load_app

        assert app.NAME == "user-app", app.__file__
        assert state.NAME == "user-state", state.__file__
        assert app.pipeline.app.app_id == "user-app"
        assert load_app("app.pipeline:app") is app.pipeline.app
        assert onceflow.state.__name__ == "onceflow.state" and onceflow.state is not state
        """,
        user_project,
    )


def test_worker_loads_a_user_app_named_app(
    installed: Installed, user_project: Path, closed_port: int
):
    """``onceflow worker app.pipeline:app`` from the project directory, as a user runs it: the
    CLI puts the working directory on sys.path, imports the App and starts the worker, which
    then fails on the (refused) broker connection, with exit code 1."""
    env = {
        **installed.env,
        "ONCEFLOW_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port}",
        "ONCEFLOW_REQUEST_TIMEOUT_MS": "1000",
        "ONCEFLOW_HTTP_ENABLED": "false",
        "ONCEFLOW_STATE_DIR": str(user_project / "state-data"),
    }
    proc = subprocess.run(
        [str(installed.bin / "onceflow"), "worker", "app.pipeline:app"],
        cwd=user_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "cannot import" not in output and "is not an onceflow App" not in output, output
    assert "Kafka error" in output and f"127.0.0.1:{closed_port}" in output, output
    assert "worker stopped" in output, output  # the Worker was built from the loaded App
    assert "Traceback" not in output, output
