"""What every repository shares: JSON columns of either type, write locks, and the
:class:`Reader` its reads run on (value checks are :mod:`omejdn_pg.json_values`, which
the file store uses too).

Columns created by Omejdn's Ruby plugin hold JSON as TEXT; ours are JSONB. A
read casts the column (``CAST(col AS jsonb)`` accepts both), and a write binds
a jsonb value, which PostgreSQL assigns to a TEXT column through its text form.
So one statement serves both layouts and a shared database stays readable by
both servers.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

from sqlalchemy import ColumnElement, Connection, Text, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.base import Executable

from omejdn_pg.entities import User
from omejdn_pg.postgres.database.direct import execute
from omejdn_pg.settings.backend import BACKEND_NAME

log = logging.getLogger(__name__)

LOCK_NAMESPACE: Final = "omejdn_pg"
EXTERN_TRUE: Final = "true"
"""How ``extern: true`` (an external user without a named issuer) is kept in the TEXT column."""
"""The dialect statements are compiled for when they bypass an engine."""


class Reader(Protocol):
    """Where a repository's reads run: a SQLAlchemy connection (:class:`ConnectionReader`),
    or the primary's direct read path (:class:`~omejdn_pg.postgres.database.readpool.DirectReader`).

    Rows come back with their columns as attributes; a driver error is raised as
    SQLAlchemy's wrapper of it (``error.orig`` is psycopg's) on either.
    """

    def rows(
        self,
        statement: Executable,
        params: Mapping[str, Any] | None = None,
        *,
        may_fail: bool = False,
    ) -> Sequence[Any]:
        """Every row of ``statement``. ``may_fail``: a failure is expected now and then
        (a table that does not exist) and must not abort an enclosing transaction."""
        ...

    def stream(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Iterator[Any]:
        """The rows of ``statement`` (indexed by column position) in the order the server
        sends them, for a caller that turns each into an object: where the driver can,
        the first rows arrive while the server still computes the rest, so both work
        at once."""
        ...


class ConnectionReader:
    """Reads on a SQLAlchemy connection, inside whatever transaction it has."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def rows(
        self,
        statement: Executable,
        params: Mapping[str, Any] | None = None,
        *,
        may_fail: bool = False,
    ) -> Sequence[Any]:
        if may_fail and not in_autocommit(self.conn):
            # A failed statement would abort the caller's transaction.
            with self.conn.begin_nested():
                return self.conn.execute(statement, params).all()
        try:
            return execute(self.conn, statement, params).fetchall()
        except TypeError:  # not compiled once (an expanding IN list): SQLAlchemy's way
            return self.conn.execute(statement, params).all()

    def stream(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Iterator[Any]:
        # Batches, snapshots and replicas are not the hot path: rows come buffered.
        return iter(self.conn.execute(statement, params))


DECODED_TOGETHER: Final = 100
"""Rows whose JSON columns :func:`with_documents` parses in one call: the direct read
path's chunk (:data:`~omejdn_pg.postgres.database.readpool.STREAM_CHUNK`), so that each
chunk is parsed as soon as it arrives, while the server computes the next."""


def with_documents(
    rows: Iterator[Sequence[Any]], first: int, kind: str = "row"
) -> Iterator[tuple[Sequence[Any], tuple[Any, ...]]]:
    """Each row with its columns from ``first`` on, JSON text, parsed (NULL: None).

    A listing's documents are parsed :data:`DECODED_TOGETHER` rows at a time, as
    one JSON array: the parser's fixed cost per call is most of what a user's or
    a client's few fields cost. The server made every text (``json_object_agg``,
    ``CAST(jsonb AS text)``), so each is one JSON value and the array is valid.

    A row Python cannot read (another writer stored JSON nested thousands deep,
    or an integer of more than 4,300 digits, which this package's writes refuse)
    is left out and named in a warning (``kind`` and its first column); the
    listing goes on, so that one row cannot make every listing fail.
    """
    while chunk := list(itertools.islice(rows, DECODED_TOGETHER)):
        texts = [text or "null" for row in chunk for text in row[first:]]
        try:
            parsed = iter(json.loads(f"[{','.join(texts)}]"))
        except (RecursionError, ValueError):
            for row in chunk:
                found = read_documents(row[first:], kind, row[0])
                if found is not None:
                    yield row, found
            continue
        # The one iterator, once per column: each row's documents, in order.
        documents = zip(*[parsed] * (len(chunk[0]) - first), strict=True)
        yield from zip(chunk, documents, strict=True)


def read_documents(texts: Sequence[str | None], kind: str, name: object) -> tuple[Any, ...] | None:
    """One row's JSON texts parsed (NULL: None); None, with a warning naming the row, if
    Python cannot read them."""
    try:
        return tuple(json.loads(text) if text is not None else None for text in texts)
    except RecursionError:
        reason = "its JSON is nested too deep for Python"
    except ValueError as error:
        digits = "digits" in str(error)
        reason = "it holds an integer of more than 4,300 digits" if digits else "not JSON"
    log.warning(
        "%s %r left out: %s (written by another writer: this package refuses such "
        "values); correct or delete it with SQL",
        kind,
        name,
        reason,
    )
    return None


def read_extern(stored: str | None) -> str | bool | None:
    """A user's ``extern`` as Omejdn has it: an issuer, True, or None."""
    return True if stored == EXTERN_TRUE else stored


def user_from_row(row: Any) -> User:
    """A user from a row of the users' read (username, password, extern, consent and the
    attributes folded into one object); shared by point reads and listings."""
    return User(
        username=row.username,
        password=row.password,
        attributes=dict(row.attributes or {}),
        extern=read_extern(row.extern),
        consent=dict(row.consent or {}),
        backend=BACKEND_NAME,
    )


def in_autocommit(conn: Connection) -> bool:
    """Whether every statement on ``conn`` is its own transaction (``Database.read``)."""
    return bool(getattr(conn.connection.driver_connection, "autocommit", False))


def json_column(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``column`` read as jsonb, whether it is stored as JSONB or as JSON text."""
    return cast(column, JSONB)


def lock_for_update(conn: Connection, kind: str, identifier: str) -> None:
    """Serialize writers of one user/client/section until this transaction ends.

    A transaction-scoped advisory lock rather than row locks, because the
    object may not exist yet (creates race too) and a client or section is
    many rows. Keys hash into 64 bits; a collision only serializes two
    unrelated writers, it never lets two writers of the same object through.
    """
    execute(conn, _LOCK, {"lock_key": f"{LOCK_NAMESPACE}:{kind}:{identifier}"})


_LOCK: Final = select(
    func.pg_advisory_xact_lock(func.hashtextextended(bindparam("lock_key", type_=Text), 0))
)


def dumps(value: object) -> str:
    """Compact JSON as Omejdn writes it: raw UTF-8, no spaces, ``/`` unescaped."""
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_plain
    )


def _plain(value: object) -> object:
    """Mappings other than dict, which check_json accepts and json.dumps does not."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
