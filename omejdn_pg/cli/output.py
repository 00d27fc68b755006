"""Rendering data on stdout (table, JSON, YAML) and errors on stderr.

stdout carries only data; notes, counts and prompts go to stderr. Listings
are streamed: :func:`stream` prints each record as it arrives, so the first
line of ``users list`` shows before the last row is read. A streamed table
cannot know its column widths in advance, so they are taken from the first
:data:`WIDTH_SAMPLE` rows and a longer cell later just widens its own line —
the trade-off against buffering everything, which is what made a listing of
20,000 users silent for seconds. JSON streams as the same document
``json.dumps(rows, indent=2)`` would print, YAML as one list.

Errors are one line, ``error: ...``, with every known secret masked.

Human output never hands the terminal a control character from the data: a
username holding ESC, OSC or CR could otherwise recolour, retitle or overwrite
lines of ``users list -v``. Table cells (and the lines of ``import -v``) show
C0 and C1 controls, DEL and the bidirectional overrides as escapes
(``\x1b``, ``\u202e``); JSON and YAML output stays exact (JSON escapes the
C0 controls itself, YAML quotes them).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Final

import click

from omejdn_pg.yamlio import dump_yaml, parse_yaml

MASK: Final = "********"
"""The same mask as ``omejdn_pg.settings.connection.MASK``, which imports the driver."""
WIDTH_SAMPLE: Final = 100
"""Rows of a streamed table that its column widths are taken from."""
GAP: Final = "  "
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""What a terminal acts on rather than shows: C0 and C1 controls, DEL, bidi marks and
overrides (Trojan Source)."""


class Failure(click.ClickException):
    """A failure the operator can act on: one line, exit status 1."""

    exit_code = 1


# --- values -------------------------------------------------------------------------


def compact(value: Any) -> str:
    """A value as one line of JSON (strings without quotes in tables are the caller's call)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on shown as an escape."""
    if text.isprintable():  # the common case, at C speed; stricter than _CONTROL
        return text
    return _CONTROL.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def cell(value: Any) -> str:
    """A table cell: empty for None, strings as they are, anything else as compact JSON;
    control characters escaped (:func:`printable`)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return printable(value)
    return printable(compact(value))


def words(value: Any) -> str:
    """A list as space-separated words (a scope, grant types), anything else as a cell."""
    if isinstance(value, list | tuple):
        return " ".join(cell(item) for item in value)
    return cell(value)


# --- whole documents --------------------------------------------------------------------


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


YAML_BATCH: Final = 500
"""Records a streamed YAML listing hands the writer at once (PyYAML's set-up, for a
record that is not JSON-shaped, is per call)."""


def print_yaml(data: Any) -> None:
    click.echo(dump_yaml(data), nl=False)


def print_document(data: Any, fmt: str) -> None:
    """One object: JSON for ``json``, YAML otherwise (a table of one object is its YAML)."""
    if fmt == "json":
        print_json(data)
    else:
        print_yaml(data)


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None
) -> int:
    """A plain-text table on stdout; the number of rows printed."""
    if title:
        click.echo(title)
    return _write_table(columns, ([cell(v) for v in row] for row in rows))


def _write_table(columns: Sequence[str], rows: Iterator[list[str]]) -> int:
    sample = list(islice(rows, WIDTH_SAMPLE))
    widths = [len(name) for name in columns]
    for row in sample:
        widths = [max(width, len(text)) for width, text in zip(widths, row, strict=True)]
    out = sys.stdout

    def line(texts: Sequence[str]) -> str:
        padded = [text.ljust(width) for text, width in zip(texts[:-1], widths, strict=False)]
        return GAP.join([*padded, texts[-1]]).rstrip()

    out.write(line([name.upper() for name in columns]) + "\n")
    count = 0
    for row in sample:
        out.write(line(row) + "\n")
        count += 1
    out.flush()
    for row in rows:
        out.write(line(row) + "\n")
        count += 1
    out.flush()
    return count


@dataclass(frozen=True)
class Column:
    """A table column: its heading and how a record's cell is made."""

    heading: str
    render: Callable[[Mapping[str, Any]], Any]


def stream(fmt: str, records: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> int:
    """Print ``records`` as they arrive in ``fmt``; the number printed.

    JSON and YAML print every field of each record (a fixed set per listing);
    the table prints ``columns``.
    """
    if fmt == "json":
        return _stream_json(records)
    if fmt == "yaml":
        return _stream_yaml(records)
    rows = ([cell(column.render(record)) for column in columns] for record in records)
    return _write_table([column.heading for column in columns], rows)


def _stream_json(records: Iterable[Mapping[str, Any]]) -> int:
    out = sys.stdout
    count = 0
    for record in records:
        text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
        out.write(
            ("[\n" if count == 0 else ",\n") + "\n".join("  " + ln for ln in text.split("\n"))
        )
        if count == 0:
            out.flush()
        count += 1
    out.write("\n]\n" if count else "[]\n")
    out.flush()
    return count


def _stream_yaml(records: Iterable[Mapping[str, Any]]) -> int:
    out = sys.stdout
    count = 0
    iterator = iter(records)
    # The first record alone, at once; then batches: one list's items are the same
    # text as one-item lists written one after the other.
    batch = [dict(record) for record in islice(iterator, 1)]
    while batch:
        out.write(dump_yaml(batch))
        if count == 0:
            out.flush()
        count += len(batch)
        batch = [dict(record) for record in islice(iterator, YAML_BATCH)]
    if not count:
        out.write("[]\n")
    out.flush()
    return count


# --- input ---------------------------------------------------------------------------


def read_text_source(source: str) -> tuple[str, str]:
    """``(text, name for messages)`` of a file, or of stdin for ``-``."""
    if source == "-":
        return sys.stdin.read(), "<stdin>"
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError as exc:
        raise Failure(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc


def parse_document(text: str, name: str, fmt: str = "auto") -> Any:
    """YAML (a superset of JSON) or strict JSON; errors name the source and line."""
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise Failure(f"{name}: line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    from omejdn_pg.errors import InvalidValue

    try:
        return parse_yaml(text, name)  # aliases bounded, as in an imported file
    except InvalidValue as exc:
        raise Failure(str(exc)) from exc


def parse_json(text: str) -> Any:
    """A value given as JSON (``--attribute-json``, ``--json-value``); a usage error if not."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{text!r} is not JSON ({exc.msg})") from exc
    except (ValueError, RecursionError) as exc:  # an integer of 4,300+ digits, deep nesting
        raise click.BadParameter(
            "the JSON value is refused: nested too deep, or an integer of more than 4,300 digits"
        ) from exc


def parse_json_or_text(text: str) -> Any:
    """A ``--filter`` value: JSON if it parses (``true``, ``42``, ``"x"``, ``[..]``), else text."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or JSON Python cannot read
        return text


def parse_scalar(text: str) -> Any:
    """A ``--set`` value: JSON if it parses; else a YAML scalar (``yes``, ``1.5``) or a
    bracketed YAML flow collection (``[a, b]``, ``{a: 1}``) if that gives a JSON value;
    else the text itself — ``My App: v2`` stays a string, never a mapping."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    from omejdn_pg.errors import InvalidValue

    try:
        value = parse_yaml(text, "a --set value")
    except InvalidValue:
        return text
    bracketed = text.strip().startswith(("[", "{"))
    if isinstance(value, list | dict) and not bracketed:
        return text
    return value if value is not None and _is_json(value) else text


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def split_assignment(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as ``(KEY, VALUE)``; a usage error otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE")
    return key, value


# --- errors ------------------------------------------------------------------------------


def one_line(message: str, secrets: Sequence[str]) -> str:
    """``message`` as one line with every secret in it masked."""
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, MASK)
    return "; ".join(part.strip() for part in message.strip().splitlines() if part.strip())


def print_error(message: str, secrets: Sequence[str] = ()) -> None:
    click.echo(f"error: {one_line(message, secrets)}", err=True)
