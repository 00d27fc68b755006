"""The ``postgres_backend`` plugin: ``init(loader)`` connects, checks the schema, wires adapters.

The adapters themselves are :mod:`omejdn_pg.postgres.handlers` and the state
and cache paths they share :mod:`omejdn_pg.postgres.plugin_core`; this module
is the wiring only, so what a deployment's configuration turns on (handler
groups, key event form, cache) is read in one place.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection

from omejdn_pg.host import events
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.handlers import EventHandlers
from omejdn_pg.sealing import Keyring
from omejdn_pg.settings.backend import BACKEND_NAME
from omejdn_pg.settings.validation import require_chosen_connection

log = logging.getLogger(__name__)


class PostgresBackendPlugin(EventHandlers):
    """Omejdn's storage in PostgreSQL, for the handler groups the configuration names."""

    name = BACKEND_NAME

    def __repr__(self) -> str:
        where = self.settings.connection.describe() if self.settings else "not initialised"
        return f"PostgresBackendPlugin({where})"

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


def _check_schema(conn: Connection) -> None:
    from omejdn_pg.postgres.migrate import check_schema

    check_schema(conn)
