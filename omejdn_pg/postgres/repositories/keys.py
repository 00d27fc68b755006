"""Key sets: several keys per ``(target_type, target)``, with descriptors and lifecycle.

How a set is laid out in rows of ``keys`` (signing key as the Ruby plugin's
``sk``/``certs``, the others as ``extra_*``; private keys sealed with a
keyring) is :mod:`~omejdn_pg.postgres.repositories.key_mapping`; the
single-statement reads are :mod:`~omejdn_pg.postgres.repositories.key_reads`.

Every write replaces the target's rows in the caller's transaction behind a
transaction-scoped advisory lock: the set is read, changed in Python (the
lifecycle rules are pure functions, :mod:`omejdn_pg.lifecycle`) and written
back whole. Sets are small (:attr:`KeySet.MAX_KEYS`), so rewriting one costs
less than reasoning about partial updates, and a reader — one statement, one
snapshot — never sees half of a change.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from psycopg import Cursor
from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select

from omejdn_pg import lifecycle
from omejdn_pg.errors import ConfigurationError, InvalidKeyMaterial
from omejdn_pg.json_values import check_text
from omejdn_pg.keys.algorithms import weak_key_problem
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.postgres.database.direct import execute, execute_many, together
from omejdn_pg.postgres.repositories import key_mapping, key_sealing
from omejdn_pg.postgres.repositories.common import ConnectionReader, lock_for_update
from omejdn_pg.postgres.repositories.key_mapping import (
    KEY_TYPES,
    KEYS,
    is_private_pem,
    key_rows,
    keys_from_rows,
)
from omejdn_pg.postgres.repositories.key_reads import (
    LOAD_KEYS,
    check_target,
    load_all_keys,
    load_keys,
)
from omejdn_pg.postgres.schema import CLIENT_CERTIFICATE_TARGET_TYPE
from omejdn_pg.sealing import PREFIX as SEALED_PREFIX
from omejdn_pg.sealing import Keyring, sealed_by

log = logging.getLogger(__name__)

MAINTENANCE_LOCK: Final = ("keys", "maintenance")


class KeyRepository:
    """Key sets per ``(target_type, target)`` on a connection the caller owns."""

    def __init__(
        self, conn: Connection, keyring: Keyring | None = None, *, allow_plaintext: bool = False
    ) -> None:
        self.conn = conn
        self.keyring = keyring if keyring is not None else Keyring()
        self.allow_plaintext = allow_plaintext
        """Write private keys in plain text even where others are sealed (see :meth:`modify`)."""

    # --- reads -------------------------------------------------------------------

    def load(self, target_type: str, target: str) -> KeySet:
        """The target's keys in lifecycle order, in one statement; empty if none."""
        return load_keys(ConnectionReader(self.conn), target_type, target, self.keyring)

    def load_all(self, target_type: str) -> list[tuple[str, KeySet]]:
        """Every target of ``target_type`` with its keys, ordered by target, in one statement."""
        return load_all_keys(ConnectionReader(self.conn), target_type, self.keyring)

    def targets(self, target_type: str | None = None) -> list[tuple[str, str]]:
        """``(target_type, target)`` of every stored key set, sorted."""
        query = select(KEYS.c.target_type, KEYS.c.target).group_by(
            KEYS.c.target_type, KEYS.c.target
        )
        if target_type is not None:
            query = query.where(KEYS.c.target_type == check_text(target_type, "target_type"))
        query = query.order_by(KEYS.c.target_type.collate("C"), KEYS.c.target.collate("C"))
        return [(row.target_type, row.target) for row in self.conn.execute(query)]

    def due(self, now: datetime.datetime) -> list[tuple[str, str]]:
        """Targets with a lifecycle transition due at ``now``, and targets holding
        more than one active private key (several signers, as versions before the
        one-signer rule could leave them; :func:`lifecycle.advance` decides)."""
        private_active = (
            (KEYS.c.state == "active")
            & KEYS.c.type.in_(KEY_TYPES)
            & ~KEYS.c.value.startswith("-----BEGIN PUBLIC KEY-----")
        )
        query = (
            select(KEYS.c.target_type, KEYS.c.target)
            .group_by(KEYS.c.target_type, KEYS.c.target)
            .having(
                or_(
                    func.bool_or((KEYS.c.state == "next") & (KEYS.c.activate_at <= now)),
                    func.bool_or((KEYS.c.state == "retired") & (KEYS.c.destroy_at <= now)),
                    func.count().filter(private_active) > 1,
                )
            )
            .order_by(KEYS.c.target_type.collate("C"), KEYS.c.target.collate("C"))
        )
        return [(row.target_type, row.target) for row in self.conn.execute(query)]

    # --- writes ------------------------------------------------------------------

    def store(
        self,
        target_type: str,
        target: str,
        keys: KeySet | Sequence[Key],
        *,
        now: datetime.datetime | None = None,
        locked: bool = False,
        alongside: Callable[[], object] | None = None,
    ) -> None:
        """Replace the target's set with ``keys``, as KEYS_STORE does; an empty set deletes it.

        ``locked``: the caller holds the target's lock already (a client's write
        holds its client's). ``alongside`` sends the caller's own statements in
        the round trip that reads the stored set (see :func:`together`).

        A key that arrives without its private key but with the kid and public
        key of a stored private key keeps the stored one (a host storing back a
        set it loaded, whose next and retired keys came without private
        members), and a stored key keeps its lifecycle state. New keys are
        active; a new signing key whose certificate is not valid at ``now`` is
        refused, so an expired chain is never published unnoticed, and a
        client's is stored with a warning (see :func:`_refused_certificate`).
        """
        target_type, target = check_target(target_type, target)
        if not isinstance(keys, KeySet | list | tuple) or not all(
            isinstance(key, Key) for key in keys
        ):
            raise InvalidKeyMaterial(
                f"keys {target_type}/{target}: expected a key set, got {type(keys).__name__}"
            )
        incoming = list(keys)
        moment = now or key_mapping.now()
        self.modify(
            target_type,
            target,
            lambda stored: merge(target_type, target, stored, incoming, moment),
            locked=locked,
            alongside=alongside,
            private_incoming=any(key.is_private for key in incoming),
        )

    def modify(
        self,
        target_type: str,
        target: str,
        change: Callable[[KeySet], Sequence[Key]],
        *,
        locked: bool = False,
        alongside: Callable[[], object] | None = None,
        private_incoming: bool = False,
    ) -> KeySet:
        """Lock the target, apply ``change`` to its stored set, write the result back.

        ``private_incoming``: ``change`` brings private keys, so the check for
        sealed keys (:meth:`_refuse_plaintext_beside_sealed`) goes out with the
        read of the stored set rather than in a round trip of its own.
        """
        target_type, target = check_target(target_type, target)
        with together(self.conn):
            if alongside is not None:
                alongside()
            if not locked:
                _lock(self.conn, target_type, target)
            loaded = execute(self.conn, LOAD_KEYS, {"target_type": target_type, "target": target})
            sealed = (
                execute(self.conn, _ANY_SEALED)
                if private_incoming and self._guards_plaintext
                else None
            )
        stored = keys_from_rows(target_type, target, loaded.fetchall(), self.keyring)
        changed = change(stored)
        if not stored and not changed:
            return KeySet([])  # nothing stored, nothing to store: no statement to send
        return self._write(target_type, target, changed, sealed)

    def _write(
        self,
        target_type: str,
        target: str,
        keys: Sequence[Key],
        sealed: Cursor[Any] | None = None,
    ) -> KeySet:
        """Replace the stored set by ``keys``; ``sealed``: the check for sealed keys,
        if it was sent already."""
        result = KeySet(lifecycle.ordered(keys))
        rows = key_rows(target_type, target, result, self.keyring)
        if self._guards_plaintext and any(
            row["type"] in KEY_TYPES and is_private_pem(row["value"]) for row in rows
        ):
            self._refuse_plaintext_beside_sealed(
                target_type,
                target,
                sealed if sealed is not None else execute(self.conn, _ANY_SEALED),
            )
        with together(self.conn):
            execute(self.conn, _DELETE_SET, {"target_type": target_type, "target": target})
            if rows:
                execute_many(self.conn, _INSERT_KEY, rows)
        return result

    @property
    def _guards_plaintext(self) -> bool:
        """Whether a plain private key is checked before it is stored: not where this
        repository seals keys itself or was told to store them unsealed."""
        return not (self.keyring or self.allow_plaintext)

    def _refuse_plaintext_beside_sealed(
        self, target_type: str, target: str, sealed_query: Cursor[Any]
    ) -> None:
        """A plain private key is not written where others are sealed, unless allowed.

        Sealed keys in the table say the operator chose key encryption; a
        process without the KEK (a CLI given only ``--url``, a service whose
        plugin file lost ``key_encryption``) would otherwise store a readable
        private key beside them without a word.
        """
        sealed = sealed_query.fetchone()
        if sealed is not None:
            raise ConfigurationError(
                f"keys {target_type}/{target}: the database holds private keys sealed by "
                f"key-encryption key {sealed_by(sealed.value)!r}, and none is configured here, "
                "so this private key would be stored in plain text beside them; configure "
                "key_encryption (--config, or $OMEJDN_PG_KEY_ENCRYPTION with --url), or pass "
                "--allow-plaintext to store it unsealed on purpose"
            )

    def delete(self, target_type: str, target: str) -> bool:
        """Delete the target's whole set; False if nothing was stored."""
        target_type, target = check_target(target_type, target)
        _lock(self.conn, target_type, target)
        result = execute(self.conn, _DELETE_SET, {"target_type": target_type, "target": target})
        return result.rowcount > 0

    def maintain(
        self, now: datetime.datetime, retire_for: datetime.timedelta
    ) -> list[lifecycle.Change]:
        """Advance every transition due at ``now``, across all targets.

        One advisory lock for the whole run makes concurrent runs (several
        instances on one timer) queue instead of racing; the second finds
        nothing due, so running it any number of times changes nothing more.
        """
        lock_for_update(self.conn, *MAINTENANCE_LOCK)
        changes: list[lifecycle.Change] = []
        for target_type, target in self.due(now):
            _lock(self.conn, target_type, target)
            advanced, applied = lifecycle.advance(self.load(target_type, target), now, retire_for)
            if not applied:
                continue  # several active keys, but at most one of them signs
            self._write(target_type, target, advanced)
            changes.extend(
                lifecycle.Change(target_type, target, kid, change) for kid, change in applied
            )
        return changes

    def rewrap(self) -> dict[str, int]:
        """Seal every private key under the keyring's current KEK (see
        :func:`~omejdn_pg.postgres.repositories.key_sealing.rewrap`)."""
        return key_sealing.rewrap(self.conn, self.keyring)

    def sealing_report(self) -> dict[str, int]:
        """How many private keys each KEK seals (``plaintext``: not sealed at all)."""
        return key_sealing.sealing_report(self.conn)


def merge(
    target_type: str,
    target: str,
    stored: Sequence[Key],
    incoming: Sequence[Key],
    now: datetime.datetime,
) -> list[Key]:
    """What a KEYS_STORE of ``incoming`` leaves stored, given what was ``stored``."""
    by_kid = {key.kid: key for key in stored}
    result = []
    for key in incoming:
        old = by_kid.get(key.kid)
        if old is None or not old.same_key(key):
            problem = weak_key_problem(key) or _refused_certificate(target_type, target, key, now)
            if problem is not None:
                raise InvalidKeyMaterial(f"keys {target_type}/{target}: key {key.kid}: {problem}")
            result.append(key.copied(key.lifecycle.created(now)))
        elif key.private_key is not None or old.private_key is None:
            result.append(key.copied(old.lifecycle))
        else:
            result.append(
                dataclasses.replace(key, private_key=old.private_key, lifecycle=old.lifecycle)
            )
    return result


def _refused_certificate(
    target_type: str, target: str, key: Key, now: datetime.datetime
) -> str | None:
    """Why a new key's certificate makes the store refuse it, or None (a client's: warned).

    The two kinds of key set differ in who relies on the certificate. The
    server's own keys (``omejdn``) sign every token, and their chain is
    published in ``/jwks.json`` for relying parties to check: an expired or
    not yet valid chain there breaks every verifier that looks at ``x5c``,
    so it is refused where it enters and the operator learns it at once.
    A client's keys are the client's registration, written by Omejdn's admin
    APIs and its core with whatever the client registered; Omejdn only
    verifies that client's own assertions with the public key, and the
    core's file store writes such a key as given. Refusing would fail the
    admin API with a 500 and the client's other fields with it, so the set
    is stored as given, with a warning naming the target and the expiry
    (and served, warned once more when read: the operator sees it).
    """
    problem = key.certificate_problem(now)
    if problem is None or target_type != CLIENT_CERTIFICATE_TARGET_TYPE:
        return problem
    log.warning("keys %s/%s: key %s stored with a %s", target_type, target, key.kid, problem)
    return None


_DELETE_SET: Final = delete(KEYS).where(
    KEYS.c.target_type == bindparam("target_type"), KEYS.c.target == bindparam("target")
)
_INSERT_KEY: Final = insert(KEYS)
_ANY_SEALED: Final = (
    select(KEYS.c.value)
    .where(or_(*(KEYS.c.type == kind for kind in KEY_TYPES)))
    .where(KEYS.c.value.startswith(SEALED_PREFIX))
    .limit(1)
)


def _lock(conn: Connection, target_type: str, target: str) -> None:
    # A client's keys are also written by the client events, which lock the
    # client: take the same lock, so a KEYS_STORE cannot put back the keys of
    # a client deleted at the same moment.
    if target_type == CLIENT_CERTIFICATE_TARGET_TYPE:
        lock_for_update(conn, "client", target)
    else:
        lock_for_update(conn, "keys", f"{target_type}/{target}")
