"""Engine construction: psycopg connections made from libpq keywords, and the pooler probe.

Every connection of the package (the engine's, the read pools', a standby's)
is made from the same libpq keywords (:func:`connect_arguments`), so
multi-host strings, service files and ``PG*`` variables behave as in libpq and
nothing secret reaches ``engine.url``. Behind a pooler such as PgBouncer,
server-side prepared statements are switched off per connection
(:func:`behind_pooler` tells, for one round trip per new connection), and the
startup settings a pooler refuses are set per transaction instead
(:mod:`~omejdn_pg.postgres.database.startup`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import ConnectionPoolEntry

from omejdn_pg.postgres.database.startup import StartupSettings
from omejdn_pg.settings.backend import PoolSettings, TimeoutSettings
from omejdn_pg.settings.connection import ConnectionSettings


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


def count_statements(engine: Engine) -> list[str]:
    """Record every statement sent through ``engine`` (for tests and benchmarks)."""
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(*args: object) -> None:
        statements.append(str(args[2]))

    return statements
