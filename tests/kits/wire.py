"""What libpq sends and receives while an operation runs: round trips and transaction
control counted on the wire, not trusted from SQLAlchemy's events."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from psycopg import pq
from sqlalchemy import Connection, event, select

from omejdn_pg.postgres.database.unit_of_work import Database

T = TypeVar("T")


def _start_trace(pgconn: Any, fileno: int) -> None:
    pgconn.trace(fileno)
    pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)


@dataclass
class Wire:
    """What libpq sent and received while an operation ran."""

    lines: list[str]

    @property
    def sent(self) -> list[str]:
        return [line.split("\t")[2].strip() for line in self.lines if line.startswith("F\t")]

    @property
    def round_trips(self) -> int:
        # Extended protocol ends each request with Sync; the simple protocol
        # (which psycopg uses for BEGIN/COMMIT/ROLLBACK) sends one Query.
        return self.sent.count("Sync") + self.sent.count("Query")

    @property
    def transaction_control(self) -> list[str]:
        words = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "START TRANSACTION")
        return [
            line
            for line in self.lines
            if line.startswith("F\t") and any(w in line.upper() for w in words)
        ]

    @property
    def final_status(self) -> str:
        ready = [line for line in self.lines if "\tReadyForQuery" in line]
        return ready[-1].split()[-1]


def traced_read(db: Database, operation: Callable[[Connection], T]) -> tuple[T, Wire]:
    """Run ``operation`` through ``db.read`` with the connection's protocol traced,
    including what the pool does when the connection goes back."""
    return _traced(db.read, operation)


def traced_write(db: Database, operation: Callable[[Connection], T]) -> tuple[T, Wire]:
    """Run ``operation`` through ``db.write`` with the connection's protocol traced, from
    the transaction's ``BEGIN`` (sent before its first statement) to its ``COMMIT``."""
    return _traced(db.write, operation)


def _traced(
    run_on: Callable[[Callable[[Connection], T]], T], operation: Callable[[Connection], T]
) -> tuple[T, Wire]:
    with tempfile.TemporaryFile() as trace:
        traced: list[Any] = []

        def run(conn: Connection) -> T:
            pgconn = conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
            _start_trace(pgconn, trace.fileno())
            traced.append(pgconn)
            return operation(conn)

        try:
            result = run_on(run)
        finally:
            for pgconn in traced:
                pgconn.untrace()
        trace.seek(0)
        return result, Wire(trace.read().decode("utf-8", "replace").splitlines())


@contextmanager
def _wire_trace(db: Database) -> Iterator[list[str]]:
    """The frontend messages libpq sends while the block runs, on the pool's one connection."""
    messages: list[str] = []
    with tempfile.TemporaryFile() as trace:
        db.read(lambda conn: _start_trace(conn.connection.driver_connection.pgconn, trace.fileno()))
        try:
            yield messages
        finally:
            db.read(lambda conn: conn.connection.driver_connection.pgconn.untrace())
            trace.seek(0)
            for line in trace.read().decode("utf-8", "replace").splitlines():
                fields = line.split("\t")
                if fields[0] == "F":
                    messages.append(" ".join(fields[2:]))


def assert_point_read(db: Database, operation: Callable[[Connection], T]) -> T:
    """Run ``operation`` through ``db.read`` and assert it is one statement, one round
    trip, and no BEGIN/COMMIT/ROLLBACK/SAVEPOINT reaches the server.

    SQLAlchemy fires its ``begin``/``rollback`` events for every connection use,
    AUTOCOMMIT included, where the driver sends nothing; so the events are
    checked to have happened only in autocommit mode, and the libpq trace
    confirms what actually went over the wire.
    """
    # Warm the pool: the dialect's first-connect queries must not be counted,
    # and the traced connection must be the one the read gets.
    db.read(lambda conn: conn.execute(select(1)).scalar())
    assert db.engine.pool.checkedin() == 1  # type: ignore[attr-defined]

    seen: list[tuple[str, Any]] = []

    def recorder(name: str) -> Callable[..., None]:
        def record(conn: Connection, *args: Any, **kwargs: Any) -> None:
            autocommit = conn.connection.driver_connection.autocommit  # type: ignore[union-attr]
            seen.append((name, autocommit if name != "before_cursor_execute" else args[1]))

        return record

    listeners = [
        (name, recorder(name)) for name in ("before_cursor_execute", "begin", "commit", "rollback")
    ]
    for name, listener in listeners:
        event.listen(db.engine, name, listener)
    try:
        with _wire_trace(db) as wire:
            result = db.read(operation)
    finally:
        for name, listener in listeners:
            event.remove(db.engine, name, listener)

    statements = [detail for name, detail in seen if name == "before_cursor_execute"]
    assert len(statements) == 1, statements
    assert not [name for name, _ in seen if name == "commit"], seen
    assert all(autocommit for name, autocommit in seen if name in ("begin", "rollback")), seen
    round_trips = [m for m in wire if m.startswith(("Query", "Sync"))]
    assert len(round_trips) == 1, wire
    control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
    assert not [m for m in wire if any(word in m.upper() for word in control)], wire
    return result
