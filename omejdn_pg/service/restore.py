"""Restore: a verified backup file into an empty (or replaced) database, in one transaction.

The file is verified whole first (:func:`~omejdn_pg.service.backup_format.read_backup`:
format, checksum, counts, every value). Then, in ONE transaction: the four
tables are locked against writers, and so is every section of the backup or
the database (the advisory lock its writers take); readers go on, seeing the
old content until the commit; the target's schema revision is checked (the
backup's or a newer one this package knows), the target must be empty unless
``replace`` (then everything is deleted and sections the backup lacks are
dropped), rows go in by ``INSERT … SELECT FROM json_populate_recordset`` of a
few thousand rows at a time (json values unwrapped, a JSON null staying one) —
PostgreSQL converts each value from its own text, so nothing passes through
Python's floats and a sealed key is the same bytes — and every read cache is
told that every group changed
(:func:`~omejdn_pg.postgres.cache.changes.publish_change`). Anything wrong rolls
it all back. No key-encryption key is involved: nothing is opened.

A newer target: a column the backup has is restored into the column of that
name and type; a column the target added since the backup's revision gets
its default (which is how every revision so far has added columns: 0002 gave
``keys`` its kid, descriptor and lifecycle columns with defaults equal to
what the migration made of existing rows). A revision that reshapes rows in
another way adds a mapping to :data:`ROW_MAPPINGS`, applied to a backup of an
older revision on its way in. An older or unknown target revision, or a
backup of an unknown revision, is refused with what to run instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import JSON, BigInteger, Column, Connection, Identity, MetaData, Table, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.schema import DropTable

from omejdn_pg.errors import BackupError
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.cache.changes import publish_change
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.common import lock_for_update
from omejdn_pg.postgres.repositories.config import PROVISIONED, ConfigRepository
from omejdn_pg.postgres.schema import (
    CHANGE_GROUPS,
    NAMING_CONVENTION,
    dict_section_table,
    list_section_table,
    section_table_name,
)
from omejdn_pg.service.backup import CHUNK_ROWS, ColumnInfo, column_kinds, quote, table_columns
from omejdn_pg.service.backup_format import (
    JSON_TYPES,
    TABLES,
    Backup,
    TableDump,
    section_shape,
)

RowMapping = Callable[[TableDump], TableDump]
ROW_MAPPINGS: Final[dict[str, RowMapping]] = {}
"""``{revision: mapping}``: how a table of a backup older than ``revision`` becomes one
at ``revision``, beyond new columns taking their defaults. No revision so far needs one."""


@dataclass
class RestoreReport:
    """What a restore wrote (or, for a dry run, would write)."""

    backup_revision: str
    database_revision: str
    counts: dict[str, int]
    replaced: dict[str, int] = field(default_factory=dict)
    """Rows (and sections) the database held before, deleted by ``replace``."""
    sealed: dict[str, int] = field(default_factory=dict)
    """``{key-encryption key id: private keys}``: the KEKs the servers need to sign."""
    dry_run: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "backup_revision": self.backup_revision,
            "database_revision": self.database_revision,
            "counts": self.counts,
            "replaced": self.replaced,
            "sealed_by": self.sealed,
            "seconds": round(self.seconds, 3),
        }


def restore(
    database: Database, backup: Backup, *, replace: bool = False, dry_run: bool = False
) -> RestoreReport:
    """Make the database hold exactly ``backup`` (verified by ``read_backup``), in one
    transaction; ``dry_run`` checks the database against it and writes nothing."""
    started = time.perf_counter()
    if dry_run:
        with database.snapshot() as conn:
            report = _prepare(conn, backup, replace)
        report.dry_run = True
    else:
        with database.transaction() as conn:
            # Writers wait until the restore commits; readers see the old content.
            conn.exec_driver_sql(f"LOCK TABLE {', '.join(TABLES)} IN SHARE ROW EXCLUSIVE MODE")
            # Writers of the sections too (a section is its own table, outside that lock).
            for section in sorted(
                {d.section for d in backup.tables if d.section is not None}
                | set(ConfigRepository(conn).sections())
            ):
                lock_for_update(conn, "config", section)
            report = _prepare(conn, backup, replace)
            if replace:
                _empty(conn, {table.name for table in backup.tables})
            for dump in _mapped(backup, report.database_revision):
                _restore_table(conn, dump)
            for group in CHANGE_GROUPS:
                publish_change(conn, group, None)
    report.seconds = time.perf_counter() - started
    return report


def _prepare(conn: Connection, backup: Backup, replace: bool) -> RestoreReport:
    """Check that ``backup`` can go into this database; what it holds now."""
    target = _check_revision(migrate.current(conn), backup.schema_revision)
    for dump in _mapped(backup, target):
        if dump.section is None:
            _checktable_columns(dump, table_columns(conn, dump.name))
    held = _held(conn)
    if held and not replace:
        shown = ", ".join(f"{count} {what}" for what, count in held.items())
        raise BackupError(
            f"the database is not empty (it holds {shown}): restore into an empty database, "
            "or use --replace to replace everything it holds with the backup"
        )
    return RestoreReport(
        backup.schema_revision, target, backup.counts(), held, sealed=dict(backup.sealed)
    )


def _check_revision(found: str | None, wanted: str) -> str:
    revisions = migrate.REVISIONS
    if wanted not in revisions:
        raise BackupError(
            f"the backup is of schema revision {wanted}, which this omejdn-pg does not know "
            "(it was made by a newer omejdn-pg?); restore it with that version or a newer one"
        )
    if found is None:
        raise BackupError(
            f"the database has no omejdn_pg schema; run `omejdn-pg migrate upgrade` first"
            f" (revision {wanted} or later)"
        )
    if found not in revisions:
        raise BackupError(
            f"the database is at schema revision {found}, which this omejdn-pg does not "
            "know; restore with the omejdn-pg that migrated it"
        )
    if revisions.index(found) < revisions.index(wanted):
        raise BackupError(
            f"the database is at schema revision {found}, older than the backup's {wanted}; "
            "run `omejdn-pg migrate upgrade` first"
        )
    return found


def _mapped(backup: Backup, target: str) -> Iterator[TableDump]:
    """The backup's tables as they fit a database at revision ``target``."""
    revisions = migrate.REVISIONS
    crossed = revisions[revisions.index(backup.schema_revision) + 1 : revisions.index(target) + 1]
    for dump in backup.tables:
        for revision in crossed:
            mapping = ROW_MAPPINGS.get(revision)
            if mapping is not None:
                dump = mapping(dump)
        yield dump


def _checktable_columns(dump: TableDump, target: dict[str, ColumnInfo]) -> None:
    for column, kind in dump.columns.items():
        found = target.get(column)
        if found is None:
            raise BackupError(
                f"table {dump.name}: the database has no column {column}, which the backup has"
            )
        if found.kind != kind:
            raise BackupError(
                f"table {dump.name}: column {column} is {kind} in the backup "
                f"and {found.kind} in the database"
            )
    for column, found in target.items():
        if column not in dump.columns and found.not_null and not found.defaulted:
            raise BackupError(
                f"table {dump.name}: the backup has no column {column}, which the database "
                "needs and has no default for"
            )


def _held(conn: Connection) -> dict[str, int]:
    """What the database holds: rows per table, and sections with content."""
    held = {}
    for name in TABLES:
        count = conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one()
        if count:
            held[f"{name} rows"] = int(count)
    sections = 0
    for section in ConfigRepository(conn).sections():
        table = quote(conn, section_table_name(section))
        rows = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
        comment = conn.execute(
            text("SELECT obj_description(to_regclass(:name), 'pg_class')"), {"name": table}
        ).scalar()
        # An empty provisioned section reads as never written: that is empty.
        if rows or comment != PROVISIONED:
            sections += 1
    if sections:
        held["configuration sections"] = sections
    return held


def _empty(conn: Connection, keep: set[str]) -> None:
    """Delete every row of the four tables, and drop the sections the backup lacks.

    DELETE, not TRUNCATE: a reader's snapshot keeps seeing the old rows until
    the commit, as with any other write.
    """
    for name in TABLES:
        conn.exec_driver_sql(f"DELETE FROM {name}")
    for section in ConfigRepository(conn).sections():
        if section_table_name(section) not in keep:
            conn.execute(DropTable(dict_section_table(section)))


def _restore_table(conn: Connection, dump: TableDump) -> None:
    if dump.section is not None:
        _prepare_section(conn, dump)
    target = table_columns(conn, dump.name)
    columns = list(dump.columns)
    overriding = any(target[c].identity for c in columns)
    names = ", ".join(columns)
    table = quote(conn, dump.name)
    statement = text(
        f"INSERT INTO {table} ({names}) {'OVERRIDING SYSTEM VALUE ' if overriding else ''}"
        f"SELECT {', '.join(_unwrapped(dump, c, target[c]) for c in columns)} "
        f"FROM json_populate_recordset(NULL::{table}, CAST(:rows AS json)) "
        "WITH ORDINALITY AS r ORDER BY r.ordinality"
    )
    for start in range(0, len(dump.rows), CHUNK_ROWS):
        chunk = dump.rows[start : start + CHUNK_ROWS]
        conn.execute(statement, {"rows": "[" + ",".join(chunk) + "]"})
    if overriding and dump.rows:
        # The identity must go on after the restored positions.
        for column in (c for c in columns if target[c].identity):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                    f"(SELECT max({column}) FROM {table}))"
                ),
                {"table": table, "column": column},
            )


def _unwrapped(dump: TableDump, column: str, target: ColumnInfo) -> str:
    """The select expression of ``column``: a json value as the source held it.

    json_populate_recordset makes a bare JSON null SQL NULL: format 2 wraps a value
    as ``[value]`` (``-> 0`` unwraps it, ``[null]`` giving a JSON null); format 1
    wrote it bare, and ``read_backup`` let a null through only where the column
    refuses SQL NULL, which makes it a JSON null."""
    kind = dump.columns[column]
    if kind not in JSON_TYPES:
        return f"r.{column}"
    if dump.wrapped:
        return f"r.{column} -> 0"
    if target.not_null:
        return f"COALESCE(r.{column}, 'null'::{kind})"
    return f"r.{column}"


def _prepare_section(conn: Connection, dump: TableDump) -> None:
    """The section's table, empty, with the backup's columns and mark."""
    assert dump.section is not None
    existing = column_kinds(table_columns(conn, dump.name))
    if existing == dump.columns:
        conn.exec_driver_sql(f"DELETE FROM {quote(conn, dump.name)}")
    else:
        if existing:
            conn.execute(DropTable(dict_section_table(dump.section)))
        _section_table_of(dump).create(conn)
    comment = f"'{PROVISIONED}'" if dump.provisioned else "NULL"
    conn.exec_driver_sql(f"COMMENT ON TABLE {quote(conn, dump.name)} IS {comment}")


def _section_table_of(dump: TableDump) -> Table:
    """Our layout for a jsonb section; the Ruby plugin's (or another) as the backup has it."""
    assert dump.section is not None
    shape, kind, positioned = section_shape(dump.columns, f"section {dump.section!r}")
    if kind == "jsonb" and (shape == "dict" or positioned):
        make = dict_section_table if shape == "dict" else list_section_table
        return make(dump.section)
    value_type: Any = {"json": JSON(), "text": Text()}.get(kind, JSONB())
    columns: list[Column[Any]]
    if shape == "dict":
        columns = [Column("key", Text, primary_key=True), Column("value", value_type)]
    elif positioned:
        columns = [
            Column("position", BigInteger, Identity(always=True), primary_key=True),
            Column("item", value_type),
        ]
    else:
        columns = [Column("item", value_type)]
    return Table(dump.name, MetaData(naming_convention=NAMING_CONVENTION), *columns)
