"""Configuration sections: one ``configuration_<section>`` table per section.

The layout is Omejdn's (DESIGN §3): a dict section is ``(key TEXT PK, value
JSONB)``, one row per top-level key; a list section is ``(position BIGINT
identity PK, item JSONB)``, read in position order. Tables created by
Omejdn's Ruby plugin — ``(key TEXT PRIMARY KEY, value TEXT)`` and ``(item
TEXT)`` with no position — are read and written in place, since a Ruby server
sharing the database may create them at any time and must keep reading what
we write: their TEXT columns get compact JSON text (what ``JSON.generate``
writes), and a list without positions is read in physical order (``ctid``),
which is the Ruby plugin's insertion order as long as it is rewritten whole.

A section's shape is read from its columns, never assumed
(:mod:`~omejdn_pg.postgres.repositories.section_layouts`), so a load needs
no fallback and one statement serves every layout: the table's columns (from
``pg_attribute``) and all its rows (each whole row as JSON, aggregated) come
back in one round trip, costing the server about what a plain ``SELECT key,
value`` costs. The price of that generality is that a missing table is a
parse-time error rather than an empty result. On an AUTOCOMMIT connection
(``Database.read``) that error costs nothing and means "never written";
inside a transaction (a batch, a write) it would abort the whole transaction,
so there the statement runs under a SAVEPOINT — three round trips instead of
one, paid only by reads that share a transaction.

A store is one transaction (the caller's) behind a transaction-scoped
advisory lock per section, so writers — including the ones racing to create
the table — take turns: the second sees the first's committed table and
never fails with "already exists" or a duplicate key. Contents are replaced
by DELETE plus one INSERT … SELECT over ``json_each`` / ``json_array_elements``
of a single JSON parameter: constant SQL text whatever the size (so psycopg
prepares it), no bind-parameter limit, and the JSON text of each value goes
into a TEXT column byte for byte, key order and all. DELETE rather than
TRUNCATE keeps readers MVCC-consistent: until the commit they see the old
section whole. Writing a list over a dict section (or back) drops and
recreates the table in the same transaction; readers wait for that commit.

A server that runs with DML rights only (least privilege) cannot create
tables: the schema owner provisions the sections beforehand
(:meth:`ConfigRepository.provision`, ``omejdn-pg config create`` and
``omejdn-pg migrate --grant``). A provisioned table carries a comment that
marks it "provisioned": while it is empty it loads as None — never written —
so Omejdn's core still falls back to its defaults; the price is that
deliberately storing an empty section there also reads back as None. A store
that would need a new or reshaped table under such a role fails with the
command that fixes it, instead of PostgreSQL's bare "permission denied".
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import psycopg
from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    Delete,
    Insert,
    Select,
    Text,
    bindparam,
    cast,
    column,
    delete,
    func,
    insert,
    select,
    table,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.schema import DropTable

from omejdn_pg.errors import InvalidSectionName, InvalidValue, PermissionDenied
from omejdn_pg.postgres.database.direct import execute, together
from omejdn_pg.postgres.database.readpool import DIALECT
from omejdn_pg.postgres.repositories.common import (
    ConnectionReader,
    Reader,
    lock_for_update,
)
from omejdn_pg.postgres.repositories.section_layouts import (
    OURS,
    Layout,
    Shape,
    layout_of,
    section_content,
    section_payload,
)
from omejdn_pg.postgres.schema import (
    SECTION_PREFIX,
    dict_section_table,
    list_section_table,
    section_table_name,
    validate_section_name,
)

PROVISIONED: Final = "omejdn-pg: provisioned section"
"""The table comment of a section created ahead of its first write."""
KNOWN_SECTIONS: Final[dict[str, Shape]] = {
    "omejdn": "dict",
    "scope_mapping": "dict",
    "scope_description": "dict",
    "webfinger": "dict",
    "users": "list",
    "clients": "list",
}
"""The sections Omejdn's core and its default plugins write, with their shapes."""

_PG_ATTRIBUTE: Final = table(
    "pg_attribute",
    column("attrelid"),
    column("attname"),
    column("atttypid"),
    column("atttypmod"),
    column("attnum"),
    column("attisdropped", Boolean),
    schema="pg_catalog",
)
_PG_CLASS: Final = table(
    "pg_class",
    column("oid"),
    column("relname", Text),
    column("relkind"),
    schema="pg_catalog",
)


class ConfigRepository:
    """Configuration sections on a connection the caller owns."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def store(self, section: str, data: dict[str, Any] | list[Any]) -> None:
        """Replace the section's whole content with ``data``, creating or reshaping its table."""
        name = section_table_name(section)
        shape, payload = section_payload(section, data)

        with together(self.conn):
            lock_for_update(self.conn, "config", section)
            asking = execute(self.conn, _COLUMNS, {"regclass": regclass_text(name)})
        found = asking.fetchone()
        columns = found[0] if found is not None else None
        layout = layout_of(section, columns) if columns is not None else None
        if layout is None or layout.shape != shape:
            self._create(section, shape, replace=layout is not None)
            layout = OURS[shape]

        with together(self.conn):
            execute(self.conn, _delete_statement(name))
            if data:
                execute(self.conn, _insert_statement(name, layout), {"document": payload})

    def provision(self, section: str, shape: Shape = "dict", *, replace: bool = False) -> bool:
        """Create the section's table ahead of its first write (as the schema owner).

        False if a table of that shape exists already; one of the other shape
        is replaced only with ``replace`` (its content is lost).
        """
        name = section_table_name(section)
        lock_for_update(self.conn, "config", section)
        columns = self.conn.execute(_COLUMNS, {"regclass": regclass_text(name)}).scalar_one()
        if columns is not None:
            layout = layout_of(section, columns)
            if layout.shape == shape:
                return False
            if not replace:
                raise InvalidValue(
                    f"section {section!r} exists as a {layout.shape}; "
                    f"replacing it by a {shape} loses its content (replace it explicitly)"
                )
        self._create(section, shape, replace=columns is not None)
        quoted = self.conn.dialect.identifier_preparer.quote_identifier(name)
        self.conn.exec_driver_sql(f"COMMENT ON TABLE {quoted} IS '{PROVISIONED}'")
        self._share_grants(name)
        return True

    def _create(self, section: str, shape: Shape, *, replace: bool) -> None:
        create = dict_section_table if shape == "dict" else list_section_table
        try:
            with self.conn.begin_nested():
                if replace:
                    self.conn.execute(DropTable(dict_section_table(section)))
                create(section).create(self.conn)
        except sa_exc.ProgrammingError as error:
            if not isinstance(error.orig, psycopg.errors.InsufficientPrivilege):
                raise
            role = self.conn.exec_driver_sql("SELECT current_user").scalar_one()
            what = (
                "is a " + ("list" if shape == "dict" else "dict") if replace else "does not exist"
            )
            flags = (" --list" if shape == "list" else "") + (" --replace" if replace else "")
            raise PermissionDenied(
                f"configuration section {section!r} {what}, and role {role!r} may not "
                f"create tables; run `omejdn-pg config create {section}{flags}` as the "
                "schema owner"
            ) from error

    def _share_grants(self, table: str) -> None:
        """Give a section table just created to every other role that may write ``users``:
        what ``migrate --grant`` gave a server role reaches the sections made after it
        (it sets no default privileges, which would hand over any table of the schema)."""
        quote = self.conn.dialect.identifier_preparer.quote_identifier
        grantees = self.conn.exec_driver_sql(
            "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
            "WHERE table_schema = current_schema() AND table_name = 'users' "
            "AND privilege_type = 'UPDATE' AND grantee <> current_user"
        ).scalars()
        for grantee in grantees:
            self.conn.exec_driver_sql(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {quote(table)} TO {quote(grantee)}"
            )

    def load(self, section: str) -> dict[str, Any] | list[Any] | None:
        """The section's content, or None if it was never written; one statement."""
        return load_section(ConnectionReader(self.conn), section)

    def sections(self) -> list[str]:
        """Names of the sections that exist (visible on the search path), sorted."""
        c = _PG_CLASS
        names = self.conn.execute(
            select(c.c.relname).where(
                c.c.relkind.in_(("r", "p")),
                c.c.relname.startswith(SECTION_PREFIX, autoescape=True),
                func.pg_table_is_visible(c.c.oid),
            )
        ).scalars()
        sections = []
        for name in names:
            section = name[len(SECTION_PREFIX) :]
            try:
                sections.append(validate_section_name(section))
            except InvalidSectionName:
                continue  # a table someone else named; not a section we can address
        return sorted(sections)

    def delete(self, section: str) -> bool:
        """Drop the section's table; False if it did not exist."""
        name = section_table_name(section)
        lock_for_update(self.conn, "config", section)
        exists = self.conn.execute(
            select(func.to_regclass(regclass_text(name)).is_not(None))
        ).scalar_one()
        if not exists:
            return False
        self.conn.execute(DropTable(dict_section_table(section), if_exists=True))
        return True


def regclass_text(name: str) -> str:
    """``name`` as to_regclass() must see it: quoted, resolved on the search path
    exactly like the unqualified table name in the statements."""
    return DIALECT.identifier_preparer.quote_identifier(name)


# --- reads, on any Reader (a connection, or the primary's direct read path) --------


def load_section(reader: Reader, section: str) -> dict[str, Any] | list[Any] | None:
    """The section's content, or None if it was never written; one statement."""
    name = section_table_name(section)
    regclass = {"regclass": regclass_text(name)}
    try:
        rows = reader.rows(_load_query(name), regclass, may_fail=True)
    except sa_exc.ProgrammingError as error:
        if isinstance(error.orig, psycopg.errors.UndefinedTable):
            return None
        raise
    columns, content = rows[0]
    if columns is None:
        # Dropped between parsing and execution by a concurrent delete.
        return None
    if not content and reader.rows(_COMMENT, regclass)[0][0] == PROVISIONED:
        # Provisioned (an empty table) and never written; asked only when empty.
        return None
    return section_content(section, layout_of(section, columns), content or [])


# --- statements ----------------------------------------------------------------
# Built once per table name and reused: constructing a statement costs more
# Python time than the server spends running it, and a reused object keeps its
# SQLAlchemy cache key, so it is compiled once too. Values are bound at execution.

_COLUMNS: Final = select(
    func.jsonb_object_agg(
        _PG_ATTRIBUTE.c.attname,
        func.format_type(_PG_ATTRIBUTE.c.atttypid, _PG_ATTRIBUTE.c.atttypmod),
        type_=JSONB,
    )
).where(
    _PG_ATTRIBUTE.c.attrelid == func.to_regclass(bindparam("regclass", type_=Text)),
    _PG_ATTRIBUTE.c.attnum > 0,
    ~_PG_ATTRIBUTE.c.attisdropped,
)
"""``{column: type}`` of the table named by ``:regclass``, or NULL if there is none."""


_COMMENT: Final = select(
    func.obj_description(func.to_regclass(bindparam("regclass", type_=Text)), "pg_class")
)
"""The comment of the table named by ``:regclass`` (NULL if none)."""


@lru_cache(maxsize=1024)
def _load_query(name: str) -> Select[Any]:
    """Columns and every row of the table in one statement, whatever its layout.

    Rows are aggregated whole (``json_agg`` of the row) in physical order; a
    positioned list is sorted by position afterwards, which spares an ORDER BY
    expression that must work for tables with and without the column.
    """
    t = table(name, column("ctid")).alias("t")
    rows = (
        select(func.json_agg(aggregate_order_by(t.table_valued(), t.c.ctid)))
        .select_from(t)
        .scalar_subquery()
    )
    return select(_COLUMNS.scalar_subquery().label("columns"), rows.label("rows"))


@lru_cache(maxsize=1024)
def _delete_statement(name: str) -> Delete:
    """Every row of the section's table: one statement object per table, compiled once."""
    return delete(table(name))


@lru_cache(maxsize=1024)
def _insert_statement(name: str, layout: Layout) -> Insert:
    """INSERT … SELECT unpacking one JSON document (``:document``) in the server, in order.

    ``json`` (not jsonb) keeps each value's text as sent, so a TEXT column gets
    exactly the compact JSON Omejdn writes, and keeps the keys' order.
    """
    document = cast(bindparam("document", type_=Text), JSON)
    value_type = layout.sql_type()
    if layout.shape == "dict":
        target = table(name, column("key"), column(layout.column))
        pairs = func.json_each(document).table_valued("key", "value").render_derived("e")
        return insert(target).from_select(
            ["key", layout.column], select(pairs.c.key, cast(pairs.c.value, value_type))
        )
    target = table(name, column(layout.column))
    elements = (
        func.json_array_elements(document)
        .table_valued("value", with_ordinality="ordinality")
        .render_derived("e")
    )
    # ORDER BY the ordinality so the identity (or the physical order of a
    # position-less Ruby table) follows the list's order.
    return insert(target).from_select(
        [layout.column],
        select(cast(elements.c.value, value_type)).order_by(elements.c.ordinality),
    )
