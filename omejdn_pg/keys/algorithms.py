"""The kinds of key this package handles, the algorithms each may serve, and the size bounds.

RSA and EC on the three NIST curves, nothing else: the signing keys Omejdn's
core uses and the encryption keys its clients register. Keeping the list
short means every key that enters can be checked against it in one place
(:func:`key_type_problem`), at the price of refusing keys other producers
may write (Ed25519, secp256k1).

RSA keys above :data:`MAX_RSA_BITS` are refused before OpenSSL checks them,
so that a hostile JWK Set cannot pin a CPU. RSA keys below
:func:`min_rsa_bits` (2048 unless ``OMEJDN_PG_MIN_RSA_BITS`` says otherwise)
are refused where a key enters — KEYS_STORE of either store, a client's
JWKS, ``keys import``, ``keys generate``, an import — by
:func:`weak_key_problem`, but read wherever they already are: a stored
RSA-1024 key stays loadable and publishable, so that it can be seen and
rotated, and storing a set back unchanged does not fail on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg.errors import ConfigurationError, InvalidKeyMaterial

if TYPE_CHECKING:
    from omejdn_pg.keys.model import Key

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

MAX_RSA_BITS: Final = 8192
"""Larger RSA keys are refused: validating one costs seconds of CPU per load."""
MIN_RSA_BITS: Final = 2048
"""Smaller RSA keys are refused where they enter (NIST SP 800-131A, RFC 7518 §3.3)."""
MIN_RSA_BITS_VARIABLE: Final = "OMEJDN_PG_MIN_RSA_BITS"
"""Overrides :data:`MIN_RSA_BITS` for the service and the CLI alike (1024 to 8192)."""

RSA_ALGS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
SUPPORTED_ALGS: Final = (*RSA_ALGS, "ES256", "ES384", "ES512")
"""The JWS algorithms a key can be used with (the signing keys Omejdn's core uses)."""

ENCRYPTION_ALGS: Final[Mapping[str, tuple[str, ...]]] = {
    "RSA": ("RSA-OAEP-256", "RSA-OAEP", "RSA-OAEP-384", "RSA-OAEP-512", "RSA1_5"),
    "EC": ("ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW"),
}
"""JWE key management algorithms accepted on ``use: enc`` keys (clients register
such keys for encrypted responses); the first is the default ``alg`` of such a key."""

USES: Final = ("sig", "enc")

CURVES: Final = {
    "secp256r1": ("P-256", 32),
    "secp384r1": ("P-384", 48),
    "secp521r1": ("P-521", 66),
}
"""Curve name (cryptography) -> (JWK ``crv``, coordinate bytes)."""
CRV: Final[dict[str, tuple[type[ec.EllipticCurve], int, int, str]]] = {
    "P-256": (ec.SECP256R1, 32, 2**256 - 2**224 + 2**192 + 2**96 - 1, "ES256"),
    "P-384": (ec.SECP384R1, 48, 2**384 - 2**128 - 2**96 + 2**32 - 1, "ES384"),
    "P-521": (ec.SECP521R1, 66, 2**521 - 1, "ES512"),
}
"""JWK ``crv`` -> (curve, coordinate bytes, field prime, JWS alg)."""
CURVE_OF_ALG: Final = {alg: crv for crv, (_, _, _, alg) in CRV.items()}


def allowed_algs(family: str, use: str) -> tuple[str, ...]:
    """The algorithms a key of ``family`` may serve for ``use``, the default first."""
    if use == "enc":
        return ENCRYPTION_ALGS["RSA" if family == "RSA" else "EC"]
    if family == "RSA":
        return RSA_ALGS
    return (CRV[family.removeprefix("EC-")][3],)


def key_type_problem(key: object) -> str | None:
    """Why ``key`` is not one this package handles, or None."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return too_large_problem(key.key_size) if key.key_size > MAX_RSA_BITS else None
    if (
        isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)
        and key.curve.name in CURVES
    ):
        return None
    return "only RSA and EC (P-256, P-384, P-521) keys are supported"


def supported_private_key(key: object, what: str) -> PrivateKey:
    problem = key_type_problem(key)
    if problem is not None or not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidKeyMaterial(f"{what}: {problem or 'not a private key'}")
    return key


def supported_public_key(key: object, what: str) -> PublicKey:
    problem = key_type_problem(key)
    if problem is not None or not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidKeyMaterial(f"{what}: {problem or 'not a public key'}")
    return key


def too_large(what: str, bits: int) -> str:
    return f"{what}: {too_large_problem(bits)}"


def too_large_problem(bits: int) -> str:
    return (
        f"an RSA key of {bits} bits is larger than the {MAX_RSA_BITS} bits allowed (MAX_RSA_BITS)"
    )


def min_rsa_bits() -> int:
    """The smallest RSA modulus accepted for a new key: :data:`MIN_RSA_BITS_VARIABLE`
    if set (read on every call, so that a test or a reload sees a change), else 2048."""
    text = os.environ.get(MIN_RSA_BITS_VARIABLE)
    if text is None or not text.strip():
        return MIN_RSA_BITS
    try:
        bits = int(text)
    except ValueError:
        bits = 0
    if not 1024 <= bits <= MAX_RSA_BITS:
        raise ConfigurationError(
            f"{MIN_RSA_BITS_VARIABLE} must be a number of bits from 1024 to {MAX_RSA_BITS}, "
            f"got {text!r}"
        )
    return bits


def weak_key_problem(key: Key) -> str | None:
    """Why ``key`` is too weak to be stored as a new key, or None."""
    public = key.public_key
    if isinstance(public, rsa.RSAPublicKey):
        minimum = min_rsa_bits()
        if public.key_size < minimum:
            return (
                f"an RSA key of {public.key_size} bits is smaller than the {minimum} bits "
                f"required ({MIN_RSA_BITS_VARIABLE})"
            )
    return None
