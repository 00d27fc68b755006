"""The plan of an import: every difference between a deployment and the store, as a change.

The plan compares every user, client, section and key target of the
directory with what is stored (read in a constant number of statements: one
listing per kind, one load per section and key target) and keeps only the
differences, each with the storage event that writes it — exactly the write
the server would make. Import merges: what is stored but absent from the
directory is left alone, but a user, client, section or key target the
directory has is imported whole (a key target's set replaces the stored set;
a client's keys are its ``keys/clients/<client_id>*`` files, so a client
without such files is stored without keys). Import never changes the state
of a key it finds stored (KEYS_STORE keeps it), so importing an export back
leaves retired keys retired and next keys next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omejdn_pg.entities import Client
from omejdn_pg.host.files.store import CLIENT_KEYS, CLIENTS_SECTION
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.passwords import PasswordPolicy, default_policy
from omejdn_pg.service.host import Host
from omejdn_pg.service.transfer.compare import (
    check_certificates,
    creating_backend,
    hidden_private,
    keys_differ,
)
from omejdn_pg.service.transfer.deployment import JWKS_FIELD, Deployment
from omejdn_pg.service.transfer.report import Action, Change
from omejdn_pg.service.transfer.users import plan_users


def plan_import(
    deployment: Deployment, host: Host, policy: PasswordPolicy | None = None
) -> list[Change]:
    """The changes that make the store hold ``deployment`` (and the unchanged rest)."""
    policy = policy or default_policy()
    return [
        *plan_users(deployment, host, policy),
        *_plan_clients(deployment, host),
        *_plan_sections(deployment.sections, host),
        *_plan_keys(deployment, host),
    ]


def _plan_clients(deployment: Deployment, host: Host) -> list[Change]:
    stored = {c.client_id: c for c in host.clients.all()}
    backend = creating_backend(host, "client")
    clients_file = deployment.path / "config" / f"{CLIENTS_SECTION}.yml"
    changes = []
    for client in deployment.clients:
        client_id = client.client_id
        keys = deployment.client_keys.get(client_id, KeySet())
        record = planned_client(deployment, client)
        existing = stored.get(client_id)
        if existing is None:
            check_certificates(
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
            or keys_differ(stored_keys, keys, hidden_private(host, CLIENT_KEYS, client_id))
        )
        if not differs:
            changes.append(Change("clients", client_id, Action.UNCHANGED))
            continue
        check_certificates(
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
        elif keys_differ(stored, keys, hidden_private(host, target_type, target)):
            action = Action.UPDATE
        else:
            changes.append(Change("keys", name, Action.UNCHANGED))
            continue
        check_certificates(target_type, target, stored, keys, deployment.key_files, name)
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
