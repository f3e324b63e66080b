"""Settings fail at start with the variable's name and the accepted values."""

from __future__ import annotations

import pytest

from onceflow.errors import ConfigurationError
from onceflow.settings import load_settings


def test_defaults_work_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ONCEFLOW_PROCESSING_GUARANTEE",
        "ONCEFLOW_COMMIT_INTERVAL_MS",
        "ONCEFLOW_STATE_CLEANUP_DELAY_MS",
    ):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.eos and s.effective_commit_interval_ms == 100
    assert s.http_port == 8080 and s.replication_factor == -1
    assert s.state_cleanup_delay_ms == 600_000  # Kafka Streams' state.cleanup.delay.ms


def test_exactly_once_v2_is_an_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEFLOW_PROCESSING_GUARANTEE", "exactly_once_v2")
    assert load_settings().processing_guarantee == "exactly_once"


def test_at_least_once_commits_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEFLOW_PROCESSING_GUARANTEE", "at_least_once")
    s = load_settings()
    assert not s.eos and s.effective_commit_interval_ms == 5000


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ONCEFLOW_PROCESSING_GUARANTEE", "exactly_twice", "'exactly_once' or 'at_least_once'"),
        ("ONCEFLOW_HTTP_PORT", "eighty", "valid integer"),
        ("ONCEFLOW_HTTP_PORT", "70000", "less than or equal to 65535"),
        ("ONCEFLOW_COMMIT_INTERVAL_MS", "0", "greater than or equal to 1"),
        ("ONCEFLOW_LOG_FORMAT", "xml", "'text' or 'json'"),
        ("ONCEFLOW_SECURITY_PROTOCOL", "TLS", "'PLAINTEXT'"),
        ("ONCEFLOW_STATE_CACHE_MIB", "-1", "greater than or equal to 0"),
        ("ONCEFLOW_STATE_CACHE_MIB", "lots", "valid number"),
        ("ONCEFLOW_STATE_PAGE_CACHE_MIB", "0", "greater than or equal to 1"),
        ("ONCEFLOW_STATE_IO_PROCESSES", "-1", "greater than or equal to 0"),
        ("ONCEFLOW_STATE_IO_PROCESSES", "many", "valid integer"),
        ("ONCEFLOW_STATE_CLEANUP_DELAY_MS", "-1", "greater than or equal to 0"),
        ("ONCEFLOW_STATE_CLEANUP_DELAY_MS", "10min", "valid integer"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert name in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize("value", ["2", "8", "-1"])
def test_the_per_store_read_cache_setting_is_refused_naming_its_replacement(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # It was per store partition; the budget is per worker now: accepting it would not do what
    # it says.
    monkeypatch.setenv("ONCEFLOW_STATE_READ_CACHE_MIB", value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "ONCEFLOW_STATE_READ_CACHE_MIB" in message and "ONCEFLOW_STATE_CACHE_MIB" in message


def test_the_state_cache_is_one_budget_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().state_cache_mib == 32
    monkeypatch.setenv("ONCEFLOW_STATE_CACHE_MIB", "96")
    assert load_settings().state_cache_mib == 96


def test_sasl_needs_a_username(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEFLOW_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ConfigurationError, match="ONCEFLOW_SASL_USERNAME"):
        load_settings()


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEFLOW_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ONCEFLOW_SASL_USERNAME", "svc")
    monkeypatch.setenv("ONCEFLOW_SASL_PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.kafka_security()["sasl_plain_password"] == "hunter2"
