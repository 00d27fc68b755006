"""Engine construction and the unit of work: how every operation meets PostgreSQL.

Two ways in, because reads and writes want different things:

* :meth:`Database.read` runs on an AUTOCOMMIT connection. A point read is one
  statement and one round trip — no BEGIN before it, no ROLLBACK after — and
  psycopg prepares it on the server after a few executions. There is no ping
  on checkout either; instead a read that meets a dead pooled connection
  (server restart, failover) is retried once on a fresh one, which is safe
  because a read has no effect to repeat.
* :meth:`Database.write` runs in one transaction that commits only if the
  whole operation returns. A connection found dead before COMMIT was sent
  (a pooled connection that died while idle, a server restart, a failover)
  cannot have committed anything, so the whole operation is run once more on
  a fresh connection. A connection lost *during* COMMIT is different: the
  commit may or may not have landed, so that is reported as
  StorageUnavailable saying the outcome is unknown, never retried. A
  serialization failure or a deadlock (SQLSTATE 40001, 40P01) rolled the
  whole transaction back, so it is retried a few times with a short jittered
  backoff. Either way the database guarantees nothing half-written.
* :meth:`Database.batch` lets many operations (say, an import of thousands of
  users fired as one event each) share one transaction: inside it, reads and
  writes of the same thread join the batch, which commits whole or not at all.

Driver errors are translated here, once, into the package's own exceptions.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, exc

from omejdn_pg.errors import OmejdnPgError, SchemaOutOfDate, StorageError, StorageUnavailable
from omejdn_pg.postgres.schema import metadata
from omejdn_pg.settings import BackendSettings, ConnectionSettings, PoolSettings, TimeoutSettings

T = TypeVar("T")
log = logging.getLogger(__name__)

_SCHEMA_TABLES = frozenset(metadata.tables)


def build_engine(
    connection: ConnectionSettings,
    pool: PoolSettings | None = None,
    timeouts: TimeoutSettings | None = None,
) -> Engine:
    """An engine whose connections are made by psycopg from libpq keywords.

    The URL carries no host, user or password: everything goes through
    ``connect_args``, so nothing secret is in ``engine.url`` or its repr, and
    multi-host strings, service files and ``PG*`` variables work as in libpq.
    ``timeouts`` are appended to the connection's own ``options``.
    """
    pool = pool or PoolSettings()
    connect_args = dict(connection.params)
    if timeouts is not None:
        connect_args["options"] = " ".join(
            part for part in (connect_args.get("options", ""), timeouts.options()) if part
        )
    return create_engine(
        "postgresql+psycopg://",
        connect_args=connect_args,
        pool_size=pool.size,
        max_overflow=pool.max_overflow,
        pool_timeout=pool.timeout,
        pool_recycle=pool.recycle,
        pool_pre_ping=False,
        # Bound values include password hashes and key material: keep them
        # out of exception messages.
        hide_parameters=True,
    )


class Database:
    """One engine plus the rules for using it; built by the plugin's ``init``."""

    def __init__(self, engine: Engine, connection: ConnectionSettings | None = None) -> None:
        self.engine = engine
        self.connection = connection or ConnectionSettings()
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._batch: ContextVar[Connection | None] = ContextVar(f"batch-{id(self)}", default=None)

    @classmethod
    def connect(
        cls,
        connection: ConnectionSettings,
        pool: PoolSettings | None = None,
        timeouts: TimeoutSettings | None = None,
    ) -> Database:
        return cls(build_engine(connection, pool, timeouts), connection)

    @classmethod
    def for_backend(cls, settings: BackendSettings) -> Database:
        """The plugin's database: its connection, pool and timeouts."""
        return cls.connect(settings.connection, settings.pool, settings.timeouts)

    def __repr__(self) -> str:
        return f"Database({self.connection.describe()})"

    def dispose(self) -> None:
        self.engine.dispose()

    def read(self, operation: Callable[[Connection], T]) -> T:
        """Run a read-only operation outside any transaction, retried once on a dead connection."""
        batch = self._batch.get()
        if batch is not None:
            return self._in_batch(batch, operation)
        for attempt in (1, 2):
            try:
                with self._autocommit.connect() as conn:
                    return operation(conn)
            except exc.DBAPIError as error:
                if attempt == 1 and error.connection_invalidated:
                    log.info("retrying a read on a fresh connection after a disconnect")
                    continue
                raise self.translate(error) from error
            except OmejdnPgError:
                raise
            except exc.SQLAlchemyError as error:
                raise self.translate(error) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def write(self, operation: Callable[[Connection], T]) -> T:
        """Run ``operation`` in one transaction: all of it commits, or none of it.

        ``operation`` may run more than once (see the module docstring), so it
        must do nothing but database work on the connection it is given.
        """
        if self._batch.get() is not None:
            with self.transaction() as conn:
                return operation(conn)
        reconnected = False
        conflicts = 0
        while True:
            committing = False
            try:
                with self.engine.connect() as conn:
                    transaction = conn.begin()
                    try:
                        result = operation(conn)
                    except BaseException:
                        if transaction.is_active:
                            transaction.rollback()
                        raise
                    committing = True
                    transaction.commit()
                    return result
            except exc.DBAPIError as error:
                if committing and _connection_lost(error):
                    raise StorageUnavailable(
                        f"the connection to {self.connection.describe()} was lost during "
                        "COMMIT: the outcome of the write is unknown; read before retrying"
                    ) from error
                if not committing and _connection_lost(error) and not reconnected:
                    reconnected = True
                    log.info("retrying a write on a fresh connection after a disconnect")
                    continue
                if _sqlstate(error) in RETRYABLE_STATES and conflicts < MAX_CONFLICT_RETRIES:
                    conflicts += 1
                    time.sleep(random.uniform(0.005, 0.02) * 2**conflicts)  # noqa: S311
                    continue
                raise self.translate(error) from error
            except OmejdnPgError:
                raise
            except exc.SQLAlchemyError as error:
                raise self.translate(error) from error

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction that commits when the block ends normally and rolls back otherwise.

        Inside :meth:`batch` it is the batch's transaction, committed with the batch.
        """
        batch = self._batch.get()
        if batch is not None:
            try:
                yield batch
            except exc.SQLAlchemyError as error:
                raise self.translate(error) from error
            return
        try:
            with self.engine.begin() as conn:
                yield conn
        except OmejdnPgError:
            raise
        except exc.SQLAlchemyError as error:
            raise self.translate(error) from error

    @contextmanager
    def batch(self) -> Iterator[Connection]:
        """One transaction for every read and write of this thread inside the block."""
        if self._batch.get() is not None:
            raise RuntimeError("batches do not nest")
        with self.transaction() as conn:
            token = self._batch.set(conn)
            try:
                yield conn
            finally:
                self._batch.reset(token)

    def _in_batch(self, conn: Connection, operation: Callable[[Connection], T]) -> T:
        try:
            return operation(conn)
        except exc.SQLAlchemyError as error:
            raise self.translate(error) from error

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only REPEATABLE READ transaction: one consistent view for many reads.

        Reads of this thread inside the block join it, like a batch.
        """
        if self._batch.get() is not None:
            raise RuntimeError("a snapshot cannot start inside a batch or another snapshot")
        try:
            with (
                self.engine.connect().execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                ) as conn,
                conn.begin(),
            ):
                token = self._batch.set(conn)
                try:
                    yield conn
                finally:
                    self._batch.reset(token)
        except OmejdnPgError:
            raise
        except exc.SQLAlchemyError as error:
            raise self.translate(error) from error

    def translate(self, error: exc.SQLAlchemyError) -> StorageError:
        """The package's exception for a driver error, with no secret in its message."""
        where = self.connection.describe()
        original = getattr(error, "orig", None)
        if isinstance(original, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
            message = _first_line(str(original))
            if any(f'"{table}"' in message for table in _SCHEMA_TABLES):
                return SchemaOutOfDate(
                    f"the database {where} has no omejdn_pg schema or an old one ({message}); "
                    "run `omejdn-pg migrate`"
                )
        if isinstance(error, exc.DBAPIError) and (
            error.connection_invalidated or _is_unavailable(original)
        ):
            reason = _first_line(str(original)) if original is not None else "connection lost"
            return StorageUnavailable(
                f"PostgreSQL at {where} is unavailable: {self.connection.scrub(reason)}"
            )
        if isinstance(error, exc.TimeoutError):
            return StorageUnavailable(
                f"no free connection to {where} within the pool timeout; "
                "raise plugins.postgres_backend.pool.size or .timeout"
            )
        reason = _first_line(str(original if original is not None else error))
        return StorageError(f"database error at {where}: {self.connection.scrub(reason)}")


def count_statements(engine: Engine) -> list[str]:
    """Record every statement sent through ``engine`` (for tests and benchmarks)."""
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(*args: object) -> None:
        statements.append(str(args[2]))

    return statements


# SQLSTATEs meaning "the database cannot be used as configured", as opposed to
# a statement that failed (a timeout, a deadlock, a full disk are psycopg
# OperationalErrors too, but the server is there and the next call may work).
_UNAVAILABLE_CLASSES: Final = ("08", "28")
_UNAVAILABLE_STATES: Final = frozenset({"57P01", "57P02", "57P03", "53300", "3D000"})


RETRYABLE_STATES: Final = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected: the transaction was rolled back whole."""
MAX_CONFLICT_RETRIES: Final = 3


def _sqlstate(error: exc.DBAPIError) -> str | None:
    state = getattr(error.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _connection_lost(error: exc.DBAPIError) -> bool:
    """Whether the connection itself broke (not a statement that the server refused)."""
    if error.connection_invalidated:
        return True
    original = error.orig
    if isinstance(original, psycopg.OperationalError):
        state = original.sqlstate
        return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    return False


def _is_unavailable(original: object) -> bool:
    if isinstance(original, psycopg.InterfaceError):
        return True
    if not isinstance(original, psycopg.OperationalError):
        return False
    state = original.sqlstate
    # Failures to connect carry no SQLSTATE: libpq never reached a server that said one.
    return state is None or state.startswith(_UNAVAILABLE_CLASSES) or state in _UNAVAILABLE_STATES


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
