"""Test-only stand-in for ``onceflow worker MODULE`` with the HTTP API: ``python -m
tests.apps.http_launcher MODULE[:ATTR]``.

It does what the CLI's ``_run_worker`` does once it calls ``app.http.serve(worker)`` instead of
``worker.run()``: SIGTERM/SIGINT stop the worker, and the server stops with it. Remove it (and
use ``WorkerProcess`` directly in tests/integration/test_http.py) when the CLI serves HTTP.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from app.cli import load_app
from app.errors import OnceflowError
from app.http import serve
from app.logs import configure_logging
from app.settings import load_settings
from app.worker import Worker


async def _main(spec: str) -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    worker = Worker(load_app(spec), settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await serve(worker)


if __name__ == "__main__":
    sys.path.insert(0, ".")
    try:
        asyncio.run(_main(sys.argv[1]))
    except OnceflowError as exc:
        print(f"onceflow: {exc}", file=sys.stderr)
        sys.exit(1)
