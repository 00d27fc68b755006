"""User and Client in Omejdn's YAML form (``from_dict``/``to_dict``); no database needed.

KeyMaterial is tested in test_key_material.py.
"""

from __future__ import annotations

from typing import Any

import bcrypt
import pytest

from omejdn_pg.entities import Client, User, clients_from_dicts, users_from_dicts
from omejdn_pg.errors import InvalidValue, PasswordRejected

OMEJDN_HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"

# Omejdn's own users.yml entry, as its documentation shows it.
OMEJDN_USER: dict[str, Any] = {
    "username": "admin",
    "password": OMEJDN_HASH,
    "attributes": [
        {"key": "omejdn", "value": "admin"},
        {"key": "name", "value": "Administrator"},
    ],
}


# --- User -----------------------------------------------------------------------


def test_user_from_omejdns_yaml_keeps_the_hash_and_maps_attributes() -> None:
    user = User.from_dict(OMEJDN_USER)
    assert user == User(
        username="admin",
        password=OMEJDN_HASH,
        attributes={"omejdn": "admin", "name": "Administrator"},
    )


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_user_from_dict_keeps_every_bcrypt_variant_as_is(prefix: str) -> None:
    stored = prefix + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()[4:]
    assert User.from_dict({"username": "u", "password": stored}).password == stored


def test_user_from_dict_hashes_a_plaintext_password() -> None:
    # Omejdn's string_to_pass_hash: bcrypt at its cost 12.
    user = User.from_dict({"username": "u", "password": "mypassword"})
    assert user.password is not None
    assert user.password.startswith("$2b$12$")
    assert bcrypt.checkpw(b"mypassword", user.password.encode())


def test_user_from_dict_hashes_plaintext_that_only_looks_like_a_hash() -> None:
    user = User.from_dict({"username": "u", "password": "$2b$hunter2"})
    assert user.password is not None
    assert user.password != "$2b$hunter2"
    assert bcrypt.checkpw(b"$2b$hunter2", user.password.encode())


def test_user_from_dict_refuses_a_password_bcrypt_would_truncate() -> None:
    with pytest.raises(PasswordRejected) as error:
        User.from_dict({"username": "u", "password": "x" * 73})
    assert "x" * 73 not in str(error.value)


@pytest.mark.parametrize("password", [None, ""])
def test_user_without_password(password: str | None) -> None:
    user = User.from_dict({"username": "u", "password": password})
    assert user.password is None
    assert "password" not in user.to_dict()


def test_user_attributes_as_a_mapping_stay_a_mapping() -> None:
    attributes = {"email": "a@b.c", "roles": ["x"], "nested": {"k": None}}
    assert User.from_dict({"username": "u", "attributes": attributes}).attributes == attributes


def test_user_without_attributes_has_an_empty_mapping() -> None:
    assert User.from_dict({"username": "u"}).attributes == {}
    assert User.from_dict({"username": "u", "attributes": None}).attributes == {}


def test_user_list_attributes_later_keys_win_and_missing_value_is_none() -> None:
    user = User.from_dict(
        {
            "username": "u",
            "attributes": [{"key": "a", "value": 1}, {"key": "a", "value": 2}, {"key": "b"}],
        }
    )
    assert user.attributes == {"a": 2, "b": None}


def test_user_extern_consent_and_backend() -> None:
    user = User.from_dict(
        {"username": "u", "extern": "https://idp", "consent": {"client": ["openid"]}},
        backend="postgres",
    )
    assert user.extern == "https://idp"
    assert user.consent == {"client": ["openid"]}
    assert user.backend == "postgres"
    assert User.from_dict({"username": "u", "backend": "yaml"}).backend == "yaml"
    assert User.from_dict({"username": "u", "backend": "yaml"}, backend="postgres").backend == (
        "postgres"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "a user needs a non-empty string 'username'"),
        ({"username": ""}, "a user needs a non-empty string 'username'"),
        ({"username": 7}, "a user needs a non-empty string 'username'"),
        ({"username": "u", "password": 123}, "user 'u': 'password' must be a string"),
        (
            {"username": "u", "extern": ["x"]},
            "user 'u': 'extern' must be an issuer (string) or true",
        ),
        ({"username": "u", "consent": ["openid"]}, "user 'u': 'consent' must be a mapping"),
        ({"username": "u", "attributes": "x"}, "user 'u': attributes must be a mapping or a list"),
        (
            {"username": "u", "attributes": [["k", "v"]]},
            "user 'u': attributes[0] must be a mapping",
        ),
        (
            {"username": "u", "attributes": [{"value": 1}]},
            "user 'u': attributes[0] must be a mapping",
        ),
        ({"username": "u", "attributes": {1: "x"}}, "attribute names must be strings"),
        (
            {"username": "u", "attributes": [{"key": 1, "value": 1}]},
            "attribute names must be strings",
        ),
    ],
)
def test_user_from_dict_refuses_malformed_input(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidValue) as error:
        User.from_dict(data)
    assert message in str(error.value)


def test_user_to_dict_is_omejdns_form_without_backend() -> None:
    user = User(
        username="u",
        password=OMEJDN_HASH,
        attributes={"a": 1},
        extern="idp",
        consent={"c": ["openid"]},
        backend="postgres",
    )
    assert user.to_dict() == {
        "username": "u",
        "password": OMEJDN_HASH,
        "attributes": {"a": 1},
        "extern": "idp",
        "consent": {"c": ["openid"]},
    }
    bare = User(username="u").to_dict()
    assert bare == {"username": "u", "attributes": {}}


def test_user_round_trips_through_its_dict_form() -> None:
    user = User(
        username="ü",
        password=OMEJDN_HASH,
        attributes={"a": [1, {"b": None}]},
        extern="idp",
        consent={"c": ["openid"]},
    )
    assert User.from_dict(user.to_dict()) == user
    assert User.from_dict(user.to_dict(), backend="postgres") == User(
        **{**user.__dict__, "backend": "postgres"}
    )


def test_user_to_dict_copies_its_mappings() -> None:
    user = User(username="u", attributes={"a": 1}, consent={"c": 1})
    data = user.to_dict()
    data["attributes"]["a"] = 2
    data["consent"]["c"] = 2
    assert user.attributes == {"a": 1}
    assert user.consent == {"c": 1}


def test_user_repr_never_shows_the_hash() -> None:
    shown = repr(User(username="u", password=OMEJDN_HASH))
    assert OMEJDN_HASH not in shown
    assert "<hash>" in shown
    assert "password=None" in repr(User(username="u"))


def test_users_from_dicts() -> None:
    users = users_from_dicts([OMEJDN_USER, {"username": "b"}], backend="yaml")
    assert [(u.username, u.backend) for u in users] == [("admin", "yaml"), ("b", "yaml")]


# --- Client ---------------------------------------------------------------------

# Omejdn's clients.yml entry, as its documentation shows it.
OMEJDN_CLIENT: dict[str, Any] = {
    "client_id": "testClient",
    "client_name": "omejdn admin ui",
    "grant_types": ["authorization_code"],
    "redirect_uris": ["http://localhost:4200"],
    "token_endpoint_auth_method": "none",
    "scope": ["openid", "omejdn:admin"],
    "attributes": [{"key": "tenant", "value": "t1"}],
}


def test_client_from_omejdns_yaml() -> None:
    client = Client.from_dict(OMEJDN_CLIENT)
    assert client.client_id == "testClient"
    assert client.metadata == {k: v for k, v in OMEJDN_CLIENT.items() if k != "attributes"}
    assert client.attributes == {"tenant": "t1"}
    assert client.backend is None


def test_client_backend_is_never_metadata() -> None:
    client = Client.from_dict({"client_id": "c", "backend": "yaml", "x": 1})
    assert client.metadata == {"client_id": "c", "x": 1}
    assert client.backend == "yaml"
    assert Client.from_dict({"client_id": "c", "backend": "yaml"}, backend="postgres").backend == (
        "postgres"
    )
    assert "backend" not in Client.from_dict({"client_id": "c"}, backend="postgres").to_dict()


def test_client_attributes_as_a_mapping() -> None:
    client = Client.from_dict({"client_id": "c", "attributes": {"a": {"b": [1]}}})
    assert client.attributes == {"a": {"b": [1]}}
    assert Client.from_dict({"client_id": "c"}).attributes == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "a client needs a non-empty string 'client_id'"),
        ({"client_id": ""}, "a client needs a non-empty string 'client_id'"),
        ({"client_id": 5}, "a client needs a non-empty string 'client_id'"),
        ({"client_id": "c", "attributes": 3}, "client 'c': attributes must be a mapping or a list"),
        (
            {"client_id": "c", "attributes": [{"v": 1}]},
            "client 'c': attributes[0] must be a mapping",
        ),
    ],
)
def test_client_from_dict_refuses_malformed_input(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidValue) as error:
        Client.from_dict(data)
    assert message in str(error.value)


def test_client_needs_a_client_id_however_it_is_made() -> None:
    with pytest.raises(InvalidValue, match="client_id"):
        Client(metadata={"client_name": "no id"})


def test_client_to_dict_is_metadata_plus_attributes_and_round_trips() -> None:
    client = Client.from_dict(OMEJDN_CLIENT)
    data = client.to_dict()
    assert data == {
        **{k: v for k, v in OMEJDN_CLIENT.items() if k != "attributes"},
        "attributes": {"tenant": "t1"},
    }
    assert Client.from_dict(data) == client
    data["attributes"]["tenant"] = "changed"
    assert client.attributes == {"tenant": "t1"}


def test_clients_from_dicts() -> None:
    clients = clients_from_dicts([OMEJDN_CLIENT, {"client_id": "b"}], backend="yaml")
    assert [(c.client_id, c.backend) for c in clients] == [("testClient", "yaml"), ("b", "yaml")]


def test_a_client_secret_never_shows_in_a_repr() -> None:
    client = Client(metadata={"client_id": "portal", "client_secret": "t0p-secret"})
    assert "t0p-secret" not in repr(client)
    assert "portal" in repr(client)
