"""Dead connections: reads and writes recover on their own, and what cannot recover fails
cleanly with nothing half-written."""

from __future__ import annotations

import contextlib
import datetime
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text

from omejdn_pg.entities import User
from omejdn_pg.errors import StorageError, StorageUnavailable
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.common import lock_for_update
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings, PasswordSettings, TimeoutSettings
from omejdn_pg.settings.connection import ConnectionSettings
from omejdn_pg.settings.validation import parse_backend_section
from tests.kits.threads import run_together
from tests.kits.witness import PlainSQL

HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"


def kill_pool(plain_sql: PlainSQL) -> int:
    """Terminate every server backend of the test database but the killer's own."""
    killed: int = plain_sql.value(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return killed


def get_alice(conn: Connection) -> User | None:
    return UserRepository(conn).get("alice")


def test_a_read_on_a_dead_pooled_connection_is_retried_once(
    db: Database, plain_sql: PlainSQL
) -> None:
    db.write(lambda conn: UserRepository(conn).create(User(username="alice", password=HASH)))
    assert db.read(get_alice) is not None
    assert kill_pool(plain_sql) >= 1

    statements = count_statements(db.engine)
    found = db.read(get_alice)
    assert found is not None
    assert found.username == "alice"
    # The failed attempt and the retry; no ping statement before either.
    assert len([s for s in statements if "FROM users" in s]) == 2
    assert not [s for s in statements if s.strip().upper() == "SELECT 1"]


def test_reads_on_a_healthy_pool_send_no_ping(db: Database) -> None:
    db.read(get_alice)
    statements = count_statements(db.engine)
    for _ in range(5):
        db.read(get_alice)
    assert len(statements) == 5


def test_a_write_on_a_connection_that_died_while_idle_is_retried_and_succeeds(
    db: Database, plain_sql: PlainSQL
) -> None:
    # Nothing was sent on the dead connection before it failed, so nothing can
    # have committed: the write runs once more on a fresh connection.
    db.read(get_alice)
    kill_pool(plain_sql)
    attempts = []

    def counted(conn: Connection) -> None:
        attempts.append(1)
        UserRepository(conn).create(User(username="alice", password=HASH))

    db.write(counted)
    assert len(attempts) == 2
    assert plain_sql.value("SELECT count(*) FROM users") == 1


def test_a_write_after_every_pooled_connection_died_is_retried_once_and_lands(
    db: Database, plain_sql: PlainSQL
) -> None:
    # The first statement meets a dead connection; the retry must not be handed
    # another dead one from the pool: every connection made before is discarded.
    db.write(lambda conn: UserRepository(conn).create(User(username="alice", password=HASH)))
    with db.engine.connect() as first, db.engine.connect() as second, db.engine.connect():
        first.exec_driver_sql("SELECT 1")
        second.exec_driver_sql("SELECT 1")
    assert kill_pool(plain_sql) >= 3
    attempts = []

    def update(conn: Connection) -> None:
        attempts.append(1)
        UserRepository(conn).update(User(username="alice", password=HASH, attributes={"a": 1}))

    db.write(update)
    assert len(attempts) == 2
    assert plain_sql.value("SELECT value FROM attributes WHERE identifier = 'alice'") == 1


def test_a_connection_lost_in_the_middle_of_a_write_leaves_nothing(
    db: Database, plain_sql: PlainSQL
) -> None:
    def create_then_lose_the_connection(conn: Connection) -> None:
        UserRepository(conn).create(
            User(username="alice", password=HASH, attributes={"email": "a@example.org"})
        )
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        plain_sql.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn.execute(text("SELECT 1"))

    with pytest.raises(StorageUnavailable):
        db.write(create_then_lose_the_connection)
    assert plain_sql.rows("SELECT * FROM users") == []
    assert plain_sql.rows("SELECT * FROM attributes") == []


def test_a_write_is_retried_once_only_and_then_the_next_one_works(
    db: Database, plain_sql: PlainSQL
) -> None:
    attempts = []

    def lose_the_connection_every_time(conn: Connection) -> None:
        attempts.append(1)
        UserRepository(conn).create(User(username="alice", password=HASH))
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        plain_sql.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn.execute(text("SELECT 1"))

    with pytest.raises(StorageUnavailable) as caught:
        db.write(lose_the_connection_every_time)
    assert len(attempts) == 2
    assert db.connection.describe() in str(caught.value)
    assert plain_sql.rows("SELECT * FROM users") == []

    db.write(lambda conn: UserRepository(conn).create(User(username="alice", password=HASH)))
    assert plain_sql.value("SELECT count(*) FROM users") == 1


def test_a_connection_lost_during_commit_is_reported_as_an_unknown_outcome(
    db: Database, plain_sql: PlainSQL
) -> None:
    attempts = []

    def lose_it_at_commit(conn: Connection, *_: object) -> None:
        if conn.engine is db.engine:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            plain_sql.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def create(conn: Connection) -> None:
        attempts.append(1)
        UserRepository(conn).create(User(username="alice", password=HASH))

    event.listen(db.engine, "commit", lose_it_at_commit)
    try:
        with pytest.raises(StorageUnavailable, match="outcome of the write is unknown"):
            db.write(create)
    finally:
        event.remove(db.engine, "commit", lose_it_at_commit)
    assert len(attempts) == 1  # never retried: it might have committed
    # Here the server was gone before COMMIT arrived, so it did not commit.
    assert plain_sql.rows("SELECT * FROM users") == []


def test_deadlocks_are_retried_inside_the_write(db: Database, plain_sql: PlainSQL) -> None:
    plain_sql.execute("CREATE TABLE counters (id int PRIMARY KEY, n int)")
    plain_sql.execute("INSERT INTO counters VALUES (1, 0), (2, 0)")
    barrier = threading.Barrier(2)

    def bump(first: int, second: int) -> Callable[[Connection], None]:
        def operation(conn: Connection) -> None:
            conn.execute(text("UPDATE counters SET n = n + 1 WHERE id = :id"), {"id": first})
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=2)
            conn.execute(text("UPDATE counters SET n = n + 1 WHERE id = :id"), {"id": second})

        return operation

    results = run_together(2, lambda i: db.write(bump(1, 2) if i == 0 else bump(2, 1)))
    assert [r for r in results if isinstance(r, BaseException)] == []
    # Both transfers happened whole: the deadlock victim was run again.
    assert plain_sql.rows("SELECT id, n FROM counters ORDER BY id") == [(1, 2), (2, 2)]


def test_a_statement_and_a_lock_wait_are_bounded_by_the_plugin_settings(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    timeouts = TimeoutSettings(
        statement=datetime.timedelta(milliseconds=300), lock=datetime.timedelta(milliseconds=200)
    )
    bounded = Database.connect(database, timeouts=timeouts)
    try:
        with pytest.raises(StorageError, match="statement timeout"):
            bounded.read(lambda conn: conn.execute(text("SELECT pg_sleep(2)")))
        with Database.connect(database).transaction() as holder:
            lock_for_update(holder, "user", "alice")
            started = time.monotonic()
            with pytest.raises(StorageError, match="lock timeout"):
                bounded.write(lambda conn: lock_for_update(conn, "user", "alice"))
            assert time.monotonic() - started < 1.5
    finally:
        bounded.dispose()
    settings = parse_backend_section(
        {"statement_timeout": "250ms", "lock_timeout": 1}, "plugins.yml"
    )
    assert settings.timeouts == TimeoutSettings(
        statement=datetime.timedelta(milliseconds=250), lock=datetime.timedelta(seconds=1)
    )
    assert parse_backend_section({}, "plugins.yml").timeouts.statement.total_seconds() == 5


def test_an_unreachable_server_is_storage_unavailable_without_password(
    db: Database,
) -> None:
    settings = db.connection.with_params(
        host="127.0.0.1", port="1", password="supersecret", connect_timeout="2"
    )
    unreachable = Database.connect(settings)
    try:
        with pytest.raises(StorageUnavailable) as caught:
            unreachable.read(get_alice)
    finally:
        unreachable.dispose()
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "supersecret" not in message
    assert "supersecret" not in repr(unreachable)


def test_a_statement_timeout_is_a_storage_error_not_unavailability(
    database: ConnectionSettings,
) -> None:
    impatient = Database.connect(database.with_params(options="-c statement_timeout=50"))
    try:
        with pytest.raises(StorageError) as caught:
            impatient.read(lambda conn: conn.execute(text("SELECT pg_sleep(2)")))
    finally:
        impatient.dispose()
    assert not isinstance(caught.value, StorageUnavailable)
    assert "statement timeout" in str(caught.value)


@pytest.fixture
def restartable() -> Iterator[Callable[[], None]]:
    """A server of its own that the test may stop and start again (same socket, same data)."""
    import pgserver

    # Not under pytest's tmp_path: as root, pgserver runs postgres as its own
    # user, which must be able to reach the folder (as in conftest's server).
    data = Path(tempfile.mkdtemp(prefix="omejdn-pg-test-restart-"))
    servers = [pgserver.get_server(data, cleanup_mode="stop")]

    def restart() -> None:
        servers[0].cleanup()
        servers[0] = pgserver.get_server(data, cleanup_mode="stop")

    restart.settings = ConnectionSettings.from_url(servers[0].get_uri())  # type: ignore[attr-defined]
    try:
        yield restart
    finally:
        servers[0].cleanup()
        shutil.rmtree(data, ignore_errors=True)


def test_a_server_restart_under_a_running_host_loses_no_write(
    restartable: Callable[[], None],
) -> None:
    settings: ConnectionSettings = restartable.settings  # type: ignore[attr-defined]
    migrate.upgrade(settings)
    backend = BackendSettings(connection=settings, passwords=PasswordSettings(bcrypt_rounds=4))
    with Host.from_settings(backend) as host:
        host.users.add(User(username="alice", password=HASH, attributes={"n": 0}))
        # Several pooled connections, all idle when the server goes away.
        results = run_together(3, lambda i: host.users.find("alice"))
        assert all(isinstance(r, User) for r in results)

        restartable()

        alice = host.users.find("alice")
        assert alice is not None
        restartable()
        for n in range(1, 4):
            alice.attributes = {"n": n}
            host.users.save(alice)  # the first write after the restart must not fail
        host.config.write("omejdn", {"issuer": "https://id.example"})
        assert host.config.read("omejdn") == {"issuer": "https://id.example"}
        found = host.users.find("alice")
        assert found is not None
        assert found.attributes == {"n": 3}
