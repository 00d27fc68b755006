"""Key sets through Omejdn's current events: JWK Sets in and out, client JWKS, the lifecycle.

Every test fires the events (or calls the host facade) as Omejdn's core does
and checks the stored rows with plain SQL.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg import Client, PluginLoader
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue, MigrationError
from omejdn_pg.host import events
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key, generate_key
from omejdn_pg.lifecycle import LifecycleError
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.certificates import self_signed
from tests.kits.plugins import plugin_yaml
from tests.kits.threads import run_together
from tests.kits.witness import PlainSQL

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def private_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[kind]
    return ec.generate_private_key(curve)


def jwk_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **params: Any) -> dict[str, Any]:
    return Key(key.public_key(), key, params=params).to_jwk(private=True)


def key_rows(sql: PlainSQL, target_type: str = "omejdn", target: str = "omejdn") -> list[Any]:
    return sql.rows(
        "SELECT kid, type, state, position FROM keys WHERE target_type = %s AND target = %s "
        "ORDER BY position, type",
        (target_type, target),
    )


# --- JWK Sets in and out --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RSA", "P-256", "P-384", "P-521"])
def test_a_three_key_set_with_custom_descriptors_round_trips(
    loader: PluginLoader, plain_sql: PlainSQL, kind: str
) -> None:
    keys = [private_key(kind) for _ in range(3)]
    jwks = {
        "keys": [
            jwk_of(keys[0], kid="signer-2026", use="sig"),
            jwk_of(keys[1], x_purpose="legacy", key_ops=["verify"]),
            {
                **jwk_of(keys[2], kid="with-chain"),
                "x5c": [
                    __import__("base64")
                    .b64encode(self_signed(keys[2]).public_bytes(serialization.Encoding.DER))
                    .decode()
                ],
            },
        ]
    }
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks)

    loaded = loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn", create=False)
    (answer,) = loaded
    expected = KeySet.from_jwks(jwks).to_jwks(private=True)
    assert answer == expected
    for sent, got in zip(jwks["keys"], answer["keys"], strict=True):
        # Every member that was sent comes back exactly, private members included.
        assert {name: got[name] for name in sent} == sent
        assert got["use"] == "sig"
        assert (
            got["alg"]
            == {"RSA": "RS256", "P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[kind]
        )
    assert "x5t#S256" in answer["keys"][2]

    # The first key is the pair of rows the Ruby plugin reads; the others it ignores.
    assert [(kid, kind_) for kid, kind_, _state, _pos in key_rows(plain_sql)] == [
        ("signer-2026", "sk"),
        (answer["keys"][1]["kid"], "extra_sk"),
        ("with-chain", "extra_certs"),
        ("with-chain", "extra_sk"),
    ]
    stored_params = plain_sql.value(
        "SELECT params FROM keys WHERE kid = %s", (answer["keys"][1]["kid"],)
    )
    # use and alg were filled in by to_jwk above, so they arrived as given.
    assert stored_params == {
        "x_purpose": "legacy",
        "key_ops": ["verify"],
        "use": "sig",
        "alg": answer["keys"][1]["alg"],
    }


def test_an_empty_set_deletes_and_nothing_stored_loads_as_none(
    loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    jwks = KeySet([generate_key("ES256")]).to_jwks()
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks)
    assert plain_sql.value("SELECT count(*) FROM keys") == 1
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks={"keys": []})
    assert plain_sql.value("SELECT count(*) FROM keys") == 0
    assert loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn", create=True) == [
        None
    ]
    # create is the host's job: the backend never invents keys.
    assert plain_sql.value("SELECT count(*) FROM keys") == 0


def test_the_host_creates_one_rs256_key_on_first_load(
    plugin_host: Host, plain_sql: PlainSQL
) -> None:
    keys = plugin_host.keys.load("omejdn", "omejdn", create=True)
    assert [(key.alg, key.use, key.is_private) for key in keys] == [("RS256", "sig", True)]
    assert plain_sql.rows("SELECT kid, type FROM keys") == [(keys[0].kid, "sk")]
    again = plugin_host.keys.load("omejdn", "omejdn", create=True)
    assert [key.kid for key in again] == [keys[0].kid]
    assert plain_sql.value("SELECT count(*) FROM keys") == 1


def test_a_loaded_set_stored_back_without_private_members_keeps_them(
    plugin_host: Host, loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    plugin_host.keys.load("omejdn", "omejdn", create=True)
    nxt = plugin_host.keys.rotate("omejdn", "omejdn", now=NOW)
    (answer,) = loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn")
    assert "d" in answer["keys"][0]
    assert "d" not in answer["keys"][1]  # next keys come without private members
    before = plain_sql.rows("SELECT kid, type, value, state FROM keys ORDER BY kid, type")

    # The host stores back what it loaded (e.g. an admin API round trip).
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=answer)

    assert plain_sql.rows("SELECT kid, type, value, state FROM keys ORDER BY kid, type") == before
    stored = plugin_host.keys.stored("omejdn", "omejdn")
    assert stored.by_kid(nxt.kid).is_private  # type: ignore[union-attr]
    assert stored.by_kid(nxt.kid).state == "next"  # type: ignore[union-attr]


def test_rows_written_by_the_ruby_plugin_read_as_one_active_key(
    plugin_host: Host, plain_sql: PlainSQL
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    chain = self_signed(key).public_bytes(serialization.Encoding.PEM).decode()
    # Exactly what the Ruby plugin's store_key sends.
    plain_sql.execute(
        "INSERT INTO keys(target_type,target,type,value) VALUES ('omejdn','omejdn','sk',%s)",
        (pkcs1,),
    )
    plain_sql.execute(
        "INSERT INTO keys(target_type,target,type,value) VALUES ('omejdn','omejdn','certs',%s)",
        (chain,),
    )
    (loaded,) = plugin_host.keys.load("omejdn", "omejdn")
    assert loaded.state == "active"
    assert loaded.private_key is not None
    assert loaded.private_key.private_numbers() == key.private_numbers()
    assert loaded.certificates[0] == certificate_from(chain)
    assert plugin_host.keys.signing_key().kid == loaded.kid


def certificate_from(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_load_all_is_every_key_of_the_type_without_private_members(
    plugin_host: Host, loader: PluginLoader
) -> None:
    plugin_host.keys.store("omejdn", "omejdn", [generate_key("RS256"), generate_key("ES256")])
    plugin_host.keys.store("omejdn", "other", [generate_key("ES384")])
    plugin_host.keys.store("clients", "portal", [generate_key("ES256")])
    (answer,) = loader.fire(events.KEYS_LOAD_ALL, target_type="omejdn")
    assert len(answer["keys"]) == 3
    assert all("d" not in jwk and "p" not in jwk for jwk in answer["keys"])
    assert plugin_host.keys.jwks("omejdn") == answer


def test_a_new_key_with_an_expired_certificate_is_refused(
    loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    key = private_key("P-256")
    old = self_signed(key, valid_from=NOW - datetime.timedelta(days=400), days=30)
    jwk = Key(key.public_key(), key, [old]).to_jwk()
    with pytest.raises(InvalidKeyMaterial, match=r"keys omejdn/omejdn: key .*expired"):
        loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks={"keys": [jwk]})
    assert plain_sql.value("SELECT count(*) FROM keys") == 0


def test_a_client_key_with_an_expired_certificate_is_stored_with_a_warning(
    loader: PluginLoader, plain_sql: PlainSQL, caplog: pytest.LogCaptureFixture
) -> None:
    # Omejdn's admin API answers 500 if the store refuses a client's registration;
    # the relying party verifies its own client's assertion, so the key is kept.
    key = private_key("P-256")
    old = self_signed(key, valid_from=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), days=30)
    jwk = Key(key.public_key(), None, [old]).to_jwk()
    with caplog.at_level("WARNING", logger="omejdn_pg"):
        loader.fire(events.KEYS_STORE, target_type="clients", target="portal", jwks={"keys": [jwk]})
        client = Client(metadata={"client_id": "other", "jwks": {"keys": [jwk]}})
        loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
    assert plain_sql.rows(
        "SELECT target, type FROM keys WHERE target_type = 'clients' ORDER BY target"
    ) == [("other", "certs"), ("portal", "certs")]
    warned = [r.getMessage() for r in caplog.records if "2024-01-31" in r.getMessage()]
    assert any("keys clients/portal" in line and "expired" in line for line in warned), warned
    assert any("keys clients/other" in line for line in warned), warned
    (found,) = loader.fire(events.CLIENT_GET, client_id="other")
    assert [k["kid"] for k in found.metadata["jwks"]["keys"]] == [jwk["kid"]]


def test_a_certificate_that_forbids_signing_gives_use_enc(loader: PluginLoader) -> None:
    key = private_key("RSA")
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    jwk = Key(key.public_key(), key, [self_signed(key, key_usage=usage)]).to_jwk()
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="enc", jwks={"keys": [jwk]})
    (answer,) = loader.fire(events.KEYS_LOAD, target_type="omejdn", target="enc")
    assert answer["keys"][0]["use"] == "enc"


@pytest.mark.parametrize("target", ["..", "../../etc", "a/b", ".hidden", "nul\x00"])
def test_targets_that_cannot_be_file_names_are_refused_when_written(
    loader: PluginLoader, plain_sql: PlainSQL, target: str
) -> None:
    jwks = KeySet([generate_key("ES256")]).to_jwks()
    with pytest.raises(InvalidValue, match="target"):
        loader.fire(events.KEYS_STORE, target_type="omejdn", target=target, jwks=jwks)
    with pytest.raises(InvalidValue, match="client_id"):
        loader.fire(
            events.CLIENT_CREATE,
            client=Client(metadata={"client_id": target}),
            client_backend="postgres",
        )
    assert plain_sql.value("SELECT count(*) FROM keys") == 0
    assert plain_sql.value("SELECT count(*) FROM clients") == 0


# --- clients carry their JWKS ------------------------------------------------------------


def test_clients_carry_their_jwks(loader: PluginLoader, plain_sql: PlainSQL) -> None:
    first, second = generate_key("ES256"), generate_key("RS256")
    jwks = KeySet([first.public(), second.public()]).to_jwks(private=False)
    client = Client(
        metadata={"client_id": "portal", "jwks": jwks, "jwks_uri": "https://portal/jwks"}
    )
    loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
    assert plain_sql.rows("SELECT key FROM clients ORDER BY key") == [("client_id",), ("jwks_uri",)]
    assert [kid for kid, *_ in key_rows(plain_sql, "clients", "portal")] == [
        first.kid,
        second.kid,
    ]

    (found,) = loader.fire(events.CLIENT_GET, client_id="portal")
    assert found.metadata["jwks"] == jwks
    assert found.metadata["jwks_uri"] == "https://portal/jwks"

    for index in range(30):
        loader.fire(
            events.CLIENT_CREATE,
            client=Client(
                metadata={
                    "client_id": f"c{index:02d}",
                    "jwks": KeySet([generate_key("ES256")]).to_jwks(private=False),
                }
            ),
            client_backend="postgres",
        )
    plugin_db = loader.plugins["postgres_backend"].database  # type: ignore[attr-defined]
    plugin_db.read(lambda conn: conn.exec_driver_sql("SELECT 1"))
    statements = count_statements(plugin_db.engine)
    (every,) = loader.fire(events.CLIENT_GET_ALL)
    assert len(statements) == 1  # keys aggregated in the same statement, not one per client
    assert len(every) == 31
    assert all(
        len(c.metadata["jwks"]["keys"]) == (2 if c.client_id == "portal" else 1) for c in every
    )

    found.metadata["jwks"] = KeySet([first.public()]).to_jwks(private=False)
    loader.fire(events.CLIENT_UPDATE, client=found)
    assert [kid for kid, *_ in key_rows(plain_sql, "clients", "portal")] == [first.kid]
    del found.metadata["jwks"]
    loader.fire(events.CLIENT_UPDATE, client=found)
    assert key_rows(plain_sql, "clients", "portal") == []
    (found,) = loader.fire(events.CLIENT_GET, client_id="portal")
    assert "jwks" not in found.metadata

    loader.fire(events.CLIENT_DELETE, client_id="c00")
    assert key_rows(plain_sql, "clients", "c00") == []
    assert plain_sql.value("SELECT count(*) FROM keys WHERE target_type = 'clients'") == 29


def test_a_bad_client_jwks_names_the_client_and_writes_nothing(
    loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    client = Client(metadata={"client_id": "portal", "jwks": {"keys": [{"kty": "RSA", "n": "!"}]}})
    with pytest.raises(InvalidKeyMaterial, match=r"client 'portal': jwks"):
        loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
    assert plain_sql.value("SELECT count(*) FROM clients") == 0


# --- the lifecycle, end to end --------------------------------------------------------


def signing_kid(loader: PluginLoader) -> str:
    """What Omejdn's unchanged core signs with: the first private ``sig`` key of KEYS_LOAD."""
    (answer,) = loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn", create=True)
    key = next(k for k in answer["keys"] if k.get("use") == "sig" and "d" in k)
    kid: str = key["kid"]
    return kid


def published(host: Host) -> list[str]:
    return [jwk["kid"] for jwk in host.keys.jwks("omejdn")["keys"]]


def test_a_rotation_publishes_first_signs_later_and_retires_after_its_window(
    plugin_host: Host, loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    plugin_host.config.write(
        "omejdn",
        {
            "issuer": "https://id.example",
            "access_token": {"expiration": 600},
            "id_token": {"expiration": 300},
        },
    )
    first = plugin_host.keys.load("omejdn", "omejdn", create=True)[0]
    assert signing_kid(loader) == first.kid
    assert published(plugin_host) == [first.kid]

    second = plugin_host.keys.rotate("omejdn", "omejdn", publish_for=48 * HOUR, now=NOW)
    assert second.state == "next"
    assert signing_kid(loader) == first.kid  # published, not yet signing
    assert sorted(published(plugin_host)) == sorted([first.kid, second.kid])
    with pytest.raises(LifecycleError, match="already waiting"):
        plugin_host.keys.rotate("omejdn", "omejdn", now=NOW)

    assert plugin_host.keys.maintain(now=NOW + 47 * HOUR) == []
    assert signing_kid(loader) == first.kid

    changes = plugin_host.keys.maintain(now=NOW + 49 * HOUR)
    assert [(c.kid, c.change) for c in changes] == [
        (second.kid, "activated"),
        (first.kid, "retired"),
    ]
    assert signing_kid(loader) == second.kid
    assert sorted(published(plugin_host)) == sorted(
        [first.kid, second.kid]
    )  # retired, still published
    states = dict(plain_sql.rows("SELECT kid, state FROM keys"))
    assert states == {first.kid: "retired", second.kid: "active"}
    # The signing key is the one Ruby's plugin reads (type sk).
    assert plain_sql.value("SELECT kid FROM keys WHERE type = 'sk'") == second.kid

    # Retired for the longest token lifetime (600 s) plus the margin (1 h), from activation.
    window = plugin_host.keys.retirement_window()
    assert window == datetime.timedelta(seconds=600) + HOUR
    # The window starts when the run retired it (49 h), not when it was due (48 h).
    assert (
        plugin_host.keys.maintain(now=NOW + 49 * HOUR + window - datetime.timedelta(seconds=1))
        == []
    )
    assert first.kid in published(plugin_host)
    changes = plugin_host.keys.maintain(now=NOW + 49 * HOUR + window)
    assert [(c.kid, c.change) for c in changes] == [(first.kid, "destroyed")]
    assert published(plugin_host) == [second.kid]
    assert signing_kid(loader) == second.kid
    assert plugin_host.keys.maintain(now=NOW + 100 * HOUR) == []  # idempotent


def test_activate_retire_and_delete_by_hand(plugin_host: Host, loader: PluginLoader) -> None:
    first = plugin_host.keys.load("omejdn", "omejdn", create=True)[0]
    with pytest.raises(LifecycleError, match="only active signing key"):
        plugin_host.keys.retire("omejdn", "omejdn", first.kid, now=NOW)
    second = plugin_host.keys.rotate("omejdn", "omejdn", now=NOW)
    with pytest.raises(LifecycleError, match="publish window"):
        plugin_host.keys.activate("omejdn", "omejdn", second.kid, now=NOW)
    plugin_host.keys.activate("omejdn", "omejdn", second.kid, now=NOW, force=True)
    assert signing_kid(loader) == second.kid
    keys = plugin_host.keys.stored("omejdn", "omejdn")
    assert [(k.kid, k.state) for k in keys] == [(second.kid, "active"), (first.kid, "retired")]
    plugin_host.keys.activate("omejdn", "omejdn", first.kid, now=NOW)  # a rollback
    assert signing_kid(loader) == first.kid
    plugin_host.keys.delete("omejdn", "omejdn", second.kid)
    assert published(plugin_host) == [first.kid]
    with pytest.raises(LifecycleError, match="no key with kid 'nope'"):
        plugin_host.keys.delete("omejdn", "omejdn", "nope")


MAINTAIN = textwrap.dedent(
    """
    import datetime, json, sys
    from omejdn_pg.service.host import Host
    host = Host.from_files([sys.argv[1]])
    now = datetime.datetime.fromisoformat(sys.argv[2])
    print(json.dumps([[c.target, c.kid, c.change] for c in host.keys.maintain(now=now)]))
    host.close()
    """
)


def test_maintain_from_four_processes_applies_each_transition_once(
    plugin_host: Host, database: ConnectionSettings, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    targets = [f"t{i}" for i in range(6)]
    for target in targets:
        plugin_host.keys.store("omejdn", target, [generate_key("ES256")])
        plugin_host.keys.rotate("omejdn", target, now=NOW)
    path = tmp_path / "plugins.yml"
    path.write_text(plugin_yaml(database))
    # After the default publish window (2 d), inside the retirement window (2 h).
    later = (NOW + datetime.timedelta(days=2, minutes=30)).isoformat()

    def run(_: int) -> list[list[str]]:
        done = subprocess.run(
            [sys.executable, "-c", MAINTAIN, str(path), later],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    results = run_together(4, run)
    changes = [change for result in results for change in result]  # type: ignore[union-attr]
    assert sorted(c for c in changes if c[2] == "activated") == sorted(
        [
            t,
            plain_sql.value("SELECT kid FROM keys WHERE target = %s AND state = 'active'", (t,)),
            "activated",
        ]
        for t in targets
    )
    assert len([c for c in changes if c[2] == "retired"]) == len(targets)
    assert plain_sql.rows(
        "SELECT target, count(*) FILTER (WHERE state = 'active'), count(*) FROM keys "
        "GROUP BY target ORDER BY target"
    ) == [(t, 1, 2) for t in targets]


# --- migrations --------------------------------------------------------------------------


def test_0001_to_0002_and_back_keeps_every_row(
    empty_database: ConnectionSettings, tmp_path: Path
) -> None:
    sql = PlainSQL(empty_database)
    migrate.upgrade(empty_database, "0001")
    key = private_key("RSA")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    chain = self_signed(key).public_bytes(serialization.Encoding.PEM).decode()
    sql.execute(
        "INSERT INTO keys VALUES ('omejdn','omejdn','sk',%s), ('omejdn','omejdn','certs',%s), "
        "('clients','portal','certs',%s)",
        (pem, chain, chain),
    )
    sql.execute("INSERT INTO users (username, password) VALUES ('alice', 'x')")
    before = sql.rows("SELECT target_type, target, type, value FROM keys ORDER BY 1, 2, 3")

    migrate.upgrade(empty_database, "0002")
    assert sql.rows("SELECT target_type, target, type, value FROM keys ORDER BY 1, 2, 3") == before
    assert sql.rows("SELECT DISTINCT kid, state FROM keys") == [("", "active")]
    migrate.upgrade(empty_database)  # the rest of the way, for a host to run on
    path = tmp_path / "plugins.yml"
    path.write_text(plugin_yaml(empty_database))
    with Host.from_files([path], base_dir=tmp_path) as host:
        (loaded,) = host.keys.load("omejdn", "omejdn")
        assert loaded.private_key.private_numbers() == key.private_numbers()  # type: ignore[union-attr]

    migrate.downgrade(empty_database, "0001")
    assert sql.rows("SELECT target_type, target, type, value FROM keys ORDER BY 1, 2, 3") == before
    migrate.upgrade(empty_database, "0002")
    assert sql.rows("SELECT target_type, target, type, value FROM keys ORDER BY 1, 2, 3") == before
    assert sql.value("SELECT count(*) FROM users") == 1
    migrate.upgrade(empty_database)

    # A target with several keys cannot go back to one key per target: refused, named.
    with Host.from_files([path], base_dir=tmp_path) as host:
        host.keys.rotate("omejdn", "omejdn", now=NOW)
    with pytest.raises(MigrationError, match=r"keys omejdn/omejdn: 2 keys"):
        migrate.downgrade(empty_database, "0001")
    assert migrate.current(empty_database) == migrate.head()  # the refusal changed nothing
    # The rotated key got a self-signed chain of the signer's subject: 2 keys, 4 rows.
    assert sql.value("SELECT count(*) FROM keys WHERE target = 'omejdn'") == 4
