"""The ``attributes`` rows of one kind of owner: what users and clients share.

``attributes`` has a polymorphic owner (``type`` + ``identifier``) and no
foreign key (see :mod:`omejdn_pg.postgres.schema`), so nothing in the database takes an
owner's attributes along when the owner goes: the user and client repositories
do it, in the owner's transaction, with the statements built here. One builder
for both owners keeps the two from drifting apart; it varies only the owner
type and the name the owner's identifier is bound as (``name`` for users,
``id`` for clients), so each repository keeps one bind name in all its
statements.

Attributes are written as one JSON document unpacked with ``json_each`` in
the server: a fixed number of statements whatever their number, into a value
column that may be JSONB (ours) or TEXT (Omejdn's Ruby plugin). The document
is ``json``, not ``jsonb``, so its key order survives: each row's ``ordinal``
is its place in the caller's mapping, and every read folds the rows in that
order (``json_object_agg ... ORDER BY ordinal``), as Omejdn's own stores keep
them. The price is a ``json`` rather than a ``jsonb`` fold, which is no slower
for the handful of attributes an owner has. A value is still stored as jsonb,
so the keys of an object inside a value come back in jsonb's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    ScalarSelect,
    Subquery,
    Table,
    Text,
    bindparam,
    column,
    delete,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB, aggregate_order_by

from omejdn_pg.entities import normalize_attributes
from omejdn_pg.json_values import check_json, check_text
from omejdn_pg.postgres.database.direct import execute
from omejdn_pg.postgres.repositories.common import json_column
from omejdn_pg.postgres.schema import AttributeRecord

_attributes: Final = cast(Table, AttributeRecord.__table__)


class OwnedAttributes:
    """Statements on the attribute rows of the owners of one ``type``."""

    def __init__(
        self,
        owner_type: str,
        identifier_bind: str,
        *,
        only_if: ColumnElement[bool] | None = None,
    ) -> None:
        """``only_if``: a condition (the owner exists, say) without which :meth:`replace`
        and :meth:`remove` touch no row, checked by the statements themselves."""
        self.owner_type: Final = owner_type
        self.identifier_bind: Final = identifier_bind
        owned = delete(_attributes).where(
            _attributes.c.type == owner_type,
            _attributes.c.identifier == bindparam(identifier_bind),
        )
        self.delete: Final = owned.where(only_if) if only_if is not None else owned
        each = (
            func.json_each(bindparam("attribute_doc", type_=JSON))
            .table_valued(column("key", Text), column("value", JSON), with_ordinality="ordinal")
            .render_derived()
        )
        rows = select(
            literal(owner_type, Text),
            bindparam(identifier_bind, type_=Text),
            each.c.key,
            each.c.value.cast(JSONB),
            each.c.ordinal,
        )
        self.insert: Final = insert(_attributes).from_select(
            ["type", "identifier", "key", "value", "ordinal"],
            rows.where(only_if) if only_if is not None else rows,
        )

    def folded(self, identifier: ColumnElement[Any]) -> ScalarSelect[Any]:
        """The attributes of the owner ``identifier`` names as one json object in their
        order (NULL if none), a correlated subquery: an index range scan on the
        attributes' primary key."""
        return (
            select(ordered_fold())
            .where(_attributes.c.type == self.owner_type)
            .where(_attributes.c.identifier == identifier)
            .scalar_subquery()
        )

    def per_owner(self) -> Subquery:
        """Each owner's attributes as one JSON object in text (``identifier``, ``attributes``),
        in identifier order when read along the primary key: for a listing's merge join."""
        return (
            select(
                _attributes.c.identifier,
                ordered_fold().cast(Text).label("attributes"),
            )
            .where(_attributes.c.type == self.owner_type)
            .group_by(_attributes.c.identifier)
            .subquery("owned")
        )

    def remove(self, conn: Connection, identifier: str) -> None:
        """Delete every attribute row of the owner."""
        execute(conn, self.delete, {self.identifier_bind: identifier})

    def replace(self, conn: Connection, identifier: str, attributes: Mapping[str, Any]) -> None:
        """Make ``attributes`` the owner's only attribute rows."""
        self.remove(conn, identifier)
        if attributes:
            execute(
                conn, self.insert, {self.identifier_bind: identifier, "attribute_doc": attributes}
            )


def ordered_fold() -> ColumnElement[Any]:
    """The aggregate of attribute rows into one json object, in their ``ordinal`` order
    (the key breaks ties between rows another writer appended)."""
    # ORDER BY belongs after the aggregate's last argument: json_object_agg(k, v ORDER BY o).
    ordered = aggregate_order_by(
        json_column(_attributes.c.value), _attributes.c.ordinal, _attributes.c.key
    )
    return func.json_object_agg(_attributes.c.key, ordered, type_=JSON)


def checked_attributes(attributes: object, who: str) -> dict[str, Any]:
    """``attributes`` as a mapping, every name and value checked before any SQL is sent."""
    result = normalize_attributes(attributes, f"{who}: attributes")
    for key, value in result.items():
        check_text(key, f"{who}: attribute name {key!r}")
        check_json(value, f"{who}: attributes.{key}")
    return result
