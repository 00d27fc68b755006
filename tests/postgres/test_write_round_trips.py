"""The hot writes wait for the server as few times as their answers allow.

Statements that need no answer from each other go out together (psycopg's
pipeline mode, ``postgres.database.direct.together``). Round trips are counted
on the wire (libpq's protocol trace, ``tests.kits.wire``): each Sync or simple
Query is one wait for the server. ``BEGIN`` is one of them: psycopg waits for
it before the transaction's first statement, as the floor of the bench does.
What the tests also check is that sending together changes nothing else: the
same rows, the same errors, and nothing of a refused write is left behind.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import errors as pg_errors
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from omejdn_pg.entities import Client, User
from omejdn_pg.errors import ConfigurationError, NotFound, StorageError
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres.database import direct
from omejdn_pg.postgres.database.direct import execute, together
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.clients import ClientRepository
from omejdn_pg.postgres.repositories.config import ConfigRepository
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.sealing import Keyring, generate_secret
from tests.kits.wire import traced_write
from tests.kits.witness import PlainSQL


def attribute_rows(plain_sql: PlainSQL, kind: str, identifier: str) -> dict[str, Any]:
    return dict(
        plain_sql.rows(
            "SELECT key, value::jsonb FROM attributes WHERE type = %s AND identifier = %s",
            (kind, identifier),
        )
    )


def test_a_user_update_is_begin_one_round_trip_and_commit(
    db: Database, plain_sql: PlainSQL
) -> None:
    db.write(lambda c: UserRepository(c).create(User(username="alice", attributes={"a": 1})))
    updated = User(username="alice", extern="idp", attributes={"b": [2], "c": "3"})
    _, wire = traced_write(db, lambda c: UserRepository(c).update(updated))
    assert wire.round_trips == 3, wire.lines
    assert wire.final_status == "I"
    assert plain_sql.value("SELECT extern FROM users WHERE username = 'alice'") == "idp"
    assert attribute_rows(plain_sql, "user", "alice") == {"b": [2], "c": "3"}


def test_updating_a_missing_user_leaves_no_attribute_rows(
    db: Database, plain_sql: PlainSQL
) -> None:
    ghost = User(username="ghost", attributes={"email": "ghost@example.org"})
    with pytest.raises(NotFound, match="user 'ghost' does not exist"):
        db.write(lambda c: UserRepository(c).update(ghost))
    assert attribute_rows(plain_sql, "user", "ghost") == {}
    assert plain_sql.value("SELECT count(*) FROM users") == 0


def test_without_pipeline_mode_the_statements_go_one_by_one(
    db: Database, plain_sql: PlainSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As with a libpq older than 14, which has no pipeline mode.
    monkeypatch.setattr(direct, "PIPELINES", False)
    db.write(lambda c: UserRepository(c).create(User(username="alice", attributes={"a": 1})))
    updated = User(username="alice", attributes={"b": 2})
    _, wire = traced_write(db, lambda c: UserRepository(c).update(updated))
    assert wire.round_trips == 5, wire.lines
    assert attribute_rows(plain_sql, "user", "alice") == {"b": 2}
    with pytest.raises(NotFound, match="user 'ghost' does not exist"):
        db.write(lambda c: UserRepository(c).update(User(username="ghost")))


def test_in_a_batch_a_missing_users_update_leaves_its_names_rows_alone(
    db: Database, plain_sql: PlainSQL
) -> None:
    # Rows of a name with no user, as the Ruby plugin can leave them behind.
    plain_sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) "
        "VALUES ('user', 'ghost', 'left', '\"behind\"')"
    )
    ghost = User(username="ghost", attributes={"email": "ghost@example.org"})
    with db.batch():
        db.write(lambda c: UserRepository(c).create(User(username="alice")))
        with pytest.raises(NotFound, match="user 'ghost' does not exist"):
            db.write(lambda c: UserRepository(c).update(ghost))
    assert attribute_rows(plain_sql, "user", "ghost") == {"left": "behind"}
    assert plain_sql.value("SELECT username FROM users") == "alice"


def test_a_client_update_is_four_round_trips_and_five_with_keys(
    db: Database, plain_sql: PlainSQL
) -> None:
    db.write(lambda c: ClientRepository(c).create(Client(metadata={"client_id": "c1", "n": 1})))
    plain = Client(metadata={"client_id": "c1", "n": 2}, attributes={"x": True})
    _, wire = traced_write(db, lambda c: ClientRepository(c).update(plain))
    assert wire.round_trips == 4, wire.lines
    assert attribute_rows(plain_sql, "client", "c1") == {"x": True}

    jwks = KeySet([generate_key("ES256").public()]).to_jwks(private=False)
    keyed = Client(metadata={"client_id": "c1", "n": 3, "jwks": jwks})
    _, wire = traced_write(db, lambda c: ClientRepository(c).update(keyed))
    assert wire.round_trips == 5, wire.lines
    found = db.read(lambda c: ClientRepository(c).get("c1"))
    assert found is not None
    assert found.metadata["n"] == 3
    assert [key["kid"] for key in found.metadata["jwks"]["keys"]] == [
        key["kid"] for key in jwks["keys"]
    ]
    assert attribute_rows(plain_sql, "client", "c1") == {}


def test_updating_a_missing_client_writes_nothing(db: Database, plain_sql: PlainSQL) -> None:
    ghost = Client(metadata={"client_id": "ghost", "n": 1}, attributes={"x": 1})
    with pytest.raises(NotFound, match="client 'ghost' does not exist"):
        db.write(lambda c: ClientRepository(c).update(ghost))
    assert plain_sql.value("SELECT count(*) FROM clients") == 0
    assert attribute_rows(plain_sql, "client", "ghost") == {}


def test_a_key_set_store_is_four_round_trips(db: Database, plain_sql: PlainSQL) -> None:
    keys = KeySet([generate_key("ES256"), generate_key("RS256")])
    db.write(lambda c: KeyRepository(c, allow_plaintext=True).store("jwks", "omejdn", keys))
    again = KeySet([*keys, generate_key("ES256")])
    _, wire = traced_write(
        db, lambda c: KeyRepository(c, allow_plaintext=True).store("jwks", "omejdn", again)
    )
    assert wire.round_trips == 4, wire.lines
    assert plain_sql.value("SELECT count(*) FROM keys WHERE target = 'omejdn'") == 3


def test_a_plain_key_refused_beside_sealed_ones_leaves_the_set_as_it_was(
    db: Database, plain_sql: PlainSQL
) -> None:
    keyring = Keyring.from_settings([{"id": "k1", "env": "KEK"}], {"KEK": generate_secret()})
    sealed = KeySet([generate_key("ES256")])
    db.write(lambda c: KeyRepository(c, keyring).store("jwks", "omejdn", sealed))
    before = plain_sql.rows("SELECT kid, value FROM keys ORDER BY kid")

    plain = KeySet([generate_key("ES256")])
    with pytest.raises(ConfigurationError, match="sealed by key-encryption key 'k1'"):
        db.write(lambda c: KeyRepository(c).store("jwks", "other", plain))
    assert plain_sql.rows("SELECT kid, value FROM keys ORDER BY kid") == before
    # Refused inside a batch that goes on and commits: nothing of it was written.
    with db.batch():
        with pytest.raises(ConfigurationError, match="sealed by key-encryption key 'k1'"):
            db.write(lambda c: KeyRepository(c).store("jwks", "other", plain))
        db.write(lambda c: UserRepository(c).create(User(username="after")))
    assert plain_sql.rows("SELECT kid, value FROM keys ORDER BY kid") == before
    assert plain_sql.value("SELECT username FROM users") == "after"


def test_a_configuration_section_store_is_four_round_trips(
    db: Database, plain_sql: PlainSQL
) -> None:
    db.write(lambda c: ConfigRepository(c).store("omejdn", {"issuer": "a"}))
    _, wire = traced_write(
        db, lambda c: ConfigRepository(c).store("omejdn", {"issuer": "b", "n": 1})
    )
    assert wire.round_trips == 4, wire.lines
    assert dict(plain_sql.rows("SELECT key, value::jsonb FROM configuration_omejdn")) == {
        "issuer": "b",
        "n": 1,
    }


def test_a_failed_statement_sent_together_fails_the_write_whole(
    db: Database, plain_sql: PlainSQL
) -> None:
    def operation(conn: Any) -> None:
        with together(conn):
            execute(conn, text("INSERT INTO users (username) VALUES ('early')"))
            execute(conn, text("SELECT 1 / 0"))
            execute(conn, text("INSERT INTO users (username) VALUES ('late')"))

    with pytest.raises(StorageError, match="division by zero") as raised:
        db.write(operation)
    cause = raised.value.__cause__
    assert isinstance(cause, sa_exc.DataError)
    assert isinstance(cause.orig, pg_errors.DivisionByZero)
    assert plain_sql.value("SELECT count(*) FROM users") == 0
    # The pooled connection is usable afterwards, in a transaction of its own.
    db.write(lambda c: UserRepository(c).create(User(username="after")))
    assert plain_sql.value("SELECT username FROM users") == "after"
