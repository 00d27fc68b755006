"""Backup: every row of the package's tables, read in one snapshot, into a backup file.

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
file's layout, :mod:`omejdn_pg.service.restore` puts it back.

Reading: one REPEATABLE READ, read-only transaction (``Database.snapshot``),
so the file is one consistent state while the server keeps writing; each
table is counted, then streamed with ``row_to_json`` in primary-key order
(``C`` collation), json values wrapped (``[value]``, so a JSON null is not SQL
NULL), so the rows are PostgreSQL's own text and the file is the same for the
same content. Written to a file, it goes to a temporary file of
mode 0600 beside the target, is synced, and is linked or renamed into place
only when complete: a reader never finds half a backup under the name.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from sqlalchemy import Connection, text

from omejdn_pg.errors import BackupError
from omejdn_pg.host.files.writing import fsync_directory
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.config import PROVISIONED, ConfigRepository
from omejdn_pg.postgres.schema import section_table_name
from omejdn_pg.service.backup_format import (
    JSON_TYPES,
    TABLES,
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

_COLUMNS: Final = text(
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS kind, a.attnotnull, "
    "a.atthasdef OR a.attidentity <> '' AS defaulted, a.attidentity <> '' AS identity "
    "FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = to_regclass(:name) AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)


@dataclass(frozen=True)
class ColumnInfo:
    """What the catalog says of a column."""

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
            columns = table_columns(conn, name)
            order = [c for c in ORDER[name] if c in columns]
            _dump(conn, writer, TableDump(name, column_kinds(columns)), order)
        for section in ConfigRepository(conn).sections():
            name = section_table_name(section)
            columns = table_columns(conn, name)
            comment = conn.execute(
                text("SELECT obj_description(to_regclass(:name), 'pg_class')"),
                {"name": quote(conn, name)},
            ).scalar()
            dump = TableDump(
                name, column_kinds(columns), section=section, provisioned=comment == PROVISIONED
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
    table = quote(conn, dump.name)
    count = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
    by = ", ".join(
        f"t.{column}" + (' COLLATE "C"' if dump.columns.get(column) == "text" else "")
        for column in order
    )
    # A json value goes out wrapped, [value], so a JSON null ([null]) is not SQL NULL (null).
    listed = ", ".join(
        _wrapped(quote(conn, column), kind) + f" AS {quote(conn, column)}"
        for column, kind in dump.columns.items()
    )
    rows = conn.execute(
        text(
            f"SELECT row_to_json(s)::text FROM {table} AS t "
            f"CROSS JOIN LATERAL (SELECT {listed}) AS s ORDER BY {by}"
        ).execution_options(yield_per=CHUNK_ROWS)
    ).scalars()
    writer.table(dump, count, rows)


def _wrapped(column: str, kind: str) -> str:
    if kind not in JSON_TYPES:
        return f"t.{column}"
    return f"CASE WHEN t.{column} IS NULL THEN NULL ELSE {kind}_build_array(t.{column}) END"


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
        fsync_directory(parent)
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


# --- helpers ---------------------------------------------------------------------------


def table_columns(conn: Connection, name: str) -> dict[str, ColumnInfo]:
    """``{column: what the catalog says}`` of table ``name``, in column order; {} if none."""
    rows = conn.execute(_COLUMNS, {"name": quote(conn, name)})
    return {row[0]: ColumnInfo(row[1], row[2], row[3], row[4]) for row in rows}


def column_kinds(columns: dict[str, ColumnInfo]) -> dict[str, str]:
    """``{column: PostgreSQL type}``: the columns as a backup file records them."""
    return {name: column.kind for name, column in columns.items()}


def quote(conn: Connection, name: str) -> str:
    """``name`` as an SQL identifier (section names are validated, yet quoted all the same)."""
    quoted: str = conn.dialect.identifier_preparer.quote_identifier(name)
    return quoted
