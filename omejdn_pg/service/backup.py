"""Backup and restore: every row of the package's tables, read in one snapshot, restored in one
transaction.

A backup holds what the database holds, as rows: ``users`` (consent and
``extern`` included), ``clients``, ``attributes``, ``keys`` (every key with its
state, dates, descriptor, position and private key — a sealed value stays the
string it is, so neither backup nor restore needs or uses a key-encryption
key) and every ``configuration_<section>`` table with its columns (a mapping or
a list, ours or the Ruby plugin's layout), its rows in order, a list's
positions and the "provisioned" mark. It does not hold ``alembic_version``
(the schema revision is in the manifest), the read cache's change counters
(runtime state: the target keeps its own, which must keep rising), roles,
grants or any other table — :mod:`omejdn_pg.service.backup_format` has the
file's layout.

Reading: one REPEATABLE READ, read-only transaction (``Database.snapshot``),
so the file is one consistent state while the server keeps writing; each
table is counted, then streamed with ``row_to_json`` in primary-key order
(``C`` collation), so the rows are PostgreSQL's own text and the file is the
same for the same content. Written to a file, it goes to a temporary file of
mode 0600 beside the target, is synced, and is linked or renamed into place
only when complete.

Restoring: the file is verified whole first (format, checksum, counts, every
value). Then, in ONE transaction: the four tables are locked against writers,
and so is every section of the backup or the database (the advisory lock its
writers take); readers go on, seeing the old content until the commit; the target's
schema revision is checked (the backup's or a newer one this package knows),
the target must be empty unless ``replace`` (then everything is deleted and
sections the backup lacks are dropped), rows go in by ``INSERT … SELECT FROM
json_populate_recordset`` of a few thousand rows at a time — PostgreSQL
converts each value from its own text, so nothing passes through Python's
floats — and every read cache is told that every group changed. Anything
wrong rolls it all back.

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

import errno
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from sqlalchemy import JSON, BigInteger, Column, Connection, Identity, MetaData, Table, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.schema import DropTable

from omejdn_pg.errors import BackupError
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.cache import publish_change
from omejdn_pg.postgres.database import Database
from omejdn_pg.postgres.repositories.common import lock_for_update
from omejdn_pg.postgres.repositories.config import PROVISIONED, ConfigRepository
from omejdn_pg.postgres.schema import (
    CHANGE_GROUPS,
    NAMING_CONVENTION,
    dict_section_table,
    list_section_table,
    section_table_name,
)
from omejdn_pg.service.backup_format import (
    TABLES,
    Backup,
    BackupWriter,
    TableDump,
    section_shape,
)

ORDER: Final = {
    "users": ("username",),
    "clients": ("client_id", "key"),
    "attributes": ("type", "identifier", "key"),
    "keys": ("target_type", "target", "position", "kid", "type"),
}
"""The order rows are written in: the primary key (``keys``: the set's own order)."""
CHUNK_ROWS: Final = 5000
"""Rows sent per INSERT: one JSON parameter of a few megabytes at most."""

RowMapping = Callable[[TableDump], TableDump]
ROW_MAPPINGS: Final[dict[str, RowMapping]] = {}
"""``{revision: mapping}``: how a table of a backup older than ``revision`` becomes one
at ``revision``, beyond new columns taking their defaults. No revision so far needs one."""

_COLUMNS: Final = text(
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS kind, a.attnotnull, "
    "a.atthasdef OR a.attidentity <> '' AS defaulted, a.attidentity <> '' AS identity "
    "FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = to_regclass(:name) AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)


@dataclass(frozen=True)
class _Column:
    kind: str
    not_null: bool
    defaulted: bool
    identity: bool


@dataclass
class BackupSummary:
    """What a backup wrote."""

    schema_revision: str
    counts: dict[str, int]
    sha256: str
    size: int
    seconds: float = 0.0
    path: str = "-"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "schema_revision": self.schema_revision,
            "counts": self.counts,
            "sha256": self.sha256,
            "bytes": self.size,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class RestoreReport:
    """What a restore wrote (or, for a dry run, would write)."""

    backup_revision: str
    database_revision: str
    counts: dict[str, int]
    replaced: dict[str, int] = field(default_factory=dict)
    """Rows (and sections) the database held before, deleted by ``replace``."""
    dry_run: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "backup_revision": self.backup_revision,
            "database_revision": self.database_revision,
            "counts": self.counts,
            "replaced": self.replaced,
            "seconds": round(self.seconds, 3),
        }


# --- backup ----------------------------------------------------------------------------


def backup(database: Database, out: IO[bytes], *, path: str = "-") -> BackupSummary:
    """Write every table of the package to ``out`` from one consistent snapshot."""
    started = time.perf_counter()
    with database.snapshot() as conn:
        # row_to_json writes timestamps with the session's offset: make it one.
        conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
        revision = migrate.current(conn)
        if revision is None:
            raise BackupError("the database has no omejdn_pg schema: nothing to back up")
        writer = BackupWriter(out, revision)
        for name in TABLES:
            columns = _columns(conn, name)
            order = [c for c in ORDER[name] if c in columns]
            _dump(conn, writer, TableDump(name, _kinds(columns)), order)
        for section in ConfigRepository(conn).sections():
            name = _section_table(section)
            columns = _columns(conn, name)
            comment = conn.execute(
                text("SELECT obj_description(to_regclass(:name), 'pg_class')"),
                {"name": _quote(conn, name)},
            ).scalar()
            dump = TableDump(
                name, _kinds(columns), section=section, provisioned=comment == PROVISIONED
            )
            section_shape(dump.columns, f"section {section!r}")
            # A mapping's rows in physical order, which is the order it was written
            # in and the order a load returns; a list's by position (or, the Ruby
            # plugin's lists without one, physically too).
            _dump(conn, writer, dump, ["position"] if "position" in columns else ["ctid"])
        manifest = writer.finish()
    return BackupSummary(
        revision,
        manifest["counts"],
        manifest["sha256"],
        writer.size,
        time.perf_counter() - started,
        path,
    )


def _dump(conn: Connection, writer: BackupWriter, dump: TableDump, order: list[str]) -> None:
    table = _quote(conn, dump.name)
    count = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
    by = ", ".join(
        f"t.{column}" + (' COLLATE "C"' if dump.columns.get(column) == "text" else "")
        for column in order
    )
    rows = conn.execute(
        text(f"SELECT row_to_json(t)::text FROM {table} AS t ORDER BY {by}").execution_options(
            yield_per=CHUNK_ROWS
        )
    ).scalars()
    writer.table(dump, count, rows)


def write_backup_file(database: Database, path: Path, *, force: bool = False) -> BackupSummary:
    """:func:`backup` into ``path``, atomically, mode 0600: a temporary file beside it,
    synced, then moved into place; an existing file is replaced only with ``force``."""
    path = Path(path)
    if path.is_dir():
        raise BackupError(f"{path}: is a directory; give the backup file's name")
    if path.exists() and not force:
        raise BackupError(f"{path}: exists (use --force to replace it)")
    parent = path.absolute().parent
    try:
        # mkstemp creates the file with mode 0600 whatever the umask.
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    except OSError as error:
        raise BackupError(f"{parent}: cannot write: {error.strerror}") from error
    try:
        with os.fdopen(descriptor, "wb") as out:
            summary = backup(database, out, path=str(path))
            out.flush()
            os.fsync(out.fileno())
        _move_into_place(Path(temporary), path, force)
        _sync_directory(parent)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return summary


def _move_into_place(temporary: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(temporary, path)
        return
    try:
        # link(2) fails if the name exists by now: nobody's file is overwritten.
        os.link(temporary, path)
    except FileExistsError:
        raise BackupError(f"{path}: exists (use --force to replace it)") from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        os.rename(temporary, path)  # a file system without hard links
        return
    temporary.unlink()


def _sync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- restore ---------------------------------------------------------------------------


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
            _check_columns(dump, _columns(conn, dump.name))
    held = _held(conn)
    if held and not replace:
        shown = ", ".join(f"{count} {what}" for what, count in held.items())
        raise BackupError(
            f"the database is not empty (it holds {shown}): restore into an empty database, "
            "or use --replace to replace everything it holds with the backup"
        )
    return RestoreReport(backup.schema_revision, target, backup.counts(), held)


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


def _check_columns(dump: TableDump, target: dict[str, _Column]) -> None:
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
        table = _quote(conn, _section_table(section))
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
        if _section_table(section) not in keep:
            conn.execute(DropTable(dict_section_table(section)))


def _restore_table(conn: Connection, dump: TableDump) -> None:
    if dump.section is not None:
        _prepare_section(conn, dump)
    target = _columns(conn, dump.name)
    columns = list(dump.columns)
    overriding = any(target[c].identity for c in columns)
    names = ", ".join(columns)
    table = _quote(conn, dump.name)
    statement = text(
        f"INSERT INTO {table} ({names}) {'OVERRIDING SYSTEM VALUE ' if overriding else ''}"
        f"SELECT {', '.join('r.' + c for c in columns)} "
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


def _prepare_section(conn: Connection, dump: TableDump) -> None:
    """The section's table, empty, with the backup's columns and mark."""
    assert dump.section is not None
    existing = _kinds(_columns(conn, dump.name))
    if existing == dump.columns:
        conn.exec_driver_sql(f"DELETE FROM {_quote(conn, dump.name)}")
    else:
        if existing:
            conn.execute(DropTable(dict_section_table(dump.section)))
        _section_table_of(dump).create(conn)
    comment = f"'{PROVISIONED}'" if dump.provisioned else "NULL"
    conn.exec_driver_sql(f"COMMENT ON TABLE {_quote(conn, dump.name)} IS {comment}")


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


# --- helpers ---------------------------------------------------------------------------


def _columns(conn: Connection, name: str) -> dict[str, _Column]:
    rows = conn.execute(_COLUMNS, {"name": _quote(conn, name)})
    return {row[0]: _Column(row[1], row[2], row[3], row[4]) for row in rows}


def _kinds(columns: dict[str, _Column]) -> dict[str, str]:
    return {name: column.kind for name, column in columns.items()}


def _section_table(section: str) -> str:
    return section_table_name(section)


def _quote(conn: Connection, name: str) -> str:
    quoted: str = conn.dialect.identifier_preparer.quote_identifier(name)
    return quoted
