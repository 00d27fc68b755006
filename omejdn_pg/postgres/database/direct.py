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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def _run(
    conn: Connection, prepared: CompiledRead, values: Any, *, many: bool
) -> psycopg.Cursor[Any]:
    if not conn.in_transaction():
        conn.begin()
    driver: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
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
        lost = driver.broken or driver.closed or error.sqlstate == READ_ONLY_STATE
        if lost:
            ReadOnlyGuard.install(conn.engine).connection_lost(
                read_only=error.sqlstate == READ_ONLY_STATE
            )
            conn.invalidate(error)
        raise exc.DBAPIError.instance(
            prepared.sql,
            None,
            error,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=lost,
        ) from error
    if dispatch.after_cursor_execute:
        dispatch.after_cursor_execute(conn, cursor, prepared.sql, values, None, many)
    return cursor
