"""``BatchedHistogram`` must expose exactly what ``Histogram.observe`` would have."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram

from onceflow.runtime.metrics import BatchedHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith(name) and not s.name.endswith("_created")
    }


def test_batched_observations_equal_direct_ones() -> None:
    direct_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("lat", "x", ["app"], buckets=BUCKETS, registry=direct_registry)
    batched = Histogram("lat", "x", ["app"], buckets=BUCKETS, registry=batched_registry)
    recorder = BatchedHistogram(batched.labels("a"))
    rng = random.Random(7)
    # Bucket bounds themselves (le is inclusive), values between, beyond the last bound, zero.
    values = [*BUCKETS, 0.0, 0.0005, 0.05, 5.0, 11.0, 1e9]
    values += [rng.uniform(0, 20) for _ in range(2_000)]
    for start in range(0, len(values), 97):  # several batches
        for value in values[start : start + 97]:
            direct.labels("a").observe(value)
            recorder.observe(value)
        recorder.publish()
    got, want = _samples(batched_registry, "lat"), _samples(direct_registry, "lat")
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == value or abs(got[key] - value) < 1e-6 * abs(value), key


def test_nothing_is_published_before_publish() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("lat", "x", buckets=BUCKETS, registry=registry)
    recorder = BatchedHistogram(histogram)
    recorder.observe(0.5)
    assert _samples(registry, "lat")[("lat_count", "")] == 0
    recorder.publish()
    recorder.publish()  # idempotent: nothing pending
    assert _samples(registry, "lat")[("lat_count", "")] == 1
    assert _samples(registry, "lat")[("lat_bucket", "1.0")] == 1
