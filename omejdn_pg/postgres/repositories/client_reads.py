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
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from sqlalchemy import Select, Table, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import JSONB

from omejdn_pg import collector
from omejdn_pg.entities import Client
from omejdn_pg.json_values import storable_text
from omejdn_pg.keys.states import DATES
from omejdn_pg.postgres.repositories.attributes import OwnedAttributes
from omejdn_pg.postgres.repositories.client_fields import metadata_fields
from omejdn_pg.postgres.repositories.common import Reader, with_documents
from omejdn_pg.postgres.repositories.jwks_answers import JwksAnswers
from omejdn_pg.postgres.repositories.key_mapping import KEY_COLUMNS, keys_from_rows
from omejdn_pg.postgres.schema import (
    CLIENT_CERTIFICATE_TARGET_TYPE,
    CLIENT_OWNER,
    ClientFieldRecord,
    KeyRecord,
)
from omejdn_pg.sealing import Keyring
from omejdn_pg.settings.backend import BACKEND_NAME

_clients: Final = cast(Table, ClientFieldRecord.__table__)
_ATTRIBUTES: Final = OwnedAttributes(CLIENT_OWNER, identifier_bind="id")
_keys: Final = cast(Table, KeyRecord.__table__)

JWKS_FIELD: Final = "jwks"


_KEY_FIELDS: Final = tuple(part for column in KEY_COLUMNS for part in (column.name, column))
"""A key row's columns as ``json_build_object`` arguments: each name, then its column."""


def _folded_keys(client_id: Any) -> Any:
    """The client's key rows as one jsonb array (NULL if none): a correlated subquery."""
    row = func.jsonb_build_object(*_KEY_FIELDS)
    return (
        select(func.jsonb_agg(row, type_=JSONB))
        .where(
            _keys.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE,
            _keys.c.target == client_id,
        )
        .scalar_subquery()
    )


def _select_clients() -> Select[Any]:
    """One row per client: its fields, attributes and key rows (NULL if none) as JSON."""
    return select(
        _clients.c.client_id,
        metadata_fields().label("metadata"),
        _ATTRIBUTES.folded(_clients.c.client_id).label("attributes"),
        _folded_keys(_clients.c.client_id).label("keys"),
    ).group_by(_clients.c.client_id)


def _listing() -> Select[Any]:
    """Every client as text JSON columns with its place in creation order, by client_id.

    Each part is grouped along its primary key (metadata, attributes, key rows)
    and merge-joined on client_id, so clients stream out while the server
    still folds the rest, and the parser and :func:`all_clients` work on the
    first ones meanwhile. The creation order (a client's place is the
    smallest ``ordinal`` of its rows) is therefore left to the caller: a sort
    in SQL would hold back every row until the last client was folded.
    """
    metadata = (
        select(
            _clients.c.client_id,
            func.min(_clients.c.ordinal).label("place"),
            metadata_fields().cast(Text).label("metadata"),
        )
        .group_by(_clients.c.client_id)
        .subquery("metadata")
    )
    attributes = _ATTRIBUTES.per_owner()
    key_row = func.json_build_object(*_KEY_FIELDS)
    keys = (
        select(_keys.c.target, func.json_agg(key_row).cast(Text).label("keys"))
        .where(_keys.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE)
        .group_by(_keys.c.target)
        .subquery("key_rows")
    )
    return (
        select(
            metadata.c.client_id,
            metadata.c.place,
            metadata.c.metadata,
            attributes.c.attributes,
            keys.c["keys"],
        )
        .select_from(
            metadata.outerjoin(
                attributes, attributes.c.identifier == metadata.c.client_id
            ).outerjoin(keys, keys.c.target == metadata.c.client_id)
        )
        .order_by(metadata.c.client_id)
    )


_GET: Final = _select_clients().where(_clients.c.client_id == bindparam("id"))
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
    """
    if not storable_text(client_id):
        return None
    rows = reader.rows(_GET, {"id": client_id})
    if not rows:
        return None
    row = rows[0]
    return _assembled(row.client_id, row.metadata, row.attributes, row.keys, jwks, keyring, answers)


def all_clients(
    reader: Reader,
    *,
    jwks: bool = True,
    keyring: Keyring | None = None,
    answers: JwksAnswers | None = None,
) -> list[Client]:
    """Every client, in creation order; one statement whatever their number."""
    with collector.paused():
        found: list[Client] = []
        places: list[int] = []
        for row, (fields, attributes, key_rows) in with_documents(reader.stream(_ALL), 2, "client"):
            places.append(row[1])
            found.append(_assembled(row[0], fields, attributes, key_rows, jwks, keyring, answers))
        # Positions rather than (place, client) pairs: nothing more for the
        # cyclic collector to walk once the pause ends.
        return [found[index] for index in sorted(range(len(found)), key=places.__getitem__)]


def _assembled(
    client_id: str,
    fields: Mapping[str, Any] | None,
    attributes: dict[str, Any] | None,
    key_rows: Sequence[Mapping[str, Any]] | None,
    jwks: bool,
    keyring: Keyring | None,
    answers: JwksAnswers | None,
) -> Client:
    """The client from its parsed documents; ``fields`` holds neither client_id nor backend.

    The key column is the authority on which client this is; client_id first
    keeps exported YAML readable. The documents are the caller's own (freshly
    parsed), so they are not copied.
    """
    metadata: dict[str, Any] = {"client_id": client_id, **(fields or {})}
    if jwks and key_rows:

        def convert() -> dict[str, Any]:
            rows = (_KeyRow(row) for row in key_rows)
            keys = keys_from_rows(CLIENT_CERTIFICATE_TARGET_TYPE, client_id, rows, keyring)
            return keys.to_jwks(private=False)

        metadata[JWKS_FIELD] = (
            answers.client(client_id, key_rows, keyring, convert) if answers else convert()
        )
    return Client(metadata=metadata, attributes=attributes or {}, backend=BACKEND_NAME)


class _KeyRow:
    """A key row folded into jsonb, read like a result row (timestamps parsed back)."""

    _DATES: Final = frozenset(DATES)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        value = self._data.get(name)
        if name in self._DATES and isinstance(value, str):
            return datetime.datetime.fromisoformat(value)
        return value
