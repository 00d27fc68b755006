"""``omejdn-pg serve`` over its socket: every storage event of Omejdn's core round-trips,
in the shapes the core expects, checked with plain SQL; and what a bad request gets."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.settings.connection import ConnectionSettings
from tests.cluster.bridge_client import BridgeClient, BridgeError, Service, service_for
from tests.kits.witness import PlainSQL

HASH = "$2b$04$97nGfbT5aTJG0osbDpneLe7ChbV0JL.KlPMKG.wK87UVnGMSmyoeu"  # "right-password"


@pytest.fixture
def service(database: ConnectionSettings, tmp_path: Path) -> Iterator[Service]:
    running = service_for(database, tmp_path, bcrypt_rounds=5, cache="{max_staleness: 0.5}").start()
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log()


@pytest.fixture
def bridge(service: Service) -> Iterator[BridgeClient]:
    with BridgeClient(service.path) as client:
        yield client


def test_hello_names_the_protocol_and_the_service(bridge: BridgeClient) -> None:
    assert bridge.hello["protocol"] == 1
    assert bridge.hello["service"].startswith("omejdn-pg ")
    assert bridge.hello["backends"] == {"user": "postgres", "client": "postgres"}


def test_users_round_trip_in_the_shape_of_user_to_h(
    bridge: BridgeClient, plain_sql: PlainSQL
) -> None:
    alice = {
        "username": "alice",
        "password": HASH,
        "attributes": {"email": "alice@example.org", "omejdn": "admin"},
        "backend": "yaml",  # what admin API v2 and the core's default name
    }
    assert bridge.call("USER_CREATE", {"user": alice, "user_backend": "yaml"}) is None
    assert plain_sql.rows("SELECT username, password FROM users") == [("alice", HASH)]
    found = bridge.call("USER_GET", {"username": "alice"})
    assert found == {
        "username": "alice",
        "attributes": {"email": "alice@example.org", "omejdn": "admin"},
        "password": HASH,
        "backend": "postgres",
        "consent": {},
    }
    assert bridge.call("USER_GET", {"username": "nobody"}) is None
    assert bridge.call("USER_GET", {"username": None}) is None
    assert [u["username"] for u in bridge.call("USER_GET_ALL", {})] == ["alice"]

    # Admin API v1 updates from the request body: backend 'yaml', or none at all.
    for backend in ("yaml", None, "postgres"):
        update = {**found, "attributes": {"email": f"{backend}@example.org"}, "backend": backend}
        assert bridge.call("USER_UPDATE", {"user": update}) is None
        assert plain_sql.rows(
            "SELECT value FROM attributes WHERE type = 'user' AND identifier = 'alice'"
        ) == [(f"{backend}@example.org",)]

    verify = {"user": {"username": "alice", "password": HASH, "backend": None}}
    assert bridge.call("USER_AUTHENTICATION_PASSWORD_VERIFY", {**verify, "password": "x"}) is False
    assert plain_sql.value("SELECT password FROM users WHERE username = 'alice'") == HASH
    assert (
        bridge.call("USER_AUTHENTICATION_PASSWORD_VERIFY", {**verify, "password": "right-password"})
        is True
    )
    # Rehash on login, as in Python: the cost-4 hash is replaced by one of the policy's cost.
    assert plain_sql.value("SELECT password FROM users WHERE username = 'alice'").startswith(
        "$2b$05$"
    )
    change = {"user": {"username": "alice", "backend": "yaml"}, "password": "a-new-password"}
    assert bridge.call("USER_AUTHENTICATION_PASSWORD_CHANGE", change) is None
    stored = plain_sql.value("SELECT password FROM users WHERE username = 'alice'")
    assert stored != HASH
    assert stored.startswith("$2")
    assert (
        bridge.call("USER_AUTHENTICATION_PASSWORD_VERIFY", {**verify, "password": "a-new-password"})
        is True
    )
    assert bridge.call("USER_DELETE", {"username": "alice"}) is None
    assert plain_sql.rows("SELECT username FROM users") == []
    assert plain_sql.rows("SELECT * FROM attributes WHERE type = 'user'") == []


def test_an_external_user_travels_without_a_password(
    bridge: BridgeClient, plain_sql: PlainSQL
) -> None:
    user = {"username": "ext", "extern": "https://idp.example.org", "attributes": {}}
    bridge.call("USER_CREATE", {"user": user, "user_backend": None})
    assert plain_sql.rows("SELECT password, extern FROM users") == [
        (None, "https://idp.example.org")
    ]
    found = bridge.call("USER_GET", {"username": "ext"})
    assert "password" not in found
    assert found["extern"] == "https://idp.example.org"


def test_clients_carry_jwks_as_the_core_default_store_and_never_backend(
    bridge: BridgeClient, plain_sql: PlainSQL
) -> None:
    assert bridge.call("CLIENT_GET", {"client_id": None}) is None
    assert bridge.call("CLIENT_GET", {"client_id": "nobody"}) is None
    portal = {
        "client_id": "portal",
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "scope": ["omejdn:read"],
        "attributes": {"tier": "gold"},
        "backend": "yaml",
    }
    bridge.call("CLIENT_CREATE", {"client": portal, "client_backend": "default"})
    assert plain_sql.rows("SELECT key FROM clients WHERE client_id = 'portal' ORDER BY 1") == [
        ("client_id",),
        ("grant_types",),
        ("scope",),
        ("token_endpoint_auth_method",),
    ]
    found = bridge.call("CLIENT_GET", {"client_id": "portal"})
    assert found == {
        "client_id": "portal",
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "scope": ["omejdn:read"],
        "attributes": {"tier": "gold"},
        "jwks": {"keys": []},
    }
    key = generate_key("ES256")
    public = KeySet([key]).to_jwks(private=False)
    # Admin API v1: the body names no backend; the jwks comes in the metadata.
    update = {**found, "jwks": public, "redirect_uris": ["https://portal/cb"]}
    bridge.call("CLIENT_UPDATE", {"client": update})
    assert plain_sql.rows("SELECT target_type, target, kid FROM keys WHERE target = 'portal'") == [
        ("clients", "portal", key.kid)
    ]
    assert plain_sql.rows(
        "SELECT value FROM clients WHERE client_id = 'portal' AND key = 'redirect_uris'"
    ) == [(["https://portal/cb"],)]
    found = bridge.call("CLIENT_GET", {"client_id": "portal"})
    assert [jwk["kid"] for jwk in found["jwks"]["keys"]] == [key.kid]
    assert "d" not in found["jwks"]["keys"][0]
    assert "backend" not in found
    listed = bridge.call("CLIENT_GET_ALL", {})
    assert [c["client_id"] for c in listed] == ["portal"]
    assert listed[0]["jwks"] == found["jwks"]
    bridge.call("CLIENT_DELETE", {"client_id": "portal"})
    assert plain_sql.rows("SELECT * FROM clients") == []
    assert plain_sql.rows("SELECT * FROM keys WHERE target_type = 'clients'") == []


def test_configuration_sections_as_mappings_and_as_lists(
    bridge: BridgeClient, plain_sql: PlainSQL
) -> None:
    assert bridge.call("CONFIGURATION_LOAD", {"section": "omejdn", "fallback": {}}) is None
    omejdn = {"issuer": "http://localhost:4567", "openid": True, "default_audience": []}
    bridge.call("CONFIGURATION_STORE", {"section": "omejdn", "data": omejdn})
    assert dict(plain_sql.rows("SELECT key, value FROM configuration_omejdn")) == omejdn
    assert bridge.call("CONFIGURATION_LOAD", {"section": "omejdn", "fallback": None}) == omejdn
    webfinger = [{"rel": "issuer"}, {"rel": "other"}]
    bridge.call("CONFIGURATION_STORE", {"section": "webfinger", "data": webfinger})
    assert plain_sql.rows("SELECT item FROM configuration_webfinger ORDER BY position") == [
        (item,) for item in webfinger
    ]
    assert bridge.call("CONFIGURATION_LOAD", {"section": "webfinger"}) == webfinger


def test_keys_are_jwk_sets_and_the_core_creates_the_first(
    bridge: BridgeClient, plain_sql: PlainSQL
) -> None:
    # Never invented by the service: an empty answer makes the core generate and store.
    target = {"target_type": "omejdn", "target": "omejdn"}
    assert bridge.call("KEYS_LOAD", {**target, "create": True}) is None
    assert plain_sql.rows("SELECT * FROM keys") == []
    key = generate_key("RS256")
    bridge.call("KEYS_STORE", {**target, "jwks": KeySet([key]).to_jwks(private=True)})
    assert plain_sql.rows("SELECT target_type, target, kid FROM keys") == [
        ("omejdn", "omejdn", key.kid)
    ]
    loaded = bridge.call("KEYS_LOAD", {**target, "create": True})
    assert [jwk["kid"] for jwk in loaded["keys"]] == [key.kid]
    assert "d" in loaded["keys"][0]
    assert loaded["keys"][0]["use"] == "sig"
    published = bridge.call("KEYS_LOAD_ALL", {"target_type": "omejdn"})
    assert [jwk["kid"] for jwk in published["keys"]] == [key.kid]
    assert "d" not in published["keys"][0]
    bridge.call("KEYS_STORE", {**target, "jwks": {"keys": []}})
    assert plain_sql.rows("SELECT * FROM keys") == []


def test_errors_carry_the_package_error_class_and_the_connection_goes_on(
    bridge: BridgeClient,
) -> None:
    user = {"username": "bob", "password": HASH}
    bridge.call("USER_CREATE", {"user": user, "user_backend": None})
    with pytest.raises(BridgeError) as raised:
        bridge.call("USER_CREATE", {"user": user, "user_backend": None})
    assert raised.value.code == -32000
    assert raised.value.error_class == "AlreadyExists"
    assert "bob" in raised.value.message
    with pytest.raises(BridgeError) as raised:
        bridge.call("CONFIGURATION_STORE", {"section": "Not A Section", "data": {}})
    assert raised.value.error_class == "InvalidSectionName"
    with pytest.raises(BridgeError) as raised:
        bridge.call("USER_FLY", {})
    assert raised.value.code == -32601
    bridge.send_line(b'{"jsonrpc": "2.0", "id": 5, "method": "USER_GET_ALL", "params": [1]}\n')
    with pytest.raises(BridgeError) as raised:
        bridge.reply(5)
    assert raised.value.code == -32602
    with pytest.raises(BridgeError) as raised:
        bridge.call("KEYS_LOAD", {"target_type": "omejdn"})
    assert raised.value.code == -32602
    assert "'target'" in raised.value.message
    # A malformed line is answered, and the connection still serves.
    bridge.send_line(b'{"jsonrpc": "2.0", "id": 7, "method": \n')
    with pytest.raises(BridgeError) as raised:
        bridge.reply()
    assert raised.value.code == -32700
    bridge.send_line(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(BridgeError) as raised:
        bridge.reply()
    assert raised.value.code == -32700
    bridge.send_line(b"[1, 2]\n")
    with pytest.raises(BridgeError) as raised:
        bridge.reply()
    assert raised.value.code == -32600
    assert bridge.call("USER_GET", {"username": "bob"})["username"] == "bob"


def test_a_client_of_another_protocol_is_refused_naming_both(service: Service) -> None:
    with pytest.raises(BridgeError) as raised:
        BridgeClient(service.path, protocol=2)
    assert raised.value.code == -32600
    assert raised.value.message == "plugin speaks protocol 2, this service speaks 1"
    with BridgeClient(service.path, hello=False) as client:
        with pytest.raises(BridgeError) as raised:
            client.call("USER_GET_ALL")
        assert "the first request must be hello" in raised.value.message
        with pytest.raises(EOFError):
            client.message()
    assert "plugin speaks protocol 2, this service speaks 1" in service.log()


def test_an_absurdly_long_request_is_refused_and_the_service_lives(service: Service) -> None:
    with BridgeClient(service.path) as client:
        padding = "x" * (16 * 1024 * 1024)
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "USER_GET", "p": padding})
        # Closed before all of it was read: also a refusal.
        with contextlib.suppress(BrokenPipeError):
            client.send_line(line.encode() + b"\n")
        message: dict[str, Any] = client.message()
        assert message["error"]["code"] == -32600
        assert "longer than 16777216 bytes" in message["error"]["message"]
    with BridgeClient(service.path) as client:
        assert client.call("USER_GET_ALL") == []
