"""What the workers' ``/metrics`` say about their commits while a latency load runs.

``commit_totals(procs)`` scrapes each onceflow worker (its HTTP port is read from its log: the
bench starts workers on port 0) and sums the commit histogram and the committed transactions;
``commit_figures(before, after, seconds)`` turns two scrapes into transactions per second, the
mean commit time and the share of commits within each histogram bucket. The commit time is
``onceflow_commit_latency_seconds``: steps 0-4 of a commit (docs/architecture.md, *The
commit*), a slice of the end-to-end latency the harness measures.
"""

from __future__ import annotations

import re
from collections import Counter

import httpx

from bench.procs import Proc

__all__ = ["commit_figures", "commit_totals"]

_PORT = re.compile(rb"HTTP API on http://[^ ]*?:(\d+)")
_SAMPLE = re.compile(r'^(onceflow_commit_latency_seconds_(?:bucket|sum|count)|'
                     r'onceflow_transactions_total)\{([^}]*)\} ([0-9.e+-]+)$')  # fmt: skip
_LE = re.compile(r'le="([^"]+)"')


def _port(proc: Proc) -> int | None:
    try:
        match = _PORT.search(proc.log_path.read_bytes())
    except OSError:
        return None
    return int(match.group(1)) if match else None


async def commit_totals(procs: list[Proc]) -> Counter[str]:
    """The workers' commit samples, summed: ``sum``, ``count``, ``committed``, ``le=<bucket>``
    (cumulative counts). Workers that do not answer add nothing."""
    totals: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=5) as client:
        for proc in procs:
            port = _port(proc)
            if port is None:
                continue
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                match = _SAMPLE.match(line)
                if match is None:
                    continue
                name, labels, value = match.groups()
                if name.endswith("_bucket"):
                    le = _LE.search(labels)
                    totals[f"le={le.group(1) if le else '?'}"] += float(value)
                elif name.endswith("_sum"):
                    totals["sum"] += float(value)
                elif name.endswith("_count"):
                    totals["count"] += float(value)
                elif 'result="committed"' in labels:
                    totals["committed"] += float(value)
    return totals


def commit_figures(
    before: Counter[str], after: Counter[str], seconds: float
) -> dict[str, float | dict[str, float]]:
    """Transactions per second, mean commit ms, and the share of commits at or under each
    bucket bound (ms), between two scrapes ``seconds`` apart."""
    count = after["count"] - before["count"]
    buckets = {
        key[3:]: (after[key] - before[key]) / count
        for key in after
        if key.startswith("le=") and count > 0
    }
    return {
        "transactions_per_s": (after["committed"] - before["committed"]) / max(seconds, 1e-9),
        "commit_ms_mean": 1000 * (after["sum"] - before["sum"]) / count if count else 0.0,
        "commits_within_s": buckets,
    }
