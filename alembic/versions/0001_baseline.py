"""Baseline: Omejdn's four tables, created fresh or adopted from the Ruby plugin.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

An empty database gets ``users``, ``clients``, ``attributes`` and ``keys``
exactly as :mod:`omejdn_pg.postgres.schema` declares them. The definitions are copied
here rather than imported: a migration must not change when the models do.

A database written by Omejdn's Ruby ``postgres_backend`` plugin is adopted in
place, in the same transaction as everything else, keeping every row:

* JSON value columns (``clients.value``, ``attributes.value``, a dict
  section's ``value``, a list section's ``item``) go from TEXT to JSONB; a SQL
  NULL becomes JSON ``null``;
* rows equal in every column (JSON compared as jsonb) collapse to one, the
  first in physical order staying;
* primary keys and CHECK constraints are added under the names the models'
  naming convention gives (``pk_clients``, ``ck_attributes_type``, ...); an
  existing primary key on the right columns (``users_pkey``) is renamed;
* ``users`` gains ``extern`` (NULL) and ``consent`` (JSONB, default ``{}``);
* ``configuration_<section>`` tables: a dict section ``(key, value)`` gets a
  JSONB ``value``; a list section ``(item)`` gains ``position``, an identity
  primary key numbered in the rows' physical order — the Ruby plugin inserted
  the items in order and never read them with ORDER BY, so that order is the
  section's. (The new column comes after ``item``; queries name their columns.)

Missing tables are created; a table already in our layout is left as it is,
so running the adoption over a half-adopted database converges. Every table it
touches is locked first, so a Ruby server still writing waits for the commit.

Nothing changes before everything has been validated. A value that is not
JSON, two rows with the same key but different values, a NULL in a key
column, a ``type`` outside the CHECK set, or a table of unexpected layout
raises MigrationError listing each problem with its table and key — never a
value, since those are password hashes and private keys. The transaction rolls
back and the database is exactly as it was. ``configuration_*`` tables whose
name is not a valid section name are never read by omejdn_pg and are left alone.

Offline mode (``alembic upgrade --sql``) cannot look at the database, so it
prints the DDL of a fresh install only.

Downgrade drops the four tables and their data. It does not restore the Ruby
plugin's layout (the Ruby plugin reads and writes ours as well), and it never
touches ``configuration_*`` tables, which Alembic does not own.
"""

# No `from __future__ import annotations`: Alembic loads this file without
# registering it in sys.modules, where dataclasses look string annotations up.
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import context, op
from omejdn_pg.errors import MigrationError

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("omejdn_pg.migrations")

OWNER_TYPES: Final = ("user", "client")
KEY_TYPES: Final = ("sk", "certs")
SECTION_PREFIX: Final = "configuration_"
SECTION_TABLE: Final = re.compile(r"configuration_[a-z][a-z0-9_]{0,48}")
PK_CONVENTION: Final = {"pk": "pk_%(table_name)s"}
MAX_PROBLEMS: Final = 50
JSON_NULL: Final = "'null'::jsonb"
EMPTY_OBJECT: Final = "'{}'::jsonb"
TEMP_JSON_CHECK: Final = "pg_temp.omejdn_pg_is_json"


def upgrade() -> None:
    if context.is_offline_mode():
        for create in _CREATE.values():
            create()
        return
    Adoption(op.get_bind()).run()


def downgrade() -> None:
    for table in ("keys", "attributes", "clients", "users"):
        op.drop_table(table)


# --- a fresh install -----------------------------------------------------------


def _create_users() -> None:
    op.create_table(
        "users",
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("password", sa.Text(), nullable=True),
        sa.Column("extern", sa.Text(), nullable=True),
        sa.Column(
            "consent", postgresql.JSONB(), server_default=sa.text(EMPTY_OBJECT), nullable=False
        ),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_users")),
    )


def _create_clients() -> None:
    op.create_table(
        "clients",
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "key", name=op.f("pk_clients")),
    )


def _create_attributes() -> None:
    op.create_table(
        "attributes",
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("identifier", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", postgresql.JSONB(), nullable=False),
        sa.CheckConstraint(_type_check(OWNER_TYPES), name=op.f("ck_attributes_type")),
        sa.PrimaryKeyConstraint("type", "identifier", "key", name=op.f("pk_attributes")),
    )


def _create_keys() -> None:
    op.create_table(
        "keys",
        sa.Column("target_type", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.CheckConstraint(_type_check(KEY_TYPES), name=op.f("ck_keys_type")),
        sa.PrimaryKeyConstraint("target_type", "target", "type", name=op.f("pk_keys")),
    )


_CREATE: Final = {
    "users": _create_users,
    "clients": _create_clients,
    "attributes": _create_attributes,
    "keys": _create_keys,
}


def _type_check(allowed: tuple[str, ...]) -> str:
    return f"type IN ({', '.join(repr(value) for value in allowed)})"


# --- adopting the Ruby plugin's tables -----------------------------------------


@dataclass(frozen=True)
class Column:
    """A non-key column of a table we adopt."""

    name: str
    json: bool = False
    """JSONB in our layout; TEXT holding JSON documents in the Ruby plugin's."""
    nullable: bool = False
    add: str | None = None
    """Type and default to ADD the column with when it is missing; None: it must exist."""
    null_as: str = JSON_NULL
    """What a SQL NULL becomes when the column turns JSONB NOT NULL."""


@dataclass(frozen=True)
class Layout:
    """A table with a primary key: the target the existing table must become."""

    table: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    allowed_types: tuple[str, ...] = ()
    """The CHECK set of the ``type`` column, if it has one."""


_LAYOUTS: Final = {
    "users": Layout(
        "users",
        ("username",),
        (
            Column("password", nullable=True),
            Column("extern", nullable=True, add="text"),
            Column("consent", json=True, add=f"jsonb NOT NULL DEFAULT {EMPTY_OBJECT}"),
        ),
    ),
    "clients": Layout("clients", ("client_id", "key"), (Column("value", json=True),)),
    "attributes": Layout(
        "attributes",
        ("type", "identifier", "key"),
        (Column("value", json=True),),
        OWNER_TYPES,
    ),
    "keys": Layout("keys", ("target_type", "target", "type"), (Column("value"),), KEY_TYPES),
}


@dataclass(frozen=True)
class Found:
    """An existing table as the catalog describes it."""

    oid: int
    name: str
    columns: dict[str, tuple[str, bool]]
    """Column name → (type as ``format_type`` shows it, NOT NULL)."""
    primary_key: tuple[str, tuple[str, ...]] | None
    """(constraint name, columns in key order), if there is one."""
    checks: frozenset[str]

    def type_of(self, column: str) -> str | None:
        found = self.columns.get(column)
        return found[0] if found else None


@dataclass(frozen=True)
class Step:
    sql: str
    report: str | None = None
    """Logged after the step with ``{n}`` = rows affected, if given."""
    params: dict[str, Any] | None = None


class Adoption:
    """Validate every existing table, then convert them and create the missing ones."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.preparer = conn.dialect.identifier_preparer
        self.problems: list[str] = []
        self.steps: list[Step] = []
        self._json_check: str | None = None

    def run(self) -> None:
        existing = self._tables()
        sections = sorted(name for name in existing if name.startswith(SECTION_PREFIX))
        adopted = [name for name in _LAYOUTS if name in existing]
        for name in sections:
            if SECTION_TABLE.fullmatch(name) is None:
                log.warning("%s: not a valid configuration section name; left as it is", name)
        sections = [name for name in sections if SECTION_TABLE.fullmatch(name)]
        if adopted or sections:
            # Nobody writes between validation and conversion, and the Ruby
            # server (if still running) waits for the commit.
            tables = ", ".join(self.quote(name) for name in sorted([*adopted, *sections]))
            self._execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")

        for name in adopted:
            self._adopt_keyed(self._describe(name, existing[name]), _LAYOUTS[name])
        for name in sections:
            self._adopt_section(self._describe(name, existing[name]))
        if self.problems:
            raise MigrationError(self._report())

        for name, create in _CREATE.items():
            if name not in existing:
                create()
        for step in self.steps:
            result = self._execute(step.sql, step.params)
            if step.report and result.rowcount > 0:
                log.info(step.report.format(n=result.rowcount))
        if self._json_check and self._json_check.startswith(TEMP_JSON_CHECK):
            self._execute(f"DROP FUNCTION {TEMP_JSON_CHECK}(text)")
        if adopted or sections:
            log.info("adopted existing tables: %s", ", ".join([*adopted, *sections]))

    # --- the catalog ---

    def _tables(self) -> dict[str, int]:
        rows = self.conn.execute(
            sa.text(
                "SELECT c.relname, c.oid::bigint FROM pg_catalog.pg_class AS c "
                "WHERE c.relnamespace = current_schema()::regnamespace "
                "AND c.relkind IN ('r', 'p')"
            )
        )
        return {str(name): int(oid) for name, oid in rows}

    def _describe(self, name: str, oid: int) -> Found:
        columns = {
            str(column): (str(type_), bool(not_null))
            for column, type_, not_null in self.conn.execute(
                sa.text(
                    "SELECT attname, format_type(atttypid, atttypmod), attnotnull "
                    "FROM pg_catalog.pg_attribute "
                    "WHERE attrelid = :oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
                ),
                {"oid": oid},
            )
        }
        constraints = self.conn.execute(
            sa.text(
                "SELECT con.conname, con.contype, "
                "ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, i) "
                "JOIN pg_catalog.pg_attribute AS a "
                "ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.i) "
                "FROM pg_catalog.pg_constraint AS con "
                "WHERE con.conrelid = :oid AND con.contype IN ('p', 'c')"
            ),
            {"oid": oid},
        ).all()
        primary_key = next(
            ((str(con), tuple(map(str, cols))) for con, kind, cols in constraints if kind == "p"),
            None,
        )
        checks = frozenset(str(con) for con, kind, _ in constraints if kind == "c")
        return Found(oid, name, columns, primary_key, checks)

    # --- tables with a primary key: the four, and dict sections ---

    def _adopt_keyed(self, found: Found, layout: Layout) -> None:
        table = self.quote(layout.table)
        if not self._layout_matches(found, layout):
            return
        has_key = found.primary_key is not None
        text_json = [c for c in layout.columns if c.json and found.type_of(c.name) == "text"]
        self._check_rows(found, layout, text_json)
        if not has_key:
            self._check_conflicts(found, layout, text_json)
            same_key = " AND ".join(f"a.{self.quote(k)} = b.{self.quote(k)}" for k in layout.key)
            self.steps.append(
                Step(
                    f"DELETE FROM {table} AS a USING {table} AS b "
                    f"WHERE {same_key} AND a.ctid > b.ctid",
                    f"{layout.table}: {{n}} duplicate row(s) collapsed",
                )
            )

        changes: list[str] = []
        for column in layout.columns:
            quoted = self.quote(column.name)
            type_ = found.type_of(column.name)
            if type_ is None:
                assert column.add is not None  # _layout_matches made sure
                changes.append(f"ADD COLUMN {quoted} {column.add}")
                continue
            if column.json and type_ == "text":
                changes.append(
                    f"ALTER COLUMN {quoted} TYPE jsonb "
                    f"USING COALESCE({quoted}::jsonb, {column.null_as})"
                )
            elif column.json and not column.nullable and not found.columns[column.name][1]:
                self.steps.append(
                    Step(f"UPDATE {table} SET {quoted} = {column.null_as} WHERE {quoted} IS NULL")
                )
            if not column.nullable and not found.columns[column.name][1]:
                changes.append(f"ALTER COLUMN {quoted} SET NOT NULL")
        primary_key = self._primary_key_name(layout.table)
        if found.primary_key is None:
            columns = ", ".join(self.quote(k) for k in layout.key)
            changes.append(f"ADD CONSTRAINT {self.quote(primary_key)} PRIMARY KEY ({columns})")
        check = f"ck_{layout.table}_type"
        if layout.allowed_types and check not in found.checks:
            changes.append(
                f"ADD CONSTRAINT {self.quote(check)} CHECK ({_type_check(layout.allowed_types)})"
            )
        if changes:
            self.steps.append(Step(f"ALTER TABLE {table} {', '.join(changes)}"))
        if found.primary_key is not None and found.primary_key[0] != primary_key:
            self.steps.append(
                Step(
                    f"ALTER TABLE {table} RENAME CONSTRAINT "
                    f"{self.quote(found.primary_key[0])} TO {self.quote(primary_key)}"
                )
            )

    def _layout_matches(self, found: Found, layout: Layout) -> bool:
        expected = [*layout.key, *(c.name for c in layout.columns)]
        required = [*layout.key, *(c.name for c in layout.columns if c.add is None)]
        wrong = [
            name
            for name in [*layout.key, *(c.name for c in layout.columns if not c.json)]
            if found.type_of(name) not in (None, "text")
        ] + [
            c.name
            for c in layout.columns
            if c.json and found.type_of(c.name) not in (None, "text", "jsonb")
        ]
        if (
            any(name not in found.columns for name in required)
            or any(name not in expected for name in found.columns)
            or wrong
            or (found.primary_key is not None and found.primary_key[1] != layout.key)
        ):
            self.problems.append(
                f"{found.name}: unexpected layout ({self._columns_of(found)}); expected "
                f"{', '.join(expected)} with primary key ({', '.join(layout.key)})"
            )
            return False
        return True

    def _check_rows(self, found: Found, layout: Layout, text_json: list[Column]) -> None:
        checks: list[tuple[str, str]] = []
        for key in layout.key:
            checks.append((f"{self.quote(key)} IS NULL", f"{key} is NULL (a primary key column)"))
        if layout.allowed_types:
            allowed = ", ".join(repr(value) for value in layout.allowed_types)
            checks.append((f"NOT ({_type_check(layout.allowed_types)})", f"type not in {allowed}"))
        for column in text_json:
            quoted = self.quote(column.name)
            checks.append(
                (
                    f"{quoted} IS NOT NULL AND NOT {self._is_json(quoted)}",
                    f"{column.name} is not JSON",
                )
            )
        for column in layout.columns:
            if not column.json and not column.nullable and column.name in found.columns:
                checks.append((f"{self.quote(column.name)} IS NULL", f"{column.name} is NULL"))
        flags = [f"COALESCE(({condition}), false)" for condition, _ in checks]
        keys = ", ".join(self.quote(key) for key in layout.key)
        rows = self.conn.execute(
            sa.text(
                f"SELECT {keys}, {', '.join(flags)} FROM {self.quote(found.name)} "
                f"WHERE {' OR '.join(flags)} ORDER BY ctid LIMIT {MAX_PROBLEMS + 1}"
            )
        )
        for row in rows:
            ident = _identify(layout.key, row[: len(layout.key)])
            for (_, problem), flagged in zip(checks, row[len(layout.key) :], strict=True):
                if flagged:
                    self.problems.append(f"{found.name}: {ident}: {problem}")

    def _check_conflicts(self, found: Found, layout: Layout, text_json: list[Column]) -> None:
        """Rows with the same key but different values: we cannot choose one for the operator."""
        payload = []
        for column in layout.columns:
            if column.name in found.columns:
                quoted = self.quote(column.name)
                payload.append(f"{quoted}::jsonb" if column in text_json else quoted)
        valid = [f"{self.quote(key)} IS NOT NULL" for key in layout.key] + [
            f"({self.quote(c.name)} IS NULL OR {self._is_json(self.quote(c.name))})"
            for c in text_json
        ]
        keys = ", ".join(self.quote(key) for key in layout.key)
        rows = self.conn.execute(
            sa.text(
                f"SELECT {keys} FROM {self.quote(found.name)} WHERE {' AND '.join(valid)} "
                f"GROUP BY {keys} "
                f"HAVING count(DISTINCT jsonb_build_array({', '.join(payload)})) > 1 "
                f"ORDER BY {keys} LIMIT {MAX_PROBLEMS + 1}"
            )
        )
        for row in rows:
            self.problems.append(
                f"{found.name}: {_identify(layout.key, row)} has conflicting values"
            )

    # --- configuration sections ---

    def _adopt_section(self, found: Found) -> None:
        names = set(found.columns)
        if names == {"key", "value"}:
            self._adopt_keyed(found, Layout(found.name, ("key",), (Column("value", json=True),)))
        elif names == {"item"} and found.type_of("item") in ("text", "jsonb"):
            self._adopt_list(found)
        elif not (
            names == {"position", "item"}
            and found.type_of("position") == "bigint"
            and found.type_of("item") == "jsonb"
            and found.primary_key is not None
        ):
            self.problems.append(
                f"{found.name}: unexpected layout ({self._columns_of(found)}); expected a dict "
                "section (key, value) or a list section (item)"
            )

    def _adopt_list(self, found: Found) -> None:
        table = self.quote(found.name)
        if found.type_of("item") == "text":
            rows = self.conn.execute(
                sa.text(
                    "SELECT n FROM (SELECT row_number() OVER (ORDER BY ctid) AS n, item "
                    f"FROM {table}) AS numbered "
                    f"WHERE item IS NOT NULL AND NOT {self._is_json('item')} "
                    f"ORDER BY n LIMIT {MAX_PROBLEMS + 1}"
                )
            )
            for (number,) in rows:
                self.problems.append(f"{found.name}: item #{number}: item is not JSON")
        primary_key = self.quote(self._primary_key_name(found.name))
        self.steps += [
            Step(f"ALTER TABLE {table} ADD COLUMN position bigint"),
            # ctid order is the order the Ruby plugin inserted the items in:
            # it only ever deleted all rows and inserted the list afresh.
            Step(
                f"UPDATE {table} AS t SET position = numbered.n FROM "
                f"(SELECT ctid AS row_id, row_number() OVER (ORDER BY ctid) AS n FROM {table}) "
                "AS numbered WHERE t.ctid = numbered.row_id",
                f"{found.name}: {{n}} list item(s) numbered in stored order",
            ),
            Step(
                f"ALTER TABLE {table} ALTER COLUMN position SET NOT NULL, "
                f"ALTER COLUMN item TYPE jsonb USING COALESCE(item::jsonb, {JSON_NULL}), "
                "ALTER COLUMN item SET NOT NULL, "
                f"ADD CONSTRAINT {primary_key} PRIMARY KEY (position)"
            ),
            Step(f"ALTER TABLE {table} ALTER COLUMN position ADD GENERATED ALWAYS AS IDENTITY"),
            Step(
                "SELECT setval(pg_get_serial_sequence(:table, 'position'), "
                f"COALESCE(max(position), 0) + 1, false) FROM {table}",
                params={"table": table},
            ),
        ]

    # --- helpers ---

    def quote(self, name: str) -> str:
        return self.preparer.quote(name)

    def _primary_key_name(self, table: str) -> str:
        """The name the models' naming convention gives, truncated as SQLAlchemy does."""
        model = sa.Table(
            table,
            sa.MetaData(naming_convention=PK_CONVENTION),
            sa.Column("key", sa.Text(), primary_key=True),
        )
        name = self.preparer.format_constraint(model.primary_key)
        assert name is not None  # the naming convention always gives one
        return name.strip('"')

    def _is_json(self, column_sql: str) -> str:
        """SQL that is true if the TEXT ``column_sql`` parses as jsonb, without raising."""
        if self._json_check is None:
            version: Any = self.conn.dialect.server_version_info or (0,)
            if tuple(version) >= (16,):
                self._json_check = "pg_input_is_valid({}, 'jsonb')"
            else:
                # PostgreSQL 15 has no pg_input_is_valid: try the cast in a
                # subtransaction. The function lives in this session only and
                # is dropped (or rolled back) with the migration.
                self._execute(
                    f"CREATE OR REPLACE FUNCTION {TEMP_JSON_CHECK}(doc text) RETURNS boolean "
                    "LANGUAGE plpgsql AS $$ BEGIN PERFORM doc::jsonb; RETURN true; "
                    "EXCEPTION WHEN data_exception OR program_limit_exceeded THEN RETURN false; "
                    "END $$"
                )
                self._json_check = TEMP_JSON_CHECK + "({})"
        return self._json_check.format(column_sql)

    def _execute(
        self, statement: str, params: dict[str, Any] | None = None
    ) -> sa.CursorResult[Any]:
        return self.conn.execute(sa.text(statement), params)

    def _columns_of(self, found: Found) -> str:
        return ", ".join(f"{name} {type_}" for name, (type_, _) in found.columns.items())

    def _report(self) -> str:
        shown = self.problems[:MAX_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = [f"  {problem}" for problem in shown]
        if more > 0:
            lines.append(f"  ... and at least {more} more")
        return (
            "cannot adopt the existing Omejdn tables, nothing was changed; "
            "fix these and migrate again:\n" + "\n".join(lines)
        )


def _identify(columns: Sequence[str], values: Sequence[Any]) -> str:
    """``client_id='x' key='y'``: which row, by key; never a value column."""
    return " ".join(
        f"{column}={_show(value)}" for column, value in zip(columns, values, strict=True)
    )


def _show(value: object) -> str:
    if value is None:
        return "NULL"
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:76] + "...'"
