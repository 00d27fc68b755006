"""Omejdn's file-based default plugins: what a read of users.yml and clients.yml costs.

Parsing users.yml hashes every plaintext password with bcrypt, and USER_GET
reaches the file plugin on every login (even of a PostgreSQL user), so the
parsed files are cached until they change. No database is needed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from omejdn_pg.entities import Client, User
from omejdn_pg.host import events
from omejdn_pg.host.files.plugins import FILE_BACKEND
from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.settings.backend import PasswordSettings

# bcrypt cost 4 keeps the hashing the tests count fast.
FAST_POLICY = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))
BOB_HASH = FAST_POLICY.hash("bob-secret")


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password the code under test hashes, in order (hashed at cost 4)."""
    calls: list[str] = []
    original = PasswordPolicy.hash

    def counting_hash(self: PasswordPolicy, password: str) -> str:
        calls.append(password)
        return original(FAST_POLICY, password)

    monkeypatch.setattr(PasswordPolicy, "hash", counting_hash)
    return calls


def write_users(base: Path, users: list[dict[str, object]]) -> Path:
    path = base / "config" / "users.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(users))
    return path


def get_user(loader: PluginLoader, username: str) -> User | None:
    (found,) = loader.fire(events.USER_GET, username=username)
    assert found is None or isinstance(found, User)
    return found


def get_client(loader: PluginLoader, client_id: str) -> Client | None:
    (found,) = loader.fire(events.CLIENT_GET, client_id=client_id)
    assert found is None or isinstance(found, Client)
    return found


def test_plaintext_passwords_are_hashed_once_not_on_every_read(
    tmp_path: Path, loader: PluginLoader, hashed: list[str]
) -> None:
    write_users(
        tmp_path,
        [
            {"username": "alice", "password": "alice-secret", "attributes": {}},
            {"username": "bob", "password": BOB_HASH, "attributes": {}},
        ],
    )

    first = get_user(loader, "alice")
    second = get_user(loader, "bob")
    third = get_user(loader, "alice")
    (everyone,) = loader.fire(events.USER_GET_ALL)
    assert first is not None
    assert second is not None
    assert third is not None
    (verified,) = loader.fire(
        events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=first, password="alice-secret"
    )
    (refused,) = loader.fire(
        events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=second, password="alice-secret"
    )

    assert hashed == ["alice-secret"]
    assert first.backend == FILE_BACKEND
    assert first.password == third.password
    assert first.password is not None
    assert first.password.startswith("$2b$04$")
    assert sorted(u.username for u in everyone) == ["alice", "bob"]
    assert verified is True
    assert refused is False


def test_an_edit_of_the_file_is_seen_on_the_next_read(
    tmp_path: Path, loader: PluginLoader, hashed: list[str]
) -> None:
    path = write_users(tmp_path, [{"username": "alice", "password": "alice-secret"}])
    before = get_user(loader, "alice")

    # Rewritten in place (same inode, as an editor may do), with new content.
    path.write_text(
        yaml.safe_dump(
            [
                {"username": "alice", "password": "new-alice-secret", "attributes": {"a": 1}},
                {"username": "carol", "password": BOB_HASH},
            ]
        )
    )
    after = get_user(loader, "alice")
    carol = get_user(loader, "carol")
    path.unlink()
    gone = get_user(loader, "alice")

    assert before is not None
    assert after is not None
    assert before.attributes == {}
    assert after.attributes == {"a": 1}
    assert FAST_POLICY.verify("new-alice-secret", after.password)[0]
    assert carol is not None
    assert hashed == ["alice-secret", "new-alice-secret"]
    assert gone is None


def test_writes_through_the_plugin_are_seen_on_the_next_read(
    tmp_path: Path, loader: PluginLoader, hashed: list[str]
) -> None:
    write_users(tmp_path, [{"username": "alice", "password": BOB_HASH}])
    assert get_user(loader, "alice") is not None

    loader.fire(events.USER_CREATE, user=User(username="dave"), user_backend=FILE_BACKEND)
    dave = get_user(loader, "dave")
    assert dave is not None
    loader.fire(events.USER_AUTHENTICATION_PASSWORD_CHANGE, user=dave, password="dave-secret")
    loader.fire(events.USER_DELETE, username="alice")

    stored = get_user(loader, "dave")
    assert stored is not None
    assert FAST_POLICY.verify("dave-secret", stored.password)[0]
    assert get_user(loader, "alice") is None
    assert hashed == ["dave-secret"]


def test_changing_a_returned_user_does_not_change_the_next_read(
    tmp_path: Path, loader: PluginLoader, hashed: list[str]
) -> None:
    write_users(
        tmp_path,
        [{"username": "alice", "password": BOB_HASH, "attributes": {"role": "user"}}],
    )
    first = get_user(loader, "alice")
    assert first is not None
    first.attributes["role"] = "admin"
    first.consent["scope"] = ["everything"]
    first.password = None
    (everyone,) = loader.fire(events.USER_GET_ALL)
    everyone[0].attributes["role"] = "root"
    everyone.clear()

    again = get_user(loader, "alice")
    (listed,) = loader.fire(events.USER_GET_ALL)

    assert again is not None
    assert again.attributes == {"role": "user"}
    assert again.consent == {}
    assert again.password == BOB_HASH
    assert [u.attributes for u in listed] == [{"role": "user"}]
    assert hashed == []


def test_clients_are_cached_and_handed_out_as_copies(tmp_path: Path, loader: PluginLoader) -> None:
    path = tmp_path / "config" / "clients.yml"
    path.parent.mkdir(parents=True)
    path.write_text(
        yaml.safe_dump(
            [
                {
                    "client_id": "app",
                    "token_endpoint_auth_method": "none",
                    "redirect_uris": ["https://app.example/cb"],
                }
            ]
        )
    )
    first = get_client(loader, "app")
    assert first is not None
    first.metadata["redirect_uris"].append("https://evil.example/cb")
    first.attributes["omejdn"] = "admin"

    again = get_client(loader, "app")
    path.write_text(path.read_text().replace("app.example", "new-app.example"))
    edited = get_client(loader, "app")

    assert again is not None
    assert edited is not None
    assert again.metadata["redirect_uris"] == ["https://app.example/cb"]
    assert again.attributes == {}
    assert edited.metadata["redirect_uris"] == ["https://new-app.example/cb"]
    assert get_client(loader, "nobody") is None
