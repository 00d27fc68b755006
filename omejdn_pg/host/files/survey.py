"""What a deployment directory holds besides what an import reads, said aloud.

Omejdn reads ``config/<section>.yml`` and ``keys/<type>/<name>.key|.cert|.yml``
and silently ignores everything else; so does a Ruby server on the same
directory. For an import that silence hides mistakes: ``users.yaml`` (a
``.yaml``) is skipped and ``user.yml`` (a typo) would be stored as a section
named ``user``, password hashes and all. So an import lists every file it
ignores, and refuses a file that looks like the users or clients list under
another name — by its name (``user.yml``, ``Clients.yml``, ``users.yaml``) or
by its content (a list of entries with a ``username`` or a ``client_id``). The
trade-off: a section that really is such a list under its own name must be
renamed; none of Omejdn's sections is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from omejdn_pg.errors import InvalidValue

_KEY_SUFFIXES: Final = (".key", ".cert", ".yml")
_LISTS: Final = {"users": "username", "clients": "client_id"}
_NAMES: Final = {
    "user": "users",
    "users": "users",
    "client": "clients",
    "clients": "clients",
}
_DATA_SUFFIXES: Final = (".yml", ".yaml", ".json")


def ignored_files(base_dir: Path) -> list[str]:
    """A note for every entry of ``config/`` and ``keys/`` an import does not read;
    InvalidValue for one that looks like the users or clients list misnamed."""
    notes: list[str] = []
    config = base_dir / "config"
    for entry in _entries(config):
        path = config / entry.name
        stem, suffix = _split(entry.name)
        meant = _NAMES.get(stem.lower())
        if meant is not None and suffix.lower() in _DATA_SUFFIXES and entry.name != f"{meant}.yml":
            raise InvalidValue(
                f"{path}: refused: looks like the {meant} list under another name; "
                f"Omejdn reads {meant} only from {config / (meant + '.yml')}, so rename it "
                "(or move it out of the directory)"
            )
        section = os.path.splitext(entry.name)[1] == ".yml" and not entry.name.startswith(".")
        if not section or entry.is_dir():
            notes.append(f"{path}: ignored (Omejdn reads only config/<section>.yml)")
    keys = base_dir / "keys"
    for entry in _entries(keys):
        if not entry.is_dir():
            notes.append(f"{keys / entry.name}: ignored (not a folder of keys)")
            continue
        folder = keys / entry.name
        for item in _entries(folder):
            if item.name.startswith("."):
                continue  # the store's own temporary files and journals
            if os.path.splitext(item.name)[1] not in _KEY_SUFFIXES or item.is_dir():
                notes.append(f"{folder / item.name}: ignored (not a .key, .cert or .yml)")
    return notes


def check_section(name: str, data: Any, path: Path) -> None:
    """Refuse a section other than users and clients whose content is one of those lists."""
    if name in _LISTS or not isinstance(data, list) or not data:
        return
    for meant, field in _LISTS.items():
        if all(isinstance(item, Mapping) and field in item for item in data):
            raise InvalidValue(
                f"{path}: refused: a list of entries with {field!r}, like config/{meant}.yml; "
                f"Omejdn would read it as a configuration section named {name!r}, not as "
                f"{meant}, so rename it to {meant}.yml or move it out of the directory"
            )


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(folder), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _split(name: str) -> tuple[str, str]:
    """``users.yml.bak`` -> ``("users", ".yml.bak")``: the stem before the first dot."""
    stem, dot, rest = name.partition(".")
    return stem, dot + rest
