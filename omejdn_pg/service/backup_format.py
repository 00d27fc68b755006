"""The backup file: a versioned, checksummed JSON Lines document, written and verified.

A backup is UTF-8 text, one JSON value per line (format version 2)::

    {"format": "omejdn-pg backup", "version": 2, "schema_revision": "0004", "created_at": ...}
    {"table": "users", "columns": {"username": "text", ...}, "rows": 2}
    {"username": "alice", "password": "$2a$12$...", "extern": null, "consent": [{}]}
    {"username": "bob", ...}
    {"table": "configuration_omejdn", "section": "omejdn", "columns": {...}, "rows": 3, ...}
    ...
    {"manifest": {"format": ..., "version": 2, "schema_revision": "0004", "created_at": ...,
                  "counts": {"users": 2, ...}, "sha256": "<hex>"}}

The header names the format first, so a reader refuses a file of a newer
format before it looks at anything else. Each table line gives the table's
columns (PostgreSQL's own type names) and how many row lines follow; a row
is the row as PostgreSQL's ``row_to_json`` wrote it, so jsonb values keep
every digit and text keeps every byte (a sealed private key is the string it
is in the database). A json or jsonb value is wrapped in a one-element array
(``[null]`` is a JSON null, a bare ``null`` is SQL NULL): JSON alone has one
null for both, and Omejdn stores JSON nulls (an attribute ``{"nickname": null}``)
in columns that refuse SQL NULL. Format 1 wrote them bare; it is still read
where a null is unambiguous (a NOT NULL column: it was a JSON null) and refused
where it is not (a nullable json column, e.g. another plugin's section).
The manifest is the last line: the counts per table and the SHA-256 of every
byte before it. A file cut short has no manifest, a file edited anywhere has
another checksum, and both are refused before a single row is looked at, let
alone written.

Why this shape rather than a binary or ``pg_dump`` archive: it can be read,
diffed and checked with nothing but a text editor and ``sha256sum``
(``head -n -1 FILE | sha256sum``), it is written and read as a stream of
lines, and its rows are plain JSON that a newer schema can map into its own
layout (:mod:`omejdn_pg.service.restore`). The price is size — JSON is larger
than COPY's binary format — and that a reader holds the file in memory to
verify it whole before trusting it: a few megabytes for ten thousand users.

Over 400 lines on purpose: the file's layout is written and verified in one
module, so what a writer emits and what a reader accepts cannot drift apart.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final

from omejdn_pg.errors import BackupError, InvalidInput, InvalidKeyMaterial, located
from omejdn_pg.keys.model import Key
from omejdn_pg.keys.states import KEY_STATES
from omejdn_pg.postgres.schema import (
    KEY_ROW_TYPES,
    SECTION_PREFIX,
    metadata,
    validate_section_name,
)
from omejdn_pg.sealing import check_sealed, is_sealed

FORMAT: Final = "omejdn-pg backup"
VERSION: Final = 2
"""The format version this package writes and the newest it reads."""
WRAPPED_SINCE: Final = 2
"""The first format version that wraps json values (``[value]``; bare ``null`` is SQL NULL)."""
TABLES: Final = ("users", "clients", "attributes", "keys")
"""The fixed tables a backup holds, in the order they are written and restored."""
OWNER_TYPES: Final = ("user", "client")
SECTION_COLUMN_TYPES: Final = frozenset({"jsonb", "json", "text"})
"""Types a section's ``value``/``item`` column may have: ours (jsonb), the Ruby plugin's (text)."""

_TEXT_TYPES: Final = frozenset({"text"})
JSON_TYPES: Final = frozenset({"jsonb", "json"})
_INTEGER_TYPES: Final = frozenset({"integer", "bigint", "smallint"})
_TIMESTAMP_TYPES: Final = frozenset({"timestamp with time zone"})
_KNOWN_TYPES: Final = _TEXT_TYPES | JSON_TYPES | _INTEGER_TYPES | _TIMESTAMP_TYPES


@dataclass
class TableDump:
    """One table of a backup: its columns and its rows as PostgreSQL wrote them."""

    name: str
    columns: dict[str, str]
    """``{column: PostgreSQL type}`` in the table's column order."""
    rows: list[str] = field(default_factory=list)
    """Each row as one JSON object's text; sent back to PostgreSQL as it is."""
    section: str | None = None
    """The configuration section this table holds, for ``configuration_<section>``."""
    provisioned: bool = False
    """Whether the section's table carries the "provisioned" comment."""
    first_line: int = 0
    """The file's line number of the first row (for messages)."""
    wrapped: bool = True
    """Whether json values are wrapped (``[value]``), as from format 2 on."""

    def header(self, count: int) -> dict[str, Any]:
        line: dict[str, Any] = {"table": self.name}
        if self.section is not None:
            line["section"] = self.section
        line["columns"] = self.columns
        line["rows"] = count
        if self.section is not None:
            line["provisioned"] = self.provisioned
        return line


@dataclass
class Backup:
    """A backup file, verified: its header, tables and manifest agree, and every value parses."""

    version: int
    schema_revision: str
    created_at: str
    tables: list[TableDump]
    sha256: str
    size: int
    sealed: dict[str, int] = field(default_factory=dict)
    """``{key-encryption key id: private keys it sealed}``: what the servers of the
    restored database need configured to sign (restore itself needs none)."""

    def counts(self) -> dict[str, int]:
        return {table.name: len(table.rows) for table in self.tables}


# --- writing ---------------------------------------------------------------------------


class BackupWriter:
    """Writes a backup to a binary stream line by line, hashing as it goes."""

    def __init__(self, out: IO[bytes], schema_revision: str) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._counts: dict[str, int] = {}
        self.size = 0
        self.created_at = datetime.datetime.now(datetime.UTC).isoformat()
        self._identity = {
            "format": FORMAT,
            "version": VERSION,
            "schema_revision": schema_revision,
            "created_at": self.created_at,
        }
        self._line(_dumps(self._identity))

    def table(self, dump: TableDump, count: int, rows: Iterable[str]) -> None:
        """Write ``dump``'s table line and its ``count`` rows (``dump.rows`` is not used)."""
        self._line(_dumps(dump.header(count)))
        written = 0
        for row in rows:
            if "\n" in row or "\r" in row:  # pragma: no cover - JSON escapes both
                raise BackupError(f"table {dump.name}: a row spans lines")
            self._line(row)
            written += 1
        if written != count:
            # The snapshot cannot change under the read; this is a bug, not bad input.
            raise BackupError(f"table {dump.name}: counted {count} rows, read {written}")
        self._counts[dump.name] = count

    def finish(self) -> dict[str, Any]:
        """Write the manifest (the last line); returns it."""
        manifest = {
            **self._identity,
            "counts": dict(self._counts),
            "sha256": self._hash.hexdigest(),
        }
        data = (_dumps({"manifest": manifest}) + "\n").encode()
        self._out.write(data)
        self.size += len(data)
        return manifest

    def _line(self, text: str) -> None:
        data = (text + "\n").encode()
        self._hash.update(data)
        self._out.write(data)
        self.size += len(data)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


# --- reading and verifying --------------------------------------------------------------


def read_backup(data: bytes, where: str) -> Backup:
    """Verify a whole backup file (format, manifest, checksum, counts, every value) and
    return it; errors name ``where`` and what is wrong, and nothing has been written."""
    if not data:
        raise BackupError(f"{where}: empty file: not an omejdn-pg backup")
    first_end = data.find(b"\n")
    header = _json_line(data[: first_end if first_end >= 0 else len(data)], where, 1, quiet=True)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupError(f"{where}: not an omejdn-pg backup (its first line names no {FORMAT!r})")
    try:
        data.decode()
    except UnicodeDecodeError as error:
        raise BackupError(f"{where}: byte {error.start} is not UTF-8 text") from None
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BackupError(f"{where}: line 1: format version {version!r} is not a version")
    if version > VERSION:
        raise BackupError(
            f"{where}: format version {version} is newer than this omejdn-pg reads "
            f"({VERSION}); restore it with the omejdn-pg that wrote it, or a newer one"
        )
    if not data.endswith(b"\n"):
        raise BackupError(
            f"{where}: truncated: the file does not end with its manifest line "
            f"({len(data)} bytes; the copy or the write was cut short)"
        )
    start = data.rfind(b"\n", 0, len(data) - 1) + 1
    last = _json_line(data[start:-1], where, data.count(b"\n"), quiet=True)
    if not isinstance(last, dict) or not isinstance(last.get("manifest"), dict):
        raise BackupError(
            f"{where}: truncated: the last line is not the manifest "
            f"({len(data)} bytes; the copy or the write was cut short)"
        )
    manifest: dict[str, Any] = last["manifest"]
    digest = hashlib.sha256(data[:start]).hexdigest()
    if manifest.get("sha256") != digest:
        raise BackupError(
            f"{where}: checksum mismatch: the content's SHA-256 is {digest}, the manifest "
            f"says {manifest.get('sha256')!r}: the file was changed or damaged after it "
            "was written"
        )
    for name in ("format", "version", "schema_revision", "created_at"):
        if manifest.get(name) != header.get(name):
            raise BackupError(
                f"{where}: the manifest's {name} ({manifest.get(name)!r}) differs from the "
                f"header's ({header.get(name)!r})"
            )
    revision = header.get("schema_revision")
    if not isinstance(revision, str) or not revision:
        raise BackupError(f"{where}: line 1: no schema_revision")
    tables = _tables(data[first_end + 1 : start], where, wrapped=version >= WRAPPED_SINCE)
    sealed: dict[str, int] = {}
    for table in tables:
        for kek in _check_table(table, where):
            sealed[kek] = sealed.get(kek, 0) + 1
    missing = [name for name in TABLES if name not in {table.name for table in tables}]
    if missing:
        raise BackupError(f"{where}: no table {', '.join(missing)}")
    counts = manifest.get("counts")
    found = {table.name: len(table.rows) for table in tables}
    if counts != found:
        raise BackupError(f"{where}: the manifest counts {counts!r}, the file holds {found!r}")
    return Backup(
        version, revision, str(header.get("created_at")), tables, digest, len(data), sealed
    )


def _json_line(raw: bytes, where: str, number: int, *, quiet: bool = False) -> Any:
    try:
        return json.loads(raw.decode(), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as error:
        if quiet:
            return None
        raise BackupError(f"{where}: line {number}: not valid JSON ({error})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _tables(body: bytes, where: str, *, wrapped: bool) -> list[TableDump]:
    lines = body.split(b"\n")[:-1] if body else []
    tables: list[TableDump] = []
    seen: set[str] = set()
    index = 0
    while index < len(lines):
        number = index + 2  # line 1 is the header
        line = _json_line(lines[index], where, number)
        if not isinstance(line, dict) or not isinstance(line.get("table"), str):
            raise BackupError(f"{where}: line {number}: expected a table line")
        dump = _table_line(line, f"{where}: line {number}")
        if dump.name in seen:
            raise BackupError(f"{where}: line {number}: table {dump.name} appears twice")
        seen.add(dump.name)
        count = line.get("rows")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise BackupError(f"{where}: line {number}: 'rows' must be a count")
        if index + 1 + count > len(lines):
            raise BackupError(
                f"{where}: line {number}: table {dump.name} announces {count} rows, "
                f"the file holds {len(lines) - index - 1} more lines"
            )
        dump.rows = [raw.decode() for raw in lines[index + 1 : index + 1 + count]]
        dump.first_line = number + 1
        dump.wrapped = wrapped
        tables.append(dump)
        index += 1 + count
    return tables


def _table_line(line: Mapping[str, Any], where: str) -> TableDump:
    name = line["table"]
    columns = line.get("columns")
    if (
        not isinstance(columns, dict)
        or not columns
        or not all(isinstance(c, str) and isinstance(t, str) for c, t in columns.items())
    ):
        raise BackupError(f"{where}: table {name}: 'columns' must map names to types")
    for column, kind in columns.items():
        if kind not in _KNOWN_TYPES:
            raise BackupError(f"{where}: table {name}: column {column} has unknown type {kind!r}")
    if name in TABLES:
        known = metadata.tables[name].c
        extra = [c for c in columns if c not in known]
        if extra:
            raise BackupError(
                f"{where}: table {name}: columns {', '.join(extra)} are unknown to this "
                "omejdn-pg (a backup of a newer schema?)"
            )
        return TableDump(name, dict(columns))
    section = line.get("section")
    if not name.startswith(SECTION_PREFIX) or section != name[len(SECTION_PREFIX) :]:
        raise BackupError(f"{where}: unknown table {name!r}")
    with located(where, InvalidInput, raise_as=BackupError):
        validate_section_name(section)
    section_shape(columns, f"{where}: section {section!r}")
    provisioned = line.get("provisioned", False)
    if not isinstance(provisioned, bool):
        raise BackupError(f"{where}: table {name}: 'provisioned' must be true or false")
    return TableDump(name, dict(columns), section=section, provisioned=provisioned)


def section_shape(columns: Mapping[str, str], what: str) -> tuple[str, str, bool]:
    """``(shape, value column type, positioned)`` of a section table's columns, or refuse."""
    if set(columns) == {"key", "value"} and columns["key"] == "text":
        kind, shape, positioned = columns["value"], "dict", False
    elif set(columns) == {"position", "item"} and columns["position"] == "bigint":
        kind, shape, positioned = columns["item"], "list", True
    elif set(columns) == {"item"}:
        kind, shape, positioned = columns["item"], "list", False
    else:
        raise BackupError(
            f"{what}: columns {', '.join(columns)} are not a configuration section's "
            "(key, value) or (position, item)"
        )
    if kind not in SECTION_COLUMN_TYPES:
        raise BackupError(f"{what}: a section's values cannot be of type {kind}")
    return shape, kind, positioned


def _check_table(table: TableDump, where: str) -> list[str]:
    """Every row of ``table`` parses, has exactly the table's columns, and each value
    has its column's type; key rows also hold parseable key material. The ids of the
    key-encryption keys that sealed its private keys, one per sealed key."""
    if table.section is None:
        known = metadata.tables[table.name].c
        nullable = {column: bool(known[column].nullable) for column in table.columns}
    else:
        nullable = section_nullable(table.columns, table.section)
    first = table.first_line
    keys: dict[tuple[str, str, str], dict[str, Any]] = {}
    for offset, text in enumerate(table.rows):
        at = f"{where}: line {first + offset}: table {table.name}"
        row = _json_line(text.encode(), where, first + offset)
        if not isinstance(row, dict) or set(row) != set(table.columns):
            raise BackupError(f"{at}: a row must have exactly the columns {list(table.columns)}")
        for column, kind in table.columns.items():
            value = row[column]
            if kind in JSON_TYPES:
                value = _unwrapped(value, table.wrapped, nullable[column], f"{at}: {column}")
            _check_value(value, kind, nullable[column], f"{at}: {column}")
            row[column] = value
        if table.name == "attributes" and row["type"] not in OWNER_TYPES:
            raise BackupError(f"{at}: type {row['type']!r} is not one of {OWNER_TYPES}")
        if table.name == "keys":
            _check_key_row(row, at)
            kid = row.get("kid", "")
            entry = keys.setdefault((row["target_type"], row["target"], kid), {"at": at})
            entry[row["type"].removeprefix("extra_")] = row
    found = (_check_key(*identity, entry) for identity, entry in keys.items())
    return [kek for kek in found if kek is not None]


def section_nullable(columns: Mapping[str, str], section: str) -> dict[str, bool]:
    """``{column: nullable}`` of a section's table: ours (a jsonb mapping or positioned
    list) refuses NULL values; the Ruby plugin's and other layouts allow them."""
    shape, kind, positioned = section_shape(columns, f"section {section!r}")
    ours = kind == "jsonb" and (shape == "dict" or positioned)
    return {column: column not in ("key", "position") and not ours for column in columns}


_NULL: Final = object()
"""A json column's JSON null, told apart from SQL NULL (``None``) while checking."""


def _unwrapped(value: Any, wrapped: bool, nullable: bool, where: str) -> Any:
    """A json column's value from its row: ``None`` for SQL NULL, ``_NULL`` for JSON null."""
    if wrapped:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != 1:
            raise BackupError(f"{where}: a json value must be wrapped as [value] (or null)")
        return _NULL if value[0] is None else value[0]
    if value is None:
        if nullable:
            raise BackupError(
                f"{where}: a format 1 backup cannot tell a JSON null from SQL NULL in this "
                "nullable column; restore it with the omejdn-pg that wrote it, back the "
                "source up again with this one, or edit the value (and the checksum)"
            )
        return _NULL  # the column refuses SQL NULL: the source held a JSON null
    return value


def _check_value(value: Any, kind: str, nullable: bool, where: str) -> None:
    if value is None:
        if not nullable:
            raise BackupError(f"{where}: may not be null")
        return
    if value is _NULL:
        return
    if kind in _TEXT_TYPES:
        ok = isinstance(value, str) and "\x00" not in value
    elif kind in _INTEGER_TYPES:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind in _TIMESTAMP_TYPES:
        ok = isinstance(value, str) and _is_timestamp(value)
    else:
        ok = True  # any JSON value; PostgreSQL refuses what jsonb cannot hold, rolling back
    if not ok:
        # Never the value itself: it may be a password hash or a private key.
        raise BackupError(f"{where}: not a valid {kind} (a JSON {type(value).__name__})")


def _is_timestamp(value: str) -> bool:
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    return moment.tzinfo is not None


def _check_key_row(row: Mapping[str, Any], at: str) -> None:
    if row["type"] not in KEY_ROW_TYPES:
        raise BackupError(f"{at}: type {row['type']!r} is not one of {KEY_ROW_TYPES}")
    if row.get("state", "active") not in KEY_STATES:
        raise BackupError(f"{at}: state {row['state']!r} is not one of {KEY_STATES}")
    if not isinstance(row.get("params", {}), dict):
        raise BackupError(f"{at}: params must be a JSON object")


def _check_key(target_type: str, target: str, kid: str, entry: Mapping[str, Any]) -> str | None:
    """The key's PEM (or sealed value, checked without opening it) and chain parse;
    the id of the key-encryption key that sealed it, if one did."""
    what = f"{entry['at']}: key {target_type}/{target} {kid or '(thumbprint)'}"
    key_row, chain_row = entry.get("sk"), entry.get("certs")
    key_text = key_row["value"] if key_row is not None else None
    chain = chain_row["value"] if chain_row is not None else None
    kek = None
    try:
        if key_text is not None and is_sealed(key_text):
            with located(what, InvalidKeyMaterial):
                kek = check_sealed(key_text)
            key_text = None
        if key_text or chain:
            Key.from_pem(key_text or None, chain or None, None, what=what)
    except InvalidInput as error:
        raise BackupError(str(error)) from None
    return kek
