"""Apps the benchmarks run with ``onceflow worker bench.apps.NAME`` (topics from env)."""
