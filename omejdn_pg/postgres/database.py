"""Engine construction and the unit of work: how every operation meets PostgreSQL.

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

After a failover the old primary may still answer, read-only. A pooled
connection to it is never used again once it has said so: PostgreSQL (14+)
reports ``in_hot_standby`` and ``default_transaction_read_only`` to the client
whenever they change, so the pool's checkout sees it at no cost and discards
that connection and every older one; a write refused with SQLSTATE 25006
(read_only_sql_transaction) counts as a lost connection — discarded with the
whole pool and run once more on a fresh one, which libpq's
``target_session_attrs=read-write`` sends to the new primary.

With ``replicas:`` configured, point reads and GET_ALL may be served by a
streaming standby (:class:`ReplicaRouter`): only one that has replayed the last
commit of this process — or of the current :meth:`Database.consistent_after`
scope — and lags no more than ``max_replica_lag``. The commit's position is
read in the same message as the COMMIT itself (``COMMIT; SELECT
pg_current_wal_insert_lsn()``), so read-your-writes costs no round trip.
A standby answers point reads on a read pool of its own, as the primary does
(1.05x the primary's latency here; 1.9x through SQLAlchemy's connections).
With ``topology:`` the standbys are not listed but read from Patroni's REST
``/cluster`` in the background (:mod:`~omejdn_pg.postgres.patroni`); the
same rule decides each read, and writes never go by what REST says.
Writes, batches and snapshots always run on the primary.

Driver errors are translated here, once, into the package's own exceptions.
"""

from __future__ import annotations

import datetime
import getpass
import itertools
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, RootTransaction, create_engine, event, exc
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.pool import ConnectionPoolEntry

from omejdn_pg.errors import (
    InvalidValue,
    OmejdnPgError,
    SchemaOutOfDate,
    StorageError,
    StorageUnavailable,
    first_line,
)
from omejdn_pg.postgres.patroni import ClusterView, PatroniWatch
from omejdn_pg.postgres.readpool import DirectReader, ReadPool, node_read_only
from omejdn_pg.postgres.repositories.common import ConnectionReader, Reader
from omejdn_pg.postgres.schema import metadata
from omejdn_pg.postgres.startup import StartupSettings
from omejdn_pg.postgres.topology import STANDBY_STATE, format_lsn, parse_lsn
from omejdn_pg.settings import (
    BackendSettings,
    ConnectionSettings,
    FailoverSettings,
    PoolSettings,
    ReplicaSettings,
    TimeoutSettings,
    TopologySettings,
    inherit_connection,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

_SCHEMA_TABLES = frozenset(metadata.tables)


def build_engine(
    connection: ConnectionSettings,
    pool: PoolSettings | None = None,
    timeouts: TimeoutSettings | None = None,
    *,
    prepare: bool | None = None,
    startup: StartupSettings | None = None,
) -> Engine:
    """An engine whose connections are made by psycopg from libpq keywords.

    The URL carries no host, user or password: everything goes through
    ``connect_args``, so nothing secret is in ``engine.url`` or its repr, and
    multi-host strings, service files and ``PG*`` variables work as in libpq.
    ``timeouts`` are appended to the connection's own ``options``.

    ``prepare``: True keeps psycopg's server-side prepared statements, False
    turns them off, None (``auto``) turns them off on each connection that
    :func:`behind_pooler` finds is not talking to PostgreSQL directly.
    """
    pool = pool or PoolSettings()
    connect_args = connect_arguments(connection, timeouts, prepare=prepare)
    engine = create_engine(
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
    if prepare is None:
        event.listen(engine, "connect", _no_prepares_behind_a_pooler)
    startup = startup or StartupSettings(connect_args)
    event.listen(
        engine,
        "do_connect",
        lambda dialect, _record, cargs, cparams: startup.connect(
            lambda **kwargs: dialect.connect(*cargs, **kwargs), cparams
        ),
    )
    event.listen(engine, "begin", lambda conn: _set_per_transaction(conn, startup))
    return engine


def _set_per_transaction(conn: Connection, startup: StartupSettings) -> None:
    """Behind a pooler that refused the startup options: set them in this transaction."""
    statement = startup.per_transaction
    if not statement:
        return
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    if driver.autocommit:
        # An AUTOCOMMIT read gets a transaction of its own, ended by the rollback
        # SQLAlchemy sends when the connection goes back to the pool.
        driver.execute(b"BEGIN")
    driver.execute(statement)


def connect_arguments(
    connection: ConnectionSettings,
    timeouts: TimeoutSettings | None = None,
    *,
    prepare: bool | None = None,
) -> dict[str, Any]:
    """What ``psycopg.connect`` is called with, for the engine and the read pool alike."""
    connect_args: dict[str, Any] = connection.connect_params()
    connect_args["options"] = " ".join(
        part
        for part in (
            connect_args.get("options", ""),
            timeouts.options() if timeouts is not None else "",
        )
        if part
    )
    if prepare is False:
        connect_args["prepare_threshold"] = None
    return connect_args


def behind_pooler(dbapi_connection: psycopg.Connection[Any]) -> bool:
    """Whether a connection reaches PostgreSQL through a pooler such as PgBouncer.

    A server sends its backend's process id at startup (BackendKeyData) and
    ``pg_backend_pid()`` returns the same number; a pooler answers the startup
    itself with a made-up key, so the two differ. Through transaction pooling
    the query may land on any server connection — still not the made-up one.
    PgBouncer has no query a client could ask instead (``SHOW VERSION`` exists
    only on its admin console), and parameters such as ``server_version`` are
    the server's own, passed through. One round trip, once per new connection.
    """
    reported = dbapi_connection.info.backend_pid
    idle = dbapi_connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    autocommit = dbapi_connection.autocommit
    if idle:
        # No BEGIN before the probe, no ROLLBACK after it: one round trip.
        dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            row = cursor.execute(b"SELECT pg_backend_pid()", prepare=False).fetchone()
    finally:
        if idle:
            dbapi_connection.autocommit = autocommit
    return row is None or row[0] != reported


def _no_prepares_behind_a_pooler(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # PgBouncer before 1.21 cannot keep a prepared statement: in transaction
    # pooling it was made on one server connection and is missing on the next.
    if behind_pooler(dbapi_connection):
        dbapi_connection.prepare_threshold = None
        record.info["behind_pooler"] = True


def reports_read_only(dbapi_connection: Any) -> bool:
    """Whether the server last reported itself read-only on this connection (no round trip);
    see :func:`~omejdn_pg.postgres.readpool.node_read_only`."""
    return not dbapi_connection.closed and node_read_only(dbapi_connection.pgconn)


class ReadOnlyGuard:
    """The primary pool's rule: no connection to a node that turned read-only is used again.

    When a connection comes back to the pool having heard its node turn
    read-only (:func:`reports_read_only`), every connection made before that
    moment points at the same node: each is discarded at its next checkout
    (SQLAlchemy's ``InvalidatePoolError``) and replaced by a fresh one, which
    libpq's ``target_session_attrs=read-write`` sends to the new primary. A
    connection just made is used as it is — libpq chose its node, and without
    ``target_session_attrs`` that node is the best there is; a write refused
    there (25006) counts as a lost connection, so write() runs it once more
    on a fresh connection and then reports the node read-only.
    """

    _installed: ClassVar[weakref.WeakKeyDictionary[Engine, ReadOnlyGuard]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.since = float("-inf")
        """``time.monotonic()`` when a node was last found read-only."""
        self.discarded = 0

    @classmethod
    def install(cls, engine: Engine) -> ReadOnlyGuard:
        """The guard of ``engine``'s pool, installed on first use."""
        guard = cls._installed.get(engine)
        if guard is None:
            guard = cls._installed[engine] = cls()
            event.listen(engine, "connect", guard.connected)
            event.listen(engine, "checkin", guard.checked_in)
            event.listen(engine, "checkout", guard.checked_out)
            event.listen(engine, "handle_error", _read_only_is_a_lost_connection)
        return guard

    def found_read_only(self) -> None:
        """A connection (of any pool sharing this guard) heard its node turn read-only."""
        self.since = time.monotonic()
        self.discarded += 1
        log.info("discarding the connections to a node that became read-only")

    def connected(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["connected"] = time.monotonic()
        record.info["fresh"] = True

    def checked_in(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None and reports_read_only(dbapi_connection):
            self.since = time.monotonic()

    def checked_out(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        if record.info.pop("fresh", False):
            return
        if record.info.get("connected", float("-inf")) <= self.since or reports_read_only(
            dbapi_connection
        ):
            self.since = max(self.since, time.monotonic())
            self.discarded += 1
            log.info("discarding a pooled connection to a node that became read-only")
            raise exc.InvalidatePoolError("the node of this pooled connection became read-only")


def _read_only_is_a_lost_connection(context: ExceptionContext) -> None:
    # 25006: the node takes no writes (a standby, or a fenced old primary).
    # As a disconnect, SQLAlchemy discards this connection and the whole pool,
    # and write() runs the operation once more on a fresh connection.
    if getattr(context.original_exception, "sqlstate", None) == READ_ONLY_STATE:
        context.is_disconnect = True


# --- read replicas -----------------------------------------------------------------


class Replica:
    """One standby that may serve reads, with what was last observed of it.

    Observations (:data:`~omejdn_pg.postgres.topology.STANDBY_STATE`: one
    statement) are made by the reading thread itself when the last one is too
    old to decide — no background thread, so nothing to stop and nothing to
    break across a fork. Replay positions only grow, so a standby once seen
    at or past a commit stays past it.
    """

    def __init__(
        self, connection: ConnectionSettings, engine: Engine, direct_reads: ReadPool | None = None
    ) -> None:
        self.connection = connection
        self.engine = engine
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.direct_reads = direct_reads
        """The standby's read pool for :meth:`Database.query`; None: those reads use the engine."""
        self.name = connection.describe()
        self.standby = False
        self.replay_lsn = 0
        self.lag: float | None = None
        """Seconds behind, as observed; None when unknown."""
        self.observed = float("-inf")
        """``time.monotonic()`` of the last observation."""
        self.down_until = 0.0
        self.failures = 0
        self._observing = threading.Lock()

    def __repr__(self) -> str:
        return f"Replica({self.name}, lsn={format_lsn(self.replay_lsn)}, lag={self.lag})"

    def usable(self, required: int, max_lag: float, now: float) -> bool:
        """Serves a read needing ``required``: replayed it, and surely within ``max_lag``.

        Lag grows at most as fast as time passes, so the lag observed plus the
        observation's age bounds the lag now.
        """
        return (
            self.standby
            and self.lag is not None
            and self.lag + (now - self.observed) <= max_lag
            and self.replay_lsn >= required
        )

    def observe(self) -> bool:
        """Observe again (one statement); False if another thread is at it, or it failed."""
        if not self._observing.acquire(blocking=False):
            return False
        try:
            with self.autocommit.connect() as conn:
                row = conn.exec_driver_sql(STANDBY_STATE).one()
            in_recovery, replay, lag = row
            self.standby = bool(in_recovery)
            self.replay_lsn = max(self.replay_lsn, parse_lsn(replay) or 0)
            self.lag = None if lag is None else float(lag)
            self.observed = time.monotonic()
            self.failures = 0
            return True
        except exc.SQLAlchemyError as error:
            self.failed(error)
            return False
        finally:
            self._observing.release()

    def failed(self, error: BaseException) -> None:
        """Skip this standby for a while (1 s, doubling to 30 s) after it failed to answer."""
        self.failures += 1
        pause = min(REPLICA_RETRY_MAX, REPLICA_RETRY_FIRST * 2 ** (self.failures - 1))
        self.down_until = time.monotonic() + pause
        self.standby = False
        log.info("replica %s skipped for %.0f s: %s", self.name, pause, first_line(str(error)))


@dataclass
class _Scope:
    lsn: int


class ReplicaRouter:
    """Chooses, for each read, a standby that has it — or none (the primary serves it).

    Read-your-writes: a read needs the standby to have replayed the last
    commit this process made, or inside :meth:`Database.consistent_after`, the
    last commit of that scope (and the position it started from).
    """

    def __init__(self, replicas: Sequence[Replica], max_lag: datetime.timedelta) -> None:
        self.replicas = tuple(replicas)
        self.max_lag = max_lag.total_seconds()
        self._written = 0
        self._lock = threading.Lock()
        self._scope: ContextVar[_Scope | None] = ContextVar(f"scope-{id(self)}", default=None)
        self._turn = itertools.count()
        self.served: dict[str, int] = {replica.name: 0 for replica in self.replicas}

    def wrote(self, lsn: int) -> None:
        with self._lock:
            self._written = max(self._written, lsn)
        scope = self._scope.get()
        if scope is not None:
            scope.lsn = max(scope.lsn, lsn)

    @property
    def written(self) -> int:
        """The highest commit position this process has written (0: nothing yet)."""
        return self._written

    def required(self) -> int:
        scope = self._scope.get()
        return scope.lsn if scope is not None else self._written

    def choose(self) -> Replica | None:
        required = self.required()
        now = time.monotonic()
        start = next(self._turn)
        replicas = self.replicas  # one list throughout: the topology may replace it
        count = len(replicas)
        for offset in range(count):
            replica = replicas[(start + offset) % count]
            if replica.down_until > now:
                continue
            if replica.usable(required, self.max_lag, now):
                return replica
            if (
                now - replica.observed >= REPLICA_POLL_INTERVAL
                and replica.observe()
                and replica.usable(required, self.max_lag, time.monotonic())
            ):
                return replica
        return None

    def count(self, replica: Replica) -> None:
        with self._lock:
            self.served[replica.name] = self.served.get(replica.name, 0) + 1

    def replace(self, replicas: Sequence[Replica]) -> None:
        """Serve from ``replicas`` from now on (the cluster's topology changed)."""
        with self._lock:
            self.replicas = tuple(replicas)
            for replica in replicas:
                self.served.setdefault(replica.name, 0)

    @contextmanager
    def scope(self, lsn: int) -> Iterator[None]:
        token = self._scope.set(_Scope(lsn))
        try:
            yield
        finally:
            self._scope.reset(token)


def _dispose_replica(replica: Replica) -> None:
    if replica.direct_reads is not None:
        replica.direct_reads.dispose()
    replica.engine.dispose()


def _bounded_connect(node: ConnectionSettings) -> ConnectionSettings:
    """A replica's connection with a ``connect_timeout`` (libpq's default is none).

    A standby is an option, not a necessity: a read must not hang for minutes
    on one that went silent when the primary would have answered at once.
    """
    if "connect_timeout" in node.params:
        return node
    return node.with_params(connect_timeout=str(REPLICA_CONNECT_TIMEOUT))


# --- the database ------------------------------------------------------------------


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
        # Routed with no replica yet: the cluster's topology brings them (``follow``).
        self.router = ReplicaRouter(replicas, max_replica_lag) if replicas or routed else None
        self.patroni: PatroniWatch | None = None
        self._answered = False

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
            node = _bounded_connect(node)
            node_startup = StartupSettings(connect_arguments(node, timeouts))
            return Replica(
                node,
                build_engine(node, pool, timeouts, prepare=prepare, startup=node_startup),
                ReadPool(
                    connect_arguments(node, timeouts, prepare=prepare),
                    pool or PoolSettings(),
                    prepare=prepare,
                    behind_pooler=behind_pooler,
                    read_only_since=lambda: float("-inf"),
                    found_read_only=lambda: None,
                    standby=True,
                    startup=node_startup,
                ),
            )

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
        """Take the replicas from Patroni's ``/cluster``, now and whenever they change.

        Members keep their Replica (and what was observed of it) while they stay;
        new ones get a fresh one; those gone are dropped and their connections closed.
        """
        router = self.router
        assert router is not None

        def changed(view: ClusterView) -> None:
            wanted = [
                inherit_connection(self.connection, ConnectionSettings(m.connection_params()))
                for m in view.replicas
            ]
            kept = {r.connection.describe(): r for r in router.replicas}
            chosen = []
            for node in wanted:
                same = kept.pop(_bounded_connect(node).describe(), None)
                chosen.append(same if same is not None else replica(node))
            router.replace(chosen)
            for gone in kept.values():
                _dispose_replica(gone)

        self.patroni = PatroniWatch(topology, changed).start()

    def dispose(self) -> None:
        if self.patroni is not None:
            self.patroni.stop()
        if self.direct_reads is not None:
            self.direct_reads.dispose()
        self.engine.dispose()
        for replica in self.router.replicas if self.router is not None else ():
            _dispose_replica(replica)

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
        return self._read_primary(lambda: self._on_connection(self._autocommit, operation))

    def query(self, operation: Callable[[Reader], T], *, on_primary: bool = False) -> T:
        """:meth:`read` for an operation written against a :class:`Reader`: the hot path.

        On the primary it runs on the direct read path (:mod:`~omejdn_pg.postgres.readpool`):
        one of its autocommit connections, statements compiled once and prepared.
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
        return self._read_primary(
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
        try:
            result = attempt()
            self.router.count(replica)
            return [result]
        except OmejdnPgError:
            raise
        except exc.SQLAlchemyError as error:
            # Whatever went wrong there, the primary's answer is the authority.
            if isinstance(error, exc.DBAPIError) and (
                _connection_lost(error) or _is_unavailable(error.orig)
            ):
                replica.failed(error)
            log.info("a read failed on replica %s; asking the primary", replica.name)
            return []

    @staticmethod
    def _on_connection(engine: Engine, operation: Callable[[Connection], T]) -> T:
        with engine.connect() as conn:
            return operation(conn)

    def _read_primary(self, attempt: Callable[[], T]) -> T:
        deadline: float | None = None
        pause = READ_BACKOFF_FIRST
        for number in itertools.count(1):
            try:
                result = attempt()
                self._answered = True
                return result
            except exc.DBAPIError as error:
                if number == 1 and error.connection_invalidated:
                    log.info("retrying a read on a fresh connection after a disconnect")
                    continue
                if self._may_wait(error):
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.failover.read_wait.total_seconds()
                        log.warning(
                            "PostgreSQL at %s stopped answering; reads wait up to %s",
                            self.connection.describe(),
                            self.failover.read_wait,
                        )
                    if now < deadline:
                        time.sleep(min(pause * random.uniform(0.5, 1.0), deadline - now))  # noqa: S311
                        pause = min(READ_BACKOFF_MAX, pause * 2)
                        continue
                raise self.translate(error) from error
            except OmejdnPgError:
                raise
            except exc.SQLAlchemyError as error:
                raise self.translate(error) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _may_wait(self, error: exc.DBAPIError) -> bool:
        """A server that answered before and is now away (not misconfigured) may come back."""
        if not self._answered or self.failover.read_wait <= datetime.timedelta(0):
            return False
        state = _sqlstate(error)
        if state is not None and state.startswith(_CONFIGURATION_CLASSES):
            return False
        return _connection_lost(error) or _is_unavailable(error.orig)

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
                    self._commit(conn, transaction)
                    self._answered = True
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

    def _commit(self, conn: Connection, transaction: RootTransaction) -> None:
        """COMMIT; with replicas, learn the commit's WAL position in the same round trip.

        ``pg_current_wal_insert_lsn()`` read after COMMIT on the same connection
        is at or past the end of the commit record, whatever
        ``synchronous_commit`` says (``pg_current_wal_lsn()``, the *write*
        position, may still be behind it when commits are asynchronous), and
        a standby whose replay position reaches it has applied the commit.
        Read inside the transaction it would be too early; read in a statement
        of its own it would cost a round trip. Sent as one simple-query message
        with the COMMIT, it costs nothing; psycopg then finds the session idle,
        so SQLAlchemy's own commit sends nothing more.
        """
        if self.router is None:
            transaction.commit()
            return
        dbapi_connection: Any = conn.connection.dbapi_connection
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(COMMIT_REPORTING_LSN, prepare=False)
                cursor.nextset()
                row = cursor.fetchone()
        except psycopg.Error as error:
            broken = bool(dbapi_connection.closed or dbapi_connection.broken)
            if broken:
                conn.invalidate(error)
            raise exc.DBAPIError.instance(
                COMMIT_REPORTING_LSN.decode(),
                None,
                error,
                psycopg.Error,
                connection_invalidated=broken,
            ) from error
        transaction.commit()
        lsn = parse_lsn(row[0]) if row is not None else None
        if lsn is not None:
            self.router.wrote(lsn)

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
            with self.engine.connect() as conn:
                transaction = conn.begin()
                try:
                    yield conn
                except BaseException:
                    if transaction.is_active:
                        transaction.rollback()
                    raise
                self._commit(conn, transaction)
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
            message = first_line(str(original))
            if any(f'"{table}"' in message for table in _SCHEMA_TABLES):
                return SchemaOutOfDate(
                    f"the database {where} has no omejdn_pg schema or an old one ({message}); "
                    "run `omejdn-pg migrate`"
                )
        if getattr(original, "sqlstate", None) == READ_ONLY_STATE:
            return StorageUnavailable(
                f"PostgreSQL at {where} is read-only (a standby, or a primary fenced after a "
                "failover) and no writable primary answered; with several hosts, set "
                "target_session_attrs: read-write"
            )
        refused = authentication_problem(original, self.connection)
        if refused is not None:
            return StorageUnavailable(f"{refused} at {where}{AUTHENTICATION_ADVICE}")
        if isinstance(error, exc.DBAPIError) and (
            error.connection_invalidated or _is_unavailable(original)
        ):
            reason = first_line(str(original)) if original is not None else "connection lost"
            return StorageUnavailable(
                f"PostgreSQL at {where} is unavailable: {self.connection.scrub(reason)}"
            )
        if isinstance(error, exc.TimeoutError):
            return StorageUnavailable(
                f"no free connection to {where} within the pool timeout; "
                "raise plugins.postgres_backend.pool.size or .timeout"
            )
        reason = first_line(str(original if original is not None else error))
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


_CONFIGURATION_CLASSES: Final = ("28", "3D")
"""invalid_authorization_specification, invalid_catalog_name: waiting will not help."""
READ_ONLY_STATE: Final = "25006"
"""read_only_sql_transaction: a write reached a node that takes none."""

READ_BACKOFF_FIRST: Final = 0.01
READ_BACKOFF_MAX: Final = 0.1
"""Seconds between a waiting read's attempts: doubling from the first to the most, jittered.

The first retry is immediate (a fresh connection); the pause then never grows past
0.1 s, so a read finds a newly promoted primary within ~0.1 s of its promotion
(with 0.5 s it was up to half a second: most of the read gap of a failover). The
price is one failing connection attempt per waiting reader per 0.1 s while no
primary answers, which a refused or read-only node answers in milliseconds."""
REPLICA_POLL_INTERVAL: Final = 0.05
"""Seconds: a standby's state is observed again, when a read needs it, at most this often."""
REPLICA_CONNECT_TIMEOUT: Final = 2
"""Seconds a connection to a replica may take unless its settings say otherwise."""
REPLICA_RETRY_FIRST: Final = 1.0
REPLICA_RETRY_MAX: Final = 30.0
COMMIT_REPORTING_LSN: Final = b"COMMIT; SELECT pg_current_wal_insert_lsn()::text"

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


AUTHENTICATION_ADVICE: Final = (
    ": check the password where this connection takes it from (the URL or plugin file's "
    "password, PGPASSWORD, ~/.pgpass, the service file) and that the server's pg_hba.conf "
    "admits this user from this host to this database"
)
_REFUSED_USER: Final = re.compile(r'(?:authentication failed|pg_hba\.conf entry).*user "([^"]*)"')


def authentication_problem(original: object, connection: ConnectionSettings) -> str | None:
    """``authentication failed for user "X"`` when the server refused who we are, else None.

    A refused login is not an unavailable server: waiting will not help, and
    the operator has to fix a password or pg_hba.conf. libpq reports it before
    any SQLSTATE reaches the client, so its message is what says so.
    """
    if not isinstance(original, psycopg.OperationalError):
        return None
    message = str(original)
    state = original.sqlstate or ""
    named = _REFUSED_USER.search(message)
    missing = "no password supplied" in message
    if named is None and not missing and not state.startswith("28"):
        return None
    user = named.group(1) if named is not None else connection.params.get("user")
    user = user or os.environ.get("PGUSER") or getpass.getuser()
    if missing:
        return f'authentication failed for user "{user}" (a password is required: none given)'
    return f'authentication failed for user "{user}"'
