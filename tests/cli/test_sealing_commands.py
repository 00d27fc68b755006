"""Sealed keys as an operator meets them: reachable with --url, never silently undone.

A CLI given only ``--url`` read no plugin file, so it had no ``key_encryption``
and wrote plain private keys beside sealed ones without a word; a KEK id with
a ``$`` sealed keys that could never be opened again. Each is tried through
the command line against the test database, and the rows are read with SQL.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.sealing import Keyring, LocalKey, generate_secret, row_context
from omejdn_pg.settings.connection import ConnectionSettings
from omejdn_pg.settings.validation import parse_backend_section
from tests.kits.commands import ok, omejdn_pg, one_error_line
from tests.kits.witness import PlainSQL
from tests.secrets import watch

KEK = watch(generate_secret())
SEALED = "$omejdn-pg-sealed$%"


def kek_env(kek_id: str = "kek-1") -> dict[str, str]:
    return {
        "OMEJDN_PG_KEY_ENCRYPTION": f"[{{id: {kek_id}, env: OMEJDN_PG_TEST_KEK}}]",
        "OMEJDN_PG_TEST_KEK": KEK,
    }


def private_values(plain_sql: PlainSQL) -> list[str]:
    return [row[0] for row in plain_sql.rows("SELECT value FROM keys WHERE type = 'sk'")]


def test_key_encryption_is_reachable_with_url(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "a", "--ec", "P-256", env=kek_env()))
    (value,) = private_values(plain_sql)
    assert value.startswith("$omejdn-pg-sealed$v1$kek-1$")


def test_a_plaintext_key_beside_sealed_ones_is_refused_unless_allowed(
    database: ConnectionSettings, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "a", "--ec", "P-256", env=kek_env()))
    # The same CLI without the KEK: generate and import are refused, naming the way out.
    refused = omejdn_pg("--url", url, "keys", "generate", "omejdn", "b", "--ec", "P-256")
    line = one_error_line(refused)
    assert "sealed by key-encryption key 'kek-1'" in line
    assert "--allow-plaintext" in line
    assert "OMEJDN_PG_KEY_ENCRYPTION" in line
    pem = tmp_path / "key.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    refused = omejdn_pg("--url", url, "keys", "import", "omejdn", "c", "--key", str(pem))
    assert "--allow-plaintext" in one_error_line(refused)
    assert plain_sql.value("SELECT count(*) FROM keys WHERE target IN ('b', 'c')") == 0
    # On purpose, it is stored unsealed.
    ok(
        omejdn_pg(
            "--url", url, "keys", "import", "omejdn", "c", "--key", str(pem), "--allow-plaintext"
        )
    )
    values = private_values(plain_sql)
    assert sum(v.startswith("$omejdn-pg-sealed$") for v in values) == 1
    assert sum("PRIVATE KEY-----" in v for v in values) == 1


def test_a_plaintext_key_where_nothing_is_sealed_is_written_as_before(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "a", "--ec", "P-256"))
    (value,) = private_values(plain_sql)
    assert "PRIVATE KEY-----" in value


@pytest.mark.parametrize("kek_id", ["prod$2026", "a b", "", "-lead", "x" * 65, "kek\n1", "é"])
def test_a_kek_id_outside_the_safe_alphabet_is_refused_before_anything_is_sealed(
    kek_id: str, database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    with pytest.raises(ConfigurationError, match=r"is not allowed|non-empty 'id'"):
        parse_backend_section({"key_encryption": [{"id": kek_id, "env": "X"}]}, "p.yml")
    with pytest.raises(ConfigurationError, match="is not allowed"):
        Keyring([LocalKey(kek_id, b"k" * 32)])
    if kek_id and "\n" not in kek_id:
        env = {
            "OMEJDN_PG_KEY_ENCRYPTION": f"[{{id: '{kek_id}', env: OMEJDN_PG_TEST_KEK}}]",
            "OMEJDN_PG_TEST_KEK": KEK,
        }
        result = omejdn_pg(
            "--url",
            database.conninfo(),
            "keys",
            "generate",
            "omejdn",
            "a",
            "--ec",
            "P-256",
            env=env,
        )
        assert "is not allowed" in one_error_line(result)
        assert plain_sql.value("SELECT count(*) FROM keys") == 0


def test_safe_ids_still_work() -> None:
    for kek_id in ("kek-1", "prod.2026", "A_b-9", "x" * 64):
        assert Keyring([LocalKey(kek_id, b"k" * 32)]).current is not None


# --- listing and publishing without the KEK -------------------------------------------------


def listed(url: str, env: dict[str, str] | None = None) -> list[dict[str, object]]:
    views: list[dict[str, object]] = json.loads(
        ok(omejdn_pg("--url", url, "keys", "list", "-o", "json", env=env)).stdout
    )
    return views


def test_keys_list_and_jwks_need_no_kek(database: ConnectionSettings, tmp_path: Path) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "omejdn", env=kek_env()))
    with_kek = listed(url, kek_env())
    published = json.loads(ok(omejdn_pg("--url", url, "keys", "jwks", env=kek_env())).stdout)
    # No KEK at all (only --url), and a KEK configured whose variable is not set.
    missing = {"OMEJDN_PG_KEY_ENCRYPTION": "[{id: kek-1, env: OMEJDN_PG_TEST_KEK}]"}
    for env in (None, missing):
        assert listed(url, env) == with_kek
        assert with_kek[0]["private"] is True
        jwks = json.loads(ok(omejdn_pg("--url", url, "keys", "jwks", env=env)).stdout)
        assert jwks == published
        assert set(jwks["keys"][0]) >= {"kty", "n", "e", "kid"}
        assert "d" not in jwks["keys"][0]
    # Writing still needs it.
    refused = omejdn_pg("--url", url, "keys", "rotate", "omejdn", "omejdn", env=missing)
    assert "OMEJDN_PG_TEST_KEK" in one_error_line(refused)


def test_a_swapped_public_half_does_not_open(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "a", "--ec", "P-256", env=kek_env()))
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "b", "--ec", "P-256", env=kek_env()))
    values = dict(plain_sql.rows("SELECT target, value FROM keys WHERE type = 'sk'"))
    other_public = values["b"].rsplit("$", 1)[1]
    swapped = values["a"].rsplit("$", 1)[0] + "$" + other_public
    plain_sql.execute("UPDATE keys SET value = %s WHERE target = 'a' AND type = 'sk'", (swapped,))
    opened = omejdn_pg("--url", url, "keys", "rotate", "omejdn", "a", env=kek_env())
    assert "does not open the sealed value" in one_error_line(opened)


def test_a_key_sealed_before_the_public_half_was_kept_is_listed_after_rewrap(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "a", "--ec", "P-256", env=kek_env()))
    (kid, value) = plain_sql.rows("SELECT kid, value FROM keys WHERE type = 'sk'")[0]
    ring = Keyring([LocalKey("kek-1", base64.urlsafe_b64decode(KEK))])
    context = row_context("omejdn", "a", kid, "sk")
    pem = ring.open(value, context)
    old_style = ring.seal(pem, context)  # as sealed before: no public half
    assert old_style.count("$") == value.count("$") - 1
    plain_sql.execute("UPDATE keys SET value = %s WHERE type = 'sk'", (old_style,))
    refused = omejdn_pg("--url", url, "keys", "list")
    assert "keys rewrap" in one_error_line(refused)
    ok(omejdn_pg("--url", url, "keys", "rewrap", env=kek_env()))
    assert listed(url)[0]["kid"] == kid
    assert listed(url)[0]["private"] is True
