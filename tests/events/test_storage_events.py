"""End to end: the seed YAML, every storage event through the loader, rows checked in SQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg import Client, KeyMaterial, PluginLoader, User
from omejdn_pg.errors import AlreadyExists, ConfigurationError, SchemaOutOfDate
from omejdn_pg.host import events
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.common import lock_for_update
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.certificates import self_signed
from tests.kits.passwords import OMEJDN_HASH
from tests.kits.plugins import plugin_file, plugin_yaml
from tests.kits.witness import PlainSQL


def single(answers: list[Any]) -> Any:
    assert len(answers) == 1, answers
    return answers[0]


@pytest.fixture
def legacy_loader(database: ConnectionSettings, tmp_path: Path) -> Iterator[PluginLoader]:
    """The key events of Omejdn's core before JWKS: ``key_events: key_material``."""
    path = plugin_file(
        tmp_path / "plugins.yml", database, backend="      key_events: key_material\n"
    )
    with PluginLoader.from_files([path], base_dir=tmp_path) as loaded:
        yield loaded


CERTIFICATE_EVENTS = (
    events.CLIENT_AUTHENTICATION_CERTIFICATE_GET,
    events.CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE,
)


def test_the_postgres_plugin_is_found_through_its_entry_point(
    loader: PluginLoader, legacy_loader: PluginLoader
) -> None:
    assert type(loader.plugins["postgres_backend"]).__name__ == "PostgresBackendPlugin"
    for event in events.STORAGE_EVENTS:
        # Omejdn's current core no longer fires the certificate events.
        expected = 0 if event in CERTIFICATE_EVENTS else 1
        assert len(loader.handlers(event)) == expected, event
        assert len(legacy_loader.handlers(event)) == 1, event


def test_user_events(loader: PluginLoader, plain_sql: PlainSQL) -> None:
    alice = User(username="alice", password=OMEJDN_HASH, attributes={"email": "a@example.org"})
    assert single(loader.fire(events.USER_CREATE, user=alice, user_backend="postgres")) is None
    assert plain_sql.rows("SELECT username, password FROM users") == [("alice", OMEJDN_HASH)]
    assert plain_sql.rows("SELECT type, identifier, key, value FROM attributes") == [
        ("user", "alice", "email", "a@example.org")
    ]

    found = single(loader.fire(events.USER_GET, username="alice"))
    assert found == User(
        username="alice",
        password=OMEJDN_HASH,
        attributes={"email": "a@example.org"},
        backend="postgres",
    )
    assert single(loader.fire(events.USER_GET, username="nobody")) is None
    assert [u.username for u in single(loader.fire(events.USER_GET_ALL))] == ["alice"]

    found.attributes = {"email": "alice@example.org", "omejdn": "admin"}
    found.consent = {"client-a": ["openid"]}
    loader.fire(events.USER_UPDATE, user=found)
    assert plain_sql.rows("SELECT key, value FROM attributes ORDER BY key") == [
        ("email", "alice@example.org"),
        ("omejdn", "admin"),
    ]
    assert plain_sql.value("SELECT consent FROM users") == {"client-a": ["openid"]}

    assert single(
        loader.fire(events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=found, password="mypassword")
    )
    assert not single(
        loader.fire(events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=found, password="wrong")
    )
    loader.fire(events.USER_AUTHENTICATION_PASSWORD_CHANGE, user=found, password="n3w-secret")
    stored = plain_sql.value("SELECT password FROM users")
    assert stored != "n3w-secret"
    assert bcrypt.checkpw(b"n3w-secret", stored.encode())
    assert single(
        loader.fire(events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=found, password="n3w-secret")
    )

    with pytest.raises(AlreadyExists, match="alice"):
        loader.fire(events.USER_CREATE, user=User(username="alice"), user_backend="postgres")

    loader.fire(events.USER_DELETE, username="alice")
    assert plain_sql.rows("SELECT * FROM users") == []
    assert plain_sql.rows("SELECT * FROM attributes") == []


def test_client_events(legacy_loader: PluginLoader, plain_sql: PlainSQL) -> None:
    loader = legacy_loader
    metadata = {
        "client_id": "portal",
        "client_name": "Portal",
        "redirect_uris": ["https://portal.example.org/cb"],
        "token_endpoint_auth_method": "tls_client_auth",
    }
    client = Client(metadata=dict(metadata), attributes={"tier": "gold"})
    loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
    rows = dict(plain_sql.rows("SELECT key, value FROM clients WHERE client_id = 'portal'"))
    assert rows == metadata
    assert plain_sql.rows("SELECT type, key, value FROM attributes") == [("client", "tier", "gold")]

    found = single(loader.fire(events.CLIENT_GET, client_id="portal"))
    assert found.metadata == metadata
    assert found.attributes == {"tier": "gold"}
    assert found.backend == "postgres"
    assert [c.client_id for c in single(loader.fire(events.CLIENT_GET_ALL))] == ["portal"]

    found.metadata["client_name"] = "Portal 2"
    loader.fire(events.CLIENT_UPDATE, client=found)
    assert plain_sql.value("SELECT value FROM clients WHERE key = 'client_name'") == "Portal 2"
    assert plain_sql.value("SELECT count(*) FROM clients WHERE key = 'backend'") == 0

    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, "portal")
    loader.fire(events.CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE, client=found, new_cert=cert)
    stored = plain_sql.value(
        "SELECT value FROM keys WHERE target_type = 'clients' AND target = 'portal' "
        "AND type = 'certs'"
    )
    assert x509.load_pem_x509_certificate(stored.encode()) == cert
    assert single(loader.fire(events.CLIENT_AUTHENTICATION_CERTIFICATE_GET, client=found)) == cert
    loader.fire(events.CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE, client=found, new_cert=None)
    assert plain_sql.rows("SELECT * FROM keys") == []
    assert single(loader.fire(events.CLIENT_AUTHENTICATION_CERTIFICATE_GET, client=found)) is None

    loader.fire(events.CLIENT_DELETE, client_id="portal")
    assert plain_sql.rows("SELECT * FROM clients") == []
    assert plain_sql.rows("SELECT * FROM attributes") == []


def test_configuration_events(loader: PluginLoader, plain_sql: PlainSQL) -> None:
    omejdn = {"issuer": "https://auth.example.org", "token": {"expiration": 3600}}
    loader.fire(events.CONFIGURATION_STORE, section="omejdn", data=omejdn)
    rows = plain_sql.rows("SELECT key, value FROM configuration_omejdn ORDER BY key")
    assert rows == [("issuer", omejdn["issuer"]), ("token", omejdn["token"])]
    assert single(loader.fire(events.CONFIGURATION_LOAD, section="omejdn", fallback={})) == omejdn

    webfinger = [{"rel": "issuer"}, {"rel": "b"}, {"rel": "a"}]
    loader.fire(events.CONFIGURATION_STORE, section="webfinger", data=webfinger)
    assert [r[0] for r in plain_sql.rows("SELECT item FROM configuration_webfinger")] == webfinger
    assert single(loader.fire(events.CONFIGURATION_LOAD, section="webfinger", fallback=[])) == (
        webfinger
    )
    assert single(loader.fire(events.CONFIGURATION_LOAD, section="never", fallback={})) is None


def test_key_events(legacy_loader: PluginLoader, plain_sql: PlainSQL) -> None:
    loader = legacy_loader
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    material = KeyMaterial(sk=signing_key, certs=[self_signed(signing_key, "omejdn")])
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", key_material=material)
    rows = dict(plain_sql.rows("SELECT type, value FROM keys"))
    assert rows["sk"].startswith("-----BEGIN PRIVATE KEY-----")
    assert serialization.load_pem_private_key(rows["sk"].encode(), None).private_numbers() == (
        signing_key.private_numbers()
    )
    assert rows["certs"].startswith("-----BEGIN CERTIFICATE-----")

    loaded = single(loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn"))
    assert loaded == material
    assert loaded.kid == material.kid
    assert single(loader.fire(events.KEYS_LOAD, target_type="omejdn", target="none")).is_empty

    # A rotated key is seen at once, although parsed keys are remembered.
    rotated = KeyMaterial(sk=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", key_material=rotated)
    assert single(loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn")) == rotated
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", key_material=material)
    assert single(loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn")) == material

    second = KeyMaterial(sk=ec.generate_private_key(ec.SECP384R1()))
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="rotated", key_material=second)
    every = single(loader.fire(events.KEYS_LOAD_ALL, target_type="omejdn"))
    assert sorted(m.kid for m in every) == sorted([material.kid, second.kid])


def test_only_the_configured_handler_groups_register(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    path = tmp_path / "plugins.yml"
    path.write_text(plugin_yaml(database, handlers="[config, keys]"))
    with PluginLoader.from_files([path], base_dir=tmp_path) as loader:
        for event in events.USER_EVENTS + events.CLIENT_EVENTS:
            assert loader.handlers(event) == (), event
        for event in events.CONFIG_EVENTS + events.KEY_EVENTS:
            assert len(loader.handlers(event)) == 1, event


def test_a_database_without_the_schema_is_refused_with_advice(
    empty_database: ConnectionSettings, tmp_path: Path
) -> None:
    path = tmp_path / "plugins.yml"
    path.write_text(plugin_yaml(empty_database))
    with pytest.raises(SchemaOutOfDate, match="omejdn-pg migrate"):
        PluginLoader.from_files([path], base_dir=tmp_path)


@pytest.fixture
def mixed(database: ConnectionSettings, tmp_path: Path) -> Iterator[Host]:
    """Default user and client plugins (files) active beside postgres."""
    (tmp_path / "config").mkdir()
    bob_hash = bcrypt.hashpw(b"bobs-password", bcrypt.gensalt(4)).decode()
    (tmp_path / "config" / "users.yml").write_text(
        json.dumps(
            [{"username": "bob", "password": bob_hash, "attributes": [{"key": "a", "value": 1}]}]
        )
    )
    (tmp_path / "config" / "clients.yml").write_text(
        json.dumps([{"client_id": "file-client", "client_name": "From a file"}])
    )
    path = tmp_path / "plugins.yml"
    path.write_text(plugin_yaml(database, deactivate="[config, keys]"))
    with Host.from_files([path], base_dir=tmp_path) as host:
        yield host


def test_mixed_backends_each_serve_their_own_users(
    mixed: Host, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    users = mixed.users
    users.add(User(username="alice", password=OMEJDN_HASH))
    assert plain_sql.rows("SELECT username FROM users") == [("alice",)]
    assert "alice" not in (tmp_path / "config" / "users.yml").read_text()

    bob = users.find("bob")
    alice = users.find("alice")
    assert bob is not None
    assert bob.backend == "yaml"
    assert bob.attributes == {"a": 1}
    assert alice is not None
    assert alice.backend == "postgres"
    assert sorted((u.username, u.backend) for u in users.all()) == [
        ("alice", "postgres"),
        ("bob", "yaml"),
    ]

    assert users.verify_password(bob, "bobs-password")
    assert not users.verify_password(bob, "mypassword")
    assert users.verify_password(alice, "mypassword")
    assert not users.verify_password(alice, "bobs-password")

    bob.attributes = {"a": 2}
    users.save(bob)
    assert plain_sql.rows("SELECT * FROM attributes") == []
    assert users.find("bob").attributes == {"a": 2}  # type: ignore[union-attr]

    users.update_password(bob, "bobs-new-password")
    assert users.verify_password(bob, "bobs-new-password")
    assert plain_sql.value("SELECT password FROM users") == OMEJDN_HASH

    users.delete("alice")
    assert plain_sql.rows("SELECT * FROM users") == []
    assert users.find("bob") is not None
    users.delete("bob")
    assert users.all() == []


def test_mixed_backends_each_serve_their_own_clients(mixed: Host, plain_sql: PlainSQL) -> None:
    clients = mixed.clients
    clients.add(Client(metadata={"client_id": "db-client", "client_name": "In PostgreSQL"}))
    assert sorted((c.client_id, c.backend) for c in clients.all()) == [
        ("db-client", "postgres"),
        ("file-client", "yaml"),
    ]
    from_file = clients.find("file-client")
    assert from_file is not None
    from_file.metadata["client_name"] = "Renamed"
    clients.save(from_file)
    assert plain_sql.value("SELECT count(*) FROM clients WHERE client_id = 'file-client'") == 0
    assert clients.find("file-client").metadata["client_name"] == "Renamed"  # type: ignore[union-attr]
    clients.delete("db-client")
    assert plain_sql.rows("SELECT * FROM clients") == []
    assert [c.client_id for c in clients.all()] == ["file-client"]


def test_host_facade_jwks(loader: PluginLoader) -> None:
    host = Host(loader)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = Key(key.public_key(), key, [self_signed(key, "omejdn")])
    host.keys.store("omejdn", "omejdn", [signer])
    ec_key = ec.generate_private_key(ec.SECP256R1())
    host.keys.store("omejdn", "ec", [Key(ec_key.public_key(), ec_key)])
    jwks = host.keys.jwks("omejdn")
    by_type = {jwk["kty"]: jwk for jwk in jwks["keys"]}
    assert set(by_type) == {"RSA", "EC"}
    assert by_type["RSA"]["kid"] == host.keys.load("omejdn", "omejdn")[0].kid
    assert len(by_type["RSA"]["x5c"]) == 1
    assert "x5t" in by_type["RSA"]
    assert "x5c" not in by_type["EC"]
    assert by_type["EC"]["crv"] == "P-256"
    assert all("d" not in jwk for jwk in jwks["keys"])
    assert host.config.read("missing", fallback={"a": 1}) == {"a": 1}


def test_a_login_upgrades_a_weaker_hash_to_the_configured_scheme(
    database: ConnectionSettings, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    path = tmp_path / "plugins.yml"
    path.write_text(
        plugin_yaml(database).replace(
            "passwords: {bcrypt_rounds: 4}", "passwords: {scheme: argon2}"
        )
    )
    with Host.from_files([path], base_dir=tmp_path) as host:
        host.users.add(User(username="alice", password=OMEJDN_HASH))
        alice = host.users.find("alice")
        assert alice is not None
        assert not host.users.verify_password(alice, "wrong")
        assert plain_sql.value("SELECT password FROM users") == OMEJDN_HASH
        assert host.users.verify_password(alice, "mypassword")
        upgraded = plain_sql.value("SELECT password FROM users")
        assert upgraded.startswith("$argon2id$")
        assert host.users.verify_password(alice, "mypassword")
        assert plain_sql.value("SELECT password FROM users") == upgraded


def test_a_static_backend_default_that_names_no_active_backend_is_refused(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    path = tmp_path / "plugins.yml"
    path.write_text(
        plugin_yaml(database).replace(
            "client_backend_default: postgres", "client_backend_default: pg"
        )
    )
    with pytest.raises(
        ConfigurationError, match=r"'client_backend_default' is 'pg'.*active: postgres"
    ):
        PluginLoader.from_files([path], base_dir=tmp_path)
    # Omejdn's own default, named explicitly, with the default user plugin deactivated.
    path.write_text(
        plugin_yaml(database).replace(
            "user_backend_default: postgres", "user_backend_default: yaml"
        )
    )
    with pytest.raises(ConfigurationError, match=r"'user_backend_default' is 'yaml'"):
        PluginLoader.from_files([path], base_dir=tmp_path)


def test_a_client_certificate_written_as_keys_waits_for_the_client_lock(
    loader: PluginLoader, db: Database
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    material = KeyMaterial(certs=[self_signed(key, "portal")])
    done = threading.Event()

    def store() -> None:
        loader.fire(
            events.KEYS_STORE,
            target_type="clients",
            target="portal",
            jwks=KeySet([material.to_key()]).to_jwks(),  # type: ignore[list-item]
        )
        done.set()

    with db.transaction() as conn:
        lock_for_update(conn, "client", "portal")  # what CLIENT_DELETE holds
        writer = threading.Thread(target=store)
        writer.start()
        assert not done.wait(0.5), "KEYS_STORE of a client certificate ignored the client lock"
    writer.join(10)
    assert done.is_set()
