"""Names that become file or table names: key targets, client ids, section names.

Omejdn's file layout stores a key as ``keys/<target_type>/<target>.key`` and
a client's keys under target type ``clients`` with the client id as target,
so these names must be usable as one path component everywhere they can end
up — the export of a database, the default file plugin, a Ruby Omejdn sharing
the deployment. They are refused when written, not only when exported: a name
that can only fail later is a name that should never have been stored.
"""

from __future__ import annotations

import re
from typing import Final

from omejdn_pg.errors import InvalidSectionName, InvalidValue

MAX_NAME_LENGTH: Final = 200
_FORBIDDEN: Final = re.compile(r"[/\\\x00-\x1f\x7f]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def check_file_name(value: object, field: str) -> str:
    """``value`` if it can be one path component of Omejdn's layout, else InvalidValue."""
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"{field} must be a non-empty string, got {value!r}")
    shown = repr(value) if len(value) <= 80 else repr(value[:77] + "...")
    problem = None
    if value.startswith("."):
        problem = "starts with a dot"
    elif _FORBIDDEN.search(value):
        problem = "contains '/', '\\\\' or a control character"
    elif _SURROGATE.search(value):
        problem = "contains a lone surrogate, which is not valid Unicode"
    elif len(value) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    if problem is not None:
        raise InvalidValue(
            f"{field} {shown} {problem}; it must be usable as a file name in Omejdn's layout"
        )
    return value


def is_file_name(value: object) -> bool:
    try:
        check_file_name(value, "name")
    except InvalidValue:
        return False
    return True


SECTION_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,48}")
"""A configuration section name: it names a table (``configuration_<section>``, at most
63 bytes) and a file (``config/<section>.yml``)."""


def validate_section_name(section: object) -> str:
    """Return ``section`` if it is a valid section name, else raise InvalidSectionName.

    This runs before any SQL is built or any file is named, so a hostile name
    never reaches the database or the file system, even though identifiers
    are also quoted when used.
    """
    if not isinstance(section, str) or SECTION_NAME.fullmatch(section) is None:
        shown = repr(section)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidSectionName(
            f"invalid configuration section name {shown}: "
            "expected 1 to 49 characters of a-z, 0-9 and _, starting with a letter"
        )
    return section
