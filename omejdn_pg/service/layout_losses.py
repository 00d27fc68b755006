"""What Omejdn's file layout cannot carry of what PostgreSQL holds, for export to say so.

Export writes Omejdn's layout (``config/*.yml``, ``keys/...``), which has no
place for a key's lifecycle: a key file is a key, not a ``next`` key due at
noon or a ``retired`` key to be destroyed next week. It also writes what
KEYS_LOAD answers, which gives next and retired keys without their private
keys, and it writes private keys as PEM files, so a sealed key leaves the
database unsealed. None of that is an error — the export is still the
deployment Omejdn reads — but an operator who takes it for a backup loses the
lifecycle, so :func:`losses` finds each kind, read in the export's snapshot
(one statement over ``keys``), and export prints one warning line per kind
naming ``omejdn-pg backup``, which keeps all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, Table, func, or_, select

from omejdn_pg.postgres.schema import EXTRA_SECRET_KEY, SECRET_KEY, KeyRecord
from omejdn_pg.sealing import PREFIX

KEYS: Final[Table] = KeyRecord.__table__  # type: ignore[assignment]
SHOWN: Final = 5
"""Keys named in a warning line; the rest are counted."""
BACKUP_HINT: Final = "`omejdn-pg backup` keeps it"


@dataclass(frozen=True)
class StoredKey:
    target_type: str
    target: str
    kid: str
    state: str
    private: bool
    sealed: bool

    def name(self) -> str:
        return f"{self.target_type}/{self.target} {self.kid or '(thumbprint)'} ({self.state})"


def stored_keys(conn: Connection) -> list[StoredKey]:
    """Every stored key with its state and whether its private key is stored (sealed)."""
    secret = KEYS.c.type.in_((SECRET_KEY, EXTRA_SECRET_KEY))
    sealed = func.left(KEYS.c.value, len(PREFIX)) == PREFIX
    private = or_(sealed, KEYS.c.value.contains("PRIVATE KEY-----", autoescape=True))
    query = (
        select(
            KEYS.c.target_type,
            KEYS.c.target,
            KEYS.c.kid,
            func.min(KEYS.c.state),
            func.bool_or(secret & private),
            func.bool_or(secret & sealed),
        )
        .group_by(KEYS.c.target_type, KEYS.c.target, KEYS.c.kid)
        .order_by(
            KEYS.c.target_type.collate("C"), KEYS.c.target.collate("C"), KEYS.c.kid.collate("C")
        )
    )
    return [
        StoredKey(row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]))
        for row in conn.execute(query)
    ]


def losses(keys: Sequence[StoredKey]) -> list[str]:
    """One warning line per kind of thing the file layout loses; none if it loses nothing."""
    lines = []
    states = [key for key in keys if key.state != "active"]
    if states:
        lines.append(
            f"warning: {_keys(states)} in a lifecycle state the file layout cannot hold "
            f"({_names(states)}): the export has them without state and dates, so they "
            f"import into another database as active keys that never expire; {BACKUP_HINT}"
        )
    hidden = [key for key in states if key.private]
    if hidden:
        lines.append(
            f"warning: {_keys(hidden)} exported as public keys only, though their private "
            f"keys are stored ({_names(hidden)}; KEYS_LOAD hands out only the active keys' "
            f"private keys): a next key imported from the export can never sign; {BACKUP_HINT}"
        )
    sealed = [key for key in keys if key.sealed]
    if sealed:
        lines.append(
            f"warning: {_keys(sealed)} sealed by a key-encryption key in the database "
            f"({_names(sealed)}), and the export writes them as plain PEM files (mode "
            "0600); `omejdn-pg backup` keeps them sealed"
        )
    return lines


def _keys(keys: Sequence[StoredKey]) -> str:
    return f"{len(keys)} key is" if len(keys) == 1 else f"{len(keys)} keys are"


def _names(keys: Sequence[StoredKey]) -> str:
    shown = ", ".join(key.name() for key in keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
