"""Omejdn's default plugins, over files: configuration, keys, users and clients.

They are active unless ``deactivate_defaults`` names them, exactly as in
Omejdn, so a deployment can run files and PostgreSQL side by side (reads ask
both, each backend writes only its own) while it moves over. Users and clients
are kept in the ``users`` and ``clients`` sections' files under backend name
``yaml``. A process-wide lock serializes read-modify-write of those files;
several processes sharing one directory are as unsafe as they are in Omejdn.

They speak Omejdn's current storage contract (upstream ``DefaultKeysDB`` and
``DefaultClientDB`` since "JWKS integration"), with upstream's bugs left out:

- ``KEYS_STORE(target_type, target, jwks)`` replaces the target's files
  (:meth:`FileStore.store_keys`; an empty set deletes them);
  ``KEYS_LOAD`` answers the set as a JWK Set with private members, or None
  when the target has no files (the host generates a key on ``create``, a
  backend never does); ``KEYS_LOAD_ALL`` answers every key of the type once
  (by kid), without private members, as the PostgreSQL backend does — it is
  what ``/jwks.json`` publishes.
- A client's ``metadata['jwks']`` is the key set of target
  ``clients/<client_id>``: create and update take it out of ``clients.yml``
  and store it as that target's files (a client written without ``jwks`` has
  no keys), get fills it back in with public members only (a ``jwks`` field
  that a hand-written ``clients.yml`` carries is answered when the client has
  no key files), delete removes the files. A client's keys are written
  before ``clients.yml``, so a crash in between leaves at worst keys of a
  client that does not exist, which the next write of that id replaces.
- Client ids and key targets must be usable as file names
  (:func:`omejdn_pg.names.check_file_name`), checked on every write.

The certificate events of the core before JWKS
(``CLIENT_AUTHENTICATION_CERTIFICATE_*``) are not registered: the current
core does not fire them, and the host facade reads certificates from the
client's ``jwks``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from omejdn_pg.client_metadata import check_client_metadata
from omejdn_pg.entities import Client, User
from omejdn_pg.errors import AlreadyExists, InvalidInput, NotFound
from omejdn_pg.host import events
from omejdn_pg.host.files.store import CLIENT_KEYS, FILE_BACKEND, FileStore
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.names import check_file_name, is_file_name
from omejdn_pg.passwords import PasswordPolicy, default_policy

if TYPE_CHECKING:
    from omejdn_pg.host.events import EventBus

__all__ = ["FILE_BACKEND", "FileStore", "register_defaults"]

JWKS_FIELD = "jwks"


class _FileUsers:
    def __init__(self, store: FileStore, policy: PasswordPolicy) -> None:
        self.store = store
        self.policy = policy
        self.lock = threading.Lock()

    def get(self, username: str, **_: Any) -> User | None:
        return self.store.user(username)

    def get_all(self, **_: Any) -> list[User]:
        return self.store.users()

    def create(self, user: User, user_backend: str | None = None, **_: Any) -> None:
        if user_backend != FILE_BACKEND:
            return
        with self.lock:
            users = self.store.users()
            if any(u.username == user.username for u in users):
                raise AlreadyExists(f"user {user.username!r} exists already")
            self.store.write_users([*users, user])
        user.backend = FILE_BACKEND

    def update(self, user: User, **_: Any) -> None:
        if user.backend == FILE_BACKEND:
            self._modify(user.username, lambda _old: user)

    def delete(self, username: str, **_: Any) -> None:
        with self.lock:
            users = self.store.users()
            kept = [u for u in users if u.username != username]
            if len(kept) != len(users):
                self.store.write_users(kept)

    def change_password(self, user: User, password: str, **_: Any) -> None:
        if user.backend != FILE_BACKEND:
            return
        new_hash = self.policy.hash(password)

        def replace(old: User) -> User:
            old.password = new_hash
            return old

        self._modify(user.username, replace)
        user.password = new_hash

    def verify_password(self, user: User, password: str, **_: Any) -> bool | None:
        if user.backend != FILE_BACKEND:
            return None
        stored = self.get(user.username)
        if stored is None:
            return False
        matches, _replacement = self.policy.verify(password, stored.password)
        return matches

    def _modify(self, username: str, change: Callable[[User], User]) -> None:
        with self.lock:
            users = self.store.users()
            for index, existing in enumerate(users):
                if existing.username == username:
                    users[index] = change(existing)
                    self.store.write_users(users)
                    return
            raise NotFound(f"user {username!r} does not exist in {self.store.base_dir}")

    def register(self, loader: EventBus) -> None:
        loader.register(events.USER_GET, self.get)
        loader.register(events.USER_GET_ALL, self.get_all)
        loader.register(events.USER_CREATE, self.create)
        loader.register(events.USER_UPDATE, self.update)
        loader.register(events.USER_DELETE, self.delete)
        loader.register(events.USER_AUTHENTICATION_PASSWORD_CHANGE, self.change_password)
        loader.register(events.USER_AUTHENTICATION_PASSWORD_VERIFY, self.verify_password)


class _FileClients:
    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.lock = threading.Lock()

    def get(self, client_id: str, **_: Any) -> Client | None:
        client = self.store.client(client_id)
        if client is None:
            return None
        keys = self.store.load_keys(CLIENT_KEYS, client_id) if is_file_name(client_id) else None
        return self._with_keys(client, keys)

    def get_all(self, **_: Any) -> list[Client]:
        clients = self.store.clients()
        if not clients:
            return []
        sets = self.store.key_sets(CLIENT_KEYS)  # one scan of keys/clients/ for all of them
        return [self._with_keys(c, sets.get(c.client_id)) for c in clients]

    def create(self, client: Client, client_backend: str | None = None, **_: Any) -> None:
        if client_backend != FILE_BACKEND:
            return
        record, keys = self._split(client)
        with self.lock:
            clients = self.store.clients()
            if any(c.client_id == record.client_id for c in clients):
                raise AlreadyExists(f"client {record.client_id!r} exists already")
            self.store.store_keys(CLIENT_KEYS, record.client_id, keys)
            self.store.write_clients([*clients, record])
        client.backend = FILE_BACKEND

    def update(self, client: Client, **_: Any) -> None:
        if client.backend != FILE_BACKEND:
            return
        record, keys = self._split(client)
        with self.lock:
            clients = self.store.clients()
            for index, existing in enumerate(clients):
                if existing.client_id == record.client_id:
                    clients[index] = record
                    self.store.store_keys(CLIENT_KEYS, record.client_id, keys)
                    self.store.write_clients(clients)
                    return
            raise NotFound(f"client {record.client_id!r} does not exist in {self.store.base_dir}")

    def delete(self, client_id: str, **_: Any) -> None:
        with self.lock:
            clients = self.store.clients()
            kept = [c for c in clients if c.client_id != client_id]
            if len(kept) != len(clients):
                self.store.write_clients(kept)
                if is_file_name(client_id):
                    self.store.store_keys(CLIENT_KEYS, client_id, KeySet())

    def _split(self, client: Client) -> tuple[Client, KeySet]:
        """The client as ``clients.yml`` holds it (no ``jwks``) and its key set; the
        caller's client is left as it is."""
        client_id = check_file_name(client.client_id, "client_id")
        metadata = dict(client.metadata)
        keys = KeySet.from_jwks(
            metadata.pop(JWKS_FIELD, None), what=f"client {client_id!r}: {JWKS_FIELD}"
        )
        check_client_metadata(metadata, f"client {client_id!r}")
        record = Client(metadata=metadata, attributes=dict(client.attributes), backend=FILE_BACKEND)
        return record, keys

    def _with_keys(self, client: Client, keys: KeySet | None) -> Client:
        """``client`` with ``metadata['jwks']``: its key files' public members; else the
        ``jwks`` field of ``clients.yml``, if any (public members); else none."""
        if keys:
            client.metadata[JWKS_FIELD] = keys.to_jwks(private=False)
            return client
        written = client.metadata.get(JWKS_FIELD)
        if written is not None:
            what = f"{self.store.section_path('clients')}: client {client.client_id!r}: jwks"
            if not isinstance(written, Mapping | list):
                raise InvalidInput(f"{what}: must be a JWK Set")
            client.metadata[JWKS_FIELD] = KeySet.from_jwks(written, what=what).to_jwks(
                private=False
            )
        return client

    def register(self, loader: EventBus) -> None:
        loader.register(events.CLIENT_GET, self.get)
        loader.register(events.CLIENT_GET_ALL, self.get_all)
        loader.register(events.CLIENT_CREATE, self.create)
        loader.register(events.CLIENT_UPDATE, self.update)
        loader.register(events.CLIENT_DELETE, self.delete)


class _FileKeys:
    def __init__(self, store: FileStore) -> None:
        self.store = store

    def store_keys(self, target_type: str, target: str, jwks: Any, **_: Any) -> None:
        # ``jwks`` is required: a KEYS_STORE of the older core (key_material=...)
        # must fail, not read as an empty set and delete the target's keys.
        keys = KeySet.from_jwks(jwks, what=f"KEYS_STORE {target_type}/{target}: jwks")
        self.store.store_keys(target_type, target, keys)

    def load(self, target_type: str, target: str, **_: Any) -> dict[str, Any] | None:
        keys = self.store.load_keys(target_type, target)
        return keys.to_jwks(private=True) if keys else None

    def load_all(self, target_type: str, **_: Any) -> dict[str, Any]:
        seen: set[str] = set()
        found = []
        for stored in self.store.stored_keys(target_type):
            if stored.key.kid not in seen:
                seen.add(stored.key.kid)
                found.append(stored.key.to_jwk(private=False))
        return {"keys": found}

    def register(self, loader: EventBus) -> None:
        loader.register(events.KEYS_STORE, self.store_keys)
        loader.register(events.KEYS_LOAD, self.load)
        loader.register(events.KEYS_LOAD_ALL, self.load_all)


def register_defaults(loader: EventBus, inactive: frozenset[str]) -> None:
    """Register Omejdn's file-based defaults that ``inactive`` does not name."""
    store = FileStore(loader.base_dir)
    if "config" not in inactive:
        loader.register(
            events.CONFIGURATION_STORE,
            lambda section, data, **_: store.write_section(section, data),
        )
        loader.register(events.CONFIGURATION_LOAD, lambda section, **_: store.read_section(section))
    if "keys" not in inactive:
        _FileKeys(store).register(loader)
    if "user" not in inactive:
        _FileUsers(store, default_policy()).register(loader)
    if "client" not in inactive:
        _FileClients(store).register(loader)
