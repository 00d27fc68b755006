"""Planning the users of an import: one event each, or set-wise when PostgreSQL holds them.

One event per user made an import of 20,000 users take ten seconds, so the
users PostgreSQL holds, and the new ones when PostgreSQL is where new users
go, are compared and written set-wise by
:mod:`omejdn_pg.postgres.repositories.bulk` (staged by COPY, one comparison, a
few statements, with the checks of a single create), in the same batch as
everything else. Users of another backend go through their events. Plaintext
passwords in ``users.yml`` (Omejdn hashes them on load) are hashed on the way
in, on every core (:mod:`.hashing`), unless the stored hash already verifies
them, so they do not count as a change on every run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from omejdn_pg.entities import User
from omejdn_pg.errors import InvalidInput, located
from omejdn_pg.host.files.store import USERS_SECTION
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.repositories.bulk import Row, UserImport
from omejdn_pg.service.host import Host
from omejdn_pg.service.transfer.compare import creating_backend
from omejdn_pg.service.transfer.deployment import Deployment, check_values
from omejdn_pg.service.transfer.hashing import map_passwords
from omejdn_pg.service.transfer.report import Action, Change
from omejdn_pg.settings.backend import BACKEND_NAME


def plan_users(deployment: Deployment, host: Host, policy: PasswordPolicy) -> list[Change]:
    entries, records = deployment.users, deployment.user_records
    file = deployment.path / "config" / f"{USERS_SECTION}.yml"
    bulk = host.users.bulk()
    if bulk is not None and bulk.may_stage():
        return _plan_users_in_bulk(entries, records, host, policy, bulk, file)
    for record in records.values():
        check_values(record, file)
    stored = {u.username: u for u in host.users.all()}
    backend = creating_backend(host, "user")
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
                check_values(record, file)
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
    # bcrypt and argon2 release the GIL: every core hashes (omejdn_pg.service.transfer.hashing).
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
    backend = creating_backend(host, "user")
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
    with located(file, InvalidInput):
        bulk.check(users, into)


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
