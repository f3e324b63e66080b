"""The HTTP API: health, Prometheus metrics and interactive queries, on the worker's event loop.

It reads a running worker only through the protocols in ``_types`` (``WorkerView``), never
``onceflow.runtime``'s classes, so its routes can be driven by any object with those attributes.
Modules: ``_server`` (the FastAPI app, bearer auth, ``serve``), ``_health`` (live, ready,
metrics), ``_queries`` (key lookups, proxied to the owner), ``_types`` (protocols and models).
"""

from onceflow.http._server import create_api, serve

__all__ = ["create_api", "serve"]
