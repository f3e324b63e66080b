"""The stateful EOS oracle: inputs, the exact expected running aggregates, and the check."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from kafka_helpers import read_to_end
from workers import assert_no_hanging_transactions

KEYS = 20_000


def make_inputs(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [
        (
            f"key-{rng.randrange(KEYS)}".encode(),
            rng.randrange(-1000, 1000).to_bytes(8, "big", signed=True),
        )
        for _ in range(n)
    ]


def expected_by_key(inputs: list) -> dict[bytes, list[bytes]]:
    state: dict[bytes, tuple[int, int, int, int]] = {}
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for r in inputs:  # one partition's order is each of its keys' order
        value = int.from_bytes(r.value, "big", signed=True)
        s, c, lo, hi = state.get(r.key, (0, 0, value, value))
        state[r.key] = (s + value, c + 1, min(lo, value), max(hi, value))
        out[r.key].append(",".join(map(str, state[r.key])).encode())
    return out


def outputs_by_key(records: list) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for r in records:
        out[r.key].append(r.value)
    return out


async def check_aggregates(bootstrap: str, source: str, sink: str, output: list) -> None:
    inputs = await read_to_end(bootstrap, source)
    expected = expected_by_key(inputs)
    got = outputs_by_key(output)
    assert len(output) == len(inputs), f"{len(output)} outputs for {len(inputs)} inputs"
    wrong = [k for k in expected if got.get(k) != expected[k]]
    if wrong:
        key = wrong[0]
        pytest.fail(f"{len(wrong)} keys diverge, e.g. {key!r}: {got.get(key)} != {expected[key]}")
    await assert_no_hanging_transactions(bootstrap, sink)
