"""Dead connections: reads recover on their own, writes fail cleanly with nothing half-written."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, text

from omejdn_pg.entities import User
from omejdn_pg.errors import StorageError, StorageUnavailable
from omejdn_pg.postgres.database import Database, count_statements
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.settings import ConnectionSettings
from tests.helpers import PlainSQL

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


def test_a_write_on_a_dead_connection_fails_cleanly_and_the_next_one_works(
    db: Database, plain_sql: PlainSQL
) -> None:
    db.read(get_alice)
    kill_pool(plain_sql)
    with pytest.raises(StorageUnavailable) as caught:
        db.write(lambda conn: UserRepository(conn).create(User(username="alice", password=HASH)))
    assert db.connection.describe() in str(caught.value)
    assert plain_sql.rows("SELECT * FROM users") == []

    db.write(lambda conn: UserRepository(conn).create(User(username="alice", password=HASH)))
    assert plain_sql.value("SELECT count(*) FROM users") == 1


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


def test_a_write_is_never_retried(db: Database, plain_sql: PlainSQL) -> None:
    db.read(get_alice)
    kill_pool(plain_sql)
    attempts = []

    def counted(conn: Connection) -> None:
        attempts.append(1)
        UserRepository(conn).create(User(username="alice", password=HASH))

    with pytest.raises(StorageUnavailable):
        db.write(counted)
    assert len(attempts) <= 1


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
