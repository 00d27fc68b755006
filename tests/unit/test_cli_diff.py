"""The field-level diff of ``import -v``, without a database: what it shows and never shows."""

from __future__ import annotations

from omejdn_pg.cli import diff
from omejdn_pg.entities import Client, User
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.settings.backend import PasswordSettings

POLICY = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))


def texts(changes: list[diff.FieldChange]) -> list[str]:
    return [change.text() for change in changes]


def test_user_fields_and_passwords() -> None:
    stored = User(
        "ann",
        password=POLICY.hash("old-password"),
        attributes={"email": "a@x", "tier": 1, "gone": True},
        extern=None,
    )
    entry = {
        "username": "ann",
        "password": "new-password",
        "attributes": {"email": "b@x", "tier": 1.0, "added": [1]},
        "extern": "ldap",
    }
    shown = texts(diff.user_changes(stored, entry, POLICY))
    assert shown == [
        'extern: (absent) -> "ldap"',
        "attributes.added: (absent) -> [1]",
        'attributes.email: "a@x" -> "b@x"',
        "attributes.gone: true -> (absent)",
        "password: <changed>",
    ]
    assert not any("password" in line and "new" in line for line in shown)
    same_password = {**entry, "password": "old-password", "attributes": stored.attributes}
    assert texts(diff.user_changes(stored, same_password, POLICY)) == ['extern: (absent) -> "ldap"']
    by_hash = {**same_password, "password": stored.password, "extern": None}
    assert diff.user_changes(stored, by_hash, POLICY) == []
    removed = {**by_hash, "password": None}
    assert texts(diff.user_changes(stored, removed, POLICY)) == ["password: <changed>"]
    created = diff.user_changes(None, {"username": "new", "attributes": {"a": 1}}, POLICY)
    assert texts(created) == ["attributes.a: (absent) -> 1"]


def test_client_secrets_and_key_sets() -> None:
    stored = Client(
        {
            "client_id": "app",
            "client_secret": "old-secret",
            "client_name": "App",
            "jwks": {"keys": [{"kid": "k1", "kty": "EC", "x": "aa"}]},
        },
        attributes={"tier": True},
    )
    planned = Client(
        {
            "client_id": "app",
            "client_secret": "new-secret",
            "client_name": "App",
            "jwks": {"keys": [{"kid": "k2", "kty": "EC", "x": "bb"}]},
        },
        attributes={"tier": 1},
    )
    changes = diff.client_changes(stored, planned)
    assert texts(changes) == [
        "client_secret: <changed>",
        'jwks kids: ["k1"] -> ["k2"]',
        "attributes.tier: true -> 1",  # jsonb: true is not 1
    ]
    assert changes[0].as_dict() == {
        "field": "client_secret",
        "old": "<changed>",
        "new": "<changed>",
    }
    planned.metadata["jwks"] = {"keys": [{"kid": "k1", "kty": "EC", "x": "cc"}]}
    assert "jwks: <changed>" in texts(diff.client_changes(stored, planned))


def test_sections_and_keys() -> None:
    assert texts(diff.section_changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})) == [
        "b: 2 -> 3",
        "c: (absent) -> 4",
    ]
    assert diff.section_changes(["x"], ["x"]) == []
    assert texts(diff.section_changes(None, ["x"])) == ['items: (absent) -> ["x"]']
    long = diff.section_changes({"a": "x" * 200}, {"a": "y"})[0].text()
    assert long.endswith('-> "y"')
    assert len(long) < 100

    class Key:
        def __init__(self, kid: str) -> None:
            self.kid = kid

    same = diff.key_changes([Key("k1")], [Key("k1")], lambda a, b: True)
    assert texts(same) == ["keys: <changed>"]
    rotated = diff.key_changes([Key("k1")], [Key("k2")], lambda a, b: True)
    assert texts(rotated) == ['kid: ["k1"] -> ["k2"]', "keys: <changed>"]
    assert diff.key_changes([Key("k1")], [Key("k1")], lambda a, b: False) == []
