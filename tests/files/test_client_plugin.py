"""Omejdn's default client plugin over files: ``metadata['jwks']`` is the key set of
target ``clients/<client_id>``, kept out of ``clients.yml`` (upstream ``DefaultClientDB``).

Checked by reading ``clients.yml`` and ``keys/clients/`` themselves. No database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg.entities import Client
from omejdn_pg.errors import AlreadyExists, InvalidValue, NotFound
from omejdn_pg.host import events
from omejdn_pg.host.files.plugins import FILE_BACKEND
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.service.host import Host
from tests.kits.certificates import make_chain

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def client_files(base: Path) -> list[str]:
    folder = base / "keys" / "clients"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def clients_yml(base: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load((base / "config" / "clients.yml").read_text())
    assert isinstance(data, list)
    return data


def jwks_of(*keys: Key, private: bool = False) -> dict[str, Any]:
    return KeySet(keys).to_jwks(private=private)


def by_kid(jwks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A JWK Set by kid: the file layout keeps no order but its file names'."""
    return {jwk["kid"]: jwk for jwk in jwks["keys"]}


def mtls_key(private: ec.EllipticCurvePrivateKey = EC_KEY) -> Key:
    return Key(private.public_key(), None, make_chain(private, 1))


def test_a_clients_jwks_is_kept_as_key_files_not_in_clients_yml(host: Host, tmp_path: Path) -> None:
    mtls = mtls_key()
    jwks = jwks_of(mtls, Key(RSA_KEY.public_key(), None, [], {"kid": "sig-1"}))
    client = Client(
        metadata={"client_id": "connector", "token_endpoint_auth_method": "private_key_jwt"},
        attributes={"omejdn": "read"},
    )
    client.metadata["jwks"] = jwks

    host.clients.add(client, FILE_BACKEND)

    assert client.backend == FILE_BACKEND
    assert client.metadata["jwks"] == jwks  # the caller's object is left as it was
    assert clients_yml(tmp_path) == [
        {
            "client_id": "connector",
            "token_endpoint_auth_method": "private_key_jwt",
            "attributes": {"omejdn": "read"},
        }
    ]
    thumbprint = mtls.kid
    assert client_files(tmp_path) == sorted(
        [
            "connector.sig-1.key",  # a public key with no certificate: its PEM
            "connector.sig-1.yml",
            f"connector.{thumbprint}.cert",
            f"connector.{thumbprint}.yml",
        ]
    )
    assert (
        (tmp_path / "keys" / "clients" / "connector.sig-1.key")
        .read_text()
        .startswith("-----BEGIN PUBLIC KEY")
    )
    found = host.clients.find("connector")
    assert found is not None
    assert by_kid(found.metadata["jwks"]) == by_kid(jwks)
    (listed,) = host.clients.all()
    assert by_kid(listed.metadata["jwks"]) == by_kid(jwks)
    assert host.clients.certificate(found) == mtls.certificates[0]


def test_get_answers_public_members_only(host: Host, tmp_path: Path) -> None:
    private = Key(EC_KEY.public_key(), EC_KEY)
    client = Client(metadata={"client_id": "odd", "jwks": jwks_of(private, private=True)})
    host.clients.add(client, FILE_BACKEND)

    found = host.clients.find("odd")

    assert found is not None
    assert "d" not in found.metadata["jwks"]["keys"][0]
    assert (
        (tmp_path / "keys" / "clients" / "odd.key").read_text().startswith("-----BEGIN PRIVATE KEY")
    )


def test_update_replaces_the_keys_and_a_client_without_jwks_has_none(
    host: Host, tmp_path: Path
) -> None:
    host.clients.add(Client(metadata={"client_id": "app", "jwks": jwks_of(mtls_key())}), "yaml")
    app = host.clients.find("app")
    assert app is not None

    other = ec.generate_private_key(ec.SECP384R1())
    app.metadata["jwks"] = jwks_of(mtls_key(other))
    host.clients.save(app)
    found = host.clients.find("app")
    assert found is not None
    assert found.metadata["jwks"]["keys"][0]["crv"] == "P-384"
    assert client_files(tmp_path) == ["app.cert", "app.yml"]

    del found.metadata["jwks"]
    found.metadata["client_name"] = "App"
    host.clients.save(found)
    again = host.clients.find("app")
    assert again is not None
    assert "jwks" not in again.metadata
    assert again.metadata["client_name"] == "App"
    assert client_files(tmp_path) == []


def test_delete_removes_the_keys_and_leaves_other_clients_alone(host: Host, tmp_path: Path) -> None:
    host.clients.add(Client(metadata={"client_id": "app", "jwks": jwks_of(mtls_key())}), "yaml")
    other = mtls_key(ec.generate_private_key(ec.SECP256R1()))
    host.clients.add(Client(metadata={"client_id": "app.v2", "jwks": jwks_of(other)}), "yaml")

    host.clients.delete("app")
    host.clients.delete("not-a-file-client")

    assert [c["client_id"] for c in clients_yml(tmp_path)] == ["app.v2"]
    assert client_files(tmp_path) == ["app.v2.cert", "app.v2.yml"]
    found = host.clients.find("app.v2")
    assert found is not None
    assert found.metadata["jwks"] == jwks_of(other)


def test_dotted_client_ids_each_get_only_their_own_keys(host: Host) -> None:
    """Upstream's glob ``clients/app.*`` would hand app.v2's certificate to app."""
    host.clients.add(Client(metadata={"client_id": "app"}), "yaml")
    host.clients.add(Client(metadata={"client_id": "app.v2", "jwks": jwks_of(mtls_key())}), "yaml")

    app = host.clients.find("app")
    assert app is not None
    assert "jwks" not in app.metadata
    assert host.clients.certificate(app) is None
    assert {c.client_id: "jwks" in c.metadata for c in host.clients.all()} == {
        "app": False,
        "app.v2": True,
    }


@pytest.mark.parametrize("bad", ["../evil", ".hidden", "a/b", "tab\tid"])
def test_client_ids_that_are_not_file_names_are_refused(
    host: Host, tmp_path: Path, bad: str
) -> None:
    with pytest.raises(InvalidValue, match="client_id"):
        host.clients.add(Client(metadata={"client_id": bad, "jwks": jwks_of(mtls_key())}), "yaml")
    assert not (tmp_path / "config" / "clients.yml").exists()
    assert not (tmp_path / "keys").exists()
    assert not (tmp_path / "evil.cert").exists()


def test_a_jwks_field_of_a_hand_written_clients_yml_is_answered_and_moved_on_update(
    host: Host, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    jwks = jwks_of(mtls_key())
    (tmp_path / "config" / "clients.yml").write_text(
        yaml.safe_dump([{"client_id": "hand", "jwks": jwks}])
    )

    found = host.clients.find("hand")
    assert found is not None
    assert found.metadata["jwks"] == jwks
    host.clients.save(found)

    assert clients_yml(tmp_path) == [{"client_id": "hand", "attributes": {}}]
    assert client_files(tmp_path) == ["hand.cert", "hand.yml"]
    again = host.clients.find("hand")
    assert again is not None
    assert again.metadata["jwks"] == jwks


def test_duplicates_and_unknown_clients_are_errors(host: Host) -> None:
    host.clients.add(Client(metadata={"client_id": "app"}), "yaml")
    with pytest.raises(AlreadyExists):
        host.clients.add(Client(metadata={"client_id": "app"}), "yaml")
    with pytest.raises(NotFound):
        host.clients.save(Client(metadata={"client_id": "ghost"}, backend=FILE_BACKEND))


def test_set_certificate_goes_through_the_jwks(host: Host, tmp_path: Path) -> None:
    """The certificate events of the older core are not registered by the file plugin."""
    assert not host.loader.handlers(events.CLIENT_AUTHENTICATION_CERTIFICATE_GET)
    host.clients.add(Client(metadata={"client_id": "mtls"}), "yaml")
    client = host.clients.find("mtls")
    assert client is not None
    certificate = make_chain(RSA_KEY, 1)[0]

    host.clients.set_certificate(client, certificate)

    found = host.clients.find("mtls")
    assert found is not None
    assert host.clients.certificate(found) == certificate
    assert client_files(tmp_path) == ["mtls.cert", "mtls.yml"]
    host.clients.set_certificate(found, None)
    assert client_files(tmp_path) == []
