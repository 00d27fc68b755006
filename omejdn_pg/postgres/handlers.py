"""Handler adapters: Omejdn's events translated into repository calls, one unit of work each.

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
"""

from __future__ import annotations

from typing import Any, TypeVar

from cryptography import x509
from sqlalchemy import Connection

from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.postgres.cache.entries import CLIENT, CONFIG, KEYS, KEYS_ALL, USER
from omejdn_pg.postgres.plugin_core import PluginCore
from omejdn_pg.postgres.repositories.client_reads import all_clients, find_client
from omejdn_pg.postgres.repositories.clients import ClientRepository
from omejdn_pg.postgres.repositories.config import ConfigRepository, load_section
from omejdn_pg.postgres.repositories.key_reads import load_all_keys, load_keys
from omejdn_pg.postgres.repositories.users import (
    UserRepository,
    all_users,
    find_user,
    stored_password,
)
from omejdn_pg.settings.backend import BACKEND_NAME

T = TypeVar("T")


class EventHandlers(PluginCore):
    """One method per event this backend serves; the plugin's ``register`` wires them."""

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
