"""Existing changelog topics whose retention a table has outgrown.

A windowed changelog is created with ``retention.ms`` = the table's retention + 1 day
(``admin.internal_topics``). Declared later with a longer retention, the table keeps windows its
changelog already deletes: a store restored from it (on another host, or rebuilt after a layout
change) would lack them. So at start ``widen_retention`` raises ``retention.ms`` of each such
topic to what the table needs (docs/architecture.md, *State*, *Layout changes*). A longer
``retention.ms`` is left alone: an operator's choice, and restores skip expired windows anyway.

aiokafka has no IncrementalAlterConfigs; AlterConfigs *replaces* a topic's overrides, so the
overrides the topic has (read with DescribeConfigs) are sent along unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from onceflow.errors import ConfigurationError

__all__ = ["widen_retention"]

log = logging.getLogger("onceflow.admin")
RETENTION = "retention.ms"
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs v1+ config_source of a topic's own override


async def widen_retention(client: AIOKafkaAdminClient, wanted: Mapping[str, int]) -> None:
    """Raise ``retention.ms`` of each topic of ``wanted`` (name -> least retention.ms) that
    keeps records for less; ``ConfigurationError`` naming the topic and the setting if the
    broker refuses. A topic the broker does not describe to us is left alone, with a warning."""
    if not wanted:
        return
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in sorted(wanted)]
    for response in await client.describe_configs(resources):
        for code, message, _type, name, entries in response.resources:
            if code != 0:
                log.warning(
                    "cannot read the configs of changelog topic %s (%s %s): not checking that "
                    "its %s is at least %d",
                    name,
                    for_code(code).__name__,
                    message or "",
                    RETENTION,
                    wanted[name],
                )
                continue
            await _widen(client, name, wanted[name], response.API_VERSION, entries)


async def _widen(
    client: AIOKafkaAdminClient, name: str, least: int, version: int, entries: Any
) -> None:
    current = next((int(e[1]) for e in entries if e[0] == RETENTION and e[1] is not None), -1)
    if current < 0 or current >= least:
        return  # -1: kept forever
    overrides = _overrides(name, version, entries)
    overrides[RETENTION] = str(least)
    log.warning(
        "changelog topic %s keeps records for %s=%d ms, less than its table's retention + 1 day: "
        "raising it to %d ms",
        name,
        RETENTION,
        current,
        least,
    )
    resource = ConfigResource(ConfigResourceType.TOPIC, name, configs=overrides)
    for response in await client.alter_configs([resource]):
        for code, message, *_ in response.resources:
            if code != 0:
                raise ConfigurationError(
                    f"changelog topic {name!r} has {RETENTION}={current}, shorter than its "
                    f"table's retention + 1 day ({least} ms), and raising it failed "
                    f"({for_code(code).__name__} {message or ''}). Grant AlterConfigs on the "
                    f"topic, or set it yourself (kafka-configs --alter --entity-type topics "
                    f"--entity-name {name} --add-config {RETENTION}={least}), and restart"
                )


def _overrides(name: str, version: int, entries: Any) -> dict[str, str]:
    """The topic's own config overrides, which an AlterConfigs must repeat to keep."""
    overrides: dict[str, str] = {}
    for entry in entries:
        # v0: (name, value, read_only, is_default, is_sensitive); v1+: config_source at [3].
        own = not entry[3] if version == 0 else entry[3] == _DYNAMIC_TOPIC_CONFIG
        if not own:
            continue
        if entry[1] is None:  # a sensitive value the broker does not show: it would be lost
            raise ConfigurationError(
                f"changelog topic {name!r} needs a longer {RETENTION}, but its override "
                f"{entry[0]!r} is not shown to clients and would be lost by an update: set "
                f"{RETENTION} yourself (kafka-configs --alter ... --add-config) and restart"
            )
        overrides[str(entry[0])] = str(entry[1])
    return overrides
