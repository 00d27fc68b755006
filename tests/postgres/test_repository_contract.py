"""What UserRepository and ClientRepository both promise, run against each of them.

Omejdn keeps users and clients alike: a name, attributes in the shared
``attributes`` table, a place in a YAML list. The same reads and writes must
behave the same way on both, so each case below is written once and run for
both repositories; what only one of them has (passwords, certificates,
metadata) stays in ``test_user_repository.py`` and ``test_client_repository.py``.
Results are checked with plain SQL, round trips on the wire.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection

from omejdn_pg.entities import Client, User
from omejdn_pg.errors import AlreadyExists, InvalidValue, NotFound
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.clients import ClientRepository
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.settings.backend import BACKEND_NAME, PasswordSettings
from tests.kits.threads import WRITERS, run_together
from tests.kits.wire import traced_read

POLICY = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))


@dataclass(frozen=True)
class Kind:
    """One of the two repositories, and how its entities and rows look."""

    noun: str  # the ``type`` of its attribute rows, and how errors name it
    table: str
    name_column: str
    repository: Callable[[Connection], Any]
    make: Callable[[str, dict[str, Any]], Any]
    """An entity named ``name`` with ``attributes`` and one field of its own."""
    rival: Callable[[int], Any]
    """Writer ``n``'s whole version of the entity ``rival``: no key shared with another's."""
    own_rows: Callable[[Any, str], Any]
    """What the entity's own table holds of ``name`` (plain SQL)."""
    own_fields: Callable[[Any], Any]
    """The same, as an entity should have stored it."""

    def create(self, db: Database, entity: Any) -> None:
        db.write(lambda c: self.repository(c).create(entity))

    def get(self, db: Database, name: str) -> Any:
        return db.read(lambda c: self.repository(c).get(name))

    def found(self, name: str, attributes: dict[str, Any]) -> Any:
        """What a read returns of ``make(name, attributes)``: the backend set."""
        return dataclasses.replace(self.make(name, attributes), backend=BACKEND_NAME)

    def attribute_rows(self, plain_sql: Any, name: str) -> dict[str, Any]:
        return dict(
            plain_sql.rows(
                "SELECT key, value::jsonb FROM attributes WHERE type = %s AND identifier = %s",
                (self.noun, name),
            )
        )


HASHES = (POLICY.hash("correct horse"), POLICY.hash("battery staple"))

USERS = Kind(
    noun="user",
    table="users",
    name_column="username",
    repository=lambda conn: UserRepository(conn, POLICY),
    make=lambda name, attributes: User(username=name, attributes=attributes, extern="idp"),
    rival=lambda n: User(
        username="rival",
        password=HASHES[n % 2],
        attributes={f"w{n}-{k}": n * 10 + k for k in range(6)} | {"who": n},
        extern=f"idp-{n}",
        consent={f"client-{n}": ["openid"]},
    ),
    own_rows=lambda plain_sql, name: plain_sql.rows(
        "SELECT password, extern, consent FROM users WHERE username = %s", (name,)
    ),
    own_fields=lambda user: [(user.password, user.extern, user.consent)],
)
CLIENTS = Kind(
    noun="client",
    table="clients",
    name_column="client_id",
    repository=ClientRepository,
    make=lambda name, attributes: Client(
        metadata={"client_id": name, "client_name": name.title()}, attributes=attributes
    ),
    rival=lambda n: Client(
        metadata={"client_id": "rival"} | {f"m{n}-{k}": k for k in range(5)},
        attributes={f"a{n}-{k}": [n, k] for k in range(5)} | {"who": n},
    ),
    own_rows=lambda plain_sql, name: dict(
        plain_sql.rows("SELECT key, value::jsonb FROM clients WHERE client_id = %s", (name,))
    ),
    own_fields=lambda client: client.metadata,
)


@pytest.fixture(params=[USERS, CLIENTS], ids=["users", "clients"])
def kind(request: pytest.FixtureRequest) -> Kind:
    found: Kind = request.param
    return found


# --- reads ----------------------------------------------------------------------


def test_get_of_an_unknown_name_is_none(db: Database, kind: Kind) -> None:
    assert kind.get(db, "nobody") is None


def test_create_then_get_gives_back_what_was_created(db: Database, kind: Kind) -> None:
    kind.create(db, kind.make("alice", {"a": 1, "b": [2], "c": {"d": None}}))
    assert kind.get(db, "alice") == kind.found("alice", {"a": 1, "b": [2], "c": {"d": None}})


def test_point_read_is_one_prepared_statement_and_one_round_trip_without_transaction(
    db: Database, kind: Kind
) -> None:
    kind.create(db, kind.make("alice", {"a": 1, "b": [2]}))
    db.read(lambda c: None)  # the dialect's first-connect queries, not ours

    statements = count_statements(db.engine)
    entity, cold = traced_read(db, lambda c: kind.repository(c).get("alice"))
    assert entity is not None
    assert entity.attributes == {"a": 1, "b": [2]}
    assert len(statements) == 1
    assert cold.round_trips == 1, cold.lines
    assert cold.transaction_control == []
    assert cold.final_status == "I"

    for _ in range(10):  # past psycopg's prepare threshold
        kind.get(db, "alice")
    statements.clear()
    entity, warm = traced_read(db, lambda c: kind.repository(c).get("alice"))
    assert entity is not None
    assert len(statements) == 1
    assert warm.round_trips == 1, warm.lines
    assert warm.transaction_control == []
    assert warm.final_status == "I"
    assert "Parse" not in warm.sent, "the statement should be prepared by now"

    # a miss costs the same
    missing, wire = traced_read(db, lambda c: kind.repository(c).get("nobody"))
    assert missing is None
    assert wire.round_trips == 1
    assert wire.transaction_control == []


def test_all_of_an_empty_table_is_empty(db: Database, kind: Kind) -> None:
    assert db.read(lambda c: kind.repository(c).all()) == []


def test_all_lists_in_creation_order_and_an_update_keeps_the_place(
    db: Database, plain_sql: Any, kind: Kind
) -> None:
    # Omejdn's own stores are YAML lists: created entries append, updates stay put.
    for name in ("carol", "alice", "bob"):
        kind.create(db, kind.make(name, {}))
    db.write(lambda c: kind.repository(c).update(kind.make("carol", {"n": 1})))
    db.write(lambda c: kind.repository(c).delete("alice"))
    kind.create(db, kind.make("alice", {}))
    listed = db.read(lambda c: kind.repository(c).all())
    assert [getattr(entity, kind.name_column) for entity in listed] == ["carol", "bob", "alice"]
    column, table = kind.name_column, kind.table
    assert plain_sql.rows(
        f"SELECT {column} FROM {table} GROUP BY {column} ORDER BY min(ordinal)"
    ) == [("carol",), ("bob",), ("alice",)]
    # The updated entry keeps one place, not one per row it was rewritten as.
    assert (
        plain_sql.value(f"SELECT count(DISTINCT ordinal) FROM {table} WHERE {column} = 'carol'")
        == 1
    )


def test_attributes_of_the_other_kind_with_the_same_name_stay_apart(
    db: Database, plain_sql: Any, kind: Kind
) -> None:
    other = "client" if kind.noun == "user" else "user"
    plain_sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES (%s, 'same', 'k', '1')",
        (other,),
    )
    kind.create(db, kind.make("same", {"mine": True}))
    assert kind.get(db, "same") == kind.found("same", {"mine": True})
    assert db.write(lambda c: kind.repository(c).delete("same"))
    assert plain_sql.rows("SELECT type, identifier, key FROM attributes") == [(other, "same", "k")]


# --- writes ---------------------------------------------------------------------


def test_duplicate_create_fails_before_touching_anything(
    db: Database, plain_sql: Any, kind: Kind
) -> None:
    kind.create(db, kind.make("alice", {"keep": 1}))
    # Catch the error inside the transaction and commit it: whatever the failed
    # create wrote before noticing the duplicate would be committed too.
    with (
        db.transaction() as conn,
        pytest.raises(AlreadyExists, match=f"{kind.noun} 'alice' exists already"),
    ):
        kind.repository(conn).create(kind.make("alice", {"x": 2}))
    assert kind.attribute_rows(plain_sql, "alice") == {"keep": 1}
    assert kind.get(db, "alice") == kind.found("alice", {"keep": 1})


def test_create_replaces_orphaned_attributes(db: Database, plain_sql: Any, kind: Kind) -> None:
    # Left behind by a non-transactional delete (the Ruby plugin's).
    plain_sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) "
        """VALUES (%s, 'alice', 'old', '"stale"'), (%s, 'alice', 'k', '1')""",
        (kind.noun, kind.noun),
    )
    kind.create(db, kind.make("alice", {"k": 2}))
    assert kind.attribute_rows(plain_sql, "alice") == {"k": 2}


def test_update_of_what_get_returned_keeps_everything(db: Database, kind: Kind) -> None:
    kind.create(db, kind.make("alice", {"a": {"deep": [1]}}))
    found = kind.get(db, "alice")
    assert found is not None
    db.write(lambda c: kind.repository(c).update(found))
    assert kind.get(db, "alice") == found


def test_update_of_an_unknown_name_is_not_found_and_writes_nothing(
    db: Database, plain_sql: Any, kind: Kind
) -> None:
    with pytest.raises(NotFound, match=f"{kind.noun} 'ghost' does not exist"):
        db.write(lambda c: kind.repository(c).update(kind.make("ghost", {"a": 1})))
    assert plain_sql.value(f"SELECT count(*) FROM {kind.table}") == 0
    assert plain_sql.value("SELECT count(*) FROM attributes") == 0


def test_delete_takes_the_attributes_along(db: Database, plain_sql: Any, kind: Kind) -> None:
    kind.create(db, kind.make("alice", {"a": 1, "b": 2}))
    kind.create(db, kind.make("bob", {"a": 1}))
    assert db.write(lambda c: kind.repository(c).delete("alice")) is True
    assert kind.get(db, "alice") is None
    column, table = kind.name_column, kind.table
    assert plain_sql.rows(f"SELECT DISTINCT {column} FROM {table}") == [("bob",)]
    assert plain_sql.rows("SELECT identifier FROM attributes") == [("bob",)]
    assert db.write(lambda c: kind.repository(c).delete("alice")) is False


@pytest.mark.parametrize(
    ("kind", "entity", "message"),
    [
        (USERS, User(username="a\x00b"), "username contains the character U+0000"),
        (USERS, User(username=""), "username must be a non-empty string"),
        (USERS, User(username="a\ud800"), "username contains the character U+D800"),
        (
            USERS,
            User(username="alice", attributes={"k\x00": 1}),
            "user 'alice': attribute name 'k\\x00' contains the character U+0000",
        ),
        (
            USERS,
            User(username="alice", attributes={"k": {"deep": ["ok", "b\x00d"]}}),
            "user 'alice': attributes.k.deep[1]: contains the character U+0000",
        ),
        (
            USERS,
            User(username="alice", attributes={"k": float("nan")}),
            "user 'alice': attributes.k: nan is not a JSON number",
        ),
        (
            USERS,
            User(username="alice", attributes={"k": float("inf")}),
            "user 'alice': attributes.k: inf is not a JSON number",
        ),
        (
            USERS,
            User(username="alice", attributes={"k": {1, 2}}),
            "user 'alice': attributes.k: a set is not a JSON value",
        ),
        (
            USERS,
            User(username="alice", consent={"c": "x\x00"}),
            "user 'alice': consent.c: contains the character U+0000",
        ),
        (
            USERS,
            User(username="alice", consent=["openid"]),  # type: ignore[arg-type]
            "user 'alice': consent must be a mapping",
        ),
        (
            USERS,
            User(username="alice", extern="i\x00dp"),
            "user 'alice': extern contains the character U+0000",
        ),
        (
            CLIENTS,
            Client(metadata={"client_id": "abc", "redirect_uris": ["https://x\x00"]}),
            "client 'abc': metadata.redirect_uris[0]: contains the character U+0000",
        ),
        (
            CLIENTS,
            Client(metadata={"client_id": "a\x00c"}),
            "client_id contains the character U+0000",
        ),
        (
            CLIENTS,
            Client(metadata={"client_id": "abc", "k\x00": 1}),
            "client 'abc': metadata field name 'k\\x00' contains the character U+0000",
        ),
        (
            CLIENTS,
            Client(metadata={"client_id": "abc", "n": float("nan")}),
            "client 'abc': metadata.n: nan is not a JSON number",
        ),
        (
            CLIENTS,
            Client(metadata={"client_id": "abc"}, attributes={"a": {"b": "\x00"}}),
            "client 'abc': attributes.a.b: contains the character U+0000",
        ),
        (
            CLIENTS,
            Client(metadata={"client_id": "abc"}, attributes={"a\ud800": 1}),
            "client 'abc': attribute name 'a\\ud800' contains the character U+D800",
        ),
        (
            CLIENTS,
            Client(metadata={"client_id": "abc"}, attributes={"a": float("-inf")}),
            "client 'abc': attributes.a: -inf is not a JSON number",
        ),
    ],
)
def test_invalid_values_are_refused_before_any_sql(
    db: Database, plain_sql: Any, kind: Kind, entity: Any, message: str
) -> None:
    db.read(lambda c: None)
    statements = count_statements(db.engine)
    for operation in ("create", "update"):
        with pytest.raises(InvalidValue, match=re.escape(message)):
            db.write(lambda c, op=operation: getattr(kind.repository(c), op)(entity))  # type: ignore[misc]
    assert statements == []
    assert plain_sql.value(f"SELECT count(*) FROM {kind.table}") == 0


# --- concurrency ----------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_creates_one_wins_the_others_get_already_exists(
    db: Database, plain_sql: Any, kind: Kind
) -> None:
    versions = [kind.rival(n) for n in range(WRITERS)]
    for round_ in range(3):
        results = run_together(
            WRITERS, lambda n: db.write(lambda c: kind.repository(c).create(versions[n]))
        )
        winners = [n for n, r in enumerate(results) if r is None]
        assert len(winners) == 1, results
        losers = [r for r in results if r is not None]
        assert all(isinstance(r, AlreadyExists) for r in losers), losers
        winner = versions[winners[0]]
        assert kind.own_rows(plain_sql, "rival") == kind.own_fields(winner)
        assert kind.attribute_rows(plain_sql, "rival") == winner.attributes
        assert db.write(lambda c: kind.repository(c).delete("rival")), round_


@pytest.mark.slow
def test_concurrent_updates_serialize_and_never_mix(
    db: Database, plain_sql: Any, kind: Kind
) -> None:
    kind.create(db, kind.make("rival", {"initial": True}))
    versions = [kind.rival(n) for n in range(WRITERS)]
    for _ in range(5):
        results = run_together(
            WRITERS, lambda n: db.write(lambda c: kind.repository(c).update(versions[n]))
        )
        assert results == [None] * WRITERS
        found = kind.get(db, "rival")
        assert found is not None
        winner = versions[found.attributes["who"]]
        assert found == dataclasses.replace(winner, backend=BACKEND_NAME)
        assert kind.own_rows(plain_sql, "rival") == kind.own_fields(winner)
        assert kind.attribute_rows(plain_sql, "rival") == winner.attributes
