"""Session settings that travel at connection startup, or per transaction where a pooler refuses.

The bounds (``statement_timeout``, ``lock_timeout``) and the package's own
marker settings are sent as libpq's startup ``options`` (``-c name=value``):
they then hold from a connection's first statement and cost no round trip.
PgBouncer as Debian configures it refuses that startup parameter outright
(``unsupported startup parameter: options``) unless told to ignore it, and
ignoring it silently drops the bounds. So a connection refused for that
reason is made again without ``options``, and the same settings are then set
inside every transaction instead (``set_config(name, value, true)``, i.e.
``SET LOCAL``): that holds in session and in transaction pooling alike, where
a plain ``SET`` would stay on whichever server connection it happened to reach
and leak to other clients of the pool.

The cost behind such a pooler, measured in ``tests/cluster/test_pooler_operator.py``:
a point read on the read pool stays one round trip (``BEGIN``, the settings,
the read and ``COMMIT`` go out as one pipeline); a read or a write through
SQLAlchemy pays one more statement for the settings. A direct server, or a
pooler configured to pass ``options`` on, is unaffected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import psycopg

from omejdn_pg.errors import ConfigurationError

C = TypeVar("C")

REFUSED_MARKS: Final = ("unsupported startup parameter", "options")
"""Both in PgBouncer's refusal (``FATAL: unsupported startup parameter: options``)."""


def parse_options(options: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of a libpq ``options`` string of ``-c name=value``
    (also ``-cname=value`` and ``--name=value``), backslash escapes as libpq reads them."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            setting, index = words[index + 1], index + 2
        elif word.startswith(("-c", "--")):
            setting, index = word[2:], index + 1
        else:
            raise ConfigurationError(
                f"the connection's options {word!r} cannot be set per transaction behind a "
                "pooler that refuses startup options; only -c name=value can"
            )
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise ConfigurationError(f"the connection's options: {setting!r} is not name=value")
        pairs.append((name.replace("-", "_"), value))
    return pairs


def refused_options(error: BaseException) -> bool:
    message = str(error)
    return all(mark in message for mark in REFUSED_MARKS)


class StartupSettings:
    """The ``options`` of one connection target, and whether its pooler refused them.

    Shared by the engine and the read pool of one server, so the first
    refusal spares every later connection the attempt.
    """

    def __init__(self, connect_args: Mapping[str, Any]) -> None:
        self.options = str(connect_args.get("options") or "")
        self.refused = False
        self._lock = threading.Lock()
        pairs = parse_options(self.options) if self.options else []
        calls = [
            f"set_config({_literal(name)}, {_literal(value)}, true) AS s{number}"
            for number, (name, value) in enumerate(pairs)
        ]
        self.set_locals: bytes = f"SELECT {', '.join(calls)}".encode() if calls else b""
        """One statement setting every option for the current transaction only."""

    def connect(self, connect: Callable[..., C], connect_args: Mapping[str, Any]) -> C:
        """``connect(**connect_args)``, without ``options`` once a pooler has refused them."""
        if self.refused:
            return connect(**_without_options(connect_args))
        try:
            return connect(**connect_args)
        except psycopg.OperationalError as error:
            if not self.options or not refused_options(error):
                raise
            with self._lock:
                self.refused = True
            return connect(**_without_options(connect_args))

    @property
    def per_transaction(self) -> bytes:
        """The statement to run first in each transaction; empty when startup carried them."""
        return self.set_locals if self.refused else b""


def _without_options(connect_args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in connect_args.items() if k != "options"}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
