"""The primary's direct read path: what the hot events send, and how its pool behaves."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from omejdn_pg.entities import Client, User
from omejdn_pg.errors import StorageUnavailable
from omejdn_pg.host import events
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres.database import readpool
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.readpool import ReadPool
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.postgres.repositories.clients import ClientRepository
from omejdn_pg.postgres.repositories.config import ConfigRepository
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.postgres.repositories.users import UserRepository, find_user
from omejdn_pg.settings.backend import PoolSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.witness import PlainSQL

HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"
APP = "omejdn-pg-direct-reads"


@contextmanager
def seeded(database: ConnectionSettings, pool: PoolSettings | None = None) -> Iterator[Database]:
    """A database with alice, the client app and section omejdn; disposed after the block."""
    db = Database.connect(database.with_params(application_name=APP), pool)

    def seed(conn: Any) -> None:
        UserRepository(conn).create(
            User(username="alice", password=HASH, attributes={"email": "a@example.org"})
        )
        ClientRepository(conn).create(Client(metadata={"client_id": "app", "name": "App"}))
        ConfigRepository(conn).store("omejdn", {"issuer": "https://id.example"})

    db.write(seed)
    try:
        yield db
    finally:
        db.dispose()


def plugin_on(db: Database) -> PostgresBackendPlugin:
    plugin = PostgresBackendPlugin()
    plugin.attach(db)
    return plugin


def read_pool(db: Database) -> ReadPool:
    assert db.direct_reads is not None
    return db.direct_reads


def traced(db: Database, call: Callable[[], object]) -> list[str]:
    """The frontend messages libpq sends on the read pool's (one idle) connection."""
    pool = read_pool(db)
    pooled = pool.checkout()
    pool.checkin(pooled)
    with tempfile.TemporaryFile() as trace:
        pooled.conn.pgconn.trace(trace.fileno())
        pooled.conn.pgconn.set_trace_flags(3)  # no timestamps, regress mode
        try:
            call()
        finally:
            pooled.conn.pgconn.untrace()
        trace.seek(0)
        lines = trace.read().decode("utf-8", "replace").splitlines()
    return [line.split("\t")[2].split()[0] for line in lines if line.startswith("F\t")]


def backends(plain_sql: PlainSQL) -> list[int]:
    pids: list[int] = [
        row[0]
        for row in plain_sql.rows(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APP,)
        )
    ]
    return pids


@pytest.mark.parametrize(
    ("event", "context"),
    [
        (events.USER_GET, {"username": "alice"}),
        (events.CLIENT_GET, {"client_id": "app"}),
        (events.CONFIGURATION_LOAD, {"section": "omejdn"}),
        (events.KEYS_LOAD, {"target_type": "jwks", "target": "omejdn"}),
    ],
)
def test_a_hot_read_is_one_prepared_round_trip_with_no_transaction(
    database: ConnectionSettings, event: str, context: dict[str, Any]
) -> None:
    with seeded(database) as db:
        handler = {
            events.USER_GET: plugin_on(db).user_get,
            events.CLIENT_GET: plugin_on(db).client_get,
            events.CONFIGURATION_LOAD: plugin_on(db).configuration_load,
            events.KEYS_LOAD: plugin_on(db).keys_load,
        }[event]
        first = traced(db, lambda: handler(**context))
        again = traced(db, lambda: handler(**context))
    # Prepared on first use (psycopg sends that Parse on its own Sync), then only
    # Bind/Execute: one round trip.
    assert first.count("Parse") == 1, first
    assert "Parse" not in again, again
    assert again.count("Sync") == 1, again
    assert "Query" not in first + again  # no BEGIN, COMMIT or ROLLBACK (simple protocol)


def test_the_direct_path_answers_what_a_connection_answers(database: ConnectionSettings) -> None:
    with seeded(database) as db:
        plugin = plugin_on(db)
        on_connection = db.read(lambda conn: UserRepository(conn).get("alice"))
        assert plugin.user_get("alice") == on_connection
        assert on_connection is not None
        assert on_connection.attributes == {"email": "a@example.org"}
        assert plugin.client_get("app") == db.read(lambda conn: ClientRepository(conn).get("app"))
        assert plugin.configuration_load("omejdn") == {"issuer": "https://id.example"}
        assert plugin.configuration_load("never_written") is None
        assert plugin.user_get("nobody") is None
        assert [user.username for user in plugin.user_get_all()] == ["alice"]


def test_statement_listeners_see_direct_reads(database: ConnectionSettings) -> None:
    with seeded(database) as db:
        statements = count_statements(db.engine)
        assert plugin_on(db).user_get("alice") is not None
        assert len(statements) == 1
        assert "FROM users" in statements[0]


def test_reads_after_every_connection_was_killed_succeed_on_fresh_ones(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    with seeded(database, PoolSettings(size=4)) as db:
        plugin = plugin_on(db)
        hold = [read_pool(db).checkout() for _ in range(3)]
        for pooled in hold:
            read_pool(db).checkin(pooled)
        before = set(backends(plain_sql))
        assert len(before) >= 3
        plain_sql.rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (APP,),
        )
        # pg_terminate_backend only signals: a loaded server lists them a while longer.
        deadline = time.monotonic() + 10
        while set(backends(plain_sql)) & before and time.monotonic() < deadline:
            time.sleep(0.01)
        # The first read meets a dead connection, is retried once on a fresh one,
        # and the other dead idle connections are dropped instead of being tried.
        discarded = read_pool(db).discarded
        assert plugin.user_get("alice") is not None
        assert read_pool(db).discarded - discarded == 3
        assert plugin.user_get("alice") is not None
        after = set(backends(plain_sql))
        assert after
        assert not after & before
        assert len(after) == 1


def test_a_read_that_meets_its_connection_killed_is_answered_on_a_fresh_one(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    with seeded(database, PoolSettings(size=1, max_overflow=0)) as db:
        plugin = plugin_on(db)
        assert plugin.user_get("alice") is not None
        pooled = read_pool(db).checkout()
        pid = pooled.conn.info.backend_pid
        read_pool(db).checkin(pooled)
        plain_sql.value("SELECT pg_terminate_backend(%s)", (pid,))
        found = plugin.user_get("alice")
        assert found is not None
        assert found.username == "alice"
        assert pid not in backends(plain_sql)


def test_idle_read_connections_are_bounded_by_the_pool_size(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    with seeded(database, PoolSettings(size=2, max_overflow=6)) as db:
        plugin = plugin_on(db)
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                start.wait()
                for _ in range(200):
                    assert plugin.user_get("alice") is not None
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        pool = read_pool(db)
        assert len(pool._idle) <= 2
        # Writes use the engine's pool; what is left open for reads is at most the size.
        read_backends = len(backends(plain_sql)) - db.engine.pool.checkedin()  # type: ignore[attr-defined]
        assert read_backends <= 2


def test_an_exhausted_read_pool_says_so_after_its_timeout(database: ConnectionSettings) -> None:
    with seeded(database, PoolSettings(size=1, max_overflow=0, timeout=0.2)) as db:
        plugin = plugin_on(db)
        held = read_pool(db).checkout()
        try:
            with pytest.raises(StorageUnavailable, match=r"no free connection .* pool timeout"):
                plugin.user_get("alice")
        finally:
            read_pool(db).checkin(held)
        assert plugin.user_get("alice") is not None


def test_old_read_connections_are_recycled(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    with seeded(database, PoolSettings(size=1, recycle=0)) as db:
        plugin = plugin_on(db)
        assert plugin.user_get("alice") is not None
        first = set(backends(plain_sql))
        assert plugin.user_get("alice") is not None
        assert set(backends(plain_sql)) - first


def test_reads_inside_a_batch_see_the_batch(database: ConnectionSettings) -> None:
    with seeded(database) as db:
        plugin = plugin_on(db)
        with db.batch():
            plugin.user_create(User(username="bob", password=HASH), user_backend="postgres")
            assert plugin.user_get("bob") is not None
            assert db.query(lambda reader: find_user(reader, "bob")) is not None
        assert plugin.user_get("bob") is not None


def test_a_signing_set_answer_is_a_fresh_copy_and_follows_every_change(
    database: ConnectionSettings,
) -> None:
    with seeded(database) as db:
        plugin = plugin_on(db)
        first_key, second_key = generate_key("RS256"), generate_key("ES256")
        plugin.keys_store("jwks", "omejdn", KeySet([first_key]).to_jwks(private=True))
        answer = plugin.keys_load("jwks", "omejdn")
        assert answer is not None
        assert [jwk["kid"] for jwk in answer["keys"]] == [first_key.kid]
        assert "d" in answer["keys"][0]
        answer["keys"][0]["kid"] = "tampered"
        answer["keys"].append({"kty": "oct"})
        again = plugin.keys_load("jwks", "omejdn")
        assert again is not None
        assert [jwk["kid"] for jwk in again["keys"]] == [first_key.kid]

        # Written behind the plugin's back (plain SQL would do the same): the next
        # load reads the new rows and answers from them.
        db.write(
            lambda conn: KeyRepository(conn).store(
                "jwks", "omejdn", KeySet([second_key, first_key])
            )
        )
        changed = plugin.keys_load("jwks", "omejdn")
        assert changed is not None
        assert [jwk["kid"] for jwk in changed["keys"]] == [second_key.kid, first_key.kid]
        published = plugin.keys_load_all("jwks")
        assert sorted(jwk["kid"] for jwk in published["keys"]) == sorted(
            [first_key.kid, second_key.kid]
        )
        assert all("d" not in jwk for jwk in published["keys"])
        db.write(lambda conn: KeyRepository(conn).delete("jwks", "omejdn"))
        assert plugin.keys_load("jwks", "omejdn") is None
        assert plugin.keys_load_all("jwks") == {"keys": []}


@pytest.mark.parametrize(
    "chunked",
    sorted({readpool.CHUNKED_ROWS, False}),
    ids=lambda chunked: "chunked rows" if chunked else "all rows at once (libpq before 17)",
)
def test_long_listings_stream_in_chunks_and_answer_what_point_reads_answer(
    database: ConnectionSettings,
    plain_sql: PlainSQL,
    monkeypatch: pytest.MonkeyPatch,
    chunked: bool,
) -> None:
    monkeypatch.setattr(readpool, "CHUNKED_ROWS", chunked)
    # More rows than several chunks of the stream and of the parser, with the
    # edges mixed in: no attributes, consent, extern by issuer and as true,
    # names that sort differently bytewise and by collation.
    with seeded(database) as db:
        plain_sql.execute(
            "INSERT INTO users (username, password, extern, consent) "
            "SELECT 'u' || n, CASE WHEN n %% 5 = 0 THEN NULL ELSE %s END, "
            "CASE n %% 7 WHEN 0 THEN 'https://idp.example' WHEN 1 THEN 'true' END, "
            "CASE WHEN n %% 3 = 0 THEN jsonb_build_object('app', jsonb_build_array('openid'))"
            " ELSE '{}' END FROM generate_series(1, 1234) AS n",
            (HASH,),
        )
        plain_sql.execute(
            "INSERT INTO attributes (type, identifier, key, value) "
            "SELECT 'user', 'u' || n, k, to_jsonb(n * k::int) "
            "FROM generate_series(1, 1234) AS n, generate_series(1, n % 4) AS k "
        )
        plain_sql.execute(
            "INSERT INTO clients (client_id, key, value) "
            "SELECT 'c' || n, 'name', to_jsonb('C' || n) FROM generate_series(1, 450) AS n"
        )
        plain_sql.execute(
            "INSERT INTO attributes (type, identifier, key, value) "
            "SELECT 'client', 'c' || n, 'tier', '\"gold\"' FROM generate_series(1, 450, 2) AS n"
        )
        plugin = plugin_on(db)
        for index in range(0, 450, 90):
            key = generate_key("ES256")
            plugin.client_update(
                Client(
                    metadata={
                        "client_id": f"c{index + 1}",
                        "name": f"C{index + 1}",
                        "jwks": KeySet([key]).to_jwks(private=False),
                    },
                    backend="postgres",
                )
            )
        # Creation order (an update keeps a client's place).
        names = [row[0] for row in plain_sql.rows("SELECT username FROM users ORDER BY ordinal")]
        client_ids = [
            row[0]
            for row in plain_sql.rows(
                "SELECT client_id FROM clients GROUP BY client_id ORDER BY min(ordinal)"
            )
        ]
        assert client_ids[-450:] == [f"c{n}" for n in range(1, 451)]

        listed = plugin.user_get_all()
        assert [user.username for user in listed] == names
        assert listed == [plugin.user_get(name) for name in names]
        assert listed == db.read(lambda conn: UserRepository(conn).all())
        assert next(u for u in listed if u.username == "u3").consent == {"app": ["openid"]}
        assert next(u for u in listed if u.username == "u8").extern is True
        assert next(u for u in listed if u.username == "u4").attributes == {}

        clients = plugin.client_get_all()
        assert [client.client_id for client in clients] == client_ids
        assert clients == [plugin.client_get(client_id) for client_id in client_ids]
        assert clients == db.read(lambda conn: ClientRepository(conn).all())
        assert sum("jwks" in client.metadata for client in clients) == 5


def test_a_stream_left_midway_does_not_leave_its_connection_to_the_next_read(
    database: ConnectionSettings,
) -> None:
    with seeded(database) as db:

        def first_row_then_fail(reader: Any) -> None:
            rows = reader.stream(text("SELECT n FROM generate_series(1, 100000) AS n"))
            assert next(rows) == (1,)
            raise RuntimeError("the caller gave up")

        for _ in range(3):
            with pytest.raises(RuntimeError, match="gave up"):
                db.query(first_row_then_fail)
            plugin = plugin_on(db)
            assert [user.username for user in plugin.user_get_all()] == ["alice"]
            assert db.query(
                lambda reader: [row[0] for row in reader.stream(text("SELECT 1 UNION SELECT 2"))]
            ) == [1, 2]


def test_a_client_key_set_answer_is_a_fresh_copy_and_follows_every_change(
    database: ConnectionSettings,
) -> None:
    with seeded(database) as db:
        plugin = plugin_on(db)
        first_key, second_key = generate_key("ES256"), generate_key("RS256")
        plugin.client_create(
            Client(
                metadata={"client_id": "jwt", "jwks": KeySet([first_key]).to_jwks(private=False)}
            ),
            client_backend="postgres",
        )
        for read in (
            lambda: plugin.client_get("jwt"),
            lambda: next(c for c in plugin.client_get_all() if c.client_id == "jwt"),
        ):
            answer = read()
            assert answer is not None
            assert [jwk["kid"] for jwk in answer.metadata["jwks"]["keys"]] == [first_key.kid]
            answer.metadata["jwks"]["keys"][0]["kid"] = "tampered"
            answer.metadata["jwks"]["keys"].append({"kty": "oct"})
            again = read()
            assert again is not None
            assert [jwk["kid"] for jwk in again.metadata["jwks"]["keys"]] == [first_key.kid]

        # Replaced behind the plugin's back: the next reads answer from the new rows.
        db.write(lambda conn: KeyRepository(conn).store("clients", "jwt", KeySet([second_key])))
        changed = plugin.client_get("jwt")
        assert changed is not None
        assert [jwk["kid"] for jwk in changed.metadata["jwks"]["keys"]] == [second_key.kid]
        listed = next(c for c in plugin.client_get_all() if c.client_id == "jwt")
        assert listed.metadata["jwks"] == changed.metadata["jwks"]
        db.write(lambda conn: KeyRepository(conn).delete("clients", "jwt"))
        gone = plugin.client_get("jwt")
        assert gone is not None
        assert "jwks" not in gone.metadata
