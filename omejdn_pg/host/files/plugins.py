"""Omejdn's default plugins, over files: configuration, keys, users and clients.

They are active unless ``deactivate_defaults`` names them, exactly as in
Omejdn, so a deployment can run files and PostgreSQL side by side (reads ask
both, each backend writes only its own) while it moves over. Users and clients
are kept in the ``users`` and ``clients`` sections' files under backend name
``yaml``. A process-wide lock serializes read-modify-write of those files;
several processes sharing one directory are as unsafe as they are in Omejdn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509

from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import AlreadyExists, NotFound
from omejdn_pg.host import events
from omejdn_pg.host.files.store import CLIENT_CERTIFICATES, FILE_BACKEND, FileStore
from omejdn_pg.passwords import PasswordPolicy, default_policy

if TYPE_CHECKING:
    from omejdn_pg.host.events import EventBus

__all__ = ["FILE_BACKEND", "FileStore", "register_defaults"]


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
        return self.store.client(client_id)

    def get_all(self, **_: Any) -> list[Client]:
        return self.store.clients()

    def create(self, client: Client, client_backend: str | None = None, **_: Any) -> None:
        if client_backend != FILE_BACKEND:
            return
        with self.lock:
            clients = self.store.clients()
            if any(c.client_id == client.client_id for c in clients):
                raise AlreadyExists(f"client {client.client_id!r} exists already")
            self.store.write_clients([*clients, client])
        client.backend = FILE_BACKEND

    def update(self, client: Client, **_: Any) -> None:
        if client.backend != FILE_BACKEND:
            return
        with self.lock:
            clients = self.store.clients()
            for index, existing in enumerate(clients):
                if existing.client_id == client.client_id:
                    clients[index] = client
                    self.store.write_clients(clients)
                    return
            raise NotFound(f"client {client.client_id!r} does not exist in {self.store.base_dir}")

    def delete(self, client_id: str, **_: Any) -> None:
        with self.lock:
            clients = self.store.clients()
            kept = [c for c in clients if c.client_id != client_id]
            if len(kept) != len(clients):
                self.store.write_clients(kept)
                self.store.store_key(CLIENT_CERTIFICATES, client_id, KeyMaterial())

    def certificate(self, client: Client, **_: Any) -> x509.Certificate | None:
        if client.backend != FILE_BACKEND:
            return None
        material = self.store.load_key(CLIENT_CERTIFICATES, client.client_id)
        return material.certs[0] if material.certs else None

    def update_certificate(
        self, client: Client, new_cert: x509.Certificate | None, **_: Any
    ) -> None:
        if client.backend != FILE_BACKEND:
            return
        material = KeyMaterial(certs=[new_cert]) if new_cert is not None else KeyMaterial()
        self.store.store_key(CLIENT_CERTIFICATES, client.client_id, material)

    def register(self, loader: EventBus) -> None:
        loader.register(events.CLIENT_GET, self.get)
        loader.register(events.CLIENT_GET_ALL, self.get_all)
        loader.register(events.CLIENT_CREATE, self.create)
        loader.register(events.CLIENT_UPDATE, self.update)
        loader.register(events.CLIENT_DELETE, self.delete)
        loader.register(events.CLIENT_AUTHENTICATION_CERTIFICATE_GET, self.certificate)
        loader.register(events.CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE, self.update_certificate)


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
        loader.register(
            events.KEYS_STORE,
            lambda target_type, target, key_material, **_: store.store_key(
                target_type, target, key_material
            ),
        )
        loader.register(
            events.KEYS_LOAD,
            lambda target_type, target, **_: store.load_key(target_type, target),
        )
        loader.register(
            events.KEYS_LOAD_ALL,
            lambda target_type, **_: [
                store.load_key(kind, target) for kind, target in store.key_targets(target_type)
            ],
        )
    if "user" not in inactive:
        _FileUsers(store, default_policy()).register(loader)
    if "client" not in inactive:
        _FileClients(store).register(loader)
