"""The primary's read path: autocommit driver connections that run precompiled reads.

Every point read an identity server makes (a client per token request, a user
per login, the signing keys, a configuration section) is one short statement,
so what surrounds that statement is most of its cost. Through SQLAlchemy a
read checks a connection out of the engine's pool (with its events), switches
it to AUTOCOMMIT and back, and walks the execution path: together 2 to 4 times the
round trip itself on a local server. Here a read takes an idle psycopg
connection that is *always* in autocommit (so nothing is switched and nothing
but the statement is sent), runs SQL compiled once per statement, prepared on
the server from its first execution, and hands the rows back as named tuples.

Why not SQLAlchemy's pool with an AUTOCOMMIT engine, or ``psycopg_pool``:
measured on one statement against a local server, SQLAlchemy's checkout costs
~35 µs a read and psycopg_pool's ~20 µs of CPU (its bookkeeping and worker
threads); a LIFO list under a lock costs ~1 µs. The pool keeps SQLAlchemy's
rules: ``pool.size`` idle connections at most, ``max_overflow`` more while
busy, ``timeout`` to wait for one, ``recycle`` to replace old ones; it is made
lazily, so a process that reads from one thread holds one read connection.

The failure rules are the engine pool's too. A connection that broke is
discarded with every idle one older than it (a restart or a failover broke
them all), and the caller retries on a fresh one; a connection whose node
reported itself read-only (:func:`~omejdn_pg.postgres.database.failover.reports_read_only`)
is discarded with every other one made before, as the engine's
:class:`~omejdn_pg.postgres.database.failover.ReadOnlyGuard` does, sharing its clock.

A standby that serves reads has a pool of its own (``standby``): there a
read-only node is what is expected, and whether the standby may serve at all
is the router's decision, not the pool's. Reads inside a batch or a snapshot
stay on SQLAlchemy connections
(:class:`~omejdn_pg.postgres.repositories.common.ConnectionReader`): they join a
transaction, where none of this applies.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import psycopg
from psycopg.rows import RowMaker, namedtuple_row, tuple_row
from sqlalchemy import exc
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from omejdn_pg.postgres.database.startup import StartupSettings
from omejdn_pg.settings.backend import PoolSettings

DIALECT: Final = PGDialect_psycopg()  # type: ignore[no-untyped-call]
"""The dialect every statement of the package is compiled for."""


class CompiledRead:
    """A statement compiled once to the driver's SQL, with its constant bound values.

    Values the driver cannot take as they are (a JSON document) go through the
    dialect's bind processors, as SQLAlchemy's execution would pass them.
    """

    __slots__ = ("_make_row", "constants", "processors", "required", "sql")

    def __init__(self, statement: Executable) -> None:
        if not isinstance(statement, ClauseElement):
            raise TypeError(f"not a SQL statement: {statement!r}")
        compiled = statement.compile(dialect=DIALECT)
        assert isinstance(compiled, SQLCompiler)
        if "POSTCOMPILE" in compiled.string:
            # An expanding IN list: its SQL is only known with its values.
            raise TypeError("a statement with an expanding IN list cannot be compiled once")
        processors = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(DIALECT).bind_processor(DIALECT)
            if processor is not None:
                processors[name] = processor
        self.sql: Final = compiled.string
        self.processors: Final = processors
        self.constants: Final = {
            name: processors[name](value) if name in processors else value
            for name, value in compiled.params.items()
        }
        self.required: Final = frozenset(
            name for name in self.constants if compiled.binds[name].required
        )
        self._make_row: RowMaker[Any] | None = None

    def values(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        given = params or {}
        missing = self.required - given.keys()
        if missing:
            raise TypeError(f"no value for {', '.join(sorted(missing))}")
        values = {**self.constants, **given}
        for name, processor in self.processors.items():
            if name in given:
                values[name] = processor(given[name])
        return values

    def row_factory(self, cursor: psycopg.Cursor[Any]) -> RowMaker[Any]:
        """Named tuples, their class made once: a statement always has the same columns."""
        make_row = self._make_row
        if make_row is None:
            make_row = namedtuple_row(cursor)
            if cursor.pgresult is not None and cursor.pgresult.nfields:
                self._make_row = make_row
        return make_row


STREAM_CHUNK: Final = 100
"""Rows per chunk of a streamed listing: small enough that the first chunk arrives early,
and that little is left to turn into objects once the server has sent the last row
(CLIENT_GET_ALL of 1,000 clients against its floor: 1.4-1.8x at 500 rows a chunk,
1.1-1.3x at 100). A chunk costs some 20 us, which a long listing spends while the server
computes the next rows."""
CHUNKED_ROWS: Final = psycopg.pq.version() >= 170000
"""Whether this libpq can hand rows over in chunks (``PQsetChunkedRowsMode``, libpq 17)."""

_compiled: dict[Executable, CompiledRead | TypeError] = {}
_MAX_COMPILED: Final = 4096
"""Statements per table name (configuration sections) are many; the rest are fixed."""


def node_read_only(pgconn: psycopg.pq.abc.PGconn) -> bool:
    """Whether the server last reported itself read-only on this connection (no round trip).

    PostgreSQL 14+ sends ``in_hot_standby`` and ``default_transaction_read_only``
    at startup and again after any statement during which they changed (a
    promotion, a primary fenced by ``ALTER SYSTEM ... ; pg_reload_conf()``).
    Older servers send neither; for them a refused write (25006) is the signal.
    """
    return (
        pgconn.parameter_status(b"in_hot_standby") == b"on"
        or pgconn.parameter_status(b"default_transaction_read_only") == b"on"
    )


def compiled(statement: Executable) -> CompiledRead:
    """``statement`` compiled once; TypeError for one that cannot be (asked again, at once)."""
    found = _compiled.get(statement)
    if found is None:
        if len(_compiled) >= _MAX_COMPILED:
            _compiled.clear()
        try:
            found = _compiled[statement] = CompiledRead(statement)
        except TypeError as refusal:
            _compiled[statement] = refusal
            raise
    if isinstance(found, TypeError):
        raise TypeError(*found.args)
    return found


class StatementListener(Protocol):
    def __call__(
        self,
        conn: None,
        cursor: psycopg.Cursor[Any],
        statement: str,
        parameters: Mapping[str, Any],
        context: None,
        executemany: bool,
    ) -> object: ...


class DirectReader:
    """Runs reads on one autocommit driver connection (a :class:`ReadPool`'s)."""

    __slots__ = ("conn", "listeners", "per_transaction")

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        listeners: StatementListener | None,
        per_transaction: bytes = b"",
    ) -> None:
        self.conn = conn
        self.listeners = listeners
        self.per_transaction = per_transaction
        """Settings a pooler refused at startup (:mod:`~omejdn_pg.postgres.database.startup`): then
        each read runs in a transaction that sets them first."""

    def rows(
        self,
        statement: Executable,
        params: Mapping[str, Any] | None = None,
        *,
        may_fail: bool = False,
    ) -> Sequence[Any]:
        """Every row of ``statement`` as named tuples.

        A driver error comes back as SQLAlchemy's wrapper of it (``.orig`` is
        psycopg's), as on a SQLAlchemy connection, so callers handle one kind.
        ``may_fail`` needs no savepoint here: no transaction is open.
        """
        read = compiled(statement)
        values = read.values(params)
        try:
            cursor = self.conn.cursor(row_factory=read.row_factory)
            if self.listeners is not None:
                self.listeners(None, cursor, read.sql, values, None, False)
            if not self.per_transaction:
                cursor.execute(read.sql, values)
                return cursor.fetchall()
            # One round trip still: the four statements go out as one pipeline.
            with self.conn.pipeline():
                self.conn.execute(b"BEGIN")
                self.conn.execute(self.per_transaction)
                cursor.execute(read.sql, values)
                self.conn.execute(b"COMMIT")
            return cursor.fetchall()
        except psycopg.Error as error:
            self._end_transaction()
            raise self._wrapped(read, error) from error

    def stream(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Iterator[Any]:
        """The rows of ``statement``, as plain tuples, in chunks of :data:`STREAM_CHUNK`
        as the server sends them.

        A long listing's rows are then turned into objects here while the server
        still computes the rest of them. The statement is not prepared (chunked
        rows cannot be); it is sent once per listing, not once per row. With a
        libpq older than 17 (no chunked rows) the rows come all at once.
        """
        read = compiled(statement)
        values = read.values(params)
        try:
            cursor = self.conn.cursor(row_factory=tuple_row)
            if self.listeners is not None:
                self.listeners(None, cursor, read.sql, values, None, False)
            if self.per_transaction:
                with self.conn.pipeline():
                    self.conn.execute(b"BEGIN")
                    self.conn.execute(self.per_transaction)
            if not CHUNKED_ROWS:
                cursor.execute(read.sql, values)
                yield from cursor.fetchall()
            else:
                yield from cursor.stream(read.sql, values, size=STREAM_CHUNK)
            if self.per_transaction:
                self.conn.execute(b"COMMIT")
        except psycopg.Error as error:
            self._end_transaction()
            raise self._wrapped(read, error) from error
        finally:
            if self.per_transaction:
                self._end_transaction()

    def _end_transaction(self) -> None:
        """Roll back a transaction a failed or abandoned read left open (none: nothing sent)."""
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()

    def _wrapped(self, read: CompiledRead, error: psycopg.Error) -> exc.StatementError:
        return exc.DBAPIError.instance(
            read.sql,
            None,
            error,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=bool(self.conn.broken or self.conn.closed),
        )


@dataclass
class _Pooled:
    conn: psycopg.Connection[Any]
    connected: float


class ReadPool:
    """Autocommit psycopg connections for reads, newest first."""

    def __init__(
        self,
        connect_args: Mapping[str, Any],
        pool: PoolSettings,
        *,
        prepare: bool | None,
        behind_pooler: Callable[[psycopg.Connection[Any]], bool],
        read_only_since: Callable[[], float],
        found_read_only: Callable[[], None],
        standby: bool = False,
        startup: StartupSettings | None = None,
    ) -> None:
        self._connect_args = dict(connect_args)
        self.startup = startup or StartupSettings(connect_args)
        self._standby = standby
        """A standby's pool: read-only is what its node is, not a reason to discard."""
        self._size = pool.size
        self._limit = pool.size + pool.max_overflow
        self._timeout = pool.timeout
        self._recycle = pool.recycle
        self._prepare = prepare
        self._behind_pooler = behind_pooler
        self._read_only_since = read_only_since
        self._found_read_only = found_read_only
        self._idle: list[_Pooled] = []
        self._open = 0
        """Connections made and not yet closed, idle or checked out."""
        self._broken_since = float("-inf")
        self._available = threading.Condition(threading.Lock())
        self.discarded = 0

    def __repr__(self) -> str:
        return f"ReadPool(open={self._open}, idle={len(self._idle)})"

    def checkout(self) -> _Pooled:
        """An idle connection still fit to use, or a new one; waits ``pool.timeout`` at most."""
        stale: list[_Pooled] = []
        try:
            with self._available:
                deadline: float | None = None
                while True:
                    while self._idle:
                        pooled = self._idle.pop()
                        if self._fit(pooled):
                            return pooled
                        stale.append(pooled)
                        self._open -= 1
                    if self._open < self._limit:
                        self._open += 1
                        break
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self._timeout
                    if now >= deadline or not self._available.wait(deadline - now):
                        raise exc.TimeoutError(
                            f"no free read connection within {self._timeout:g} s"
                        )
        finally:
            self._close(stale)
        try:
            return _Pooled(self._connect(), time.monotonic())
        except BaseException:
            with self._available:
                self._open -= 1
                self._available.notify()
            raise

    def checkin(self, pooled: _Pooled) -> None:
        """Back to the idle list, or closed: broken, read-only, in a transaction, or overflow."""
        pgconn = pooled.conn.pgconn
        if (
            pgconn.status == psycopg.pq.ConnStatus.OK
            and pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            and (self._standby or not node_read_only(pgconn))
        ):
            with self._available:
                if len(self._idle) < self._size:
                    self._idle.append(pooled)
                    self._available.notify()
                    return
                self._open -= 1
                self._available.notify()
            self._close([pooled])
            return
        self._discard(pooled)

    def _discard(self, pooled: _Pooled) -> None:
        """Close ``pooled`` and every idle connection that shares its fate."""
        conn = pooled.conn
        if conn.broken or conn.closed:
            with self._available:
                # A restart or a failover breaks every connection made before it.
                self._broken_since = time.monotonic()
        elif not self._standby and node_read_only(conn.pgconn):
            # Every connection made so far points at that node.
            self._found_read_only()
        with self._available:
            stale = [pooled, *(idle for idle in self._idle if not self._fit(idle))]
            self._idle = [idle for idle in self._idle if self._fit(idle)]
            self._open -= len(stale)
            self._available.notify_all()
        self._close(stale)

    def dispose(self) -> None:
        """Close every idle connection; checked-out ones are closed when they come back."""
        with self._available:
            stale, self._idle = self._idle, []
            self._open -= len(stale)
            self._broken_since = time.monotonic()
        self._close(stale)

    def _fit(self, pooled: _Pooled) -> bool:
        connected = pooled.connected
        if connected <= self._broken_since or connected <= self._read_only_since():
            return False
        if time.monotonic() - connected > self._recycle:
            return False
        return not pooled.conn.closed

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = self.startup.connect(
                psycopg.connect,
                {**self._connect_args, "autocommit": True, "row_factory": namedtuple_row},
            )
        except psycopg.Error as error:
            raise exc.DBAPIError.instance(
                "connect", None, error, psycopg.Error, hide_parameters=True
            ) from error
        # Prepared from the first execution: these statements are the hot ones.
        # Behind a pooler that cannot keep them (PgBouncer before 1.21), never.
        prepare = self._prepare if self._prepare is not None else not self._behind_pooler(conn)
        conn.prepare_threshold = 0 if prepare else None
        return conn

    def _close(self, stale: list[_Pooled]) -> None:
        for pooled in stale:
            self.discarded += 1
            with contextlib.suppress(psycopg.Error):  # already gone: that is all we wanted
                pooled.conn.close()
