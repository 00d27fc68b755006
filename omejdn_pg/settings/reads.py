"""Validation of the keys about serving reads: the read cache, standbys, failover, topology.

Beside :mod:`omejdn_pg.settings.validation`, with the same rule: every error
names the file, the key and what is allowed, and a connection map (a standby's,
the listener's) is checked by keyword without quoting a value.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

from omejdn_pg.errors import ConfigurationError, located
from omejdn_pg.settings.backend import (
    CACHE_DEFAULT_GROUPS,
    HANDLER_GROUPS,
    MAX_STALENESS,
    MIN_STALENESS,
    PREPARE_MODES,
    TOPOLOGY_KEYS,
    CacheSettings,
    FailoverSettings,
    ReplicaSettings,
    TopologySettings,
)
from omejdn_pg.settings.checks import (
    duration_setting,
    parse_numbers,
    refuse_unknown_keys,
)
from omejdn_pg.settings.connection import ConnectionSettings, parse_connection

_CACHE_NUMBERS: Final = ("max_entries", "max_staleness", "log_interval")
_CACHE_KEYS: Final = (*HANDLER_GROUPS, *_CACHE_NUMBERS, "listen_connection")


def parse_cache(value: object, where: str) -> CacheSettings:
    """``cache:`` — absent or ``true`` for the defaults, ``false`` for none, or a mapping."""
    if value is None or value is True:
        return CacheSettings()
    if value is False:
        return CacheSettings(groups=frozenset())
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{where} must be true, false or a mapping with keys {', '.join(_CACHE_KEYS)}"
        )
    refuse_unknown_keys(value, _CACHE_KEYS, where)
    groups = set(CACHE_DEFAULT_GROUPS)
    for group in HANDLER_GROUPS:
        switch = value.get(group)
        if switch is None:
            continue
        if not isinstance(switch, bool):
            raise ConfigurationError(f"{where}.{group} must be true or false, got {switch!r}")
        if switch:
            groups.add(group)
        else:
            groups.discard(group)
    entries = value.get("max_entries")
    if entries is not None and (isinstance(entries, bool) or not isinstance(entries, int)):
        raise ConfigurationError(f"{where}.max_entries must be a whole number, got {entries!r}")
    interval = value.get("log_interval")
    if isinstance(interval, str):
        interval = duration_setting(interval, f"{where}.log_interval").total_seconds()
    numbers = parse_numbers(
        {
            **{k: v for k, v in value.items() if k in _CACHE_NUMBERS and v is not None},
            **({"log_interval": interval} if interval is not None else {}),
        },
        where,
        {"max_entries": int, "max_staleness": float, "log_interval": float},
    )
    defaults = CacheSettings()
    max_entries = numbers.get("max_entries", defaults.max_entries)
    max_staleness = numbers.get("max_staleness", defaults.max_staleness)
    if not MIN_STALENESS <= max_staleness <= MAX_STALENESS:
        raise ConfigurationError(
            f"{where}.max_staleness must be between {MIN_STALENESS} and {MAX_STALENESS:g} "
            f"seconds, got {max_staleness:g}"
        )
    return CacheSettings(
        groups=frozenset(groups),
        max_entries=max_entries,
        max_staleness=max_staleness,
        log_interval=numbers.get("log_interval", defaults.log_interval),
        listen_connection=parse_connection(
            value.get("listen_connection"), f"{where}.listen_connection"
        ),
    )


def parse_replicas(section: Mapping[str, Any], where: str) -> ReplicaSettings:
    """``replicas:`` (a list of libpq connection maps) and ``max_replica_lag``."""
    base = parse_connection(section.get("connection"), f"{where}.connection")
    value = section.get("replicas")
    nodes: list[ConnectionSettings] = []
    if value is not None:
        if not isinstance(value, list):
            raise ConfigurationError(
                f"{where}.replicas must be a list of libpq connection maps, e.g. [{{host: db2}}]"
            )
        for index, entry in enumerate(value):
            here = f"{where}.replicas[{index}]"
            if not isinstance(entry, Mapping) or not entry:
                raise ConfigurationError(f"{here} must be a non-empty map of libpq keywords")
            nodes.append(parse_connection(entry, here))
    replicas = ReplicaSettings(
        nodes=tuple(nodes),
        max_lag=duration_setting(section.get("max_replica_lag"), f"{where}.max_replica_lag", "1s"),
    )
    with located(where):
        replicas.connections(base)
    return replicas


def parse_failover(value: object, where: str) -> FailoverSettings:
    if value is None:
        return FailoverSettings()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with key read_wait")
    refuse_unknown_keys(value, ("read_wait",), where)
    return FailoverSettings(
        read_wait=duration_setting(value.get("read_wait"), f"{where}.read_wait", "5s")
    )


def parse_prepare(value: object, where: str) -> bool | None:
    """``prepare:`` — true, false or auto (None: off when a pooler sits in between)."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return None
    if value in ("true", "false"):
        return value == "true"
    raise ConfigurationError(f"{where} is {value!r}; allowed: {', '.join(PREPARE_MODES)}")


def parse_topology(section: Mapping[str, Any], where: str) -> TopologySettings | None:
    """``topology: {patroni: [urls], refresh: 2s, timeout: 1s}``; None when absent."""
    value = section.get("topology")
    here = f"{where}.topology"
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{here} must be a mapping, e.g. {{patroni: [http://db1:8008], refresh: 2s}}"
        )
    refuse_unknown_keys(value, TOPOLOGY_KEYS, here)
    if section.get("replicas"):
        raise ConfigurationError(
            f"{where}: 'replicas' and 'topology' both list the standbys; keep one of them"
        )
    urls = value.get("patroni")
    if not isinstance(urls, list) or not urls:
        raise ConfigurationError(
            f"{here}.patroni must be a non-empty list of Patroni REST URLs, "
            "e.g. [http://db1:8008, http://db2:8008]"
        )
    endpoints = tuple(_endpoint(url, f"{here}.patroni[{index}]") for index, url in enumerate(urls))
    durations = {}
    for key, default in (("refresh", "2s"), ("timeout", "1s")):
        durations[key] = duration_setting(value.get(key), f"{here}.{key}", default)
        if durations[key] <= datetime.timedelta(0):
            raise ConfigurationError(f"{here}.{key} must be more than 0")
    return TopologySettings(endpoints, durations["refresh"], durations["timeout"])


def _endpoint(url: object, where: str) -> str:
    if not isinstance(url, str):
        raise ConfigurationError(f"{where} must be a URL such as http://db1:8008")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{where}: {url!r} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        # GET /cluster needs no credentials, and a URL is printed in messages.
        raise ConfigurationError(f"{where} must not carry credentials (GET /cluster needs none)")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{where}: {url!r} must be a base URL, without ?query or #")
    return url.strip().rstrip("/")
