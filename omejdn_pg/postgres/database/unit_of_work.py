"""The unit of work: how every operation meets PostgreSQL, and what is retried when.

Two ways in, because reads and writes want different things:

* :meth:`Database.read` runs on an AUTOCOMMIT connection. A point read is one
  statement and one round trip — no BEGIN before it, no ROLLBACK after — and
  psycopg prepares it on the server after a few executions. There is no ping
  on checkout either; instead a read that meets a dead pooled connection
  (server restart, failover) is retried at once on a fresh one, which is safe
  because a read has no effect to repeat. If the server that answered before
  is gone (a failover in progress, a restart), the read keeps trying with
  backoff for ``failover.read_wait``, then fails with StorageUnavailable.
* :meth:`Database.write` runs in one transaction that commits only if the
  whole operation returns. A connection found dead before COMMIT was sent
  (a pooled connection that died while idle, a server restart, a failover)
  cannot have committed anything, so the whole operation is run once more on
  a fresh connection. A connection lost *during* COMMIT is different: the
  commit may or may not have landed, so that is reported as
  StorageUnavailable saying the outcome is unknown, never retried. A
  serialization failure or a deadlock (SQLSTATE 40001, 40P01) rolled the
  whole transaction back, so it is retried a few times with a short jittered
  backoff. Either way the database guarantees nothing half-written. Writes
  never wait for a failover: with no writable primary they fail at once.
* :meth:`Database.batch` lets many operations (say, an import of thousands of
  users fired as one event each) share one transaction: inside it, reads and
  writes of the same thread join the batch, which commits whole or not at all.

A read or write that meets a failover is handled by
:mod:`~omejdn_pg.postgres.database.failover`, one served by a standby by
:mod:`~omejdn_pg.postgres.database.replicas`; every driver error leaves here
translated (:mod:`~omejdn_pg.postgres.database.errors`).
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from sqlalchemy import Connection, Engine, RootTransaction, exc

from omejdn_pg.errors import InvalidValue, StorageUnavailable
from omejdn_pg.postgres.database.engine import behind_pooler, build_engine, connect_arguments
from omejdn_pg.postgres.database.errors import (
    MAX_CONFLICT_RETRIES,
    RETRYABLE_STATES,
    connection_lost,
    sqlstate,
    translating,
)
from omejdn_pg.postgres.database.failover import ReadOnlyGuard, ReadWait
from omejdn_pg.postgres.database.readpool import DirectReader, ReadPool
from omejdn_pg.postgres.database.replicas import (
    Replica,
    ReplicaRouter,
    commit_reporting_lsn,
    follow_topology,
    standby,
)
from omejdn_pg.postgres.database.startup import StartupSettings
from omejdn_pg.postgres.patroni import PatroniWatch
from omejdn_pg.postgres.repositories.common import ConnectionReader, Reader
from omejdn_pg.postgres.topology import format_lsn, parse_lsn
from omejdn_pg.settings.backend import (
    BackendSettings,
    FailoverSettings,
    PoolSettings,
    ReplicaSettings,
    TimeoutSettings,
    TopologySettings,
)
from omejdn_pg.settings.connection import ConnectionSettings

T = TypeVar("T")
log = logging.getLogger(__name__)


class Database:
    """One engine plus the rules for using it; built by the plugin's ``init``."""

    def __init__(
        self,
        engine: Engine,
        connection: ConnectionSettings | None = None,
        *,
        replicas: Sequence[Replica] = (),
        max_replica_lag: datetime.timedelta = ReplicaSettings.max_lag,
        failover: FailoverSettings | None = None,
        direct_reads: ReadPool | None = None,
        routed: bool = False,
    ) -> None:
        self.engine = engine
        self.connection = connection or ConnectionSettings()
        self.read_only_guard = ReadOnlyGuard.install(engine)
        self.direct_reads = direct_reads
        """The primary's read pool for :meth:`query`; None: those reads use the engine."""
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._batch: ContextVar[Connection | None] = ContextVar(f"batch-{id(self)}", default=None)
        self.failover = failover or FailoverSettings()
        self.read_wait = ReadWait(self.connection, self.failover)
        # Routed with no replica yet: the cluster's topology brings them (``follow``).
        self.router = ReplicaRouter(replicas, max_replica_lag) if replicas or routed else None
        self.patroni: PatroniWatch | None = None

    @classmethod
    def connect(
        cls,
        connection: ConnectionSettings,
        pool: PoolSettings | None = None,
        timeouts: TimeoutSettings | None = None,
        *,
        replicas: ReplicaSettings | None = None,
        failover: FailoverSettings | None = None,
        prepare: bool | None = None,
        topology: TopologySettings | None = None,
    ) -> Database:
        def replica(node: ConnectionSettings) -> Replica:
            return standby(node, pool, timeouts, prepare)

        static = replicas.connections(connection) if replicas is not None else ()
        nodes = [replica(node) for node in static]
        startup = StartupSettings(connect_arguments(connection, timeouts))
        engine = build_engine(connection, pool, timeouts, prepare=prepare, startup=startup)
        guard = ReadOnlyGuard.install(engine)
        direct_reads = ReadPool(
            connect_arguments(connection, timeouts, prepare=prepare),
            pool or PoolSettings(),
            prepare=prepare,
            behind_pooler=behind_pooler,
            read_only_since=lambda: guard.since,
            found_read_only=guard.found_read_only,
            startup=startup,
        )
        database = cls(
            engine,
            connection,
            replicas=nodes,
            max_replica_lag=replicas.max_lag if replicas is not None else ReplicaSettings.max_lag,
            failover=failover,
            direct_reads=direct_reads,
            routed=topology is not None,
        )
        if topology is not None:
            database.follow(topology, replica)
        return database

    @classmethod
    def for_backend(cls, settings: BackendSettings) -> Database:
        """The plugin's database: its connection, pool, timeouts, replicas and failover."""
        return cls.connect(
            settings.connection,
            settings.pool,
            settings.timeouts,
            replicas=settings.replicas,
            failover=settings.failover,
            prepare=settings.prepare,
            topology=settings.topology,
        )

    def __repr__(self) -> str:
        return f"Database({self.connection.describe()})"

    def follow(
        self, topology: TopologySettings, replica: Callable[[ConnectionSettings], Replica]
    ) -> None:
        """Take the replicas from Patroni's ``/cluster``, now and whenever they change."""
        assert self.router is not None
        self.patroni = follow_topology(self.router, self.connection, topology, replica)

    def dispose(self) -> None:
        if self.patroni is not None:
            self.patroni.stop()
        if self.direct_reads is not None:
            self.direct_reads.dispose()
        self.engine.dispose()
        for replica in self.router.replicas if self.router is not None else ():
            replica.dispose()

    # --- read-your-writes ---------------------------------------------------------

    def session_token(self) -> str | None:
        """The WAL position reads here must see: this scope's or this process's last commit.

        A host may hand it to its client and pass it back with the next
        request to :meth:`consistent_after`, so that a request served by
        another process still reads its own writes. None without replicas or
        before the first write.
        """
        if self.router is None:
            return None
        required = self.router.required()
        return format_lsn(required) if required else None

    @contextmanager
    def consistent_after(self, token: str | None = None) -> Iterator[None]:
        """A scope (say, one host request) whose reads see ``token`` and its own writes.

        Inside, a standby serves a read once it has replayed ``token`` (a
        :meth:`session_token`) and every commit made inside the scope —
        and no longer needs everything this process wrote in other requests.
        """
        if self.router is None:
            yield
            return
        required = 0
        if token:
            try:
                required = parse_lsn(token) or 0
            except ValueError:
                raise InvalidValue(f"not a session token: {token[:40]!r}") from None
        with self.router.scope(required):
            yield

    # --- the unit of work -----------------------------------------------------

    def read(self, operation: Callable[[Connection], T], *, on_primary: bool = False) -> T:
        """Run a read-only operation outside any transaction: on a standby that has
        this process's writes, else on the primary, riding out a failover.

        ``on_primary`` keeps it on the primary whatever the replicas have — for a
        read whose result is compared with something the primary said (a cache
        filled against a change counter heard from the primary).
        """
        batch = self._batch.get()
        if batch is not None:
            return self._in_batch(batch, operation)
        replica = self._replica(on_primary)
        if replica is not None:
            answered = self._on_replica(
                replica, lambda: self._on_connection(replica.autocommit, operation)
            )
            if answered:
                return answered[0]
        return self.read_wait.run(lambda: self._on_connection(self._autocommit, operation))

    def query(self, operation: Callable[[Reader], T], *, on_primary: bool = False) -> T:
        """:meth:`read` for an operation written against a :class:`Reader`: the hot path.

        On the primary it runs on the direct read path
        (:mod:`~omejdn_pg.postgres.database.readpool`): one of its autocommit
        connections, statements compiled once and prepared.
        In a batch or snapshot, and on a replica, it runs as :meth:`read` does.
        Its statements are announced to the engine's ``before_cursor_execute``
        listeners (with no SQLAlchemy connection or context), so whatever traces
        the engine sees every statement this Database sends.
        """
        batch = self._batch.get()
        if batch is not None:
            return self._in_batch(batch, lambda conn: operation(ConnectionReader(conn)))
        replica = self._replica(on_primary)
        if replica is not None:
            answered = self._on_replica(
                replica, lambda: self._reading(replica.direct_reads, replica.autocommit, operation)
            )
            if answered:
                return answered[0]
        return self.read_wait.run(
            lambda: self._reading(self.direct_reads, self._autocommit, operation)
        )

    def _reading(
        self, pool: ReadPool | None, engine: Engine, operation: Callable[[Reader], T]
    ) -> T:
        """``operation`` on one of ``pool``'s connections, or on ``engine``'s without a pool."""
        if pool is None:
            return self._on_connection(engine, lambda conn: operation(ConnectionReader(conn)))
        pooled = pool.checkout()
        try:
            listeners = self.engine.dispatch.before_cursor_execute
            reader = DirectReader(
                pooled.conn, listeners if listeners else None, pool.startup.per_transaction
            )
            return operation(reader)
        finally:
            pool.checkin(pooled)

    @property
    def in_unit_of_work(self) -> bool:
        """Whether this thread's reads join a batch or snapshot (a view that may never commit)."""
        return self._batch.get() is not None

    def _replica(self, on_primary: bool) -> Replica | None:
        router = self.router
        return router.choose() if router is not None and not on_primary else None

    def _on_replica(self, replica: Replica, attempt: Callable[[], T]) -> list[T]:
        """``[attempt()]`` if ``replica`` answered; ``[]``: ask the primary."""
        assert self.router is not None
        return self.router.serve(replica, attempt)

    @staticmethod
    def _on_connection(engine: Engine, operation: Callable[[Connection], T]) -> T:
        with engine.connect() as conn:
            return operation(conn)

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
        with translating(self.connection):
            while True:
                try:
                    with self._transaction() as conn:
                        result = operation(conn)
                    self.read_wait.answered = True
                    return result
                except exc.DBAPIError as error:
                    if connection_lost(error) and not reconnected:
                        reconnected = True
                        log.info("retrying a write on a fresh connection after a disconnect")
                        continue
                    if sqlstate(error) in RETRYABLE_STATES and conflicts < MAX_CONFLICT_RETRIES:
                        conflicts += 1
                        time.sleep(random.uniform(0.005, 0.02) * 2**conflicts)  # noqa: S311
                        continue
                    raise

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction on a fresh checkout, untranslated: what :meth:`write` retries.

        A connection lost during COMMIT is not retried (the commit may have
        landed): that is StorageUnavailable saying the outcome is unknown.
        """
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                yield conn
            except BaseException:
                if transaction.is_active:
                    transaction.rollback()
                raise
            try:
                self._commit(conn, transaction)
            except exc.DBAPIError as error:
                if connection_lost(error):
                    raise StorageUnavailable(
                        f"the connection to {self.connection.describe()} was lost during "
                        "COMMIT: the outcome of the write is unknown; read before retrying"
                    ) from error
                raise

    def _commit(self, conn: Connection, transaction: RootTransaction) -> None:
        """COMMIT; with replicas, learn the commit's WAL position in the same round trip."""
        if self.router is None:
            transaction.commit()
            return
        lsn = commit_reporting_lsn(conn, transaction)
        if lsn is not None:
            self.router.wrote(lsn)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction that commits when the block ends normally and rolls back otherwise.

        Inside :meth:`batch` it is the batch's transaction, committed with the batch.
        """
        batch = self._batch.get()
        with translating(self.connection):
            if batch is not None:
                yield batch
                return
            with self._transaction() as conn:
                yield conn

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
        with translating(self.connection):
            return operation(conn)

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only REPEATABLE READ transaction: one consistent view for many reads.

        Reads of this thread inside the block join it, like a batch.
        """
        if self._batch.get() is not None:
            raise RuntimeError("a snapshot cannot start inside a batch or another snapshot")
        with (
            translating(self.connection),
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
