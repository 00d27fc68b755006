"""ClientRepository against a real PostgreSQL: results checked with plain SQL.

What it promises alike with the other repository is in ``test_repository_contract.py``;
this module holds what is its own.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection

from omejdn_pg.certificates import self_signed_certificate
from omejdn_pg.client_metadata import FIELDS as CHECKED_FIELDS
from omejdn_pg.entities import Client
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue, NotFound
from omejdn_pg.names import is_file_name
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories import listing
from omejdn_pg.postgres.repositories.client_reads import JWKS_FIELD
from omejdn_pg.postgres.repositories.clients import ClientRepository
from omejdn_pg.settings.backend import BACKEND_NAME
from tests.kits.strategies import PROPERTY_SETTINGS, json_values, names, same_json
from tests.kits.threads import WRITERS, run_together


def repo(conn: Connection) -> ClientRepository:
    return ClientRepository(conn)


def create(db: Database, client: Client) -> None:
    db.write(lambda c: repo(c).create(client))


def get(db: Database, client_id: str) -> Client | None:
    return db.read(lambda c: repo(c).get(client_id))


def metadata_rows(plain_sql: Any, client_id: str) -> dict[str, Any]:
    return dict(
        plain_sql.rows("SELECT key, value::jsonb FROM clients WHERE client_id = %s", (client_id,))
    )


def attribute_rows(plain_sql: Any, client_id: str) -> dict[str, Any]:
    return dict(
        plain_sql.rows(
            "SELECT key, value::jsonb FROM attributes WHERE type = 'client' AND identifier = %s",
            (client_id,),
        )
    )


def certificate(common_name: str) -> x509.Certificate:
    return self_signed_certificate(ec.generate_private_key(ec.SECP256R1()), common_name, days=1)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


CLIENT = Client(
    metadata={
        "client_id": "abc",
        "client_name": "Ünïcode client",
        "redirect_uris": ["https://app.example/cb"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "private_key_jwt",
    },
    attributes={"tenant": "t1", "limits": {"rate": 10}},
)


# --- reads ----------------------------------------------------------------------


def test_create_then_get_round_trips_one_row_per_field(db: Database, plain_sql: Any) -> None:
    create(db, CLIENT)
    assert get(db, "abc") == Client(
        metadata=CLIENT.metadata, attributes=CLIENT.attributes, backend=BACKEND_NAME
    )
    assert metadata_rows(plain_sql, "abc") == CLIENT.metadata  # client_id is a row too
    assert plain_sql.value("SELECT value FROM clients WHERE key = 'client_id'") == "abc"
    assert attribute_rows(plain_sql, "abc") == CLIENT.attributes


def test_backend_is_never_persisted_and_dropped_when_found(db: Database, plain_sql: Any) -> None:
    create(db, Client(metadata={"client_id": "abc", "backend": "yaml", "x": 1}, backend="yaml"))
    assert plain_sql.rows("SELECT key FROM clients ORDER BY key") == [("client_id",), ("x",)]
    # The Ruby plugin persisted it: a read ignores it.
    plain_sql.execute(
        """INSERT INTO clients (client_id, key, value) VALUES ('abc', 'backend', '"yaml"')"""
    )
    found = get(db, "abc")
    assert found == Client(metadata={"client_id": "abc", "x": 1}, backend=BACKEND_NAME)


def test_all_is_a_constant_number_of_statements(db: Database) -> None:
    create(db, Client(metadata={"client_id": "c-000", "n": 0}, attributes={"a": 0}))
    db.read(lambda c: None)
    statements = count_statements(db.engine)
    assert len(db.read(lambda c: repo(c).all())) == 1
    for_one = len(statements)

    def create_many(conn: Connection) -> None:
        for n in range(1, 200):
            repo(conn).create(
                Client(
                    metadata={"client_id": f"c-{n:03}", "n": n, "uris": [f"https://{n}.example"]},
                    attributes={"a": n} if n % 2 else {},
                )
            )

    db.write(create_many)
    statements.clear()
    clients = db.read(lambda c: repo(c).all())
    assert len(statements) == for_one == 1
    assert [c.client_id for c in clients] == [f"c-{n:03}" for n in range(200)]
    assert clients[7] == Client(
        metadata={"client_id": "c-007", "n": 7, "uris": ["https://7.example"]},
        attributes={"a": 7},
        backend=BACKEND_NAME,
    )
    assert clients[8].attributes == {}


def test_every_read_gives_the_fields_by_name_whatever_order_they_were_written_in(
    db: Database, plain_sql: Any
) -> None:
    # Another writer (the Ruby plugin, hand SQL) inserts a client's rows in its own order,
    # which is neither by name nor jsonb's order (shorter names first).
    written = [
        ("zeta", 1),
        ("client_id", "web"),
        ("backend", "yaml"),
        ("aaaaa", True),
        ("ab", [2]),
        ("mid", {}),
    ]
    for key, value in written:
        plain_sql.execute(
            "INSERT INTO clients (client_id, key, value) VALUES ('web', %s, %s)",
            (key, json.dumps(value)),
        )
    by_name = ["client_id", "aaaaa", "ab", "mid", "zeta"]
    found = get(db, "web")
    assert found is not None
    assert list(found.metadata) == by_name
    (listed,) = db.read(lambda c: repo(c).all())
    assert list(listed.metadata) == by_name
    with db.snapshot() as conn:  # as omejdn-pg clients list reads
        (operator_listed,) = list(listing.clients(conn))
    assert list(operator_listed.metadata) == by_name
    assert found == listed == operator_listed


# --- writes ---------------------------------------------------------------------


def test_update_replaces_metadata_and_attributes(db: Database, plain_sql: Any) -> None:
    create(db, CLIENT)
    new = Client(metadata={"client_id": "abc", "client_name": "renamed"}, attributes={"b": [1]})
    db.write(lambda c: repo(c).update(new))
    assert get(db, "abc") == Client(
        metadata=new.metadata, attributes=new.attributes, backend=BACKEND_NAME
    )
    assert metadata_rows(plain_sql, "abc") == new.metadata
    assert attribute_rows(plain_sql, "abc") == {"b": [1]}


def test_delete_takes_attributes_and_certificate_along(db: Database, plain_sql: Any) -> None:
    create(db, CLIENT)
    create(db, Client(metadata={"client_id": "other"}, attributes={"k": 1}))
    db.write(lambda c: repo(c).set_certificate("abc", certificate("abc")))
    db.write(lambda c: repo(c).set_certificate("other", certificate("other")))
    plain_sql.execute(
        "INSERT INTO keys (target_type, target, type, value) VALUES ('signing', 'abc', 'certs', '')"
    )

    assert db.write(lambda c: repo(c).delete("abc")) is True
    assert get(db, "abc") is None
    assert plain_sql.rows("SELECT DISTINCT client_id FROM clients") == [("other",)]
    assert plain_sql.rows("SELECT identifier FROM attributes") == [("other",)]
    assert sorted(plain_sql.rows("SELECT target_type, target FROM keys")) == [
        ("clients", "other"),
        ("signing", "abc"),
    ]
    assert db.write(lambda c: repo(c).delete("abc")) is False


def test_delete_of_unknown_client_leaves_its_certificate_alone(
    db: Database, plain_sql: Any
) -> None:
    # The certificate may belong to a client of another backend.
    db.write(lambda c: repo(c).set_certificate("yaml-client", certificate("y")))
    assert db.write(lambda c: repo(c).delete("yaml-client")) is False
    assert plain_sql.value("SELECT count(*) FROM keys") == 1


def test_a_failing_write_leaves_nothing_half_written(db: Database, plain_sql: Any) -> None:
    create(db, CLIENT)
    plain_sql.execute(
        "ALTER TABLE attributes ADD CONSTRAINT no_forbidden CHECK (key <> 'forbidden')"
    )
    with pytest.raises(Exception, match="no_forbidden"):
        db.write(
            lambda c: repo(c).update(
                Client(metadata={"client_id": "abc", "new": 1}, attributes={"forbidden": 1})
            )
        )
    assert metadata_rows(plain_sql, "abc") == CLIENT.metadata
    assert attribute_rows(plain_sql, "abc") == CLIENT.attributes


# --- certificate ----------------------------------------------------------------


def test_certificate_set_get_replace_delete(db: Database, plain_sql: Any) -> None:
    assert db.read(lambda c: repo(c).get_certificate("abc")) is None
    first, second = certificate("first"), certificate("second")
    db.write(lambda c: repo(c).set_certificate("abc", first))
    assert db.read(lambda c: repo(c).get_certificate("abc")) == first
    assert plain_sql.rows("SELECT target_type, target, type, value FROM keys") == [
        ("clients", "abc", "certs", pem(first))
    ]
    db.write(lambda c: repo(c).set_certificate("abc", second))
    assert db.read(lambda c: repo(c).get_certificate("abc")) == second
    assert plain_sql.value("SELECT count(*) FROM keys") == 1
    db.write(lambda c: repo(c).set_certificate("abc", None))
    assert db.read(lambda c: repo(c).get_certificate("abc")) is None
    assert plain_sql.value("SELECT count(*) FROM keys") == 0
    db.write(lambda c: repo(c).set_certificate("abc", None))  # deleting nothing is fine


def test_certificate_chain_written_by_the_ruby_plugin_gives_its_first(
    db: Database, plain_sql: Any
) -> None:
    leaf, ca = certificate("leaf"), certificate("ca")
    plain_sql.execute(
        "INSERT INTO keys (target_type, target, type, value) "
        "VALUES ('clients', 'abc', 'certs', %s)",
        (pem(leaf) + "_" + pem(ca),),
    )
    assert db.read(lambda c: repo(c).get_certificate("abc")) == leaf
    plain_sql.execute("UPDATE keys SET value = ''")
    assert db.read(lambda c: repo(c).get_certificate("abc")) is None


def test_unreadable_certificate_is_invalid_key_material(db: Database, plain_sql: Any) -> None:
    plain_sql.execute(
        "INSERT INTO keys (target_type, target, type, value) "
        "VALUES ('clients', 'abc', 'certs', 'not a pem')"
    )
    with pytest.raises(InvalidKeyMaterial, match="keys of client 'abc'"):
        db.read(lambda c: repo(c).get_certificate("abc"))


def test_set_certificate_refuses_what_is_not_a_certificate(db: Database) -> None:
    with pytest.raises(InvalidKeyMaterial, match=r"expected an X\.509 certificate"):
        db.write(lambda c: repo(c).set_certificate("abc", "-----BEGIN CERTIFICATE-----"))  # type: ignore[arg-type]


# --- validation -----------------------------------------------------------------


def test_invalid_client_ids_are_refused_by_writes_and_found_by_no_read(db: Database) -> None:
    for call in (
        lambda r: r.delete("a\x00"),
        lambda r: r.set_certificate("a\x00", None),
        lambda r: r.delete(""),
    ):
        with pytest.raises(InvalidValue, match="client_id"):
            db.write(lambda c, call=call: call(repo(c)))  # type: ignore[misc]
    # A client_id from a request that nothing can be stored under is simply unknown.
    db.read(lambda c: None)
    statements = count_statements(db.engine)
    for client_id in ("a\x00", "", "\ud800"):
        assert db.read(lambda c, i=client_id: repo(c).get(i)) is None  # type: ignore[misc]
        assert db.read(lambda c, i=client_id: repo(c).get_certificate(i)) is None  # type: ignore[misc]
    assert statements == []


# --- Omejdn's Ruby plugin layout: JSON as TEXT ----------------------------------


def test_crud_on_text_columns_of_the_ruby_plugin(db: Database, plain_sql: Any) -> None:
    plain_sql.execute("ALTER TABLE clients ALTER COLUMN value TYPE text USING value::text")
    plain_sql.execute("ALTER TABLE attributes ALTER COLUMN value TYPE text USING value::text")
    # What the Ruby plugin writes: compact JSON, raw UTF-8, '/' unescaped.
    plain_sql.execute(
        "INSERT INTO clients (client_id, key, value) VALUES "
        """('ruby', 'client_id', '"ruby"'), ('ruby', 'redirect_uris', '["https://r/cb"]'), """
        """('ruby', 'backend', '"postgres"')"""
    )
    plain_sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) "
        """VALUES ('client', 'ruby', 'x', '{"a":1.5}')"""
    )
    assert get(db, "ruby") == Client(
        metadata={"client_id": "ruby", "redirect_uris": ["https://r/cb"]},
        attributes={"x": {"a": 1.5}},
        backend=BACKEND_NAME,
    )

    create(db, CLIENT)
    assert get(db, "abc") == Client(
        metadata=CLIENT.metadata, attributes=CLIENT.attributes, backend=BACKEND_NAME
    )
    stored = dict(plain_sql.rows("SELECT key, value FROM clients WHERE client_id = 'abc'"))
    assert all(isinstance(v, str) for v in stored.values())
    assert {k: json.loads(v) for k, v in stored.items()} == CLIENT.metadata

    new = Client(metadata={"client_id": "abc", "n": 2}, attributes={"b": "ü"})
    db.write(lambda c: repo(c).update(new))
    assert get(db, "abc") == Client(
        metadata=new.metadata, attributes=new.attributes, backend="postgres"
    )
    assert plain_sql.rows("SELECT value FROM attributes WHERE identifier = 'abc'") == [('"ü"',)]

    # The Ruby plugin's rows came first: a writer that does not know the order appends.
    assert [c.client_id for c in db.read(lambda c: repo(c).all())] == ["ruby", "abc"]
    assert db.write(lambda c: repo(c).delete("abc"))
    assert db.write(lambda c: repo(c).delete("ruby"))
    assert plain_sql.value("SELECT count(*) FROM clients") == 0
    assert plain_sql.value("SELECT count(*) FROM attributes") == 0


# --- concurrency ----------------------------------------------------------------


def writer_version(n: int) -> Client:
    return Client(
        metadata={"client_id": "abc", "who": n} | {f"m{n}-{k}": k for k in range(5)},
        attributes={f"a{n}-{k}": [n, k] for k in range(5)},
    )


@pytest.mark.slow
def test_concurrent_updates_deletes_and_certificates_leave_no_orphans(
    db: Database, plain_sql: Any
) -> None:
    versions = [writer_version(n) for n in range(WRITERS)]
    cert = certificate("abc")
    for _ in range(5):
        create(db, Client(metadata={"client_id": "abc"}, attributes={"initial": True}))

        def work(n: int) -> object:
            if n == 0:
                return db.write(lambda c: repo(c).delete("abc"))
            if n == 1:
                return db.write(lambda c: repo(c).set_certificate("abc", cert))
            return db.write(lambda c: repo(c).update(versions[n]))

        results = run_together(WRITERS, work)
        assert all(r is None or isinstance(r, bool | NotFound) for r in results), results
        assert get(db, "abc") is None
        assert attribute_rows(plain_sql, "abc") == {}
        # The certificate survives only if it was set after the delete.
        plain_sql.execute("DELETE FROM keys")


# --- properties -----------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    metadata=st.dictionaries(
        # Fields Omejdn reads have types of their own (test_client_metadata.py); any
        # other field holds any JSON value.
        names.filter(lambda n: n not in ("client_id", "backend", *CHECKED_FIELDS)),
        json_values,
        max_size=6,
    ),
    attributes=st.dictionaries(names, json_values, max_size=4),
)
def test_any_json_round_trips_through_metadata_and_attributes(
    db: Database, metadata: dict[str, Any], attributes: dict[str, Any]
) -> None:
    client_id = f"prop-{uuid.uuid4().hex}"
    create(db, Client(metadata={"client_id": client_id, **metadata}, attributes=attributes))
    found = get(db, client_id)
    assert found is not None
    assert same_json(found.metadata) == same_json({"client_id": client_id, **metadata})
    assert same_json(found.attributes) == same_json(attributes)


@PROPERTY_SETTINGS
@given(
    client_id=names.filter(is_file_name), keys=st.lists(names, min_size=1, max_size=5, unique=True)
)
def test_unicode_client_ids_and_keys_round_trip(
    db: Database, plain_sql: Any, client_id: str, keys: list[str]
) -> None:
    metadata = {"client_id": client_id} | {
        key: index
        for index, key in enumerate(keys)
        # jwks is a key set, not a free field: an integer there is refused.
        if key not in ("client_id", "backend", JWKS_FIELD, *CHECKED_FIELDS)
    }
    attributes = {key: [index] for index, key in enumerate(keys)}
    create(db, Client(metadata=metadata, attributes=attributes))
    try:
        assert get(db, client_id) == Client(metadata, attributes, backend=BACKEND_NAME)
        assert metadata_rows(plain_sql, client_id) == metadata
        assert attribute_rows(plain_sql, client_id) == attributes
    finally:
        assert db.write(lambda c: repo(c).delete(client_id))
