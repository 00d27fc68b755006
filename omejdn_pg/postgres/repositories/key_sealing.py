"""Private keys at rest: re-sealing every one under the current KEK, counting what each seals.

Both run over the whole table in the caller's transaction, apart from the
set-by-set writes of :mod:`~omejdn_pg.postgres.repositories.keys`: a rewrap
changes no key, only how its private half is sealed, so the lifecycle order
and the rows' layout stay as they are.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from omejdn_pg.errors import InvalidKeyMaterial, located
from omejdn_pg.keys.model import Key
from omejdn_pg.postgres.repositories.key_mapping import (
    KEY_TYPES,
    KEYS,
    is_private_pem,
    public_der,
)
from omejdn_pg.postgres.schema import SECRET_KEY
from omejdn_pg.sealing import Keyring, is_sealed, public_half, row_context, sealed_by


def rewrap(conn: Connection, keyring: Keyring) -> dict[str, int]:
    """Seal every private key under ``keyring``'s current KEK, in the caller's
    transaction; ``{kek id: values re-sealed}`` (``plaintext`` for keys sealed
    for the first time). Interrupted, the transaction rolls back whole, so
    every value still opens with the keys that sealed it."""
    rows = conn.execute(
        select(KEYS.c.target_type, KEYS.c.target, KEYS.c.kid, KEYS.c.type, KEYS.c.value)
        .where(KEYS.c.type.in_(KEY_TYPES))
        .with_for_update()
    ).all()
    done: dict[str, int] = {}
    for row in rows:
        if not (is_sealed(row.value) or is_private_pem(row.value)):
            continue
        what = f"keys {row.target_type}/{row.target}: key {row.kid}"
        context = row_context(row.target_type, row.target, row.kid, SECRET_KEY)
        with located(what, InvalidKeyMaterial):
            # Plain, or sealed before the public half was kept with it: sealed anew,
            # with it (so that listing and publishing need no KEK).
            anew = keyring.current is not None and (
                not is_sealed(row.value) or public_half(row.value) is None
            )
            pem = keyring.open(row.value, context) if anew else ""
            resealed = "" if anew else keyring.rewrap(row.value, context)
        if anew:
            key = Key.from_pem(pem, what=what)
            resealed = keyring.seal(pem, context, public_der(key))
        if resealed != row.value:
            origin = sealed_by(row.value) or "plaintext"
            done[origin] = done.get(origin, 0) + 1
            conn.execute(
                KEYS.update()
                .where(
                    KEYS.c.target_type == row.target_type,
                    KEYS.c.target == row.target,
                    KEYS.c.kid == row.kid,
                    KEYS.c.type == row.type,
                )
                .values(value=resealed)
            )
    return done


def sealing_report(conn: Connection) -> dict[str, int]:
    """How many private keys each KEK seals (``plaintext``: not sealed at all)."""
    counts: dict[str, int] = {}
    for (value,) in conn.execute(select(KEYS.c.value).where(KEYS.c.type.in_(KEY_TYPES))):
        if is_sealed(value) or is_private_pem(value):
            origin = sealed_by(value) or "plaintext"
            counts[origin] = counts.get(origin, 0) + 1
    return dict(sorted(counts.items()))
