"""Import an Omejdn deployment directory into PostgreSQL, and export it back.

A deployment directory is Omejdn's file layout (``config/<section>.yml``, the
``users`` and ``clients`` sections holding the user and client lists, and
``keys/<target_type>/<target>.key|.cert``), read and written by the same
:class:`~omejdn_pg.host.files.store.FileStore` as the default file plugins.

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

Import merges: what is stored but absent from the directory is left alone.
Plaintext passwords in ``users.yml`` (Omejdn hashes them on load) are hashed
on the way in, unless the stored hash already verifies them, so they do not
count as a change on every run.

Export reads everything inside one ``host.snapshot()`` (a single REPEATABLE
READ transaction), so the files are one consistent state even while the
server keeps writing; it then writes Omejdn's layout, private keys with mode
0600.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import InvalidInput, InvalidSectionName, InvalidValue, TransferError
from omejdn_pg.host.facade import Host
from omejdn_pg.host.files.store import CLIENTS_SECTION, USERS_SECTION, FileStore
from omejdn_pg.passwords import PasswordPolicy, default_policy
from omejdn_pg.postgres.repositories.common import check_json
from omejdn_pg.postgres.schema import validate_section_name

KINDS: Final = ("users", "clients", "config", "keys")


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


# --- reading a deployment directory -------------------------------------------------


@dataclass
class Deployment:
    """A deployment directory, read and checked, not yet compared with anything."""

    path: Path
    users: list[Mapping[str, Any]]
    clients: list[Client]
    sections: dict[str, Any]
    keys: dict[tuple[str, str], KeyMaterial]
    notes: list[str]


def read_deployment(path: Path) -> Deployment:
    """Read every file of the deployment at ``path``; errors name the file (and line)."""
    if not path.exists():
        raise TransferError(f"{path}: no such directory")
    if not path.is_dir():
        raise TransferError(f"{path}: not a directory")
    store = FileStore(path)
    if not store.config_dir.is_dir() and not store.keys_dir.is_dir():
        raise TransferError(
            f"{path}: not an Omejdn deployment directory (it has neither config/ nor keys/)"
        )
    notes: list[str] = []
    section_names = []
    for file in sorted(store.config_dir.glob("*.yml")) if store.config_dir.is_dir() else []:
        try:
            section_names.append(validate_section_name(file.stem))
        except InvalidSectionName as exc:
            raise InvalidSectionName(f"{file}: {exc}") from exc
    users = _user_entries(store)
    clients = _clients(store)
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
        sections[name] = data
    keys = {}
    for target_type, target in store.key_targets():
        keys[(target_type, target)] = store.load_key(target_type, target)
    return Deployment(path, users, clients, sections, keys, notes)


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


def _user_entries(store: FileStore) -> list[Mapping[str, Any]]:
    """Users as written (passwords possibly plaintext), checked but not hashed yet."""
    file = store.section_path(USERS_SECTION)
    entries = _entries(store, USERS_SECTION)
    seen: set[str] = set()
    for index, item in enumerate(entries):
        where = f"{file}: entry {index + 1}"
        username = item.get("username")
        if not isinstance(username, str) or not username:
            raise InvalidValue(f"{where}: a user needs a non-empty string 'username'")
        if username in seen:
            raise InvalidValue(f"{where}: user {username!r} appears twice")
        seen.add(username)
        password = item.get("password")
        if password is not None and not isinstance(password, str):
            raise InvalidValue(f"{where}: user {username!r}: 'password' must be a string")
        # Validate everything but the password now, so a bad entry fails before any hashing.
        try:
            user = User.from_dict({k: v for k, v in item.items() if k != "password"})
        except InvalidInput as exc:
            raise type(exc)(f"{file}: {exc}") from exc
        _check_json(user.attributes, file, f"user {username!r}: attributes")
        _check_json(user.consent, file, f"user {username!r}: consent")
    return entries


def _clients(store: FileStore) -> list[Client]:
    file = store.section_path(CLIENTS_SECTION)
    clients: list[Client] = []
    seen: set[str] = set()
    for index, item in enumerate(_entries(store, CLIENTS_SECTION)):
        try:
            client = Client.from_dict(item)
        except InvalidInput as exc:
            raise type(exc)(f"{file}: entry {index + 1}: {exc}") from exc
        if client.client_id in seen:
            raise InvalidValue(
                f"{file}: entry {index + 1}: client {client.client_id!r} appears twice"
            )
        seen.add(client.client_id)
        _check_json(client.metadata, file, f"client {client.client_id!r}")
        _check_json(client.attributes, file, f"client {client.client_id!r}: attributes")
        client.backend = None
        clients.append(client)
    return clients


def _check_json(value: object, file: Path, what: str) -> None:
    try:
        check_json(value, what)
    except InvalidValue as exc:
        raise InvalidValue(f"{file}: {exc}") from exc


# --- import -----------------------------------------------------------------------


def plan_import(
    deployment: Deployment, host: Host, policy: PasswordPolicy | None = None
) -> list[Change]:
    """The changes that make the store hold ``deployment`` (and the unchanged rest)."""
    policy = policy or default_policy()
    return [
        *_plan_users(deployment.users, host, policy),
        *_plan_clients(deployment.clients, host),
        *_plan_sections(deployment.sections, host),
        *_plan_keys(deployment.keys, host),
    ]


def _plan_users(
    entries: Iterable[Mapping[str, Any]], host: Host, policy: PasswordPolicy
) -> list[Change]:
    stored = {u.username: u for u in host.users.all()}
    changes = []
    for item in entries:
        existing = stored.get(item["username"])
        data = dict(item)
        password = data.get("password")
        if password and not policy.is_hash(password):
            # Omejdn hashes a plaintext password on load; keep the stored hash if it matches.
            known = existing is not None and policy.verify(password, existing.password)[0]
            data["password"] = existing.password if known and existing else policy.hash(password)
        user = User.from_dict(data)
        user.backend = None
        changes.append(_record_change("users", user.username, user, existing, lambda h: h.users))
    return changes


def _plan_clients(clients: Iterable[Client], host: Host) -> list[Change]:
    stored = {c.client_id: c for c in host.clients.all()}
    return [
        _record_change("clients", c.client_id, c, stored.get(c.client_id), lambda h: h.clients)
        for c in clients
    ]


_Record = TypeVar("_Record", User, Client)
_Record_contra = TypeVar("_Record_contra", contravariant=True)


class _Records(Protocol[_Record_contra]):
    """The host's users or clients, as far as an import writes them."""

    def add(self, record: _Record_contra, /) -> None: ...

    def save(self, record: _Record_contra, /) -> None: ...


def _record_change(
    kind: str,
    name: str,
    record: _Record,
    existing: _Record | None,
    records: Callable[[Host], _Records[_Record]],
) -> Change:
    """Add ``record`` if nothing is stored, save it (in the stored one's backend) if it
    differs from what is, else leave it."""
    if existing is None:
        return Change(kind, name, Action.CREATE, lambda host: records(host).add(record))
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


def _plan_keys(keys: Mapping[tuple[str, str], KeyMaterial], host: Host) -> list[Change]:
    changes = []
    for (target_type, target), material in keys.items():
        stored = host.keys.load(target_type, target)
        changes.append(
            _change(
                "keys",
                f"{target_type}/{target}",
                None if stored.is_empty else stored,
                material,
                _store_key(target_type, target, material),
            )
        )
    return changes


def _store_key(target_type: str, target: str, material: KeyMaterial) -> Callable[[Host], None]:
    return lambda host: host.keys.store(target_type, target, material)


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
    started = time.perf_counter()
    deployment = read_deployment(path)
    report = Report(dry_run=dry_run, notes=list(deployment.notes))
    # Plan outside the transaction: hashing and verifying plaintext passwords (bcrypt,
    # a quarter second each) must not hold a transaction and a pooled connection.
    report.changes = plan_import(deployment, host, policy)
    if on_plan is not None:
        on_plan(report.changed)
    if not dry_run and report.changed:
        # A change stored between plan and batch makes a write fail (e.g. AlreadyExists),
        # and the batch rolls the whole import back.
        with host.batch():
            for change in report.changed:
                assert change.apply is not None
                change.apply(host)
                if progress is not None:
                    progress(change)
    report.seconds = time.perf_counter() - started
    return report


# --- export -----------------------------------------------------------------------


@dataclass
class Snapshot:
    """Everything stored, read at one instant."""

    users: list[User]
    clients: list[Client]
    sections: dict[str, Any]
    keys: dict[tuple[str, str], KeyMaterial]


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
    return Snapshot(users, clients, sections, keys)


def export_deployment(host: Host, path: Path, *, force: bool = False) -> Report:
    """Write the stored state to ``path`` in Omejdn's layout.

    ``path`` must be new or empty unless ``force``, in which case the files
    the export writes replace those of the same name (others are left alone).
    """
    started = time.perf_counter()
    if path.exists() and not path.is_dir():
        raise TransferError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise TransferError(f"{path}: the directory is not empty (use --force to write into it)")
    snapshot = read_snapshot(host)
    report = Report()
    store = FileStore(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        store.write_users(sorted(snapshot.users, key=lambda u: u.username))
        report.changes += [Change("users", u.username, Action.CREATE) for u in snapshot.users]
        store.write_clients(sorted(snapshot.clients, key=lambda c: c.client_id))
        report.changes += [Change("clients", c.client_id, Action.CREATE) for c in snapshot.clients]
        for name, data in sorted(snapshot.sections.items()):
            if name in (USERS_SECTION, CLIENTS_SECTION):
                report.notes.append(
                    f"configuration section {name!r} skipped: config/{name}.yml holds the "
                    f"{name} table"
                )
                continue
            if data is None:
                continue
            store.write_section(name, data)
            report.changes.append(Change("config", name, Action.CREATE))
        for (target_type, target), material in sorted(snapshot.keys.items()):
            if material.is_empty:
                continue
            store.store_key(target_type, target, material)
            report.changes.append(Change("keys", f"{target_type}/{target}", Action.CREATE))
    except OSError as exc:
        raise TransferError(f"{exc.filename or path}: cannot write: {exc.strerror or exc}") from exc
    report.seconds = time.perf_counter() - started
    return report
