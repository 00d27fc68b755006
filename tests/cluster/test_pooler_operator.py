"""Behind PgBouncer as Debian configures it: everything works, and the bounds still hold.

Debian's PgBouncer is started by the test with its packaged defaults where they
matter here: no ``ignore_startup_parameters``, so the startup parameter
``options`` (which carries ``statement_timeout`` and ``lock_timeout``) is
refused with ``unsupported startup parameter: options``; ``pool_mode`` is the
packaged default (``session``) and, for the harder case, ``transaction`` with
``server_round_robin``, where a plain ``SET`` would not survive to the next
transaction. A ``pg_sleep`` past ``statement_timeout`` and a row lock held past
``lock_timeout`` must fail through the pooler on every read and write path.
The wire is traced to show what a point read costs there.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import select, text

from omejdn_pg import PluginLoader, User
from omejdn_pg.errors import StorageError
from omejdn_pg.host import events
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.schema import metadata
from omejdn_pg.settings.backend import TimeoutSettings
from omejdn_pg.settings.connection import ConnectionSettings
from omejdn_pg.settings.validation import parse_backend_section
from tests.cluster.rig import PgBouncer
from tests.kits.commands import ok, omejdn_pg
from tests.kits.witness import PlainSQL

HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"  # "mypassword"
USERS = metadata.tables["users"]
BOUNDS = {"statement_timeout": "300ms", "lock_timeout": "300ms"}


@pytest.fixture(scope="module", params=["session", "transaction"])
def bouncer(request: pytest.FixtureRequest, server: ConnectionSettings) -> Iterator[PgBouncer]:
    # No ignore_startup_parameters: what Debian's pgbouncer.ini ships.
    # pool_size: enough server connections for the threads of one test in session mode.
    with PgBouncer(server, pool_mode=request.param, pool_size=8) as running:
        yield running


def through(bouncer: PgBouncer, database: ConnectionSettings) -> ConnectionSettings:
    return bouncer.settings(database.params["dbname"])


def bounded(connection: ConnectionSettings, **bounds: str) -> Database:
    section = {"connection": dict(connection.params), **BOUNDS, **bounds}
    return Database.for_backend(parse_backend_section(section, "test"))


def test_the_pooler_refuses_startup_options_as_configured(
    bouncer: PgBouncer, database: ConnectionSettings
) -> None:
    """The premise: with the bounds as startup options, PgBouncer refuses the connection."""
    options = TimeoutSettings().options()
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(through(bouncer, database).conninfo(), options=options).close()


def test_every_path_works_and_the_statement_timeout_holds(
    bouncer: PgBouncer, database: ConnectionSettings
) -> None:
    db = bounded(through(bouncer, database))
    try:
        sleep = text("SELECT pg_sleep(2)")
        # A read through SQLAlchemy, a read on the read pool, a write, a batch.
        with pytest.raises(StorageError, match="statement timeout"):
            db.read(lambda conn: conn.execute(sleep))
        with pytest.raises(StorageError, match="statement timeout"):
            db.query(lambda reader: reader.rows(sleep))
        with pytest.raises(StorageError, match="statement timeout"):
            db.write(lambda conn: conn.execute(sleep))
        with pytest.raises(StorageError, match="statement timeout"), db.batch() as conn:
            conn.execute(sleep)
        # And the same paths answer when nothing is slow, many times over
        # (round robin: each transaction may land on another server connection).
        for _ in range(6):
            assert db.read(lambda conn: conn.execute(text("SELECT 1")).scalar_one()) == 1
            assert db.query(lambda reader: reader.rows(select(USERS.c.username))) == []
            shown = db.query(lambda reader: reader.rows(text("SHOW statement_timeout")))
            assert shown[0][0] == "300ms"
            assert db.write(lambda conn: conn.execute(text("SHOW lock_timeout")).scalar_one()) == (
                "300ms"
            )
    finally:
        db.dispose()
    # Nothing leaked to the server connections: a plain client through the same
    # pooler sees the server's defaults.
    with psycopg.connect(through(bouncer, database).conninfo(), autocommit=True) as plain:
        assert plain.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_the_lock_timeout_holds(
    bouncer: PgBouncer, database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    plain_sql.execute("INSERT INTO users (username, password) VALUES ('ann', %s)", (HASH,))
    db = bounded(through(bouncer, database), statement_timeout="5s")
    holder = psycopg.connect(database.conninfo())
    try:
        holder.execute("SELECT * FROM users WHERE username = 'ann' FOR UPDATE")
        update = text("UPDATE users SET password = :h WHERE username = 'ann'")
        with pytest.raises(StorageError, match="lock timeout"):
            db.write(lambda conn: conn.execute(update, {"h": HASH}))
    finally:
        holder.close()
        db.dispose()


def test_the_plugin_and_the_cli_work_through_it(
    bouncer: PgBouncer, database: ConnectionSettings, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    pooled = through(bouncer, database)
    path = tmp_path / "plugins.yml"
    section = {
        "connection": dict(pooled.params),
        "passwords": {"bcrypt_rounds": 4},
        "cache": {"listen_connection": dict(database.params)},
        **BOUNDS,
    }
    path.write_text(
        yaml.safe_dump(
            {
                "plugins": {"postgres_backend": section},
                "deactivate_defaults": ["config", "keys", "client", "user"],
                "user_backend_default": "postgres",
            }
        )
    )
    with PluginLoader.from_files([path], base_dir=tmp_path) as loader:
        user = User(username="bob", password=HASH, attributes={"n": 1})
        loader.fire(events.USER_CREATE, user=user, user_backend="postgres")
        (found,) = loader.fire(events.USER_GET, username="bob")
        assert found.attributes == {"n": 1}
    listed = ok(omejdn_pg("--config", str(path), "users", "list", "-o", "json"))
    assert '"bob"' in listed.stdout
    assert plain_sql.value("SELECT count(*) FROM users WHERE username = 'bob'") == 1


def round_trips_of_a_point_read(db: Database) -> tuple[int, list[str]]:
    """Frontend messages and round trips (Sync or Query) of one read-pool point read."""
    assert db.direct_reads is not None
    statement = select(USERS.c.username).where(USERS.c.username == "x")
    db.query(lambda reader: reader.rows(statement))  # the pool's one connection, made
    pooled = db.direct_reads.checkout()
    with tempfile.TemporaryFile() as trace:
        pgconn: Any = pooled.conn.pgconn
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        db.direct_reads.checkin(pooled)
        try:
            db.query(lambda reader: reader.rows(statement))
        finally:
            pgconn.untrace()
        trace.seek(0)
        lines = trace.read().decode("utf-8", "replace").splitlines()
    sent = [line.split("\t")[2].split()[0] for line in lines if line.startswith("F\t")]
    return sent.count("Sync") + sent.count("Query"), sent


def test_a_point_read_stays_one_round_trip(
    bouncer: PgBouncer, database: ConnectionSettings
) -> None:
    for connection in (database, through(bouncer, database)):
        db = bounded(connection)
        try:
            trips, sent = round_trips_of_a_point_read(db)
            assert trips == 1, sent
        finally:
            db.dispose()


def test_refusal_is_remembered_across_threads(
    bouncer: PgBouncer, database: ConnectionSettings
) -> None:
    """Many threads connecting at once all end up bounded, none with a failed connection."""
    db = bounded(through(bouncer, database))
    failures: list[BaseException] = []

    def work() -> None:
        try:
            shown = db.query(lambda reader: reader.rows(text("SHOW statement_timeout")))
            assert shown[0][0] == "300ms"
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        db.dispose()
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures
