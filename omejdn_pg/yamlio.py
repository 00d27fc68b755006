"""One YAML reader and writer for the package: libyaml's C loader, a writer of its own, bounded.

Every YAML the package reads or writes goes through here: Omejdn's plugin
files (``OMEJDN_PLUGINS``), a deployment's ``config/*.yml`` and key
descriptors, ``$OMEJDN_PG_KEY_ENCRYPTION``, the command line's ``--set``
values and ``-o yaml`` output. libyaml's ``CSafeLoader`` reads where PyYAML
was built with it (several times faster on a users.yml of thousands of
entries); the pure-Python ``SafeLoader`` otherwise, with the same results.
JSON-shaped data — every listing, section, users.yml and clients.yml — is
written by :mod:`omejdn_pg.yaml_emit`, as fast as ``-o json``; anything else
by libyaml's ``CSafeDumper`` (or ``SafeDumper``). PyYAML is imported on
first use only: ``omejdn-pg --help``, JSON-shaped output and a file written
as JSON (:func:`json_form`) never load it.

Errors name the source and the line (``config/users.yml: line 3: ...``), as
the package's own exception (InvalidValue unless the caller names another,
e.g. ConfigurationError for a plugin file).

Aliases are bounded. A YAML alias repeats a node without repeating its
text: nine lines of nine aliases each make a 400-byte file that stands for
387 million strings. PyYAML builds such a file fast (every alias is the
same object), but everything after it — the JSON checks, a copy, the
database's text form — walks the expansion and hangs for minutes. So a file
that has anchors at all is measured before it is built: its expanded size
(nodes plus scalar characters, every alias counted in full) may exceed its
own size only by :data:`ALIAS_ALLOWANCE`, and an alias to a node containing
it is refused. A file without both an ``&`` and a ``*`` cannot have an alias
and pays nothing; one with both pays a walk over its nodes (about 40% more
than the parse, measured on 20,000 users with both in each password).

Written YAML has no anchors: a value shared in memory is written out again,
so what this module writes never counts against that bound when read back.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any, Final

from omejdn_pg.errors import InvalidValue, OmejdnPgError
from omejdn_pg.yaml_emit import NotJsonShaped, emit

ALIAS_ALLOWANCE: Final = 1_000_000
"""How much larger than its own text a YAML file may become through aliases, in nodes
plus scalar characters: far more than defaults shared by a few hundred clients, far
less than what makes a walk over the result take seconds."""


@cache
def yaml_loader() -> Any:
    """libyaml's safe loader where PyYAML has it, else the pure-Python one."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def yaml_dumper() -> Any:
    """libyaml's safe emitter where PyYAML has it, else the pure-Python one; no anchors."""
    import yaml

    base: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class Dumper(base):  # type: ignore[misc]
        # A value shared in memory is written out again: a record of a listing or a
        # section's entry never refers to another's text, and a file written here
        # never spends its reader's alias allowance.
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return Dumper


def dump_yaml(data: Any) -> str:
    """``data`` as Omejdn's block-style YAML: keys in their order, text unescaped.

    JSON-shaped data (a dict or list of JSON values: every listing and section)
    is written by :mod:`omejdn_pg.yaml_emit`, several times faster than
    PyYAML's representer; anything else by PyYAML as it always was.
    """
    try:
        return emit(data)
    except (NotJsonShaped, RecursionError):
        pass
    import yaml

    return yaml.dump(
        data, Dumper=yaml_dumper(), sort_keys=False, allow_unicode=True, default_flow_style=False
    )


def parse_yaml(text: str, name: str, *, error: type[OmejdnPgError] = InvalidValue) -> Any:
    """The YAML document ``text`` (named ``name`` in messages), parsed safely and with
    its aliases bounded (the module docstring); ``error`` (naming ``name`` and the
    line) if it is not one."""
    import yaml

    loader = yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "&" in text and "*" in text:  # an alias needs both an anchor and a star
            _check_expansion(node, len(text) + ALIAS_ALLOWANCE, name, error)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{name}:{line} {problem}") from exc
    except OmejdnPgError:
        raise
    except ValueError as exc:
        # int() of a scalar of more than 4,300 digits: refused, not a bare ValueError.
        raise error(f"{name}: {_integer_problem(exc)}") from exc
    finally:
        loader.dispose()


def _integer_problem(error: ValueError) -> str:
    if "digits" in str(error):
        return "an integer of more than 4,300 digits is refused (Python reads none back)"
    return str(error)


def _check_expansion(root: Any, limit: int, name: str, error: type[OmejdnPgError]) -> None:
    """Refuse a node graph whose expansion exceeds ``limit`` or never ends.

    Post-order over the graph, each node measured once (an alias is the very
    node it names), so the cost is the file's, not its expansion's.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    pending: list[tuple[Any, bool]] = [(root, False)]
    while pending:
        node, done = pending.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > limit:
                raise error(
                    f"{name}: refused: its aliases make it more than {limit:,} nodes and "
                    "characters large (a YAML alias bomb?)"
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if isinstance(node.value, str):
            sizes[key] = 1 + len(node.value)
            continue
        if key in open_nodes:
            raise error(f"{name}: refused: an alias names a node that contains it")
        open_nodes.add(key)
        pending.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise error(f"{name}: refused: an alias names a node that contains it")
            if id(child) not in sizes:
                pending.append((child, False))


def _children(node: Any) -> list[Any]:
    if isinstance(node.value, str):
        return []
    children: list[Any] = []
    for item in node.value:
        if isinstance(item, tuple):
            children.extend(item)
        else:
            children.append(item)
    return children


_NOT_JSON: Final = object()
_YAML_FLOAT: Final = "tag:yaml.org,2002:float"
_LIST_ENTRY: Final = ("- {", "- [")
_SHORT_LINE: Final = 1000
"""Within this many characters a JSON key and its ``:`` are always a YAML simple key
(libyaml looks no further than 1024 characters for one)."""
_LONGEST_KEY: Final = 160
"""Key length (decoded) that stays within that reach on a longer line, even with every
character written as a 6-character escape."""
_SPACED_COLON: Final = re.compile(r'" {32,}:')
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89abAB]", re.ASCII)


class _NotLikeYaml(Exception):
    """A JSON value that YAML reads otherwise (NaN, a float YAML 1.1 takes for a string)."""


def _yaml_number(literal: str) -> Any:
    """What YAML makes of a JSON number with a fraction or exponent: PyYAML's YAML 1.1
    float needs a dot and a signed exponent, so ``1e5`` is the string ``'1e5'``."""
    for tag, pattern in yaml_loader().yaml_implicit_resolvers.get(literal[0], ()):
        if pattern.match(literal):
            if tag == _YAML_FLOAT:
                return float(literal)
            raise _NotLikeYaml(literal)
    return literal


def _refuse_constant(literal: str) -> Any:
    raise _NotLikeYaml(literal)  # NaN, Infinity: plain strings to YAML


_JSON: Final = json.JSONDecoder(parse_float=_yaml_number, parse_constant=_refuse_constant)


def json_form(text: str) -> Any:
    """``text`` parsed as JSON if it is JSON that YAML reads to the same value, else
    ``_NOT_JSON`` (then YAML must parse it, and say what is wrong with it).

    YAML is a superset of JSON but for a few differences, each refused here:
    lines YAML breaks differently (tabs, CR, NEL, U+2028/9, any character not
    printable), escapes of surrogate halves (YAML refuses them; JSON pairs
    them), NaN and Infinity, numbers YAML 1.1 reads as strings, and keys too
    far from their ``:`` for YAML to see a key. A document spanning several
    lines, or anything else, is left to YAML.
    """
    body = text[:-1] if text.endswith("\n") else text
    if body.startswith(("{", "[")):
        lines = [body]
        many = False
    elif body.startswith(_LIST_ENTRY):
        lines = body.split("\n")
        many = True
    else:
        return _NOT_JSON
    for line in lines:
        if not (line.isprintable() and (not many or line.startswith(_LIST_ENTRY))):
            return _NOT_JSON
    if "\\u" in body and _SURROGATE_ESCAPE.search(body):
        return _NOT_JSON
    # Each value where it starts, not in a copy of its line after "- ".
    decode, start = _JSON.raw_decode, 2 if many else 0
    try:
        decoded = [decode(line, start) for line in lines]
    except (ValueError, RecursionError, _NotLikeYaml):
        return _NOT_JSON
    for line, (value, end) in zip(lines, decoded, strict=True):
        # After the value, as JSON allows, only whitespace: spaces, on a printable line.
        if end != len(line) and line[end:].strip(" "):
            return _NOT_JSON
        if len(line) > _SHORT_LINE and (
            _SPACED_COLON.search(line) is not None or not _keys_within(value, _LONGEST_KEY)
        ):
            return _NOT_JSON
    values = [value for value, _end in decoded]
    return values if many else values[0]


def _keys_within(value: object, longest: int) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if any(len(key) > longest for key in item):
                return False
            pending.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            pending.extend(v for v in item if isinstance(v, dict | list))
    return True


def load_yaml(text: str, path: object) -> Any:
    """The YAML document ``text`` (of the file ``path``, for messages), parsed safely.

    A file written as JSON — one document on one line, or a block list of JSON
    values one per line (``- {...}``), the way scripts that generate a
    ``users.yml`` write it — is read by the JSON parser, about twenty times
    faster than libyaml on a file of thousands of users, and with the same
    result: :func:`json_form` takes only what YAML reads alike.
    """
    found = json_form(text)
    if found is not _NOT_JSON:
        return found
    return parse_yaml(text, str(path))
