"""Reading the files of a deployment directory without trusting them.

An import directory may come from anyone who could write into it, and the
default file plugins read a running deployment's files; both read through
here. Three things are bounded:

- *Which files.* :func:`read_file` opens only regular files (``O_NONBLOCK``,
  then ``fstat`` on what was opened: a FIFO, a socket or a device is refused
  without blocking on it or reading from it). For a confined reader (what an
  import uses) the file, after every symbolic link is resolved, must lie
  inside the directory, and the resolved path is opened with ``O_NOFOLLOW``:
  a ``config/webfinger.yml`` linking to the operator's plugin file, or a
  ``config/omejdn.yml`` linking to ``/etc/shadow``, is refused and named. A
  link that stays inside the directory (how Kubernetes mounts a ConfigMap) is
  read. The trade-off: a directory component swapped for a link between the
  check and the open is not caught (the final component is); whoever can do
  that owns the directory anyway.
- *How much.* Each file has a size limit, checked on the opened file and
  again while reading (a file that grows past it is refused, not read to
  exhaustion).
- *What it may become.* A YAML alias repeats a node without repeating its
  text: nine lines of nine aliases each make a 400-byte file that stands for
  387 million strings. PyYAML builds such a file fast (every alias is the
  same object), but everything after it — the JSON checks, a copy, the
  database's text form — walks the expansion and hangs for minutes. So a file
  that has anchors at all is measured before it is built: its expanded size
  (nodes plus scalar characters, every alias counted in full) may exceed its
  own size only by :data:`ALIAS_ALLOWANCE`, and an alias to a node containing
  it is refused. A file without both an ``&`` and a ``*`` cannot have an alias
  and pays nothing; one with both pays a walk over its nodes (about 40% more
  than the parse: 20,000 users with both in each password, 1.5 s instead of
  1.1 s). libyaml's C loader stays the parser either way.
"""

from __future__ import annotations

import json
import os
import re
import stat
from functools import cache
from pathlib import Path
from typing import Any, Final

from omejdn_pg.errors import InvalidValue

SECTION_LIMIT: Final = 128 * 1024 * 1024
"""Bytes one ``config/*.yml`` may have: several times the largest users.yml a deployment
of Omejdn's YAML files holds (100,000 users with attributes are about 30 MB)."""
KEY_FILE_LIMIT: Final = 1024 * 1024
"""Bytes one ``.key``, ``.cert`` or ``.yml`` of a key may have (a chain of ten
certificates is about 20 KB)."""
ALIAS_ALLOWANCE: Final = 1_000_000
"""How much larger than its own text a YAML file may become through aliases, in nodes
plus scalar characters: far more than defaults shared by a few hundred clients, far
less than what makes a walk over the result take seconds."""
_CHUNK: Final = 1024 * 1024


def read_file(path: Path, *, limit: int, root: Path | None = None) -> bytes | None:
    """The bytes of the regular file ``path``, or None if it does not exist.

    With ``root``, the file must resolve to a path inside ``root``. Raises
    InvalidValue naming ``path`` for anything else it refuses.
    """
    opened = path
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    if root is not None:
        real = Path(os.path.realpath(path))
        real_root = Path(os.path.realpath(root))
        if not real.is_relative_to(real_root):
            if not os.path.lexists(path):
                return None
            raise InvalidValue(
                f"{path}: refused: a symbolic link that leads out of {root} (to {real})"
            )
        opened = real
        flags |= os.O_NOFOLLOW
    try:
        # Not opened at all unless regular (opening a device can act on it; a socket
        # cannot be opened); the fstat below holds for what was opened in the end.
        _refuse_special(path, os.stat(opened).st_mode)
        descriptor = os.open(opened, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidValue(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        info = os.fstat(descriptor)
        _refuse_special(path, info.st_mode)
        if info.st_size > limit:
            raise InvalidValue(f"{path}: refused: {info.st_size} bytes, more than {limit}")
        chunks = []
        size = 0
        while chunk := os.read(descriptor, min(_CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InvalidValue(f"{path}: refused: grew past {limit} bytes while read")
        return b"".join(chunks)
    except OSError as exc:
        raise InvalidValue(f"{path}: cannot read: {exc.strerror}") from exc
    finally:
        os.close(descriptor)


def read_text(path: Path, *, limit: int, root: Path | None = None) -> str | None:
    """:func:`read_file` decoded as UTF-8."""
    data = read_file(path, limit=limit, root=root)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValue(f"{path}: not UTF-8 text") from exc


def _refuse_special(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise InvalidValue(f"{path}: refused: {_kind(mode)}, not a regular file")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


# --- YAML --------------------------------------------------------------------------------


@cache
def yaml_loader() -> Any:
    """libyaml's safe loader where there is one: several times faster on a users.yml of
    thousands of entries. PyYAML is imported only for a file that needs it — one
    written as JSON (:func:`json_form`) does not — or for writing one."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, name: str) -> Any:
    """The YAML document ``text`` (named ``name`` in messages), parsed safely and with
    its aliases bounded (the module docstring); InvalidValue if it is not one."""
    import yaml

    loader = yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "&" in text and "*" in text:  # an alias needs both an anchor and a star
            _check_expansion(node, len(text) + ALIAS_ALLOWANCE, name)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InvalidValue(f"{name}:{line} {problem}") from exc
    except InvalidValue:
        raise
    except ValueError as exc:
        # int() of a scalar of more than 4,300 digits: refused, not a bare ValueError.
        raise InvalidValue(f"{name}: {_integer_problem(exc)}") from exc
    finally:
        loader.dispose()


def _integer_problem(error: ValueError) -> str:
    if "digits" in str(error):
        return "an integer of more than 4,300 digits is refused (Python reads none back)"
    return str(error)


def _check_expansion(root: Any, limit: int, name: str) -> None:
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
                raise InvalidValue(
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
            raise InvalidValue(f"{name}: refused: an alias names a node that contains it")
        open_nodes.add(key)
        pending.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise InvalidValue(f"{name}: refused: an alias names a node that contains it")
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


def load_yaml(text: str, path: Path) -> Any:
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
