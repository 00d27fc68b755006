"""Read replicas: which standby may serve a read, and the commit position that decides it.

With ``replicas:`` configured, point reads and GET_ALL may be served by a
streaming standby (:class:`ReplicaRouter`): only one that has replayed the last
commit of this process — or of the current
:meth:`~omejdn_pg.postgres.database.unit_of_work.Database.consistent_after`
scope — and lags no more than ``max_replica_lag``. The commit's position is
read in the same message as the COMMIT itself (:func:`commit_reporting_lsn`),
so read-your-writes costs no round trip. A standby answers point reads on a
read pool of its own, as the primary does (1.05x the primary's latency here;
1.9x through SQLAlchemy's connections). With ``topology:`` the standbys are
not listed but read from Patroni's REST ``/cluster`` in the background
(:mod:`~omejdn_pg.postgres.patroni`, :func:`follow_topology`); the same rule
decides each read, and writes never go by what REST says. Writes, batches and
snapshots always run on the primary.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, RootTransaction, exc

from omejdn_pg.errors import first_line
from omejdn_pg.postgres.database.engine import behind_pooler, build_engine, connect_arguments
from omejdn_pg.postgres.database.errors import connection_lost, is_unavailable
from omejdn_pg.postgres.database.readpool import ReadPool
from omejdn_pg.postgres.database.startup import StartupSettings
from omejdn_pg.postgres.patroni import ClusterView, PatroniWatch
from omejdn_pg.postgres.topology import STANDBY_STATE, format_lsn, parse_lsn
from omejdn_pg.settings.backend import PoolSettings, TimeoutSettings, TopologySettings
from omejdn_pg.settings.connection import ConnectionSettings, inherit_connection

T = TypeVar("T")
log = logging.getLogger(__name__)

REPLICA_POLL_INTERVAL: Final = 0.05
"""Seconds: a standby's state is observed again, when a read needs it, at most this often."""
REPLICA_CONNECT_TIMEOUT: Final = 2
"""Seconds a connection to a replica may take unless its settings say otherwise."""
REPLICA_RETRY_FIRST: Final = 1.0
REPLICA_RETRY_MAX: Final = 30.0
COMMIT_REPORTING_LSN: Final = b"COMMIT; SELECT pg_current_wal_insert_lsn()::text"


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

    def dispose(self) -> None:
        """Close this standby's connections (it left the cluster, or the database closes)."""
        if self.direct_reads is not None:
            self.direct_reads.dispose()
        self.engine.dispose()


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

    def serve(self, replica: Replica, attempt: Callable[[], T]) -> list[T]:
        """``[attempt()]`` if ``replica`` answered; ``[]``: ask the primary."""
        try:
            result = attempt()
            with self._lock:
                self.served[replica.name] = self.served.get(replica.name, 0) + 1
            return [result]
        except exc.SQLAlchemyError as error:
            # Whatever went wrong there, the primary's answer is the authority.
            if isinstance(error, exc.DBAPIError) and (
                connection_lost(error) or is_unavailable(error.orig)
            ):
                replica.failed(error)
            log.info("a read failed on replica %s; asking the primary", replica.name)
            return []

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


def bounded_connect(node: ConnectionSettings) -> ConnectionSettings:
    """A replica's connection with a ``connect_timeout`` (libpq's default is none).

    A standby is an option, not a necessity: a read must not hang for minutes
    on one that went silent when the primary would have answered at once.
    """
    if "connect_timeout" in node.params:
        return node
    return node.with_params(connect_timeout=str(REPLICA_CONNECT_TIMEOUT))


def standby(
    node: ConnectionSettings,
    pool: PoolSettings | None,
    timeouts: TimeoutSettings | None,
    prepare: bool | None,
) -> Replica:
    """A :class:`Replica` for ``node``: its engine and its read pool, with bounded connects."""
    node = bounded_connect(node)
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


def follow_topology(
    router: ReplicaRouter,
    connection: ConnectionSettings,
    topology: TopologySettings,
    replica: Callable[[ConnectionSettings], Replica],
) -> PatroniWatch:
    """Take ``router``'s replicas from Patroni's ``/cluster``, now and whenever they change.

    Members keep their Replica (and what was observed of it) while they stay;
    new ones get a fresh one; those gone are dropped and their connections closed.
    """

    def changed(view: ClusterView) -> None:
        wanted = [
            inherit_connection(connection, ConnectionSettings(m.connection_params()))
            for m in view.replicas
        ]
        kept = {r.connection.describe(): r for r in router.replicas}
        chosen = []
        for node in wanted:
            same = kept.pop(bounded_connect(node).describe(), None)
            chosen.append(same if same is not None else replica(node))
        router.replace(chosen)
        for gone in kept.values():
            gone.dispose()

    return PatroniWatch(topology, changed).start()


def commit_reporting_lsn(conn: Connection, transaction: RootTransaction) -> int | None:
    """COMMIT ``transaction`` and learn the commit's WAL position in the same round trip.

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
    return parse_lsn(row[0]) if row is not None else None
