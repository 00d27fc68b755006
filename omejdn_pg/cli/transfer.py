"""Import an Omejdn deployment directory into PostgreSQL, and export it back.

A deployment directory is Omejdn's file layout (``config/<section>.yml``, the
``users`` and ``clients`` sections holding the user and client lists, and
``keys/<target_type>/<target>[.<kid>].key|.cert|.yml``), read and written by
the same :class:`~omejdn_pg.host.files.store.FileStore` as the default file
plugins; its docstring has the layout's rules. Both the current layout
(several keys per target, ``.yml`` descriptors) and the one before JWKS
(``<target>.key`` + ``<target>.cert``, client certificates as
``keys/clients/<client_id>.cert``) are read: the second is the first's
one-key case without a descriptor.

Import is a plan, then its execution. The plan compares every user, client,
section and key target of the directory with what is stored (read in a
constant number of statements: one listing per kind, one load per section
and key target) and keeps only the differences; executing it fires one
storage event per difference through the host facade — exactly the writes
the server would make — all inside one ``host.batch()`` transaction. So an
import is all or nothing, a second run has nothing to do, and ``dry_run``
stops after the plan. The plan is made before that transaction opens, so
hashing plaintext passwords holds no connection; what another writer stores
in between makes the import fail whole (e.g. a user that now exists). The
trade-off: the plan holds the whole directory in memory, which is fine for the
tens of thousands of users Omejdn's YAML files can hold at all.

Users are the exception to "one event per difference" when PostgreSQL serves
them: one event per user made an import of 20,000 users take ten seconds, so
the users PostgreSQL holds, and the new ones when PostgreSQL is where new
users go, are compared and written set-wise by
:mod:`omejdn_pg.postgres.repositories.bulk` (staged by COPY, one comparison,
a few statements, with the checks of a single create), in the same batch as
everything else. Users of another backend go through their events as before.

Import merges: what is stored but absent from the directory is left alone,
but a user, client, section or key target the directory has is imported
whole (a key target's set replaces the stored set; a client's keys are its
``keys/clients/<client_id>*`` files, so a client without such files is
stored without keys). Plaintext passwords in ``users.yml`` (Omejdn hashes
them on load) are hashed on the way in, unless the stored hash already
verifies them, so they do not count as a change on every run.

Clients: the key set of a client of ``clients.yml`` is its JWKS
(``metadata['jwks']``, as Omejdn's client store keeps it) and is imported with
the client, by CLIENT_CREATE/UPDATE; a ``jwks`` field in ``clients.yml`` is
used when the client has no key files (key files win; a note says so). Key
targets of type ``clients`` whose client is not in ``clients.yml`` are
imported as key targets.

Keys compare by kid, public key, descriptor (``use``, ``alg``, the chain and
every other parameter, defaults filled in) and private key: a directory key
with its private key differs from a stored key without one; a directory key
without its private key never differs for that reason alone, because storing
it would keep the stored private key anyway. A key whose certificate is not
valid now is refused, naming its file, before anything is written.

Export reads everything inside one ``host.snapshot()`` (a single REPEATABLE
READ transaction), so the files are one consistent state even while the
server keeps writing. It writes the current layout into a new directory
beside the target (``.<name>.export-<pid>-*``, mode 0700; one whose process is
gone, killed mid-export, is deleted by the next export) and renames it into place
only when it is complete: an error leaves no partial directory and an
existing target untouched. ``force`` replaces an existing deployment
directory atomically too (an exchange of the two directories where the
kernel offers one, else rename away, rename in, delete the old), and refuses
a directory holding anything but ``config/`` and ``keys/``, so that a
mistyped path never deletes unrelated files. Every directory is 0700; every
``config/*.yml`` is 0600, because any section may hold a secret (client
secrets, password hashes, a plugin's bind password) and guessing by key
names would miss one; a ``.key`` with a private key is 0600; certificates,
public keys and descriptors are 0644. Keys without their private members in
what KEYS_LOAD answers (the lifecycle's ``next`` and ``retired`` keys) are
exported as public keys, which never sign: the file layout has no lifecycle.
What it cannot carry — lifecycle states, those private keys, sealing — is
said in one warning line per kind (:mod:`omejdn_pg.service.layout_losses`),
naming ``omejdn-pg backup``, which carries all of it. Import, for its part,
never changes the state of a key it finds stored (KEYS_STORE keeps it), so
importing an export back leaves retired keys retired and next keys next.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

from omejdn_pg import collector
from omejdn_pg.cli.hashing import map_passwords
from omejdn_pg.client_metadata import check_client_metadata
from omejdn_pg.entities import Client, User
from omejdn_pg.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidKeyMaterial,
    InvalidSectionName,
    InvalidValue,
    NotFound,
    TransferError,
)
from omejdn_pg.host.files.key_files import KeyFiles
from omejdn_pg.host.files.store import CLIENT_KEYS, CLIENTS_SECTION, USERS_SECTION, FileStore
from omejdn_pg.host.files.survey import check_section, ignored_files
from omejdn_pg.host.files.writing import fsync_directory
from omejdn_pg.json_values import check_json
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.names import check_file_name
from omejdn_pg.passwords import PasswordPolicy, default_policy
from omejdn_pg.postgres.repositories.bulk import Row, UserImport
from omejdn_pg.postgres.schema import validate_section_name
from omejdn_pg.service import layout_losses
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BACKEND_NAME

KINDS: Final = ("users", "clients", "config", "keys")
JWKS_FIELD: Final = "jwks"
LAYOUT: Final = frozenset({"config", "keys"})
"""What ``force`` may replace: a directory holding nothing else."""


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Change:
    """One user, client, section or key target, and what the import does with it."""

    kind: str
    name: str
    action: Action
    apply: Callable[[Host], None] | None = field(default=None, compare=False, repr=False)


@dataclass
class Report:
    """What an import or export did (or, for a dry run, would do)."""

    changes: list[Change] = field(default_factory=list)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.action is not Action.UNCHANGED]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{kind: {create, update, unchanged}}`` for every kind, zeros included."""
        tally = Counter((c.kind, c.action) for c in self.changes)
        return {kind: {a.value: tally[(kind, a)] for a in Action} for kind in KINDS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "changes": [
                {"kind": c.kind, "name": c.name, "action": c.action.value} for c in self.changed
            ],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[Change], None]
Target = tuple[str, str]


# --- reading a deployment directory -------------------------------------------------


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
        try:
            section_names.append(validate_section_name(file.stem))
        except InvalidSectionName as exc:
            raise InvalidSectionName(f"{file}: {exc}") from exc
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
        try:
            user = User.from_dict(
                item if complete else {k: v for k, v in item.items() if k != "password"}
            )
        except InvalidInput as exc:
            raise type(exc)(f"{file}: {exc}") from exc
        if complete:
            user.backend = None
            records[username] = user
        else:
            _check_values(user, file)
    return entries, records


def _check_values(user: User, file: Path) -> None:
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
        try:
            client = Client.from_dict(item)
            check_file_name(client.client_id, "client_id")
        except InvalidInput as exc:
            raise type(exc)(f"{where}: {exc}") from exc
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
            try:
                check_file_name(stored.target, "target")
            except InvalidValue as exc:
                raise InvalidValue(f"{stored.files.shown}: {exc}") from exc
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
    try:
        check_json(value, what)
    except InvalidValue as exc:
        raise InvalidValue(f"{file}: {exc}") from exc


# --- comparing keys --------------------------------------------------------------------


def _public_forms(keys: Iterable[Key]) -> dict[str, str]:
    """kid -> the key's public JWK (descriptor defaults filled in, chain included)."""
    return {key.kid: json.dumps(key.to_jwk(private=False), sort_keys=True) for key in keys}


def keys_differ(
    stored: KeySet, wanted: KeySet, hidden_private: Callable[[], set[str]] | None = None
) -> bool:
    """Whether storing ``wanted`` would change ``stored`` (see the module docstring).

    ``hidden_private`` names the kids whose private key is stored although
    ``stored`` came without it (asked only when it matters).
    """
    if _public_forms(stored) != _public_forms(wanted):
        return True
    held = {key.kid for key in stored if key.is_private}
    missing = {key.kid for key in wanted if key.is_private} - held
    if missing and hidden_private is not None:
        missing -= hidden_private()
    return bool(missing)


def _hidden_private(host: Host, target_type: str, target: str) -> Callable[[], set[str]]:
    """Kids of the target whose private key PostgreSQL holds, though KEYS_LOAD gives
    next and retired keys without it (so that importing them again is no change)."""

    def ask() -> set[str]:
        postgres = host.postgres
        if postgres is None or (
            postgres.settings is not None and "keys" not in postgres.settings.handlers
        ):
            return set()
        # The plugin's repository: with key_encryption on, stored private keys are
        # sealed and only its keyring opens them.
        stored = postgres.database.read(lambda conn: postgres.keys(conn).load(target_type, target))
        return {key.kid for key in stored if key.is_private}

    return ask


def _check_certificates(
    target_type: str,
    target: str,
    stored: KeySet,
    wanted: KeySet,
    files: Mapping[tuple[str, str, str], Path],
    where: str,
) -> None:
    """Refuse, naming the file, a new signing key whose certificate is not valid now:
    the storage would refuse to publish it (only in the middle of the import). A
    client's key is the client's registration: the storage keeps it with a warning."""
    if target_type == CLIENT_KEYS:
        return
    for key in wanted:
        old = stored.by_kid(key.kid)
        if old is not None and old.same_key(key):
            continue
        problem = key.certificate_problem()
        if problem is not None:
            shown = files.get((target_type, target, key.kid), where)
            raise InvalidKeyMaterial(
                f"{shown}: key {key.kid!r} of {target_type}/{target}: {problem}; "
                "renew the certificate or remove the key"
            )


# --- import -----------------------------------------------------------------------


def plan_import(
    deployment: Deployment, host: Host, policy: PasswordPolicy | None = None
) -> list[Change]:
    """The changes that make the store hold ``deployment`` (and the unchanged rest)."""
    policy = policy or default_policy()
    return [
        *_plan_users(deployment, host, policy),
        *_plan_clients(deployment, host),
        *_plan_sections(deployment.sections, host),
        *_plan_keys(deployment, host),
    ]


def _creating_backend(host: Host, group: str) -> Callable[[], str | None]:
    """Where new users (or clients) go, resolved once per import: the facade would read
    ``<group>_backend_default`` from the ``omejdn`` section again for every create — a
    statement each, inside the import's transaction. Users and clients are applied
    before any section, so each create would have read the same answer."""
    resolved: list[str | None] = []

    def backend() -> str | None:
        if not resolved:
            default = (host.users if group == "user" else host.clients).backend_default
            resolved.append(host.loader.creating_backend(group, default))
        return resolved[0]

    return backend


def _plan_users(deployment: Deployment, host: Host, policy: PasswordPolicy) -> list[Change]:
    entries, records = deployment.users, deployment.user_records
    file = deployment.path / "config" / f"{USERS_SECTION}.yml"
    bulk = host.users.bulk()
    if bulk is not None and bulk.may_stage():
        return _plan_users_in_bulk(entries, records, host, policy, bulk, file)
    for record in records.values():
        _check_values(record, file)
    stored = {u.username: u for u in host.users.all()}
    backend = _creating_backend(host, "user")
    changes = []
    for item in entries:
        existing = stored.get(item["username"])
        stored_hash = existing.password if existing is not None else None
        user = _planned_user(item, records, existing is not None, stored_hash, policy)
        if existing is None:
            changes.append(_add_user(user, backend()))
            continue
        changes.append(_record_change("users", user.username, user, existing, lambda h: h.users))
    return changes


def _plan_users_in_bulk(
    entries: Sequence[Mapping[str, Any]],
    records: Mapping[str, User],
    host: Host,
    policy: PasswordPolicy,
    bulk: UserImport,
    file: Path,
) -> list[Change]:
    """Users PostgreSQL holds, or will hold, compared and written set-wise (see
    :mod:`omejdn_pg.postgres.repositories.bulk`); users of other backends one by one.

    Every user is checked before any plaintext password is hashed: those of
    other backends here, the staged ones by :meth:`UserImport.check` alone.
    """
    elsewhere = {u.username: u for u in host.users.elsewhere()}
    staged: list[User] = []
    to_hash: list[Mapping[str, Any]] = []
    other: list[Mapping[str, Any]] = []
    for item in entries:
        name = item["username"]
        record = records.get(name)
        if name in elsewhere:
            if record is not None:
                _check_values(record, file)
            other.append(item)
        elif record is not None:
            # Only staged, never handed to a backend that could change it: no copy.
            staged.append(record)
        else:
            to_hash.append(item)  # checked whole when it was read
    rows: dict[str, Row] = {}
    _check_staged(bulk, staged, rows, file)
    hashes = bulk.stored_passwords(
        [item["username"] for item in to_hash if _is_plaintext(item.get("password"), policy)]
    )
    # bcrypt and argon2 release the GIL: every core hashes (omejdn_pg.cli.hashing).
    hashed = map_passwords(
        lambda item: _planned_user(
            item, records, item["username"] in hashes, hashes.get(item["username"]), policy
        ),
        to_hash,
        "hashing and checking passwords",
    )
    _check_staged(bulk, hashed, rows, file)
    changes: dict[str, Change] = {}
    for item in other:
        name = item["username"]
        existing = elsewhere[name]
        user = _planned_user(item, records, True, existing.password, policy)
        changes[name] = _record_change("users", name, user, existing, lambda h: h.users)
    plan = bulk.plan(rows)
    created = plan.comparison.created
    backend = _creating_backend(host, "user")
    if created and backend() != BACKEND_NAME:
        # New users go to another backend, one USER_CREATE each.
        plan = dataclasses.replace(
            plan, comparison=dataclasses.replace(plan.comparison, created=frozenset())
        )
    write = _Once(lambda _host: bulk.write(plan))
    for user in (*staged, *hashed):
        name = user.username
        if name in plan.comparison.created:
            changes[name] = Change("users", name, Action.CREATE, write)
        elif name in created:
            changes[name] = _add_user(dataclasses.replace(user), backend())
        elif name in plan.comparison.updated:
            changes[name] = Change("users", name, Action.UPDATE, write)
        else:
            changes[name] = Change("users", name, Action.UNCHANGED)
    return [changes[item["username"]] for item in entries]


def _check_staged(
    bulk: UserImport, users: Sequence[User], into: dict[str, Row], file: Path
) -> None:
    """:meth:`UserImport.check`, its refusal naming ``file`` (it names the user and field)."""
    if not users:
        return
    try:
        bulk.check(users, into)
    except InvalidInput as exc:
        raise type(exc)(f"{file}: {exc}") from exc


class _Once:
    """One write for many changes: the first of them to be applied runs it."""

    def __init__(self, write: Callable[[Host], None]) -> None:
        self._write = write
        self._done = False

    def __call__(self, host: Host) -> None:
        if not self._done:
            self._done = True
            self._write(host)


def _is_plaintext(password: object, policy: PasswordPolicy) -> bool:
    return isinstance(password, str) and bool(password) and not policy.is_hash(password)


def _planned_user(
    item: Mapping[str, Any],
    records: Mapping[str, User],
    stored: bool,
    stored_hash: str | None,
    policy: PasswordPolicy,
) -> User:
    """``item`` as the import stores it; a plaintext password hashed, unless the stored
    user's hash (``stored_hash``, if ``stored``) verifies it."""
    record = records.get(item["username"])
    if record is not None:
        return dataclasses.replace(record)  # a write may set its backend
    data = dict(item)
    password = data.get("password")
    if isinstance(password, str) and _is_plaintext(password, policy):
        # Omejdn hashes a plaintext password on load; keep the stored hash if it matches.
        known = stored and policy.verify(password, stored_hash)[0]
        data["password"] = stored_hash if known else policy.hash(password)
    user = User.from_dict(data)
    user.backend = None
    return user


def _add_user(user: User, backend: str | None) -> Change:
    return Change("users", user.username, Action.CREATE, lambda h: h.users.add(user, backend))


def _plan_clients(deployment: Deployment, host: Host) -> list[Change]:
    stored = {c.client_id: c for c in host.clients.all()}
    backend = _creating_backend(host, "client")
    clients_file = deployment.path / "config" / f"{CLIENTS_SECTION}.yml"
    changes = []
    for client in deployment.clients:
        client_id = client.client_id
        keys = deployment.client_keys.get(client_id, KeySet())
        record = planned_client(deployment, client)
        existing = stored.get(client_id)
        if existing is None:
            _check_certificates(
                CLIENT_KEYS, client_id, KeySet(), keys, deployment.key_files, str(clients_file)
            )
            changes.append(_add(record, backend()))
            continue
        metadata = dict(existing.metadata)
        stored_keys = KeySet.from_jwks(
            metadata.pop(JWKS_FIELD, None), what=f"stored client {client_id!r}: jwks"
        )
        differs = (
            metadata != client.metadata
            or existing.attributes != client.attributes
            or keys_differ(stored_keys, keys, _hidden_private(host, CLIENT_KEYS, client_id))
        )
        if not differs:
            changes.append(Change("clients", client_id, Action.UNCHANGED))
            continue
        _check_certificates(
            CLIENT_KEYS, client_id, stored_keys, keys, deployment.key_files, str(clients_file)
        )
        record.backend = existing.backend
        changes.append(_save(record))
    return changes


def planned_client(deployment: Deployment, client: Client, *, private: bool = True) -> Client:
    """``client`` as the import writes it: its keys as ``metadata['jwks']`` (with their
    private members, unless ``private`` is false, e.g. to compare with a CLIENT_GET)."""
    record = Client(metadata=dict(client.metadata), attributes=dict(client.attributes))
    keys = deployment.client_keys.get(client.client_id)
    if keys:
        record.metadata[JWKS_FIELD] = keys.to_jwks(private=private)
    return record


def _add(client: Client, backend: str | None) -> Change:
    return Change(
        "clients", client.client_id, Action.CREATE, lambda h: h.clients.add(client, backend)
    )


def _save(client: Client) -> Change:
    return Change("clients", client.client_id, Action.UPDATE, lambda h: h.clients.save(client))


class _Users(Protocol):
    """The host's users, as far as an import updates them."""

    def save(self, record: User, /) -> None: ...


def _record_change(
    kind: str,
    name: str,
    record: User,
    existing: User,
    records: Callable[[Host], _Users],
) -> Change:
    """Save ``record`` (in the stored one's backend) if it differs from what is, else leave it."""
    if record.to_dict() != existing.to_dict():
        record.backend = existing.backend
        return Change(kind, name, Action.UPDATE, lambda host: records(host).save(record))
    return Change(kind, name, Action.UNCHANGED)


def _plan_sections(sections: Mapping[str, Any], host: Host) -> list[Change]:
    return [
        _change("config", name, host.config.read(name), data, _write_section(name, data))
        for name, data in sections.items()
    ]


def _write_section(name: str, data: Any) -> Callable[[Host], None]:
    return lambda host: host.config.write(name, data)


def _plan_keys(deployment: Deployment, host: Host) -> list[Change]:
    changes = []
    for (target_type, target), keys in deployment.keys.items():
        stored = host.keys.load(target_type, target)
        name = f"{target_type}/{target}"
        if not stored:
            action = Action.CREATE
        elif keys_differ(stored, keys, _hidden_private(host, target_type, target)):
            action = Action.UPDATE
        else:
            changes.append(Change("keys", name, Action.UNCHANGED))
            continue
        _check_certificates(target_type, target, stored, keys, deployment.key_files, name)
        changes.append(Change("keys", name, action, _store_keys(target_type, target, keys)))
    return changes


def _store_keys(target_type: str, target: str, keys: KeySet) -> Callable[[Host], None]:
    return lambda host: host.keys.store(target_type, target, keys)


def _change(
    kind: str, name: str, stored: object, wanted: object, write: Callable[[Host], None]
) -> Change:
    """Create if nothing is stored (None), update if ``stored`` differs from ``wanted``,
    else leave it; ``write`` does either."""
    if stored is None:
        return Change(kind, name, Action.CREATE, write)
    if stored != wanted:
        return Change(kind, name, Action.UPDATE, write)
    return Change(kind, name, Action.UNCHANGED)


MAX_IMPORT_ATTEMPTS: Final = 3
"""Plans tried when concurrent writers keep changing what an import is about to write."""


def import_deployment(
    path: Path,
    host: Host,
    *,
    dry_run: bool = False,
    policy: PasswordPolicy | None = None,
    on_plan: Callable[[list[Change]], None] | None = None,
    progress: Progress | None = None,
) -> Report:
    """Make the store hold the deployment at ``path``, in one transaction.

    ``on_plan`` sees the plan before anything is written (e.g. to size a
    progress bar); ``progress`` is called after each change is applied.
    """
    # The whole directory is held until the end: see omejdn_pg.collector.
    with collector.paused():
        started = time.perf_counter()
        deployment = read_deployment(path)
        report = Report(dry_run=dry_run, notes=list(deployment.notes))
        # Plan outside the transaction: hashing and verifying plaintext passwords (bcrypt,
        # a quarter second each) must not hold a transaction and a pooled connection.
        for attempt in range(1, MAX_IMPORT_ATTEMPTS + 1):
            report.changes = plan_import(deployment, host, policy)
            if on_plan is not None:
                on_plan(report.changed)
            if dry_run or not report.changed:
                break
            try:
                with host.batch():
                    for change in report.changed:
                        assert change.apply is not None
                        change.apply(host)
                        if progress is not None:
                            progress(change)
                break
            except (AlreadyExists, NotFound):
                # Someone stored a change between the plan and the batch (another
                # import of an overlapping directory, say): the batch rolled back
                # whole, so plan again against what is stored now.
                if attempt == MAX_IMPORT_ATTEMPTS:
                    raise
        report.seconds = time.perf_counter() - started
        return report


# --- export -----------------------------------------------------------------------


@dataclass
class Snapshot:
    """Everything stored, read at one instant."""

    users: list[User]
    clients: list[Client]
    sections: dict[str, Any]
    keys: dict[Target, KeySet]
    losses: list[str] = field(default_factory=list)
    """What the file layout cannot carry, one warning line per kind."""


def read_snapshot(host: Host) -> Snapshot:
    """Every user, client, section and key target, from one consistent snapshot."""
    with host.snapshot():
        users = host.users.all()
        clients = host.clients.all()
        sections = {name: host.config.read(name) for name in host.config.sections()}
        keys = {
            (target_type, target): host.keys.load(target_type, target)
            for target_type, target in host.keys.targets()
        }
        postgres = host.postgres
        losses = []
        if postgres is not None and (
            postgres.settings is None or "keys" in postgres.settings.handlers
        ):
            losses = layout_losses.losses(postgres.database.read(layout_losses.stored_keys))
    return Snapshot(users, clients, sections, keys, losses)


def export_deployment(host: Host, path: Path, *, force: bool = False) -> Report:
    """Write the stored state to ``path`` in Omejdn's current layout, all or nothing.

    ``path`` must not exist or be empty, unless ``force``: then an existing
    deployment directory (holding nothing but ``config/`` and ``keys/``) is
    replaced whole.
    """
    started = time.perf_counter()
    path = Path(path)
    replace = _check_export_target(path, force)
    snapshot = read_snapshot(host)
    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _clear_stale_staging(parent, path.name)
        prefix = f".{path.name}.export-{os.getpid()}-"
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise TransferError(f"{exc.filename or parent}: cannot write: {exc.strerror}") from exc
    try:
        report = _write_snapshot(snapshot, FileStore(staging, private=True))
        _fsync_tree(staging)
        _move_into_place(staging, path, replace)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise TransferError(
            f"{exc.filename or path}: cannot write: {exc.strerror or exc}; "
            f"nothing was exported to {path}"
        ) from exc
    except InvalidInput as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise TransferError(f"{path}: nothing was exported: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - started
    return report


def _check_export_target(path: Path, force: bool) -> bool:
    """Whether ``path`` holds a deployment to replace; raise if it may not be written."""
    if path.is_symlink():
        raise TransferError(f"{path}: is a symbolic link; give the directory itself")
    if not path.exists():
        return False
    if not path.is_dir():
        raise TransferError(f"{path}: exists and is not a directory")
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries:
        return False
    if not force:
        raise TransferError(
            f"{path}: the directory is not empty (use --force to replace it with the export)"
        )
    foreign = [name for name in entries if name not in LAYOUT]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise TransferError(
            f"{path}: --force replaces the whole directory, and it holds {shown}, which "
            "is not part of Omejdn's layout (config/, keys/); export somewhere else"
        )
    return True


def _write_snapshot(snapshot: Snapshot, store: FileStore) -> Report:
    report = Report()
    store.write_users(sorted(snapshot.users, key=lambda u: u.username))
    report.changes += [Change("users", u.username, Action.CREATE) for u in snapshot.users]
    keys = dict(snapshot.keys)
    records = []
    for client in sorted(snapshot.clients, key=lambda c: c.client_id):
        check_file_name(client.client_id, "client_id")
        metadata = dict(client.metadata)
        jwks = metadata.pop(JWKS_FIELD, None)
        if jwks is not None and (CLIENT_KEYS, client.client_id) not in keys:
            # A client of a backend whose keys are not key targets of this host.
            keys[(CLIENT_KEYS, client.client_id)] = KeySet.from_jwks(
                jwks, what=f"client {client.client_id!r}: jwks"
            )
        records.append(Client(metadata=metadata, attributes=dict(client.attributes)))
        report.changes.append(Change("clients", client.client_id, Action.CREATE))
    store.write_clients(records)
    for name, data in sorted(snapshot.sections.items()):
        if name in (USERS_SECTION, CLIENTS_SECTION):
            report.notes.append(
                f"configuration section {name!r} skipped: config/{name}.yml holds the {name} table"
            )
            continue
        if data is None:
            continue
        store.write_section(name, data)
        report.changes.append(Change("config", name, Action.CREATE))
    for (target_type, target), key_set in sorted(keys.items()):
        if not key_set:
            continue
        store.store_keys(target_type, target, key_set)
        report.changes.append(Change("keys", f"{target_type}/{target}", Action.CREATE))
    report.notes += snapshot.losses
    return report


def _fsync_tree(root: Path) -> None:
    """Make the directory entries of the staged export durable before it is renamed in
    (the files were synced when written)."""
    for folder, _dirs, _files in os.walk(root, topdown=False):
        fsync_directory(Path(folder))


def _clear_stale_staging(parent: Path, name: str) -> None:
    """Delete ``.NAME.export-PID-*`` staging folders whose export was killed (SIGKILL,
    power loss): its process is gone. One of a running export is left alone."""
    for folder in parent.glob(f".{name}.export-*-*"):
        pid = folder.name[len(f".{name}.export-") :].split("-", 1)[0]
        if not pid.isdigit() or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue  # another account's process: alive


def _move_into_place(staging: Path, path: Path, replace: bool) -> None:
    """Rename the complete export to ``path``; with ``replace``, swap it with the
    directory there and delete that one."""
    if not replace:
        # rename(2) onto a missing or empty directory is atomic; a directory that
        # became non-empty meanwhile makes it fail (ENOTEMPTY), changing nothing.
        os.rename(staging, path)
        return
    if _exchange(staging, path):
        shutil.rmtree(staging)  # now the old directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=staging.parent))
    os.rename(path, old / path.name)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(old / path.name, path)
        old.rmdir()
        raise
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if
    the platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
