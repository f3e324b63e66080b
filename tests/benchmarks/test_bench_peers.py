"""The peer comparison's and the scaling runs' pure logic: which scenarios run, their sizes, the
group assignment that says a peer is ready, verification, and the report's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from bench.__main__ import _selection
from bench.peers import PeerSettings, assigned_partitions
from bench.report import peer_markdown, relative_rows, scaling_markdown
from bench.scenarios import SCENARIOS, RunContext, verify


def test_default_run_has_no_suite_scenarios() -> None:
    names = _selection(None, quick=False)
    assert "echo-eos-2w" in names and "windowed-eos" in names
    assert not [n for n in names if SCENARIOS[n].suite or SCENARIOS[n].experiment]


def test_peers_flag_runs_the_peer_suite_with_raw_alos() -> None:
    names = _selection(None, quick=False, suites=frozenset({"peers"}))
    assert names == [
        "raw-alos",
        "windowed-eos-1s", "peer-quix", "peer-faust",
        "windowed-eos-1s-200k", "peer-quix-200k", "peer-faust-200k",
    ]  # fmt: skip


def test_only_a_peer_brings_its_onceflow_baseline() -> None:
    assert _selection(["peer-faust-200k"], quick=False) == [
        "raw-alos", "windowed-eos-1s-200k", "peer-faust-200k",
    ]  # fmt: skip


def test_scaling_flag_brings_the_one_worker_runs() -> None:
    names = _selection(None, quick=False, suites=frozenset({"scaling"}))
    assert names == [
        "raw-alos", "echo-eos", "echo-eos-2w", "windowed-eos", "echo-eos-3w", "echo-eos-12p",
        "windowed-eos-2w", "windowed-eos-3w", "windowed-eos-12p",
    ]  # fmt: skip


def test_peer_scenarios_match_the_issue_comparison() -> None:
    for name in ("windowed-eos-1s", "peer-faust", "peer-quix"):
        s = SCENARIOS[name]
        assert (s.partitions, s.commit_interval_ms, s.guarantee, s.workers) == (
            6, 1_000, "exactly_once", 1,
        )  # fmt: skip
        assert s.keys == 2_000 and SCENARIOS[f"{name}-200k"].keys == 200_000
    assert SCENARIOS["echo-eos-12p"].partitions == 12


def test_records_cover_every_key_twice_or_the_runs_records() -> None:
    ctx = RunContext(bootstrap="b", workdir=Path("/tmp"), records=100_000, quick=False)
    assert ctx.records_of(SCENARIOS["peer-quix"]) == 100_000
    assert ctx.records_of(SCENARIOS["peer-quix-200k"]) == 400_000
    assert ctx.records_of(SCENARIOS["sum-100k"]) == 200_000
    assert ctx.records_of(SCENARIOS["echo-eos"]) == 100_000


def _member(assignment: list[tuple[str, list[int]]]) -> tuple[Any, ...]:
    raw = ConsumerProtocolMemberAssignment(0, assignment, b"faust's user data").encode()
    return ("member-1", "client", "/127.0.0.1", b"", raw)


def test_assigned_partitions_of_the_input_topic_only() -> None:
    members = [
        _member([("in", [0, 2, 4]), ("app-counts-changelog", [0, 1])]),
        _member([("in", [1, 3, 5])]),
        ("joining", "client", "/127.0.0.1", b"", b""),  # no assignment yet
    ]
    assert assigned_partitions(members, "in") == [0, 1, 2, 3, 4, 5]
    assert assigned_partitions(members[:1], "in") == [0, 2, 4]


def test_peer_settings_as_environment() -> None:
    env = PeerSettings("127.0.0.1:1", "g", "i", "o", 6, 1000, "/s").env()
    assert env == {
        "PEER_BOOTSTRAP": "127.0.0.1:1", "PEER_GROUP": "g", "PEER_INPUT": "i",
        "PEER_OUTPUT": "o", "PEER_PARTITIONS": "6", "PEER_COMMIT_INTERVAL_MS": "1000",
        "PEER_STATE_DIR": "/s",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("seen", "end", "ok", "note"),
    [
        (100, 107, True, ""),
        (99, 106, False, "99 output records for 100 inputs"),
        (100, 100, False, "no transaction markers in the output: written outside transactions"),
    ],
)
def test_verify_exactly_once_needs_the_count_and_transactions(
    seen: int, end: int, ok: bool, note: str
) -> None:
    assert verify(SCENARIOS["peer-faust"], 100, seen, end) == (ok, note)


def test_verify_at_least_once_has_no_markers() -> None:
    assert verify(SCENARIOS["raw-alos"], 100, 100, 100) == (True, "")
    assert verify(SCENARIOS["raw-alos"], 100, 120, 120) == (True, "")


def _row(rate: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {"throughput": rate, "worker_cpu_us_per_record": cpu, "ratio": rate / 40_000,
            "broker_cpu_us_per_record": 5.0,
            "peak_rss_mb": 80.0, "verified": True, "records": 100_000, **extra}  # fmt: skip


RESULT: dict[str, Any] = {
    "summary": {
        "raw-alos": _row(40_000, 24),
        "echo-eos": _row(60_000, 12),
        "echo-eos-3w": _row(90_000, 12, workers=3),
        "windowed-eos-1s": _row(20_000, 40, keys=2_000),
        "peer-faust": _row(1_000, 800, keys=2_000, verified=False, verify_note="no markers"),
    },
    "baselines": {"echo-eos-3w": "echo-eos", "peer-faust": "windowed-eos-1s"},
    "peers": {"faust": {"package": "faust-streaming", "version": "0.15.3",
                        "commit_setting": "broker_commit_interval"}},
    "peer_settings": {
        name: {"framework": fw, "partitions": 6, "commit_interval_ms": 1000, "keys": 2_000,
               "store": store, "processing_guarantee": "exactly_once"}
        for name, fw, store in [("windowed-eos-1s", "onceflow", "SQLite"),
                                ("peer-faust", "faust", "memory://")]
    },
}  # fmt: skip


def test_relative_rows_are_ratios_to_the_baseline() -> None:
    rows = relative_rows(RESULT["summary"], RESULT["baselines"])
    assert [(r["scenario"], r["baseline"]) for r in rows] == [
        ("echo-eos-3w", "echo-eos"), ("peer-faust", "windowed-eos-1s"),
    ]  # fmt: skip
    assert rows[0]["ratio"] == pytest.approx(1.5) and rows[0]["cpu_ratio"] == pytest.approx(1.0)
    assert rows[1]["ratio"] == pytest.approx(0.05) and rows[1]["cpu_ratio"] == pytest.approx(0.05)


def test_peer_table_states_version_verification_and_settings() -> None:
    text = peer_markdown(RESULT)
    assert "| peer-faust | faust-streaming 0.15.3 | 2,000 | 100,000 | 1,000 | 0.03 | 0.05 |" in text
    assert "| 800 | 5 | 80 | **no**: no markers | memory:// |" in text
    assert "commit interval 1000 ms" in text and "broker_commit_interval" in text


def test_scaling_table_lists_each_baseline_then_its_variants() -> None:
    lines = scaling_markdown(RESULT).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| echo-eos", "| echo-eos-3w"]
    assert "| 3 | 6 | 90,000 | 2.25 | 1.50 |" in lines[3]
