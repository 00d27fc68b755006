"""Omejdn's static plugin configuration, parsed into typed settings.

The files are the ones Omejdn itself reads (``OMEJDN_PLUGINS``, ``:``-separated,
merged in order, later keys win), so one file configures the Ruby server and
this package alike. Validation is strict and early: a typo in a handler name
silently disabling user storage is worse than refusing to start, so every
error names the file, the key and what is allowed.

The ``connection`` mapping is handed to libpq unchanged (through psycopg), so
every libpq keyword, ``PG*`` environment variable and service file works as
libpq documents it. Its password is masked wherever settings are shown.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.conninfo import make_conninfo

from omejdn_pg import connection_url
from omejdn_pg.errors import ConfigurationError

PLUGIN_NAME: Final = "postgres_backend"
BACKEND_NAME: Final = "postgres"
HANDLER_GROUPS: Final = ("keys", "config", "client", "user")
DEFAULT_PLUGINS: Final = ("config", "keys", "client", "user")
PLUGINS_ENV: Final = "OMEJDN_PLUGINS"
MASK: Final = "********"
DEFAULT_CONNECT_TIMEOUT: Final = 10
"""Seconds a connection may take to be established unless the settings say otherwise:
libpq's own default is to wait for ever on a server that accepts and never answers."""

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
KEY_EVENT_FORMS: Final = ("jwks", "key_material")
"""``jwks``: Omejdn's current core (JWK Sets); ``key_material``: the core before it."""
_TOP_LEVEL_KEYS: Final = (
    "plugins",
    "deactivate_defaults",
    "user_backend_default",
    "client_backend_default",
)


@dataclass(frozen=True)
class ConnectionSettings:
    """libpq connection keywords, passed to psycopg unchanged.

    An empty mapping is valid: libpq then takes everything from ``PG*``
    environment variables, a service file or its compiled-in defaults.
    """

    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # libpq expands a dbname that is itself a URI or key=value string; do it
        # here, so that a password inside it is known, masked and scrubbed too.
        dbname = self.params.get("dbname", "")
        if "=" in dbname or dbname.startswith(("postgres://", "postgresql://")):
            try:
                expanded = psycopg.conninfo.conninfo_to_dict(dbname)
            except psycopg.ProgrammingError as exc:
                raise ConfigurationError("invalid connection string given as dbname") from exc
            params = {k: v for k, v in self.params.items() if k != "dbname"}
            params.update({k: str(v) for k, v in expanded.items() if v is not None})
            object.__setattr__(self, "params", params)

    def __repr__(self) -> str:
        shown = {k: (MASK if k == "password" else v) for k, v in self.params.items()}
        return f"ConnectionSettings({shown!r})"

    __str__ = __repr__

    @property
    def password(self) -> str | None:
        return self.params.get("password") or os.environ.get("PGPASSWORD") or None

    def describe(self) -> str:
        """``user@host:port/dbname`` as libpq would resolve it, for messages."""
        host = self.params.get("host") or self.params.get("hostaddr") or os.environ.get("PGHOST")
        port = self.params.get("port") or os.environ.get("PGPORT") or "5432"
        dbname = self.params.get("dbname") or os.environ.get("PGDATABASE")
        user = self.params.get("user") or os.environ.get("PGUSER")
        service = self.params.get("service") or os.environ.get("PGSERVICE")
        where = f"{host or 'localhost'}:{port}/{dbname or user or '(default)'}"
        who = f"{user}@" if user else ""
        return f"service {service} ({who}{where})" if service else who + where

    def scrub(self, text: str) -> str:
        """``text`` with the connection password, if it occurs, masked."""
        secret = self.password
        return text.replace(secret, MASK) if secret else text

    def connect_params(self) -> dict[str, str]:
        """The keywords a connection is made with: ``params`` plus the default
        ``connect_timeout`` when neither they, ``PGCONNECT_TIMEOUT`` nor a service
        (whose file may set one, and would be overridden) give one."""
        params = dict(self.params)
        chosen = ("connect_timeout", "service")
        if not any(params.get(key) for key in chosen) and not any(
            os.environ.get(name) for name in ("PGCONNECT_TIMEOUT", "PGSERVICE")
        ):
            params["connect_timeout"] = str(DEFAULT_CONNECT_TIMEOUT)
        return params

    def conninfo(self) -> str:
        return make_conninfo(**self.connect_params())

    @classmethod
    def from_url(cls, url: str) -> ConnectionSettings:
        """Settings from a connection URL as users write it, or a libpq ``key=value`` string;
        see :func:`omejdn_pg.connection_url.parse` for the forms and the errors."""
        return cls(connection_url.parse(url))

    def with_params(self, **params: str) -> ConnectionSettings:
        return ConnectionSettings({**self.params, **params})


@dataclass(frozen=True)
class PoolSettings:
    """Connection pool sizing; the defaults suit one Omejdn worker process."""

    size: int = 5
    max_overflow: int = 10
    timeout: float = 10.0
    """Seconds to wait for a free connection before failing."""
    recycle: int = 1800
    """Seconds after which a pooled connection is replaced (outlives load balancers' idle cuts)."""


@dataclass(frozen=True)
class PasswordSettings:
    """Policy for new password hashes; existing weaker hashes are upgraded on login."""

    scheme: str = "bcrypt"
    """``bcrypt`` (Omejdn's own) or ``argon2``."""
    bcrypt_rounds: int = 12


@dataclass(frozen=True)
class KeyLifecycleSettings:
    """How long a rotated key waits before it signs, and a retired key stays published."""

    publish_for: datetime.timedelta = datetime.timedelta(days=2)
    """A ``next`` key is published this long before it signs: longer than the
    day for which Omejdn lets clients cache its JWKS (``max-age=86400``)."""
    retire_for: datetime.timedelta | None = None
    """A retired key stays published this long; None: the longest token
    lifetime of the ``omejdn`` section plus ``retire_margin``."""
    retire_margin: datetime.timedelta = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class TimeoutSettings:
    """Bounds on every statement and every lock wait of the plugin's connections.

    Sent as libpq startup ``options``, so they hold from a connection's first
    statement without a round trip of their own. Zero turns a bound off.
    """

    statement: datetime.timedelta = datetime.timedelta(seconds=5)
    lock: datetime.timedelta = datetime.timedelta(seconds=2)

    def options(self) -> str:
        """``-c statement_timeout=... -c lock_timeout=...`` in milliseconds."""
        parts = []
        for name, value in (("statement_timeout", self.statement), ("lock_timeout", self.lock)):
            parts.append(f"-c {name}={int(value.total_seconds() * 1000)}")
        return " ".join(parts)


@dataclass(frozen=True)
class BackendSettings:
    """The ``plugins.postgres_backend`` section."""

    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    handlers: frozenset[str] = frozenset(HANDLER_GROUPS)
    pool: PoolSettings = field(default_factory=PoolSettings)
    passwords: PasswordSettings = field(default_factory=PasswordSettings)
    key_events: str = "jwks"
    """The key events' form: ``jwks`` (current Omejdn) or ``key_material`` (before JWKS)."""
    key_lifecycle: KeyLifecycleSettings = field(default_factory=KeyLifecycleSettings)
    timeouts: TimeoutSettings = field(default_factory=lambda: TimeoutSettings())
    key_encryption: tuple[Mapping[str, str], ...] = ()
    """Key-encryption keys, ``{id, env}`` or ``{id, file}``: the first seals private keys,
    every one opens them. Empty: private keys are stored as plain PEM (readable by a
    Ruby Omejdn sharing the database)."""
    cache: CacheSettings = field(default_factory=lambda: CacheSettings())
    """The read cache of point reads (``cache:``)."""
    replicas: ReplicaSettings = field(default_factory=lambda: ReplicaSettings())
    """Standbys serving point reads and GET_ALL (``replicas:``, ``max_replica_lag``)."""
    failover: FailoverSettings = field(default_factory=lambda: FailoverSettings())
    topology: TopologySettings | None = None
    """Replicas found from Patroni's REST API (``topology:``) instead of ``replicas:``."""
    prepare: bool | None = None
    """Server-side prepared statements: True, False, or None (``auto``: off behind a pooler)."""
    source: str = "<defaults>"
    """Where the section came from, for messages."""
    connection_given: bool = True
    """Whether the section has a ``connection`` (``{}`` counts: libpq's defaults on
    purpose); see :func:`require_chosen_connection`."""


@dataclass(frozen=True)
class StaticConfiguration:
    """The merged static configuration of all plugin files."""

    data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The merged YAML; kept out of the repr because it holds the connection password."""
    files: tuple[Path, ...] = ()

    @property
    def source(self) -> str:
        return ", ".join(str(f) for f in self.files) or "<no plugin file>"

    @property
    def plugins(self) -> Mapping[str, Any]:
        plugins = self.data.get("plugins") or {}
        if not isinstance(plugins, Mapping):
            raise ConfigurationError(f"{self.source}: 'plugins' must be a mapping of plugin names")
        return plugins

    @property
    def deactivate_defaults(self) -> frozenset[str]:
        value = self.data.get("deactivate_defaults") or []
        names = _string_list(value, f"{self.source}: 'deactivate_defaults'")
        unknown = sorted(set(names) - set(DEFAULT_PLUGINS))
        if unknown:
            raise ConfigurationError(
                f"{self.source}: 'deactivate_defaults' names unknown default plugin(s) "
                f"{', '.join(map(repr, unknown))}; allowed: {', '.join(DEFAULT_PLUGINS)}"
            )
        return frozenset(names)

    @property
    def user_backend_default(self) -> str | None:
        """The static file's ``user_backend_default``, or None when it names none."""
        return self._backend_default("user_backend_default")

    @property
    def client_backend_default(self) -> str | None:
        return self._backend_default("client_backend_default")

    def _backend_default(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f"{self.source}: '{key}' must be a backend name, e.g. postgres"
            )
        return value

    def backend_settings(self) -> BackendSettings:
        """The validated ``plugins.postgres_backend`` section."""
        return parse_backend_section(self.plugins.get(PLUGIN_NAME), self.source)

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> StaticConfiguration:
        merged: dict[str, Any] = {}
        files = tuple(Path(p) for p in paths)
        for path in files:
            merged = _deep_merge(merged, _load_yaml_mapping(path))
        unknown = sorted(set(merged) - set(_TOP_LEVEL_KEYS))
        if unknown:
            source = ", ".join(map(str, files))
            raise ConfigurationError(
                f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(_TOP_LEVEL_KEYS)}"
            )
        return cls(merged, files)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StaticConfiguration:
        value = (environ if environ is not None else os.environ).get(PLUGINS_ENV, "")
        return cls.from_files(p for p in value.split(":") if p)


def parse_backend_section(section: object, source: str) -> BackendSettings:
    """Validate the plugin section; ``None`` (absent) means every default."""
    where = f"{source}: plugins.{PLUGIN_NAME}"
    if section is None:
        return BackendSettings(source=source)
    if not isinstance(section, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with keys {', '.join(_PLUGIN_KEYS)}")
    refuse_unknown_keys(section, _PLUGIN_KEYS, where)
    return BackendSettings(
        connection=_parse_connection(section.get("connection"), f"{where}.connection"),
        handlers=_parse_handlers(section.get("handlers"), f"{where}.handlers"),
        pool=_parse_pool(section.get("pool"), f"{where}.pool"),
        passwords=_parse_passwords(section.get("passwords"), f"{where}.passwords"),
        key_events=_parse_choice(
            section.get("key_events", "jwks"), f"{where}.key_events", KEY_EVENT_FORMS
        ),
        key_lifecycle=_parse_key_lifecycle(section.get("key_lifecycle"), f"{where}.key_lifecycle"),
        key_encryption=_parse_key_encryption(
            section.get("key_encryption"), f"{where}.key_encryption"
        ),
        timeouts=TimeoutSettings(
            statement=_duration_setting(
                section.get("statement_timeout"), f"{where}.statement_timeout", "5s"
            ),
            lock=_duration_setting(section.get("lock_timeout"), f"{where}.lock_timeout", "2s"),
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


def refuse_unknown_keys(value: Mapping[Any, Any], allowed: Iterable[str], where: str) -> None:
    """A ConfigurationError naming the keys of ``value`` outside ``allowed``, and those."""
    allowed = list(allowed)
    unknown = sorted(set(map(str, value)) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )


def _parse_choice(value: object, where: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigurationError(f"{where} is {value!r}; allowed: {', '.join(allowed)}")
    return value


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
            try:
                durations[name] = parse_duration(value[name], f"{where}.{name}")
            except ValueError as error:
                raise ConfigurationError(str(error)) from None
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
    import yaml

    where = f"${KEY_ENCRYPTION_ENV}"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
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


def _duration_setting(value: object, where: str, default: str) -> datetime.timedelta:
    try:
        return parse_duration(default if value is None else value, where)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


_DURATION: Final = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")


def parse_duration(value: object, field: str) -> datetime.timedelta:
    """``90``, ``"90s"``, ``"30m"``, ``"25h"``, ``"2d"``, ``"1d12h"``, ``"250ms"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return datetime.timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return datetime.timedelta(seconds=int(text))
        found = _DURATION.fullmatch(text)
        if text and found is not None:
            days, hours, minutes, seconds, millis = (int(part or 0) for part in found.groups())
            return datetime.timedelta(
                days=days, hours=hours, minutes=minutes, seconds=seconds, milliseconds=millis
            )
    raise ValueError(f"{field}: {value!r} is not a duration (seconds, or e.g. 30m, 25h, 2d, 1d12h)")


def _parse_connection(value: object, where: str) -> ConnectionSettings:
    if value is None:
        return ConnectionSettings()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping of libpq keywords (host, dbname, ...)")
    params: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, bool) or not isinstance(item, str | int):
            raise ConfigurationError(
                f"{where}.{key} must be a string or a number, got {type(item).__name__}"
            )
        params[key] = str(item)
    for key in params:
        try:
            make_conninfo(**{key: params[key]})
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"{where}: {key!r} is not a libpq connection keyword "
                "(see the PostgreSQL manual, 'Parameter Key Words')"
            ) from exc
    return ConnectionSettings(params)


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
    parsed = _parse_numbers(value, where, fields)
    return PoolSettings(**{name: parsed.get(name, getattr(defaults, name)) for name in fields})


def _parse_passwords(value: object, where: str) -> PasswordSettings:
    if value is None:
        return PasswordSettings()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with keys scheme, bcrypt_rounds")
    rest = {k: v for k, v in value.items() if k != "scheme"}
    numbers = _parse_numbers(rest, where, {"bcrypt_rounds": int})
    scheme = value.get("scheme", "bcrypt")
    if scheme not in ("bcrypt", "argon2"):
        raise ConfigurationError(
            f"{where}.scheme: {scheme!r} is not allowed; allowed: bcrypt, argon2"
        )
    rounds = int(numbers.get("bcrypt_rounds", PasswordSettings.bcrypt_rounds))
    if not 4 <= rounds <= 31:
        raise ConfigurationError(f"{where}.bcrypt_rounds must be between 4 and 31, got {rounds}")
    return PasswordSettings(scheme=str(scheme), bcrypt_rounds=rounds)


def _parse_numbers(value: object, where: str, fields: Mapping[str, type]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with keys {', '.join(fields)}")
    refuse_unknown_keys(value, fields, where)
    parsed: dict[str, Any] = {}
    for name, kind in fields.items():
        if name not in value:
            continue
        item = value[name]
        if isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
            raise ConfigurationError(f"{where}.{name} must be a non-negative number, got {item!r}")
        parsed[name] = kind(item)
    return parsed


def _string_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{where} must be a list of names, got {value!r}")
    return list(value)


def _load_yaml_mapping(path: Path) -> Mapping[str, Any]:
    # Imported here: a command given --url (``users list``) reads no plugin file.
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read plugin file: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigurationError(f"{path}:{line}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{path}: a plugin file must hold a mapping at its top level")
    return data


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- the read cache (``cache:``) ---------------------------------------------------

CACHE_DEFAULT_GROUPS: Final = frozenset({"config", "keys"})
"""Cached unless switched off: few entries, read on every token request, rarely written."""
_CACHE_NUMBERS: Final = ("max_entries", "max_staleness", "log_interval")
_CACHE_KEYS: Final = (*HANDLER_GROUPS, *_CACHE_NUMBERS, "listen_connection")
MIN_STALENESS: Final = 0.05
MAX_STALENESS: Final = 3600.0


@dataclass(frozen=True)
class CacheSettings:
    """The read cache: which groups' point reads are kept in memory, and for how stale at most."""

    groups: frozenset[str] = CACHE_DEFAULT_GROUPS
    """Handler groups whose point reads are cached (``config``, ``keys``, ``client``, ``user``)."""
    max_entries: int = 10000
    """Entries kept across all groups; the least recently used goes first. 0 turns the cache off."""
    max_staleness: float = 1.0
    """Seconds: an entry is served only while the invalidation listener has been
    heard from (a heartbeat answered) within this long."""
    log_interval: float = 300.0
    """Seconds between INFO lines with the cache's statistics; 0: never."""
    listen_connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    """libpq keywords for the listener's own connection, over those of ``connection``
    (a direct server behind PgBouncer, the primary beside replicas)."""

    @property
    def enabled(self) -> bool:
        return bool(self.groups) and self.max_entries > 0


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
        try:
            interval = parse_duration(interval, f"{where}.log_interval").total_seconds()
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
    numbers = _parse_numbers(
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
        listen_connection=_parse_connection(
            value.get("listen_connection"), f"{where}.listen_connection"
        ),
    )


# --- beyond one server: standbys, failover, poolers --------------------------------


def inherit_connection(
    base: ConnectionSettings, node: ConnectionSettings, *, read_write: bool = False
) -> ConnectionSettings:
    """``node``'s libpq keywords over ``base``'s: another server, same database and role.

    A node that names ``host`` or ``hostaddr`` takes neither from ``base``; one
    that names neither takes base's (a replica on another port of the same
    machine). ``port`` is inherited unless the node names it. A multi-host
    list (``a,b``) is never inherited: it cannot describe one other server.
    ``target_session_attrs`` is inherited only when ``read_write`` (a standby
    would otherwise be refused as not read-write).
    """
    params = dict(base.params)
    if "host" in node.params or "hostaddr" in node.params:
        params.pop("host", None)
        params.pop("hostaddr", None)
    for key in ("host", "hostaddr", "port"):
        if "," in params.get(key, ""):
            params.pop(key)
    if not read_write:
        params.pop("target_session_attrs", None)
    params.update(node.params)
    return ConnectionSettings(params)


@dataclass(frozen=True)
class ReplicaSettings:
    """Streaming standbys that serve point reads and GET_ALL of this process.

    A read goes to a standby only when it has replayed this process's (or this
    request's) last commit and lags no more than ``max_lag``; otherwise, and for
    every write, batch and snapshot, to the primary.
    """

    nodes: tuple[ConnectionSettings, ...] = ()
    """Each standby's libpq keywords as written; :meth:`connections` puts them
    over those of the connection in use."""
    max_lag: datetime.timedelta = datetime.timedelta(seconds=1)
    """A standby further behind the primary than this is skipped."""

    def connections(self, base: ConnectionSettings) -> tuple[ConnectionSettings, ...]:
        """Each standby's connection over ``base`` (the plugin's, or a CLI's ``--url``)."""
        found = []
        for index, node in enumerate(self.nodes):
            if not {"host", "hostaddr"} & set(node.params) and "," in base.params.get("host", ""):
                raise ConfigurationError(
                    f"replicas[{index}] must name its host: the connection's host is a list"
                )
            found.append(inherit_connection(base, node))
        return tuple(found)


def parse_replicas(section: Mapping[str, Any], where: str) -> ReplicaSettings:
    """``replicas:`` (a list of libpq connection maps) and ``max_replica_lag``."""
    base = _parse_connection(section.get("connection"), f"{where}.connection")
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
            nodes.append(_parse_connection(entry, here))
    replicas = ReplicaSettings(
        nodes=tuple(nodes),
        max_lag=_duration_setting(section.get("max_replica_lag"), f"{where}.max_replica_lag", "1s"),
    )
    try:
        replicas.connections(base)
    except ConfigurationError as error:
        raise ConfigurationError(f"{where}.{error}") from None
    return replicas


@dataclass(frozen=True)
class FailoverSettings:
    """How the plugin rides out a server that goes away (a failover, a restart)."""

    read_wait: datetime.timedelta = datetime.timedelta(seconds=5)
    """How long a read keeps retrying, with backoff, for a server that has answered
    before; 0: fail at once. Writes never wait: they fail with StorageUnavailable
    until a writable primary answers."""


def parse_failover(value: object, where: str) -> FailoverSettings:
    if value is None:
        return FailoverSettings()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with key read_wait")
    refuse_unknown_keys(value, ("read_wait",), where)
    return FailoverSettings(
        read_wait=_duration_setting(value.get("read_wait"), f"{where}.read_wait", "5s")
    )


PREPARE_MODES: Final = ("auto", "true", "false")


def parse_prepare(value: object, where: str) -> bool | None:
    """``prepare:`` — true, false or auto (None: off when a pooler sits in between)."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return None
    if value in ("true", "false"):
        return value == "true"
    raise ConfigurationError(f"{where} is {value!r}; allowed: {', '.join(PREPARE_MODES)}")


# --- topology: replicas found from the cluster (omejdn_pg.postgres.patroni) -------

TOPOLOGY_KEYS: Final = ("patroni", "refresh", "timeout")


@dataclass(frozen=True)
class TopologySettings:
    """``topology:`` of the plugin section: where the cluster says who its members are."""

    patroni: tuple[str, ...]
    """Base URLs of Patroni's REST API, one per node (``http://db1:8008``)."""
    refresh: datetime.timedelta = datetime.timedelta(seconds=2)
    """How often the member list is read again."""
    timeout: datetime.timedelta = datetime.timedelta(seconds=1)
    """How long one endpoint may take to answer before the next is tried."""


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
        try:
            durations[key] = parse_duration(value.get(key, default), f"{here}.{key}")
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
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
