"""Interactive-query latency: a key answered locally vs. a key proxied to its owner.

Against two (or more) running workers of one app, with a table that has keys::

    python bench/query_latency.py http://127.0.0.1:8081 --table sum --keys 'k{}' -n 2000

The first URL is the instance queried. Candidate keys are ``--keys`` formatted with 0, 1, 2…;
the script picks the first existing key whose partition that instance owns (local) and the
first one it does not own (proxied), then times ``-n`` sequential GETs of each over one
keep-alive connection and prints p50 / p90 / p99 / max in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from onceflow.partitioner import partition_for_key
from onceflow.serdes import parse_text_key, resolve_serde


def pick_keys(client: httpx.Client, table: str, pattern: str) -> tuple[str, str]:
    info = next(t for t in client.get("/tables").json()["tables"] if t["name"] == table)
    serde = resolve_serde(info["key_serde"])
    owned, count = set(info["partitions"]), info["num_partitions"]
    local = proxied = None
    for i in range(100_000):
        text = pattern.format(i)
        is_local = partition_for_key(serde.serialize(parse_text_key(serde, text)), count) in owned
        if (local if is_local else proxied) is not None:
            continue
        if client.get(f"/tables/{table}/keys/{text}").status_code != 200:
            continue
        if is_local:
            local = text
        else:
            proxied = text
        if local is not None and proxied is not None:
            return local, proxied
    raise SystemExit(f"no existing local and proxied keys among {pattern!r} (owned: {owned})")


def measure(client: httpx.Client, path: str, n: int) -> list[float]:
    for _ in range(50):  # warm up: connections, caches
        client.get(path)
    timings = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{path}: {response.status_code} {response.text}")
    return timings


def report(label: str, timings: list[float]) -> str:
    cuts = statistics.quantiles(timings, n=100, method="inclusive")
    return (
        f"{label:8} n={len(timings)}  p50={cuts[49]:.2f} ms  p90={cuts[89]:.2f} ms  "
        f"p99={cuts[98]:.2f} ms  max={max(timings):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the worker to query")
    parser.add_argument("--table", required=True)
    parser.add_argument("--keys", default="k{}", help="candidate key pattern (default k{})")
    parser.add_argument("-n", type=int, default=2000, help="requests per key (default 2000)")
    parser.add_argument("--token", help="bearer token (ONCEFLOW_HTTP_TOKEN)")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=10) as client:
        local, proxied = pick_keys(client, args.table, args.keys)
        for label, key in (("local", local), ("proxied", proxied)):
            path = f"/tables/{args.table}/keys/{key}"
            owner = client.get(path).headers.get("x-onceflow-owner")
            print(report(label, measure(client, path, args.n)), f" key={key!r} owner={owner}")


if __name__ == "__main__":
    main()
