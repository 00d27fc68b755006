"""The hot writes' statements, sent on the driver connection of their transaction.

A write runs in a transaction that SQLAlchemy begins and ends
(:meth:`~omejdn_pg.postgres.database.unit_of_work.Database.write`), but the
statements of the events Omejdn fires most — a user's or client's update, a
password change, a configuration section, the change announcement — go
straight to psycopg on that transaction's connection, compiled once
(:func:`~omejdn_pg.postgres.database.readpool.compiled`) and prepared by the
driver, as the point reads are. Through ``Connection.execute`` each statement
paid SQLAlchemy's execution path (a cache-key walk, an execution context, a
result object): about as much as the round trip itself, three to eight times
per write. What SQLAlchemy did around the statement is kept: the engine's
``before_cursor_execute`` and ``after_cursor_execute`` listeners see every
statement (with no execution context), a driver error
leaves wrapped as SQLAlchemy's (``.orig`` is psycopg's), and a connection
that broke or whose node turned read-only (SQLSTATE 25006) is invalidated
with every pooled connection made before it, so
:meth:`~omejdn_pg.postgres.database.unit_of_work.Database.write` runs the
operation once more on a fresh one. Statements whose SQL depends on their
values (an expanding ``IN`` list) and bulk writes stay on ``Connection.execute``.

Round trips are what a write costs most, so none is spent waiting for an
answer that nothing needs yet: statements that do not depend on each other's
answers go out :func:`together` (psycopg's pipeline mode). A user's update is
three round trips (``BEGIN``, its three statements, ``COMMIT``) where the
statements one by one take five.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from sqlalchemy import Connection, exc
from sqlalchemy.sql.base import Executable

from omejdn_pg.postgres.database.errors import READ_ONLY_STATE
from omejdn_pg.postgres.database.failover import ReadOnlyGuard
from omejdn_pg.postgres.database.readpool import CompiledRead, compiled


def execute(
    conn: Connection, statement: Executable, params: Mapping[str, Any] | None = None
) -> psycopg.Cursor[Any]:
    """Run ``statement`` in ``conn``'s transaction (begun if none is); its cursor, rows
    as named tuples."""
    prepared = compiled(statement)
    return _run(conn, prepared, prepared.values(params), many=False)


def execute_many(
    conn: Connection, statement: Executable, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Run ``statement`` once per row in ``conn``'s transaction, in one pipeline."""
    prepared = compiled(statement)
    _run(conn, prepared, [prepared.values(row) for row in rows], many=True)


PIPELINES: Final = psycopg.Pipeline.is_supported()
"""Whether the driver's libpq has pipeline mode (14 and newer); without it
:func:`together` sends the statements one by one, as they come."""


@contextmanager
def together(conn: Connection) -> Iterator[None]:
    """The statements run inside go out without waiting for each other's answers.

    :func:`execute` inside queues its statement and returns its cursor at
    once; the end of the block sends what is queued and waits for every
    answer, after which the cursors hold their rows. Read them after the
    block: a read inside waits for the server there, and the end of the block
    waits once more. A failed statement's error leaves from the end of the
    block, as :func:`execute`'s would, and nothing queued after it runs. Only
    this module's statements belong inside: SQLAlchemy's ``Connection.execute``
    looks at a result's columns before any answer has arrived.
    """
    if not PIPELINES:
        yield
        return
    if not conn.in_transaction():
        conn.begin()
    driver = _driver(conn)
    try:
        with driver.pipeline():
            yield
    except psycopg.Error as error:
        raise _failure(conn, driver, None, error) from error


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    return conn.connection.driver_connection  # type: ignore[return-value]


def _run(
    conn: Connection, prepared: CompiledRead, values: Any, *, many: bool
) -> psycopg.Cursor[Any]:
    if not conn.in_transaction():
        conn.begin()
    driver = _driver(conn)
    cursor = driver.cursor(row_factory=prepared.row_factory)
    # The engine's listeners: the package registers none on a single connection, and
    # the connection's joined dispatcher costs a lookup object per access.
    dispatch = conn.engine.dispatch
    if dispatch.before_cursor_execute:
        dispatch.before_cursor_execute(conn, cursor, prepared.sql, values, None, many)
    try:
        if many:
            cursor.executemany(prepared.sql, values)
        else:
            cursor.execute(prepared.sql, values)
    except psycopg.Error as error:
        raise _failure(conn, driver, prepared.sql, error) from error
    if dispatch.after_cursor_execute:
        dispatch.after_cursor_execute(conn, cursor, prepared.sql, values, None, many)
    return cursor


def _failure(
    conn: Connection, driver: psycopg.Connection[Any], sql: str | None, error: psycopg.Error
) -> exc.StatementError:
    """``error`` as SQLAlchemy's, the connection invalidated if it is lost or read-only."""
    lost = driver.broken or driver.closed or error.sqlstate == READ_ONLY_STATE
    if lost:
        ReadOnlyGuard.install(conn.engine).connection_lost(
            read_only=error.sqlstate == READ_ONLY_STATE
        )
        conn.invalidate(error)
    return exc.DBAPIError.instance(
        sql,
        None,
        error,
        psycopg.Error,
        hide_parameters=True,
        connection_invalidated=lost,
    )
