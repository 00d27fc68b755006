"""Reading a deployment directory: every file read and checked, nothing compared yet.

A deployment directory is Omejdn's file layout (``config/<section>.yml``, the
``users`` and ``clients`` sections holding the user and client lists, and
``keys/<target_type>/<target>[.<kid>].key|.cert|.yml``), read by the same
:class:`~omejdn_pg.host.files.store.FileStore` as the default file plugins;
its docstring has the layout's rules. Both the current layout (several keys
per target, ``.yml`` descriptors) and the one before JWKS (``<target>.key`` +
``<target>.cert``, client certificates as ``keys/clients/<client_id>.cert``)
are read: the second is the first's one-key case without a descriptor.

Clients: the key set of a client of ``clients.yml`` is its JWKS
(``metadata['jwks']``, as Omejdn's client store keeps it); a ``jwks`` field in
``clients.yml`` is used when the client has no key files (key files win; a
note says so). Key targets of type ``clients`` whose client is not in
``clients.yml`` stay key targets. Every error names the file (and entry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from omejdn_pg.client_metadata import check_client_metadata
from omejdn_pg.entities import Client, User
from omejdn_pg.errors import InvalidInput, InvalidSectionName, InvalidValue, TransferError, located
from omejdn_pg.host.files.key_files import KeyFiles
from omejdn_pg.host.files.store import CLIENT_KEYS, CLIENTS_SECTION, USERS_SECTION, FileStore
from omejdn_pg.host.files.survey import check_section, ignored_files
from omejdn_pg.json_values import check_json
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.names import check_file_name
from omejdn_pg.passwords import default_policy
from omejdn_pg.postgres.schema import validate_section_name
from omejdn_pg.service.transfer.report import Target

JWKS_FIELD: Final = "jwks"


@dataclass
class Deployment:
    """A deployment directory, read and checked, not yet compared with anything."""

    path: Path
    users: list[Mapping[str, Any]]
    clients: list[Client]
    """As ``clients.yml`` has them, without ``jwks`` (their keys are in ``client_keys``)."""
    sections: dict[str, Any]
    keys: dict[Target, KeySet]
    """Key targets other than the keys of the clients of ``clients.yml``."""
    notes: list[str]
    client_keys: dict[str, KeySet] = field(default_factory=dict)
    key_files: dict[tuple[str, str, str], Path] = field(default_factory=dict)
    """``(target_type, target, kid)`` -> the file that holds the key, for messages."""
    user_records: dict[str, User] = field(default_factory=dict)
    """The users whose password needs no hashing (a hash, or none), as read; never mutated.
    Their attributes and consent are checked where they are planned."""


def read_deployment(path: Path) -> Deployment:
    """Read every file of the deployment at ``path``; errors name the file (and line)."""
    if not path.exists():
        raise TransferError(f"{path}: no such directory")
    if not path.is_dir():
        raise TransferError(f"{path}: not a directory")
    store = FileStore(path, confined=True)
    if not store.config_dir.is_dir() and not store.keys_dir.is_dir():
        raise TransferError(
            f"{path}: not an Omejdn deployment directory (it has neither config/ nor keys/)"
        )
    notes = ignored_files(path)
    section_names = []
    for file in sorted(store.config_dir.glob("*.yml")) if store.config_dir.is_dir() else []:
        with located(file, InvalidSectionName):
            section_names.append(validate_section_name(file.stem))
    users, user_records = _user_entries(store)
    clients, written_jwks = _clients(store)
    sections: dict[str, Any] = {}
    for name in section_names:
        if name in (USERS_SECTION, CLIENTS_SECTION):
            continue
        data = store.read_section(name)
        file = store.section_path(name)
        if data is None:
            notes.append(f"{file}: empty, skipped")
            continue
        if not isinstance(data, dict | list):
            raise InvalidValue(
                f"{file}: a configuration section must be a mapping or a list, "
                f"got {type(data).__name__}"
            )
        _check_json(data, file, f"section {name}")
        check_section(name, data, file)
        sections[name] = data
    keys, key_files = _key_sets(store, notes)
    client_keys: dict[str, KeySet] = {}
    clients_file = store.section_path(CLIENTS_SECTION)
    for client in clients:
        client_id = client.client_id
        from_files = keys.pop((CLIENT_KEYS, client_id), None)
        written = written_jwks.get(client_id)
        if from_files is not None:
            client_keys[client_id] = from_files
            if written is not None:
                notes.append(
                    f"{clients_file}: client {client_id!r}: its 'jwks' field is ignored; "
                    f"keys/{CLIENT_KEYS}/{client_id}* hold its keys"
                )
        elif written is not None:
            client_keys[client_id] = written
    return Deployment(
        path, users, clients, sections, keys, notes, client_keys, key_files, user_records
    )


def _entries(store: FileStore, section: str) -> list[Mapping[str, Any]]:
    data = store.read_section(section)
    file = store.section_path(section)
    if data is None:
        return []
    if not isinstance(data, list):
        raise InvalidValue(f"{file}: expected a list of {section}, got {type(data).__name__}")
    for index, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise InvalidValue(f"{file}: entry {index + 1} is not a mapping")
    return data


def _user_entries(store: FileStore) -> tuple[list[Mapping[str, Any]], dict[str, User]]:
    """Users as written (passwords possibly plaintext), checked but not hashed yet; and
    those whose password needs no hashing, as users.

    The values of those users (attributes and consent, the bulk of a users.yml)
    are checked once, where they are planned (:func:`_plan_users`), by
    PostgreSQL's own checks if it stages them; a user to hash is checked whole
    now, so that a bad entry fails before any hashing.
    """
    file = store.section_path(USERS_SECTION)
    entries = _entries(store, USERS_SECTION)
    seen: set[str] = set()
    records: dict[str, User] = {}
    policy = default_policy()
    for index, item in enumerate(entries):
        username = item.get("username")
        if not isinstance(username, str) or not username:
            raise InvalidValue(
                f"{file}: entry {index + 1}: a user needs a non-empty string 'username'"
            )
        if username in seen:
            raise InvalidValue(f"{file}: entry {index + 1}: user {username!r} appears twice")
        seen.add(username)
        password = item.get("password")
        if password is not None and not isinstance(password, str):
            raise InvalidValue(
                f"{file}: entry {index + 1}: user {username!r}: 'password' must be a string"
            )
        # A user with a hash (or none) is complete already.
        complete = not password or policy.is_hash(password)
        with located(file, InvalidInput):
            user = User.from_dict(
                item if complete else {k: v for k, v in item.items() if k != "password"}
            )
        if complete:
            user.backend = None
            records[username] = user
        else:
            check_values(user, file)
    return entries, records


def check_values(user: User, file: Path) -> None:
    """What PostgreSQL cannot store of ``user``'s attributes and consent, naming ``file``."""
    _check_json(user.attributes, file, f"user {user.username!r}: attributes")
    _check_json(user.consent, file, f"user {user.username!r}: consent")


def _clients(store: FileStore) -> tuple[list[Client], dict[str, KeySet]]:
    """The clients of ``clients.yml`` without ``jwks``, and the ``jwks`` fields it has."""
    file = store.section_path(CLIENTS_SECTION)
    clients: list[Client] = []
    written: dict[str, KeySet] = {}
    seen: set[str] = set()
    for index, item in enumerate(_entries(store, CLIENTS_SECTION)):
        where = f"{file}: entry {index + 1}"
        with located(where, InvalidInput):
            client = Client.from_dict(item)
            check_file_name(client.client_id, "client_id")
        if client.client_id in seen:
            raise InvalidValue(f"{where}: client {client.client_id!r} appears twice")
        seen.add(client.client_id)
        jwks = client.metadata.pop(JWKS_FIELD, None)
        if jwks is not None:
            written[client.client_id] = KeySet.from_jwks(
                jwks, what=f"{where}: client {client.client_id!r}: {JWKS_FIELD}"
            )
        _check_json(client.metadata, file, f"client {client.client_id!r}")
        check_client_metadata(client.metadata, f"{where}: client {client.client_id!r}")
        _check_json(client.attributes, file, f"client {client.client_id!r}: attributes")
        client.backend = None
        clients.append(client)
    return clients, written


def _key_sets(
    store: FileStore, notes: list[str]
) -> tuple[dict[Target, KeySet], dict[tuple[str, str, str], Path]]:
    """Every key target of the directory (one scan per target type) and each key's file."""
    grouped: dict[Target, list[Key]] = {}
    files: dict[tuple[str, str, str], Path] = {}
    groups: dict[Target, KeyFiles] = {}
    for target_type in store.key_types():
        for stored in store.stored_keys(target_type):
            with located(stored.files.shown, InvalidValue):
                check_file_name(stored.target, "target")
            if ".yml" in stored.files.suffixes:
                _check_json(stored.key.params, stored.files.path(".yml"), "descriptor")
            grouped.setdefault((target_type, stored.target), []).append(stored.key)
            files[(target_type, stored.target, stored.key.kid)] = stored.files.shown
            groups.setdefault((target_type, stored.target), stored.files)
    for (target_type, target), first in groups.items():
        prefix, dot, last = target.rpartition(".")
        if dot and prefix and (target_type, prefix) in grouped:
            notes.append(
                f"{first.folder / target}.*: read as target {target!r}, not as key "
                f"{last!r} of target {prefix!r} (no .yml there records kid {last!r}, and "
                "it is not the key's thumbprint)"
            )
    return {target: KeySet(keys) for target, keys in grouped.items()}, files


def _check_json(value: object, file: Path, what: str) -> None:
    with located(file, InvalidValue):
        check_json(value, what)
