"""Omejdn's Ruby plugin against ``omejdn-pg serve``: every storage event, as the core fires it.

A real Ruby runs the shipped ``omejdn_pg.rb`` (installed with ``omejdn-pg bridge
install``) inside a stand-in of Omejdn's ``PluginLoader`` that calls listeners
with the caller's binding; the service runs on this test's own database; what
arrives there is checked with plain SQL, and what comes back is checked in the
shape Omejdn's core reads (Users and Clients rebuilt with ``from_h``, a client's
key set with symbol keys, ``backend`` never among a client's metadata).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omejdn_pg.settings.connection import ConnectionSettings
from tests.cluster.bridge_client import Service, service_for
from tests.cluster.ruby.harness import RubyDriver, RubyError, install, omejdn_plugins
from tests.kits.commands import ok, omejdn_pg
from tests.kits.witness import PlainSQL

HASH = "$2b$04$97nGfbT5aTJG0osbDpneLe7ChbV0JL.KlPMKG.wK87UVnGMSmyoeu"  # "right-password"
RSA_PUBLIC = {
    "kty": "RSA",
    "e": "AQAB",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
        "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
        "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "use": "sig",
    "alg": "RS256",
}


@pytest.fixture
def service(database: ConnectionSettings, tmp_path: Path) -> Iterator[Service]:
    running = service_for(database, tmp_path, cache="{max_staleness: 0.5}").start()
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log()


@pytest.fixture
def omejdn(service: Service, tmp_path: Path) -> Iterator[RubyDriver]:
    plugins = install(tmp_path / "omejdn")
    with RubyDriver(plugins, omejdn_plugins(tmp_path / "omejdn.yml", service.path)) as driver:
        yield driver


def test_users_through_every_user_event(omejdn: RubyDriver, plain_sql: PlainSQL) -> None:
    alice = {"username": "alice", "password": HASH, "attributes": {"omejdn": "admin"}}
    # Admin API v2 stamps new users 'yaml'; an unset user_backend_default arrives as nil.
    assert omejdn.fire("USER_CREATE", user={**alice, "backend": "yaml"}, user_backend=None) == [
        None
    ]
    assert plain_sql.rows("SELECT username, password FROM users") == [("alice", HASH)]
    assert plain_sql.rows(
        "SELECT key, value FROM attributes WHERE type = 'user' AND identifier = 'alice'"
    ) == [("omejdn", "admin")]

    found = omejdn.first("USER_GET", username="alice")
    # Stamped with the name of the default store the plugin replaces, as the core's tests
    # expect; no consent given yet is no `consent` key, as User#to_h leaves a nil out.
    assert found == {"user": {**alice, "backend": "yaml"}}
    assert omejdn.first("USER_GET", username="nobody") is None
    (everyone,) = omejdn.fire("USER_GET_ALL")
    assert [u["user"]["username"] for u in everyone] == ["alice"]

    # Admin API v1 updates from the request body: backend 'yaml', or none at all.
    for backend in ("yaml", None):
        body = {**alice, "attributes": {"email": f"{backend}@example.org"}, "backend": backend}
        omejdn.fire("USER_UPDATE", user=body)
        assert plain_sql.rows(
            "SELECT value FROM attributes WHERE type = 'user' AND identifier = 'alice'"
        ) == [(f"{backend}@example.org",)]

    user = {**alice, "backend": "yaml"}
    assert omejdn.fire("USER_AUTHENTICATION_PASSWORD_VERIFY", user=user, password="wrong") == [
        False
    ]
    assert omejdn.fire(
        "USER_AUTHENTICATION_PASSWORD_VERIFY", user=user, password="right-password"
    ) == [True]
    omejdn.fire("USER_AUTHENTICATION_PASSWORD_CHANGE", user=user, password="a-new-password")
    stored = plain_sql.value("SELECT password FROM users WHERE username = 'alice'")
    assert stored.startswith("$2")
    assert stored != HASH
    assert omejdn.fire(
        "USER_AUTHENTICATION_PASSWORD_VERIFY", user=user, password="a-new-password"
    ) == [True]

    omejdn.fire("USER_DELETE", username="alice")
    assert plain_sql.rows("SELECT username FROM users") == []
    assert plain_sql.rows("SELECT key FROM attributes WHERE type = 'user'") == []


def test_attributes_come_back_in_the_order_given(omejdn: RubyDriver, plain_sql: PlainSQL) -> None:
    """As Omejdn's own stores keep them; its self-service API shows them in that order."""
    given = {"zeta": "1", "email": "a@example.org", "a": {"y": 1, "x": 2}}
    user = {"username": "alice", "password": HASH, "attributes": given, "backend": "yaml"}
    omejdn.fire("USER_CREATE", user=user, user_backend=None)
    assert plain_sql.rows(
        "SELECT key FROM attributes WHERE identifier = 'alice' ORDER BY ordinal"
    ) == [("zeta",), ("email",), ("a",)]
    found = omejdn.first("USER_GET", username="alice")
    assert list(found["user"]["attributes"]) == ["zeta", "email", "a"]
    reordered = {"email": "b@example.org", "zeta": "2"}
    omejdn.fire("USER_UPDATE", user={**user, "attributes": reordered})
    (everyone,) = omejdn.fire("USER_GET_ALL")
    assert [list(u["user"]["attributes"]) for u in everyone] == [["email", "zeta"]]


def test_users_of_another_backend_are_left_to_it(omejdn: RubyDriver, plain_sql: PlainSQL) -> None:
    ldap = {"username": "carol", "password": HASH, "attributes": {}, "backend": "ldap"}
    assert omejdn.fire("USER_CREATE", user=ldap, user_backend="ldap") == [None]
    assert plain_sql.rows("SELECT username FROM users") == []
    # nil, not false: the core asks the next backend (`compact.first || false`).
    assert omejdn.fire("USER_AUTHENTICATION_PASSWORD_VERIFY", user=ldap, password="x") == [None]
    omejdn.fire("USER_AUTHENTICATION_PASSWORD_CHANGE", user=ldap, password="a-new-password")
    omejdn.fire("USER_UPDATE", user=ldap)
    assert plain_sql.rows("SELECT username FROM users") == []


def test_clients_through_every_client_event(omejdn: RubyDriver, plain_sql: PlainSQL) -> None:
    client = {
        "client_id": "app",
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "scope": ["omejdn:write"],
        "attributes": {"omejdn": "write"},
        "jwks": {"keys": [RSA_PUBLIC]},
    }
    # Admin API v1 creates with 'default', and the key set may come as a JWT::JWK::Set object.
    omejdn.fire("CLIENT_CREATE", client={**client, "jwks_object": True}, client_backend="default")
    assert plain_sql.rows("SELECT DISTINCT client_id FROM clients") == [("app",)]
    assert plain_sql.value("SELECT count(*) FROM keys WHERE target = 'app'") == 1

    found = omejdn.first("CLIENT_GET", client_id="app")
    assert found["backend"] == "yaml"
    assert "backend" not in found["client"]
    assert found["jwks_keys"] == ["Symbol"]  # admin API v1 digs jwks with symbol keys
    (key,) = found["client"]["jwks"]["keys"]
    assert key["n"] == RSA_PUBLIC["n"]
    assert key["kid"]
    assert found["client"]["attributes"] == {"omejdn": "write"}
    assert found["client"]["grant_types"] == ["client_credentials"]

    # A token request without a client_id fires CLIENT_GET with nil.
    assert omejdn.fire("CLIENT_GET", client_id=None) == [None]
    assert omejdn.fire("CLIENT_GET", client_id="nobody") == [None]

    # Admin API v1 PUT: the fetched client, metadata merged, saved; keys removed.
    updated = {**found["client"], "client_name": "App", "jwks": {"keys": []}}
    omejdn.fire("CLIENT_UPDATE", client={**updated, "backend": found["backend"]})
    assert plain_sql.value("SELECT count(*) FROM keys WHERE target = 'app'") == 0
    again = omejdn.first("CLIENT_GET", client_id="app")
    assert again["client"]["client_name"] == "App"
    assert again["client"]["jwks"] == {"keys": []}

    (listed,) = omejdn.fire("CLIENT_GET_ALL")
    assert [c["client"]["client_id"] for c in listed] == ["app"]
    omejdn.fire("CLIENT_DELETE", client_id="app")
    assert plain_sql.rows("SELECT DISTINCT client_id FROM clients") == []


def test_configuration_sections_and_keys(omejdn: RubyDriver, plain_sql: PlainSQL) -> None:
    assert omejdn.fire("CONFIGURATION_LOAD", section="omejdn", fallback={}) == [None]
    omejdn.fire("CONFIGURATION_STORE", section="omejdn", data={"issuer": "https://a.example"})
    omejdn.fire("CONFIGURATION_STORE", section="webfinger", data=[])
    omejdn.fire("CONFIGURATION_STORE", section="scopes", data=["a", "b"])
    assert plain_sql.rows("SELECT key, value FROM configuration_omejdn") == [
        ("issuer", "https://a.example")
    ]
    assert plain_sql.rows("SELECT item FROM configuration_scopes ORDER BY position") == [
        ("a",),
        ("b",),
    ]
    assert omejdn.fire("CONFIGURATION_LOAD", section="omejdn", fallback={}) == [
        {"issuer": "https://a.example"}
    ]
    # Our own write is read back at once, even while the section is kept in Ruby.
    omejdn.fire("CONFIGURATION_STORE", section="omejdn", data={"issuer": "https://b.example"})
    assert omejdn.fire("CONFIGURATION_LOAD", section="omejdn", fallback=None) == [
        {"issuer": "https://b.example"}
    ]
    assert omejdn.fire("CONFIGURATION_LOAD", section="webfinger", fallback=None) == [[]]
    assert omejdn.fire("CONFIGURATION_LOAD", section="scopes", fallback=None) == [["a", "b"]]

    # No key yet: the core generates one when KEYS_LOAD (create: true) answers an empty set.
    (empty,) = omejdn.fire("KEYS_LOAD", target_type="omejdn", target="omejdn", create=True)
    assert not (empty or {}).get("keys")
    omejdn.fire("KEYS_STORE", target_type="omejdn", target="omejdn", jwks={"keys": [RSA_PUBLIC]})
    assert plain_sql.value("SELECT count(*) FROM keys WHERE target_type = 'omejdn'") == 1
    (loaded,) = omejdn.fire("KEYS_LOAD", target_type="omejdn", target="omejdn", create=True)
    assert [k["n"] for k in loaded["keys"]] == [RSA_PUBLIC["n"]]
    (published,) = omejdn.fire("KEYS_LOAD_ALL", target_type="omejdn")
    assert [k["n"] for k in published["keys"]] == [RSA_PUBLIC["n"]]
    omejdn.fire("KEYS_STORE", target_type="omejdn", target="omejdn", jwks={"keys": []})
    assert plain_sql.value("SELECT count(*) FROM keys WHERE target_type = 'omejdn'") == 0
    (gone,) = omejdn.fire("KEYS_LOAD_ALL", target_type="omejdn")
    assert gone["keys"] == []


def test_an_error_of_the_service_is_raised_with_its_class(
    omejdn: RubyDriver, plain_sql: PlainSQL
) -> None:
    bob = {"username": "bob", "password": HASH, "attributes": {}, "backend": "yaml"}
    omejdn.fire("USER_CREATE", user=bob, user_backend="yaml")
    with pytest.raises(RubyError) as raised:
        omejdn.fire("USER_CREATE", user=bob, user_backend="yaml")
    assert raised.value.error_class == "OmejdnPg::ServiceError"
    assert raised.value.remote_class == "AlreadyExists"
    assert "bob" in raised.value.message
    assert plain_sql.value("SELECT count(*) FROM users") == 1


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> float:
    """Seconds until ``check()`` held; fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_copies_kept_in_ruby_follow_every_other_writer(
    service: Service, tmp_path: Path, omejdn: RubyDriver
) -> None:
    """Sections and key sets kept in Ruby are dropped when anyone else changes them: another
    Omejdn process through the service, or `omejdn-pg keys rotate` + `keys maintain`
    straight on the database (what makes a running Omejdn sign with a rotated key)."""
    omejdn.fire("CONFIGURATION_STORE", section="omejdn", data={"issuer": "https://one"})
    omejdn.fire("KEYS_STORE", target_type="omejdn", target="omejdn", jwks={"keys": []})

    def section() -> Any:
        return omejdn.first("CONFIGURATION_LOAD", section="omejdn", fallback=None)

    for _ in range(5):  # kept from the moment the watch stream is up
        assert section() == {"issuer": "https://one"}
        time.sleep(0.1)
    other = RubyDriver(tmp_path / "omejdn" / "plugins", tmp_path / "omejdn.yml")
    with other:
        other.fire("CONFIGURATION_STORE", section="omejdn", data={"issuer": "https://two"})
    assert eventually(lambda: section() == {"issuer": "https://two"}) < 2.0

    def signing_kid() -> Any:
        keys = omejdn.first("KEYS_LOAD", target_type="omejdn", target="omejdn", create=True)
        return keys["keys"][0]["kid"] if keys and keys.get("keys") else None

    config = ("--config", str(service.config))
    ok(omejdn_pg("keys", "generate", "omejdn", "omejdn", *config))
    assert eventually(lambda: signing_kid() is not None) < 2.0
    first = signing_kid()
    ok(omejdn_pg("keys", "rotate", "omejdn", "omejdn", "--publish-for", "0s", *config))
    ok(omejdn_pg("keys", "maintain", *config))
    assert eventually(lambda: signing_kid() not in (None, first)) < 2.5


def test_a_forked_child_uses_connections_and_copies_of_its_own(omejdn: RubyDriver) -> None:
    """A pre-forking server forks after the plugin has connected: the child must not talk on
    the parent's socket (the answers would cross) nor serve copies no stream vouches for."""
    omejdn.fire("CONFIGURATION_STORE", section="omejdn", data={"issuer": "https://parent"})
    for _ in range(3):
        assert omejdn.first("CONFIGURATION_LOAD", section="omejdn", fallback=None)
        time.sleep(0.1)
    store = {"section": "omejdn", "data": {"issuer": "https://child"}}
    child = omejdn.command({"fire": "CONFIGURATION_STORE", "locals": store, "forked": True})
    assert child == {"values": [None], "seconds": child["seconds"]}
    load = {"section": "omejdn", "fallback": None}
    child = omejdn.command({"fire": "CONFIGURATION_LOAD", "locals": load, "forked": True})
    assert child["values"] == [{"issuer": "https://child"}]
    # The parent's connection still answers its own requests, and its copy was dropped.
    assert (
        eventually(
            lambda: omejdn.first("CONFIGURATION_LOAD", **load) == {"issuer": "https://child"}
        )
        < 2.0
    )


def test_without_the_services_read_cache_nothing_is_kept_in_ruby(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    """A service running with `cache: false` refuses `watch`: the plugin then asks the
    service every time, so another writer's change is seen at once."""
    service = service_for(database, tmp_path, cache="false").start()
    try:
        plugins = install(tmp_path / "omejdn")
        yml = omejdn_plugins(tmp_path / "omejdn.yml", service.path)
        with RubyDriver(plugins, yml) as one, RubyDriver(plugins, yml) as other:
            for n in range(5):
                other.fire("CONFIGURATION_STORE", section="omejdn", data={"n": n})
                assert one.first("CONFIGURATION_LOAD", section="omejdn", fallback=None) == {"n": n}
                time.sleep(0.2)
    finally:
        assert service.stop() == 0, service.log()
