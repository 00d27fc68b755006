"""Key material: a private (or public-only) key and a certificate chain per target.

A target's material is at most two rows of ``keys``, ``sk`` and ``certs``,
exactly as Omejdn's Ruby plugin lays them out, so a database stays shareable:
``sk`` is written as unencrypted PKCS#8 (PKCS#1 and SEC1, which the Ruby
plugin writes, are read too), ``certs`` as PEM certificates joined by ``_``.
Material without a private key keeps its public key in ``sk`` (as Omejdn's
file layout keeps it in the ``.key`` file) rather than being dropped.

A store replaces both rows in the caller's transaction — an upsert of what is
present and a delete of what is absent — behind a transaction-scoped advisory
lock, so two writers of one target serialize and a reader (one statement, one
snapshot) never sees the key of one write with the chain of another. The
upsert needs no knowledge of what was stored before, so a store is always the
same two or three statements; the lock is what keeps a concurrent delete or
store from interleaving with it.

Reads are single statements: a point read fetches both rows at once, and
:meth:`KeyRepository.load_all` fetches every target of a type in one
statement, whatever their number. Parsing is strict: a PEM that is stored but
unreadable raises InvalidKeyMaterial naming the target instead of being
skipped, because silently missing a signing key is worse than a clear error.
Orderings use the "C" collation, i.e. code point order, so they agree with
Python's ``sorted`` whatever the database's locale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from sqlalchemy import Connection, Table, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from omejdn_pg.entities import KeyMaterial
from omejdn_pg.errors import InvalidKeyMaterial
from omejdn_pg.postgres.repositories.common import check_text, lock_for_update
from omejdn_pg.postgres.schema import (
    CERTIFICATES,
    CLIENT_CERTIFICATE_TARGET_TYPE,
    SECRET_KEY,
    KeyRecord,
)

_KEYS: Final[Table] = KeyRecord.__table__  # type: ignore[assignment]

# The reads are built once and bound at execution: building a statement costs
# more Python time than the server spends on a primary-key lookup.
_LOAD: Final = select(_KEYS.c.type, _KEYS.c.value).where(
    _KEYS.c.target_type == bindparam("target_type"), _KEYS.c.target == bindparam("target")
)
_LOAD_ALL: Final = (
    select(_KEYS.c.target, _KEYS.c.type, _KEYS.c.value)
    .where(_KEYS.c.target_type == bindparam("target_type"))
    .order_by(_KEYS.c.target.collate("C"), _KEYS.c.type)
)


class KeyRepository:
    """Key material per ``(target_type, target)`` on a connection the caller owns."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def store(self, target_type: str, target: str, material: KeyMaterial) -> None:
        """Replace the target's key and chain; empty material deletes both."""
        target_type, target = _check_target(target_type, target)
        if not isinstance(material, KeyMaterial):
            raise InvalidKeyMaterial(
                f"keys {target_type}/{target}: expected KeyMaterial, got {type(material).__name__}"
            )
        # Serialize first, so a material that cannot be written fails before any SQL.
        rows: dict[str, str] = {}
        key_pem = material.key_pem()
        if key_pem is not None:
            rows[SECRET_KEY] = key_pem
        if material.certs:
            rows[CERTIFICATES] = material.certs_pem()
        absent = [kind for kind in (SECRET_KEY, CERTIFICATES) if kind not in rows]

        _lock(self.conn, target_type, target)
        if rows:
            upsert = pg_insert(_KEYS).values(
                [
                    {"target_type": target_type, "target": target, "type": kind, "value": value}
                    for kind, value in rows.items()
                ]
            )
            self.conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[_KEYS.c.target_type, _KEYS.c.target, _KEYS.c.type],
                    set_={"value": upsert.excluded.value},
                )
            )
        if absent:
            self.conn.execute(
                delete(_KEYS).where(
                    _KEYS.c.target_type == target_type,
                    _KEYS.c.target == target,
                    _KEYS.c.type.in_(absent),
                )
            )

    def load(self, target_type: str, target: str) -> KeyMaterial:
        """The target's material in one statement; empty KeyMaterial() if none is stored."""
        target_type, target = _check_target(target_type, target)
        rows = self.conn.execute(_LOAD, {"target_type": target_type, "target": target})
        return _material(target_type, target, ((row.type, row.value) for row in rows))

    def load_all(self, target_type: str) -> list[KeyMaterial]:
        """Every target's material of ``target_type``, ordered by target, in one statement."""
        target_type = check_text(target_type, "target_type")
        rows = self.conn.execute(_LOAD_ALL, {"target_type": target_type})
        grouped: dict[str, list[tuple[str, str]]] = {}
        for row in rows:
            grouped.setdefault(row.target, []).append((row.type, row.value))
        return [_material(target_type, target, group) for target, group in grouped.items()]

    def targets(self, target_type: str | None = None) -> list[tuple[str, str]]:
        """``(target_type, target)`` of every stored material, sorted."""
        query = select(_KEYS.c.target_type, _KEYS.c.target).group_by(
            _KEYS.c.target_type, _KEYS.c.target
        )
        if target_type is not None:
            query = query.where(_KEYS.c.target_type == check_text(target_type, "target_type"))
        query = query.order_by(_KEYS.c.target_type.collate("C"), _KEYS.c.target.collate("C"))
        return [(row.target_type, row.target) for row in self.conn.execute(query)]

    def delete(self, target_type: str, target: str) -> bool:
        """Delete the target's key and chain; False if nothing was stored."""
        target_type, target = _check_target(target_type, target)
        _lock(self.conn, target_type, target)
        result = self.conn.execute(
            delete(_KEYS).where(_KEYS.c.target_type == target_type, _KEYS.c.target == target)
        )
        return result.rowcount > 0


def _check_target(target_type: object, target: object) -> tuple[str, str]:
    return check_text(target_type, "target_type"), check_text(target, "target")


def _material(target_type: str, target: str, rows: Iterable[tuple[str, str]]) -> KeyMaterial:
    """Material from ``(type, value)`` rows; '' (the Ruby plugin's empty chain) is absent."""
    values = dict(rows)
    return KeyMaterial.from_pem(
        values.get(SECRET_KEY) or None,
        values.get(CERTIFICATES) or None,
        what=f"key material of {target_type}/{target}",
    )


def _lock(conn: Connection, target_type: str, target: str) -> None:
    # A client's certificate is also written by the client events, which lock
    # the client: take the same lock, so a KEYS_STORE cannot put back the
    # certificate of a client deleted at the same moment.
    if target_type == CLIENT_CERTIFICATE_TARGET_TYPE:
        lock_for_update(conn, "client", target)
    else:
        lock_for_update(conn, "keys", f"{target_type}/{target}")
