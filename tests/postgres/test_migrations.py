"""Migrations on an empty database: one head, up and down, models match migrations.

Also the ways in (``alembic`` command, ``python -m omejdn_pg.postgres.migrate``, code)
and the models mapped onto rows written with plain SQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from omejdn_pg.errors import MigrationError, SchemaOutOfDate
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.engine import build_engine
from omejdn_pg.postgres.schema import (
    AttributeRecord,
    ClientFieldRecord,
    KeyRecord,
    UserRecord,
    dict_section_table,
    list_section_table,
    metadata,
)
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import REPO, python_m
from tests.kits.witness import PlainSQL, schema_differences

TABLES = ["attributes", "clients", "keys", "omejdn_pg_changes", "users"]


def table_names(sql: PlainSQL) -> list[str]:
    rows = sql.rows(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    )
    return [name for (name,) in rows]


@pytest.fixture
def sql(empty_database: ConnectionSettings) -> PlainSQL:
    return PlainSQL(empty_database)


@pytest.fixture
def sql_at_head(database: ConnectionSettings) -> PlainSQL:
    return PlainSQL(database)


def test_one_head_and_a_linear_history() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert scripts.get_heads() == [migrate.head()]
    revisions = [revision for revision, _ in migrate.history()]
    assert revisions[-1] == migrate.head()
    assert revisions[0] == "0001"
    assert all(message for _, message in migrate.history())


def test_the_revisions_written_down_for_the_schema_check_are_the_scripts() -> None:
    """The start-up check compares with ``migrate.REVISIONS`` instead of parsing the
    scripts; a new migration must be added there too, or every check is wrong."""
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert migrate.HEAD == scripts.get_current_head() == migrate.head()
    assert list(migrate.REVISIONS) == [revision for revision, _ in migrate.history()]


def test_the_schema_check_reads_the_revision_as_alembic_does(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    engine = build_engine(empty_database)
    try:
        for revision in [None, *migrate.REVISIONS]:
            if revision is not None:
                migrate.upgrade(empty_database, revision)
            with engine.connect() as conn:
                expected = MigrationContext.configure(conn).get_current_revision()
                assert expected == revision
                assert migrate.current(conn) == revision
        sql.execute("DELETE FROM alembic_version")
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() is None
            assert migrate.current(conn) is None
    finally:
        engine.dispose()


def test_the_schema_check_names_an_older_revision_and_the_fix(
    empty_database: ConnectionSettings,
) -> None:
    older = migrate.REVISIONS[-2]
    migrate.upgrade(empty_database, older)
    engine = build_engine(empty_database)
    try:
        with (
            engine.connect() as conn,
            pytest.raises(
                SchemaOutOfDate,
                match=rf"at schema revision {older}, this omejdn_pg needs {migrate.HEAD}; "
                r"run `omejdn-pg migrate",
            ),
        ):
            migrate.check_schema(conn)
    finally:
        engine.dispose()


def test_the_schema_check_loads_no_alembic(database: ConnectionSettings) -> None:
    """What ``omejdn-pg users list`` and the plugin's start-up pay for the check."""
    code = f"""
import sys
from omejdn_pg.postgres import migrate
from omejdn_pg.settings.connection import ConnectionSettings
database = migrate.connect(ConnectionSettings({dict(database.params)!r}))
try:
    database.read(migrate.check_schema)
finally:
    database.dispose()
print(sorted({{name.split(".")[0] for name in sys.modules}} & {{"alembic", "mako"}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_root_alembic_ini_uses_the_root_scripts() -> None:
    ini = (REPO / "alembic.ini").read_text()
    assert "script_location = %(here)s/alembic" in ini
    assert "sqlalchemy.url" not in ini.replace("# ", "").split("[alembic]")[1].split("[")[0]
    # A checkout (and an editable install) finds the scripts beside the package.
    assert Path(migrate.script_location()) == REPO / "alembic"
    assert (REPO / "alembic" / "env.py").is_file()


def test_upgrade_downgrade_upgrade(empty_database: ConnectionSettings, sql: PlainSQL) -> None:
    assert migrate.current(empty_database) is None
    assert migrate.pending(empty_database) == [r for r, _ in migrate.history()]

    migrate.upgrade(empty_database)
    assert table_names(sql) == ["alembic_version", *TABLES]
    assert migrate.current(empty_database) == migrate.head()
    assert migrate.pending(empty_database) == []
    assert schema_differences(empty_database) == []

    migrate.downgrade(empty_database)
    assert table_names(sql) == ["alembic_version"]
    assert migrate.current(empty_database) is None

    migrate.upgrade(empty_database)
    assert table_names(sql) == ["alembic_version", *TABLES]
    assert schema_differences(empty_database) == []


def _change_objects(sql: PlainSQL) -> list[str]:
    """The change protocol's functions, triggers and sequence, by name."""
    rows = sql.rows(
        "SELECT proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace "
        "UNION ALL SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
        "UNION ALL SELECT relname FROM pg_class WHERE relkind = 'S' "
        "AND relnamespace = current_schema()::regnamespace ORDER BY 1"
    )
    return [name for (name,) in rows]


def test_0005_down_to_0004_and_up_again(empty_database: ConnectionSettings, sql: PlainSQL) -> None:
    """Per-session counters replace the one row per group, and back: 0004's function
    and triggers come back as they were, and writes are announced under either."""
    migrate.upgrade(empty_database, "0004")
    at_0004 = _change_objects(sql)
    assert "omejdn_pg_rows_notify" in at_0004
    migrate.upgrade(empty_database)
    at_0005 = _change_objects(sql)
    assert "omejdn_pg_change_seq" in at_0005
    assert "omejdn_pg_users_updated" in at_0005
    assert "omejdn_pg_rows_notify" not in at_0005
    sql.execute("INSERT INTO users (username) VALUES ('alice')")
    assert sql.rows("SELECT name, prior FROM omejdn_pg_changes") == [("user", None)]

    migrate.downgrade(empty_database, "0004")
    assert migrate.current(empty_database) == "0004"
    assert _change_objects(sql) == at_0004
    assert sorted(sql.rows("SELECT name, counter FROM omejdn_pg_changes")) == [
        ("client", 0),
        ("config", 0),
        ("keys", 0),
        ("user", 0),
    ]
    with psycopg.connect(sql.settings.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT omejdn_pg_changed('user', 'alice')").fetchone() == (1,)
    migrate.upgrade(empty_database)
    assert _change_objects(sql) == at_0005
    assert schema_differences(empty_database) == []


def test_0006_numbers_existing_rows_by_name_and_new_ones_after_them(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    """Creation order for listings: an upgraded database lists as before (by name, "C"
    collation), a later create comes last, and the downgrade drops the columns."""
    migrate.upgrade(empty_database, "0005")
    sql.execute("INSERT INTO users (username) VALUES ('bob'), ('alice'), ('Zoe')")
    sql.execute(
        "INSERT INTO clients (client_id, key, value) VALUES ('web', 'client_id', '\"web\"'), "
        "('web', 'name', '\"Web\"'), ('api', 'client_id', '\"api\"')"
    )
    migrate.upgrade(empty_database, "0006")
    assert sql.rows("SELECT username, ordinal FROM users ORDER BY ordinal") == [
        ("Zoe", 1),
        ("alice", 2),
        ("bob", 3),
    ]
    assert sql.rows("SELECT client_id, key, ordinal FROM clients ORDER BY ordinal, key") == [
        ("api", "client_id", 1),
        ("web", "client_id", 2),
        ("web", "name", 2),
    ]
    sql.execute("INSERT INTO users (username) VALUES ('aaron')")
    sql.execute("INSERT INTO clients (client_id, key, value) VALUES ('app', 'client_id', '1')")
    assert sql.value("SELECT ordinal FROM users WHERE username = 'aaron'") == 4
    assert sql.value("SELECT ordinal FROM clients WHERE client_id = 'app'") == 3
    with pytest.raises(psycopg.errors.UniqueViolation):
        sql.execute("INSERT INTO users (username, ordinal) VALUES ('eve', 4)")

    migrate.downgrade(empty_database, "0005")
    assert (
        sql.rows(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND column_name = 'ordinal'"
        )
        == []
    )
    assert sql.value("SELECT count(*) FROM users") == 4
    migrate.upgrade(empty_database)
    assert sql.rows("SELECT username FROM users ORDER BY ordinal") == [
        ("Zoe",),
        ("aaron",),
        ("alice",),
        ("bob",),
    ]
    assert schema_differences(empty_database) == []


def test_the_schema_is_the_models_schema(empty_database: ConnectionSettings, sql: PlainSQL) -> None:
    migrate.upgrade(empty_database)
    constraints = sql.rows(
        "SELECT conrelid::regclass::text, conname, contype FROM pg_constraint "
        "WHERE connamespace = current_schema()::regnamespace AND conrelid <> 0 ORDER BY 1, 2"
    )
    assert constraints == [
        ("alembic_version", "alembic_version_pkc", "p"),
        ("attributes", "ck_attributes_type", "c"),
        ("attributes", "pk_attributes", "p"),
        ("clients", "pk_clients", "p"),
        ("keys", "ck_keys_state", "c"),
        ("keys", "ck_keys_type", "c"),
        ("keys", "pk_keys", "p"),
        ("omejdn_pg_changes", "ck_omejdn_pg_changes_name", "c"),
        ("omejdn_pg_changes", "pk_omejdn_pg_changes", "p"),
        ("users", "pk_users", "p"),
    ]
    columns = sql.rows(
        "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name <> 'alembic_version' ORDER BY table_name, ordinal_position"
    )
    assert columns == [
        ("attributes", "type", "text", "NO", None),
        ("attributes", "identifier", "text", "NO", None),
        ("attributes", "key", "text", "NO", None),
        ("attributes", "value", "jsonb", "NO", None),
        ("attributes", "ordinal", "bigint", "NO", None),
        ("clients", "client_id", "text", "NO", None),
        ("clients", "key", "text", "NO", None),
        ("clients", "value", "jsonb", "NO", None),
        ("clients", "ordinal", "bigint", "NO", None),
        ("keys", "target_type", "text", "NO", None),
        ("keys", "target", "text", "NO", None),
        ("keys", "type", "text", "NO", None),
        ("keys", "value", "text", "NO", None),
        ("keys", "kid", "text", "NO", "''::text"),
        ("keys", "params", "jsonb", "NO", "'{}'::jsonb"),
        ("keys", "state", "text", "NO", "'active'::text"),
        ("keys", "position", "integer", "NO", "0"),
        ("keys", "created_at", "timestamp with time zone", "NO", "now()"),
        ("keys", "activate_at", "timestamp with time zone", "YES", None),
        ("keys", "retired_at", "timestamp with time zone", "YES", None),
        ("keys", "destroy_at", "timestamp with time zone", "YES", None),
        ("omejdn_pg_changes", "name", "text", "NO", None),
        ("omejdn_pg_changes", "writer", "integer", "NO", None),
        ("omejdn_pg_changes", "counter", "bigint", "NO", None),
        ("omejdn_pg_changes", "prior", "bigint", "YES", None),
        ("omejdn_pg_changes", "xact", "bigint", "NO", None),
        ("omejdn_pg_changes", "announced", "ARRAY", "YES", None),
        ("omejdn_pg_changes", "changed_at", "timestamp with time zone", "NO", None),
        ("users", "username", "text", "NO", None),
        ("users", "password", "text", "YES", None),
        ("users", "extern", "text", "YES", None),
        ("users", "consent", "jsonb", "NO", "'{}'::jsonb"),
        ("users", "ordinal", "bigint", "NO", None),
    ]
    with pytest.raises(psycopg.errors.CheckViolation):
        sql.execute("INSERT INTO keys VALUES ('jwt', 'omejdn', 'pk', 'x')")
    with pytest.raises(psycopg.errors.CheckViolation):
        sql.execute(
            "INSERT INTO keys (target_type, target, type, value, state) "
            "VALUES ('jwt', 'omejdn', 'sk', 'x', 'paused')"
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        sql.execute("INSERT INTO attributes VALUES ('group', 'g', 'k', '1')")


def test_models_match_migrations_even_with_configuration_tables(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    migrate.upgrade(empty_database)
    engine = build_engine(empty_database)
    try:
        with engine.begin() as conn:
            dict_section_table("foo").create(conn)
            list_section_table("bar").create(conn)
    finally:
        engine.dispose()
    sql.execute("""INSERT INTO configuration_foo VALUES ('a', '1')""")
    assert schema_differences(empty_database) == []

    # The filter is what keeps them out: without it, autogenerate would drop them.
    engine = build_engine(empty_database)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            unfiltered = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert {diff[1].name for diff in unfiltered if diff[0] == "remove_table"} == {
        "configuration_foo",
        "configuration_bar",
    }


def test_downgrade_leaves_configuration_tables_alone(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    migrate.upgrade(empty_database)
    sql.execute("CREATE TABLE configuration_omejdn (key TEXT PRIMARY KEY, value JSONB NOT NULL)")
    sql.execute("""INSERT INTO configuration_omejdn VALUES ('issuer', '"https://a.example"')""")
    migrate.downgrade(empty_database)
    assert table_names(sql) == ["alembic_version", "configuration_omejdn"]
    assert sql.value("SELECT value FROM configuration_omejdn") == "https://a.example"


def test_upgrade_on_a_shared_connection_belongs_to_the_callers_transaction(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    engine = build_engine(empty_database)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            migrate.upgrade(conn)
            assert migrate.current(conn) == migrate.head()
            transaction.rollback()
        assert table_names(sql) == []

        with engine.begin() as conn:
            migrate.upgrade(conn)
        assert table_names(sql) == ["alembic_version", *TABLES]
    finally:
        engine.dispose()


def test_a_database_serves_several_commands_on_one_connection(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    database = migrate.connect(empty_database)
    connects: list[object] = []
    event.listen(database.engine, "connect", lambda *_: connects.append(1))
    try:
        assert migrate.current(database) is None
        assert migrate.pending(database) == [revision for revision, _ in migrate.history()]
        migrate.upgrade(database)
        assert migrate.current(database) == migrate.head()
        assert migrate.pending(database) == []
        with pytest.raises(MigrationError, match="nosuchrevision"):
            migrate.upgrade(database, "nosuchrevision")
        migrate.downgrade(database)
        assert migrate.current(database) is None
    finally:
        database.dispose()
    assert len(connects) == 1
    assert table_names(sql) == ["alembic_version"]


def test_the_packaged_scripts_are_parsed_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[object] = []
    original = ScriptDirectory.from_config

    def counting(*args: object, **kwargs: object) -> ScriptDirectory:
        parsed.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ScriptDirectory, "from_config", counting)
    migrate._scripts.cache_clear()
    try:
        head = migrate.head()
        history = migrate.history()
        assert migrate.pending_after(None) == [revision for revision, _ in history]
        assert migrate.pending_after(head) == []
        assert migrate.head() == head
    finally:
        migrate._scripts.cache_clear()
    assert len(parsed) == 1


def test_check_schema(empty_database: ConnectionSettings, sql: PlainSQL) -> None:
    engine = build_engine(empty_database)
    try:
        with (
            engine.connect() as conn,
            pytest.raises(SchemaOutOfDate, match=r"no omejdn_pg schema.*omejdn-pg migrate"),
        ):
            migrate.check_schema(conn)
        migrate.upgrade(empty_database)
        with engine.connect() as conn:
            migrate.check_schema(conn)
        sql.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        with (
            engine.connect() as conn,
            pytest.raises(SchemaOutOfDate, match=r"ffffffffffff.*upgrade omejdn_pg"),
        ):
            migrate.check_schema(conn)
        with pytest.raises(MigrationError, match="upgrade omejdn_pg"):
            migrate.pending(empty_database)
    finally:
        engine.dispose()


def test_unknown_revision_is_a_migration_error(empty_database: ConnectionSettings) -> None:
    with pytest.raises(MigrationError, match="nosuchrevision"):
        migrate.upgrade(empty_database, "nosuchrevision")


def test_connection_settings_resolution(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins.yml"
    plugins.write_text(
        "plugins:\n  postgres_backend:\n    connection:\n"
        "      host: db.example\n      dbname: fromyaml\n      password: 'p%ss'\n"
    )
    environ = {"OMEJDN_PLUGINS": str(plugins), "OMEJDN_PG_URL": "postgresql://u@envhost/fromenv"}
    assert migrate.connection_settings("dbname=fromarg", environ).params == {"dbname": "fromarg"}
    assert migrate.connection_settings(None, environ).params["dbname"] == "fromenv"
    del environ["OMEJDN_PG_URL"]
    from_yaml = migrate.connection_settings(None, environ)
    assert from_yaml.params == {"host": "db.example", "dbname": "fromyaml", "password": "p%ss"}
    assert migrate.connection_settings(None, {}).params == {}


def _alembic(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return python_m("alembic", *args, env=env, cwd=REPO)


def test_the_alembic_command(empty_database: ConnectionSettings, sql: PlainSQL) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMEJDN_PG_URL", "OMEJDN_PLUGINS")}
    url = empty_database.conninfo()

    done = _alembic(["-x", f"url={url}", "upgrade", "head"], env)
    assert done.returncode == 0, done.stderr
    assert table_names(sql) == ["alembic_version", *TABLES]

    done = _alembic(["check"], {**env, "OMEJDN_PG_URL": url})
    assert done.returncode == 0, done.stderr
    assert "No new upgrade operations detected" in done.stdout + done.stderr

    done = _alembic(["downgrade", "base"], {**env, "OMEJDN_PG_URL": url})
    assert done.returncode == 0, done.stderr
    assert table_names(sql) == ["alembic_version"]

    done = _alembic(["upgrade", "head", "--sql"], env)
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE users" in done.stdout
    assert "CONSTRAINT ck_attributes_type CHECK" in done.stdout


def test_python_m_omejdn_pg_migrate(empty_database: ConnectionSettings, sql: PlainSQL) -> None:
    done = python_m("omejdn_pg.postgres.migrate", "--url", empty_database.conninfo())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == migrate.head()
    assert table_names(sql) == ["alembic_version", *TABLES]


def test_python_m_omejdn_pg_migrate_reports_errors_without_a_traceback() -> None:
    done = python_m(
        "omejdn_pg.postgres.migrate",
        "--url",
        "host=127.0.0.1 port=1 password=sekrit connect_timeout=2",
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    assert "sekrit" not in done.stderr


# --- the models: the schema's definition, mapped onto the real rows -------------


def test_the_models_declare_tables_not_relationships() -> None:
    # The repositories run Core statements; a relationship would be exercised by nothing.
    mappers = list(UserRecord.registry.mappers)
    assert {m.class_ for m in mappers} >= {
        UserRecord,
        ClientFieldRecord,
        AttributeRecord,
        KeyRecord,
    }
    assert [
        (m.class_.__name__, list(m.relationships.keys())) for m in mappers if m.relationships
    ] == []
    assert set(TABLES) <= set(metadata.tables)


def test_the_models_map_rows_written_with_plain_sql(
    database: ConnectionSettings, sql_at_head: PlainSQL
) -> None:
    sql_at_head.execute(
        "INSERT INTO users (username, password) VALUES ('alice', 'h1');"
        "INSERT INTO attributes VALUES ('user', 'alice', 'age', '42');"
        "INSERT INTO clients VALUES ('app', 'client_id', '\"app\"');"
        "INSERT INTO keys (target_type, target, type, value) VALUES ('omejdn', 'omejdn', 'sk', 'x')"
    )
    engine = build_engine(database)
    try:
        with Session(engine) as session:
            alice = session.get(UserRecord, "alice")
            assert alice is not None
            assert (alice.password, alice.extern, alice.consent) == ("h1", None, {})
            age = session.get(AttributeRecord, ("user", "alice", "age"))
            assert age is not None
            assert age.value == 42
            field = session.get(ClientFieldRecord, ("app", "client_id"))
            assert field is not None
            assert field.value == "app"
            key = session.scalars(select(KeyRecord)).one()
            assert (key.kid, key.state, key.position, key.params) == ("", "active", 0, {})
    finally:
        engine.dispose()


def _announcements(settings: ConnectionSettings) -> list[str]:
    """What ``omejdn_pg_count`` announces for one key, the same key again, a NULL key and
    several keys, each step in its own transaction or sharing one: the notices' group and
    key (the rest of a payload is the writer, the counters and the time)."""
    steps = [
        [["a"]],
        [["a"], ["a"], [None]],
        [[None]],
        [["b"], ["c", "b", "c"], ["c", "d"]],
        [["e", "e"]],
    ]
    with (
        psycopg.connect(settings.conninfo(), autocommit=True) as listener,
        psycopg.connect(settings.conninfo(), autocommit=True) as writer,
    ):
        listener.execute("LISTEN omejdn_pg_changes")
        for transaction in steps:
            with writer.transaction():
                for keys in transaction:
                    writer.execute("SELECT omejdn_pg_count('config', %s::text[])", (keys,))
        return [
            notice.payload.rsplit(":", 2)[0]
            for notice in listener.notifies(timeout=2, stop_after=9)
        ]


def test_0008_announces_one_key_without_a_sort_and_as_before(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    """0008 changes how ``omejdn_pg_count`` finds a single key already announced, not what
    is announced: the same notices at 0007 and at 0008, and 0007's function after the
    downgrade."""
    migrate.upgrade(empty_database, "0007")
    before = _announcements(empty_database)
    assert before == [
        "config:a",
        "config:a",
        "config:*",
        "config:b",
        "config:c",
        "config:d",
        "config:e",
    ]
    definition = "SELECT prosrc FROM pg_proc WHERE proname = 'omejdn_pg_count'"
    guarded = (
        "SELECT prosecdef, proconfig::text, "
        "has_function_privilege('public', 'omejdn_pg_count(text, text[])', 'EXECUTE') "
        "FROM pg_proc WHERE proname = 'omejdn_pg_count'"
    )
    sorted_body = sql.value(definition)
    guards = sql.rows(guarded)
    security_definer, _, anyone_may_call = guards[0]
    assert security_definer is True
    assert anyone_may_call is False

    migrate.upgrade(empty_database, "0008")
    assert "cardinality(changed_keys) = 1" in sql.value(definition)
    assert sql.rows(guarded) == guards
    assert _announcements(empty_database) == before

    migrate.downgrade(empty_database, "0007")
    assert sql.value(definition) == sorted_body
