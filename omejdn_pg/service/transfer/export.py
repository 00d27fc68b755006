"""Exporting the store as a deployment directory, from one snapshot, all or nothing.

Export reads everything inside one ``host.snapshot()`` (a single REPEATABLE
READ transaction), so the files are one consistent state even while the
server keeps writing. It writes the current layout into a new directory
beside the target (``.<name>.export-<pid>-*``, mode 0700) and moves it into
place only when it is complete (:mod:`.swap`): an error leaves no partial
directory and an existing target untouched. ``force`` replaces an existing
deployment directory, and refuses one holding anything but ``config/`` and
``keys/``, so that a mistyped path never deletes unrelated files. Every
directory is 0700; every ``config/*.yml`` is 0600, because any section may
hold a secret (client secrets, password hashes, a plugin's bind password) and
guessing by key names would miss one; a ``.key`` with a private key is 0600;
certificates, public keys and descriptors are 0644. Keys without their
private members in what KEYS_LOAD answers (the lifecycle's ``next`` and
``retired`` keys) are exported as public keys, which never sign: the file
layout has no lifecycle. What it cannot carry — lifecycle states, those
private keys, sealing — is said in one warning line per kind
(:mod:`omejdn_pg.service.layout_losses`), naming ``omejdn-pg backup``, which
carries all of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from omejdn_pg.entities import Client, User
from omejdn_pg.errors import InvalidInput, TransferError
from omejdn_pg.host.files.store import CLIENT_KEYS, CLIENTS_SECTION, USERS_SECTION, FileStore
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.names import check_file_name
from omejdn_pg.service import layout_losses
from omejdn_pg.service.host import Host
from omejdn_pg.service.transfer.deployment import JWKS_FIELD
from omejdn_pg.service.transfer.report import Action, Change, Report, Target
from omejdn_pg.service.transfer.swap import clear_stale_staging, fsync_tree, move_into_place

LAYOUT: Final = frozenset({"config", "keys"})
"""What ``force`` may replace: a directory holding nothing else."""


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
        admin = host.admin
        losses = []
        if admin is not None and host.keys.kept_in_postgres:
            losses = layout_losses.losses(admin.database.read(layout_losses.stored_keys))
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
        clear_stale_staging(parent, path.name)
        prefix = f".{path.name}.export-{os.getpid()}-"
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise TransferError(f"{exc.filename or parent}: cannot write: {exc.strerror}") from exc
    try:
        report = _write_snapshot(snapshot, FileStore(staging, private=True))
        fsync_tree(staging)
        move_into_place(staging, path, replace)
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
