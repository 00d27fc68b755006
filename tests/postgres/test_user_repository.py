"""UserRepository against a real PostgreSQL: results checked with plain SQL.

What it promises alike with the other repository is in ``test_repository_contract.py``;
this module holds what is its own.

Round trips are counted on the wire (libpq's protocol trace of the pooled
connection, taken by ``tests.kits.wire.traced_read``), not through SQLAlchemy's
begin/rollback events: under AUTOCOMMIT SQLAlchemy still fires those for its
own bookkeeping although the driver sends nothing, so only the trace tells
what the server actually saw.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection

from omejdn_pg.entities import User
from omejdn_pg.errors import AlreadyExists, InvalidValue, NotFound
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.settings.backend import BACKEND_NAME, PasswordSettings
from tests.kits.strategies import PROPERTY_SETTINGS, json_values, names, same_json, texts
from tests.kits.threads import WRITERS, run_together
from tests.kits.wire import traced_read

POLICY = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))
HASH = POLICY.hash("correct horse")
OTHER_HASH = POLICY.hash("battery staple")


def repo(conn: Connection) -> UserRepository:
    return UserRepository(conn, POLICY)


def create(db: Database, user: User) -> None:
    db.write(lambda c: repo(c).create(user))


def get(db: Database, username: str) -> User | None:
    return db.read(lambda c: repo(c).get(username))


def attribute_rows(plain_sql: Any, username: str) -> dict[str, Any]:
    rows = plain_sql.rows(
        "SELECT key, value::jsonb FROM attributes WHERE type = 'user' AND identifier = %s",
        (username,),
    )
    return dict(rows)


# --- reads ----------------------------------------------------------------------


def test_create_then_get_round_trips_and_rows_are_as_stored(db: Database, plain_sql: Any) -> None:
    user = User(
        username="alice",
        password=HASH,
        attributes={"email": "alice@example.org", "roles": ["admin", {"scope": "a/b"}]},
        extern="https://idp.example",
        consent={"client-1": ["openid", "profile"]},
    )
    create(db, user)

    found = get(db, "alice")
    assert found == User(
        username="alice",
        password=HASH,
        attributes=user.attributes,
        extern="https://idp.example",
        consent=user.consent,
        backend=BACKEND_NAME,
    )
    assert plain_sql.rows("SELECT username, password, extern, consent FROM users") == [
        ("alice", HASH, "https://idp.example", {"client-1": ["openid", "profile"]})
    ]
    assert attribute_rows(plain_sql, "alice") == user.attributes


def test_user_without_attributes_gets_empty_mapping(db: Database) -> None:
    create(db, User(username="bare"))
    assert get(db, "bare") == User(username="bare", backend=BACKEND_NAME)


def test_all_is_a_constant_number_of_statements(db: Database, plain_sql: Any) -> None:
    create(db, User(username="user-000", attributes={"n": 0}))
    db.read(lambda c: None)
    statements = count_statements(db.engine)
    assert len(db.read(lambda c: repo(c).all())) == 1
    for_one = len(statements)

    def create_many(conn: Connection) -> None:
        for n in range(1, 200):
            repo(conn).create(
                User(username=f"user-{n:03}", attributes={"n": n, "even": n % 2 == 0})
            )

    db.write(create_many)
    statements.clear()
    users = db.read(lambda c: repo(c).all())
    assert len(statements) == for_one == 1
    assert [u.username for u in users] == [f"user-{n:03}" for n in range(200)]
    assert all(u.backend == BACKEND_NAME for u in users)
    assert users[7].attributes == {"n": 7, "even": False}
    assert plain_sql.value("SELECT count(*) FROM attributes WHERE type = 'user'") == 399


# --- create ---------------------------------------------------------------------


def test_a_duplicate_create_is_one_statement_and_quotes_neither_hash(
    db: Database, plain_sql: Any
) -> None:
    # That it touches nothing else is the contract's (test_repository_contract.py).
    create(db, User(username="alice", password=HASH, attributes={"keep": 1}))
    with db.transaction() as conn:
        statements = count_statements(db.engine)
        with pytest.raises(AlreadyExists, match="user 'alice' exists already") as error:
            repo(conn).create(User(username="alice", password=OTHER_HASH, attributes={"x": 2}))
        assert len(statements) == 1
    assert HASH not in str(error.value)
    assert OTHER_HASH not in str(error.value)
    assert plain_sql.value("SELECT password FROM users") == HASH


def test_attributes_in_the_old_list_form_are_stored_as_a_mapping(db: Database) -> None:
    user = User(username="old", attributes=[{"key": "a", "value": 1}])  # type: ignore[arg-type]
    create(db, user)
    found = get(db, "old")
    assert found is not None
    assert found.attributes == {"a": 1}


# --- update ---------------------------------------------------------------------


def test_update_replaces_everything(db: Database, plain_sql: Any) -> None:
    create(
        db,
        User(
            username="alice",
            password=HASH,
            attributes={"a": 1, "b": 2},
            extern="idp",
            consent={"c": ["openid"]},
        ),
    )
    db.write(
        lambda c: repo(c).update(
            User(username="alice", password=OTHER_HASH, attributes={"b": 3, "c": None})
        )
    )
    assert get(db, "alice") == User(
        username="alice", password=OTHER_HASH, attributes={"b": 3, "c": None}, backend="postgres"
    )
    assert plain_sql.rows("SELECT password, extern, consent FROM users") == [(OTHER_HASH, None, {})]
    assert attribute_rows(plain_sql, "alice") == {"b": 3, "c": None}


def test_update_is_one_transaction(db: Database, plain_sql: Any) -> None:
    create(db, User(username="alice", attributes={"a": 1}))
    # The second value is refused by PostgreSQL only after the user row was
    # updated: nothing of the update may remain.
    plain_sql.execute(
        "ALTER TABLE attributes ADD CONSTRAINT no_forbidden CHECK (key <> 'forbidden')"
    )
    with pytest.raises(Exception, match="no_forbidden"):
        db.write(
            lambda c: repo(c).update(
                User(username="alice", password=HASH, attributes={"forbidden": 1})
            )
        )
    assert plain_sql.value("SELECT password FROM users") is None
    assert attribute_rows(plain_sql, "alice") == {"a": 1}


# --- delete ---------------------------------------------------------------------


def test_delete_of_unknown_user_leaves_others_alone(db: Database, plain_sql: Any) -> None:
    plain_sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES ('user', 'ghost', 'k', '1')"
    )
    assert db.write(lambda c: repo(c).delete("ghost")) is False
    assert plain_sql.value("SELECT count(*) FROM attributes") == 1


# --- passwords (the repository side; schemes are in unit/test_passwords.py) -----


def test_set_password_stores_a_hash_of_it(db: Database, plain_sql: Any) -> None:
    create(db, User(username="alice"))
    db.write(lambda c: repo(c).set_password("alice", "s3cret"))
    stored = plain_sql.value("SELECT password FROM users")
    assert stored != "s3cret"
    assert stored.startswith("$2b$04$")
    assert db.read(lambda c: repo(c).verify_password("alice", "s3cret")) is True
    assert db.read(lambda c: repo(c).verify_password("alice", "wrong")) is False


def test_set_password_of_unknown_user_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound, match="user 'ghost'") as error:
        db.write(lambda c: repo(c).set_password("ghost", "s3cret"))
    assert "s3cret" not in str(error.value)


def test_verify_password_of_unknown_user_is_none(db: Database) -> None:
    assert db.read(lambda c: repo(c).verify_password("ghost", "pw")) is None


def test_verify_password_of_user_without_password_is_false(db: Database) -> None:
    create(db, User(username="external", extern="idp"))
    assert db.read(lambda c: repo(c).verify_password("external", "")) is False
    assert db.read(lambda c: repo(c).verify_password("external", "pw")) is False


def test_verify_password_without_upgrade_is_one_round_trip(db: Database) -> None:
    create(db, User(username="alice", password=HASH))
    db.read(lambda c: None)
    ok, wire = traced_read(db, lambda c: repo(c).verify_password("alice", "correct horse"))
    assert ok is True
    assert wire.round_trips == 1
    assert wire.transaction_control == []


# --- validation -----------------------------------------------------------------


@pytest.mark.parametrize("username", ["a\x00b", ""])
def test_invalid_usernames_are_refused_by_writes_and_found_by_no_read(
    db: Database, username: str
) -> None:
    writes: list[Callable[[UserRepository], object]] = [
        lambda r: r.delete(username),
        lambda r: r.set_password(username, "pw"),
    ]
    for call in writes:
        with pytest.raises(InvalidValue, match="username"):
            db.write(lambda c, call=call: call(repo(c)))  # type: ignore[misc]
    # A name from a login form that nothing can be stored under is simply unknown.
    db.read(lambda c: None)
    statements = count_statements(db.engine)
    assert db.read(lambda c: repo(c).get(username)) is None
    assert db.read(lambda c: repo(c).verify_password(username, "pw")) is None
    assert statements == []


@pytest.mark.parametrize(
    "not_a_hash",
    ["hunter2", "$2b$hunter2", "$2a$12$" + "x" * 20, "$argon2id$plain", "correct horse"],
)
def test_plaintext_password_is_refused_without_quoting_it(
    db: Database, plain_sql: Any, not_a_hash: str
) -> None:
    for operation in (UserRepository.create, UserRepository.update):
        with pytest.raises(InvalidValue, match="user 'alice': password must be a") as error:
            db.write(
                lambda c, op=operation: op(repo(c), User(username="alice", password=not_a_hash))  # type: ignore[misc]
            )
        assert not_a_hash not in str(error.value)
    assert plain_sql.value("SELECT count(*) FROM users") == 0


# --- Omejdn's Ruby plugin layout: JSON as TEXT ----------------------------------


def test_crud_on_text_columns_of_the_ruby_plugin(db: Database, plain_sql: Any) -> None:
    plain_sql.execute("ALTER TABLE attributes ALTER COLUMN value TYPE text USING value::text")
    assert (
        plain_sql.value(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'attributes' AND column_name = 'value'"
        )
        == "text"
    )
    # What the Ruby plugin writes: compact JSON, raw UTF-8.
    plain_sql.execute("INSERT INTO users (username, password) VALUES ('ruby', %s)", (HASH,))
    plain_sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES "
        """('user', 'ruby', 'name', '"Jürgen/x"'), ('user', 'ruby', 'obj', '{"a":[1,2.5,null]}')"""
    )
    assert get(db, "ruby") == User(
        username="ruby",
        password=HASH,
        attributes={"name": "Jürgen/x", "obj": {"a": [1, 2.5, None]}},
        backend="postgres",
    )

    attributes = {"email": "a@b.c", "n": 3, "nested": {"l": [True, None, "ü"]}, "s": "plain"}
    create(db, User(username="alice", password=HASH, attributes=attributes))
    assert get(db, "alice") == User(
        username="alice", password=HASH, attributes=attributes, backend="postgres"
    )
    stored = dict(plain_sql.rows("SELECT key, value FROM attributes WHERE identifier = 'alice'"))
    assert all(isinstance(v, str) for v in stored.values())
    assert {k: json.loads(v) for k, v in stored.items()} == attributes

    db.write(lambda c: repo(c).update(User(username="alice", attributes={"s": "new"})))
    assert get(db, "alice") == User(username="alice", attributes={"s": "new"}, backend="postgres")
    assert plain_sql.rows("SELECT value FROM attributes WHERE identifier = 'alice'") == [('"new"',)]

    users = db.read(lambda c: repo(c).all())
    # The Ruby plugin's row came first: a writer that does not know the order appends.
    assert [u.username for u in users] == ["ruby", "alice"]

    assert db.write(lambda c: repo(c).delete("alice"))
    assert db.write(lambda c: repo(c).delete("ruby"))
    assert plain_sql.value("SELECT count(*) FROM attributes") == 0


# --- concurrency ----------------------------------------------------------------


def writer_version(n: int) -> User:
    """A complete user state that no other writer shares a single key of."""
    return User(
        username="alice",
        password=HASH if n % 2 else OTHER_HASH,
        attributes={f"w{n}-{k}": n * 10 + k for k in range(6)} | {"who": n},
        extern=f"idp-{n}",
        consent={f"client-{n}": ["openid"]},
    )


@pytest.mark.slow
def test_concurrent_updates_and_deletes_leave_no_orphans(db: Database, plain_sql: Any) -> None:
    versions = [writer_version(n) for n in range(WRITERS)]
    for _ in range(5):
        create(db, User(username="alice", attributes={"initial": True}))

        def work(n: int) -> object:
            if n % 4 == 0:
                return db.write(lambda c: repo(c).delete("alice"))
            return db.write(lambda c: repo(c).update(versions[n]))

        results = run_together(WRITERS, work)
        assert all(r is None or isinstance(r, bool | NotFound) for r in results), results
        assert get(db, "alice") is None
        assert attribute_rows(plain_sql, "alice") == {}


# --- properties -----------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    attributes=st.dictionaries(names, json_values, max_size=6),
    consent=st.dictionaries(texts, json_values, max_size=3),
)
def test_any_json_round_trips_through_attributes_and_consent(
    db: Database, attributes: dict[str, Any], consent: dict[str, Any]
) -> None:
    username = f"prop-{uuid.uuid4().hex}"
    create(db, User(username=username, attributes=attributes, consent=consent))
    found = get(db, username)
    assert found is not None
    assert same_json(found.attributes) == same_json(attributes)
    assert same_json(found.consent) == same_json(consent)


@PROPERTY_SETTINGS
@given(username=names, keys=st.lists(names, min_size=1, max_size=5, unique=True))
def test_unicode_usernames_and_attribute_keys_round_trip(
    db: Database, plain_sql: Any, username: str, keys: list[str]
) -> None:
    attributes = {key: index for index, key in enumerate(keys)}
    create(db, User(username=username, attributes=attributes))
    try:
        assert get(db, username) == User(
            username=username, attributes=attributes, backend="postgres"
        )
        assert plain_sql.value("SELECT username FROM users") == username
        assert attribute_rows(plain_sql, username) == attributes
    finally:
        assert db.write(lambda c: repo(c).delete(username))
