"""Password hashes through UserRepository: verified, upgraded on login, never plaintext in the
database (checked with plain SQL); the policy alone is unit/test_passwords.py.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import bcrypt
import pytest
from sqlalchemy import Connection, event

from omejdn_pg.entities import User
from omejdn_pg.errors import InvalidValue, PasswordRejected
from omejdn_pg.passwords import BCRYPT_MAX_BYTES, PasswordPolicy
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.settings.backend import PasswordSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import ok, omejdn_pg
from tests.kits.passwords import OMEJDN_HASH, bcrypt_hash, costly_argon2

FAST = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))
ARGON2 = PasswordPolicy(PasswordSettings(scheme="argon2", bcrypt_rounds=4))


def stored_password(plain_sql: Any, username: str = "alice") -> str | None:
    value: str | None = plain_sql.value(
        "SELECT password FROM users WHERE username = %s", (username,)
    )
    return value


def store(db: Database, password_hash: str | None, username: str = "alice") -> None:
    db.write(
        lambda c: UserRepository(c, FAST).create(User(username=username, password=password_hash))
    )


def verify(
    db: Database, policy: PasswordPolicy, password: str, username: str = "alice"
) -> bool | None:
    return db.read(lambda c: UserRepository(c, policy).verify_password(username, password))


def test_omejdn_hash_verifies_through_the_repository_and_is_kept(
    db: Database, plain_sql: Any
) -> None:
    store(db, OMEJDN_HASH)
    assert verify(db, PasswordPolicy(), "mypassword") is True
    assert verify(db, FAST, "mypassword") is True
    assert verify(db, FAST, "wrong") is False
    assert stored_password(plain_sql) == OMEJDN_HASH


def test_bcrypt_user_is_upgraded_to_argon2_on_the_next_login(db: Database, plain_sql: Any) -> None:
    store(db, OMEJDN_HASH)
    assert verify(db, ARGON2, "mypassword") is True
    upgraded = stored_password(plain_sql)
    assert upgraded is not None
    assert upgraded.startswith("$argon2")
    assert verify(db, ARGON2, "mypassword") is True
    assert stored_password(plain_sql) == upgraded  # no second upgrade
    # Still a valid login under a bcrypt policy (argon2 stays verifiable).
    assert ARGON2.verify("mypassword", upgraded) == (True, None)


def test_cheaper_bcrypt_is_upgraded_to_the_configured_cost(db: Database, plain_sql: Any) -> None:
    store(db, bcrypt_hash("s3cret", rounds=4, prefix="2a"))
    policy = PasswordPolicy(PasswordSettings(bcrypt_rounds=5))
    assert verify(db, policy, "s3cret") is True
    upgraded = stored_password(plain_sql)
    assert upgraded is not None
    assert upgraded.startswith("$2b$05$")
    assert bcrypt.checkpw(b"s3cret", upgraded.encode())


def test_a_wrong_password_never_upgrades(db: Database, plain_sql: Any) -> None:
    original = bcrypt_hash("s3cret", rounds=4)
    store(db, original)
    assert verify(db, ARGON2, "wrong") is False
    assert verify(db, PasswordPolicy(PasswordSettings(bcrypt_rounds=5)), "wrong") is False
    assert stored_password(plain_sql) == original


LONG = "ä" * 36 + "tail"  # 72 bytes of UTF-8, then more


def test_a_long_password_through_the_repository(db: Database, plain_sql: Any) -> None:
    prefix = LONG.encode()[:BCRYPT_MAX_BYTES]
    original = bcrypt.hashpw(prefix, bcrypt.gensalt(4)).decode()
    store(db, original)
    assert verify(db, ARGON2, LONG) is False
    assert stored_password(plain_sql) == original
    with pytest.raises(PasswordRejected) as error:
        db.write(lambda c: UserRepository(c, FAST).set_password("alice", LONG))
    assert LONG not in str(error.value)
    assert stored_password(plain_sql) == original


def test_an_upgrade_never_overwrites_a_concurrent_password_change(
    db: Database, plain_sql: Any
) -> None:
    store(db, bcrypt_hash("old", rounds=4))
    changed = bcrypt_hash("new", rounds=4)

    # Just before the re-hash is written, another writer changes the password.
    def change_first(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE users SET password") and "users.password =" in statement:
            plain_sql.execute("UPDATE users SET password = %s", (changed,))

    event.listen(db.engine, "before_cursor_execute", change_first)
    try:
        assert verify(db, ARGON2, "old") is True
    finally:
        event.remove(db.engine, "before_cursor_execute", change_first)
    assert stored_password(plain_sql) == changed


def test_upgrade_happens_in_the_same_call(db: Database) -> None:
    store(db, bcrypt_hash("s3cret", rounds=4))
    db.read(lambda c: None)
    statements = count_statements(db.engine)
    assert verify(db, ARGON2, "s3cret") is True
    assert [s.split()[0] for s in statements] == ["SELECT", "UPDATE"]


def test_plaintext_never_reaches_the_database(db: Database, plain_sql: Any) -> None:
    db.read(lambda c: None)
    statements = count_statements(db.engine)
    with pytest.raises(InvalidValue, match="password must be a") as error:
        store(db, "mypassword")
    assert "mypassword" not in str(error.value)
    assert statements == []
    assert plain_sql.value("SELECT count(*) FROM users") == 0

    # the way to store a new password: hashed by the policy
    store(db, None)
    db.write(lambda c: UserRepository(c, FAST).set_password("alice", "mypassword"))
    stored = stored_password(plain_sql)
    assert stored is not None
    assert stored.startswith("$2b$04$")
    assert "mypassword" not in stored


def test_from_dict_hashes_plaintext_before_it_is_stored(db: Database, plain_sql: Any) -> None:
    # Omejdn's YAML form may carry plaintext; the entity hashes it on the way in.
    user = User.from_dict({"username": "yaml", "password": "mypassword"})
    assert user.password is not None
    assert user.password != "mypassword"
    store(db, user.password, username="yaml")
    assert stored_password(plain_sql, "yaml") == user.password
    assert verify(db, FAST, "mypassword", username="yaml") is True


def test_the_repository_refuses_a_costly_argon2_hash(db: Database, plain_sql: Any) -> None:
    with pytest.raises(PasswordRejected, match="user 'alice': an argon2 hash of memory"):
        store(db, costly_argon2())
    assert plain_sql.value("SELECT count(*) FROM users") == 0
    store(db, OMEJDN_HASH)
    with pytest.raises(PasswordRejected, match="an argon2 hash of time 1000 above 10"):
        db.write(
            lambda c: UserRepository(c, FAST).set_password_hash("alice", costly_argon2(65536, 1000))
        )
    assert stored_password(plain_sql) == OMEJDN_HASH


def test_a_stored_costly_argon2_hash_is_never_verified(
    db: Database, plain_sql: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Written behind the package's back (another writer, hand SQL).
    store(db, OMEJDN_HASH)
    costly = costly_argon2(4194304, 1000, 1)
    plain_sql.execute("UPDATE users SET password = %s", (costly,))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="omejdn_pg.passwords"):
        assert verify(db, ARGON2, "mypassword") is False
    assert time.monotonic() - started < 1
    assert "the stored hash is refused: an argon2 hash of memory (KiB) 4194304" in caplog.text
    assert costly not in caplog.text
    assert "mypassword" not in caplog.text
    assert stored_password(plain_sql) == costly  # never "upgraded" either


def test_users_hash_report_shows_argon2_costs_and_the_refused(
    db: Database, database: ConnectionSettings, plain_sql: Any
) -> None:
    store(db, OMEJDN_HASH)
    store(db, OMEJDN_HASH, "bob")
    costly = costly_argon2()
    plain_sql.execute("UPDATE users SET password = %s WHERE username = 'bob'", (costly,))

    human = ok(omejdn_pg("--url", database.conninfo(), "users", "hash-report")).stdout
    as_json = json.loads(
        ok(omejdn_pg("--url", database.conninfo(), "users", "hash-report", "-o", "json")).stdout
    )

    assert "argon2id m=1048576 t=3 p=4: 1" in human
    assert "1 above the cost limits" in human
    assert as_json["kinds"]["argon2id m=1048576 t=3 p=4"] == 1
    assert as_json["refused_too_costly"] == 1
    assert costly not in human
