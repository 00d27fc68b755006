"""Behind PgBouncer in transaction pooling: every storage event works, prepares are off.

Debian's ``pgbouncer`` (``tests/cluster/rig.py`` starts it with an ini of its own)
in front of the suite's server, ``pool_mode = transaction`` and
``server_round_robin`` so that consecutive transactions of one client land on
different server connections — anything that needs a session fails at once.
PgBouncer before 1.21 cannot keep server-side prepared statements, so
``prepare: auto`` must find the pooler and turn them off; ``prepare: true`` is
the control that shows it matters. Also here, reported and not asserted: the
latency of a point read through PgBouncer against the same read direct.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import Connection, text

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.errors import StorageError
from omejdn_pg.host import events
from omejdn_pg.host.events import EventBus
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres.database.engine import behind_pooler
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.settings.connection import ConnectionSettings
from omejdn_pg.settings.validation import parse_backend_section
from tests.cluster.rig import PgBouncer, compare_latency, latency_line, pgbouncer_or_skip
from tests.kits.witness import PlainSQL

HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"  # "mypassword"
ROUNDS = 7
"""More than psycopg's prepare_threshold (5): with prepares on, statements would be prepared."""


@pytest.fixture(scope="module")
def bouncer(server: ConnectionSettings) -> Iterator[PgBouncer]:
    # PgBouncer before 1.20 refuses the startup parameter 'options' (which carries
    # statement_timeout and lock_timeout); it has to be told to ignore it.
    with pgbouncer_or_skip(server, extra={"ignore_startup_parameters": "options"}) as running:
        yield running


def through(bouncer: PgBouncer, database: ConnectionSettings) -> ConnectionSettings:
    return bouncer.settings(database.params["dbname"])


def prepare_threshold(conn: Connection) -> int | None:
    """psycopg's setting on the connection a read got: None means no prepared statements."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    threshold: int | None = driver.prepare_threshold
    return threshold


def single(answers: list[Any]) -> Any:
    assert len(answers) == 1, answers
    return answers[0]


def plugin_file(tmp_path: Path, section: dict[str, Any]) -> Path:
    path = tmp_path / "plugins.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "plugins": {"postgres_backend": section},
                "deactivate_defaults": ["config", "keys", "client", "user"],
                "user_backend_default": "postgres",
                "client_backend_default": "postgres",
            }
        )
    )
    return path


def every_event(loader: EventBus, n: int) -> None:
    """Each storage event once (the current core's JWK Set key events), checked."""
    name = f"alice{n}"
    user = User(username=name, password=HASH, attributes={"n": n})
    loader.fire(events.USER_CREATE, user=user, user_backend="postgres")
    found = single(loader.fire(events.USER_GET, username=name))
    assert found.attributes == {"n": n}
    assert name in [u.username for u in single(loader.fire(events.USER_GET_ALL))]
    found.attributes = {"n": n + 1}
    loader.fire(events.USER_UPDATE, user=found)
    assert single(
        loader.fire(events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=found, password="mypassword")
    )
    loader.fire(events.USER_AUTHENTICATION_PASSWORD_CHANGE, user=found, password=f"new-{n}")
    assert single(
        loader.fire(events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=found, password=f"new-{n}")
    )
    loader.fire(events.USER_DELETE, username=name)
    assert single(loader.fire(events.USER_GET, username=name)) is None

    client_id = f"portal{n}"
    client = Client(metadata={"client_id": client_id, "client_name": "Portal"})
    loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
    found_client = single(loader.fire(events.CLIENT_GET, client_id=client_id))
    assert found_client.metadata["client_name"] == "Portal"
    assert client_id in [c.client_id for c in single(loader.fire(events.CLIENT_GET_ALL))]
    found_client.metadata["client_name"] = "Portal 2"
    loader.fire(events.CLIENT_UPDATE, client=found_client)
    assert (
        single(loader.fire(events.CLIENT_GET, client_id=client_id)).metadata["client_name"]
        == "Portal 2"
    )
    loader.fire(events.CLIENT_DELETE, client_id=client_id)

    loader.fire(
        events.CONFIGURATION_STORE, section="omejdn", data={"issuer": "https://id.example", "n": n}
    )
    assert single(loader.fire(events.CONFIGURATION_LOAD, section="omejdn", fallback={}))["n"] == n
    loader.fire(events.CONFIGURATION_STORE, section="webfinger", data=[{"rel": "issuer"}, {"n": n}])
    assert single(loader.fire(events.CONFIGURATION_LOAD, section="webfinger", fallback=[]))[1] == {
        "n": n
    }

    jwks = KeySet([generate_key("ES256")]).to_jwks(private=True)
    loader.fire(events.KEYS_STORE, target_type="omejdn", target=f"t{n}", jwks=jwks)
    loaded = single(loader.fire(events.KEYS_LOAD, target_type="omejdn", target=f"t{n}"))
    assert [k["kid"] for k in loaded["keys"]] == [k["kid"] for k in jwks["keys"]]
    published = single(loader.fire(events.KEYS_LOAD_ALL, target_type="omejdn"))
    assert jwks["keys"][0]["kid"] in [k["kid"] for k in published["keys"]]


def test_every_storage_event_works_through_transaction_pooling(
    bouncer: PgBouncer,
    database: ConnectionSettings,
    server: ConnectionSettings,
    tmp_path: Path,
    plain_sql: PlainSQL,
) -> None:
    pooled = through(bouncer, database)
    section = {
        "connection": dict(pooled.params),
        "passwords": {"bcrypt_rounds": 4},
        # LISTEN cannot work through transaction pooling: the cache listens directly.
        "cache": {"listen_connection": dict(database.params)},
    }
    assert parse_backend_section(section, "test").prepare is None  # auto, the default
    with PluginLoader.from_files([plugin_file(tmp_path, section)], base_dir=tmp_path) as loader:
        plugin = loader.plugins["postgres_backend"]
        assert isinstance(plugin, PostgresBackendPlugin)
        database_handle = plugin.database
        for n in range(ROUNDS):
            every_event(loader, n)
        # A batch (one transaction through the pooler) and a snapshot.
        host_users = [User(username=f"batch{i}", password=HASH) for i in range(3)]
        with database_handle.batch():
            for user in host_users:
                loader.fire(events.USER_CREATE, user=user, user_backend="postgres")
        with database_handle.snapshot():
            assert len(single(loader.fire(events.USER_GET_ALL))) == 3
        # The pooler was found, so psycopg prepares nothing on its connections.
        assert database_handle.read(prepare_threshold) is None
    assert plain_sql.value("SELECT count(*) FROM users") == 3
    assert plain_sql.value("SELECT value FROM configuration_omejdn WHERE key = 'n'") == ROUNDS - 1
    # It really went through PgBouncer, in transaction mode.
    pools = bouncer.admin("SHOW POOLS")
    assert any(row[0] == database.params["dbname"] and row[-1] == "transaction" for row in pools)


def test_prepared_statements_break_through_transaction_pooling_unless_turned_off(
    bouncer: PgBouncer, database: ConnectionSettings
) -> None:
    pooled = through(bouncer, database)

    def read(conn: Connection) -> Any:
        statement = text("SELECT count(*) FROM users WHERE username = :u")
        return conn.execute(statement, {"u": "x"}).scalar_one()

    def read_repeatedly(first: Database, second: Database) -> list[Any]:
        # Two clients (two host processes, say) taking turns on PgBouncer's server
        # connections: each names its statements _pg3_0, _pg3_1... on whichever
        # server connection its transaction got.
        return [db.read(read) for _ in range(3 * ROUNDS) for db in (first, second)]

    for prepare in (True, False, None):
        first = Database.connect(pooled, prepare=prepare)
        second = Database.connect(pooled, prepare=prepare)
        try:
            if prepare:
                with pytest.raises(StorageError, match="prepared statement"):
                    read_repeatedly(first, second)
            else:
                assert read_repeatedly(first, second) == [0] * (6 * ROUNDS)
        finally:
            first.dispose()
            second.dispose()


def test_auto_finds_the_pooler_and_leaves_a_direct_server_alone(
    bouncer: PgBouncer, database: ConnectionSettings
) -> None:
    with psycopg.connect(through(bouncer, database).conninfo()) as conn:
        assert behind_pooler(conn)
        assert not conn.info.transaction_status  # the probe left no transaction open
    with psycopg.connect(database.conninfo()) as conn:
        assert not behind_pooler(conn)
    direct = Database.connect(database)
    try:
        threshold = direct.read(prepare_threshold)
        assert threshold == 5  # psycopg's default: prepares stay on
    finally:
        direct.dispose()


def test_timeouts_behind_the_pooler_come_from_the_server_side(
    bouncer: PgBouncer, database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    """PgBouncer drops the startup ``options`` that carry them: set them on the role
    or database instead, as the README says, and they hold through the pooler."""
    dbname = database.params["dbname"]
    plain_sql.execute(f"ALTER DATABASE \"{dbname}\" SET statement_timeout = '200ms'")
    handle = Database.connect(through(bouncer, database))
    try:
        with pytest.raises(StorageError, match="statement timeout"):
            handle.read(lambda conn: conn.execute(text("SELECT pg_sleep(2)")))
    finally:
        handle.dispose()


@pytest.mark.slow
def test_point_read_latency_through_pgbouncer_and_direct(
    bouncer: PgBouncer,
    database: ConnectionSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reported, never asserted: USER_GET through PgBouncer against the same read direct."""
    loaders = {}
    with ExitStack() as stack:
        for label, connection in (("direct", database), ("pgbouncer", through(bouncer, database))):
            section = {
                "connection": dict(connection.params),
                "passwords": {"bcrypt_rounds": 4},
                "cache": False,
            }
            folder = tmp_path / label
            folder.mkdir()
            loaders[label] = stack.enter_context(
                PluginLoader.from_files([plugin_file(folder, section)], base_dir=folder)
            )
        alice = User(username="alice", password=HASH, attributes={"email": "a@example.org"})
        loaders["direct"].fire(events.USER_CREATE, user=alice, user_backend="postgres")
        measured = compare_latency(
            {
                label: (lambda loader=loader: loader.fire(events.USER_GET, username="alice"))
                for label, loader in loaders.items()
            }
        )
    with capsys.disabled():
        print("\n" + latency_line("point read (USER_GET)", measured, "direct"))
