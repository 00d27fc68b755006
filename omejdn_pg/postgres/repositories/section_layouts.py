"""Section tables' layouts and their values: Python data to JSON text and back, checked.

A dict section is ``(key, value)``, a list section ``(position, item)`` or the
Ruby plugin's position-less ``(item)``; the value column is ``jsonb`` (ours),
or ``text`` holding compact JSON (the Ruby plugin's). What a table is, is read
from its columns, so the same decoding serves every layout; the SQL that reads
and writes them is :mod:`~omejdn_pg.postgres.repositories.config`.

jsonb keeps numbers as exact decimals and prints integral values without a
fraction, so in JSONB sections a float like ``1e16`` comes back as the int
``10**16`` (equal in value, not in Python type); TEXT columns keep the text.
Dict sections come back in physical row order, which is the order written in
the common case; JSON objects promise no order, so nothing may rely on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import JSON, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

from omejdn_pg.errors import InvalidValue, StorageError
from omejdn_pg.json_values import check_json
from omejdn_pg.postgres.repositories.common import dumps
from omejdn_pg.postgres.schema import SECTION_PREFIX

Shape = Literal["dict", "list"]

_JSON_TYPES: Final = frozenset({"jsonb", "json"})


@dataclass(frozen=True)
class Layout:
    """What a section table looks like in this database."""

    shape: Shape
    column: str
    """``value`` (dict) or ``item`` (list): the column holding the JSON values."""
    column_type: str
    """``jsonb`` (ours), ``text`` (the Ruby plugin's) or another type PostgreSQL reports."""
    positioned: bool
    """Whether rows carry a ``position``; the Ruby plugin's lists do not."""

    @property
    def holds_json(self) -> bool:
        return self.column_type in _JSON_TYPES

    def sql_type(self) -> TypeEngine[Any]:
        if self.column_type == "jsonb":
            return JSONB()
        if self.column_type == "json":
            return JSON()
        return Text()


OURS: Final[dict[Shape, Layout]] = {
    "dict": Layout("dict", "value", "jsonb", positioned=False),
    "list": Layout("list", "item", "jsonb", positioned=True),
}
"""The layouts of the section tables this package creates."""


def section_payload(section: str, data: object) -> tuple[Shape, str]:
    """The section's shape and its compact JSON text, after checking every value."""
    shape: Shape
    if isinstance(data, Mapping):
        shape = "dict"
        for key, value in data.items():
            if not isinstance(key, str):
                raise InvalidValue(f"section {section!r}: key {key!r} is not a string")
            # A key is a TEXT row key: the same characters are refused as in values.
            check_json(key, f"section {section!r}: key {key!r}")
            check_json(value, f"section {section!r}: {key}")
    elif isinstance(data, list):
        shape = "list"
        for index, item in enumerate(data):
            check_json(item, f"section {section!r}: [{index}]")
    else:
        raise InvalidValue(
            f"section {section!r}: data must be a dict or a list, got {type(data).__name__}"
        )
    return shape, dumps(data)


def layout_of(section: str, columns: Mapping[str, str]) -> Layout:
    """The layout a table with ``columns`` (``{name: type}``) has; StorageError if none."""
    if "key" in columns and "value" in columns:
        return Layout("dict", "value", columns["value"], positioned=False)
    if "item" in columns:
        return Layout("list", "item", columns["item"], positioned="position" in columns)
    raise StorageError(
        f"table {SECTION_PREFIX}{section} is not a configuration section: "
        f"it has the columns {', '.join(sorted(columns))}, "
        "expected (key, value) or (position, item)"
    )


def section_content(
    section: str, layout: Layout, rows: list[dict[str, Any]]
) -> dict[str, Any] | list[Any]:
    if layout.shape == "dict":
        return {
            row["key"]: _decode(section, layout, row.get("value"), f"key {row['key']!r}")
            for row in rows
        }
    if layout.positioned:
        rows = sorted(rows, key=lambda row: row["position"])
    return [
        _decode(section, layout, row.get("item"), f"item {index}") for index, row in enumerate(rows)
    ]


def _decode(section: str, layout: Layout, value: Any, where: str) -> Any:
    """A value as stored: jsonb arrives parsed, JSON text must be parsed here."""
    if layout.holds_json or value is None:
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError) as error:
        raise StorageError(
            f"configuration section {section!r}: {where} is not valid JSON"
        ) from error
