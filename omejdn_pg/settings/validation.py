"""Validation of ``plugins.postgres_backend``: the YAML section into BackendSettings.

Strict and early: a typo in a handler name silently disabling user storage is
worse than refusing to start, so every error names the file, the key and what
is allowed. Connection values are checked by keyword (libpq's), and no message
quotes one: a connection map may hold the password. The keys about serving
reads (cache, standbys, failover, topology) are checked in
:mod:`omejdn_pg.settings.reads`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Final

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.settings.backend import (
    HANDLER_GROUPS,
    KEY_EVENT_FORMS,
    PLUGIN_NAME,
    BackendSettings,
    KeyLifecycleSettings,
    PasswordSettings,
    PoolSettings,
    TimeoutSettings,
)
from omejdn_pg.settings.checks import (
    duration_setting,
    parse_choice,
    parse_numbers,
    refuse_unknown_keys,
)
from omejdn_pg.settings.connection import parse_connection
from omejdn_pg.settings.reads import (
    parse_cache,
    parse_failover,
    parse_prepare,
    parse_replicas,
    parse_topology,
)
from omejdn_pg.yamlio import parse_yaml

_PLUGIN_KEYS: Final = (
    "connection",
    "handlers",
    "pool",
    "passwords",
    "key_events",
    "key_lifecycle",
    "statement_timeout",
    "lock_timeout",
    "key_encryption",
    "cache",
    "replicas",
    "max_replica_lag",
    "failover",
    "prepare",
    "topology",
)


def parse_backend_section(section: object, source: str) -> BackendSettings:
    """Validate the plugin section; ``None`` (absent) means every default."""
    where = f"{source}: plugins.{PLUGIN_NAME}"
    if section is None:
        return BackendSettings(source=source)
    if not isinstance(section, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with keys {', '.join(_PLUGIN_KEYS)}")
    refuse_unknown_keys(section, _PLUGIN_KEYS, where)
    return BackendSettings(
        connection=parse_connection(section.get("connection"), f"{where}.connection"),
        handlers=_parse_handlers(section.get("handlers"), f"{where}.handlers"),
        pool=_parse_pool(section.get("pool"), f"{where}.pool"),
        passwords=_parse_passwords(section.get("passwords"), f"{where}.passwords"),
        key_events=parse_choice(
            section.get("key_events", "jwks"), f"{where}.key_events", KEY_EVENT_FORMS
        ),
        key_lifecycle=_parse_key_lifecycle(section.get("key_lifecycle"), f"{where}.key_lifecycle"),
        key_encryption=_parse_key_encryption(
            section.get("key_encryption"), f"{where}.key_encryption"
        ),
        timeouts=TimeoutSettings(
            statement=duration_setting(
                section.get("statement_timeout"), f"{where}.statement_timeout", "5s"
            ),
            lock=duration_setting(section.get("lock_timeout"), f"{where}.lock_timeout", "2s"),
        ),
        cache=parse_cache(section.get("cache"), f"{where}.cache"),
        replicas=parse_replicas(section, where),
        failover=parse_failover(section.get("failover"), f"{where}.failover"),
        prepare=parse_prepare(section.get("prepare", "auto"), f"{where}.prepare"),
        topology=parse_topology(section, where),
        source=source,
        connection_given=section.get("connection") is not None,
    )


CHOOSING_ENV: Final = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGSERVICE")
"""The ``PG*`` variables that choose a server or a database; PGUSER, PGPASSWORD and
the rest only say how to log in to whatever libpq's defaults reach."""


def require_chosen_connection(
    settings: BackendSettings, environ: Mapping[str, str] | None = None
) -> None:
    """ConfigurationError when a plugin section names no database and nothing else does.

    Without ``connection`` libpq connects to its defaults (the local socket,
    the database named like the OS user): another database on the machine,
    where ``migrate`` would then be advised. ``connection: {}`` or one of
    :data:`CHOOSING_ENV` says that is meant.
    """
    if settings.connection_given:
        return
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in CHOOSING_ENV):
        return
    raise ConfigurationError(
        f"{settings.source}: plugins.{PLUGIN_NAME} has no 'connection', and no "
        f"{', '.join(CHOOSING_ENV)} chooses a server: add connection: {{host: ..., dbname: ...}} "
        "(connection: {} for libpq's defaults on purpose), or give --url / $OMEJDN_PG_URL"
    )


_LIFECYCLE_KEYS: Final = ("publish_for", "retire_for", "retire_margin")


def _parse_key_lifecycle(value: object, where: str) -> KeyLifecycleSettings:
    if value is None:
        return KeyLifecycleSettings()
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{where} must be a mapping with keys {', '.join(_LIFECYCLE_KEYS)}"
        )
    refuse_unknown_keys(value, _LIFECYCLE_KEYS, where)
    defaults = KeyLifecycleSettings()
    durations = {}
    for name in _LIFECYCLE_KEYS:
        if value.get(name) is not None:
            durations[name] = duration_setting(value[name], f"{where}.{name}")
    return dataclasses.replace(defaults, **durations)


KEK_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What a key-encryption key's id may be: it is a field of every sealed value,
between ``$`` separators (``prod$2026`` would seal keys that never open again)."""
KEY_ENCRYPTION_ENV: Final = "OMEJDN_PG_KEY_ENCRYPTION"


def key_encryption_from_env(
    environ: Mapping[str, str] | None = None,
) -> tuple[Mapping[str, str], ...] | None:
    """``$OMEJDN_PG_KEY_ENCRYPTION``: a ``key_encryption`` list in YAML flow form, e.g.
    ``[{id: kek-2, env: KEK_2}, {id: kek-1, file: /etc/omejdn/kek-1}]``; None when unset.

    It names where the keys are, never a key itself, so the variable is no
    secret: for a CLI given ``--url`` and no plugin file.
    """
    text = (os.environ if environ is None else environ).get(KEY_ENCRYPTION_ENV, "").strip()
    if not text:
        return None
    where = f"${KEY_ENCRYPTION_ENV}"
    try:
        value = parse_yaml(text, where, error=ConfigurationError)
    except ConfigurationError:
        raise ConfigurationError(
            f"{where} is not a YAML list, e.g. [{{id: kek-1, env: OMEJDN_KEK_1}}]"
        ) from None
    return _parse_key_encryption(value, where)


def _parse_key_encryption(value: object, where: str) -> tuple[Mapping[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigurationError(
            f"{where} must be a list of {{id, env: VARIABLE}} or {{id, file: PATH}}"
        )
    entries = []
    for index, entry in enumerate(value):
        here = f"{where}[{index}]"
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("id"), str)
            or not entry["id"]
        ):
            raise ConfigurationError(f"{here} must be a mapping with a non-empty 'id'")
        if not KEK_ID.fullmatch(entry["id"]):
            raise ConfigurationError(
                f"{here}: id {entry['id']!r} is not allowed: use 1 to 64 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit (the id is written into "
                "every sealed value)"
            )
        sources = [name for name in ("env", "file") if name in entry]
        unknown = sorted(set(map(str, entry)) - {"id", "env", "file"})
        if unknown or len(sources) != 1 or not isinstance(entry[sources[0]], str):
            raise ConfigurationError(
                f"{here} ({entry['id']!r}) needs exactly one of 'env' (a variable name) or "
                "'file' (a path), and nothing else"
            )
        entries.append({"id": entry["id"], sources[0]: entry[sources[0]]})
    return tuple(entries)


def _parse_handlers(value: object, where: str) -> frozenset[str]:
    if value is None:
        return frozenset(HANDLER_GROUPS)
    allowed = f"allowed: {', '.join(HANDLER_GROUPS)}"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{where} must be a non-empty list of handler names; {allowed}")
    names = list(value)
    unknown = [n for n in names if n not in HANDLER_GROUPS]
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown handler(s) {', '.join(map(repr, unknown))}; {allowed}"
        )
    return frozenset(names)


def _parse_pool(value: object, where: str) -> PoolSettings:
    defaults = PoolSettings()
    fields = {"size": int, "max_overflow": int, "timeout": float, "recycle": int}
    parsed = parse_numbers(value, where, fields)
    return PoolSettings(**{name: parsed.get(name, getattr(defaults, name)) for name in fields})


def _parse_passwords(value: object, where: str) -> PasswordSettings:
    if value is None:
        return PasswordSettings()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with keys scheme, bcrypt_rounds")
    rest = {k: v for k, v in value.items() if k != "scheme"}
    numbers = parse_numbers(rest, where, {"bcrypt_rounds": int})
    scheme = value.get("scheme", "bcrypt")
    if scheme not in ("bcrypt", "argon2"):
        raise ConfigurationError(
            f"{where}.scheme: {scheme!r} is not allowed; allowed: bcrypt, argon2"
        )
    rounds = int(numbers.get("bcrypt_rounds", PasswordSettings.bcrypt_rounds))
    if not 4 <= rounds <= 31:
        raise ConfigurationError(f"{where}.bcrypt_rounds must be between 4 and 31, got {rounds}")
    return PasswordSettings(scheme=str(scheme), bcrypt_rounds=rounds)
