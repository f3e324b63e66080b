"""onceflow benchmarks (``python -m bench``): throughput, latency, restore rate and memory of the
framework against a bare aiokafka loop on the same broker, in the same run. See
docs/benchmarks.md for what each scenario measures and how to read the figures."""
