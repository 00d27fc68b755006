"""Which values PostgreSQL (and this package's readers) can store: JSON and identifiers.

One checker for every writer: the repositories, an import and the file store
(a key's descriptor) refuse the same values with the same messages, before
any SQL is sent or any file written. It imports no database library, so the
file plugins can use it. The trade-off: the file backend refuses what only
PostgreSQL cannot hold (U+0000, lone surrogates), so that a deployment's files
always import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from omejdn_pg.errors import InvalidValue

MAX_JSON_DEPTH: Final = 100
"""Deeper JSON is refused: Omejdn's documents are a few levels deep, and a hostile
document nested thousands deep would exhaust the interpreter's stack."""
MAX_INT_BITS: Final = 14_000
"""Larger integers are refused: Python converts no integer of more than 4,300 digits
(about 14,284 bits) to or from text, so such a value could be stored but never read."""
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
"""What no text column or jsonb string can hold: U+0000 and lone surrogates."""


def check_json(value: object, field: str) -> None:
    """Refuse what PostgreSQL's jsonb refuses, naming ``field``, before any SQL is sent.

    jsonb cannot hold U+0000 (in a key or a string) nor NaN/Infinity, and only
    JSON types serialise at all; the driver's error for these names nothing.
    """
    if not _plainly_json(value, 0):
        # The slower walk names what is wrong, and accepts what the quick one
        # leaves to it (tuples, other mappings).
        check_json_thoroughly(value, field)


def _plainly_json(value: object, depth: int) -> bool:
    """Whether ``value`` is surely storable: built-in JSON types and clean text only.

    An import checks every attribute of every user; this walk builds no field
    names and runs one search per string, a quarter of the cost of :func:`check_json_thoroughly`.
    Everything it accepts, ``check_json_thoroughly`` accepts.
    """
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is None
    if value is None or isinstance(value, int):
        return value is None or value.bit_length() <= MAX_INT_BITS
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_JSON_DEPTH:
        return False
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str) or _UNSTORABLE.search(key) is not None:
                return False
            if not _plainly_json(item, depth + 1):
                return False
        return True
    if type(value) is list:
        return all(_plainly_json(item, depth + 1) for item in value)
    return False


def check_json_thoroughly(value: object, where: str, depth: int = 0) -> None:
    """:func:`check_json`'s slower walk, which names what is wrong."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidValue(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise InvalidValue(
                f"{where}: an integer of {value.bit_length():,} bits is refused: Python reads "
                "no integer of more than 4,300 digits back"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidValue(
                f"{where}: contains the character U+0000, which PostgreSQL cannot store"
            )
        _check_surrogates(value, f"{where}:")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValue(f"{where}: object key {key!r} is not a string")
            if "\x00" in key:
                raise InvalidValue(
                    f"{where}: an object key contains the character U+0000, "
                    "which PostgreSQL cannot store"
                )
            _check_surrogates(key, f"{where}: an object key")
            check_json_thoroughly(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_thoroughly(item, f"{where}[{index}]", depth + 1)
        return
    raise InvalidValue(f"{where}: a {type(value).__name__} is not a JSON value")


def storable_text(value: object) -> bool:
    """Whether ``value`` could name a stored row at all; a lookup of anything else finds nothing."""
    return isinstance(value, str) and bool(value) and _UNSTORABLE.search(value) is None


def check_text(value: object, field: str) -> str:
    """A non-empty identifier or key PostgreSQL can store in a TEXT column."""
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"{field} must be a non-empty string, got {value!r}")
    if _UNSTORABLE.search(value) is None:
        return value
    if "\x00" in value:
        raise InvalidValue(f"{field} contains the character U+0000, which PostgreSQL cannot store")
    _check_surrogates(value, field)
    return value


def _check_surrogates(value: str, where: str) -> None:
    # A lone surrogate (from a lax JSON or YAML decoder) is not Unicode: the
    # driver fails to encode it with an error that names no field, and jsonb
    # refuses its \uXXXX escape.
    found = _SURROGATE.search(value)
    if found is not None:
        raise InvalidValue(
            f"{where} contains the character U+{ord(found.group()):04X}, "
            "a lone surrogate that is not valid Unicode"
        )
