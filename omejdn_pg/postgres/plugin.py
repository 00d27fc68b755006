"""The ``postgres_backend`` plugin: handler adapters from Omejdn's events to the repositories.

Each adapter is a thin translation — event context in, one repository call in
one unit of work, entity out — so the rules (one transaction per event, one
round trip per point read) live in the repositories and the Database, not here.

Routing is what Omejdn expects of a backend among several: a create acts only
when the event names this backend; update, password change and verify act
only on users and clients whose ``backend`` is ours; verify answers ``None``
for everyone else so the host can ask the next backend. A name no active
backend has (Omejdn's ``'yaml'`` default, admin API v1's body with none) is
resolved by the loader before the adapters see it
(:meth:`~omejdn_pg.host.events.EventBus.creating_backend`,
:meth:`~omejdn_pg.host.events.EventBus.addressed_backend`): the sole active
backend of the group, an error among several.

The key events come in two forms (setting ``key_events``): JWK Sets, as
Omejdn's current core fires them, or the one ``key_material`` per target of
the core before it, together with its client certificate events. Both are
served from the same key sets, so switching a deployment from one core to the
other needs no data migration.

The read cache (setting ``cache``, :mod:`omejdn_pg.postgres.cache`) sits in
the adapters too: a point read asks it first, and every write is announced in
its own transaction — users and clients by their tables' triggers, sections and
key sets by :func:`publish_change` (a count on this session's own counter row
and a NOTIFY that only a commit delivers) — and, once the write returned, drops
this process's own entries, so a writer always reads its write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from cryptography import x509
from sqlalchemy import Connection

from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue
from omejdn_pg.host import events
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.cache.changes import TRIGGER_ANNOUNCED, Announcements
from omejdn_pg.postgres.cache.entries import (
    CLIENT,
    CONFIG,
    KEYS,
    KEYS_ALL,
    USER,
    CacheKey,
    group_of,
)
from omejdn_pg.postgres.cache.read_cache import Miss, ReadCache
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.clients import ClientRepository, all_clients, find_client
from omejdn_pg.postgres.repositories.common import Reader
from omejdn_pg.postgres.repositories.config import ConfigRepository, load_section
from omejdn_pg.postgres.repositories.keys import (
    JwksAnswers,
    KeyRepository,
    load_all_keys,
    load_keys,
)
from omejdn_pg.postgres.repositories.users import (
    UserRepository,
    all_users,
    find_user,
    stored_password,
)
from omejdn_pg.sealing import Keyring
from omejdn_pg.settings.backend import BACKEND_NAME, BackendSettings, CacheSettings
from omejdn_pg.settings.validation import require_chosen_connection

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class PostgresBackendPlugin:
    """Omejdn's storage in PostgreSQL, for the handler groups the configuration names."""

    name = BACKEND_NAME

    def __init__(self) -> None:
        self._database: Database | None = None
        self.settings: BackendSettings | None = None
        self.policy = PasswordPolicy()
        self.keyring = Keyring()
        self.allow_plaintext = False
        """Let key writes store a plain private key beside sealed ones (``--allow-plaintext``)."""
        """Key-encryption keys sealing private keys at rest (none: plain PEM)."""
        self.cache: ReadCache | None = None
        """The read cache, once :meth:`start_cache` (``init``) started it."""
        self._announcements = Announcements()
        self._jwks_answers = JwksAnswers()
        self._client_jwks = JwksAnswers(max_targets=4096)

    def __repr__(self) -> str:
        where = self.settings.connection.describe() if self.settings else "not initialised"
        return f"PostgresBackendPlugin({where})"

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError("PostgresBackendPlugin.init(loader) has not run")
        return self._database

    def init(self, loader: events.EventBus) -> None:
        """Connect, check the schema, and register handlers for the configured groups."""
        self.settings = settings = loader.configuration.backend_settings()
        require_chosen_connection(settings)
        self.policy = PasswordPolicy(settings.passwords)
        self.keyring = Keyring.from_settings(settings.key_encryption)
        database = Database.for_backend(settings)
        try:
            database.read(_check_schema)
        except BaseException:
            database.dispose()
            raise
        self._database = database
        self.register(loader, settings.handlers)
        self.start_cache(settings.cache)
        log.info(
            "postgres_backend at %s serves %s",
            settings.connection.describe(),
            ", ".join(sorted(settings.handlers)),
        )

    def attach(self, database: Database, policy: PasswordPolicy | None = None) -> None:
        """Use an existing Database instead of connecting from settings (CLI, tests)."""
        self._database = database
        if policy is not None:
            self.policy = policy

    @property
    def jwks(self) -> bool:
        """Whether the key events are Omejdn's current JWK Set form."""
        return self.settings is None or self.settings.key_events == "jwks"

    def register(self, loader: events.EventBus, groups: frozenset[str]) -> None:
        legacy = not self.jwks
        handlers: dict[str, dict[str, Any]] = {
            "user": {
                events.USER_GET: self.user_get,
                events.USER_GET_ALL: self.user_get_all,
                events.USER_CREATE: self.user_create,
                events.USER_UPDATE: self.user_update,
                events.USER_DELETE: self.user_delete,
                events.USER_AUTHENTICATION_PASSWORD_CHANGE: self.user_password_change,
                events.USER_AUTHENTICATION_PASSWORD_VERIFY: self.user_password_verify,
            },
            "client": {
                events.CLIENT_GET: self.client_get,
                events.CLIENT_GET_ALL: self.client_get_all,
                events.CLIENT_CREATE: self.client_create,
                events.CLIENT_UPDATE: self.client_update,
                events.CLIENT_DELETE: self.client_delete,
            },
            "config": {
                events.CONFIGURATION_STORE: self.configuration_store,
                events.CONFIGURATION_LOAD: self.configuration_load,
            },
            "keys": {
                events.KEYS_STORE: self.key_material_store if legacy else self.keys_store,
                events.KEYS_LOAD: self.key_material_load if legacy else self.keys_load,
                events.KEYS_LOAD_ALL: self.key_material_load_all if legacy else self.keys_load_all,
            },
        }
        if legacy:
            # The core before JWKS asks for client certificates by event.
            handlers["client"][events.CLIENT_AUTHENTICATION_CERTIFICATE_GET] = (
                self.client_certificate_get
            )
            handlers["client"][events.CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE] = (
                self.client_certificate_update
            )
        for group in ("keys", "config", "client", "user"):
            if group in groups:
                for event, handler in handlers[group].items():
                    loader.register(event, handler)
                if group in ("user", "client"):
                    loader.declare_backend(group, BACKEND_NAME)

    def start_cache(self, settings: CacheSettings | None = None) -> ReadCache | None:
        """Start the read cache for the cached groups this plugin serves; None if there are none.

        ``init`` calls it with the configured settings; a plugin made with
        :meth:`attach` (the CLI, short-lived) has no cache unless asked. The
        older key events answer with parsed keys and are never cached.
        """
        if self.cache is not None:
            return self.cache
        backend = self.settings or BackendSettings()
        chosen = settings or backend.cache
        groups = set(chosen.groups) & set(backend.handlers)
        if not self.jwks:
            groups.discard("keys")
        if not chosen.enabled or not groups:
            return None
        self.cache = ReadCache(chosen, self.database.connection, groups=groups)
        if "keys" in groups:
            self.cache.watch_key_writes(self.database.engine)
        return self.cache.start()

    def stats(self, *, log_line: bool = False) -> dict[str, Any]:
        """The read cache's counters (see :meth:`ReadCache.stats`); ``{}`` without a cache."""
        return self.cache.stats(log_line=log_line) if self.cache is not None else {}

    def changed(self, group: str, key: Sequence[str] | None) -> None:
        """Drop this process's entries for a change made outside the adapters (after it
        committed, and announced with :func:`~omejdn_pg.postgres.cache.changes.publish_change`)."""
        if self.cache is not None:
            self.cache.invalidate(group, key)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self._database is not None:
            self._database.dispose()

    # --- the cache: point reads through it, writes announced --------------------

    def _cached(
        self,
        key: CacheKey,
        fetch: Callable[[Reader], R],
        answer: Callable[[R], T],
        *,
        keep_none: bool = True,
    ) -> T:
        """``answer(fetch(reader))``, from the cache when it can vouch for it."""
        cache = self.cache
        group = group_of(key)
        if cache is None or group not in cache.groups:
            return answer(self.database.query(fetch))
        found = cache.get(key, group)
        if not isinstance(found, Miss):
            return cast(T, found)
        # Only a read outside any transaction is kept: inside a batch or
        # snapshot the view may be one that never commits.
        if found.token is None or self.database.in_unit_of_work:
            return answer(self.database.query(fetch))
        # A fill is read on the primary: the counters it is checked against are
        # the primary's, and a lagging standby could otherwise refill a value
        # just invalidated.
        value = answer(self.database.query(fetch, on_primary=True))
        if keep_none or value is not None:
            cache.fill(key, value, found.token)
        return value

    def _write(
        self, group: str, key: Callable[[], Sequence[str]], operation: Callable[[Connection], T]
    ) -> T:
        """Run ``operation`` in one transaction that ends by announcing ``key`` of ``group``.

        ``key`` is asked after the operation succeeded (it validated the input).
        This process's entries are dropped whenever the change may have
        committed — also when the outcome of the COMMIT is unknown.
        """
        changed: list[Sequence[str]] = []

        def run(conn: Connection) -> T:
            result = operation(conn)
            changed[:] = [key()]
            # Users and clients are announced by their tables' triggers, row by row.
            if group not in TRIGGER_ANNOUNCED:
                self._announcements.publish(conn, group, changed[0])
            return result

        try:
            return self.database.write(run)
        finally:
            if self.cache is not None and changed:
                self.cache.invalidate(group, changed[0])

    # --- users -------------------------------------------------------------------

    def _users(self, conn: Connection) -> UserRepository:
        return UserRepository(conn, self.policy)

    def user_get(self, username: str, **_: Any) -> User | None:
        return self._cached(
            (USER, username),
            lambda reader: find_user(reader, username),
            _same,
            keep_none=False,
        )

    def user_get_all(self, **_: Any) -> list[User]:
        return self.database.query(all_users)

    def user_create(self, user: User, user_backend: str | None = None, **_: Any) -> None:
        if user_backend != BACKEND_NAME:
            return
        self._write("user", lambda: (user.username,), lambda conn: self._users(conn).create(user))
        user.backend = BACKEND_NAME

    def user_update(self, user: User, **_: Any) -> None:
        if user.backend == BACKEND_NAME:
            self._write(
                "user", lambda: (user.username,), lambda conn: self._users(conn).update(user)
            )

    def user_delete(self, username: str, **_: Any) -> None:
        self._write("user", lambda: (username,), lambda conn: self._users(conn).delete(username))

    def user_password_change(self, user: User, password: str, **_: Any) -> None:
        if user.backend != BACKEND_NAME:
            return
        # Hash before the transaction: no connection is held for the bcrypt round.
        new_hash = self.policy.hash(password)
        self._write(
            "user",
            lambda: (user.username,),
            lambda conn: self._users(conn).set_password_hash(user.username, new_hash),
        )
        user.password = new_hash

    def user_password_verify(self, user: User, password: str, **_: Any) -> bool | None:
        if user.backend != BACKEND_NAME:
            return None
        # Fetch, verify with no connection held, then upgrade a weak hash by a
        # compare-and-set that commits on its own.
        exists, stored = self.database.query(lambda reader: stored_password(reader, user.username))
        if not exists or stored is None:
            return False
        matches, replacement = self.policy.verify(password, stored)
        if matches and replacement is not None:
            self._write(
                "user",
                lambda: (user.username,),
                lambda conn: self._users(conn).replace_password_hash(
                    user.username, stored, replacement
                ),
            )
        return matches

    # --- clients -------------------------------------------------------------------

    def _clients(self, conn: Connection) -> ClientRepository:
        return ClientRepository(conn, jwks=self.jwks, keyring=self.keyring)

    def keys(self, conn: Connection) -> KeyRepository:
        """The key repository on ``conn``, sealing and opening with this plugin's keyring."""
        return KeyRepository(conn, self.keyring, allow_plaintext=self.allow_plaintext)

    def client_get(self, client_id: str, **_: Any) -> Client | None:
        return self._cached(
            (CLIENT, client_id),
            lambda reader: find_client(
                reader, client_id, jwks=self.jwks, keyring=self.keyring, answers=self._client_jwks
            ),
            _same,
            keep_none=False,
        )

    def client_get_all(self, **_: Any) -> list[Client]:
        return self.database.query(
            lambda reader: all_clients(
                reader, jwks=self.jwks, keyring=self.keyring, answers=self._client_jwks
            )
        )

    def client_create(self, client: Client, client_backend: str | None = None, **_: Any) -> None:
        if client_backend != BACKEND_NAME:
            return
        self._write(
            "client", lambda: (client.client_id,), lambda conn: self._clients(conn).create(client)
        )
        client.backend = BACKEND_NAME

    def client_update(self, client: Client, **_: Any) -> None:
        if client.backend == BACKEND_NAME:
            self._write(
                "client",
                lambda: (client.client_id,),
                lambda conn: self._clients(conn).update(client),
            )

    def client_delete(self, client_id: str, **_: Any) -> None:
        self._write(
            "client", lambda: (client_id,), lambda conn: self._clients(conn).delete(client_id)
        )

    def client_certificate_get(self, client: Client, **_: Any) -> x509.Certificate | None:
        if client.backend != BACKEND_NAME:
            return None
        return self.database.read(
            lambda conn: self._clients(conn).get_certificate(client.client_id)
        )

    def client_certificate_update(
        self, client: Client, new_cert: x509.Certificate | None, **_: Any
    ) -> None:
        if client.backend != BACKEND_NAME:
            return
        if new_cert is not None and not isinstance(new_cert, x509.Certificate):
            raise InvalidValue(
                f"client {client.client_id!r}: new_cert must be an X.509 certificate or None"
            )
        self._write(
            "client",
            lambda: (client.client_id,),
            lambda conn: self._clients(conn).set_certificate(client.client_id, new_cert),
        )

    # --- configuration -----------------------------------------------------------

    def configuration_store(self, section: str, data: Any, **_: Any) -> None:
        self._write(
            "config", lambda: (section,), lambda conn: ConfigRepository(conn).store(section, data)
        )

    def configuration_load(self, section: str, fallback: Any = None, **_: Any) -> Any:
        return self._cached((CONFIG, section), lambda reader: load_section(reader, section), _same)

    # --- keys: JWK Sets (Omejdn's current core) -----------------------------------

    def keys_store(self, target_type: str, target: str, jwks: Any, **_: Any) -> None:
        keys = KeySet.from_jwks(jwks, what=f"KEYS_STORE {target_type}/{target}: jwks")
        self._write(
            "keys",
            lambda: (target_type, target),
            lambda conn: self.keys(conn).store(target_type, target, keys),
        )

    def keys_load(self, target_type: str, target: str, **_: Any) -> dict[str, Any] | None:
        """The set with the active keys' private members first; None if nothing is stored.

        ``create`` is the host's to act on (Omejdn's core generates the key):
        a backend never invents keys.
        """
        return self._cached(
            (KEYS, target_type, target),
            lambda reader: self._jwks_answers.signing(reader, target_type, target, self.keyring),
            _same,
        )

    def keys_load_all(self, target_type: str, **_: Any) -> dict[str, Any]:
        """Every key of ``target_type``, next and retired ones included, without private members."""
        return self._cached(
            (KEYS_ALL, target_type),
            lambda reader: self._jwks_answers.public(reader, target_type, self.keyring),
            _same,
        )

    # --- keys: one key_material per target (the core before JWKS) ----------------

    def key_material_store(
        self,
        target_type: str,
        target: str,
        key_material: KeyMaterial | None = None,
        jwks: Any = None,
        **_: Any,
    ) -> None:
        """The older core's KEYS_STORE; a JWK Set (what this package's own tools
        fire) is stored as well, so operators' commands work in either form."""
        if key_material is None and jwks is not None:
            self.keys_store(target_type, target, jwks)
            return
        if not isinstance(key_material, KeyMaterial):
            raise InvalidKeyMaterial(
                f"keys {target_type}/{target}: expected KeyMaterial, "
                f"got {type(key_material).__name__}"
            )
        key = key_material.to_key()
        keys = [key] if key is not None else []
        self._write(
            "keys",
            lambda: (target_type, target),
            lambda conn: self.keys(conn).store(target_type, target, keys),
        )

    def key_material_load(self, target_type: str, target: str, **_: Any) -> KeyMaterial:
        """The target's signing key (the first of its set) as key material; empty if none."""
        keys = self.database.query(
            lambda reader: load_keys(reader, target_type, target, self.keyring)
        )
        return KeyMaterial.from_key(keys[0]) if keys else KeyMaterial()

    def key_material_load_all(self, target_type: str, **_: Any) -> list[KeyMaterial]:
        """One material per key, so next and retired keys are published too; only active
        keys carry their private key."""
        sets = self.database.query(lambda reader: load_all_keys(reader, target_type, self.keyring))
        return [
            KeyMaterial.from_key(key if key.state == "active" else key.public())
            for _target, keys in sets
            for key in keys
        ]


def _same(value: T) -> T:
    return value


def _check_schema(conn: Connection) -> None:
    from omejdn_pg.postgres.migrate import check_schema

    check_schema(conn)
