"""The floor: the package's own SQL, replayed on raw psycopg as fast as it can go.

What an event costs beyond its SQL is the package's to remove, so the floor of
an event is that SQL sent the plain way: the statements the package sent for
it — captured from the engine with SQLAlchemy's ``before_cursor_execute``
while the event runs, text and bound values alike — executed on one
persistent psycopg connection, each prepared on the server (``prepare=True``),
every row fetched. Reads run in autocommit as the package's do; a write's
statements run inside one transaction (``BEGIN`` … ``COMMIT``), one round trip
each, as a program that waits for every answer sends them. The package sends
a write's independent statements together (psycopg's pipeline mode,
``omejdn_pg.postgres.database.direct.together``): the round trips it saves
are its gain over this floor. Because it is captured at run time, the floor
follows the code: a change of SQL changes both sides.

The trade-off: a replay repeats the bound values of the captured call. Point
reads are rotated over many keys by substituting the key in the captured
values (:meth:`Statement.substitute`), which is exact for statements that bind
the key as a value; writes replay one steady-state call, which is what a
repeated write of the same object costs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import Connection, Engine, event

from omejdn_pg.postgres.database.engine import connect_arguments
from omejdn_pg.settings.connection import ConnectionSettings


@dataclass(frozen=True)
class Statement:
    """One statement as the package handed it to the driver."""

    sql: str
    params: Any
    many: bool = False

    def substitute(self, old: object, new: object) -> Statement:
        """The statement with every bound value equal to ``old`` replaced by ``new``."""
        return Statement(self.sql, _substitute(self.params, old, new), self.many)


def _substitute(params: Any, old: object, new: object) -> Any:
    if isinstance(params, dict):
        return {key: new if value == old else value for key, value in params.items()}
    if isinstance(params, list | tuple):
        return type(params)(
            _substitute(item, old, new)
            if isinstance(item, dict | list | tuple)
            else (new if item == old else item)
            for item in params
        )
    return params


@contextmanager
def recording(engine: Engine) -> Iterator[list[Statement]]:
    """Every statement ``engine`` sends inside the block, in order."""
    statements: list[Statement] = []

    def record(
        _conn: object,
        _cursor: object,
        statement: str,
        parameters: Any,
        _context: object,
        executemany: bool,
    ) -> None:
        statements.append(Statement(statement, parameters, executemany))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def capture(engine: Engine, operation: Callable[[], object]) -> list[Statement]:
    """The statements one call of ``operation`` sends through ``engine``."""
    with recording(engine) as statements:
        operation()
    return list(statements)


def round_trips(
    operation: Callable[[], object],
    engine: Engine | None = None,
    connection: psycopg.Connection[Any] | None = None,
) -> int:
    """How often one call of ``operation`` waits for the server: the Sync and simple
    Query messages libpq sends (its protocol trace) on ``connection`` and on every
    connection of ``engine`` that a statement of the call goes out on."""
    with tempfile.TemporaryFile() as trace:
        traced: list[Any] = []

        def follow(pgconn: Any) -> None:
            if pgconn not in traced:
                pgconn.trace(trace.fileno())
                pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
                traced.append(pgconn)

        def on_statement(conn: object, *_: object) -> None:
            # The first statement's event comes before its BEGIN is sent.
            if isinstance(conn, Connection):
                follow(conn.connection.driver_connection.pgconn)  # type: ignore[union-attr]

        if connection is not None:
            follow(connection.pgconn)
        if engine is not None:
            event.listen(engine, "before_cursor_execute", on_statement)
        try:
            operation()
        finally:
            if engine is not None:
                event.remove(engine, "before_cursor_execute", on_statement)
            for pgconn in traced:
                pgconn.untrace()
        trace.seek(0)
        lines = trace.read().decode("utf-8", "replace").splitlines()
    sent = [line.split("\t")[2].strip() for line in lines if line.startswith("F\t")]
    return sent.count("Sync") + sent.count("Query")


class Floor:
    """Raw psycopg on one persistent autocommit connection."""

    def __init__(self, settings: ConnectionSettings) -> None:
        # Connected as the package connects (its startup options), so that a
        # replayed write costs what the package's does, triggers included.
        self.conn = psycopg.connect(**connect_arguments(settings), autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def execute(self, statements: Sequence[Statement]) -> list[list[tuple[Any, ...]]]:
        """Run ``statements`` in order; the rows of each (empty for those returning none)."""
        results: list[list[tuple[Any, ...]]] = []
        for statement in statements:
            if statement.many:
                with self.conn.cursor() as cur:
                    cur.executemany(statement.sql, statement.params)
                results.append([])
                continue
            cur = self.conn.execute(statement.sql, statement.params, prepare=True)
            results.append(cur.fetchall() if cur.description is not None else [])
        return results

    def read(self, statements: Sequence[Statement]) -> Callable[[], object]:
        """A call that sends ``statements`` outside any transaction, as the package's reads do."""
        fixed = tuple(statements)
        return lambda: self.execute(fixed)

    def write(self, statements: Sequence[Statement]) -> Callable[[], object]:
        """A call that sends ``statements`` inside one transaction and commits."""
        fixed = tuple(statements)

        def run() -> object:
            with self.conn.transaction():
                return self.execute(fixed)

        return run
