"""Hostile input through the events: nothing injected, a clear error naming the field,
tables intact."""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.errors import ConfigurationError, InvalidInput, InvalidKeyMaterial, InvalidValue
from omejdn_pg.host import events
from omejdn_pg.json_values import MAX_JSON_DEPTH, check_json
from omejdn_pg.json_values import check_json_thoroughly as thorough_check
from omejdn_pg.keys.algorithms import MAX_RSA_BITS
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key, generate_key
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.certificates import make_chain
from tests.kits.commands import omejdn_pg, one_error_line
from tests.kits.strategies import PROPERTY_SETTINGS
from tests.kits.witness import PlainSQL

TABLES = ("users", "clients", "attributes", "keys")


def snapshot(sql: PlainSQL) -> dict[str, Any]:
    tables = {t: sql.rows(f"SELECT * FROM {t} ORDER BY 1, 2, 3") for t in TABLES}
    tables["sections"] = sql.rows(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'configuration%' ORDER BY 1"
    )
    return tables


def b64url_int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


hostile_text = st.one_of(
    st.text(min_size=1, max_size=30),
    st.sampled_from(
        [
            "'; DROP TABLE users; --",
            '"); DELETE FROM keys; --',
            "..",
            "../../etc/passwd",
            "a\x00b",
            "\ud800",
            "configuration_x",
            "$(rm -rf /)",
            "%s%s%s",
            "\\",
        ]
    ),
)


def outcome(attempt: Any) -> str:
    """``stored``, or the message of the package's refusal (anything else fails the test)."""
    try:
        attempt()
    except InvalidInput as error:
        return str(error)
    return "stored"


@PROPERTY_SETTINGS
@given(section=hostile_text, username=hostile_text, client_id=hostile_text, target=hostile_text)
def test_hostile_names_are_stored_as_themselves_or_refused_with_a_message(
    loader: PluginLoader,
    plain_sql: PlainSQL,
    section: str,
    username: str,
    client_id: str,
    target: str,
) -> None:
    jwks = KeySet([generate_key("ES256")]).to_jwks()
    stored_section = outcome(
        lambda: loader.fire(events.CONFIGURATION_STORE, section=section, data={"k": 1})
    )
    stored_user = outcome(
        lambda: loader.fire(
            events.USER_CREATE,
            user=User(username=username, attributes={username: 1}),
            user_backend="postgres",
        )
    )
    stored_client = outcome(
        lambda: loader.fire(
            events.CLIENT_CREATE,
            client=Client(metadata={"client_id": client_id}),
            client_backend="postgres",
        )
    )
    stored_key = outcome(
        lambda: loader.fire(events.KEYS_STORE, target_type="omejdn", target=target, jwks=jwks)
    )
    for message in (stored_section, stored_user, stored_client, stored_key):
        assert message  # a refusal always says what was wrong
    sections = plain_sql.rows(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'configuration%'"
    )
    assert sections == ([(f"configuration_{section}",)] if stored_section == "stored" else [])
    assert plain_sql.rows("SELECT username FROM users") == (
        [(username,)] if stored_user == "stored" else []
    )
    assert plain_sql.rows("SELECT DISTINCT client_id FROM clients") == (
        [(client_id,)] if stored_client == "stored" else []
    )
    assert plain_sql.rows("SELECT DISTINCT target FROM keys") == (
        [(target,)] if stored_key == "stored" else []
    )
    for table in (*TABLES, *(f'"{name}"' for (name,) in sections)):
        plain_sql.execute(
            f"DROP TABLE IF EXISTS {table}" if table.startswith('"') else f"DELETE FROM {table}"
        )


def test_json_values_beyond_the_limits_are_refused_naming_the_field(
    loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    before = snapshot(plain_sql)
    for data, field in (
        ({"deep": nested(MAX_JSON_DEPTH + 1)}, "section 'omejdn': deep"),
        ({"nul": "a\x00b"}, "section 'omejdn': nul"),
        ({"surrogate": "\ud800"}, "section 'omejdn': surrogate"),
        ({"nan": float("nan")}, "section 'omejdn': nan"),
    ):
        with pytest.raises(InvalidValue) as caught:
            loader.fire(events.CONFIGURATION_STORE, section="omejdn", data=data)
        assert field in str(caught.value)
    assert snapshot(plain_sql) == before
    # A megabyte string is a legitimate (if large) value: stored and read back whole.
    big = "x" * 1_048_576
    loader.fire(events.CONFIGURATION_STORE, section="omejdn", data={"big": big})
    assert loader.fire(events.CONFIGURATION_LOAD, section="omejdn", fallback={}) == [{"big": big}]


def test_malformed_keys_and_oversized_sets_are_refused(
    loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    before = snapshot(plain_sql)
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    wrong_chain = Key(other.public_key(), other, make_chain(other, 1)).to_jwk()
    wrong_chain.update(Key(key.public_key(), key).to_jwk())  # the key of one, the chain of another
    wrong_chain.pop("x5t", None)
    wrong_chain.pop("x5t#S256", None)
    huge = rsa.generate_private_key(public_exponent=65537, key_size=MAX_RSA_BITS + 1024)
    numbers = huge.public_key().public_numbers()
    huge_jwk = {"kty": "RSA", "n": b64url_int(numbers.n), "e": b64url_int(numbers.e)}
    bad: list[tuple[Any, str]] = [
        ({"keys": [{"kty": "RSA", "n": "***", "e": "AQAB"}]}, "'n'"),
        ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}, "curve"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "kty"),
        ({"keys": [{"x5c": [base64.b64encode(b"not DER").decode()]}]}, "x5c"),
        ({"keys": [wrong_chain]}, "does not match"),
        ({"keys": [huge_jwk]}, str(MAX_RSA_BITS)),
        ({"keys": [generate_key("ES256").to_jwk() for _ in range(1)] * 2}, "kid"),
        ({"keys": "nope"}, "keys"),
    ]
    for jwks, fragment in bad:
        with pytest.raises(InvalidKeyMaterial) as caught:
            loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks)
        assert fragment in str(caught.value), str(caught.value)
        assert "PRIVATE" not in str(caught.value)
    many = {"keys": [{"kty": "EC"}] * 10_000}
    with pytest.raises(InvalidKeyMaterial, match="more than the 100 a set may hold"):
        loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=many)
    assert snapshot(plain_sql) == before


def test_a_huge_json_document_for_a_client_is_refused_or_stored_whole(
    loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    metadata = {"client_id": "c", "redirect_uris": [f"https://x/{i}" for i in range(20_000)]}
    loader.fire(events.CLIENT_CREATE, client=Client(metadata=metadata), client_backend="postgres")
    (found,) = loader.fire(events.CLIENT_GET, client_id="c")
    assert found.metadata == metadata
    assert json.loads(json.dumps(found.metadata)) == metadata


_TEXT = st.text(alphabet=st.sampled_from(["a", "é", "\x00", "\ud800", "\udfff", "z"]), max_size=4)
_JSON_LIKE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner)
        | st.dictionaries(_TEXT | st.integers(), inner, max_size=3)
    ),
    max_leaves=12,
)


def _refusal(value: object) -> str | None:
    try:
        check_json(value, "field")
    except InvalidValue as error:
        return str(error)
    return None


@PROPERTY_SETTINGS
@given(_JSON_LIKE)
def test_the_quick_json_check_refuses_exactly_what_the_thorough_one_refuses(value: Any) -> None:
    # check_json takes a quick walk first and the thorough one only when that
    # walk is unsure; the thorough walk alone is the definition.
    try:
        thorough_check(value, "field", 0)
        thorough = None
    except InvalidValue as error:
        thorough = str(error)
    assert _refusal(value) == thorough


def test_json_nested_to_the_limit_is_taken_and_one_deeper_is_refused() -> None:
    at_limit: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        at_limit = [at_limit]
    assert _refusal(at_limit) is None
    assert "nested deeper" in (_refusal([at_limit]) or "")


# --- one minimum RSA size wherever a key enters -------------------------------------------


@pytest.fixture(scope="module")
def rsa_1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


WEAK = "an RSA key of 1024 bits is smaller than the 2048 bits required (OMEJDN_PG_MIN_RSA_BITS)"


def test_an_rsa_1024_key_is_refused_by_keys_store_and_a_clients_jwks(
    loader: PluginLoader, plain_sql: PlainSQL, rsa_1024: rsa.RSAPrivateKey
) -> None:
    jwks = KeySet([Key(rsa_1024.public_key(), rsa_1024, params={"kid": "weak"})]).to_jwks()
    with pytest.raises(InvalidKeyMaterial, match=re.escape(f"key weak: {WEAK}")):
        loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks)
    with pytest.raises(InvalidKeyMaterial, match=re.escape(WEAK)):
        loader.fire(
            events.CLIENT_CREATE,
            client=Client(metadata={"client_id": "app", "jwks": jwks}),
            client_backend="postgres",
        )
    assert plain_sql.value("SELECT count(*) FROM keys") == 0
    assert plain_sql.value("SELECT count(*) FROM clients") == 0


def test_the_file_store_refuses_it_too(tmp_path: Path, rsa_1024: rsa.RSAPrivateKey) -> None:
    from omejdn_pg.host.files.store import FileStore

    with pytest.raises(InvalidKeyMaterial, match=re.escape(WEAK)):
        FileStore(tmp_path).store_keys("omejdn", "omejdn", [Key(rsa_1024.public_key(), rsa_1024)])
    assert not (tmp_path / "keys").exists()


def test_keys_import_generate_and_import_refuse_it(
    database: ConnectionSettings,
    plain_sql: PlainSQL,
    rsa_1024: rsa.RSAPrivateKey,
    tmp_path: Path,
    examples: Path,
) -> None:
    from omejdn_pg.service import transfer
    from omejdn_pg.service.host import Host
    from omejdn_pg.settings.backend import BackendSettings

    url = database.conninfo()
    pem = tmp_path / "weak.pem"
    pem.write_text(
        rsa_1024.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )
    imported = omejdn_pg("--url", url, "keys", "import", "omejdn", "omejdn", "--key", str(pem))
    assert WEAK in one_error_line(imported)
    generated = omejdn_pg("--url", url, "keys", "generate", "omejdn", "x", "--rsa-bits", "1024")
    assert WEAK in one_error_line(generated)
    rotated = omejdn_pg(
        "--url", url, "keys", "rotate", "omejdn", "omejdn", "--key", str(pem), "--create"
    )
    assert WEAK in one_error_line(rotated)

    folder = examples / "keys" / "weak"
    folder.mkdir()
    (folder / "weak.key").write_text(pem.read_text())
    with (
        Host.from_settings(BackendSettings(connection=database)) as host,
        pytest.raises(InvalidKeyMaterial, match=re.escape(WEAK)),
    ):
        transfer.import_deployment(examples, host)
    assert plain_sql.value("SELECT count(*) FROM keys") == 0
    assert plain_sql.value("SELECT count(*) FROM users") == 0


def test_the_minimum_is_configurable_and_a_stored_weak_key_stays_usable(
    loader: PluginLoader,
    plain_sql: PlainSQL,
    rsa_1024: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jwks = KeySet([Key(rsa_1024.public_key(), rsa_1024, params={"kid": "legacy"})]).to_jwks()
    monkeypatch.setenv("OMEJDN_PG_MIN_RSA_BITS", "1024")
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks)
    monkeypatch.delenv("OMEJDN_PG_MIN_RSA_BITS")
    # Read, published and stored back unchanged: it entered when it was allowed to.
    loaded = loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn")
    assert [key["kid"] for key in loaded[0]["keys"]] == ["legacy"]
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=loaded[0])
    assert plain_sql.value("SELECT count(*) FROM keys WHERE target = 'omejdn'") == 1
    monkeypatch.setenv("OMEJDN_PG_MIN_RSA_BITS", "512")
    with pytest.raises(ConfigurationError, match="OMEJDN_PG_MIN_RSA_BITS must be a number"):
        loader.fire(events.KEYS_STORE, target_type="omejdn", target="other", jwks=jwks)


# --- values another writer stored that Python cannot read ----------------------------------

DEEP = '{"a":' * 2000 + "1" + "}" * 2000
HUGE = "9" * 5000


def store_behind_the_back(sql: PlainSQL) -> None:
    """Users 'deep' and 'huge' as hand SQL (or a Ruby Omejdn) can write them, beside 'ok'."""
    for name in ("deep", "huge", "ok"):
        sql.execute(
            "INSERT INTO users (username, password, extern, consent) VALUES (%s, NULL, NULL, '{}')",
            (name,),
        )
    sql.execute(
        "INSERT INTO attributes (type, identifier, key, value) VALUES "
        "('user', 'deep', 'x', CAST(%s AS jsonb)), ('user', 'huge', 'x', CAST(%s AS jsonb)), "
        "('user', 'ok', 'x', '1')",
        (DEEP, HUGE),
    )


def test_user_get_all_goes_on_and_names_the_unreadable_rows(
    loader: PluginLoader, plain_sql: PlainSQL, caplog: pytest.LogCaptureFixture
) -> None:
    store_behind_the_back(plain_sql)
    with caplog.at_level(logging.WARNING):
        users = loader.fire(events.USER_GET_ALL)[0]
    assert [user.username for user in users] == ["ok"]
    assert "user 'deep' left out: its JSON is nested too deep for Python" in caplog.text
    assert "user 'huge' left out: it holds an integer of more than 4,300 digits" in caplog.text


def test_users_list_and_export_go_on_and_name_the_unreadable_rows(
    database: ConnectionSettings, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    store_behind_the_back(plain_sql)
    url = database.conninfo()
    for args in (("users", "list"), ("users", "list", "-v"), ("users", "list", "-o", "json")):
        listed = omejdn_pg("--url", url, *args)
        assert listed.returncode == 0, listed.stderr
        assert "RecursionError" not in listed.stderr
        assert "user 'deep' left out" in listed.stderr
        assert "user 'huge' left out" in listed.stderr
        assert "ok" in listed.stdout
        assert "deep" not in listed.stdout
    exported = omejdn_pg("--url", url, "export", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert "user 'deep' left out" in exported.stderr
    users = yaml.safe_load((tmp_path / "out" / "config" / "users.yml").read_text())
    assert [user["username"] for user in users] == ["ok"]


def test_a_client_whose_key_rows_python_cannot_read_is_left_out_and_named_by_every_read(
    loader: PluginLoader, plain_sql: PlainSQL, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = KeySet([generate_key("ES256")]).to_jwks(private=False)
    for name in ("deep", "ok"):
        client = Client(metadata={"client_id": name, "jwks": jwks})
        loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
    # Another writer gives deep's key a descriptor Python cannot read back.
    plain_sql.execute(
        "UPDATE keys SET params = CAST(%s AS jsonb) WHERE target_type = 'clients' "
        "AND target = 'deep'",
        (DEEP,),
    )
    for _ in range(2):  # the second read is named too, not answered from what the first kept
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            (listed,) = loader.fire(events.CLIENT_GET_ALL)
            (found,) = loader.fire(events.CLIENT_GET, client_id="deep")
        assert [client.client_id for client in listed] == ["ok"]
        assert listed[0].metadata["jwks"]["keys"][0]["kid"] == jwks["keys"][0]["kid"]
        assert found is None
        named = "client 'deep' left out: its JSON is nested too deep for Python"
        assert caplog.text.count(named) == 2


def test_integers_python_cannot_read_back_are_refused_as_invalid_value(
    loader: PluginLoader, database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    with pytest.raises(InvalidValue, match="an integer of 16,610 bits is refused"):
        loader.fire(
            events.USER_CREATE,
            user=User(username="big", attributes={"n": 10**5000}),
            user_backend="postgres",
        )
    assert plain_sql.value("SELECT count(*) FROM users") == 0
    line = one_error_line(
        omejdn_pg("--url", database.conninfo(), "config", "set", "big", input=f"n: {HUGE}\n")
    )
    assert "an integer of more than 4,300 digits is refused" in line
    assert "ValueError" not in line
