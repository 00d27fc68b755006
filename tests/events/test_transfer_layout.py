"""Import and export of Omejdn's key layouts against PostgreSQL: several keys per
target, ``.yml`` descriptors, client JWKS, upstream's own files, the layout before JWKS.

The deployment directories are written here by hand, file by file, the way
upstream's ``DefaultKeysDB`` writes them (names by thumbprint, descriptors
without the kid, PKCS#1/SEC1 PEMs, chains joined by newlines) and the way an
operator writes them (custom kids and parameters). Stored rows are checked
with plain SQL; exported files are read back byte by byte where it matters.
"""

from __future__ import annotations

import base64
import datetime
import json
import shutil
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from omejdn_pg.entities import PrivateKey
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.keys.jwk import jwk_thumbprint
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.sealing import is_sealed
from omejdn_pg.service import transfer
from omejdn_pg.service.host import Host
from tests.kits.certificates import make_chain
from tests.kits.witness import PlainSQL

TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 / SEC1, as Ruby writes
PKCS8 = serialization.PrivateFormat.PKCS8
ALICE_HASH = bcrypt.hashpw(b"alice", bcrypt.gensalt(4, prefix=b"2a")).decode()


# --- writing a deployment by hand ----------------------------------------------------


def write_pem_key(path: Path, key: PrivateKey, fmt: serialization.PrivateFormat) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )


def write_public_key(path: Path, key: PrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_chain(path: Path, chain: list[x509.Certificate]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Upstream joins the PEMs with a newline.
    path.write_text("\n".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain))


def write_yml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def upstream_x5t_s256(cert: x509.Certificate) -> str:
    """``x5t#S256`` as upstream's adapt_to_cert writes it: base64url of the hex digest."""
    return base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256()).hex().encode()).decode()


def write_config(base: Path, name: str, data: Any) -> None:
    path = base / "config" / f"{name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def material() -> dict[str, Any]:
    """The keys of the deployments, made once (RSA generation is slow)."""
    rsa_sign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_fed = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    rsa_client = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "rsa": rsa_sign,
        "rsa_chain": make_chain(rsa_sign, 2),
        "ec256": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
        "ec521": ec.generate_private_key(ec.SECP521R1()),
        "federation": rsa_fed,
        "client_rsa": rsa_client,
        "mtls": ec.generate_private_key(ec.SECP256R1()),
        "test_client": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "dotted": ec.generate_private_key(ec.SECP384R1()),
        "orphan": ec.generate_private_key(ec.SECP256R1()),
        "inline": ec.generate_private_key(ec.SECP521R1()),
    }


def thumb(key: PrivateKey) -> str:
    return jwk_thumbprint(key.public_key())


def current_deployment(base: Path, m: dict[str, Any]) -> Path:
    """Omejdn's current layout, with upstream's files and an operator's side by side."""
    omejdn = base / "keys" / "omejdn"
    # Upstream's DefaultKeysDB: a multi-key target named by thumbprint, the
    # descriptor without the kid, x5t#S256 in its own encoding.
    kid = thumb(m["rsa"])
    write_pem_key(omejdn / f"omejdn.{kid}.key", m["rsa"], TRADITIONAL)
    write_chain(omejdn / f"omejdn.{kid}.cert", m["rsa_chain"])
    write_yml(
        omejdn / f"omejdn.{kid}.yml",
        {"use": "sig", "alg": "RS256", "x5t#S256": upstream_x5t_s256(m["rsa_chain"][0])},
    )
    kid = thumb(m["ec256"])
    write_pem_key(omejdn / f"omejdn.{kid}.key", m["ec256"], TRADITIONAL)
    write_yml(omejdn / f"omejdn.{kid}.yml", {"use": "sig", "alg": "ES256"})
    # An operator's keys: custom kids and parameters.
    write_pem_key(omejdn / "omejdn.ec384-2024.key", m["ec384"], PKCS8)
    write_yml(
        omejdn / "omejdn.ec384-2024.yml",
        {
            "kid": "ec384-2024",
            "use": "sig",
            "alg": "ES384",
            "x-rotation": {"since": "2024-05-01", "by": ["ops"]},
        },
    )
    write_pem_key(omejdn / "omejdn.p521.key", m["ec521"], TRADITIONAL)
    write_yml(omejdn / "omejdn.p521.yml", {"kid": "p521", "key_ops": ["verify"]})
    # A one-key target with a custom kid and a non-default algorithm.
    write_pem_key(omejdn / "federation.key", m["federation"], PKCS8)
    write_yml(omejdn / "federation.yml", {"kid": "fed-1", "alg": "PS256"})

    clients = base / "keys" / "clients"
    # A client with two keys: its mTLS certificate and a public JWT signing key.
    kid = thumb(m["mtls"])
    write_chain(clients / f"connector.{kid}.cert", make_chain(m["mtls"], 1))
    write_yml(clients / f"connector.{kid}.yml", {"use": "sig", "alg": "ES256"})
    write_public_key(clients / "connector.jwt-sig.key", m["client_rsa"])
    write_yml(clients / "connector.jwt-sig.yml", {"kid": "jwt-sig", "alg": "RS384"})
    # The layout of upstream's tests/test_resources clients: a certificate alone.
    write_chain(clients / "testClient.cert", make_chain(m["test_client"], 1))
    # A dotted client id: its files must not be read as a key of client 'app.example'.
    write_chain(clients / "app.example.com.cert", make_chain(m["dotted"], 1))
    write_yml(clients / "app.example.com.yml", {"use": "sig"})
    # Keys of a client that clients.yml does not hold: a key target of its own.
    write_chain(clients / "orphan.cert", make_chain(m["orphan"], 1))

    inline = KeySet([Key(m["inline"].public_key(), None, [], {"kid": "inline-1"})])
    write_config(base, "omejdn", {"issuer": "https://id.example", "openid": True})
    write_config(
        base,
        "users",
        [{"username": "alice", "password": ALICE_HASH, "attributes": {"x": 1}}],
    )
    write_config(
        base,
        "clients",
        [
            {
                "client_id": "connector",
                "token_endpoint_auth_method": "private_key_jwt",
                "attributes": {"omejdn": "read"},
            },
            {"client_id": "testClient", "token_endpoint_auth_method": "tls_client_auth"},
            {"client_id": "app.example.com", "redirect_uris": ["https://app.example.com/cb"]},
            {
                "client_id": "inline",
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": inline.to_jwks(private=False),
            },
            {"client_id": "keyless", "jwks_uri": "https://keyless.example/jwks.json"},
        ],
    )
    return base


# --- comparing ------------------------------------------------------------------------


def forms(keys: KeySet) -> dict[str, str]:
    return {key.kid: json.dumps(key.to_jwk(private=True), sort_keys=True) for key in keys}


def key_data(base: Path) -> dict[tuple[str, str], dict[str, str]]:
    files = FileStore(base)
    return {target: forms(files.load_keys(*target)) for target in files.key_targets()}


def section_data(base: Path) -> dict[str, Any]:
    files = FileStore(base)
    data = {name: files.read_section(name) for name in files.sections()}
    data["users"] = sorted(data.get("users") or [], key=lambda u: u["username"])
    data["clients"] = sorted(data.get("clients") or [], key=lambda c: c["client_id"])
    return data


def without_jwks(clients: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**{k: v for k, v in c.items() if k != "jwks"}, "attributes": c.get("attributes") or {}}
        for c in clients
    ]


def stored_kids(sql: PlainSQL, target_type: str, target: str) -> list[tuple[Any, ...]]:
    return sql.rows(
        "SELECT kid, type, position FROM keys WHERE target_type = %s AND target = %s "
        "ORDER BY position, type",
        (target_type, target),
    )


# --- the tests ------------------------------------------------------------------------


def test_current_layout_round_trips_through_postgresql(
    host: Host, plain_sql: PlainSQL, tmp_path: Path, material: dict[str, Any]
) -> None:
    source = current_deployment(tmp_path / "source", material)

    report = transfer.import_deployment(source, host)

    assert report.counts() == {
        "users": {"create": 1, "update": 0, "unchanged": 0},
        "clients": {"create": 5, "update": 0, "unchanged": 0},
        "config": {"create": 1, "update": 0, "unchanged": 0},
        "keys": {"create": 3, "update": 0, "unchanged": 0},  # omejdn, federation, orphan
    }
    # The multi-key target: four keys in file-name order, the first as the Ruby
    # plugin's sk/certs rows, the rest as rows it ignores.
    m = material
    expected = sorted([thumb(m["rsa"]), thumb(m["ec256"]), "ec384-2024", "p521"])
    rows = stored_kids(plain_sql, "omejdn", "omejdn")
    assert [kid for kid, _type, _pos in rows if _type in ("sk", "extra_sk")] == expected
    first = expected[0]
    assert {(t, p) for k, t, p in rows if k == first} <= {("sk", 0), ("certs", 0)}
    params = dict(
        plain_sql.rows(
            "SELECT kid, params FROM keys WHERE target_type = 'omejdn' AND target = 'omejdn' "
            "AND type IN ('sk', 'extra_sk')"
        )
    )
    assert params["ec384-2024"]["x-rotation"] == {"since": "2024-05-01", "by": ["ops"]}
    assert params["p521"]["key_ops"] == ["verify"]
    assert "x5t#S256" not in params[thumb(m["rsa"])]
    assert stored_kids(plain_sql, "omejdn", "federation") == [("fed-1", "sk", 0)]
    # Clients carry their keys as jwks: key rows, never a metadata row.
    assert plain_sql.value("SELECT count(*) FROM clients WHERE key = 'jwks'") == 0
    assert [k for k, _t, _p in stored_kids(plain_sql, "clients", "connector")] == sorted(
        [thumb(m["mtls"]), "jwt-sig"]
    )
    assert [k for k, _t, _p in stored_kids(plain_sql, "clients", "inline")] == ["inline-1"]
    assert stored_kids(plain_sql, "clients", "keyless") == []
    assert len(stored_kids(plain_sql, "clients", "app.example.com")) == 1
    assert len(stored_kids(plain_sql, "clients", "orphan")) == 1
    connector = host.clients.find("connector")
    assert connector is not None
    assert {jwk["kid"]: jwk["alg"] for jwk in connector.metadata["jwks"]["keys"]} == {
        thumb(m["mtls"]): "ES256",
        "jwt-sig": "RS384",
    }
    signer = host.keys.signing_key()
    assert signer.kid == first

    again = transfer.import_deployment(source, host)
    assert again.changed == []

    out = tmp_path / "exported"
    transfer.export_deployment(host, out)

    # Same data: every key (private members, descriptor, chain) and every section;
    # the inline jwks of clients.yml is now the key files of target clients/inline.
    exported_keys = key_data(out)
    source_keys = key_data(source)
    inline = KeySet.from_jwks(
        next(c for c in section_data(source)["clients"] if c["client_id"] == "inline")["jwks"]
    )
    assert exported_keys == {**source_keys, ("clients", "inline"): forms(inline)}
    exported, original = section_data(out), section_data(source)
    assert exported["clients"] == without_jwks(original["clients"])
    assert {k: v for k, v in exported.items() if k != "clients"} == {
        k: v for k, v in original.items() if k != "clients"
    }
    # The current layout: <target>.<kid>.* for a multi-key target, descriptors with kid.
    omejdn = out / "keys" / "omejdn"
    assert sorted(p.name for p in omejdn.glob("omejdn.*.yml")) == [
        f"omejdn.{kid}.yml" for kid in expected
    ]
    assert sorted(p.name for p in omejdn.glob("federation.*")) == [
        "federation.key",
        "federation.yml",
    ]
    rsa_descriptor = yaml.safe_load((omejdn / f"omejdn.{thumb(m['rsa'])}.yml").read_text())
    assert rsa_descriptor == {"kid": thumb(m["rsa"]), "use": "sig", "alg": "RS256"}
    assert yaml.safe_load((omejdn / "federation.yml").read_text()) == {
        "kid": "fed-1",
        "use": "sig",
        "alg": "PS256",
    }
    assert not [c for c in exported["clients"] if "jwks" in c]
    assert (out / "keys" / "clients" / "inline.key").read_text().startswith("-----BEGIN PUBLIC")

    # And back: the export imports as no change, and into an emptied database whole.
    assert transfer.import_deployment(out, host).changed == []
    plain_sql.execute("TRUNCATE users, clients, attributes, keys")
    assert len(transfer.import_deployment(out, host).changed) == 9
    second = tmp_path / "second"
    transfer.export_deployment(host, second)
    assert key_data(second) == exported_keys
    assert section_data(second) == exported


def test_the_layout_before_jwks_still_imports(
    host: Host, plain_sql: PlainSQL, tmp_path: Path, material: dict[str, Any]
) -> None:
    m = material
    base = tmp_path / "old"
    write_pem_key(base / "keys" / "omejdn" / "omejdn.key", m["rsa"], TRADITIONAL)
    write_chain(base / "keys" / "omejdn" / "omejdn.cert", m["rsa_chain"][:1])
    write_pem_key(base / "keys" / "omejdn" / "es256.key", m["ec256"], TRADITIONAL)
    client_cert = make_chain(m["test_client"], 1)
    write_chain(base / "keys" / "clients" / "testClient.cert", client_cert)
    write_config(
        base, "clients", [{"client_id": "testClient", "token_endpoint_auth_method": "none"}]
    )

    report = transfer.import_deployment(base, host)

    assert [(c.kind, c.name) for c in report.changed] == [
        ("clients", "testClient"),
        ("keys", "omejdn/es256"),
        ("keys", "omejdn/omejdn"),
    ]
    # One key per target: exactly the two rows the Ruby plugin reads and writes.
    assert stored_kids(plain_sql, "omejdn", "omejdn") == [
        (thumb(m["rsa"]), "certs", 0),
        (thumb(m["rsa"]), "sk", 0),
    ]
    assert stored_kids(plain_sql, "omejdn", "es256") == [(thumb(m["ec256"]), "sk", 0)]
    client = host.clients.find("testClient")
    assert client is not None
    assert host.clients.certificate(client) == client_cert[0]
    assert transfer.import_deployment(base, host).changed == []

    out = tmp_path / "out"
    transfer.export_deployment(host, out)
    assert sorted(str(p.relative_to(out / "keys")) for p in (out / "keys").rglob("*")) == [
        "clients",
        "clients/testClient.cert",
        "clients/testClient.yml",
        "omejdn",
        "omejdn/es256.key",
        "omejdn/es256.yml",
        "omejdn/omejdn.cert",
        "omejdn/omejdn.key",
        "omejdn/omejdn.yml",
    ]
    assert key_data(out) == key_data(base)
    assert transfer.import_deployment(out, host).changed == []


def test_only_changed_keys_are_written(
    host: Host, plain_sql: PlainSQL, tmp_path: Path, material: dict[str, Any]
) -> None:
    m = material
    source = current_deployment(tmp_path / "source", m)
    transfer.import_deployment(source, host)
    omejdn = source / "keys" / "omejdn"
    # A descriptor changed, a key removed from a set, a client's certificate renewed.
    write_yml(omejdn / "federation.yml", {"kid": "fed-1", "alg": "RS512"})
    for path in omejdn.glob("omejdn.p521.*"):
        path.unlink()
    write_chain(source / "keys" / "clients" / "testClient.cert", make_chain(m["test_client"], 1))

    report = transfer.import_deployment(source, host)

    assert [(c.kind, c.name, c.action.value) for c in report.changed] == [
        ("clients", "testClient", "update"),
        ("keys", "omejdn/federation", "update"),
        ("keys", "omejdn/omejdn", "update"),
    ]
    assert "p521" not in [k for k, _t, _p in stored_kids(plain_sql, "omejdn", "omejdn")]
    assert (
        plain_sql.value(
            "SELECT params->>'alg' FROM keys WHERE target = 'federation' AND type = 'sk'"
        )
        == "RS512"
    )
    assert transfer.import_deployment(source, host).changed == []


def test_a_stored_private_key_is_no_reason_to_write(
    host: Host, plain_sql: PlainSQL, tmp_path: Path, material: dict[str, Any]
) -> None:
    """A directory key without its private key cannot remove a stored one (KEYS_STORE
    keeps it), so it is no change; one with its private key where the stored key has
    none is."""
    m = material
    key = Key(m["rsa"].public_key(), m["rsa"], m["rsa_chain"][:1])
    host.keys.store("omejdn", "omejdn", [key])
    base = tmp_path / "public"
    write_chain(base / "keys" / "omejdn" / "omejdn.cert", m["rsa_chain"][:1])

    assert transfer.import_deployment(base, host).changed == []
    assert [t for _k, t, _p in stored_kids(plain_sql, "omejdn", "omejdn")] == ["certs", "sk"]

    host.keys.store("omejdn", "signer", [key.public()])
    write_pem_key(base / "keys" / "omejdn" / "signer.key", m["rsa"], PKCS8)
    write_chain(base / "keys" / "omejdn" / "signer.cert", m["rsa_chain"][:1])
    report = transfer.import_deployment(base, host)
    assert [(c.name, c.action.value) for c in report.changed] == [("omejdn/signer", "update")]
    assert [t for _k, t, _p in stored_kids(plain_sql, "omejdn", "signer")] == ["certs", "sk"]


def test_next_keys_export_as_public_keys_and_import_back_as_no_change(
    any_host: Host, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    """The re-import of an export, with private keys stored as they are and sealed: the
    next key's private key in the files is what PostgreSQL holds, so no change."""
    host = any_host
    signer = host.keys.signing_key()
    upcoming = host.keys.rotate("omejdn", "omejdn", "ES256")
    out = tmp_path / "out"

    report = transfer.export_deployment(host, out)

    assert any(upcoming.kid in note and "public" in note for note in report.notes)
    exported = {k.kid: k for k in FileStore(out).load_keys("omejdn", "omejdn")}
    assert exported[signer.kid].is_private
    assert not exported[upcoming.kid].is_private
    assert transfer.import_deployment(out, host).changed == []

    # With the next key's private key in the files too, still no change: PostgreSQL
    # holds it, KEYS_LOAD only does not hand it out before the key is active.
    stored = plain_sql.value(
        "SELECT value FROM keys WHERE kid = %s AND type LIKE '%%sk'", (upcoming.kid,)
    )
    assert is_sealed(stored) == bool(host.postgres and host.postgres.keyring)
    held = host.keys.stored("omejdn", "omejdn").by_kid(upcoming.kid)
    assert held is not None
    assert held.is_private
    (out / "keys" / "omejdn" / f"omejdn.{upcoming.kid}.key").write_text(held.key_pem() or "")
    assert transfer.import_deployment(out, host).changed == []
    assert (
        plain_sql.value("SELECT state FROM keys WHERE kid = %s LIMIT 1", (upcoming.kid,)) == "next"
    )
    # Nothing was rewritten: a sealed value is the same bytes as before.
    assert (
        plain_sql.value(
            "SELECT value FROM keys WHERE kid = %s AND type LIKE '%%sk'", (upcoming.kid,)
        )
        == stored
    )


def test_an_expired_signing_certificate_is_refused_naming_its_file_a_clients_is_kept(
    host: Host,
    plain_sql: PlainSQL,
    tmp_path: Path,
    material: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = material["mtls"]
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now - datetime.timedelta(days=35))
        .sign(key, hashes.SHA256())
    )
    base = tmp_path / "deployment"
    write_pem_key(base / "keys" / "omejdn" / "omejdn.key", key, TRADITIONAL)
    write_chain(base / "keys" / "omejdn" / "omejdn.cert", [expired])
    write_config(base, "users", [{"username": "u"}])

    with pytest.raises(InvalidKeyMaterial, match=r"keys/omejdn/omejdn\.key: .*expired"):
        transfer.import_deployment(base, host)
    assert plain_sql.value("SELECT count(*) FROM users") == 0

    # A client's key is its registration: imported, with a warning naming the client.
    shutil.rmtree(base / "keys" / "omejdn")
    write_chain(base / "keys" / "clients" / "old.cert", [expired])
    write_config(base, "clients", [{"client_id": "old"}])
    with caplog.at_level("WARNING", logger="omejdn_pg"):
        transfer.import_deployment(base, host)
    assert plain_sql.rows("SELECT target, type FROM keys WHERE target_type = 'clients'") == [
        ("old", "certs")
    ]
    assert any(
        "keys clients/old" in r.getMessage() and "expired" in r.getMessage() for r in caplog.records
    )


def test_dotted_names_are_their_own_targets_and_the_reading_is_noted(
    host: Host, plain_sql: PlainSQL, tmp_path: Path, material: dict[str, Any]
) -> None:
    base = tmp_path / "deployment"
    write_chain(base / "keys" / "clients" / "app.cert", make_chain(material["mtls"], 1))
    write_chain(base / "keys" / "clients" / "app.v2.cert", make_chain(material["dotted"], 1))

    report = transfer.import_deployment(base, host)

    assert len(stored_kids(plain_sql, "clients", "app")) == 1
    assert len(stored_kids(plain_sql, "clients", "app.v2")) == 1
    assert [n for n in report.notes if "app.v2" in n and "not as key 'v2'" in n]


def test_a_file_name_that_cannot_be_a_target_is_refused(host: Host, tmp_path: Path) -> None:
    base = tmp_path / "deployment"
    write_public_key(
        base / "keys" / "omejdn" / ("x" * 220 + ".key"), ec.generate_private_key(ec.SECP256R1())
    )
    with pytest.raises(InvalidValue, match="longer than 200"):
        transfer.import_deployment(base, host)


def test_the_examples_import_in_the_current_layout(
    examples: Path, host: Host, plain_sql: PlainSQL, tmp_path: Path
) -> None:
    """examples/generate.py: one multi-key omejdn target (RSA signs, EC published), the
    clients' certificates as their jwks."""
    transfer.import_deployment(examples, host)

    signer = host.keys.signing_key()
    assert signer.alg == "RS256"
    assert sorted(k["kty"] for k in host.keys.jwks("omejdn")["keys"]) == ["EC", "RSA"]
    for client_id in ("reporting-service", "partner-connector"):
        client = host.clients.find(client_id)
        assert client is not None
        assert host.clients.certificate(client) is not None
    assert plain_sql.value("SELECT count(*) FROM clients WHERE key = 'jwks'") == 0
    copy = Path(shutil.copytree(examples, tmp_path / "copy"))
    assert transfer.import_deployment(copy, host).changed == []
