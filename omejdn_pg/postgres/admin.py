"""What operators need of PostgreSQL beyond the events: the key lifecycle, sealing, sections.

Omejdn's core reaches storage through events alone, and so does most of the
Host. What no event carries — a key's lifecycle state and dates, rewrapping
every private key under a new key-encryption key, provisioning a section
ahead of its first write, listing stored sections and key targets, the
set-wise import of many users — is asked here, of the postgres backend's own
plugin: its database, its keyring (a stored private key is sealed, and only
the plugin's keyring opens it), its change announcements. The service layer
calls this surface instead of building repositories itself, so there is one
place where a key is read as the plugin reads it. The trade-off: a method
here for each operation the service needs, rather than the repositories
handed out; a new operator command may need a new one.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection

from omejdn_pg import lifecycle
from omejdn_pg.host.events import EventBus
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.postgres.cache.changes import publish_change
from omejdn_pg.postgres.cache.entries import USER
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.postgres.repositories.bulk import UserImport
from omejdn_pg.postgres.repositories.config import ConfigRepository
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.postgres.repositories.section_layouts import Shape
from omejdn_pg.settings.backend import PLUGIN_NAME, KeyLifecycleSettings


class Admin:
    """The operator's side of one :class:`PostgresBackendPlugin`."""

    def __init__(self, plugin: PostgresBackendPlugin) -> None:
        self.plugin = plugin

    @classmethod
    def of(cls, loader: EventBus) -> Admin | None:
        """The loader's postgres backend, None if it has none."""
        plugin = loader.plugins.get(PLUGIN_NAME)
        return cls(plugin) if isinstance(plugin, PostgresBackendPlugin) else None

    def __repr__(self) -> str:
        return f"Admin({self.plugin!r})"

    @property
    def database(self) -> Database:
        return self.plugin.database

    def serves(self, group: str) -> bool:
        """Whether the plugin registered the handlers of ``group`` (``user``, ``keys``, ...)."""
        settings = self.plugin.settings
        return settings is None or group in settings.handlers

    @property
    def key_lifecycle(self) -> KeyLifecycleSettings:
        settings = self.plugin.settings
        return settings.key_lifecycle if settings is not None else KeyLifecycleSettings()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside is one transaction: all of them, or none."""
        with self.database.batch():
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one consistent snapshot of the database."""
        with self.database.snapshot():
            yield

    # --- users ----------------------------------------------------------------------

    def owns(self, handler: Callable[..., Any]) -> bool:
        """Whether ``handler`` (of USER_GET_ALL) is this plugin's own."""
        return handler == self.plugin.user_get_all

    def user_import(self) -> UserImport:
        """The set-wise import of many users (Omejdn's core writes one at a time)."""
        plugin = self.plugin
        return UserImport(plugin.database, plugin.policy, lambda: plugin.changed(USER, None))

    # --- configuration sections -------------------------------------------------------

    def sections(self) -> list[str]:
        return self.database.read(lambda conn: ConfigRepository(conn).sections())

    def provision_section(self, section: str, shape: Shape, *, replace: bool = False) -> bool:
        """Create an empty section ahead of its first write; False if it exists already."""

        def provision(conn: Connection) -> bool:
            created = ConfigRepository(conn).provision(section, shape, replace=replace)
            if created:
                publish_change(conn, "config", (section,))  # a replaced section vanished
            return created

        created = self.database.write(provision)
        if created:
            self.plugin.changed("config", (section,))
        return created

    # --- keys: the lifecycle and sealing ------------------------------------------------

    def _keys(self, conn: Connection) -> KeyRepository:
        return self.plugin.keys(conn)

    def key_targets(self, target_type: str | None = None) -> list[tuple[str, str]]:
        return self.database.read(lambda conn: KeyRepository(conn).targets(target_type))

    def stored_keys(self, target_type: str, target: str) -> KeySet:
        """The target's keys as stored: private keys (opened), states and dates."""
        return self.database.read(lambda conn: self._keys(conn).load(target_type, target))

    def modify_keys(
        self, target_type: str, target: str, change: Callable[[KeySet], Sequence[Key]]
    ) -> KeySet:
        """Replace the target's set with ``change(stored)``, the row locked in between."""
        return self.database.write(
            lambda conn: self._keys(conn).modify(target_type, target, change)
        )

    def maintain_keys(
        self, moment: datetime.datetime, retire_for: datetime.timedelta
    ) -> list[lifecycle.Change]:
        return self.database.write(lambda conn: self._keys(conn).maintain(moment, retire_for))

    def rewrap(self) -> dict[str, int]:
        return self.database.write(lambda conn: self._keys(conn).rewrap())

    def sealing_report(self) -> dict[str, int]:
        return self.database.read(lambda conn: self._keys(conn).sealing_report())
