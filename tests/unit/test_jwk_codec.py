"""Key and KeySet: JWK / JWK Set conversion, validation, keyUsage, lifecycle; no database."""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

import omejdn_pg.keys
from omejdn_pg import entities
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue
from omejdn_pg.keys import jwk as codec
from omejdn_pg.keys.algorithms import MAX_RSA_BITS, SUPPORTED_ALGS, PrivateKey
from omejdn_pg.keys.jwk import jwk_thumbprint
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.material import KeyMaterial
from omejdn_pg.keys.model import Key, generate_key
from omejdn_pg.keys.states import KEY_STATES, Lifecycle
from tests.kits.certificates import make_chain
from tests.kits.strategies import PROPERTY_SETTINGS, json_values, names

UTC = datetime.UTC

# RFC 7638 §3.1: the example RSA key, its descriptor and its thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2"
    "QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh"
    "6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
RESERVED = codec.KEY_MEMBERS | codec.CHAIN_MEMBERS | {"kid", "use", "alg"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_int(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def x5c(chain: list[x509.Certificate]) -> list[str]:
    return [base64.b64encode(der(c)).decode() for c in chain]


def message(exc: pytest.ExceptionInfo[BaseException]) -> str:
    return str(exc.value)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def p521() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


@pytest.fixture(scope="module")
def all_keys(
    rsa_key: rsa.RSAPrivateKey,
    p256: ec.EllipticCurvePrivateKey,
    p384: ec.EllipticCurvePrivateKey,
    p521: ec.EllipticCurvePrivateKey,
) -> dict[str, PrivateKey]:
    return {"RSA": rsa_key, "EC-P-256": p256, "EC-P-384": p384, "EC-P-521": p521}


def private_jwk(key: PrivateKey) -> dict[str, Any]:
    """The JWK of ``key`` with private members, written independently of the code under test."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        public = numbers.public_numbers
        return {
            "kty": "RSA",
            "n": b64url_int(public.n),
            "e": b64url_int(public.e),
            "d": b64url_int(numbers.d),
            "p": b64url_int(numbers.p),
            "q": b64url_int(numbers.q),
            "dp": b64url_int(numbers.dmp1),
            "dq": b64url_int(numbers.dmq1),
            "qi": b64url_int(numbers.iqmp),
        }
    crv, size = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}.get(
        key.curve.name, ("P-521", 66)
    )
    point = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url(point.x.to_bytes(size, "big")),
        "y": b64url(point.y.to_bytes(size, "big")),
        "d": b64url(key.private_numbers().private_value.to_bytes(size, "big")),
    }


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    return {k: v for k, v in private_jwk(key).items() if k not in PRIVATE_MEMBERS}


def make_cert(
    key: PrivateKey,
    *,
    usage: dict[str, bool] | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    """A self-signed certificate for ``key``, with a keyUsage of the given bits if any."""
    now = datetime.datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(days=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=30))
    )
    if usage is not None:
        bits = dict.fromkeys(
            (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        bits.update(usage)
        builder = builder.add_extension(x509.KeyUsage(**bits), critical=True)
    return builder.sign(key, hashes.SHA256())


# --- kid: RFC 7638 -----------------------------------------------------------------


def test_kid_is_the_rfc_7638_thumbprint_unless_given() -> None:
    without_kid = {k: v for k, v in RFC7638_JWK.items() if k != "kid"}

    assert Key.from_jwk(without_kid).kid == RFC7638_THUMBPRINT
    assert Key.from_jwk(RFC7638_JWK).kid == "2011-04-29"
    assert jwk_thumbprint(Key.from_jwk(RFC7638_JWK).public_key) == RFC7638_THUMBPRINT


def test_the_rfc_7638_example_round_trips() -> None:
    assert Key.from_jwk(RFC7638_JWK).to_jwk() == {**RFC7638_JWK, "use": "sig"}


# --- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("family", ["RSA", "EC-P-256", "EC-P-384", "EC-P-521"])
def test_a_private_jwk_round_trips_with_kid_use_and_alg_filled_in(
    family: str, all_keys: dict[str, PrivateKey]
) -> None:
    jwk = private_jwk(all_keys[family])

    key = Key.from_jwk(jwk)

    default_alg = {"RSA": "RS256", "EC-P-256": "ES256", "EC-P-384": "ES384"}.get(family, "ES512")
    assert key.family == family
    assert key.is_private
    assert key.kid == jwk_thumbprint(all_keys[family].public_key())
    assert key.to_jwk() == {**jwk, "kid": key.kid, "use": "sig", "alg": default_alg}
    # Members first, then the descriptor: the order a reader of the JSON expects.
    assert list(key.to_jwk())[-3:] == ["kid", "use", "alg"]


@pytest.mark.parametrize("family", ["RSA", "EC-P-256", "EC-P-384", "EC-P-521"])
def test_the_public_form_has_no_private_members(
    family: str, all_keys: dict[str, PrivateKey]
) -> None:
    key = Key.from_jwk(private_jwk(all_keys[family]))

    public = key.to_jwk(private=False)

    assert not set(PRIVATE_MEMBERS) & set(public)
    assert public == {**public_jwk(all_keys[family]), "kid": key.kid, "use": "sig", "alg": key.alg}
    assert key.public().to_jwk() == public
    assert not key.public().is_private
    assert key.public().same_key(key)
    assert Key.from_jwk(public).to_jwk() == public


@given(
    params=st.dictionaries(names.filter(lambda name: name not in RESERVED), json_values, max_size=6)
)
@PROPERTY_SETTINGS
def test_custom_parameters_are_kept_exactly(
    all_keys: dict[str, PrivateKey], params: dict[str, Any]
) -> None:
    for family, private in all_keys.items():
        jwk = {**private_jwk(private), "kid": f"k-{family}", **params}

        key = Key.from_jwk(jwk)
        written = key.to_jwk()

        assert key.params == {"kid": f"k-{family}", **params}
        assert written == {**jwk, "use": "sig", "alg": key.alg}
        # Byte for byte, as JSON: nothing was normalised along the way.
        for name, value in params.items():
            assert json.dumps(written[name], sort_keys=True) == json.dumps(value, sort_keys=True)
        public = key.to_jwk(private=False)
        assert Key.from_jwk(public).to_jwk() == public


def test_params_are_not_shared_with_the_input(p256: ec.EllipticCurvePrivateKey) -> None:
    custom = {"nested": [1, {"a": 2}]}
    jwk = {**private_jwk(p256), "x-custom": custom}

    key = Key.from_jwk(jwk)
    custom["nested"].append(3)
    written = key.to_jwk()
    written["x-custom"]["nested"].append(4)

    assert key.params["x-custom"] == {"nested": [1, {"a": 2}]}


def test_a_chain_adds_x5c_and_both_thumbprints(rsa_key: rsa.RSAPrivateKey) -> None:
    chain = make_chain(rsa_key, 3)
    jwk = {**private_jwk(rsa_key), "x5c": x5c(chain)}

    written = Key.from_jwk(jwk).to_jwk()

    # x5c is standard base64 (RFC 7517 §4.7), the thumbprints base64url.
    assert written["x5c"] == jwk["x5c"]
    assert written["x5t"] == b64url(hashlib.sha1(der(chain[0])).digest())
    assert written["x5t#S256"] == b64url(hashlib.sha256(der(chain[0])).digest())
    assert written == {
        **jwk,
        "kid": jwk_thumbprint(rsa_key.public_key()),
        "use": "sig",
        "alg": "RS256",
        "x5t": written["x5t"],
        "x5t#S256": written["x5t#S256"],
    }
    assert Key.from_jwk(written).to_jwk() == written


def test_a_jwk_with_only_x5c_takes_the_key_from_the_certificate(
    p384: ec.EllipticCurvePrivateKey,
) -> None:
    chain = make_chain(p384, 2)

    key = Key.from_jwk({"x5c": x5c(chain), "use": "sig"})

    assert key.public_key.public_numbers() == p384.public_key().public_numbers()
    assert not key.is_private
    assert key.alg == "ES384"
    assert key.certificates == chain
    assert Key.from_jwk({"kty": "EC", "x5c": x5c(chain)}).same_key(key)
    with pytest.raises(InvalidKeyMaterial, match="'kty' is 'RSA' but the first certificate"):
        Key.from_jwk({"kty": "RSA", "x5c": x5c(chain)})


def test_an_rsa_key_given_by_d_alone_is_completed(rsa_key: rsa.RSAPrivateKey) -> None:
    # RFC 7518 §6.3.2 lets a producer send 'd' without the CRT members.
    only_d = {**public_jwk(rsa_key), "d": private_jwk(rsa_key)["d"]}

    key = Key.from_jwk(only_d)

    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    numbers, original = key.private_key.private_numbers(), rsa_key.private_numbers()
    assert numbers.d == original.d
    assert {numbers.p, numbers.q} == {original.p, original.q}
    assert set(PRIVATE_MEMBERS) <= set(key.to_jwk())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    signature = key.private_key.sign(b"x", pss, hashes.SHA256())
    rsa_key.public_key().verify(signature, b"x", pss, hashes.SHA256())
    assert Key.from_jwk(key.to_jwk()).same_key(key)


def test_padding_and_leading_zeros_are_read_and_written_canonically(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    jwk = public_jwk(rsa_key)
    n = rsa_key.public_key().public_numbers().n
    sloppy = {**jwk, "n": base64.urlsafe_b64encode(b"\0" + n.to_bytes(256, "big")).decode()}

    assert sloppy["n"].endswith("=")
    assert Key.from_jwk(sloppy).to_jwk()["n"] == jwk["n"]


# --- validation: every error names the field ----------------------------------------


def _set_with_third(jwk: object) -> list[object]:
    return [RFC7638_JWK, {**RFC7638_JWK, "kid": "second"}, jwk]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"n": "not*base64"}, "JWK Set: keys[2]: 'n' is not base64url"),
        ({"n": "AAAAA"}, "'n' is not base64url"),
        ({"n": 12345}, "'n' must be a base64url string, got int"),
        ({"n": None}, "'n' must be a base64url string, got NoneType"),
        ({"e": ""}, "'e' is empty"),
        ({"e": "AAE"}, "'n' and 'e' are not a valid RSA public key"),  # e = 1
        ({"kty": "oct"}, "'kty' must be \"RSA\" or \"EC\", got 'oct'"),
        ({"kty": "OKP"}, "'kty' must be \"RSA\" or \"EC\", got 'OKP'"),
        ({"kty": None}, '\'kty\' must be "RSA" or "EC", got None'),
        ({"crv": "P-256"}, "'crv' is not a member of an RSA key"),
        ({"oth": []}, "multi-prime RSA keys ('oth') are not supported"),
        ({"alg": "ES256"}, "'alg' 'ES256' does not fit an RSA key with use 'sig'"),
        ({"alg": "HS256"}, "'alg' 'HS256' does not fit an RSA key"),
        ({"alg": 256}, "'alg' must be a string, got 256"),
        ({"use": "signing"}, "'use' must be \"sig\" or \"enc\", got 'signing'"),
        ({"use": "enc", "alg": "RS256"}, "'alg' 'RS256' does not fit an RSA key with use 'enc'"),
        ({"kid": ""}, "'kid' must be a non-empty string"),
        ({"kid": 7}, "'kid' must be a non-empty string, got 7"),
        ({"x5c": "MIIB"}, "'x5c' must be a non-empty list of base64 certificates"),
        ({"x5c": []}, "'x5c' must be a non-empty list"),
        ({"x5c": [17]}, "'x5c'[0] must be a string, got int"),
        ({"x5c": ["not base64!"]}, "'x5c'[0] is not base64"),
        ({"x5c": ["-_-_"]}, "'x5c'[0] is not base64"),
        ({"x5c": ["AAAA"]}, "'x5c'[0] is not a DER X.509 certificate"),
    ],
)
def test_a_bad_member_is_named_in_the_error(change: dict[str, Any], expected: str) -> None:
    jwk = {**RFC7638_JWK, "kid": "third", **change}

    with pytest.raises(InvalidKeyMaterial) as caught:
        KeySet.from_jwks({"keys": _set_with_third(jwk)})

    assert expected in message(caught)
    assert message(caught).startswith("JWK Set: keys[2]: ")


@pytest.mark.parametrize("member", ["kty", "n", "e"])
def test_a_missing_member_is_named(member: str) -> None:
    jwk = {k: v for k, v in RFC7638_JWK.items() if k != member}
    with pytest.raises(InvalidKeyMaterial, match=f"^JWK: '{member}' is missing$"):
        Key.from_jwk(jwk)


@pytest.mark.parametrize("value", [None, [], "a string", 17, ["kty", "RSA"]])
def test_a_jwk_that_is_not_an_object_is_a_clear_error(value: Any) -> None:
    with pytest.raises(InvalidKeyMaterial, match="a JWK must be a JSON object"):
        Key.from_jwk(value)
    with pytest.raises(InvalidKeyMaterial, match=r"^JWK Set: keys\[0\]: a JWK must be"):
        KeySet.from_jwks({"keys": [value]})


def test_member_names_must_be_strings() -> None:
    with pytest.raises(InvalidKeyMaterial, match="member names must be strings"):
        Key.from_jwk({**RFC7638_JWK, 1: "one"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"crv": "P-256K"}, "'crv' must be P-256, P-384 or P-521, got 'P-256K'"),
        ({"crv": "secp256k1"}, "'crv' must be P-256, P-384 or P-521"),
        ({"crv": 256}, "'crv' must be P-256, P-384 or P-521, got 256"),
        ({"n": "AQAB"}, "'n' is not a member of an EC key"),
        ({"x": b64url(b"\1" * 33)}, "'x' is longer than 32 bytes"),
        ({"y": b64url((2**256 - 1).to_bytes(32, "big"))}, "'y' is not a P-256 coordinate"),
        ({"alg": "ES384"}, "'alg' 'ES384' does not fit an EC-P-256 key with use 'sig'"),
        ({"alg": "RS256"}, "'alg' 'RS256' does not fit an EC-P-256 key"),
        ({"alg": "ECDH-ES", "use": "sig"}, "'alg' 'ECDH-ES' does not fit an EC-P-256 key"),
    ],
)
def test_ec_members_are_checked(
    p256: ec.EllipticCurvePrivateKey, change: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidKeyMaterial) as caught:
        Key.from_jwk({**private_jwk(p256), **change}, what="client c1")
    assert message(caught).startswith("client c1: ")
    assert expected in message(caught)


def test_the_point_must_be_on_the_curve(p256: ec.EllipticCurvePrivateKey) -> None:
    jwk = public_jwk(p256)
    y = int.from_bytes(base64.urlsafe_b64decode(jwk["y"] + "=="), "big")
    off_curve = {**jwk, "y": b64url((y ^ 1).to_bytes(32, "big"))}

    with pytest.raises(
        InvalidKeyMaterial, match=r"the point \('x', 'y'\) is not on the curve P-256"
    ):
        Key.from_jwk(off_curve)


def test_an_ec_d_must_match_the_point(
    p256: ec.EllipticCurvePrivateKey,
) -> None:
    other = private_jwk(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidKeyMaterial, match="'d' does not match 'x' and 'y'"):
        Key.from_jwk({**private_jwk(p256), "d": other["d"]})
    with pytest.raises(InvalidKeyMaterial, match="'d' is not a P-256 private key"):
        Key.from_jwk({**private_jwk(p256), "d": "AA"})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("d", "the private members do not form one RSA key with 'n' and 'e'"),
        ("p", "the private members do not form one RSA key"),
        ("dp", "the private members do not form one RSA key"),
        ("qi", "the private members do not form one RSA key"),
    ],
)
def test_rsa_private_members_must_fit_n_and_e(
    rsa_key: rsa.RSAPrivateKey, change: str, expected: str
) -> None:
    jwk = private_jwk(rsa_key)
    value = int.from_bytes(base64.urlsafe_b64decode(jwk[change] + "=="), "big")
    jwk[change] = b64url_int(value + 2)

    with pytest.raises(InvalidKeyMaterial, match=expected):
        Key.from_jwk(jwk)


def test_rsa_d_alone_must_fit_n_and_e(rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = public_jwk(rsa_key)
    wrong_d = b64url_int(rsa_key.private_numbers().d + 2)

    with pytest.raises(InvalidKeyMaterial, match="the private members do not form one RSA key"):
        Key.from_jwk({**jwk, "d": wrong_d})


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        (("p", "q"), r"'d' is missing \(private members \['p', 'q'\] need it\)"),
        (("d", "p"), "'p' and 'q' go together"),
        (("d", "dp", "dq", "qi"), "'dp', 'dq' and 'qi' need 'p' and 'q'"),
    ],
)
def test_incomplete_rsa_private_members_are_refused(
    rsa_key: rsa.RSAPrivateKey, members: tuple[str, ...], expected: str
) -> None:
    full = private_jwk(rsa_key)
    jwk = {**public_jwk(rsa_key), **{m: full[m] for m in members}}
    with pytest.raises(InvalidKeyMaterial, match=expected):
        Key.from_jwk(jwk)


def test_rsa_keys_over_the_limit_are_refused_before_any_work() -> None:
    n = (1 << (MAX_RSA_BITS + 8)) - 1  # not a real modulus: the size alone must refuse it
    jwk = {"kty": "RSA", "n": b64url_int(n), "e": "AQAB", "d": b64url_int(n - 2)}

    started = time.perf_counter()
    with pytest.raises(InvalidKeyMaterial) as caught:
        Key.from_jwk(jwk)

    assert time.perf_counter() - started < 1
    assert f"{MAX_RSA_BITS + 8} bits" in message(caught)
    assert f"the {MAX_RSA_BITS} bits allowed (MAX_RSA_BITS)" in message(caught)


def _oversized_private_key() -> rsa.RSAPrivateKey:
    """A structurally valid but mathematically unchecked RSA key above the limit
    (generating a real one would take minutes)."""
    p = (1 << 4200) + 1
    q = (1 << 4100) + 3
    n = p * q
    numbers = rsa.RSAPrivateNumbers(p, q, 3, 1, 1, 1, rsa.RSAPublicNumbers(65537, n))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def test_pem_keys_over_the_limit_are_refused_before_validation() -> None:
    big = _oversized_private_key()
    assert big.key_size > MAX_RSA_BITS
    private_pem = big.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = big.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    for text in (private_pem, public_pem):
        with pytest.raises(InvalidKeyMaterial, match=r"larger than the 8192 bits allowed"):
            Key.from_pem(text, None, what="keys omejdn/omejdn")
        with pytest.raises(InvalidKeyMaterial, match=r"^keys omejdn/omejdn: an RSA key of"):
            KeyMaterial.from_pem(text, what="keys omejdn/omejdn")


def test_the_private_key_must_match_the_first_certificate(
    rsa_key: rsa.RSAPrivateKey, p256: ec.EllipticCurvePrivateKey
) -> None:
    other_chain = make_chain(rsa.generate_private_key(public_exponent=65537, key_size=2048), 2)

    with pytest.raises(
        InvalidKeyMaterial, match=r"^JWK: the first certificate does not match the key$"
    ):
        Key.from_jwk({**private_jwk(rsa_key), "x5c": x5c(other_chain)})
    with pytest.raises(InvalidKeyMaterial, match="the first certificate does not match the key"):
        Key.from_jwk({**public_jwk(p256), "x5c": x5c(other_chain)})
    # The chain's order matters: the key's own certificate comes first.
    own = make_chain(rsa_key, 2)
    with pytest.raises(InvalidKeyMaterial, match="the first certificate does not match the key"):
        Key.from_jwk({**private_jwk(rsa_key), "x5c": x5c(own[::-1])})


def test_an_unsupported_certificate_key_is_refused() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed")])
    now = datetime.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ed.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ed, None)
    )
    with pytest.raises(InvalidKeyMaterial, match="only RSA and EC"):
        Key.from_jwk({"x5c": x5c([cert])})


# --- x5t / x5t#S256 ---------------------------------------------------------------------


def test_given_thumbprints_are_checked_and_not_kept(rsa_key: rsa.RSAPrivateKey) -> None:
    chain = make_chain(rsa_key, 2)
    sha1 = hashlib.sha1(der(chain[0])).digest()
    sha256 = hashlib.sha256(der(chain[0])).digest()
    jwk = {
        **public_jwk(rsa_key),
        "x5c": x5c(chain),
        "x5t": b64url(sha1),
        "x5t#S256": b64url(sha256),
    }

    key = Key.from_jwk(jwk)

    assert "x5t" not in key.params
    assert "x5t#S256" not in key.params
    assert key.to_jwk()["x5t"] == jwk["x5t"]
    assert key.to_jwk()["x5t#S256"] == jwk["x5t#S256"]


@pytest.mark.parametrize("member", ["x5t", "x5t#S256"])
def test_a_wrong_thumbprint_is_refused(rsa_key: rsa.RSAPrivateKey, member: str) -> None:
    chain = make_chain(rsa_key, 2)
    wrong = b64url(hashlib.sha256(der(chain[1])).digest())

    with pytest.raises(
        InvalidKeyMaterial, match=f"'{member}' does not match the first certificate of 'x5c'"
    ):
        Key.from_jwk({**public_jwk(rsa_key), "x5c": x5c(chain), member: wrong})
    with pytest.raises(InvalidKeyMaterial, match=f"'{member}' must be a string"):
        Key.from_jwk({**public_jwk(rsa_key), "x5c": x5c(chain), member: 1})


def test_padded_and_upstream_legacy_thumbprints_are_recognised(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    chain = make_chain(rsa_key, 1)
    sha1 = hashlib.sha1(der(chain[0]))
    sha256 = hashlib.sha256(der(chain[0]))
    # Upstream's adapt_to_cert: Base64.urlsafe_encode64(OpenSSL::Digest.new(...).to_s),
    # i.e. base64url of the hex digest, padded.
    legacy = {
        "x5t": base64.urlsafe_b64encode(sha1.hexdigest().encode()).decode(),
        "x5t#S256": base64.urlsafe_b64encode(sha256.hexdigest().encode()).decode(),
    }
    padded = {
        "x5t": base64.urlsafe_b64encode(sha1.digest()).decode(),
        "x5t#S256": base64.urlsafe_b64encode(sha256.digest()).decode(),
    }
    for given_thumbprints in (legacy, padded):
        key = Key.from_jwk({**public_jwk(rsa_key), "x5c": x5c(chain), **given_thumbprints})
        assert key.to_jwk()["x5t"] == b64url(sha1.digest())
        assert key.to_jwk()["x5t#S256"] == b64url(sha256.digest())


def test_a_thumbprint_without_a_chain_is_a_parameter(p256: ec.EllipticCurvePrivateKey) -> None:
    jwk = {**public_jwk(p256), "x5u": "https://example.org/c.pem", "x5t#S256": "abc"}

    key = Key.from_jwk(jwk)

    assert key.params == {"x5u": "https://example.org/c.pem", "x5t#S256": "abc"}
    assert key.to_jwk() == {**jwk, "kid": key.kid, "use": "sig", "alg": "ES256"}


# --- keyUsage -> use (RFC 5280 §4.2.1.3) ------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "default_use", "permitted"),
    [
        (None, "sig", {"sig", "enc"}),
        ({"digital_signature": True}, "sig", {"sig"}),
        ({"content_commitment": True}, "sig", {"sig"}),
        ({"digital_signature": True, "key_cert_sign": True, "crl_sign": True}, "sig", {"sig"}),
        ({"key_encipherment": True}, "enc", {"enc"}),
        ({"data_encipherment": True}, "enc", {"enc"}),
        ({"key_agreement": True}, "enc", {"enc"}),
        ({"key_agreement": True, "encipher_only": True}, "enc", {"enc"}),
        ({"key_encipherment": True, "key_cert_sign": True}, "enc", {"enc"}),
        ({"digital_signature": True, "key_encipherment": True}, "sig", {"sig", "enc"}),
    ],
    ids=lambda value: repr(value),
)
def test_key_usage_decides_the_use(
    rsa_key: rsa.RSAPrivateKey,
    usage: dict[str, bool] | None,
    default_use: str,
    permitted: set[str],
) -> None:
    chain = x5c([make_cert(rsa_key, usage=usage)])
    base = {**private_jwk(rsa_key), "x5c": chain}

    key = Key.from_jwk(base)

    assert key.use == default_use
    assert key.alg == ("RS256" if default_use == "sig" else "RSA-OAEP-256")
    for use in ("sig", "enc"):
        if use in permitted:
            assert Key.from_jwk({**base, "use": use}).use == use
        else:
            with pytest.raises(
                InvalidKeyMaterial,
                match=f"'use' '{use}' is not permitted by the first certificate's keyUsage",
            ):
                Key.from_jwk({**base, "use": use})


@pytest.mark.parametrize(
    "usage",
    [
        {"key_cert_sign": True},
        {"crl_sign": True},
        {"key_cert_sign": True, "crl_sign": True},
    ],
)
def test_a_certificate_permitting_neither_use_is_refused(
    p256: ec.EllipticCurvePrivateKey, usage: dict[str, bool]
) -> None:
    # keyCertSign / cRLSign sign certificates and CRLs, never a JWS (upstream counts them as sig).
    with pytest.raises(InvalidKeyMaterial, match="keyUsage permits neither signing nor encryption"):
        Key.from_jwk({**public_jwk(p256), "x5c": x5c([make_cert(p256, usage=usage)])})


def test_an_encryption_alg_implies_enc(rsa_key: rsa.RSAPrivateKey) -> None:
    key = Key.from_jwk({**public_jwk(rsa_key), "alg": "RSA-OAEP"})
    assert (key.use, key.alg) == ("enc", "RSA-OAEP")

    enc_only = x5c([make_cert(rsa_key, usage={"key_encipherment": True})])
    with pytest.raises(InvalidKeyMaterial, match="'use' 'sig' is not permitted"):
        Key.from_jwk({**public_jwk(rsa_key), "alg": "PS256", "x5c": enc_only})


def test_enc_keys_default_to_an_encryption_alg(p521: ec.EllipticCurvePrivateKey) -> None:
    key = Key.from_jwk({**public_jwk(p521), "use": "enc"})
    assert key.alg == "ECDH-ES"
    assert key.to_jwk()["alg"] == "ECDH-ES"


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_every_supported_alg_fits_its_family(alg: str, all_keys: dict[str, PrivateKey]) -> None:
    family = {"ES256": "EC-P-256", "ES384": "EC-P-384", "ES512": "EC-P-521"}.get(alg, "RSA")
    key = Key.from_jwk({**public_jwk(all_keys[family]), "alg": alg})
    assert (key.alg, key.use, key.family) == (alg, "sig", family)
    for other, private in all_keys.items():
        if other != family:
            with pytest.raises(InvalidKeyMaterial, match=f"'alg' '{alg}' does not fit"):
                Key.from_jwk({**public_jwk(private), "alg": alg})


# --- certificate validity ----------------------------------------------------------------


def test_certificate_problem_reports_the_validity_period(rsa_key: rsa.RSAPrivateKey) -> None:
    start = datetime.datetime(2004, 1, 2, 3, 4, 5, tzinfo=UTC)
    end = datetime.datetime(2005, 1, 2, 3, 4, 5, tzinfo=UTC)
    cert = make_cert(rsa_key, not_before=start, not_after=end)

    # An expired certificate is still read: the operator must be able to see and rotate it.
    key = Key.from_jwk({**public_jwk(rsa_key), "x5c": x5c([cert])})

    assert key.certificate_problem() == "certificate expired on 2005-01-02T03:04:05Z"
    assert key.certificate_problem(start - datetime.timedelta(seconds=1)) == (
        "certificate not valid before 2004-01-02T03:04:05Z"
    )
    assert key.certificate_problem(start) is None
    assert key.certificate_problem(end) is None
    # Another zone, the same instant.
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    assert key.certificate_problem(end.astimezone(plus_two)) is None
    assert key.certificate_problem(end.astimezone(plus_two) + datetime.timedelta(seconds=1))
    assert Key.from_jwk(public_jwk(rsa_key)).certificate_problem() is None
    with pytest.raises(InvalidValue, match="timezone-aware"):
        key.certificate_problem(datetime.datetime(2024, 6, 1))


# --- KeySet --------------------------------------------------------------------------------


def test_a_key_set_round_trips(
    rsa_key: rsa.RSAPrivateKey, p256: ec.EllipticCurvePrivateKey
) -> None:
    chain = make_chain(rsa_key, 2)
    jwks = {
        "keys": [
            {**private_jwk(rsa_key), "kid": "a", "use": "sig", "alg": "PS256", "x5c": x5c(chain)},
            {**public_jwk(p256), "kid": "b", "use": "enc", "alg": "ECDH-ES+A128KW"},
        ]
    }

    key_set = KeySet.from_jwks(jwks)
    written = key_set.to_jwks()

    assert len(key_set) == 2
    assert [k.kid for k in key_set] == ["a", "b"]
    assert key_set[0].is_private
    assert key_set.by_kid("b") is key_set[1]
    assert key_set.by_kid("c") is None
    assert written["keys"][1] == jwks["keys"][1]
    assert {k: v for k, v in written["keys"][0].items() if not k.startswith("x5t")} == jwks["keys"][
        0
    ]
    assert KeySet.from_jwks(written).to_jwks() == written
    assert not any("d" in jwk for jwk in key_set.to_jwks(private=False)["keys"])
    assert list(key_set[1:]) == [key_set[1]]


@pytest.mark.parametrize("empty", [None, {}, [], {"keys": []}])
def test_nothing_is_an_empty_set(empty: Any) -> None:
    assert len(KeySet.from_jwks(empty)) == 0
    assert KeySet.from_jwks(empty).to_jwks() == {"keys": []}


def test_a_bare_list_of_jwks_is_a_set(p256: ec.EllipticCurvePrivateKey) -> None:
    assert KeySet.from_jwks([public_jwk(p256)])[0].family == "EC-P-256"


def test_other_set_members_are_ignored(p256: ec.EllipticCurvePrivateKey) -> None:
    # RFC 7517 §5: members of the set that are not understood must be ignored.
    assert len(KeySet.from_jwks({"keys": [public_jwk(p256)], "issuer": "x"})) == 1


@pytest.mark.parametrize(
    ("jwks", "expected"),
    [
        ({"kty": "RSA"}, "^JWK Set: 'keys' is missing$"),
        ({"keys": {"kty": "RSA"}}, "^JWK Set: 'keys' must be a list, got dict$"),
        ({"keys": "x"}, "'keys' must be a list, got str"),
        ("keys", "must be a JSON object with 'keys' or a list of JWKs, got str"),
        (17, "got int"),
    ],
)
def test_a_set_that_is_not_a_set_is_a_clear_error(jwks: Any, expected: str) -> None:
    with pytest.raises(InvalidKeyMaterial, match=expected):
        KeySet.from_jwks(jwks)


def test_duplicate_kids_are_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    same_kid = [{**public_jwk(p256), "kid": "k1"}, {**public_jwk(other), "kid": "k1"}]
    with pytest.raises(
        InvalidKeyMaterial, match=r"^JWK Set: keys\[1\]: duplicate kid 'k1' \(also keys\[0\]\)$"
    ):
        KeySet.from_jwks({"keys": same_kid})
    # The same key twice has the same thumbprint, hence the same kid.
    with pytest.raises(InvalidKeyMaterial, match="duplicate kid"):
        KeySet.from_jwks([public_jwk(p256), public_jwk(p256)])
    key = Key.from_jwk(public_jwk(p256))
    with pytest.raises(InvalidKeyMaterial, match=f"keys\\[1\\]: duplicate kid '{key.kid}'"):
        KeySet([key, key.public()])


def test_too_many_keys_are_refused_before_parsing(p256: ec.EllipticCurvePrivateKey) -> None:
    too_many = [{"kty": "nonsense"}] * (KeySet.MAX_KEYS + 1)
    with pytest.raises(InvalidKeyMaterial, match="101 keys, more than the 100 a set may hold"):
        KeySet.from_jwks({"keys": too_many})
    key = Key.from_jwk(public_jwk(p256))
    many = [Key.from_jwk({**public_jwk(p256), "kid": str(i)}) for i in range(KeySet.MAX_KEYS)]
    assert len(KeySet(many)) == KeySet.MAX_KEYS
    with pytest.raises(InvalidKeyMaterial, match="at most 100 keys"):
        KeySet([*many, key])


def test_a_set_holds_only_keys() -> None:
    with pytest.raises(InvalidKeyMaterial, match=r"keys\[0\]: expected a Key, got dict"):
        KeySet([RFC7638_JWK])  # type: ignore[list-item]


# --- generate_key ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_generated_keys_fit_their_alg(alg: str) -> None:
    key = generate_key(alg, {"x-purpose": "tokens"}, lifecycle=Lifecycle("next"))

    assert key.is_private
    assert key.params == {"use": "sig", "alg": alg, "x-purpose": "tokens"}
    assert (key.use, key.alg, key.state) == ("sig", alg, "next")
    expected = {"ES256": ("EC-P-256",), "ES384": ("EC-P-384",), "ES512": ("EC-P-521",)}
    assert key.family == expected.get(alg, ("RSA",))[0]
    if isinstance(key.public_key, rsa.RSAPublicKey):
        assert key.public_key.key_size == 2048
        assert key.public_key.public_numbers().e == 65537
    assert Key.from_jwk(key.to_jwk()).to_jwk() == key.to_jwk()


def test_generate_key_defaults_to_rs256_and_refuses_what_it_cannot_make() -> None:
    key = generate_key()
    assert (key.family, key.alg, key.use, key.state) == ("RSA", "RS256", "sig", "active")
    for alg in ("HS256", "EdDSA", "RSA-OAEP", "none"):
        with pytest.raises(InvalidKeyMaterial, match=f"cannot generate a key for alg '{alg}'"):
            generate_key(alg)
    with pytest.raises(InvalidKeyMaterial, match="params say alg 'ES256'"):
        generate_key("ES384", {"alg": "ES256"})


# --- PEM, KeyMaterial --------------------------------------------------------------------------


def test_from_pem_reads_the_stored_form(rsa_key: rsa.RSAPrivateKey) -> None:
    chain = make_chain(rsa_key, 2)
    material = KeyMaterial(sk=rsa_key, certs=chain)
    created = datetime.datetime(
        2025, 3, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )

    key = Key.from_pem(
        material.key_pem(),
        material.certs_pem(),
        {"kid": "signer-1", "x-env": ["prod"]},
        lifecycle=Lifecycle("retired", created_at=created),
    )

    assert key.kid == "signer-1"
    assert key.certificates == chain
    assert key.state == "retired"
    assert key.lifecycle.created_at == created
    assert key.lifecycle.created_at is not None
    assert key.lifecycle.created_at.utcoffset() == datetime.timedelta(0)
    assert key.key_pem() == material.key_pem()
    assert key.certs_pem() == material.certs_pem()
    assert key.certs_pem("\n") == material.certs_pem("\n")
    assert key.to_jwk()["x-env"] == ["prod"]


def test_key_pem_follows_key_material_rules(rsa_key: rsa.RSAPrivateKey) -> None:
    chain = make_chain(rsa_key, 1)
    private = Key.from_jwk(private_jwk(rsa_key))
    public_only = private.public()
    certificate_only = Key.from_jwk({"x5c": x5c(chain)})

    assert private.key_pem() == KeyMaterial(sk=rsa_key).key_pem()
    assert (private.key_pem() or "").startswith("-----BEGIN PRIVATE KEY-----")
    assert (public_only.key_pem() or "").startswith("-----BEGIN PUBLIC KEY-----")
    assert certificate_only.key_pem() is None
    assert private.certs_pem() == ""
    assert Key.from_pem(public_only.key_pem(), None).same_key(private)
    assert Key.from_pem(None, certificate_only.certs_pem()).certificates == chain


def test_from_pem_refuses_what_does_not_belong_together(
    rsa_key: rsa.RSAPrivateKey, p256: ec.EllipticCurvePrivateKey
) -> None:
    rsa_pem = KeyMaterial(sk=rsa_key).key_pem()
    ec_chain = KeyMaterial(certs=make_chain(p256, 1)).certs_pem()
    with pytest.raises(
        InvalidKeyMaterial, match=r"^keys t/x: the first certificate does not match the key$"
    ):
        Key.from_pem(rsa_pem, ec_chain, what="keys t/x")
    with pytest.raises(InvalidKeyMaterial, match=r"^keys t/x: neither a key nor a certificate$"):
        Key.from_pem(None, "", what="keys t/x")
    with pytest.raises(InvalidKeyMaterial, match="'n' is a key member"):
        Key.from_pem(rsa_pem, None, {"n": "AQAB"})
    with pytest.raises(InvalidKeyMaterial, match="'x5c' is a key member"):
        Key.from_pem(rsa_pem, None, {"x5c": []})
    with pytest.raises(InvalidKeyMaterial, match="params must be a mapping"):
        Key.from_pem(rsa_pem, None, ["kid"])  # type: ignore[arg-type]


def test_key_material_converts_both_ways(rsa_key: rsa.RSAPrivateKey) -> None:
    chain = make_chain(rsa_key, 2)
    material = KeyMaterial(sk=rsa_key, certs=chain)

    key = material.to_key()

    assert key is not None
    assert key.params == {}  # the thumbprint is derived, not stored
    assert (key.kid, key.state, key.certificates) == (material.kid, "active", chain)
    assert KeyMaterial.from_key(key) == material
    assert KeyMaterial().to_key() is None
    named = KeyMaterial(pk=rsa_key.public_key(), kid="legacy")
    assert (named.to_key() or key).params == {"kid": "legacy"}
    assert KeyMaterial.from_key(named.to_key() or key) == named
    assert KeyMaterial.from_key(key.public()) == KeyMaterial(certs=chain)


def test_entities_still_exports_the_key_vocabulary() -> None:
    for name in (
        "KeyMaterial",
        "PrivateKey",
        "PublicKey",
        "load_key_pem",
        "load_certificate_chain",
        "jwk_thumbprint",
        "CHAIN_SEPARATOR",
        "Key",
        "KeySet",
    ):
        defining = importlib.import_module(omejdn_pg.keys.PUBLIC[name])
        assert getattr(entities, name) is getattr(omejdn_pg.keys, name), name
        assert getattr(omejdn_pg.keys, name) is getattr(defining, name), name


# --- direct construction keeps the invariants ---------------------------------------------------


def test_a_key_built_by_hand_is_checked(
    rsa_key: rsa.RSAPrivateKey, p256: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(InvalidKeyMaterial, match="the private key does not match the public key"):
        Key(public_key=rsa_key.public_key(), private_key=p256)
    with pytest.raises(InvalidKeyMaterial, match="the first certificate does not match the key"):
        Key(public_key=p256.public_key(), certificates=make_chain(rsa_key, 1))
    with pytest.raises(InvalidKeyMaterial, match="public_key is not a public key: "):
        Key(public_key=rsa_key)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyMaterial, match=r"certificates\[0\] is not an X.509 certificate"):
        Key(public_key=p256.public_key(), certificates=["PEM"])  # type: ignore[list-item]
    with pytest.raises(InvalidKeyMaterial, match="'d' is a key member"):
        Key(public_key=p256.public_key(), params={"d": "x"})
    with pytest.raises(InvalidKeyMaterial, match="'x5t' is derived from the certificates"):
        Key(
            public_key=rsa_key.public_key(),
            certificates=make_chain(rsa_key, 1),
            params={"x5t": "a"},
        )
    with pytest.raises(InvalidKeyMaterial, match=r"^key: lifecycle must be a Lifecycle, got str$"):
        Key(public_key=p256.public_key(), lifecycle="old")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyMaterial, match="only RSA and EC"):
        Key(public_key=ed25519.Ed25519PrivateKey.generate().public_key())  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyMaterial, match="only RSA and EC"):
        Key(public_key=ec.generate_private_key(ec.SECP256K1()).public_key())


def test_states_and_dates_are_carried(p256: ec.EllipticCurvePrivateKey) -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    for state in KEY_STATES:
        lifecycle = Lifecycle(state, activate_at=when, destroy_at=when)
        key = Key(public_key=p256.public_key(), lifecycle=lifecycle)
        assert (key.state, key.lifecycle) == (state, lifecycle)
        assert key.public().lifecycle == lifecycle


def test_repr_shows_no_private_numbers(rsa_key: rsa.RSAPrivateKey) -> None:
    key = Key.from_jwk({**private_jwk(rsa_key), "x5c": x5c(make_chain(rsa_key, 2))})

    shown = repr(key)

    assert shown == (f"Key(kid={key.kid!r}, kind='RSA-2048', private=yes, certs=2, state='active')")
    assert str(rsa_key.private_numbers().d) not in shown
    assert private_jwk(rsa_key)["d"] not in shown
    assert "BEGIN" not in shown
    assert "private=no" in repr(key.public())
    assert private_jwk(rsa_key)["d"] not in repr(KeySet([key]))


def test_same_key_compares_public_keys_only(
    rsa_key: rsa.RSAPrivateKey, p256: ec.EllipticCurvePrivateKey
) -> None:
    a = Key.from_jwk({**private_jwk(rsa_key), "kid": "a"})
    b = Key.from_jwk({**public_jwk(rsa_key), "kid": "b", "use": "enc"})
    assert a.same_key(b)
    assert not a.same_key(Key.from_jwk(public_jwk(p256)))


# --- parsing cost: a given private key is validated once ----------------------------------------


@pytest.mark.parametrize("family", ["RSA", "EC-P-256"])
def test_jwk_private_keys_are_parsed_once(family: str, all_keys: dict[str, PrivateKey]) -> None:
    jwk = {**private_jwk(all_keys[family]), "kid": f"cache-{family}"}

    first = Key.from_jwk(jwk)
    second = Key.from_jwk({**jwk, "kid": "another descriptor, same members"})

    assert first.private_key is second.private_key


def test_pem_private_keys_are_parsed_once(rsa_key: rsa.RSAPrivateKey) -> None:
    text = KeyMaterial(sk=rsa_key).key_pem()
    assert Key.from_pem(text, None).private_key is Key.from_pem(text, None).private_key


@pytest.mark.parametrize(
    ("cached", "make_bad"),
    [
        (
            codec._rsa_private_key,
            lambda key: {**private_jwk(key), "qi": b64url_int(17)},
        ),
        (
            codec._ec_private_key,
            lambda key: {**private_jwk(ec.generate_private_key(ec.SECP256R1())), "d": "AA"},
        ),
    ],
    ids=["rsa", "ec"],
)
def test_failures_are_not_cached(
    rsa_key: rsa.RSAPrivateKey, cached: Any, make_bad: Callable[[Any], dict[str, Any]]
) -> None:
    bad = make_bad(rsa_key)
    before = cached.cache_info()

    for _ in range(2):
        with pytest.raises(InvalidKeyMaterial):
            Key.from_jwk(bad)

    after = cached.cache_info()
    assert after.currsize == before.currsize
    assert after.hits == before.hits
    assert after.misses > before.misses


# --- keys read before: remembered by content, handed out as copies ------------------------------


def test_a_key_read_again_from_the_same_jwk_is_a_copy_sharing_nothing_mutable(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    jwk = {**private_jwk(rsa_key), "kid": "remembered", "use": "sig"}
    first = Key.from_jwk(jwk)
    first.params["use"] = "enc"
    first.certificates.append("not a certificate")  # type: ignore[arg-type]
    first.lifecycle = Lifecycle("retired")

    second = Key.from_jwk(jwk)

    assert second is not first
    assert second.params == {"kid": "remembered", "use": "sig"}
    assert second.certificates == []
    assert second.lifecycle == Lifecycle()
    assert second.private_key is first.private_key  # immutable, shared on purpose


def test_a_changed_jwk_is_read_afresh(rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = {**public_jwk(rsa_key), "kid": "changing"}
    assert Key.from_jwk(jwk).alg == "RS256"
    assert Key.from_jwk({**jwk, "alg": "PS384"}).alg == "PS384"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not Key.from_jwk({**public_jwk(other), "kid": "changing"}).same_key(Key.from_jwk(jwk))


def test_a_refused_jwk_is_refused_again_naming_where_it_came_from_each_time(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    bad = {**private_jwk(rsa_key), "kid": "bad", "use": "nonsense"}
    for where in ("first: keys[0]", "second: keys[3]"):
        with pytest.raises(InvalidKeyMaterial, match=rf"^{re.escape(where)}: 'use' must be"):
            Key.from_jwk(bad, what=where)


def test_a_key_read_again_from_the_same_pem_takes_the_lifecycle_it_is_given(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    text = KeyMaterial(sk=rsa_key).key_pem()
    active = Key.from_pem(text, None, {"kid": "pem"}, lifecycle=Lifecycle("active"))
    retired = Key.from_pem(text, None, {"kid": "pem"}, lifecycle=Lifecycle("retired"))
    assert (active.state, retired.state) == ("active", "retired")
    assert active.params == retired.params == {"kid": "pem"}
    with pytest.raises(InvalidKeyMaterial, match="lifecycle must be a Lifecycle"):
        Key.from_pem(text, None, {"kid": "pem"}, lifecycle="active")  # type: ignore[arg-type]


def test_a_copy_takes_only_a_lifecycle(rsa_key: rsa.RSAPrivateKey) -> None:
    key = Key.from_jwk(public_jwk(rsa_key))
    assert key.copied(Lifecycle("next")).state == "next"
    with pytest.raises(InvalidKeyMaterial, match="lifecycle must be a Lifecycle"):
        key.copied("next")  # type: ignore[arg-type]
