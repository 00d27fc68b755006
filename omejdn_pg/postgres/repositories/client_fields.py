"""A client's metadata rows folded into its fields: shared by the point read and the listing.

A module of its own so that a listing, which reads no keys, does not import the
client repository's key handling (and with it ``cryptography``).
"""

from __future__ import annotations

from typing import Any, Final, cast

from sqlalchemy import ColumnElement, FromClause, Table, func
from sqlalchemy.dialects.postgresql import JSON, aggregate_order_by

from omejdn_pg.postgres.repositories.attributes import OwnedAttributes
from omejdn_pg.postgres.repositories.common import json_column
from omejdn_pg.postgres.schema import CLIENT_OWNER, ClientFieldRecord

CLIENTS: Final = cast(Table, ClientFieldRecord.__table__)
"""A client's metadata rows: (client_id, key, value, ordinal)."""
CLIENT_ATTRIBUTES: Final = OwnedAttributes(CLIENT_OWNER, identifier_bind="id")
"""Statements on a client's attribute rows, its id bound as ``id``."""
NOT_METADATA: Final = "backend"
NOT_FIELDS: Final = ("client_id", NOT_METADATA)
"""Metadata rows that are not fields of a client (see :func:`metadata_fields`)."""


def metadata_fields(fields: FromClause = CLIENTS) -> ColumnElement[Any]:
    """A client's metadata rows folded into one json object of its fields by name (NULL
    if none); ``fields`` is the clients table or an alias of it.

    By name, because that is the order the primary key reads a client's rows
    in: the fold needs no sort, so a point read stays one index range scan and
    a listing grouped along the key streams (an unordered fold lets the planner
    choose a hash aggregate, which emits nothing before it has read every row).
    Every read answers the same order, whatever order the rows were written in.
    ``client_id`` and ``backend`` are left out: the key column says which client
    this is, and ``backend`` is never metadata.
    """
    return func.json_object_agg(
        fields.c.key, aggregate_order_by(json_column(fields.c.value), fields.c.key), type_=JSON
    ).filter(*(fields.c.key != name for name in NOT_FIELDS))
