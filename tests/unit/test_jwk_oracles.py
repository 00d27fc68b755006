"""The JWK codec against two independent oracles, joserfc and PyJWT; no database.

Every key our codec writes (RSA, EC P-256/P-384/P-521; public and private;
each signing and encryption algorithm a key may carry) imports in both with
the same RFC 7638 thumbprint, and every key they write imports in ours with
the thumbprint they give it. The last tests show, measured, why the codec
stays ours: where ours names the member and the key's position in the set,
joserfc raises an empty error or names no position and PyJWT drops the key
without a word; and ours refuses an EC coordinate spelled above the field
prime, which joserfc keeps (so one point gets a second thumbprint) and PyJWT
reduces silently. If one of those tests fails because a library changed,
that library has caught up, and the codec's reason to exist should be
weighed again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from functools import cache
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, RSAKey
from joserfc.jwk import KeySet as JoseKeySet
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from omejdn_pg.errors import InvalidKeyMaterial
from omejdn_pg.keys.algorithms import CRV, PrivateKey, allowed_algs
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from tests.kits.strategies import PROPERTY_SETTINGS

CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y")}
PRIVATE_MEMBERS = {"RSA": ("d", "p", "q", "dp", "dq", "qi"), "EC": ("d",)}


@cache
def rsa_keys() -> tuple[rsa.RSAPrivateKey, ...]:
    """A few RSA keys, made once: generating one per example would cost seconds."""
    return tuple(
        rsa.generate_private_key(public_exponent=65537, key_size=size)
        for size in (2048, 2048, 3072)
    )


@st.composite
def private_keys(draw: st.DrawFn) -> PrivateKey:
    """RSA keys from the pool, or EC keys of any curve from a drawn scalar."""
    crv = draw(st.sampled_from(["RSA", *CURVES]))
    if crv == "RSA":
        return draw(st.sampled_from(rsa_keys()))
    size = CRV[crv][0]().key_size
    # Every scalar below 2**(size - 1) is below the curve's order.
    return ec.derive_private_key(draw(st.integers(1, 2 ** (size - 1))), CURVES[crv]())


@st.composite
def our_keys(draw: st.DrawFn) -> Key:
    """A key as we hold it, with each use and each algorithm its family may serve."""
    private = draw(private_keys())
    family = Key(private.public_key()).family
    use = draw(st.sampled_from(["sig", "enc"]))
    alg = draw(st.sampled_from(allowed_algs(family, use)))
    return Key(private.public_key(), private, params={"use": use, "alg": alg})


def rfc7638(jwk: dict[str, Any]) -> str:
    """The thumbprint of RFC 7638 §3, computed here from its text, not by either codec."""
    required = {name: jwk[name] for name in PUBLIC_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def members(jwk: dict[str, Any], private: bool) -> dict[str, Any]:
    names = PUBLIC_MEMBERS[jwk["kty"]] + (PRIVATE_MEMBERS[jwk["kty"]] if private else ())
    return {name: jwk.get(name) for name in names}


def kty(key: object) -> str:
    return "RSA" if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) else "EC"


def pyjwt_algorithm(kind: str) -> type[RSAAlgorithm] | type[ECAlgorithm]:
    return RSAAlgorithm if kind == "RSA" else ECAlgorithm


# --- ours -> theirs ---------------------------------------------------------------


@PROPERTY_SETTINGS
@given(our_keys(), st.booleans())
def test_every_key_we_write_imports_in_joserfc_with_our_thumbprint(key: Key, private: bool) -> None:
    jwk = key.to_jwk(private=private)

    theirs = JWKRegistry.import_key(jwk)

    assert theirs.thumbprint() == key.kid == jwk["kid"] == rfc7638(jwk)
    assert theirs.is_private is private
    assert members(theirs.as_dict(private=private), private) == members(jwk, private)
    assert (theirs.kid, theirs.alg) == (key.kid, key.alg)


@PROPERTY_SETTINGS
@given(our_keys(), st.booleans())
def test_every_key_we_write_imports_in_pyjwt_with_our_thumbprint(key: Key, private: bool) -> None:
    jwk = key.to_jwk(private=private)
    algorithm = pyjwt_algorithm(jwk["kty"])

    theirs = algorithm.from_jwk(jwk)

    written = algorithm.to_jwk(theirs, as_dict=True)
    assert rfc7638(written) == key.kid
    assert members(written, private) == members(jwk, private)
    if private and key.use == "sig":
        # What Omejdn's core does with the key: PyJWT signs, our public key verifies.
        token = jwt.encode({"sub": "ann"}, jwt.PyJWK(jwk), algorithm=key.alg)
        assert jwt.decode(token, key.public_key, algorithms=[key.alg]) == {"sub": "ann"}


# --- theirs -> ours ---------------------------------------------------------------


@PROPERTY_SETTINGS
@given(private_keys(), st.booleans())
def test_every_key_joserfc_writes_imports_here_with_its_thumbprint(
    private_key: PrivateKey, private: bool
) -> None:
    theirs = (RSAKey if kty(private_key) == "RSA" else ECKey).import_key(private_key)
    jwk = theirs.as_dict(private=private)

    key = Key.from_jwk(jwk)

    assert key.kid == theirs.thumbprint()
    assert key.is_private is private
    assert members(key.to_jwk(private=private), private) == members(jwk, private)


@PROPERTY_SETTINGS
@given(private_keys(), st.booleans())
def test_every_key_pyjwt_writes_imports_here_with_its_thumbprint(
    private_key: PrivateKey, private: bool
) -> None:
    held = private_key if private else private_key.public_key()
    jwk = pyjwt_algorithm(kty(held)).to_jwk(held, as_dict=True)

    key = Key.from_jwk(jwk)

    assert key.kid == rfc7638(jwk)
    assert key.is_private is private
    assert members(key.to_jwk(private=private), private) == members(jwk, private)


@PROPERTY_SETTINGS
@given(st.lists(private_keys(), min_size=1, max_size=4, unique_by=lambda k: k.private_numbers()))
def test_a_set_joserfc_writes_is_read_here_key_by_key(keys: list[PrivateKey]) -> None:
    theirs = JoseKeySet([JWKRegistry.import_key(k, kty(k)) for k in keys])

    ours = KeySet.from_jwks(theirs.as_dict(private=False))

    assert [key.kid for key in ours] == [key.thumbprint() for key in theirs.keys]
    assert not any(key.is_private for key in ours)


# --- why the codec stays ours -----------------------------------------------------


def test_our_errors_name_the_member_and_the_position_where_theirs_do_not() -> None:
    good = Key(ec.derive_private_key(7, ec.SECP256R1()).public_key()).to_jwk(private=False)
    broken = {"kty": "RSA", "n": "not base64!", "e": "AQAB"}
    incomplete = {"kty": "EC", "crv": "P-256", "x": good["x"]}

    with pytest.raises(InvalidKeyMaterial, match=r"^JWK Set: keys\[1\]: 'n' is not base64url$"):
        KeySet.from_jwks({"keys": [good, broken]})
    with pytest.raises(InvalidKeyMaterial, match=r"^JWK Set: keys\[1\]: 'y' is missing$"):
        KeySet.from_jwks({"keys": [good, incomplete]})

    # joserfc: an empty binascii error for the first, no position for the second.
    with pytest.raises(binascii.Error) as empty:
        JoseKeySet.import_key_set({"keys": [good, broken]})
    assert str(empty.value) == ""
    with pytest.raises(JoseError) as unplaced:
        JoseKeySet.import_key_set({"keys": [good, incomplete]})
    assert "'y'" in str(unplaced.value)
    assert "1" not in str(unplaced.value)
    # PyJWT: the set is read without the keys it cannot use, and nothing is said.
    assert [k.key_id for k in jwt.PyJWKSet.from_dict({"keys": [good, broken]}).keys] == [
        good["kid"]
    ]


@PROPERTY_SETTINGS
@given(st.integers(1, 2**520), st.sampled_from(["x", "y"]))
def test_we_refuse_a_coordinate_above_the_field_prime_which_joserfc_keeps(
    scalar: int, coordinate: str
) -> None:
    """P-521 coordinates have 7 spare bits in their 66 bytes, room for ``c + p``:
    the same point spelled a second way (OpenSSL reduces it)."""
    canonical = Key(ec.derive_private_key(scalar, ec.SECP521R1()).public_key())
    jwk = canonical.to_jwk(private=False)
    prime = CRV["P-521"][2]
    value = int.from_bytes(base64.urlsafe_b64decode(jwk[coordinate] + "=="), "big") + prime
    spelled = {
        **{name: jwk[name] for name in ("kty", "crv", "x", "y")},
        coordinate: base64.urlsafe_b64encode(value.to_bytes(66, "big")).rstrip(b"=").decode(),
    }

    with pytest.raises(
        InvalidKeyMaterial, match=f"^JWK: '{coordinate}' is not a P-521 coordinate$"
    ):
        Key.from_jwk(spelled)

    # joserfc keeps the spelling: the same public key gets a second thumbprint.
    theirs = JWKRegistry.import_key(spelled)
    reduced = theirs.get_op_key("verify").public_numbers()
    assert reduced == canonical.public_key.public_numbers()
    assert theirs.thumbprint() != canonical.kid
    # PyJWT reduces it without a word.
    assert ECAlgorithm.from_jwk(spelled).public_numbers() == reduced
