"""KeyRepository against a real PostgreSQL, results checked with plain SQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Connection, select

from omejdn_pg.entities import KeyMaterial
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.keys import KeyRepository
from tests.kits.certificates import make_chain, pem, public_pem
from tests.kits.threads import read_while_writing
from tests.kits.wire import assert_point_read
from tests.kits.witness import PlainSQL

T = TypeVar("T")

PKCS8, TRADITIONAL = (
    serialization.PrivateFormat.PKCS8,
    serialization.PrivateFormat.TraditionalOpenSSL,
)
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


@pytest.fixture(scope="module")
def ec256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ec384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def one_key(material: KeyMaterial) -> list[Key]:
    key = material.to_key()
    return [key] if key is not None else []


def as_material(keys: KeySet) -> KeyMaterial:
    return KeyMaterial.from_key(keys[0]) if keys else KeyMaterial()


def store(db: Database, target_type: str, target: str, material: KeyMaterial) -> None:
    """A one-key set from the older key material form (what these tests were written in)."""
    key = material.to_key()
    db.write(lambda conn: KeyRepository(conn).store(target_type, target, [key] if key else []))


def load(db: Database, target_type: str, target: str) -> KeyMaterial:
    keys = db.read(lambda conn: KeyRepository(conn).load(target_type, target))
    return KeyMaterial.from_key(keys[0]) if keys else KeyMaterial()


def stored(plain_sql: PlainSQL, target_type: str, target: str) -> dict[str, str]:
    rows = plain_sql.rows(
        "SELECT type, value FROM keys WHERE target_type = %s AND target = %s",
        (target_type, target),
    )
    return dict(rows)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec256", "ec384"])
@pytest.mark.parametrize("chain_length", [0, 1, 2, 3])
def test_key_and_chain_round_trip(
    db: Database,
    plain_sql: PlainSQL,
    request: pytest.FixtureRequest,
    kind: str,
    chain_length: int,
) -> None:
    key = request.getfixturevalue({"rsa": "rsa_key"}.get(kind, kind))
    chain = make_chain(key, chain_length) if chain_length else []
    material = KeyMaterial(sk=key, certs=chain)

    store(db, "token", "signer", material)

    assert load(db, "token", "signer") == material
    rows = stored(plain_sql, "token", "signer")
    assert rows["sk"] == pem(key, PKCS8)
    assert rows["sk"].startswith("-----BEGIN PRIVATE KEY-----\n")
    if not chain:
        assert "certs" not in rows
        return
    certs = rows["certs"]
    assert certs.count("-----BEGIN CERTIFICATE-----") == chain_length
    assert certs.count("_") == chain_length - 1
    assert not certs.endswith("_")
    assert certs.split("_") == [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain]


@pytest.mark.parametrize("kind", ["rsa_key", "ec256", "ec384"])
def test_public_only_material_round_trips(
    db: Database, plain_sql: PlainSQL, request: pytest.FixtureRequest, kind: str
) -> None:
    key = request.getfixturevalue(kind)
    material = KeyMaterial(pk=key.public_key())

    store(db, "jwks", "partner", material)

    loaded = load(db, "jwks", "partner")
    assert loaded == material
    assert loaded.sk is None
    assert loaded.kid == KeyMaterial(sk=key).kid
    assert stored(plain_sql, "jwks", "partner") == {"sk": public_pem(key, SPKI)}


def test_a_chain_without_a_key_round_trips(
    db: Database, plain_sql: PlainSQL, ec256: ec.EllipticCurvePrivateKey
) -> None:
    material = KeyMaterial(certs=make_chain(ec256, 2))

    store(db, "clients", "c1", material)

    assert load(db, "clients", "c1") == material
    assert set(stored(plain_sql, "clients", "c1")) == {"certs"}


def test_nothing_stored_loads_as_empty_material(db: Database) -> None:
    material = load(db, "token", "nobody")
    assert material.is_empty
    assert material == KeyMaterial()


def test_store_replaces_both_rows(
    db: Database,
    plain_sql: PlainSQL,
    rsa_key: rsa.RSAPrivateKey,
    ec256: ec.EllipticCurvePrivateKey,
) -> None:
    store(db, "token", "signer", KeyMaterial(sk=rsa_key, certs=make_chain(rsa_key, 2)))
    replacement = KeyMaterial(sk=ec256)

    store(db, "token", "signer", replacement)

    assert load(db, "token", "signer") == replacement
    assert stored(plain_sql, "token", "signer") == {"sk": pem(ec256, PKCS8)}

    store(db, "token", "signer", KeyMaterial())

    assert stored(plain_sql, "token", "signer") == {}
    assert load(db, "token", "signer").is_empty


def test_store_touches_only_its_target(
    db: Database, plain_sql: PlainSQL, ec256: ec.EllipticCurvePrivateKey
) -> None:
    store(db, "token", "a", KeyMaterial(sk=ec256))
    store(db, "jwks", "a", KeyMaterial(sk=ec256))
    store(db, "token", "b", KeyMaterial(sk=ec256))

    store(db, "token", "a", KeyMaterial())

    assert plain_sql.rows("SELECT target_type, target FROM keys ORDER BY 1, 2") == [
        ("jwks", "a"),
        ("token", "b"),
    ]


def test_a_store_is_part_of_the_callers_transaction(
    db: Database, plain_sql: PlainSQL, ec256: ec.EllipticCurvePrivateKey
) -> None:
    def store_then_fail(conn: Connection) -> None:
        KeyRepository(conn).store("token", "signer", one_key(KeyMaterial(sk=ec256)))
        raise RuntimeError("the event failed later")

    with pytest.raises(RuntimeError):
        db.write(store_then_fail)

    assert stored(plain_sql, "token", "signer") == {}


# --- what the Ruby plugin writes -----------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa_key", "ec256", "ec384"])
@pytest.mark.parametrize("separator", ["_", "\n", ""])
def test_ruby_written_keys_are_read(
    db: Database,
    plain_sql: PlainSQL,
    request: pytest.FixtureRequest,
    kind: str,
    separator: str,
) -> None:
    key = request.getfixturevalue(kind)
    chain = make_chain(key, 2)
    # The Ruby plugin writes PKCS#1 (RSA) or SEC1 (EC), and the chain's PEMs joined by '_'.
    legacy = pem(key, TRADITIONAL)
    assert "BEGIN RSA PRIVATE KEY" in legacy or "BEGIN EC PRIVATE KEY" in legacy
    chain_text = separator.join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
    plain_sql.execute(
        "INSERT INTO keys (target_type, target, type, value) VALUES "
        "('token', 'signer', 'sk', %s), ('token', 'signer', 'certs', %s)",
        (legacy, chain_text),
    )

    assert load(db, "token", "signer") == KeyMaterial(sk=key, certs=chain)


def test_ruby_empty_chain_means_no_certificates(
    db: Database, plain_sql: PlainSQL, rsa_key: rsa.RSAPrivateKey
) -> None:
    plain_sql.execute(
        "INSERT INTO keys (target_type, target, type, value) VALUES "
        "('token', 'signer', 'sk', %s), ('token', 'signer', 'certs', '')",
        (pem(rsa_key, TRADITIONAL),),
    )

    material = load(db, "token", "signer")

    assert material == KeyMaterial(sk=rsa_key)
    assert material.certs == []


@pytest.mark.parametrize("row", ["sk", "certs"])
def test_a_bad_pem_in_the_database_names_its_target(
    db: Database, plain_sql: PlainSQL, row: str
) -> None:
    junk = (
        "-----BEGIN PRIVATE KEY-----\n"
        "TUlJQ2VnSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NBbVF3\n"
        "-----END PRIVATE KEY-----\n"
    )
    if row == "certs":
        junk = junk.replace("PRIVATE KEY", "CERTIFICATE")
    plain_sql.execute(
        "INSERT INTO keys (target_type, target, type, value) VALUES ('token', 'broken', %s, %s)",
        (row, junk),
    )

    with pytest.raises(InvalidKeyMaterial) as caught:
        load(db, "token", "broken")

    message = str(caught.value)
    assert "token/broken" in message
    assert "-----" not in message
    assert "TUlJQ2Vn" not in message
    with pytest.raises(InvalidKeyMaterial, match="token/broken"):
        db.read(lambda conn: KeyRepository(conn).load_all("token"))


# --- reads: statements and order -----------------------------------------------------


def test_load_is_one_statement_and_no_transaction(db: Database, rsa_key: rsa.RSAPrivateKey) -> None:
    material = KeyMaterial(sk=rsa_key, certs=make_chain(rsa_key, 2))
    store(db, "token", "signer", material)

    assert (
        as_material(assert_point_read(db, lambda conn: KeyRepository(conn).load("token", "signer")))
        == material
    )
    assert not assert_point_read(db, lambda conn: KeyRepository(conn).load("token", "none"))


@pytest.mark.parametrize("count", [1, 50])
def test_load_all_is_one_statement_whatever_the_number(
    db: Database, ec256: ec.EllipticCurvePrivateKey, count: int
) -> None:
    chain = make_chain(ec256, 2)
    materials = {
        f"t{i:03d}": KeyMaterial(sk=ec256, certs=chain if i % 2 else []) for i in range(count)
    }

    def store_all(conn: Connection) -> None:
        repository = KeyRepository(conn)
        for target, material in reversed(materials.items()):
            repository.store("jwks", target, one_key(material))
        repository.store("other", "t000", one_key(KeyMaterial(sk=ec256)))

    db.write(store_all)
    db.read(lambda conn: conn.execute(select(1)))  # warm the pool
    statements = count_statements(db.engine)

    loaded = db.read(lambda conn: KeyRepository(conn).load_all("jwks"))

    assert len(statements) == 1
    assert [(target, as_material(keys)) for target, keys in loaded] == [
        (target, materials[target]) for target in sorted(materials)
    ]


def test_load_all_of_nothing(db: Database) -> None:
    assert db.read(lambda conn: KeyRepository(conn).load_all("jwks")) == []


def test_targets_are_sorted_and_filtered(db: Database, ec256: ec.EllipticCurvePrivateKey) -> None:
    material = KeyMaterial(sk=ec256, certs=make_chain(ec256, 1))
    for target_type, target in [
        ("token", "b"),
        ("jwks", "z"),
        ("token", "B"),
        ("token", "a"),
        ("clients", "ü"),
    ]:
        store(db, target_type, target, material)

    everything = db.read(lambda conn: KeyRepository(conn).targets())
    tokens = db.read(lambda conn: KeyRepository(conn).targets("token"))

    assert everything == sorted(everything)
    assert everything == [
        ("clients", "ü"),
        ("jwks", "z"),
        ("token", "B"),
        ("token", "a"),
        ("token", "b"),
    ]
    assert tokens == [("token", "B"), ("token", "a"), ("token", "b")]
    assert db.read(lambda conn: KeyRepository(conn).targets("none")) == []


def test_delete(db: Database, plain_sql: PlainSQL, ec256: ec.EllipticCurvePrivateKey) -> None:
    store(db, "token", "signer", KeyMaterial(sk=ec256, certs=make_chain(ec256, 2)))
    store(db, "token", "other", KeyMaterial(sk=ec256))

    assert db.write(lambda conn: KeyRepository(conn).delete("token", "signer")) is True
    assert db.write(lambda conn: KeyRepository(conn).delete("token", "signer")) is False
    assert stored(plain_sql, "token", "signer") == {}
    assert set(stored(plain_sql, "token", "other")) == {"sk"}


# --- refusals ------------------------------------------------------------------------


BAD_TARGETS: list[tuple[Any, Any]] = [
    ("", "x"),
    ("token", ""),
    ("tok\x00en", "x"),
    ("token", "x\x00"),
    ("token", "\ud800"),
    (None, "x"),
    ("token", 7),
]


def test_bad_targets_are_refused_before_any_sql(
    db: Database, ec256: ec.EllipticCurvePrivateKey
) -> None:
    db.read(lambda conn: conn.execute(select(1)))
    statements = count_statements(db.engine)
    material = KeyMaterial(sk=ec256)
    for target_type, target in BAD_TARGETS:
        operations: list[Callable[[Connection], object]] = [
            lambda conn, tt=target_type, t=target: KeyRepository(conn).store(
                tt, t, one_key(material)
            ),
            lambda conn, tt=target_type, t=target: KeyRepository(conn).load(tt, t),
            lambda conn, tt=target_type, t=target: KeyRepository(conn).delete(tt, t),
        ]
        for operation in operations:
            with pytest.raises(InvalidValue):
                db.write(operation)
    assert statements == []


def test_only_key_material_is_stored(db: Database) -> None:
    with pytest.raises(InvalidKeyMaterial):
        db.write(lambda conn: KeyRepository(conn).store("token", "x", "PEM"))  # type: ignore[arg-type]


# --- concurrency ---------------------------------------------------------------------


def test_readers_never_see_one_writes_key_with_anothers_chain(db: Database) -> None:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    materials = [KeyMaterial(sk=key, certs=make_chain(key, 2)) for key in keys]

    def write(index: int) -> None:
        for round_ in range(15):
            store(db, "token", "signer", materials[(index + round_) % 2])

    def read() -> KeyMaterial:
        # A key from one write with the chain of another would not load:
        # from_pem refuses a key that does not match its certificate.
        return load(db, "token", "signer")

    seen, failures = read_while_writing(write, read)

    assert failures == []
    assert seen
    assert all(m.is_empty or m in materials for m in seen)
    assert load(db, "token", "signer") in materials
