"""The checks every settings key shares: known keys, durations, numbers, lists of names.

Each raises ConfigurationError (``parse_duration`` a ValueError, for the
command line to turn into a usage error) naming where the value sits and
what is allowed; none of them echoes a value under a key that may hold a
secret (connection values are checked in :mod:`omejdn_pg.settings.validation`
by keyword, not by content).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from omejdn_pg.errors import ConfigurationError


def refuse_unknown_keys(value: Mapping[Any, Any], allowed: Iterable[str], where: str) -> None:
    """A ConfigurationError naming the keys of ``value`` outside ``allowed``, and those."""
    allowed = list(allowed)
    unknown = sorted(set(map(str, value)) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )


def parse_choice(value: object, where: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigurationError(f"{where} is {value!r}; allowed: {', '.join(allowed)}")
    return value


def duration_setting(value: object, where: str, default: str | None = None) -> datetime.timedelta:
    """:func:`parse_duration` of ``value`` (``default`` when it is None) as a setting:
    a ConfigurationError naming ``where`` if it is no duration."""
    try:
        return parse_duration(default if value is None else value, where)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


_DURATION: Final = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")


def parse_duration(value: object, field: str) -> datetime.timedelta:
    """``90``, ``"90s"``, ``"30m"``, ``"25h"``, ``"2d"``, ``"1d12h"``, ``"250ms"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return datetime.timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return datetime.timedelta(seconds=int(text))
        found = _DURATION.fullmatch(text)
        if text and found is not None:
            days, hours, minutes, seconds, millis = (int(part or 0) for part in found.groups())
            return datetime.timedelta(
                days=days, hours=hours, minutes=minutes, seconds=seconds, milliseconds=millis
            )
    raise ValueError(f"{field}: {value!r} is not a duration (seconds, or e.g. 30m, 25h, 2d, 1d12h)")


def parse_numbers(value: object, where: str, fields: Mapping[str, type]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with keys {', '.join(fields)}")
    refuse_unknown_keys(value, fields, where)
    parsed: dict[str, Any] = {}
    for name, kind in fields.items():
        if name not in value:
            continue
        item = value[name]
        if isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
            raise ConfigurationError(f"{where}.{name} must be a non-negative number, got {item!r}")
        parsed[name] = kind(item)
    return parsed


def string_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{where} must be a list of names, got {value!r}")
    return list(value)
