"""Reads of key sets on any Reader (a connection, or the primary's direct read path).

Reads are single statements, built once and bound at execution: building a
statement costs more Python time than the server spends on a primary-key
lookup. Orderings use the "C" collation, so they agree with Python's
``sorted`` whatever the database's locale.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import bindparam, select

from omejdn_pg.json_values import check_text
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.names import check_file_name
from omejdn_pg.postgres.repositories.common import Reader
from omejdn_pg.postgres.repositories.key_mapping import KEY_COLUMNS, KEYS, keys_from_rows
from omejdn_pg.sealing import Keyring

LOAD_KEYS: Final = (
    select(*KEY_COLUMNS)
    .where(KEYS.c.target_type == bindparam("target_type"), KEYS.c.target == bindparam("target"))
    .order_by(KEYS.c.position, KEYS.c.kid.collate("C"), KEYS.c.type)
)
LOAD_ALL_KEYS: Final = (
    select(KEYS.c.target, *KEY_COLUMNS)
    .where(KEYS.c.target_type == bindparam("target_type"))
    .order_by(KEYS.c.target.collate("C"), KEYS.c.position, KEYS.c.kid.collate("C"), KEYS.c.type)
)


def load_keys(
    reader: Reader, target_type: str, target: str, keyring: Keyring | None = None
) -> KeySet:
    """The target's keys in lifecycle order, in one statement; empty if none."""
    target_type, target = check_target(target_type, target)
    rows = reader.rows(LOAD_KEYS, {"target_type": target_type, "target": target})
    return keys_from_rows(target_type, target, rows, keyring)


def load_all_keys(
    reader: Reader, target_type: str, keyring: Keyring | None = None
) -> list[tuple[str, KeySet]]:
    """Every target of ``target_type`` with its keys, ordered by target, in one statement."""
    target_type = check_text(target_type, "target_type")
    grouped: dict[str, list[Any]] = {}
    for row in reader.rows(LOAD_ALL_KEYS, {"target_type": target_type}):
        grouped.setdefault(row.target, []).append(row)
    return [
        (target, keys_from_rows(target_type, target, rows, keyring))
        for target, rows in grouped.items()
    ]


def check_target(target_type: object, target: object) -> tuple[str, str]:
    """A target can become ``keys/<target_type>/<target>.key``: refuse what could not."""
    return check_file_name(target_type, "target_type"), check_file_name(target, "target")
