"""The plugin's state and its paths to the database: reads through the cache, writes announced.

The read cache (setting ``cache``, :mod:`omejdn_pg.postgres.cache`) sits here,
under the handler adapters (:mod:`omejdn_pg.postgres.handlers`): a point read
asks it first, and every write is announced in its own transaction — users and
clients by their tables' triggers, sections and key sets by
:func:`~omejdn_pg.postgres.cache.changes.publish_change` (a count on this
session's own counter row and a NOTIFY that only a commit delivers) — and,
once the write returned, drops this process's own entries, so a writer always
reads its write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Connection

from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.cache.changes import TRIGGER_ANNOUNCED, Announcements
from omejdn_pg.postgres.cache.entries import CacheKey, group_of
from omejdn_pg.postgres.cache.read_cache import Miss, ReadCache
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.common import Reader
from omejdn_pg.postgres.repositories.jwks_answers import JwksAnswers
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.sealing import Keyring
from omejdn_pg.settings.backend import BackendSettings, CacheSettings

T = TypeVar("T")
R = TypeVar("R")


class PluginCore:
    """What the adapters share: settings, database, keyring, cache; no event of its own."""

    def __init__(self) -> None:
        self._database: Database | None = None
        self.settings: BackendSettings | None = None
        self.policy = PasswordPolicy()
        self.keyring = Keyring()
        """Key-encryption keys sealing private keys at rest (none: plain PEM)."""
        self.allow_plaintext = False
        """Let key writes store a plain private key beside sealed ones (``--allow-plaintext``)."""
        self.cache: ReadCache | None = None
        """The read cache, once :meth:`start_cache` (``init``) started it."""
        self._announcements = Announcements()
        self._jwks_answers = JwksAnswers()
        self._client_jwks = JwksAnswers(max_targets=4096)

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError("PostgresBackendPlugin.init(loader) has not run")
        return self._database

    def attach(self, database: Database, policy: PasswordPolicy | None = None) -> None:
        """Use an existing Database instead of connecting from settings (CLI, tests)."""
        self._database = database
        if policy is not None:
            self.policy = policy

    @property
    def jwks(self) -> bool:
        """Whether the key events are Omejdn's current JWK Set form."""
        return self.settings is None or self.settings.key_events == "jwks"

    def keys(self, conn: Connection) -> KeyRepository:
        """The key repository on ``conn``, sealing and opening with this plugin's keyring."""
        return KeyRepository(conn, self.keyring, allow_plaintext=self.allow_plaintext)

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
