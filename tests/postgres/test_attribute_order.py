"""A user's or a client's attributes come back in the order they were given.

Omejdn's own stores keep attributes as a YAML mapping, in insertion order, and
its self-service API shows them so. What an operator checks: the rows carry
their place (plain SQL), every read path — point read, read cache, listing,
filtered listing, import, backup and restore — gives that order back, an
update takes the caller's new order, and the migration numbers existing rows
by key and goes down and up again on a populated database.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omejdn_pg.entities import Client, User
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories import listing
from omejdn_pg.service import backup as service
from omejdn_pg.service import restore as restoring
from omejdn_pg.service import transfer
from omejdn_pg.service.backup_format import read_backup
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings, CacheSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.witness import PlainSQL

# Neither alphabetical nor jsonb's order (shorter keys first).
GIVEN = {"zeta": 1, "email": "a@example.org", "a": {"y": 1, "x": [2, 1]}, "mm": None}
REORDERED = {"mm": "now first", "a": 0, "zeta": True}


@pytest.fixture(params=[False, True], ids=["uncached", "cached"])
def host(database: ConnectionSettings, request: pytest.FixtureRequest) -> Iterator[Host]:
    cache = CacheSettings(groups=frozenset({"user", "client"}) if request.param else frozenset())
    with Host.from_settings(BackendSettings(connection=database, cache=cache)) as facade:
        yield facade


def stored_order(sql: PlainSQL, owner: str, name: str) -> list[str]:
    rows = sql.rows(
        "SELECT key FROM attributes WHERE type = %s AND identifier = %s ORDER BY ordinal",
        (owner, name),
    )
    return [key for (key,) in rows]


def test_users_attributes_come_back_in_the_order_given(host: Host, plain_sql: PlainSQL) -> None:
    host.users.add(User(username="alice", attributes=dict(GIVEN)))
    host.users.add(User(username="bob", attributes={"b": 1, "a": 2}))
    assert stored_order(plain_sql, "user", "alice") == list(GIVEN)

    for _ in range(2):  # the second read may be the cache's copy
        found = host.users.find("alice")
        assert found is not None
        assert list(found.attributes) == list(GIVEN)
        assert found.attributes == GIVEN
    everyone = {u.username: u for u in host.users.all()}
    assert list(everyone["alice"].attributes) == list(GIVEN)
    assert list(everyone["bob"].attributes) == ["b", "a"]

    assert host.postgres is not None
    database = host.postgres.database
    narrowed = listing.Criteria(filters=(("zeta", 1),))
    with database.snapshot() as conn:  # as omejdn-pg users list reads
        listed = list(listing.users(conn))
        filtered = list(listing.users(conn, narrowed))
    assert [list(u.attributes) for u in listed] == [list(GIVEN), ["b", "a"]]
    assert [list(u.attributes) for u in filtered] == [list(GIVEN)]

    # An update takes the order the caller gives, not the stored one.
    host.users.save(User(username="alice", attributes=dict(REORDERED)))
    assert stored_order(plain_sql, "user", "alice") == list(REORDERED)
    found = host.users.find("alice")
    assert found is not None
    assert list(found.attributes) == list(REORDERED)


def test_clients_attributes_come_back_in_the_order_given(host: Host, plain_sql: PlainSQL) -> None:
    host.clients.add(Client(metadata={"client_id": "web"}, attributes=dict(GIVEN)))
    assert stored_order(plain_sql, "client", "web") == list(GIVEN)
    for _ in range(2):
        found = host.clients.find("web")
        assert found is not None
        assert list(found.attributes) == list(GIVEN)
    (listed,) = host.clients.all()
    assert list(listed.attributes) == list(GIVEN)
    assert host.postgres is not None
    with host.postgres.database.snapshot() as conn:
        (filtered,) = list(listing.clients(conn))
    assert list(filtered.attributes) == list(GIVEN)

    host.clients.save(Client(metadata={"client_id": "web"}, attributes=dict(REORDERED)))
    found = host.clients.find("web")
    assert found is not None
    assert list(found.attributes) == list(REORDERED)
    assert stored_order(plain_sql, "client", "web") == list(REORDERED)


def write_users(directory: Path, users: list[dict[str, Any]]) -> Path:
    config = directory / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "users.yml").write_text("".join(f"- {json.dumps(u)}\n" for u in users))
    return directory


def test_an_import_keeps_the_order_and_a_new_order_is_a_change(
    database: ConnectionSettings, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    first = write_users(tmp_path / "first", [{"username": "alice", "attributes": GIVEN}])
    with Host.from_settings(BackendSettings(connection=database)) as host:
        transfer.import_deployment(first, host)
        assert stored_order(plain_sql, "user", "alice") == list(GIVEN)
        found = host.users.find("alice")
        assert found is not None
        assert list(found.attributes) == list(GIVEN)

        same_values = dict(reversed(list(GIVEN.items())))
        second = write_users(
            tmp_path / "second", [{"username": "alice", "attributes": same_values}]
        )
        transfer.import_deployment(second, host)
        assert stored_order(plain_sql, "user", "alice") == list(same_values)


def test_a_backup_restores_the_order(
    database: ConnectionSettings, other_database: ConnectionSettings
) -> None:
    given = dict(GIVEN)  # its JSON null too
    with Host.from_settings(BackendSettings(connection=database)) as host:
        host.users.add(User(username="alice", attributes=given))
        host.clients.add(Client(metadata={"client_id": "web"}, attributes=dict(REORDERED)))
    source = Database.connect(database)
    try:
        out = io.BytesIO()
        service.backup(source, out)
    finally:
        source.dispose()
    target = Database.connect(other_database)
    try:
        restoring.restore(target, read_backup(out.getvalue(), "the file"))
    finally:
        target.dispose()
    with Host.from_settings(BackendSettings(connection=other_database)) as restored:
        alice = restored.users.find("alice")
        web = restored.clients.find("web")
        assert alice is not None
        assert web is not None
        assert list(alice.attributes) == list(given)
        assert alice.attributes == given
        assert list(web.attributes) == list(REORDERED)
        # A later write by a writer that does not know the column still appends.
    sql = PlainSQL(other_database)
    sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES ('user', 'alice', 'b', '1')"
    )
    assert stored_order(sql, "user", "alice") == [*given, "b"]


def test_0007_numbers_existing_attributes_by_key_and_goes_down_and_up(
    empty_database: ConnectionSettings,
) -> None:
    sql = PlainSQL(empty_database)
    migrate.upgrade(empty_database, "0006")
    sql.execute("INSERT INTO users (username) VALUES ('alice'), ('bob')")
    sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES "
        "('user', 'alice', 'zeta', '1'), ('user', 'alice', 'B', '2'), "
        "('user', 'alice', 'a', '3'), ('user', 'bob', 'x', '4'), ('client', 'alice', 'k', '5')"
    )
    migrate.upgrade(empty_database, "0007")
    assert sql.rows(
        "SELECT type, identifier, key, ordinal FROM attributes ORDER BY type, identifier, ordinal"
    ) == [
        ("client", "alice", "k", 1),
        ("user", "alice", "B", 1),
        ("user", "alice", "a", 2),
        ("user", "alice", "zeta", 3),
        ("user", "bob", "x", 1),
    ]
    # A writer that does not know the column appends after every existing row.
    sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES ('user', 'bob', 'a', '6')"
    )
    assert stored_order(sql, "user", "bob") == ["x", "a"]
    with Host.from_settings(BackendSettings(connection=empty_database)) as host:
        alice = host.users.find("alice")
        assert alice is not None
        assert list(alice.attributes) == ["B", "a", "zeta"]

    migrate.downgrade(empty_database, "0006")
    assert sql.rows(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'attributes' ORDER BY 1"
    ) == [("identifier",), ("key",), ("type",), ("value",)]
    assert sql.value("SELECT count(*) FROM attributes") == 6
    migrate.upgrade(empty_database)
    assert stored_order(sql, "user", "bob") == ["a", "x"]
    assert migrate.current(empty_database) == migrate.HEAD
