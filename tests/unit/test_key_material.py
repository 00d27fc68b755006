"""KeyMaterial and its PEM helpers: no database, just what Omejdn's keys look like."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from omejdn_pg.entities import (
    KeyMaterial,
    PrivateKey,
    jwk_thumbprint,
    load_certificate_chain,
    load_key_pem,
)
from omejdn_pg.errors import InvalidKeyMaterial
from tests.kits.certificates import make_chain, pem, public_pem

# RFC 7638 §3.1: the example RSA key and its thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qvzq"
    "Y368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
    "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_E = "AQAB"
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- kid: RFC 7638 -----------------------------------------------------------------


def test_thumbprint_of_the_rfc_7638_example_key() -> None:
    public = rsa.RSAPublicNumbers(b64url_int(RFC7638_E), b64url_int(RFC7638_N)).public_key()

    assert jwk_thumbprint(public) == RFC7638_THUMBPRINT
    assert KeyMaterial(pk=public).kid == RFC7638_THUMBPRINT


@pytest.mark.parametrize(
    ("curve", "crv", "size"),
    [(ec.SECP256R1(), "P-256", 32), (ec.SECP384R1(), "P-384", 48), (ec.SECP521R1(), "P-521", 66)],
)
def test_ec_thumbprint_follows_rfc_7638(curve: ec.EllipticCurve, crv: str, size: int) -> None:
    key = ec.generate_private_key(curve)
    numbers = key.public_key().public_numbers()
    x, y = b64url(numbers.x.to_bytes(size, "big")), b64url(numbers.y.to_bytes(size, "big"))
    canonical = f'{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}'

    material = KeyMaterial(sk=key)

    assert material.kid == b64url(hashlib.sha256(canonical.encode()).digest())
    assert material.public_jwk() == {"kty": "EC", "crv": crv, "x": x, "y": y, "kid": material.kid}


def test_kid_is_derived_from_the_first_certificate(rsa_key: rsa.RSAPrivateKey) -> None:
    chain = make_chain(rsa_key, 2)

    certs_only = KeyMaterial(certs=chain)

    assert certs_only.kid == KeyMaterial(sk=rsa_key).kid == jwk_thumbprint(rsa_key.public_key())
    assert certs_only.sk is None


def test_a_given_kid_is_kept(rsa_key: rsa.RSAPrivateKey) -> None:
    assert KeyMaterial(sk=rsa_key, kid="mine").kid == "mine"


# --- reading PEM -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL],
    ids=["pkcs8", "traditional"],
)
@pytest.mark.parametrize("kind", ["rsa", "ec256", "ec384"])
def test_private_keys_in_every_format_omejdn_writes_are_read(
    kind: str, fmt: serialization.PrivateFormat, rsa_key: rsa.RSAPrivateKey
) -> None:
    key: PrivateKey = {
        "rsa": lambda: rsa_key,
        "ec256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "ec384": lambda: ec.generate_private_key(ec.SECP384R1()),
    }[kind]()
    text = pem(key, fmt)
    if fmt is serialization.PrivateFormat.TraditionalOpenSSL:
        # PKCS#1 is what the Ruby plugin writes for RSA, SEC1 what it writes for EC.
        assert ("BEGIN RSA PRIVATE KEY" if kind == "rsa" else "BEGIN EC PRIVATE KEY") in text

    material = KeyMaterial.from_pem(text)

    assert material == KeyMaterial(sk=key)
    assert material.key_pem() == pem(key, serialization.PrivateFormat.PKCS8)
    assert material.key_pem().startswith("-----BEGIN PRIVATE KEY-----")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "fmt",
    [serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1],
    ids=["spki", "pkcs1"],
)
def test_public_only_material_keeps_its_public_key(
    rsa_key: rsa.RSAPrivateKey, fmt: serialization.PublicFormat
) -> None:
    material = KeyMaterial.from_pem(public_pem(rsa_key, fmt))

    assert material.sk is None
    assert material.kid == KeyMaterial(sk=rsa_key).kid
    assert not material.is_empty
    # Written back as SubjectPublicKeyInfo, the form every reader understands.
    assert material.key_pem() == public_pem(
        rsa_key, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert material.certs_pem() == ""


def test_from_pem_accepts_bytes(ec_key: ec.EllipticCurvePrivateKey) -> None:
    text = pem(ec_key, serialization.PrivateFormat.PKCS8)
    assert KeyMaterial.from_pem(text.encode()) == KeyMaterial(sk=ec_key)


def test_nothing_is_empty_material() -> None:
    for material in (KeyMaterial(), KeyMaterial.from_pem(None, None), KeyMaterial.from_pem("", "")):
        assert material.is_empty
        assert material.kid is None
        assert material.key_pem() is None
        assert material.certs_pem() == ""


@pytest.mark.parametrize("separator", ["_", "\n", "", "\r\n", "_\n"])
def test_chains_are_read_whatever_joins_them(rsa_key: rsa.RSAPrivateKey, separator: str) -> None:
    chain = make_chain(rsa_key, 3)
    text = separator.join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)

    assert load_certificate_chain(text) == chain


def test_a_chain_is_written_joined_by_underscores(rsa_key: rsa.RSAPrivateKey) -> None:
    chain = make_chain(rsa_key, 3)
    material = KeyMaterial(sk=rsa_key, certs=chain)

    text = material.certs_pem()

    assert text.count("-----BEGIN CERTIFICATE-----") == 3
    assert text.count("_") == 2
    assert not text.endswith("_")
    assert text.split("_") == [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain]
    assert KeyMaterial.from_pem(material.key_pem(), text) == material


def test_public_jwk_of_a_chain_carries_x5c_and_x5t(rsa_key: rsa.RSAPrivateKey) -> None:
    chain = make_chain(rsa_key, 2)
    material = KeyMaterial(sk=rsa_key, certs=chain)

    jwk = material.public_jwk()

    numbers = rsa_key.public_key().public_numbers()
    assert jwk["kty"] == "RSA"
    assert b64url_int(jwk["n"]) == numbers.n
    assert b64url_int(jwk["e"]) == numbers.e
    assert jwk["kid"] == material.kid
    ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    # x5c is standard base64 (RFC 7517 §4.7), the thumbprints base64url.
    assert jwk["x5c"] == [base64.b64encode(der).decode() for der in ders]
    assert jwk["x5t"] == b64url(hashlib.sha1(ders[0]).digest())
    assert jwk["x5t#S256"] == b64url(hashlib.sha256(ders[0]).digest())
    assert "d" not in jwk
    assert "p" not in jwk


def test_public_jwk_without_a_chain_has_no_x5c(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = KeyMaterial(sk=ec_key).public_jwk()
    assert "x5c" not in jwk
    assert "x5t" not in jwk
    assert "d" not in jwk


def test_empty_material_has_no_jwk() -> None:
    with pytest.raises(InvalidKeyMaterial):
        KeyMaterial().public_jwk()


def test_equality_compares_key_and_chain(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    chain = make_chain(rsa_key, 2)
    assert KeyMaterial(sk=rsa_key, certs=chain) == KeyMaterial(sk=rsa_key, certs=list(chain))
    assert KeyMaterial(sk=rsa_key, certs=chain) != KeyMaterial(sk=rsa_key)
    assert KeyMaterial(sk=rsa_key) != KeyMaterial(sk=ec_key)
    assert KeyMaterial(sk=rsa_key) != KeyMaterial(pk=rsa_key.public_key())


def test_repr_shows_no_key(rsa_key: rsa.RSAPrivateKey) -> None:
    material = KeyMaterial(sk=rsa_key, certs=make_chain(rsa_key, 2))

    shown = repr(material)

    assert "BEGIN" not in shown
    assert str(rsa_key.private_numbers().d) not in shown
    assert material.kid is not None
    assert material.kid in shown


# --- refusing bad PEM ----------------------------------------------------------------


def _body_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("-----")]


def _assert_no_pem(error: BaseException, pem_text: str) -> None:
    message = str(error)
    assert "-----" not in message
    for line in _body_lines(pem_text):
        assert line not in message
        assert line[:16] not in message


def _corrupt(text: str) -> str:
    lines = text.splitlines()
    middle = len(lines) // 2
    lines[middle] = lines[middle][::-1]
    return "\n".join(lines) + "\n"


def bad_pems(rsa_key: rsa.RSAPrivateKey) -> dict[str, str]:
    good = pem(rsa_key, serialization.PrivateFormat.PKCS8)
    public = public_pem(rsa_key, serialization.PublicFormat.SubjectPublicKeyInfo)
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    return {
        "not pem": "this is not a key at all",
        "corrupt private": _corrupt(good),
        "truncated private": good[: len(good) // 2],
        # Reversing a line of a public key only yields another modulus; truncate it.
        "truncated public": public[: len(public) // 2] + "\n-----END PUBLIC KEY-----\n",
        "encrypted": encrypted,
        "certificate as key": make_chain(rsa_key, 1)[0]
        .public_bytes(serialization.Encoding.PEM)
        .decode(),
    }


def test_a_bad_key_pem_is_refused_without_quoting_it(rsa_key: rsa.RSAPrivateKey) -> None:
    for name, text in bad_pems(rsa_key).items():
        with pytest.raises(InvalidKeyMaterial) as caught:
            KeyMaterial.from_pem(text, what="keys token/signer")
        assert "keys token/signer" in str(caught.value), name
        _assert_no_pem(caught.value, text)


def test_a_bad_chain_is_refused_without_quoting_it(rsa_key: rsa.RSAPrivateKey) -> None:
    cert = make_chain(rsa_key, 1)[0].public_bytes(serialization.Encoding.PEM).decode()
    key_text = pem(rsa_key, serialization.PrivateFormat.PKCS8)
    lines = cert.splitlines()
    truncated = "\n".join([*lines[: len(lines) // 2], lines[-1]]) + "\n"
    for text in ("garbage", truncated, cert + "_" + key_text):
        with pytest.raises(InvalidKeyMaterial) as caught:
            KeyMaterial.from_pem(None, text, what="keys clients/c1")
        assert "keys clients/c1" in str(caught.value)
        _assert_no_pem(caught.value, text)


def test_a_key_that_does_not_match_its_certificate_is_refused(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    chain_pem = KeyMaterial(certs=make_chain(ec_key, 2)).certs_pem()
    for key_text in (
        pem(rsa_key, serialization.PrivateFormat.PKCS8),
        public_pem(rsa_key, serialization.PublicFormat.SubjectPublicKeyInfo),
    ):
        with pytest.raises(InvalidKeyMaterial, match="does not match"):
            KeyMaterial.from_pem(key_text, chain_pem)


def test_unsupported_key_types_are_refused() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    k1 = ec.generate_private_key(ec.SECP256K1())
    for key in (ed, k1):
        text = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(InvalidKeyMaterial, match="only RSA and EC"):
            load_key_pem(text)
        with pytest.raises(InvalidKeyMaterial, match="only RSA and EC"):
            load_key_pem(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )


def test_unicode_in_a_pem_is_refused_not_crashed(rsa_key: rsa.RSAPrivateKey) -> None:
    text = pem(rsa_key, serialization.PrivateFormat.PKCS8).replace("M", "é", 1)
    with pytest.raises(InvalidKeyMaterial):
        KeyMaterial.from_pem(text)
