"""JSON-shaped data written as Omejdn's block-style YAML directly, without PyYAML's representer.

Everything the package writes in bulk — ``-o yaml`` listings, ``users.yml``
and ``clients.yml`` of an export or of the file plugins — is JSON-shaped:
dicts with string keys, lists, strings, integers, floats, booleans and None.
PyYAML builds a node per value in Python before libyaml's C emitter sees
them, and that representer was three quarters of ``users list -o yaml``
(20,000 users: 3.3 s of representer in a 5 s profile). This module writes
the same layout straight from the values, as fast as ``-o json``.

The trade-off is owning the quoting rule. A string is written

- plain only when a conservative rule says it is safe: printable, one line,
  no leading or trailing space, no indicator where YAML looks for one, and
  read back as that very string both by PyYAML's implicit resolvers (bools
  ``yes``/``on``/..., null, ints, floats, timestamps, ``<<``, ``=``) and by
  Ruby's Psych, which reads Omejdn's files (case-insensitive ``yEs``,
  ``1,000``, symbols ``:x``, times PyYAML takes for text);
- else single-quoted if it is printable on one line (what PyYAML writes:
  ``'1'``, ``'yes'``, ``''``);
- else double-quoted: its JSON form, with the characters YAML reads otherwise
  (NEL, LS, PS, DEL, C1 controls, BOM, U+FFFE/U+FFFF) as ``\\u`` escapes.

So typical records come out as the very text PyYAML wrote, a few strings in
another quoting style (a multi-line string double-quoted on one line, not
single-quoted over several; a string Psych would read as a number or a time,
quoted where PyYAML left it plain), and long strings are not folded at 80
columns. Every text reads back as the same data with PyYAML's C and Python
loaders and with Psych (tests/unit/test_yaml_emit.py).

Anything else — a top-level scalar, a non-string key, a key too long to be a
simple key, a tuple, a date, a subclass of str, a lone surrogate — raises
:class:`NotJsonShaped`, and the caller writes it with PyYAML as before.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any, Final


class NotJsonShaped(Exception):
    """A value this writer leaves to PyYAML."""


_PRINTABLE: Final = re.compile("[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd]*")
"""One line of what libyaml's emitter calls printable, less line and paragraph separators
(YAML 1.1 line breaks) and the BOM; non-BMP characters are written double-quoted, as
libyaml does."""
_FIRST_INDICATORS: Final = frozenset(" -?:,[]{}#&*!|>'\"%@`")
"""A first character that starts something else than a plain scalar (``-x``, ``?x``, ``:x``
are plain to YAML, but ``:x`` is a symbol to Psych; all three are quoted)."""
_DOUBLE_QUOTED_ESCAPE: Final = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
"""What JSON leaves raw and YAML does not read back raw in a double-quoted scalar."""
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_PSYCH_WORDS: Final = frozenset({"~", "null", "yes", "true", "on", "no", "false", "off"})
"""What Psych reads as nil, true or false, in any case (PyYAML: three spellings each)."""
_PSYCH_NUMBER_FIRST: Final = frozenset("+.0123456789")
_PSYCH_NOT_TEXT: Final = re.compile(
    # Psych's ScalarScanner (4.0), with ASCII classes as in Ruby: time, date, inf/nan,
    # sexagesimal int and float, float, int (commas and underscores allowed).
    r"-?[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt]|[ \t\r\n\f\v]+)[0-9]{1,2}:[0-9][0-9]:[0-9][0-9]"
    r"(?:\.[0-9]*)?(?:[ \t\r\n\f\v]*(?:Z|[-+][0-9]{1,2}:?(?:[0-9][0-9])?))?"
    r"|[0-9]{4}-(?:1[012]|0[0-9]|[0-9])-(?:[12][0-9]|3[01]|0[0-9]|[0-9])"
    r"|(?i:\+?\.inf|-\.inf|\.nan)"
    r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9]){1,2}(?:\.[0-9_]*)?"
    r"|[-+]?(?:[0-9][0-9_,]*)?\.[0-9]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?0b[0-1_,]+|[-+]?0[0-7_,]+|[-+]?(?:0|[1-9](?:[0-9]|,[0-9]|_[0-9])*)"
    r"|[-+]?0x[0-9a-fA-F_,]+"
)
_MERGE_KEY: Final = "!!str <<"
"""The key ``<<``: Psych merges a quoted ``'<<'`` key's mapping into its parent; an
explicit tag keeps it a key, for PyYAML as well."""
_LONGEST_KEY: Final = 1000
"""UTF-8 bytes of a written key: libyaml and PyYAML look no further than 1024 characters
for the ``:`` of a simple key (PyYAML's emitter writes ``? key`` past 128)."""
_KEY_CACHE_SIZE: Final = 4096
_key_texts: dict[str, str] = {}
"""Written keys with their ``:``; listings repeat a few keys in every record."""


@cache
def _implicit_resolvers() -> dict[str | None, list[tuple[str, re.Pattern[str]]]]:
    """PyYAML's implicit resolvers by first character (the C and Python loaders share them)."""
    import yaml

    resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = dict(
        yaml.resolver.Resolver.yaml_implicit_resolvers
    )
    return resolvers


def emit(data: Any) -> str:
    """``data`` (a dict or list of JSON values) as Omejdn's block-style YAML.

    Raises :class:`NotJsonShaped` for anything else; RecursionError past
    Python's nesting limit.
    """
    kind = type(data)
    if kind is dict:
        if not data:
            return "{}\n"
        parts: list[str] = []
        _mapping(data, 0, False, parts)
        return "".join(parts)
    if kind is list:
        if not data:
            return "[]\n"
        parts = []
        _sequence(data, 0, False, parts)
        return "".join(parts)
    raise NotJsonShaped(kind.__name__)


def _mapping(data: dict[Any, Any], indent: int, inline: bool, parts: list[str]) -> None:
    """A non-empty mapping at ``indent``; its first key on the current line if ``inline``."""
    pad = " " * indent
    lead = "" if inline else pad
    append = parts.append
    for key, value in data.items():
        written = (_key_texts.get(key) if type(key) is str else None) or _key(key)
        kind = type(value)
        if kind is str:
            append(f"{lead}{written} {_string(value)}\n")
        elif kind is dict:
            if value:
                append(f"{lead}{written}\n")
                _mapping(value, indent + 2, False, parts)
            else:
                append(f"{lead}{written} {{}}\n")
        elif kind is list:
            if value:
                append(f"{lead}{written}\n")
                _sequence(value, indent, False, parts)  # indentless, as PyYAML writes it
            else:
                append(f"{lead}{written} []\n")
        else:
            append(f"{lead}{written} {_other_scalar(value, kind)}\n")
        lead = pad


def _sequence(data: list[Any], indent: int, inline: bool, parts: list[str]) -> None:
    """A non-empty sequence at ``indent``; its first item on the current line if ``inline``."""
    pad = " " * indent
    lead = "" if inline else pad
    append = parts.append
    for value in data:
        kind = type(value)
        if kind is str:
            append(f"{lead}- {_string(value)}\n")
        elif kind is dict:
            if value:
                append(f"{lead}- ")
                _mapping(value, indent + 2, True, parts)
            else:
                append(f"{lead}- {{}}\n")
        elif kind is list:
            if value:
                append(f"{lead}- ")
                _sequence(value, indent + 2, True, parts)
            else:
                append(f"{lead}- []\n")
        else:
            append(f"{lead}- {_other_scalar(value, kind)}\n")
        lead = pad


def _key(key: Any) -> str:
    """``key`` as written before its value, ``:`` included; remembered."""
    if type(key) is not str:
        raise NotJsonShaped(f"a {type(key).__name__} key")
    text = _MERGE_KEY if key == "<<" else _string(key)
    if len(text) * 4 > _LONGEST_KEY and len(text.encode("utf-8")) > _LONGEST_KEY:
        raise NotJsonShaped("a key too long for a simple key")
    written = text + ":"
    if len(_key_texts) >= _KEY_CACHE_SIZE:
        _key_texts.clear()
    _key_texts[key] = written
    return written


def _other_scalar(value: Any, kind: type) -> str:
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return _float(value)
    raise NotJsonShaped(kind.__name__)


def _float(value: float) -> str:
    """As PyYAML's SafeRepresenter writes it: read back equal, ``.nan``/``.inf`` included."""
    if value != value:
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)  # 1e+16: YAML 1.1 needs the dot
    return text


def _string(text: str) -> str:
    """``text`` plain, single-quoted or double-quoted (the module docstring)."""
    if _PRINTABLE.fullmatch(text):
        if is_plain(text):
            return text
        return "'" + text.replace("'", "''") + "'"
    if _SURROGATE.search(text):
        raise NotJsonShaped("a lone surrogate")
    quoted = json.dumps(text, ensure_ascii=False)
    if _DOUBLE_QUOTED_ESCAPE.search(quoted):
        quoted = _DOUBLE_QUOTED_ESCAPE.sub(_escape, quoted)
    return quoted


def _escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def is_plain(text: str) -> bool:
    """Whether the printable one-line ``text`` can be written without quotes: no indicator
    where YAML looks for one, and read back as this very string by PyYAML and Psych."""
    if not text or text[0] in _FIRST_INDICATORS or text[-1] in " :":
        return False
    if ": " in text or " #" in text or text.startswith("..."):
        return False
    first = text[0]
    if len(text) <= 5 and text.lower() in _PSYCH_WORDS:
        return False
    if first in _PSYCH_NUMBER_FIRST and _PSYCH_NOT_TEXT.fullmatch(text):
        return False
    resolvers = _implicit_resolvers()
    for _tag, pattern in resolvers.get(first, ()):
        if pattern.match(text):
            return False
    return not any(pattern.match(text) for _tag, pattern in resolvers.get(None, ()))
