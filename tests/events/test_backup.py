"""Backup and restore against a real PostgreSQL: everything comes back, byte for byte.

A database is filled the way a deployment fills it — users with consent and
extern, clients with keys, sections of every shape (ours and the Ruby
plugin's), a key set mid-rotation with a retired, an active and a next key,
sealed and unsealed — backed up, and restored into a fresh database. Every
table is compared with plain SQL, not through the code under test; the
lifecycle is then advanced in both and must do the same thing.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from omejdn_pg.entities import Client, User
from omejdn_pg.errors import BackupError
from omejdn_pg.host import events
from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.postgres.repositories.config import ConfigRepository
from omejdn_pg.sealing import generate_secret, is_sealed
from omejdn_pg.service import backup as service
from omejdn_pg.service import restore as restoring
from omejdn_pg.service.backup_format import read_backup
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.conftest import create_database, drop_database
from tests.kits.plugins import plugin_file
from tests.kits.witness import PlainSQL
from tests.secrets import watch

KEK_ENV = "OMEJDN_PG_TEST_BACKUP_KEK"
EXACT = "0.1000000000000000055511151231257827"
"""A number a float cannot hold: it must come back with every digit."""
ALICE_HASH = "$2a$04$" + "a" * 53
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(params=["unsealed", "sealed"])
def settings(
    request: pytest.FixtureRequest, database: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> BackendSettings:
    settings = BackendSettings(connection=database)
    if request.param == "sealed":
        monkeypatch.setenv(KEK_ENV, watch(generate_secret()))
        settings = dataclasses.replace(settings, key_encryption=({"id": "kek-1", "env": KEK_ENV},))
    return settings


def fill(host: Host, sql: PlainSQL) -> None:
    """A deployment's worth of everything the tables can hold."""
    host.users.add(
        User(
            username="alice",
            password=ALICE_HASH,
            attributes={"email": "alice@example.org", "n": 1.5},
            consent={"app": ["openid", "profile"]},
        )
    )
    host.users.add(User(username="bob", extern="oidc-provider", attributes={"x": [1, None]}))
    host.users.add(User(username="aaron", extern="oidc-provider"))  # listed after bob
    host.clients.add(
        Client(
            metadata={
                "client_id": "app",
                "redirect_uris": ["https://app.example/cb"],
                "jwks": KeySet([generate_key("ES256").public()]).to_jwks(private=False),
            },
            attributes={"omejdn": "write"},
        )
    )
    host.clients.add(Client(metadata={"client_id": "plain", "client_secret": "s"}))
    host.config.write("omejdn", {"issuer": "https://id.example", "openid": True})
    # A list rewritten, so its positions do not start at 1.
    host.config.write("scopes", ["a", "b"])
    host.config.write("scopes", ["c", {"d": [1, 2]}, "e"])
    database = host.postgres.database if host.postgres else None
    assert database is not None
    database.write(lambda conn: ConfigRepository(conn).provision("webfinger"))
    # The Ruby plugin's layouts: JSON as text, a list without positions.
    sql.execute("CREATE TABLE configuration_ruby (key TEXT PRIMARY KEY, value TEXT)")
    sql.execute("""INSERT INTO configuration_ruby VALUES ('z', '{"b":1.50}'), ('a', '"x"')""")
    sql.execute("CREATE TABLE configuration_rubylist (item TEXT)")
    sql.execute("""INSERT INTO configuration_rubylist VALUES ('3'), ('1'), ('"two"')""")
    sql.execute(
        "UPDATE attributes SET value = %s::jsonb WHERE identifier = 'alice' AND key = 'n'",
        (EXACT,),
    )
    # A key set mid-rotation: retired, active and next keys.
    host.keys.signing_key()
    host.keys.rotate("omejdn", "omejdn", publish_for=datetime.timedelta(0), now=NOW)
    host.keys.maintain(now=NOW)
    host.keys.rotate("omejdn", "omejdn", now=NOW)
    host.keys.store("omejdn", "federation", KeySet([generate_key("PS256")]))


def table_names(sql: PlainSQL) -> list[str]:
    return [
        name
        for (name,) in sql.rows(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename NOT IN ('alembic_version', 'omejdn_pg_changes') ORDER BY 1"
        )
    ]


def contents(sql: PlainSQL) -> dict[str, Any]:
    """Every table's columns (with types and comment) and rows, in a fixed order; jsonb
    and timestamps as PostgreSQL prints them."""
    found: dict[str, Any] = {}
    for name in table_names(sql):
        columns = sql.rows(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (name,),
        )
        comment = sql.value("SELECT obj_description(%s::regclass, 'pg_class')", (name,))
        listed = ", ".join(f"{column}::text" for column, _type, _null in columns)
        rows = sql.rows(f"SELECT {listed} FROM {name} ORDER BY ctid")
        found[name] = (columns, comment, sorted(rows, key=repr) if name in BY_KEY else rows)
    return found


BY_KEY = {"users", "clients", "attributes", "keys"}
"""Tables whose physical order is no part of their content."""


def keys_answers(host: Host) -> tuple[Any, ...]:
    return (
        host.keys.load("omejdn", "omejdn").to_jwks(private=True),
        host.keys.load("omejdn", "federation").to_jwks(private=True),
        host.keys.jwks("omejdn"),
        host.keys.jwks("clients"),
    )


def test_backup_then_restore_gives_the_same_rows_and_the_same_lifecycle(
    settings: BackendSettings, other_database: ConnectionSettings, tmp_path: Path
) -> None:
    source_sql, target_sql = PlainSQL(settings.connection), PlainSQL(other_database)
    with Host.from_settings(settings) as source:
        fill(source, source_sql)
        file = tmp_path / "omejdn.backup"
        summary = service.write_backup_file(source.postgres.database, file)  # type: ignore[union-attr]
        before = keys_answers(source)

        restored_db = Database.connect(other_database)
        try:
            report = restoring.restore(restored_db, read_backup(file.read_bytes(), str(file)))
        finally:
            restored_db.dispose()

        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir()] == ["omejdn.backup"]  # no temporary left
        assert report.counts == summary.counts
        assert summary.counts["users"] == 3
        assert summary.counts["configuration_scopes"] == 3
        assert contents(target_sql) == contents(source_sql)
        values = [
            v
            for (v,) in target_sql.rows(
                "SELECT value FROM keys WHERE type LIKE '%sk' AND target_type = 'omejdn'"
            )
        ]
        assert all(is_sealed(v) for v in values) == bool(settings.key_encryption)
        assert target_sql.value(
            "SELECT value::text FROM attributes WHERE identifier = 'alice' AND key = 'n'"
        ) == (EXACT)
        assert target_sql.value("SELECT max(position) FROM configuration_scopes") == 5
        assert target_sql.value(
            "SELECT obj_description('configuration_webfinger'::regclass, 'pg_class')"
        )
        assert target_sql.value("SELECT value FROM configuration_ruby WHERE key = 'z'") == (
            '{"b":1.50}'
        )

        with Host.from_settings(dataclasses.replace(settings, connection=other_database)) as copy:
            assert keys_answers(copy) == before
            assert copy.config.read("ruby") == {"z": {"b": 1.5}, "a": "x"}
            assert copy.config.read("rubylist") == [3, 1, "two"]
            assert copy.config.read("webfinger") is None
            assert copy.users.find("alice") == source.users.find("alice")
            # Listings keep their creation order, and a new user still comes last.
            assert [u.username for u in copy.users.all()] == ["alice", "bob", "aaron"]
            assert [c.client_id for c in copy.clients.all()] == ["app", "plain"]
            copy.users.add(User(username="abe", extern="oidc-provider"))
            assert [u.username for u in copy.users.all()][-1] == "abe"
            # A new list item continues after the restored positions.
            copy.config.write("scopes", ["c", {"d": [1, 2]}, "e", "f"])
            # The lifecycle goes on where it stopped: the next key activates, and the
            # retired key still goes, in the copy exactly as in the original.
            later = NOW + datetime.timedelta(days=400)
            changes = [(c.kid, c.change) for c in source.keys.maintain(now=later)]
            assert ("destroyed" in {change for _kid, change in changes}) is True
            assert "activated" in {change for _kid, change in changes}
            assert [(c.kid, c.change) for c in copy.keys.maintain(now=later)] == changes
            assert keys_answers(copy) == keys_answers(source)


def test_restore_announces_every_group_to_the_caches(
    database: ConnectionSettings, other_database: ConnectionSettings, db: Database
) -> None:
    data = io.BytesIO()
    service.backup(db, data)
    backup = read_backup(data.getvalue(), "backup")
    with psycopg.connect(other_database.conninfo(), autocommit=True) as listener:
        listener.execute("LISTEN omejdn_pg_changes")
        target = Database.connect(other_database)
        try:
            restoring.restore(target, backup)
        finally:
            target.dispose()
        heard = {notice.payload.split(":")[:2][0] for notice in listener.notifies(timeout=2)}
    assert {"config", "keys", "client", "user"} <= heard


def test_a_running_servers_cached_answers_follow_a_restore(
    db: Database, plain_sql: PlainSQL, other_database: ConnectionSettings, tmp_path: Path
) -> None:
    """A server on the target keeps configuration and keys in its read cache; after a
    restore it answers what the backup holds within the cache's bound, not what it kept."""
    with Host.from_settings(BackendSettings(connection=plain_sql.settings)) as source:
        source.config.write("omejdn", {"issuer": "https://restored.example"})
        restored_kid = source.keys.signing_key().kid
    out = io.BytesIO()
    service.backup(db, out)
    backup = read_backup(out.getvalue(), "backup")

    path = plugin_file(tmp_path / "plugins.yml", other_database, cache="{max_staleness: 0.5}")
    loader = PluginLoader.from_files([path], base_dir=tmp_path)
    try:
        postgres = loader.plugins["postgres_backend"]
        assert isinstance(postgres, PostgresBackendPlugin)
        assert postgres.cache is not None
        assert postgres.cache.wait_until_serving(10)
        loader.fire(events.CONFIGURATION_STORE, section="omejdn", data={"issuer": "https://old"})
        loader.fire(
            events.KEYS_STORE,
            target_type="omejdn",
            target="omejdn",
            jwks=KeySet([generate_key("ES256")]).to_jwks(private=True),
        )

        def answers() -> tuple[Any, list[str]]:
            (section,) = loader.fire(events.CONFIGURATION_LOAD, section="omejdn", fallback=None)
            (keys,) = loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn")
            return section, [key["kid"] for key in keys["keys"]]

        statements = count_statements(postgres.database.engine)
        for _ in range(50):  # until both come from the cache
            before = len(statements)
            old = answers()
            if len(statements) == before:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the answers were never served from the cache")
        assert old[0] == {"issuer": "https://old"}

        restorer = Database.connect(other_database)
        try:
            restoring.restore(restorer, backup, replace=True)
        finally:
            restorer.dispose()

        deadline = time.monotonic() + 0.5 + 1.0
        while answers() != ({"issuer": "https://restored.example"}, [restored_kid]):
            assert time.monotonic() < deadline, answers()
            time.sleep(0.005)
    finally:
        loader.close()


def test_a_backup_taken_while_the_server_writes_is_one_consistent_state(
    database: ConnectionSettings, db: Database
) -> None:
    """Each user is created with its attribute in one transaction; no backup taken
    meanwhile may hold a user without its attribute, or an attribute without its user."""
    stop = threading.Event()
    created: list[int] = []

    def write() -> None:
        with Host.from_settings(BackendSettings(connection=database)) as host:
            while not stop.is_set():
                host.users.add(User(username=f"u{len(created)}", attributes={"n": len(created)}))
                created.append(1)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = []
        while len(seen) < 5 or len(created) < 50:
            out = io.BytesIO()
            service.backup(db, out)
            tables = {t.name: t for t in read_backup(out.getvalue(), "backup").tables}
            users = {json.loads(row)["username"] for row in tables["users"].rows}
            owners = {json.loads(row)["identifier"] for row in tables["attributes"].rows}
            assert users == owners
            seen.append(len(users))
    finally:
        stop.set()
        writer.join()
    assert len(set(seen)) > 1  # the writer did write while backups were taken


# --- refusals: nothing is written --------------------------------------------------


@pytest.fixture
def backup_bytes(db: Database, plain_sql: PlainSQL) -> bytes:
    plain_sql.execute("INSERT INTO users (username, password) VALUES ('alice', 'x'), ('bob', 'y')")
    plain_sql.execute(
        """INSERT INTO attributes VALUES ('user', 'alice', 'email', '"a@example.org"')"""
    )
    out = io.BytesIO()
    service.backup(db, out)
    return out.getvalue()


def rewritten(data: bytes, old: bytes, new: bytes, *, checksum: bool) -> bytes:
    """``data`` with ``old`` replaced; with ``checksum``, the manifest made to match again."""
    changed = data.replace(old, new, 1)
    assert changed != data
    if not checksum:
        return changed
    lines = changed.split(b"\n")[:-1]
    body = b"".join(line + b"\n" for line in lines[:-1])
    manifest = json.loads(lines[-1])
    header = json.loads(lines[0])
    manifest["manifest"].update(
        {k: header[k] for k in ("version", "schema_revision")},
        sha256=hashlib.sha256(body).hexdigest(),
    )
    return body + json.dumps(manifest).encode() + b"\n"


def restore_into(settings: ConnectionSettings, data: bytes, **options: bool) -> Any:
    target = Database.connect(settings)
    try:
        return restoring.restore(target, read_backup(data, "the file"), **options)
    finally:
        target.dispose()


def users_of(settings: ConnectionSettings) -> list[tuple[Any, ...]]:
    return PlainSQL(settings).rows("SELECT username FROM users ORDER BY 1")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[: d.rfind(b"\n", 0, len(d) - 1) + 1], "truncated: the last line"),
        (lambda d: d.replace(b"alice", b"alicf", 1), "checksum mismatch"),
        (lambda d: d.replace(b'"sha256": "', b'"sha256": "0', 1), "checksum mismatch"),
        (lambda d: d.replace(b'"version": 2', b'"version": 3', 1), "format version 3 is newer"),
        (lambda d: b"", "empty file"),
        (lambda d: b"PGDMP\x01\x0e", "not an omejdn-pg backup"),
        (
            lambda d: rewritten(d, b'"bob"', b'"bob", "extra": 1', checksum=True),
            "exactly the columns",
        ),
        (
            lambda d: rewritten(d, b'"type":"user"', b'"type":"owner"', checksum=True),
            "is not one of",
        ),
        (
            lambda d: rewritten(
                d, b'"schema_revision": "', b'"schema_revision": "9', checksum=True
            ),
            "does not know",
        ),
        (
            lambda d: rewritten(d, b'"rows": 2', b'"rows": 3', checksum=True),
            r"line 5: table users: a row must have exactly the columns",
        ),
        (
            lambda d: rewritten(
                d, b'"rows": 0}\n{"manifest', b'"rows": 1}\n{"manifest', checksum=True
            ),
            "announces 1 rows",
        ),
    ],
)
def test_a_damaged_file_is_refused_naming_what_is_wrong_and_nothing_is_written(
    backup_bytes: bytes, other_database: ConnectionSettings, damage: Any, message: str
) -> None:
    with pytest.raises(BackupError, match=message):
        restore_into(other_database, damage(backup_bytes))
    assert users_of(other_database) == []
    assert restore_into(other_database, backup_bytes).counts["users"] == 2


def test_a_non_empty_database_is_refused_unless_replace(
    backup_bytes: bytes, other_database: ConnectionSettings
) -> None:
    sql = PlainSQL(other_database)
    sql.execute("INSERT INTO users (username) VALUES ('carol')")
    sql.execute("CREATE TABLE configuration_extra (key TEXT PRIMARY KEY, value JSONB)")

    with pytest.raises(BackupError, match=r"not empty \(it holds 1 users rows, 1 config"):
        restore_into(other_database, backup_bytes)
    with pytest.raises(BackupError, match="not empty"):
        restore_into(other_database, backup_bytes, dry_run=True)
    assert users_of(other_database) == [("carol",)]

    dry = restore_into(other_database, backup_bytes, replace=True, dry_run=True)
    assert dry.dry_run
    assert dry.replaced == {"users rows": 1, "configuration sections": 1}
    assert users_of(other_database) == [("carol",)]

    restore_into(other_database, backup_bytes, replace=True)
    assert users_of(other_database) == [("alice",), ("bob",)]
    assert sql.value("SELECT to_regclass('configuration_extra')") is None


def test_a_dry_run_verifies_and_writes_nothing(
    backup_bytes: bytes, other_database: ConnectionSettings
) -> None:
    report = restore_into(other_database, backup_bytes, dry_run=True)
    assert report.counts["users"] == 2
    assert users_of(other_database) == []


def test_an_older_database_is_refused_and_an_older_backup_restores_into_head(
    server: ConnectionSettings,
    empty_database: ConnectionSettings,
    other_database: ConnectionSettings,
) -> None:
    # A database at the baseline: keys had no kid, descriptor or lifecycle columns.
    migrate.upgrade(empty_database, "0001")
    old_sql = PlainSQL(empty_database)
    key = generate_key("RS256")
    old_sql.execute("INSERT INTO users (username, password) VALUES ('bob', 'x'), ('alice', 'x')")
    old_sql.execute(
        "INSERT INTO keys (target_type, target, type, value) VALUES ('omejdn', 'omejdn', 'sk', %s)",
        (key.key_pem(),),
    )
    old = Database.connect(empty_database)
    try:
        out = io.BytesIO()
        service.backup(old, out)
    finally:
        old.dispose()
    data = out.getvalue()
    assert b'"schema_revision": "0001"' in data

    report = restore_into(other_database, data)

    assert (report.backup_revision, report.database_revision) == ("0001", migrate.HEAD)
    sql = PlainSQL(other_database)
    assert sql.rows("SELECT kid, type, state, position, params::text FROM keys") == [
        ("", "sk", "active", 0, "{}")
    ]
    # Users of a backup from before 0006 list by name, as the migration numbers them.
    assert sql.rows("SELECT username, ordinal FROM users ORDER BY ordinal") == [
        ("alice", 1),
        ("bob", 2),
    ]
    with Host.from_settings(BackendSettings(connection=other_database)) as host:
        assert host.keys.signing_key().same_key(key)
        host.users.add(User(username="aaron", extern="oidc-provider"))
        assert [u.username for u in host.users.all()] == ["alice", "bob", "aaron"]

    # And the other way round: a head backup into a database at 0003 is refused.
    name = create_database(server)
    try:
        older = server.with_params(dbname=name)
        migrate.upgrade(older, "0003")
        head_backup = io.BytesIO()
        head = Database.connect(other_database)
        try:
            service.backup(head, head_backup)
        finally:
            head.dispose()
        with pytest.raises(BackupError, match="at schema revision 0003, older than the backup"):
            restore_into(older, head_backup.getvalue())
    finally:
        drop_database(server, name)


def test_an_existing_file_is_kept_unless_force(db: Database, tmp_path: Path) -> None:
    file = tmp_path / "b.jsonl"
    file.write_text("precious")
    with pytest.raises(BackupError, match="exists"):
        service.write_backup_file(db, file)
    assert file.read_text() == "precious"
    os.chmod(file, 0o644)
    service.write_backup_file(db, file, force=True)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert read_backup(file.read_bytes(), str(file)).counts()["users"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl"]


# --- JSON null is not SQL NULL -----------------------------------------------------


def fire_one(loader: PluginLoader, event: str, **arguments: Any) -> Any:
    (answer,) = loader.fire(event, **arguments)
    return answer


def test_json_null_values_come_back_as_json_null_and_sql_null_as_sql_null(
    database: ConnectionSettings, other_database: ConnectionSettings, tmp_path: Path
) -> None:
    """Omejdn stores ``{"nickname": null}``: a jsonb null, which a backup must not turn
    into SQL NULL (a NOT NULL column refuses it) nor an SQL NULL into a jsonb null."""
    source = PluginLoader.from_files(
        [plugin_file(tmp_path / "source.yml", database, cache="false")], base_dir=tmp_path
    )
    try:
        alice = User(username="alice", attributes={"nickname": None, "x": {"y": None}})
        fire_one(source, events.USER_CREATE, user=alice, user_backend="postgres")
        app = Client(metadata={"client_id": "app", "logo_uri": None}, attributes={"a": None})
        fire_one(source, events.CLIENT_CREATE, client=app, client_backend="postgres")
        fire_one(source, events.CONFIGURATION_STORE, section="omejdn", data={"issuer": None})
        fire_one(source, events.CONFIGURATION_STORE, section="scopes", data=[None, "a", [None]])
        before_user = fire_one(source, events.USER_GET, username="alice")
        before_client = fire_one(source, events.CLIENT_GET, client_id="app")
    finally:
        source.close()
    sql = PlainSQL(database)
    sql.execute(
        "INSERT INTO keys (target_type, target, type, value, params) "
        """VALUES ('omejdn', 'omejdn', 'sk', %s, '{"note": null}')""",
        (generate_key("ES256").key_pem(),),
    )
    # A section of another layout: nullable jsonb, holding both kinds of null.
    sql.execute("CREATE TABLE configuration_other (item JSONB)")
    sql.execute("INSERT INTO configuration_other VALUES ('null'), (NULL), ('1')")
    sql.execute("CREATE TABLE configuration_ruby (key TEXT PRIMARY KEY, value TEXT)")
    sql.execute("INSERT INTO configuration_ruby VALUES ('gone', NULL), ('null', 'null')")
    source_db = Database.connect(database)
    try:
        out = io.BytesIO()
        service.backup(source_db, out)
    finally:
        source_db.dispose()

    report = restore_into(other_database, out.getvalue())

    assert report.counts["attributes"] == 3
    target = PlainSQL(other_database)
    jsonb_nulls = (
        "SELECT {column} IS NULL, jsonb_typeof({column}), {column}::text FROM {table} "
        "WHERE {where} ORDER BY 3"
    )
    assert target.rows(jsonb_nulls.format(column="value", table="attributes", where="true")) == [
        (False, "null", "null"),
        (False, "null", "null"),
        (False, "object", '{"y": null}'),
    ]
    assert target.rows(
        jsonb_nulls.format(column="value", table="clients", where="key = 'logo_uri'")
    ) == [(False, "null", "null")]
    assert target.rows(
        jsonb_nulls.format(column="value", table="configuration_omejdn", where="true")
    ) == [(False, "null", "null")]
    assert target.rows("SELECT item::text FROM configuration_scopes ORDER BY position") == [
        ("null",),
        ('"a"',),
        ("[null]",),
    ]
    assert target.rows("SELECT item::text FROM configuration_other ORDER BY ctid") == [
        ("null",),
        (None,),
        ("1",),
    ]
    assert target.rows("SELECT key, value FROM configuration_ruby ORDER BY key") == [
        ("gone", None),
        ("null", "null"),
    ]
    assert target.rows("SELECT params::text FROM keys") == [('{"note": null}',)]
    restored = PluginLoader.from_files(
        [plugin_file(tmp_path / "target.yml", other_database, cache="false")], base_dir=tmp_path
    )
    try:
        assert fire_one(restored, events.USER_GET, username="alice") == before_user
        assert before_user.attributes == {"nickname": None, "x": {"y": None}}
        assert fire_one(restored, events.CLIENT_GET, client_id="app") == before_client
        assert fire_one(restored, events.CONFIGURATION_LOAD, section="scopes", fallback=None) == [
            None,
            "a",
            [None],
        ]
    finally:
        restored.close()


def as_format_1(data: bytes) -> bytes:
    """``data`` (format 2) as format 1 wrote it: json values bare, a checksum to match."""
    lines = [json.loads(line) for line in data.split(b"\n")[:-1]]
    header, body, manifest = lines[0], lines[1:-1], lines[-1]
    header["version"] = manifest["manifest"]["version"] = 1
    out = [header]
    index = 0
    while index < len(body):
        table = body[index]
        out.append(table)
        wrapped = [c for c, kind in table["columns"].items() if kind in ("json", "jsonb")]
        for row in body[index + 1 : index + 1 + table["rows"]]:
            out.append({c: v[0] if c in wrapped and v is not None else v for c, v in row.items()})
        index += 1 + table["rows"]
    text = "".join(json.dumps(line) + "\n" for line in out).encode()
    manifest["manifest"]["sha256"] = hashlib.sha256(text).hexdigest()
    return text + json.dumps(manifest).encode() + b"\n"


def test_a_format_1_backup_restores_where_its_nulls_are_unambiguous(
    db: Database, plain_sql: PlainSQL, other_database: ConnectionSettings
) -> None:
    plain_sql.execute("INSERT INTO users (username) VALUES ('alice')")
    plain_sql.execute("""INSERT INTO attributes VALUES ('user', 'alice', 'nick', 'null')""")
    plain_sql.execute("""INSERT INTO attributes VALUES ('user', 'alice', 'x', '[1, null]')""")
    plain_sql.execute("CREATE TABLE configuration_ruby (key TEXT PRIMARY KEY, value TEXT)")
    plain_sql.execute("INSERT INTO configuration_ruby VALUES ('gone', NULL)")
    out = io.BytesIO()
    service.backup(db, out)
    old = as_format_1(out.getvalue())
    assert b'"version": 1' in old
    assert b'"value": null' in old

    restore_into(other_database, old)

    # In a NOT NULL column a format 1 null can only have been a JSON null.
    assert PlainSQL(other_database).rows(
        "SELECT key, value IS NULL, value::text FROM attributes ORDER BY key"
    ) == [("nick", False, "null"), ("x", False, "[1, null]")]
    assert PlainSQL(other_database).rows("SELECT value FROM configuration_ruby") == [(None,)]


def test_a_format_1_null_in_a_nullable_json_column_is_refused_as_ambiguous(
    db: Database, plain_sql: PlainSQL, other_database: ConnectionSettings
) -> None:
    plain_sql.execute("INSERT INTO users (username) VALUES ('alice')")
    plain_sql.execute("CREATE TABLE configuration_other (item JSONB)")
    plain_sql.execute("INSERT INTO configuration_other VALUES ('null')")
    out = io.BytesIO()
    service.backup(db, out)
    assert restore_into(other_database, out.getvalue(), dry_run=True).counts["users"] == 1

    with pytest.raises(BackupError, match=r"item: a format 1 backup cannot tell a JSON null"):
        restore_into(other_database, as_format_1(out.getvalue()))
    assert users_of(other_database) == []


def test_a_json_value_not_wrapped_in_format_2_is_refused(
    backup_bytes: bytes, other_database: ConnectionSettings
) -> None:
    old, bare = b'"value":["a@example.org"]', b'"value":"a@example.org"'
    damaged = rewritten(backup_bytes, old, bare, checksum=True)
    with pytest.raises(BackupError, match=r"value: a json value must be wrapped"):
        restore_into(other_database, damaged)
    assert users_of(other_database) == []
