"""The baseline migration adopts a database written by Omejdn's Ruby plugin.

The legacy database is built with plain SQL exactly as the Ruby plugin creates
and writes it (TEXT columns, no keys, JSON text in compact form, list sections
rewritten as DELETE + INSERT). Every row is compared before and after, JSON as
parsed data; a row that cannot be converted must stop the migration with a
message naming table and key and leave the database byte-for-byte as it was,
which ``pg_dump`` before and after shows.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.dialects import postgresql

from omejdn_pg.certificates import self_signed_certificate
from omejdn_pg.errors import MigrationError
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.engine import build_engine
from omejdn_pg.postgres.schema import dict_section_table, list_section_table
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import python_m
from tests.kits.witness import PlainSQL, schema_differences

# --- the Ruby plugin's layout and data -----------------------------------------

RUBY_TABLES = {
    "users": "CREATE TABLE users (username TEXT PRIMARY KEY, password TEXT)",
    "clients": "CREATE TABLE clients (client_id TEXT, key TEXT, value TEXT)",
    "attributes": "CREATE TABLE attributes (type TEXT, identifier TEXT, key TEXT, value TEXT)",
    "keys": "CREATE TABLE keys (target_type TEXT, target TEXT, type TEXT, value TEXT)",
}
DICT_SECTION = "CREATE TABLE configuration_{} (key TEXT PRIMARY KEY, value TEXT)"
LIST_SECTION = "CREATE TABLE configuration_{} (item TEXT)"

SCOPES = ["openid", {"name": "profile", "claims": ["名前", "nick"]}, 3, None, "zz", ["a", 1], "aa"]


def compact(value: Any) -> str:
    """JSON as Ruby's JSON.generate writes it: compact, raw UTF-8, '/' unescaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture(scope="module")
def key_material() -> tuple[str, str]:
    """An RSA private key as the Ruby plugin stores it (PKCS#1 PEM) and its certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_certificate(key, "omejdn", days=1)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return pem, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def password_hashes() -> dict[str, str]:
    return {
        name: bcrypt.hashpw(name.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a")).decode()
        for name in ("alice", "bob")
    }


def build_legacy(
    sql: PlainSQL,
    key_material: tuple[str, str],
    hashes_: dict[str, str],
    tables: tuple[str, ...] = ("users", "clients", "attributes", "keys"),
) -> None:
    """A database as the Ruby plugin leaves it, duplicates and all."""
    pem, cert = key_material
    for table in tables:
        sql.execute(RUBY_TABLES[table])
    if "users" in tables:
        sql.many(
            "INSERT INTO users (username, password) VALUES (%s, %s)",
            [("alice", hashes_["alice"]), ("bob", hashes_["bob"]), ("ext", None)],
        )
    if "clients" in tables:
        app = {
            "client_id": "app",
            "client_name": "名前 😀",
            "redirect_uris": ["https://app.example/cb", "https://app.example/cb2"],
            "nested": {"a": {"b": [1, 2.5, {"c": "😀"}], "d": None}, "e": True},
            "logo_uri": "https://app.example/logo.png",
        }
        rows = [("app", key, compact(value)) for key, value in app.items()]
        rows += [
            ("app", "client_name", compact("名前 😀")),  # an exact duplicate
            ("app", "nested", json.dumps(app["nested"], indent=2)),  # the same as jsonb
            ("app", "scope", None),  # SQL NULL: becomes JSON null
            ("other", "client_id", compact("other")),
        ]
        sql.many("INSERT INTO clients (client_id, key, value) VALUES (%s, %s, %s)", rows)
    if "attributes" in tables:
        sql.many(
            "INSERT INTO attributes (type, identifier, key, value) VALUES (%s, %s, %s, %s)",
            [
                ("user", "alice", "email", compact("alice@example.org")),
                ("user", "alice", "age", "42"),
                ("user", "alice", "address", compact({"city": "Köln", "zip": "50667"})),
                ("user", "alice", "email", compact("alice@example.org")),  # duplicate
                ("user", "bob", "omejdn", compact("admin")),
                ("client", "app", "tier", compact(["gold", 1])),
                ("client", "alice", "email", compact("a client named alice")),
            ],
        )
    if "keys" in tables:
        sql.many(
            "INSERT INTO keys (target_type, target, type, value) VALUES (%s, %s, %s, %s)",
            [
                ("jwt", "omejdn", "sk", pem),
                ("jwt", "omejdn", "certs", cert + "_" + cert),
                ("clients", "app", "certs", cert),
                ("clients", "app", "certs", cert),  # duplicate
                ("jwt", "empty", "certs", ""),
            ],
        )
    sql.execute(DICT_SECTION.format("omejdn"))
    sql.many(
        "INSERT INTO configuration_omejdn (key, value) VALUES (%s, %s)",
        [
            ("issuer", compact("https://omejdn.example/")),
            ("accept_audience", compact(["a", "b"])),
            ("token", compact({"expiration": 3600, "algorithm": "RS256"})),
            ("nothing", None),
        ],
    )
    sql.execute(LIST_SECTION.format("scopes"))
    # The Ruby plugin rewrites a list section as DELETE + INSERT in one
    # transaction, so the rows' physical order is the list's order.
    with psycopg.connect(sql.settings.conninfo()) as conn:
        for item in ["old", "older"]:
            conn.execute("INSERT INTO configuration_scopes (item) VALUES (%s)", [compact(item)])
        conn.commit()
        conn.execute("DELETE FROM configuration_scopes")
        for item in SCOPES:
            conn.execute(
                "INSERT INTO configuration_scopes (item) VALUES (%s)",
                [None if item is None else compact(item)],
            )
        conn.commit()
    sql.execute(LIST_SECTION.format("empty"))


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def snapshot(sql: PlainSQL, adopted: bool) -> dict[str, Any]:
    """Every row, JSON as parsed data (TEXT before adoption, JSONB after)."""

    def parse(value: Any) -> Any:
        if adopted:
            return value
        return None if value is None else json.loads(value)

    data: dict[str, Any] = {}
    tables = {name for (name,) in sql.rows("SELECT tablename FROM pg_tables")}
    if "users" in tables:
        data["users"] = sql.rows("SELECT username, password FROM users ORDER BY 1")
    if "clients" in tables:
        data["clients"] = sorted(
            (c, k, canonical(parse(v)))
            for c, k, v in sql.rows("SELECT client_id, key, value FROM clients")
        )
    if "attributes" in tables:
        data["attributes"] = sorted(
            (t, i, k, canonical(parse(v)))
            for t, i, k, v in sql.rows("SELECT type, identifier, key, value FROM attributes")
        )
    if "keys" in tables:
        data["keys"] = sorted(sql.rows("SELECT target_type, target, type, value FROM keys"))
    data["omejdn"] = {
        key: parse(value) for key, value in sql.rows("SELECT key, value FROM configuration_omejdn")
    }
    order = "position" if adopted else "ctid"
    data["scopes"] = [
        parse(item)
        for (item,) in sql.rows(f"SELECT item FROM configuration_scopes ORDER BY {order}")
    ]
    return data


def distinct(data: dict[str, Any]) -> dict[str, Any]:
    """What adoption must keep: each table's rows with exact duplicates collapsed."""
    return {
        name: sorted(set(rows)) if name in ("users", "clients", "attributes", "keys") else rows
        for name, rows in data.items()
    }


def constraints(sql: PlainSQL) -> list[tuple[str, str, str]]:
    return sql.rows(
        "SELECT conrelid::regclass::text, conname, contype::text FROM pg_constraint "
        "WHERE connamespace = current_schema()::regnamespace AND conrelid <> 0 "
        "AND conrelid::regclass::text <> 'alembic_version' ORDER BY 1, 2"
    )


@pytest.fixture
def sql(empty_database: ConnectionSettings) -> PlainSQL:
    return PlainSQL(empty_database)


@pytest.fixture
def legacy(
    empty_database: ConnectionSettings,
    sql: PlainSQL,
    key_material: tuple[str, str],
    password_hashes: dict[str, str],
) -> ConnectionSettings:
    build_legacy(sql, key_material, password_hashes)
    return empty_database


# --- adoption ---------------------------------------------------------------------


def test_adoption_keeps_every_row(
    legacy: ConnectionSettings,
    sql: PlainSQL,
    key_material: tuple[str, str],
    password_hashes: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = snapshot(sql, adopted=False)
    assert len(before["clients"]) > len(set(before["clients"]))  # there are duplicates
    assert before["scopes"] == SCOPES

    with caplog.at_level(logging.INFO):
        migrate.upgrade(legacy)

    after = snapshot(sql, adopted=True)
    assert after == distinct(before)
    for table in ("users", "clients", "attributes", "keys"):
        assert len(after[table]) == len(set(after[table])), table
    assert after["users"] == [
        ("alice", password_hashes["alice"]),
        ("bob", password_hashes["bob"]),
        ("ext", None),
    ]
    assert ("app", "scope", "null") in after["clients"]
    assert after["omejdn"]["nothing"] is None
    assert sql.rows("SELECT value FROM keys WHERE type = 'sk'") == [(key_material[0],)]
    assert sql.rows("SELECT extern, consent FROM users WHERE username = 'alice'") == [(None, {})]
    assert sql.rows("SELECT position FROM configuration_scopes ORDER BY position") == [
        (n,) for n in range(1, len(SCOPES) + 1)
    ]

    # Nothing secret went to the log.
    assert "adopted existing tables" in caplog.text
    assert "PRIVATE KEY" not in caplog.text
    assert "CERTIFICATE" not in caplog.text
    assert not any(h in caplog.text for h in password_hashes.values())


def test_adopted_schema_matches_the_models(legacy: ConnectionSettings, sql: PlainSQL) -> None:
    migrate.upgrade(legacy)
    assert migrate.current(legacy) == migrate.head()
    assert schema_differences(legacy) == []
    adopted = ("users", "clients", "attributes", "keys")
    assert [c for c in constraints(sql) if c[0] in adopted or c[0].startswith("configuration")] == [
        ("attributes", "ck_attributes_type", "c"),
        ("attributes", "pk_attributes", "p"),
        ("clients", "pk_clients", "p"),
        ("configuration_empty", "pk_configuration_empty", "p"),
        ("configuration_omejdn", "pk_configuration_omejdn", "p"),
        ("configuration_scopes", "pk_configuration_scopes", "p"),
        ("keys", "ck_keys_state", "c"),
        ("keys", "ck_keys_type", "c"),
        ("keys", "pk_keys", "p"),
        ("users", "pk_users", "p"),
    ]
    columns = sql.rows(
        "SELECT table_name, column_name, data_type, is_nullable, is_identity "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name LIKE 'configuration%' ORDER BY table_name, column_name"
    )
    assert columns == [
        ("configuration_empty", "item", "jsonb", "NO", "NO"),
        ("configuration_empty", "position", "bigint", "NO", "YES"),
        ("configuration_omejdn", "key", "text", "NO", "NO"),
        ("configuration_omejdn", "value", "jsonb", "NO", "NO"),
        ("configuration_scopes", "item", "jsonb", "NO", "NO"),
        ("configuration_scopes", "position", "bigint", "NO", "YES"),
    ]
    # Adopted tables now look like the ones the package creates at run time.
    for table, factory in (
        ("configuration_omejdn", dict_section_table("omejdn")),
        ("configuration_scopes", list_section_table("scopes")),
    ):
        assert {
            name
            for (name,) in sql.rows(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table]
            )
        } == set(factory.columns.keys())


def test_adopted_tables_take_writes_like_ours(legacy: ConnectionSettings, sql: PlainSQL) -> None:
    migrate.upgrade(legacy)
    # The Ruby plugin's own statements still work: JSON text into JSONB, no position given.
    sql.execute("INSERT INTO configuration_scopes (item) VALUES (%s)", [compact("new")])
    sql.execute("INSERT INTO configuration_empty (item) VALUES (%s)", [compact("first")])
    assert sql.rows("SELECT position, item FROM configuration_scopes ORDER BY position")[-1] == (
        len(SCOPES) + 1,
        "new",
    )
    assert sql.rows("SELECT position, item FROM configuration_empty") == [(1, "first")]
    sql.execute("INSERT INTO users (username, password) VALUES ('new', 'h')")
    assert sql.rows("SELECT consent FROM users WHERE username = 'new'") == [({},)]
    with pytest.raises(psycopg.errors.UniqueViolation):
        sql.execute("""INSERT INTO clients VALUES ('app', 'client_id', '"app"')""")
    with pytest.raises(psycopg.errors.CheckViolation):
        sql.execute("INSERT INTO keys VALUES ('jwt', 'x', 'pk', '')")


def test_mixed_database_gets_the_missing_tables(
    empty_database: ConnectionSettings,
    sql: PlainSQL,
    key_material: tuple[str, str],
    password_hashes: dict[str, str],
) -> None:
    build_legacy(sql, key_material, password_hashes, tables=("users", "keys"))
    before = snapshot(sql, adopted=False)
    migrate.upgrade(empty_database)
    assert snapshot(sql, adopted=True) == {**distinct(before), "clients": [], "attributes": []}
    assert schema_differences(empty_database) == []


def test_a_database_already_in_our_layout_is_left_as_it_is(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    # Tables in the baseline's own layout, but no record of a migration.
    migrate.upgrade(empty_database, "0001")
    sql.execute("DROP TABLE alembic_version")
    engine = build_engine(empty_database)
    try:
        with engine.begin() as conn:
            dict_section_table("omejdn").create(conn)
            list_section_table("scopes").create(conn)
    finally:
        engine.dispose()
    sql.execute("""INSERT INTO clients VALUES ('app', 'client_id', '"app"')""")
    sql.execute("""INSERT INTO configuration_scopes (item) VALUES ('"a"'), ('"b"')""")
    before = constraints(sql)
    migrate.upgrade(empty_database)
    # The baseline left them alone; later revisions only added their own constraints.
    assert set(before) <= set(constraints(sql))
    assert ("keys", "ck_keys_state", "c") in constraints(sql)
    assert sql.rows("SELECT client_id, key, value FROM clients") == [("app", "client_id", "app")]
    assert sql.rows("SELECT position, item FROM configuration_scopes ORDER BY 1") == [
        (1, "a"),
        (2, "b"),
    ]
    assert schema_differences(empty_database) == []


def test_long_section_names_get_the_constraint_name_sqlalchemy_gives(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    section = "s" * 49
    sql.execute(DICT_SECTION.format(section))
    sql.execute(f"INSERT INTO configuration_{section} VALUES ('k', '1')")
    migrate.upgrade(empty_database)
    expected = postgresql.dialect().identifier_preparer.format_constraint(
        dict_section_table(section).primary_key
    )
    assert expected is not None
    assert len(expected) <= 63
    assert [c for c in constraints(sql) if c[0].startswith("configuration_")] == [
        (f"configuration_{section}", expected, "p")
    ]


def test_tables_that_are_not_sections_are_left_alone(
    empty_database: ConnectionSettings, sql: PlainSQL
) -> None:
    sql.execute('CREATE TABLE "configuration_Not-A-Section" (item TEXT)')
    sql.execute("""INSERT INTO "configuration_Not-A-Section" VALUES ('not json')""")
    migrate.upgrade(empty_database)
    assert sql.rows('SELECT * FROM "configuration_Not-A-Section"') == [("not json",)]


# --- refusals: nothing changes --------------------------------------------------------


def _server_major(sql: PlainSQL) -> int:
    return int(sql.rows("SHOW server_version_num")[0][0]) // 10000


def _pg_dump(sql: PlainSQL) -> Path:
    """A pg_dump at least as new as the server: pgserver's (16) first, then the system's."""
    candidates: list[Path] = []
    try:
        import pgserver

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump")
    except ImportError:  # pragma: no cover - pgserver is a test dependency
        pass
    system = shutil.which("pg_dump")
    if system:
        candidates.append(Path(system))
    server = _server_major(sql)
    for candidate in candidates:
        if not candidate.exists():
            continue
        version = subprocess.run(
            [candidate, "--version"], capture_output=True, text=True, check=True
        ).stdout
        found = re.search(r"\)\s*(\d+)", version)
        if found and int(found.group(1)) >= server:
            return candidate
    pytest.fail(f"no pg_dump at least as new as PostgreSQL {server} found")


@pytest.fixture
def dump(sql: PlainSQL) -> Callable[[], str]:
    binary = _pg_dump(sql)

    def run() -> str:
        return subprocess.run(
            [binary, "--dbname", sql.settings.conninfo()],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout

    return run


BAD_ROWS = [
    pytest.param(
        """INSERT INTO clients VALUES ('app', 'client_name', 'not json')""",
        "clients: client_id='app' key='client_name': value is not JSON",
        id="client-value-not-json",
    ),
    pytest.param(
        """INSERT INTO attributes VALUES ('user', 'bob', 'age', '{"unterminated": ')""",
        "attributes: type='user' identifier='bob' key='age': value is not JSON",
        id="attribute-value-not-json",
    ),
    pytest.param(
        """INSERT INTO clients VALUES ('app', 'client_name', '"another name"')""",
        "clients: client_id='app' key='client_name' has conflicting values",
        id="conflicting-client-field",
    ),
    pytest.param(
        """INSERT INTO clients VALUES ('app', 'scope', '"openid"')""",
        "clients: client_id='app' key='scope' has conflicting values",
        id="null-conflicts-with-a-value",
    ),
    pytest.param(
        """INSERT INTO attributes VALUES ('user', 'alice', 'age', '43')""",
        "attributes: type='user' identifier='alice' key='age' has conflicting values",
        id="conflicting-attribute",
    ),
    pytest.param(
        """INSERT INTO attributes VALUES ('group', 'admins', 'k', '1')""",
        "attributes: type='group' identifier='admins' key='k': type not in 'user', 'client'",
        id="attribute-owner-type",
    ),
    pytest.param(
        """INSERT INTO keys SELECT target_type, target, 'pk', value FROM keys WHERE type = 'sk'""",
        "keys: target_type='jwt' target='omejdn' type='pk': type not in 'sk', 'certs'",
        id="key-type",
    ),
    pytest.param(
        """INSERT INTO keys SELECT target_type, target, type, value || 'x' FROM keys
           WHERE type = 'sk'""",
        "keys: target_type='jwt' target='omejdn' type='sk' has conflicting values",
        id="conflicting-key",
    ),
    pytest.param(
        """INSERT INTO keys VALUES ('jwt', 'nothing', 'sk', NULL)""",
        "keys: target_type='jwt' target='nothing' type='sk': value is NULL",
        id="key-without-value",
    ),
    pytest.param(
        """INSERT INTO clients VALUES (NULL, 'client_id', '"x"')""",
        "clients: client_id=NULL key='client_id': client_id is NULL",
        id="client-without-id",
    ),
    pytest.param(
        """UPDATE configuration_omejdn SET value = '{"a":' WHERE key = 'token'""",
        "configuration_omejdn: key='token': value is not JSON",
        id="dict-section-not-json",
    ),
    pytest.param(
        """INSERT INTO configuration_scopes VALUES ('nope')""",
        f"configuration_scopes: item #{len(SCOPES) + 1}: item is not JSON",
        id="list-section-not-json",
    ),
    pytest.param(
        """CREATE TABLE configuration_odd (a TEXT, b TEXT)""",
        "configuration_odd: unexpected layout (a text, b text)",
        id="unknown-section-layout",
    ),
    pytest.param(
        """ALTER TABLE clients ADD COLUMN extra TEXT""",
        "clients: unexpected layout",
        id="unknown-table-layout",
    ),
    pytest.param(
        """INSERT INTO clients VALUES ('app', 'bad', E'"\\\\u0000"')""",
        "clients: client_id='app' key='bad': value is not JSON",
        id="json-jsonb-cannot-store",
    ),
]


@pytest.mark.parametrize(("bad_row", "message"), BAD_ROWS)
def test_a_row_that_cannot_be_converted_changes_nothing(
    legacy: ConnectionSettings,
    sql: PlainSQL,
    dump: Callable[[], str],
    key_material: tuple[str, str],
    password_hashes: dict[str, str],
    bad_row: str,
    message: str,
) -> None:
    sql.execute(bad_row)
    before = dump()
    assert "COPY public.clients (client_id, key, value" in before

    with pytest.raises(MigrationError) as raised:
        migrate.upgrade(legacy)

    assert message in str(raised.value)
    assert "nothing was changed" in str(raised.value)
    assert "PRIVATE KEY" not in str(raised.value)
    assert "CERTIFICATE" not in str(raised.value)
    assert not any(h in str(raised.value) for h in password_hashes.values())
    assert dump() == before
    assert migrate.current(legacy) is None


def test_users_without_a_primary_key(
    empty_database: ConnectionSettings, sql: PlainSQL, dump: Callable[[], str]
) -> None:
    sql.execute("CREATE TABLE users (username TEXT, password TEXT)")
    sql.execute("INSERT INTO users VALUES ('a', 'h'), ('a', 'h'), (NULL, 'h2'), ('b', NULL)")
    before = dump()
    with pytest.raises(MigrationError, match=r"users: username=NULL: username is NULL"):
        migrate.upgrade(empty_database)
    assert dump() == before

    sql.execute("DELETE FROM users WHERE username IS NULL")
    sql.execute("INSERT INTO users VALUES ('b', 'h3')")
    with pytest.raises(MigrationError, match=r"users: username='b' has conflicting values"):
        migrate.upgrade(empty_database)

    sql.execute("DELETE FROM users WHERE username = 'b' AND password IS NULL")
    migrate.upgrade(empty_database)
    assert sql.rows("SELECT username, password FROM users ORDER BY 1") == [("a", "h"), ("b", "h3")]
    assert ("users", "pk_users", "p") in constraints(sql)


def test_every_problem_is_reported_at_once(legacy: ConnectionSettings, sql: PlainSQL) -> None:
    sql.execute("INSERT INTO clients VALUES ('app', 'x', 'not json')")
    sql.execute("INSERT INTO attributes VALUES ('user', 'alice', 'age', '7')")
    sql.execute("INSERT INTO configuration_scopes VALUES ('nope')")
    with pytest.raises(MigrationError) as raised:
        migrate.upgrade(legacy)
    lines = str(raised.value).splitlines()
    assert lines[1:] == [
        "  clients: client_id='app' key='x': value is not JSON",
        "  attributes: type='user' identifier='alice' key='age' has conflicting values",
        f"  configuration_scopes: item #{len(SCOPES) + 1}: item is not JSON",
    ]


def test_python_m_migrate_reports_a_refusal(legacy: ConnectionSettings, sql: PlainSQL) -> None:
    sql.execute("INSERT INTO clients VALUES ('app', 'x', 'not json')")
    done = python_m("omejdn_pg.postgres.migrate", "--url", legacy.conninfo())
    assert done.returncode == 1
    assert "clients: client_id='app' key='x': value is not JSON" in done.stderr
    assert "Traceback" not in done.stderr
