"""libpq connection settings: the keywords, the URL forms operators write, and their masking.

The ``connection`` mapping is handed to libpq unchanged (through psycopg), so
every libpq keyword, ``PG*`` environment variable and service file works as
libpq documents it. Its password is masked wherever settings are shown.

A connection URL is checked before libpq sees it. libpq parses it in the end
(``conninfo_to_dict``), so every form it takes means what libpq says it means.
What is done here first is what libpq would do badly for a person: a URL whose
user info holds an unencoded ``@`` or ``/`` is not an error to libpq but a
different host (``omejdn:p@ss@db`` is user ``omejdn``, password ``p``, host
``ss@db``), so half the password would travel to DNS and into every later
message. Such a URL is refused before libpq sees it, and no message made here
ever quotes the user info: the password cannot be masked reliably once it has
been split in the wrong place. libpq's own message for a URL it could not
parse quotes the token it choked on, so when that token is in the user info
the message is replaced by one that says so, without it.

The trade-off: the check refuses a database name with an unencoded ``@``
(legal in a URI path, but never seen in practice) with the same hint, since it
cannot be told apart from a password with an ``@`` and a ``/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import make_conninfo

from omejdn_pg.errors import ConfigurationError, first_line

MASK: Final = "********"
DEFAULT_CONNECT_TIMEOUT: Final = 10
"""Seconds a connection may take to be established unless the settings say otherwise:
libpq's own default is to wait for ever on a server that accepts and never answers."""


@dataclass(frozen=True)
class ConnectionSettings:
    """libpq connection keywords, passed to psycopg unchanged.

    An empty mapping is valid: libpq then takes everything from ``PG*``
    environment variables, a service file or its compiled-in defaults.
    """

    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # libpq expands a dbname that is itself a URI or key=value string; do it
        # here, so that a password inside it is known, masked and scrubbed too.
        dbname = self.params.get("dbname", "")
        if "=" in dbname or dbname.startswith(("postgres://", "postgresql://")):
            try:
                expanded = psycopg.conninfo.conninfo_to_dict(dbname)
            except psycopg.ProgrammingError as exc:
                raise ConfigurationError("invalid connection string given as dbname") from exc
            params = {k: v for k, v in self.params.items() if k != "dbname"}
            params.update({k: str(v) for k, v in expanded.items() if v is not None})
            object.__setattr__(self, "params", params)

    def __repr__(self) -> str:
        shown = {k: (MASK if k == "password" else v) for k, v in self.params.items()}
        return f"ConnectionSettings({shown!r})"

    __str__ = __repr__

    @property
    def password(self) -> str | None:
        return self.params.get("password") or os.environ.get("PGPASSWORD") or None

    def describe(self) -> str:
        """``user@host:port/dbname`` as libpq would resolve it, for messages."""
        host = self.params.get("host") or self.params.get("hostaddr") or os.environ.get("PGHOST")
        port = self.params.get("port") or os.environ.get("PGPORT") or "5432"
        dbname = self.params.get("dbname") or os.environ.get("PGDATABASE")
        user = self.params.get("user") or os.environ.get("PGUSER")
        service = self.params.get("service") or os.environ.get("PGSERVICE")
        where = f"{host or 'localhost'}:{port}/{dbname or user or '(default)'}"
        who = f"{user}@" if user else ""
        return f"service {service} ({who}{where})" if service else who + where

    def scrub(self, text: str) -> str:
        """``text`` with the connection password, if it occurs, masked."""
        secret = self.password
        return text.replace(secret, MASK) if secret else text

    def connect_params(self) -> dict[str, str]:
        """The keywords a connection is made with: ``params`` plus the default
        ``connect_timeout`` when neither they, ``PGCONNECT_TIMEOUT`` nor a service
        (whose file may set one, and would be overridden) give one."""
        params = dict(self.params)
        chosen = ("connect_timeout", "service")
        if not any(params.get(key) for key in chosen) and not any(
            os.environ.get(name) for name in ("PGCONNECT_TIMEOUT", "PGSERVICE")
        ):
            params["connect_timeout"] = str(DEFAULT_CONNECT_TIMEOUT)
        return params

    def conninfo(self) -> str:
        return make_conninfo(**self.connect_params())

    @classmethod
    def from_url(cls, url: str) -> ConnectionSettings:
        """Settings from a connection URL as users write it, or a libpq ``key=value`` string;
        see :func:`parse_url` for the forms and the errors."""
        return cls(parse_url(url))

    def with_params(self, **params: str) -> ConnectionSettings:
        return ConnectionSettings({**self.params, **params})


def parse_connection(value: object, where: str) -> ConnectionSettings:
    if value is None:
        return ConnectionSettings()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a mapping of libpq keywords (host, dbname, ...)")
    params: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, bool) or not isinstance(item, str | int):
            raise ConfigurationError(
                f"{where}.{key} must be a string or a number, got {type(item).__name__}"
            )
        params[key] = str(item)
    for key in params:
        try:
            make_conninfo(**{key: params[key]})
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"{where}: {key!r} is not a libpq connection keyword "
                "(see the PostgreSQL manual, 'Parameter Key Words')"
            ) from exc
    return ConnectionSettings(params)


def inherit_connection(
    base: ConnectionSettings, node: ConnectionSettings, *, read_write: bool = False
) -> ConnectionSettings:
    """``node``'s libpq keywords over ``base``'s: another server, same database and role.

    A node that names ``host`` or ``hostaddr`` takes neither from ``base``; one
    that names neither takes base's (a replica on another port of the same
    machine). ``port`` is inherited unless the node names it. A multi-host
    list (``a,b``) is never inherited: it cannot describe one other server.
    ``target_session_attrs`` is inherited only when ``read_write`` (a standby
    would otherwise be refused as not read-write).
    """
    params = dict(base.params)
    if "host" in node.params or "hostaddr" in node.params:
        params.pop("host", None)
        params.pop("hostaddr", None)
    for key in ("host", "hostaddr", "port"):
        if "," in params.get(key, ""):
            params.pop(key)
    if not read_write:
        params.pop("target_session_attrs", None)
    params.update(node.params)
    return ConnectionSettings(params)


SCHEMES: Final = ("postgresql", "postgres")
DRIVERS: Final = ("psycopg", "psycopg2", "psycopg2cffi")
"""SQLAlchemy's driver names for libpq-based PostgreSQL drivers: the URL means the same."""
SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
FORMS: Final = (
    "expected postgresql://user@host:5432/dbname (also postgres://, postgresql+psycopg://) "
    "or key=value pairs such as 'host=db dbname=omejdn'"
)
ENCODE_HINT: Final = (
    "percent-encode them in the user name and password ('@' as %40, '/' as %2F, ':' as %3A), "
    "or leave the password out of the URL and set PGPASSWORD or use ~/.pgpass"
)


def parse_url(url: str) -> dict[str, str]:
    """libpq keywords of a URL or ``key=value`` string; ConfigurationError when malformed.

    libpq's ``postgresql://`` and ``postgres://`` URIs, SQLAlchemy's
    ``postgresql+psycopg://`` and ``postgresql+psycopg2://`` (the driver part
    is dropped: connections always go through psycopg) and ``key=value``
    pairs are accepted. A malformed one raises ConfigurationError saying what
    is wrong (``invalid port 'abc'``, ``unknown scheme 'mysql'``) and never
    quoting a password or any part of a URL's user info.
    """
    text = url.strip()
    scheme, rest = split_scheme(text)
    if scheme is not None:
        text = "postgresql://" + rest
        problem = _scheme_problem(scheme) or _userinfo_problem(rest)
        hidden = url_passwords(rest)
    else:
        problem = _keyword_pairs(text)[1]
        hidden = keyword_passwords(text)
    if problem is None:
        try:
            parsed = psycopg.conninfo.conninfo_to_dict(text)
        except psycopg.ProgrammingError as exc:
            problem = _libpq_problem(text, rest if scheme is not None else None, exc, hidden)
            raise ConfigurationError(f"invalid PostgreSQL connection URL: {problem}") from exc
        params = {k: str(v) for k, v in parsed.items() if v is not None}
        problem = value_problem(params)
        if problem is None:
            return params
    raise ConfigurationError(f"invalid PostgreSQL connection URL: {problem}")


def split_scheme(text: str) -> tuple[str | None, str]:
    """``(scheme, rest after '://')`` of a URL, or ``(None, text)`` for anything else."""
    head, sep, rest = text.partition("://")
    if sep and head and head[0].isalpha() and all(c.isalnum() or c in "+.-" for c in head):
        return head, rest
    return None, text


def _scheme_problem(scheme: str) -> str | None:
    base, plus, driver = scheme.lower().partition("+")
    if base not in SCHEMES:
        return f"unknown scheme {scheme!r} ({FORMS})"
    if plus and driver not in DRIVERS:
        return (
            f"unknown driver {driver!r} in scheme {scheme!r} "
            f"(known: {', '.join(DRIVERS)}; connections go through psycopg anyway)"
        )
    return None


def _userinfo(rest: str) -> str | None:
    """The user info of a URL (``rest`` after ``://``) up to its last ``@`` before the query.

    The last ``@``, not the first, and across ``/``: libpq stops at the first,
    which is exactly how an unencoded ``@`` in a password becomes a host.
    """
    head = rest.split("?", 1)[0]
    userinfo, at, _ = head.rpartition("@")
    return userinfo if at else None


def _userinfo_problem(rest: str) -> str | None:
    userinfo = _userinfo(rest)
    if userinfo is None:
        return None
    if "@" in userinfo or "/" in userinfo:
        # Never quote it: where the password ends is exactly what is unclear.
        return f"the user info (before the host) holds an unencoded '@' or '/'; {ENCODE_HINT}"
    return None


def _libpq_problem(
    text: str, rest: str | None, error: psycopg.ProgrammingError, hidden: list[str]
) -> str:
    """libpq's reason for refusing ``text``, told without any part of a URL's user info.

    libpq quotes the token it could not parse. Rather than masking the user
    info's parts wherever they occur (a one-letter password would mask every
    such letter of the message), the URL is parsed again with its user info
    replaced: if that parses, the fault is in the user info, said without it.
    """
    userinfo = _userinfo(rest) if rest is not None else None
    if userinfo:
        redacted = "postgresql://user@" + rest[len(userinfo) + 1 :]  # type: ignore[index]
        try:
            psycopg.conninfo.conninfo_to_dict(redacted)
        except psycopg.ProgrammingError as again:
            error = again
        else:
            return f"the user info (before the host) is malformed; {ENCODE_HINT}"
    return mask_all(first_line(str(error)), [*hidden, *map(unquote, hidden)])


def url_passwords(rest: str) -> list[str]:
    """The password of a URL's user info and ``password=`` query values, as written."""
    found = []
    userinfo = _userinfo(rest)
    if userinfo is not None and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    query = rest.partition("?")[2]
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if eq and key == "password":
            found.append(value)
    return [secret for secret in found if secret]


def keyword_passwords(text: str) -> list[str]:
    """``password`` values of a ``key=value`` string, quoted or not, as written."""
    found = []
    for word, value in _keyword_pairs(text)[0]:
        if word == "password" and value:
            found.append(value)
    return found


def _keyword_pairs(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """libpq's ``key=value`` tokens (values as written) and the first problem, if any.

    Problems never quote a value: after ``password=`` a stray word may be the
    rest of an unquoted password with a space in it.
    """
    pairs: list[tuple[str, str]] = []
    index, length = 0, len(text)
    while True:
        while index < length and text[index].isspace():
            index += 1
        if index >= length:
            return pairs, None
        start = index
        while index < length and text[index] != "=" and not text[index].isspace():
            index += 1
        word = text[start:index]
        while index < length and text[index].isspace():
            index += 1
        if index >= length or text[index] != "=":
            if pairs and pairs[-1][0] == "password":
                return pairs, "a word without '=' after the password (quote a value with spaces)"
            return pairs, f"missing '=' after {word!r} ({FORMS})"
        index += 1
        while index < length and text[index].isspace():
            index += 1
        start = index
        if index < length and text[index] == "'":
            index += 1
            while index < length and text[index] != "'":
                index += 2 if text[index] == "\\" else 1
            if index >= length:
                return pairs, f"unterminated quoted value of {word!r}"
            index += 1
        else:
            while index < length and not text[index].isspace():
                index += 2 if text[index] == "\\" else 1
        pairs.append((word, text[start:index]))


def value_problem(params: Mapping[str, str]) -> str | None:
    """What libpq would refuse only when connecting, said before any connection."""
    for port in params.get("port", "").split(","):
        port = port.strip()
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            return f"invalid port {port!r} (expected a number from 1 to 65535)"
    timeout = params.get("connect_timeout", "").strip()
    if timeout and not timeout.lstrip("-").isdigit():
        return f"invalid connect_timeout {timeout!r} (expected a number of seconds)"
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSL_MODES:
        return f"invalid sslmode {sslmode!r} (allowed: {', '.join(SSL_MODES)})"
    for host in params.get("host", "").split(","):
        if "@" in host:
            # A key=value string or a dbname that was itself a URL: no user info to blame.
            return f"a host name cannot hold '@'; {ENCODE_HINT}"
    return None


def mask_all(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
