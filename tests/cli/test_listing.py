"""``users list`` and ``clients list``: filters, search, paging, counts and streaming.

Driven as a subprocess against a real PostgreSQL, and — for what needs a
clock or a statement count — through the listing module in process. The
20,000 users are seeded by one SQL statement, not through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from omejdn_pg.cli.clients import client_record
from omejdn_pg.cli.context import CliContext
from omejdn_pg.cli.users import USER_FIELDS, user_record
from omejdn_pg.entities import Client, User
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories import listing
from omejdn_pg.service.host import Host
from omejdn_pg.service.listing import json_equal, value_matches
from omejdn_pg.settings.backend import BackendSettings, PoolSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import CLEAN_ENV, ok, omejdn_pg
from tests.kits.witness import PlainSQL

MANY = 20_000
SEED_USERS = f"""
WITH created AS (
    INSERT INTO users (username, password, extern, consent)
    SELECT 'user' || lpad(n::text, 5, '0'),
           CASE WHEN n % 2 = 0 THEN '$2b$04$' || repeat('a', 53) END,
           CASE WHEN n % 7 = 0 THEN 'ldap' END,
           '{{}}'::jsonb
    FROM generate_series(1, {MANY}) AS n
    RETURNING username
)
INSERT INTO attributes (type, identifier, key, value)
SELECT 'user', username, attribute.key, attribute.value
FROM created, LATERAL (VALUES
    ('tier', to_jsonb(CASE WHEN right(username, 1) IN ('0', '5') THEN 'gold' ELSE 'basic' END)),
    ('number', to_jsonb(substr(username, 5)::int)),
    ('email', to_jsonb(username || '@example.org'))
) AS attribute(key, value)
"""


@pytest.fixture
def url(database: ConnectionSettings) -> str:
    return database.conninfo()


def seed_many(plain_sql: PlainSQL) -> None:
    plain_sql.execute(SEED_USERS)
    assert plain_sql.value("SELECT count(*) FROM users") == MANY


def seed_clients(url: str, tmp_path: Path) -> None:
    for client in (
        {
            "client_id": "web-app",
            "client_name": "Web",
            "token_endpoint_auth_method": "client_secret_basic",
            "client_secret": "web-secret-value",
            "scope": ["openid", "profile"],
            "grant_types": ["authorization_code"],
            "attributes": {"tier": "gold"},
        },
        {
            "client_id": "Batch-Job",
            "token_endpoint_auth_method": "private_key_jwt",
            "scope": "omejdn:read",
            "grant_types": ["client_credentials"],
            "software_id": "batch",
        },
        {"client_id": "mobile", "scope": ["openid"], "attributes": {"tier": "basic"}},
    ):
        path = tmp_path / f"{client['client_id']}.yml"
        path.write_text(yaml.safe_dump(client))
        ok(omejdn_pg("--url", url, "clients", "add", "-f", str(path)))


# --- at 20,000 users ------------------------------------------------------------------


def test_filter_search_limit_offset_and_count_at_20000_users(url: str, plain_sql: PlainSQL) -> None:
    seed_many(plain_sql)

    gold = ok(omejdn_pg("--url", url, "users", "list", "--filter", "tier=gold", "--limit", "5"))
    lines = gold.stdout.splitlines()
    assert lines[0].split() == ["USERNAME", "PASSWORD", "EXTERN", "ATTRIBUTES"]
    assert [line.split()[0] for line in lines[1:]] == [
        "user00005",
        "user00010",
        "user00015",
        "user00020",
        "user00025",
    ]
    assert "5 of 4000 users matching, 20000 in all" in gold.stderr

    page = ok(
        omejdn_pg(
            "--url", url, "users", "list", "--filter", "tier=gold", "--filter", "number=700",
            "-o", "json",
        )
    )  # fmt: skip
    found = json.loads(page.stdout)
    assert [u["username"] for u in found] == ["user00700"]
    assert found[0] == {
        "username": "user00700",
        "backend": "postgres",
        "extern": "ldap",
        "has_password": True,
        "attributes": {"tier": "gold", "number": 700, "email": "user00700@example.org"},
        "consent": {},
    }
    assert page.stderr == ""  # no count line for data formats

    searched = ok(
        omejdn_pg(
            "--url", url, "users", "list", "--search", "USER0199", "--offset", "3",
            "--limit", "4", "--json",
        )
    )  # fmt: skip
    assert [u["username"] for u in json.loads(searched.stdout)] == [
        "user01993",
        "user01994",
        "user01995",
        "user01996",
    ]
    everyone = ok(omejdn_pg("--url", url, "users", "list", "--limit", "3"))
    assert "3 of 20000 users" in everyone.stderr
    assert "matching" not in everyone.stderr
    nobody = ok(omejdn_pg("--url", url, "users", "list", "--filter", "tier=platinum"))
    assert nobody.stdout.splitlines() == ["USERNAME  PASSWORD  EXTERN  ATTRIBUTES"]
    assert "0 of 0 users matching, 20000 in all" in nobody.stderr


def test_the_listing_streams_its_rows(url: str, plain_sql: PlainSQL, database: Any) -> None:
    """The first line is printed while the server-side cursor is still open mid-way."""
    seed_many(plain_sql)
    environment = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    application = "omejdn-pg-streaming-test"
    traced_url = database.with_params(application_name=application).conninfo()
    started = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-m", "omejdn_pg", "users", "list", "-v", "--url", traced_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    ) as process:
        assert process.stdout is not None
        header = process.stdout.readline()
        first_line_after = time.perf_counter() - started
        assert header.split() == ["USERNAME", "PASSWORD", "EXTERN", "ATTRIBUTES"]
        # Not reading on: the pipe fills, the CLI waits, its cursor stays open half-read.
        fetching = []
        for _ in range(100):
            fetching = plain_sql.rows(
                "SELECT query FROM pg_stat_activity WHERE application_name = %s "
                "AND state = 'idle in transaction' AND query LIKE 'FETCH FORWARD%%'",
                (application,),
            )
            if fetching:
                break
            time.sleep(0.1)
        assert fetching, "the listing does not read through a server-side cursor"
        assert process.stderr is not None
        rest, err = process.stdout.read(), process.stderr.read()
    assert process.returncode == 0, err
    rows = rest.splitlines()
    assert len(rows) == MANY
    assert rows[0].startswith("user00001  -")
    assert "email=user00001@example.org" in rows[0]
    assert f"{MANY} of {MANY} users" in err
    print(f"first line after {first_line_after:.2f}s (process start included)")


def test_first_row_within_half_a_second_and_one_statement(
    db: Database, plain_sql: PlainSQL
) -> None:
    seed_many(plain_sql)
    statements = count_statements(db.engine)
    with db.snapshot() as conn:
        started = time.perf_counter()
        rows = listing.users(conn, listing.Criteria(filters=(("tier", "basic"),)))
        first = next(rows)
        elapsed = time.perf_counter() - started
        rest = sum(1 for _ in rows)
        counts = listing.count_users(conn, listing.Criteria(filters=(("tier", "basic"),)))
    assert elapsed < 0.5, elapsed
    assert first.username == "user00001"
    assert first.attributes == {"tier": "basic", "number": 1, "email": "user00001@example.org"}
    assert first.password is None
    assert 1 + rest == counts.matching == 16000
    assert counts.total == MANY
    listings = [s for s in statements if "FROM users" in s]
    assert len(listings) == 2, statements  # the listing and the count; never one per row


def test_the_listing_shows_what_the_server_reads(
    url: str, database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    """The CLI lists PostgreSQL without building its host; what it prints is what the
    server's own reads (USER_GET_ALL, CLIENT_GET_ALL) give, row by row."""
    plain_sql.execute(
        "INSERT INTO users (username, password, extern, consent) VALUES "
        "('ann', '$2b$04$' || repeat('a', 53), NULL, '{\"web\": [\"openid\"]}'), "
        "('bea', NULL, 'true', '{}'), ('cy', NULL, 'https://idp.example', '{}')"
    )
    plain_sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES "
        "('user', 'ann', 'email', '\"ann@example.org\"'), ('user', 'ann', 'age', '42'), "
        "('user', 'cy', 'groups', '[\"a\", \"b\"]'), ('client', 'web', 'tier', '\"gold\"')"
    )
    plain_sql.execute(
        "INSERT INTO clients (client_id, key, value) VALUES "
        "('web', 'client_id', '\"web\"'), ('web', 'client_name', '\"Web\"'), "
        "('web', 'client_secret', '\"s3cret-value\"'), "
        "('web', 'scope', '[\"openid\", \"profile\"]'), "
        "('cli', 'client_id', '\"cli\"'), ('cli', 'token_endpoint_auth_method', '\"none\"')"
    )
    users = json.loads(ok(omejdn_pg("--url", url, "users", "list", "-o", "json")).stdout)
    clients = json.loads(ok(omejdn_pg("--url", url, "clients", "list", "-o", "json")).stdout)
    host = Host.from_settings(BackendSettings(connection=database))
    try:
        server_users = sorted(host.users.all(), key=lambda user: user.username)
        server_clients = sorted(host.clients.all(), key=lambda client: client.client_id)
    finally:
        host.close()
    assert users == [user_record(user) for user in server_users]
    assert clients == [client_record(client, show_secret=False) for client in server_clients]
    assert [u["username"] for u in users] == ["ann", "bea", "cy"]
    assert users[0]["attributes"] == {"email": "ann@example.org", "age": 42}
    assert users[0]["consent"] == {"web": ["openid"]}
    assert [u["extern"] for u in users] == [None, True, "https://idp.example"]
    assert clients[1]["client_secret"] == "********"

    table = ok(omejdn_pg("--url", url, "users", "list", "-v"))
    assert [line.split() for line in table.stdout.splitlines()] == [
        ["USERNAME", "PASSWORD", "EXTERN", "ATTRIBUTES"],
        ["ann", "set", "age=42,", "email=ann@example.org"],
        ["bea", "-", "true"],
        ["cy", "-", "https://idp.example", 'groups=["a","b"]'],
    ]
    assert "3 of 3 users" in table.stderr


def test_the_listing_compiles_nothing_and_leaves_the_connection_as_it_was(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    """JIT is off for the listing's own transaction only: the pooled connection that
    serves the next read has the session's setting again."""
    seed_many(plain_sql)
    db = Database.connect(database.with_params(options="-c jit=on"), PoolSettings(size=1))
    try:
        assert db.read(lambda conn: conn.exec_driver_sql("SHOW jit").scalar()) == "on"
        with db.snapshot() as conn:
            rows = listing.users(conn)
            assert next(rows).username == "user00001"
            assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
            rows.close()
            assert listing.count_users(conn).total == MANY
        assert db.read(lambda conn: conn.exec_driver_sql("SHOW jit").scalar()) == "on"
    finally:
        db.dispose()


# --- clients --------------------------------------------------------------------------


def test_clients_list_filters_metadata_and_attributes(url: str, tmp_path: Path) -> None:
    seed_clients(url, tmp_path)

    def ids(*args: str) -> list[str]:
        result = ok(omejdn_pg("--url", url, "clients", "list", "--json", *args))
        return [c["client_id"] for c in json.loads(result.stdout)]

    assert ids() == ["Batch-Job", "mobile", "web-app"]
    assert ids("--filter", "scope=openid") == ["mobile", "web-app"]  # a list holding it
    assert ids("--filter", "scope=omejdn:read") == ["Batch-Job"]  # a plain value
    assert ids("--filter", "tier=gold") == ["web-app"]  # an attribute
    assert ids("--filter", "software_id=batch") == ["Batch-Job"]
    assert ids("--filter", 'grant_types=["client_credentials"]') == ["Batch-Job"]
    assert ids("--search", "job") == ["Batch-Job"]
    assert ids("--search", "b", "--limit", "1", "--offset", "1") == ["mobile"]
    assert ids("--filter", "scope=openid", "--filter", "tier=basic") == ["mobile"]

    listed = json.loads(ok(omejdn_pg("--url", url, "clients", "list", "-o", "json")).stdout)
    web = next(c for c in listed if c["client_id"] == "web-app")
    assert list(web) == [
        "client_id",
        "backend",
        "client_name",
        "token_endpoint_auth_method",
        "grant_types",
        "redirect_uris",
        "scope",
        "client_secret",
        "attributes",
    ]
    assert web["client_secret"] == "********"
    assert web["redirect_uris"] is None
    assert "web-secret-value" not in json.dumps(listed)
    shown = ok(omejdn_pg("--url", url, "clients", "list", "--json", "--show-secrets"))
    assert "web-secret-value" in shown.stdout

    table = ok(omejdn_pg("--url", url, "clients", "list", "-v", "--filter", "tier=gold"))
    assert "tier=gold" in table.stdout
    assert "web-secret-value" not in table.stdout
    assert "1 of 1 clients matching, 3 in all" in table.stderr
    as_yaml = yaml.safe_load(ok(omejdn_pg("--url", url, "clients", "list", "-o", "yaml")).stdout)
    assert [c["client_id"] for c in as_yaml] == ["Batch-Job", "mobile", "web-app"]


def test_users_list_shows_attribute_values_with_v(url: str, plain_sql: PlainSQL) -> None:
    ok(omejdn_pg("--url", url, "users", "add", "ann", "--extern", "ldap", "-a", "email=a@x"))
    ok(omejdn_pg("--url", url, "users", "add", "bea", "--password-stdin", input="pw\n"))
    names = ok(omejdn_pg("--url", url, "users", "list")).stdout
    assert "email" in names
    assert "a@x" not in names
    values = ok(omejdn_pg("--url", url, "users", "list", "-v")).stdout
    assert "email=a@x" in values
    listed = json.loads(ok(omejdn_pg("--url", url, "users", "list", "-o", "json")).stdout)
    assert [tuple(u) for u in listed] == [USER_FIELDS, USER_FIELDS]
    assert [u["has_password"] for u in listed] == [False, True]
    assert "$2" not in json.dumps(listed)
    empty = ok(omejdn_pg("--url", url, "users", "list", "--search", "zzz", "-o", "yaml"))
    assert yaml.safe_load(empty.stdout) == []
    bad = omejdn_pg("--url", url, "users", "list", "--filter", "novalue")
    assert bad.returncode == 2
    assert "KEY=VALUE" in bad.stderr


# --- the file backend's users and clients are listed too ---------------------------------


def test_the_file_backend_is_listed_first_and_paged_with_postgres(
    database: ConnectionSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "users.yml").write_text(
        yaml.safe_dump(
            [
                {"username": "zed", "attributes": {"tier": "gold"}},
                {"username": "amy", "attributes": {"tier": "basic"}},
            ]
        )
    )
    (config / "clients.yml").write_text(yaml.safe_dump([{"client_id": "file-client"}]))
    host = Host.from_settings(
        BackendSettings(connection=database),
        defaults=frozenset({"user", "client"}),
        base_dir=tmp_path,
    )
    try:
        host.users.add(User("pat", attributes={"tier": "gold"}), backend="postgres")
        host.users.add(User("bob", attributes={"tier": "basic"}), backend="postgres")
        host.clients.add(Client({"client_id": "pg-client"}), backend="postgres")

        def listed(command: str, *args: str) -> tuple[list[str], str]:
            from omejdn_pg.cli import clients, users

            module = users if command == "users" else clients
            group = module.users if command == "users" else module.clients
            cli = CliContext(host=host)
            cli.output = "json"
            assert group.main(["list", *args], standalone_mode=False, obj=cli) is None
            output = capsys.readouterr()
            key = "username" if command == "users" else "client_id"
            return [f"{r[key]}/{r['backend']}" for r in json.loads(output.out)], output.err

        assert listed("users")[0] == ["amy/yaml", "zed/yaml", "bob/postgres", "pat/postgres"]
        assert listed("users", "--filter", "tier=gold")[0] == ["zed/yaml", "pat/postgres"]
        assert listed("users", "--offset", "1", "--limit", "2")[0] == ["zed/yaml", "bob/postgres"]
        assert listed("users", "--offset", "3")[0] == ["pat/postgres"]
        assert listed("users", "--limit", "1")[0] == ["amy/yaml"]
        assert listed("users", "--search", "A")[0] == ["amy/yaml", "pat/postgres"]
        assert listed("clients")[0] == ["file-client/yaml", "pg-client/postgres"]
    finally:
        host.close()


def test_matching_follows_jsonb() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal("1", 1)
    assert json_equal({"a": [1, True]}, {"a": [1.0, True]})
    assert value_matches(["openid", "profile"], "openid")
    assert not value_matches(["openid"], "open")
    assert value_matches(["a"], ["a"])
