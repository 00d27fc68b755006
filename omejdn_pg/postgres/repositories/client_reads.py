"""Reads of clients on any Reader (a connection, or the primary's direct read path).

A client is a set of rows — one ``clients`` row per metadata field, ``client_id``
included — so a point read folds them into one json object of its fields
(:func:`~omejdn_pg.postgres.repositories.client_fields.metadata_fields`) and adds
the attributes and the key rows with correlated subqueries: one statement, one
round trip. A full listing is one statement whatever the number of clients,
streamed (see :func:`all_clients`). A client's keys are the key set of target
``clients/<client_id>``; with Omejdn's current core they are its ``jwks``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by

from omejdn_pg import collector
from omejdn_pg.entities import Client
from omejdn_pg.json_values import storable_text
from omejdn_pg.keys.states import DATES
from omejdn_pg.postgres.repositories.client_fields import (
    CLIENT_ATTRIBUTES,
    CLIENTS,
    metadata_fields,
)
from omejdn_pg.postgres.repositories.common import Reader, read_documents, with_documents
from omejdn_pg.postgres.repositories.jwks_answers import JwksAnswers
from omejdn_pg.postgres.repositories.key_mapping import KEY_COLUMNS, KEYS, keys_from_rows
from omejdn_pg.postgres.schema import (
    CLIENT_CERTIFICATE_TARGET_TYPE,
)
from omejdn_pg.sealing import Keyring
from omejdn_pg.settings.backend import BACKEND_NAME

JWKS_FIELD: Final = "jwks"


_KEY_FIELDS: Final = tuple(part for column in KEY_COLUMNS for part in (column.name, column))
"""A key row's columns as ``json_build_object`` arguments: each name, then its column."""


def _key_rows() -> ColumnElement[Any]:
    """A client's key rows as one JSON array, in text, in their order in the set (NULL if
    none): an aggregate for a correlated subquery (the point read) or a grouping (the listing).

    Text, not parsed: the rows matter only when they are not what they were last time
    (:meth:`~omejdn_pg.postgres.repositories.jwks_answers.JwksAnswers.client` compares
    the text), and both reads fold them with this one expression, ordered, so the same
    rows give the same text.
    """
    row = func.json_build_object(*_KEY_FIELDS)
    in_set_order = aggregate_order_by(row, KEYS.c.position, KEYS.c.kid, KEYS.c.type)
    return func.json_agg(in_set_order).cast(Text)


def _select_clients() -> Select[Any]:
    """One row per client: its fields and attributes as JSON, its key rows as JSON text."""
    key_rows = (
        select(_key_rows())
        .where(
            KEYS.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE,
            KEYS.c.target == CLIENTS.c.client_id,
        )
        .scalar_subquery()
    )
    return select(
        CLIENTS.c.client_id,
        metadata_fields().label("metadata"),
        CLIENT_ATTRIBUTES.folded(CLIENTS.c.client_id).label("attributes"),
        key_rows.label("keys"),
    ).group_by(CLIENTS.c.client_id)


def _listing() -> Select[Any]:
    """Every client with its place in creation order, its key rows as JSON text and its
    fields and attributes as JSON documents, by client_id.

    Each part is grouped along its primary key (metadata, attributes, key rows)
    and merge-joined on client_id, so clients stream out while the server
    still folds the rest, and the parser and :func:`all_clients` work on the
    first ones meanwhile. The creation order (a client's place is the
    smallest ``ordinal`` of its rows) is therefore left to the caller: a sort
    in SQL would hold back every row until the last client was folded.
    """
    metadata = (
        select(
            CLIENTS.c.client_id,
            func.min(CLIENTS.c.ordinal).label("place"),
            metadata_fields().cast(Text).label("fields"),
        )
        .group_by(CLIENTS.c.client_id)
        .subquery("metadata")
    )
    attributes = CLIENT_ATTRIBUTES.per_owner()
    keys = (
        select(KEYS.c.target, _key_rows().label("keys"))
        .where(KEYS.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE)
        .group_by(KEYS.c.target)
        .subquery("key_rows")
    )
    return (
        select(
            metadata.c.client_id,
            metadata.c.place,
            keys.c["keys"],
            metadata.c.fields,
            attributes.c.attributes,
        )
        .select_from(
            metadata.outerjoin(
                attributes, attributes.c.identifier == metadata.c.client_id
            ).outerjoin(keys, keys.c.target == metadata.c.client_id)
        )
        .order_by(metadata.c.client_id)
    )


_GET: Final = _select_clients().where(CLIENTS.c.client_id == bindparam("id"))
_ALL: Final = _listing()


def find_client(
    reader: Reader,
    client_id: str,
    *,
    jwks: bool = True,
    keyring: Keyring | None = None,
    answers: JwksAnswers | None = None,
) -> Client | None:
    """The client, or None; one statement (none for an id nothing can be stored under).

    ``jwks``: the client's key set is its ``jwks`` metadata (Omejdn's current core).
    ``answers``: where that set is kept, converted once per stored content of its keys.
    A client whose key rows Python cannot read is None, named in a warning.
    """
    if not storable_text(client_id):
        return None
    rows = reader.rows(_GET, {"id": client_id})
    if not rows:
        return None
    row = rows[0]
    # The key column is the authority on which client this is; client_id first
    # keeps exported YAML readable.
    metadata: dict[str, Any] = {"client_id": row.client_id, **(row.metadata or {})}
    if jwks and row.keys:
        key_set = _key_set(row.client_id, row.keys, keyring, answers)
        if key_set is None:
            return None
        metadata[JWKS_FIELD] = key_set
    return Client(metadata=metadata, attributes=row.attributes or {}, backend=BACKEND_NAME)


def all_clients(
    reader: Reader,
    *,
    jwks: bool = True,
    keyring: Keyring | None = None,
    answers: JwksAnswers | None = None,
) -> list[Client]:
    """Every client, in creation order; one statement whatever their number.

    A client Python cannot read (JSON another writer nested too deep, say) is
    left out and named in a warning, and the listing goes on.
    """
    with collector.paused():
        found: list[Client] = []
        places: list[int] = []
        for row, (fields, attributes) in with_documents(reader.stream(_ALL), 3, "client"):
            metadata = {"client_id": row[0], **fields} if fields else {"client_id": row[0]}
            if jwks and row[2]:
                key_set = _key_set(row[0], row[2], keyring, answers)
                if key_set is None:
                    continue
                metadata[JWKS_FIELD] = key_set
            places.append(row[1])
            found.append(
                Client(metadata=metadata, attributes=attributes or {}, backend=BACKEND_NAME)
            )
        # Positions rather than (place, client) pairs: nothing more for the
        # cyclic collector to walk once the pause ends.
        return [found[index] for index in sorted(range(len(found)), key=places.__getitem__)]


def _key_set(
    client_id: str, key_rows: str, keyring: Keyring | None, answers: JwksAnswers | None
) -> dict[str, Any] | None:
    """The client's public JWK Set from its key rows (JSON text), converted only when they
    changed if ``answers`` keeps it; None, named in a warning, if Python cannot read them."""

    def convert() -> dict[str, Any] | None:
        parsed = read_documents((key_rows,), "client", client_id)
        if parsed is None:
            return None
        rows = (_KeyRow(row) for row in parsed[0])
        keys = keys_from_rows(CLIENT_CERTIFICATE_TARGET_TYPE, client_id, rows, keyring)
        return keys.to_jwks(private=False)

    return answers.client(client_id, key_rows, keyring, convert) if answers else convert()


class _KeyRow:
    """A key row folded into JSON, read like a result row (timestamps parsed back)."""

    _DATES: Final = frozenset(DATES)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        value = self._data.get(name)
        if name in self._DATES and isinstance(value, str):
            return datetime.datetime.fromisoformat(value)
        return value
