"""Omejdn's default keys plugin over files: ``keys/<type>/<target>[.<kid>].key|.cert|.yml``.

The layout is checked by reading the files themselves (names, modes, PEM
headers, descriptor YAML), not only through the code under test; upstream's
own files are written here by hand, as its ``DefaultKeysDB`` writes them.
No database is needed.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue
from omejdn_pg.host import events
from omejdn_pg.host.files import writing
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.keys.jwk import jwk_thumbprint
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key, generate_key
from omejdn_pg.service.host import Host
from tests.kits.certificates import make_chain

RSA_1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_256 = ec.generate_private_key(ec.SECP256R1())
EC_384 = ec.generate_private_key(ec.SECP384R1())
EC_521 = ec.generate_private_key(ec.SECP521R1())


def keys_dir(base: Path, target_type: str = "omejdn") -> Path:
    return base / "keys" / target_type


def names(base: Path, target_type: str = "omejdn") -> list[str]:
    folder = keys_dir(base, target_type)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def store(loader: PluginLoader, target: str, jwks: Any, target_type: str = "omejdn") -> None:
    loader.fire(events.KEYS_STORE, target_type=target_type, target=target, jwks=jwks)


def load(loader: PluginLoader, target: str, target_type: str = "omejdn") -> Any:
    (answer,) = loader.fire(events.KEYS_LOAD, target_type=target_type, target=target, create=False)
    return answer


def forms(jwks: Any) -> dict[str, str]:
    """kid -> the JWK, canonical: two sets are the same data when these are equal."""
    keys = KeySet.from_jwks(jwks)
    return {key.kid: json.dumps(key.to_jwk(private=True), sort_keys=True) for key in keys}


def three_key_set() -> dict[str, Any]:
    """RSA with a chain and a custom kid, EC P-384 for PS-less ES384, EC P-521 with extras."""
    chain = make_chain(RSA_1, 2)
    return KeySet(
        [
            Key(
                RSA_1.public_key(),
                RSA_1,
                chain,
                {"kid": "signing-2024", "alg": "PS256", "use": "sig", "x-purpose": "tokens"},
            ),
            Key(EC_384.public_key(), EC_384, [], {"use": "sig", "key_ops": ["sign", "verify"]}),
            Key(
                EC_521.public_key(),
                EC_521,
                [],
                {"kid": "ec521", "x-meta": {"rotated": False, "n": [1, 2]}},
            ),
        ]
    ).to_jwks(private=True)


def test_a_multi_key_set_round_trips_with_its_descriptors(
    loader: PluginLoader, tmp_path: Path
) -> None:
    jwks = three_key_set()
    store(loader, "omejdn", jwks)

    answer = load(loader, "omejdn")
    ec384_kid = jwk_thumbprint(EC_384.public_key())
    assert forms(answer) == forms(jwks)
    assert all("d" in jwk for jwk in answer["keys"])  # private members included
    by_kid = {jwk["kid"]: jwk for jwk in answer["keys"]}
    assert by_kid["signing-2024"]["alg"] == "PS256"
    assert by_kid["signing-2024"]["x-purpose"] == "tokens"
    assert len(by_kid["signing-2024"]["x5c"]) == 2
    assert by_kid[ec384_kid]["alg"] == "ES384"
    assert by_kid["ec521"]["alg"] == "ES512"
    assert by_kid["ec521"]["x-meta"] == {"rotated": False, "n": [1, 2]}

    # On disk: one group per key, named by kid; .cert only for the chain.
    assert names(tmp_path) == sorted(
        [
            "omejdn.signing-2024.key",
            "omejdn.signing-2024.cert",
            "omejdn.signing-2024.yml",
            f"omejdn.{ec384_kid}.key",
            f"omejdn.{ec384_kid}.yml",
            "omejdn.ec521.key",
            "omejdn.ec521.yml",
        ]
    )
    folder = keys_dir(tmp_path)
    for key_file in folder.glob("*.key"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, key_file
        assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE((folder / "omejdn.signing-2024.cert").stat().st_mode) == 0o644
    assert (folder / "omejdn.signing-2024.cert").read_text().count("BEGIN CERTIFICATE") == 2
    descriptor = yaml.safe_load((folder / "omejdn.signing-2024.yml").read_text())
    # kid, use and alg first and always; x5c/x5t never (the .cert holds the chain).
    assert list(descriptor) == ["kid", "use", "alg", "x-purpose"]
    assert descriptor == {
        "kid": "signing-2024",
        "use": "sig",
        "alg": "PS256",
        "x-purpose": "tokens",
    }
    assert yaml.safe_load((folder / f"omejdn.{ec384_kid}.yml").read_text()) == {
        "kid": ec384_kid,
        "use": "sig",
        "alg": "ES384",
        "key_ops": ["sign", "verify"],
    }


def test_a_one_key_set_uses_the_target_name_and_a_store_replaces_every_file(
    loader: PluginLoader, tmp_path: Path
) -> None:
    single = KeySet([Key(RSA_1.public_key(), RSA_1, make_chain(RSA_1, 1))]).to_jwks()
    store(loader, "omejdn", single)
    assert names(tmp_path) == ["omejdn.cert", "omejdn.key", "omejdn.yml"]

    store(loader, "omejdn", three_key_set())
    assert len(names(tmp_path)) == 7
    assert not [n for n in names(tmp_path) if n.count(".") == 1]

    public_only = KeySet([Key(EC_256.public_key())]).to_jwks()
    store(loader, "omejdn", public_only)
    assert names(tmp_path) == ["omejdn.key", "omejdn.yml"]
    assert (keys_dir(tmp_path) / "omejdn.key").read_text().startswith("-----BEGIN PUBLIC KEY")
    assert forms(load(loader, "omejdn")) == forms(public_only)

    store(loader, "omejdn", {"keys": []})
    assert names(tmp_path) == []
    assert load(loader, "omejdn") is None


def test_a_key_with_a_certificate_and_no_private_key_is_only_its_certificate(
    loader: PluginLoader, tmp_path: Path
) -> None:
    jwks = KeySet([Key(EC_256.public_key(), None, make_chain(EC_256, 1))]).to_jwks()
    store(loader, "app", jwks, target_type="clients")
    assert names(tmp_path, "clients") == ["app.cert", "app.yml"]
    assert forms(load(loader, "app", "clients")) == forms(jwks)


def test_a_target_never_picks_up_the_keys_of_a_longer_target(
    loader: PluginLoader, tmp_path: Path
) -> None:
    """Upstream globs ``app.*``: client ``app`` would accept the key of client ``app.v2``."""
    app = KeySet([generate_key("RS256"), generate_key("ES256")]).to_jwks()
    app_v2 = KeySet([Key(EC_256.public_key(), None, make_chain(EC_256, 1))]).to_jwks()
    store(loader, "app", app, "clients")
    store(loader, "app.v2", app_v2, "clients")
    store(loader, "app.v2.beta", app, "clients")

    assert forms(load(loader, "app", "clients")) == forms(app)
    assert forms(load(loader, "app.v2", "clients")) == forms(app_v2)
    assert forms(load(loader, "app.v2.beta", "clients")) == forms(app)
    assert FileStore(tmp_path).key_targets("clients") == [
        ("clients", "app"),
        ("clients", "app.v2"),
        ("clients", "app.v2.beta"),
    ]
    (everything,) = loader.fire(events.KEYS_LOAD_ALL, target_type="clients")
    # Each kid once (app and app.v2.beta hold the same two keys), no private member.
    assert sorted(jwk["kid"] for jwk in everything["keys"]) == sorted([*forms(app), *forms(app_v2)])
    assert not [jwk for jwk in everything["keys"] if "d" in jwk]

    store(loader, "app", {"keys": []}, "clients")
    assert forms(load(loader, "app.v2", "clients")) == forms(app_v2)
    assert "app.v2.cert" in names(tmp_path, "clients")


def test_stores_that_would_make_the_files_ambiguous_are_refused(
    loader: PluginLoader, tmp_path: Path
) -> None:
    two = KeySet(
        [Key(RSA_1.public_key(), RSA_1, [], {"kid": "b"}), generate_key("ES256")]
    ).to_jwks()
    store(loader, "a", two)
    before = names(tmp_path)

    # Target a.b's only key would be written as a.b.* - the files of key b of target a.
    with pytest.raises(InvalidValue, match=r"keys omejdn/a\.b: .*hold keys of target 'a'"):
        store(loader, "a.b", KeySet([generate_key("ES256")]).to_jwks())
    # A one-key target whose name ends in '.<its kid>' would read back as a key of 'x'.
    with pytest.raises(InvalidValue, match="would read back as a key of target 'x'"):
        store(loader, "x.k1", KeySet([Key(RSA_2.public_key(), RSA_2, [], {"kid": "k1"})]).to_jwks())
    thumbprint = jwk_thumbprint(RSA_2.public_key())
    with pytest.raises(InvalidValue, match="would read back as a key of target 'x'"):
        store(loader, f"x.{thumbprint}", KeySet([Key(RSA_2.public_key(), RSA_2)]).to_jwks())

    assert names(tmp_path) == before
    assert forms(load(loader, "a")) == forms(two)


def test_a_kid_that_cannot_be_a_file_name_is_written_under_the_thumbprint(
    loader: PluginLoader, tmp_path: Path
) -> None:
    jwks = KeySet(
        [
            Key(RSA_1.public_key(), RSA_1, [], {"kid": "https://id.example/keys#1"}),
            Key(EC_256.public_key(), EC_256, [], {"kid": ".hidden"}),
        ]
    ).to_jwks()
    store(loader, "omejdn", jwks)

    assert names(tmp_path) == sorted(
        f"omejdn.{jwk_thumbprint(k.public_key())}.{ext}"
        for k in (RSA_1, EC_256)
        for ext in ("key", "yml")
    )
    assert forms(load(loader, "omejdn")) == forms(jwks)


def test_a_stored_private_key_is_kept_when_the_set_comes_back_without_it(
    loader: PluginLoader, tmp_path: Path
) -> None:
    jwks = three_key_set()
    store(loader, "omejdn", jwks)
    public = KeySet.from_jwks(jwks).to_jwks(private=False)

    store(loader, "omejdn", public)

    assert forms(load(loader, "omejdn")) == forms(jwks)


def upstream_files(folder: Path) -> dict[str, Key]:
    """A folder as upstream's DefaultKeysDB writes a two-key set: names with the
    thumbprint, .yml without the kid but with x5t in upstream's own (hex-based)
    encoding, PKCS#1/SEC1 PEMs, a chain joined by newlines."""
    folder.mkdir(parents=True)
    written = {}
    for private in (RSA_1, EC_256):
        kid = jwk_thumbprint(private.public_key())
        traditional = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        (folder / f"omejdn.{kid}.key").write_bytes(traditional)
        chain = make_chain(private, 2)
        (folder / f"omejdn.{kid}.cert").write_text(
            "\n".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        )
        der = chain[0].public_bytes(serialization.Encoding.DER)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(der)
        descriptor = {
            "use": "sig",
            "alg": "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256",
            "x5t#S256": base64.urlsafe_b64encode(digest.finalize().hex().encode()).decode(),
            "x5t": "c3RhbGUgZnJvbSBhIHJlbmV3ZWQgY2VydGlmaWNhdGU=",  # stale: ignored
        }
        (folder / f"omejdn.{kid}.yml").write_text(yaml.safe_dump(descriptor))
        written[kid] = Key(private.public_key(), private, chain)
    return written


def test_files_written_by_upstream_read_as_one_target(loader: PluginLoader, tmp_path: Path) -> None:
    written = upstream_files(keys_dir(tmp_path))

    answer = KeySet.from_jwks(load(loader, "omejdn"))

    assert sorted(key.kid for key in answer) == sorted(written)
    for key in answer:
        expected = written[key.kid]
        assert key.same_key(expected)
        assert key.is_private
        assert key.certificates == expected.certificates
        assert "x5t" not in key.params  # recomputed from the .cert
    assert FileStore(tmp_path).key_targets() == [("omejdn", "omejdn")]
    # Keys load in the order Ruby's sorted Dir.glob meets the files.
    assert [key.kid for key in answer] == sorted(written)


def test_the_layout_before_jwks_reads_as_one_key_per_target(tmp_path: Path) -> None:
    folder = keys_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "omejdn.key").write_bytes(
        RSA_1.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    chain = make_chain(RSA_1, 1)
    (folder / "omejdn.cert").write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
    (folder / "es256.key").write_bytes(
        EC_256.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (folder / "omejdn.pem").write_text("ignored: not an extension of the layout")
    clients = keys_dir(tmp_path, "clients")
    clients.mkdir(parents=True)
    (clients / "legacy-client.cert").write_bytes(
        make_chain(EC_384, 1)[0].public_bytes(serialization.Encoding.PEM)
    )

    files = FileStore(tmp_path)

    assert files.key_targets() == [
        ("clients", "legacy-client"),
        ("omejdn", "es256"),
        ("omejdn", "omejdn"),
    ]
    (signer,) = files.load_keys("omejdn", "omejdn")
    assert signer.is_private
    assert signer.certificates == chain
    assert signer.kid == jwk_thumbprint(RSA_1.public_key())
    (client_key,) = files.load_keys("clients", "legacy-client")
    assert not client_key.is_private
    assert client_key.alg == "ES384"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"t.key": "-----BEGIN PRIVATE KEY-----\nnope\n"}, r"t\.key"),
        ({"t.cert": "not a certificate"}, r"t\.cert"),
        ({"t.yml": "kid: x\n"}, r"t\.yml: neither t\.key nor t\.cert"),
        ({"t.yml": "[a list]\n"}, r"t\.yml: a key descriptor must be a mapping"),
        ({"t.yml": "x5c: [abc]\n"}, r"t\.yml: 'x5c' has no place"),
        ({"t.yml": "kid: [1]\n"}, r"t\.yml: 'kid' must be a non-empty string"),
        ({"t.yml": "when: 2024-01-01\n"}, r"t\.yml: .*not a JSON value"),
        ({"t.yml": "a: [1, 2\n"}, r"t\.yml: line"),
    ],
)
def test_a_broken_file_is_an_error_that_names_it(
    loader: PluginLoader, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    folder = keys_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "t.key").write_bytes(
        RSA_1.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    if "t.key" not in files and "t.cert" not in files and "kid: x" in files.get("t.yml", ""):
        (folder / "t.key").unlink()
    for name, content in files.items():
        (folder / name).write_text(content)

    with pytest.raises((InvalidKeyMaterial, InvalidValue), match=message):
        load(loader, "t")


@pytest.mark.parametrize("bad", ["../escape", ".hidden", "a/b", "nul\x00", "", "x" * 201])
def test_target_names_that_are_not_file_names_are_refused(
    loader: PluginLoader, tmp_path: Path, bad: str
) -> None:
    jwks = KeySet([generate_key("ES256")]).to_jwks()
    with pytest.raises(InvalidValue, match="target"):
        store(loader, bad, jwks)
    with pytest.raises(InvalidValue, match="target"):
        store(loader, "fine", jwks, target_type=bad)
    with pytest.raises(InvalidValue, match="target"):
        load(loader, bad)
    assert not (tmp_path / "escape.key").exists()
    assert names(tmp_path) == []


def test_a_store_of_the_older_core_fails_instead_of_deleting(loader: PluginLoader) -> None:
    store(loader, "omejdn", KeySet([generate_key("ES256")]).to_jwks())
    with pytest.raises(TypeError):
        loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", key_material=None)
    assert load(loader, "omejdn") is not None


def test_a_crash_in_the_middle_of_a_store_is_finished_by_the_next_read(
    loader: PluginLoader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = three_key_set()
    store(loader, "omejdn", old)
    new = KeySet(
        [Key(RSA_2.public_key(), RSA_2, make_chain(RSA_2, 1), {"kid": "signing-2025"})]
    ).to_jwks()
    original = os.replace
    calls: list[str] = []

    def crash_after_the_first_rename(src: Any, dst: Any) -> None:
        calls.append(str(dst))
        if len(calls) == 3:  # the journal went in, one file renamed: now the power fails
            raise KeyboardInterrupt
        original(src, dst)

    monkeypatch.setattr("omejdn_pg.host.files.writing.os.replace", crash_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        store(loader, "omejdn", new)
    monkeypatch.setattr("omejdn_pg.host.files.writing.os.replace", original)
    assert [n for n in names(tmp_path) if n.endswith(".journal")]

    # A fresh process (a new store) reads the new set whole; the journal is gone.
    assert forms(FileStore(tmp_path).load_keys("omejdn", "omejdn").to_jwks()) == forms(new)
    assert names(tmp_path) == ["omejdn.cert", "omejdn.key", "omejdn.yml"]


def test_a_failure_before_the_journal_leaves_the_old_set(
    loader: PluginLoader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = three_key_set()
    store(loader, "omejdn", old)
    before = names(tmp_path)

    def full_disk(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing, "fsync_directory", full_disk)
    with pytest.raises(OSError, match="No space"):
        store(loader, "omejdn", KeySet([generate_key("RS256")]).to_jwks())

    assert sorted(p.name for p in keys_dir(tmp_path).iterdir()) == before  # no temporary files
    assert forms(load(loader, "omejdn")) == forms(old)


def test_the_host_generates_a_key_on_create_and_the_backend_never_does(
    loader: PluginLoader, tmp_path: Path
) -> None:
    assert load(loader, "omejdn") is None
    assert names(tmp_path) == []

    host = Host(loader)
    signer = host.keys.signing_key()

    assert signer.alg == "RS256"
    assert names(tmp_path) == ["omejdn.key", "omejdn.yml"]
    assert host.keys.jwks("omejdn")["keys"][0]["kid"] == signer.kid
    assert "d" not in host.keys.jwks("omejdn")["keys"][0]
