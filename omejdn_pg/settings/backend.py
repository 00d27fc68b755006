"""The backend's typed settings: what ``plugins.postgres_backend`` says, with its defaults.

Plain frozen dataclasses, built and validated by
:mod:`omejdn_pg.settings.validation`; every default here is the value an
absent key means, so a section of ``{}`` runs with these.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.settings.connection import ConnectionSettings, inherit_connection

PLUGIN_NAME: Final = "postgres_backend"
BACKEND_NAME: Final = "postgres"
HANDLER_GROUPS: Final = ("keys", "config", "client", "user")
KEY_EVENT_FORMS: Final = ("jwks", "key_material")
"""``jwks``: Omejdn's current core (JWK Sets); ``key_material``: the core before it."""


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


CACHE_DEFAULT_GROUPS: Final = frozenset({"config", "keys"})
"""Cached unless switched off: few entries, read on every token request, rarely written."""
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


@dataclass(frozen=True)
class FailoverSettings:
    """How the plugin rides out a server that goes away (a failover, a restart)."""

    read_wait: datetime.timedelta = datetime.timedelta(seconds=5)
    """How long a read keeps retrying, with backoff, for a server that has answered
    before; 0: fail at once. Writes never wait: they fail with StorageUnavailable
    until a writable primary answers."""


PREPARE_MODES: Final = ("auto", "true", "false")


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
