#!/usr/bin/env python3
"""Run a throwaway PostgreSQL server on loopback, for onceflow's SQL sink tests and local dev.

The server binaries come from the ``pgserver`` wheel on PyPI (in ``onceflow[dev]``), which ships
a complete PostgreSQL build: nothing else is needed on a fresh machine. A server lives in its
data dir::

    DATA_DIR/pgdata/          the cluster (initdb once, trust auth for loopback, user postgres)
    DATA_DIR/server.log       its log
    DATA_DIR/run/             its unix socket
    DATA_DIR/port             the port it was started on (restart reuses it)

PostgreSQL refuses to run as root (CI runs as root): then the server runs as ``nobody`` through
``setpriv``, with the data dir given to that user; when the binaries sit under a path ``nobody``
cannot traverse (a venv under /root), they are copied into ``DATA_DIR/pg/`` first.

Command line (prints ``dsn=postgresql://postgres@127.0.0.1:PORT/postgres`` after ``start``)::

    postgres_local.py start --data-dir D [--port 5432]
    postgres_local.py stop --data-dir D [--mode fast|immediate]

From Python (tests load this file with importlib): ``start(data_dir, port) -> dsn``,
``stop(data_dir)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

NOBODY = 65534


class PostgresLocalError(Exception):
    """What went wrong and what to do about it."""


def _install() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise PostgresLocalError(
            "the pgserver package is not installed: pip install -c constraints.txt -e '.[dev]' "
            "(or make venv), then run this script with that environment's python"
        )
    return Path(spec.origin).parent / "pginstall"


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _binaries(data_dir: Path) -> Path:
    """The bin folder the server user can run: the wheel's own, or a copy in data_dir that
    keeps the wheel's layout (the binaries find their libraries at ``$ORIGIN/../../../
    pgserver.libs``)."""
    install = _install()
    if os.geteuid() != 0 or _traversable_by_others(install):
        return install / "bin"
    copy = data_dir / "pg"
    if not (copy / "pgserver" / "pginstall" / "bin" / "postgres").exists():
        skip = shutil.ignore_patterns("include")
        shutil.copytree(install, copy / "pgserver" / "pginstall", ignore=skip, dirs_exist_ok=True)
        libs = install.parent.parent / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy / "pgserver.libs", dirs_exist_ok=True)
    return copy / "pgserver" / "pginstall" / "bin"


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *cmd]


def _give(path: Path) -> None:
    if os.geteuid() == 0:
        for p in [path, *path.rglob("*")]:
            os.chown(p, NOBODY, NOBODY, follow_symlinks=False)


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PostgresLocalError(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")


def start(data_dir: Path, port: int | None = None) -> str:
    """Start (initdb on first use) the server of ``data_dir`` on ``port``; return its DSN."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        data_dir.chmod(0o755)  # the server user must reach pgdata
        if not _traversable_by_others(data_dir):
            raise PostgresLocalError(
                f"{data_dir}: a folder above it is closed to other users, and the server runs "
                "as nobody under root: pick a data dir under /tmp, or chmod o+x that folder"
            )
    bins = _binaries(data_dir)
    pgdata = data_dir / "pgdata"
    port_file = data_dir / "port"
    if port is None:
        port = int(port_file.read_text()) if port_file.exists() else 5432
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(exist_ok=True)
        _give(pgdata)
        _run(
            [str(bins / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            "initdb",
        )  # fmt: skip
    port_file.write_text(str(port))
    log = data_dir / "server.log"
    log.touch()
    sockets = data_dir / "run"  # the unix socket and its lock file
    sockets.mkdir(exist_ok=True)
    for path in (log, sockets):
        _give(path)
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run(
        [str(bins / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-o", options, "-w",
         "-t", "60", "start"],
        f"pg_ctl start (see {log})",
    )  # fmt: skip
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def stop(data_dir: Path, mode: str = "fast") -> None:
    """Stop the server of ``data_dir`` if it runs."""
    data_dir = data_dir.resolve()
    pgdata = data_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return
    bins = _binaries(data_dir)
    _run(
        [str(bins / "pg_ctl"), "-D", str(pgdata), "-m", mode, "-w", "-t", "60", "stop"],
        "pg_ctl stop",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start")
    p_start.add_argument("--data-dir", type=Path, required=True)
    p_start.add_argument("--port", type=int)
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--data-dir", type=Path, required=True)
    p_stop.add_argument("--mode", choices=("fast", "immediate"), default="fast")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(f"dsn={start(args.data_dir, args.port)}")
        else:
            stop(args.data_dir, args.mode)
    except PostgresLocalError as exc:
        print(f"postgres_local: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
