"""Operator listings of users and clients: filtered, searched, paged and streamed by the database.

The server's reads (:mod:`.users`, :mod:`.clients`) return whole lists. An
operator listing tens of thousands of users wants the first rows at once, a
filter the database evaluates, and a count. So each listing here is ONE
statement — every filter an EXISTS probe of the attribute (for clients also
the metadata) rows, with bound parameters only; attributes folded into one
jsonb object per row in SQL; LIMIT and OFFSET in SQL — run through a
server-side cursor whose fetches start small and grow to :data:`BATCH` rows
(``stream_results`` with ``max_row_buffer``: 5, 25, 125, then 500), so the
first page is on screen before a whole batch is decoded, and never one
statement per row. A server-side cursor lives in a transaction, so
the caller runs a listing inside ``Database.snapshot()``: one REPEATABLE READ
view for the rows and for the count read after them, so the two agree.

``KEY=VALUE`` matches when the stored value equals VALUE as JSON (numbers by
value), or is a list holding VALUE, so ``scope=openid`` finds a client whose
scope is ``[openid, profile]``. A search is a case-insensitive substring of
the username or client_id. The price: each filter is one index probe per
candidate row, a search reads every name, and OFFSET re-reads what it skips —
right for an operator's paging, not for a web UI's deep pages.

JIT compilation is switched off for the listing's transaction (``SET LOCAL``):
a listing of 20,000 rows with a correlated attribute probe per row is costed
above ``jit_above_cost``, and a fresh connection then spends some 40 ms
compiling before its first row — several times what the first page takes to
read — for a statement whose work is index probes that JIT does not speed up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    true,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects.postgresql import JSONB

from omejdn_pg.entities import Client, User
from omejdn_pg.errors import InvalidValue
from omejdn_pg.json_values import check_json, check_text
from omejdn_pg.postgres.repositories.attributes import OwnedAttributes
from omejdn_pg.postgres.repositories.client_fields import metadata_fields
from omejdn_pg.postgres.repositories.common import json_column, read_documents, read_extern
from omejdn_pg.postgres.schema import (
    CLIENT_OWNER,
    USER_OWNER,
    AttributeRecord,
    ClientFieldRecord,
    UserRecord,
)
from omejdn_pg.settings.backend import BACKEND_NAME

BATCH: Final = 500
"""Rows fetched per round trip of the server-side cursor, once past the first few fetches."""

_users: Final = cast(Table, UserRecord.__table__)
_fields: Final = cast(Table, ClientFieldRecord.__table__)
_attributes: Final = cast(Table, AttributeRecord.__table__)
_USER_ATTRIBUTES: Final = OwnedAttributes(USER_OWNER, identifier_bind="name")
_CLIENT_ATTRIBUTES: Final = OwnedAttributes(CLIENT_OWNER, identifier_bind="id")


@dataclass(frozen=True)
class Criteria:
    """Which users or clients a listing shows."""

    filters: tuple[tuple[str, Any], ...] = ()
    """``(key, value)`` pairs that must all match (attributes; for clients also metadata)."""
    search: str | None = None
    """A case-insensitive substring of the username or client_id."""
    limit: int | None = None
    offset: int = 0

    @property
    def narrowed(self) -> bool:
        """Whether filters or a search leave some out (as opposed to paging only)."""
        return bool(self.filters or self.search)

    def checked(self) -> Criteria:
        """Itself, once every key and value is known to be storable (nothing else reaches SQL)."""
        for key, value in self.filters:
            check_text(key, f"filter key {key!r}")
            check_json(value, f"filter {key}")
        if self.search is not None:
            check_text(self.search, "search text")
        if (self.limit is not None and self.limit < 0) or self.offset < 0:
            raise InvalidValue("limit and offset must not be negative")
        return self


@dataclass(frozen=True)
class Counts:
    matching: int
    """How many satisfy the filters and the search (before limit and offset)."""
    total: int
    """How many there are in all."""


# --- conditions -----------------------------------------------------------------


def _value_matches(stored: ColumnElement[Any], wanted: ColumnElement[Any]) -> ColumnElement[bool]:
    value = json_column(stored)
    return or_(
        value == wanted,
        and_(
            func.jsonb_typeof(value) == "array",
            value.contains(func.jsonb_build_array(wanted, type_=JSONB)),
        ),
    )


def _attribute_matches(
    owner_type: str, owner: ColumnElement[Any], index: int
) -> ColumnElement[bool]:
    wanted = bindparam(f"filter_value_{index}", type_=JSONB)
    return exists().where(
        _attributes.c.type == owner_type,
        _attributes.c.identifier == owner,
        _attributes.c.key == bindparam(f"filter_key_{index}"),
        _value_matches(_attributes.c.value, wanted),
    )


def _name_contains(name: ColumnElement[Any]) -> ColumnElement[bool]:
    return func.strpos(func.lower(name), func.lower(bindparam("search"))) > 0


def _params(criteria: Criteria) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for index, (key, value) in enumerate(criteria.filters):
        params[f"filter_key_{index}"] = key
        params[f"filter_value_{index}"] = value
    if criteria.search is not None:
        params["search"] = criteria.search
    return params


def _paged(statement: Select[Any], criteria: Criteria) -> Select[Any]:
    if criteria.limit is not None:
        statement = statement.limit(criteria.limit)
    if criteria.offset:
        statement = statement.offset(criteria.offset)
    return statement


def _without_jit(conn: Connection) -> None:
    conn.exec_driver_sql("SET LOCAL jit = off")


def _stream(conn: Connection, statement: Select[Any], params: dict[str, Any]) -> Iterator[Any]:
    _without_jit(conn)
    result = conn.execute(
        statement, params, execution_options={"stream_results": True, "max_row_buffer": BATCH}
    )
    try:
        yield from result
    finally:
        result.close()


# --- users ------------------------------------------------------------------------


def _user_conditions(criteria: Criteria) -> list[ColumnElement[bool]]:
    conditions = [
        _attribute_matches(USER_OWNER, _users.c.username, index)
        for index in range(len(criteria.filters))
    ]
    if criteria.search is not None:
        conditions.append(_name_contains(_users.c.username))
    return conditions


def users(conn: Connection, criteria: Criteria = Criteria()) -> Iterator[User]:
    """The users ``criteria`` selects, by username, as the cursor delivers them."""
    criteria = criteria.checked()
    statement = (
        select(
            _users.c.username,
            _users.c.password,
            _users.c.extern,
            _as_text(json_column(_users.c.consent)).label("consent"),
            _as_text(_USER_ATTRIBUTES.folded(_users.c.username)).label("attributes"),
        )
        .where(*_user_conditions(criteria))
        .order_by(_users.c.username)
    )
    for row in _stream(conn, _paged(statement, criteria), _params(criteria)):
        documents = read_documents((row.consent, row.attributes), "user", row.username)
        if documents is not None:
            consent, attributes = documents
            yield User(
                username=row.username,
                password=row.password,
                attributes=dict(attributes or {}),
                extern=read_extern(row.extern),
                consent=dict(consent or {}),
                backend=BACKEND_NAME,
            )


def _as_text(document: Any) -> Any:
    """The JSON as text, parsed here (:func:`read_documents`): a row Python cannot read
    is left out by name instead of failing the cursor, and the listing goes on."""
    return sa_cast(document, Text)


def count_users(conn: Connection, criteria: Criteria = Criteria()) -> Counts:
    """How many users ``criteria`` selects, and how many there are; one statement."""
    criteria = criteria.checked()
    matching = func.count().filter(and_(true(), *_user_conditions(criteria)))
    _without_jit(conn)
    row = conn.execute(select(matching, func.count()).select_from(_users), _params(criteria)).one()
    return Counts(matching=row[0], total=row[1])


# --- clients ----------------------------------------------------------------------

_client_ids: Final = select(_fields.c.client_id).distinct().subquery("client_ids")
_field: Final = _fields.alias("field")


def _client_conditions(criteria: Criteria) -> list[ColumnElement[bool]]:
    owner = _client_ids.c.client_id
    conditions: list[ColumnElement[bool]] = []
    for index in range(len(criteria.filters)):
        metadata_matches = exists().where(
            _field.c.client_id == owner,
            _field.c.key == bindparam(f"filter_key_{index}"),
            _value_matches(_field.c.value, bindparam(f"filter_value_{index}", type_=JSONB)),
        )
        conditions.append(or_(metadata_matches, _attribute_matches(CLIENT_OWNER, owner, index)))
    if criteria.search is not None:
        conditions.append(_name_contains(owner))
    return conditions


def clients(conn: Connection, criteria: Criteria = Criteria()) -> Iterator[Client]:
    """The clients ``criteria`` selects, by client_id, as the cursor delivers them."""
    criteria = criteria.checked()
    owner = _client_ids.c.client_id
    metadata = select(metadata_fields(_field)).where(_field.c.client_id == owner).scalar_subquery()
    statement = (
        select(
            owner.label("client_id"),
            _as_text(metadata).label("metadata"),
            _as_text(_CLIENT_ATTRIBUTES.folded(owner)).label("attributes"),
        )
        .where(*_client_conditions(criteria))
        .order_by(owner)
    )
    for row in _stream(conn, _paged(statement, criteria), _params(criteria)):
        documents = read_documents((row.metadata, row.attributes), "client", row.client_id)
        if documents is None:
            continue
        fields, attributes = documents
        yield Client(
            metadata={"client_id": row.client_id, **(fields or {})},
            attributes=dict(attributes or {}),
            backend=BACKEND_NAME,
        )


def count_clients(conn: Connection, criteria: Criteria = Criteria()) -> Counts:
    """How many clients ``criteria`` selects, and how many there are; one statement."""
    criteria = criteria.checked()
    matching = func.count().filter(and_(true(), *_client_conditions(criteria)))
    _without_jit(conn)
    row = conn.execute(
        select(matching, func.count()).select_from(_client_ids), _params(criteria)
    ).one()
    return Counts(matching=row[0], total=row[1])
