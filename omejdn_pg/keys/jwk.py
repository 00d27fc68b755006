"""The JWK codec (RFC 7517/7518/7638): JWK members to ``cryptography`` keys and back.

Ours rather than joserfc's or PyJWT's, which the tests use as independent
oracles: our errors name the member and its position (``JWK Set: keys[2]:
'n' is not base64url``) and never quote key material, we refuse an EC
coordinate at or above the field prime (OpenSSL would reduce it: another
spelling of the same point, which would dodge kid checks), and importing it
costs only ``cryptography``. The price is a codec to maintain.

Reading is tolerant where being strict would only lose keys that other
producers really write — base64url with padding or leading zero octets, an
RSA key given by ``d`` alone (RFC 7518 §6.3.2), thumbprints in upstream
Omejdn's hex-based encoding, JWE algorithms on ``use: enc`` keys — and
writing is always canonical, so a JWK this module wrote round-trips exactly.
Private members are turned into keys through small ``lru_cache``\\ s keyed by
their values, for the reason :mod:`omejdn_pg.keys.pem` gives.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg.errors import InvalidKeyMaterial, located
from omejdn_pg.keys.algorithms import (
    CRV,
    CURVES,
    MAX_RSA_BITS,
    PrivateKey,
    PublicKey,
    supported_public_key,
    too_large_problem,
)
from omejdn_pg.keys.pem import certificate_key

if TYPE_CHECKING:
    from omejdn_pg.keys.model import Key

KEY_MEMBERS: Final = frozenset(
    ("kty", "n", "e", "d", "p", "q", "dp", "dq", "qi", "oth", "crv", "x", "y")
)
"""JWK members that are the key itself; everything else is the descriptor (``params``)."""

CHAIN_MEMBERS: Final = frozenset(("x5c", "x5t", "x5t#S256"))
"""JWK members derived from :attr:`Key.certificates`, never kept in ``params``."""

DESCRIBED: Final = ("kid", "use", "alg")
"""The descriptor members :class:`Key` fills in when they are not given."""

_RSA_PRIVATE: Final = ("d", "p", "q", "dp", "dq", "qi")
_B64URL = re.compile(r"[A-Za-z0-9_-]*(={0,2})")


def decode_jwk(
    jwk: Mapping[str, Any], what: str
) -> tuple[PublicKey, PrivateKey | None, list[x509.Certificate], dict[str, Any]]:
    """The public key, private key, chain and descriptor of a JWK dict, each member checked;
    InvalidKeyMaterial naming ``what`` and the member otherwise."""
    with located(what, InvalidKeyMaterial):
        return _decode(jwk)


def _decode(
    jwk: Mapping[str, Any],
) -> tuple[PublicKey, PrivateKey | None, list[x509.Certificate], dict[str, Any]]:
    if not isinstance(jwk, Mapping):
        raise InvalidKeyMaterial(f"a JWK must be a JSON object, got {type(jwk).__name__}")
    for name in jwk:
        if not isinstance(name, str):
            raise InvalidKeyMaterial(f"member names must be strings, got {name!r}")
    certificates = _x5c(jwk["x5c"]) if "x5c" in jwk else []
    kty = jwk.get("kty")
    private: PrivateKey | None = None
    if certificates and not any(m in jwk for m in KEY_MEMBERS - {"kty"}):
        # RFC 7517 §4.7: the certificate carries the key.
        public = supported_public_key(certificate_key(certificates[0], "'x5c'[0]"), "'x5c'[0]")
        held = "RSA" if isinstance(public, rsa.RSAPublicKey) else "EC"
        if "kty" in jwk and kty != held:
            raise InvalidKeyMaterial(
                f"'kty' is {kty!r} but the first certificate holds an {held} key"
            )
    elif "kty" not in jwk:
        raise InvalidKeyMaterial("'kty' is missing")
    elif kty == "RSA":
        public, private = _rsa_from_jwk(jwk)
    elif kty == "EC":
        public, private = _ec_from_jwk(jwk)
    else:
        raise InvalidKeyMaterial(f'\'kty\' must be "RSA" or "EC", got {kty!r}')
    return public, private, certificates, _params(jwk, certificates)


def encode_jwk(key: Key, *, private: bool) -> dict[str, Any]:
    """The canonical JWK of ``key``; see :meth:`Key.to_jwk`."""
    jwk = public_jwk_members(key.public_key)
    if private and key.private_key is not None:
        jwk.update(private_jwk_members(key.private_key))
    jwk["kid"] = key.kid
    jwk["use"] = key.use
    jwk["alg"] = key.alg
    for name, value in key.params.items():
        if name not in DESCRIBED:
            jwk[name] = copy.deepcopy(value)
    jwk.update(chain_members(key.certificates))
    return jwk


def chain_members(certificates: Sequence[x509.Certificate]) -> dict[str, Any]:
    """``x5c``, ``x5t`` and ``x5t#S256`` of a chain (RFC 7517 §4.7-4.9); none without one."""
    if not certificates:
        return {}
    first = certificates[0]
    return {
        "x5c": [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii")
            for c in certificates
        ],
        "x5t": b64url(first.fingerprint(hashes.SHA1())),  # noqa: S303
        "x5t#S256": b64url(first.fingerprint(hashes.SHA256())),
    }


def jwk_thumbprint(public_key: PublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public key."""
    members = public_jwk_members(public_key)
    required = ("e", "kty", "n") if members["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({k: members[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def descriptor(
    members: Mapping[str, Any], certificates: list[x509.Certificate], what: str
) -> dict[str, Any]:
    """The params of a JWK: members other than the key's and the chain's,
    deep-copied so that the caller's dict and the key share nothing."""
    with located(what, InvalidKeyMaterial):
        return _params(members, certificates)


def _params(members: Mapping[str, Any], certificates: list[x509.Certificate]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in members.items():
        if name in KEY_MEMBERS or name == "x5c":
            continue
        if name in ("x5t", "x5t#S256") and certificates:
            _check_thumbprint(name, value, certificates[0])
            continue
        # Without a chain a thumbprint names a certificate held elsewhere
        # (x5u, a registry): a parameter like any other.
        params[name] = copy.deepcopy(value)
    return params


def _check_thumbprint(name: str, value: object, cert: x509.Certificate) -> None:
    if not isinstance(value, str):
        raise InvalidKeyMaterial(f"{name!r} must be a string, got {type(value).__name__}")
    digest = cert.fingerprint(hashes.SHA1() if name == "x5t" else hashes.SHA256())  # noqa: S303
    padded = base64.urlsafe_b64encode(digest).decode("ascii")
    # Upstream Omejdn (adapt_to_cert) writes base64url of the *hex* digest,
    # padded; its key files carry that form, so it is recognised on import
    # (and written back correctly).
    legacy = base64.urlsafe_b64encode(digest.hex().encode("ascii")).decode("ascii")
    if value not in (padded.rstrip("="), padded, legacy, legacy.rstrip("=")):
        raise InvalidKeyMaterial(f"{name!r} does not match the first certificate of 'x5c'")


def _x5c(value: object) -> list[x509.Certificate]:
    if not isinstance(value, list | tuple) or not value:
        raise InvalidKeyMaterial("'x5c' must be a non-empty list of base64 certificates")
    certificates = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidKeyMaterial(f"'x5c'[{index}] must be a string, got {type(item).__name__}")
        try:
            # x5c is standard base64 (RFC 7517 §4.7), not base64url.
            der = binascii.a2b_base64(item.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            raise InvalidKeyMaterial(f"'x5c'[{index}] is not base64") from None
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise InvalidKeyMaterial(f"'x5c'[{index}] is not a DER X.509 certificate") from None
    return certificates


def _rsa_from_jwk(jwk: Mapping[str, Any]) -> tuple[PublicKey, PrivateKey | None]:
    for name in ("crv", "x", "y"):
        if name in jwk:
            raise InvalidKeyMaterial(f"{name!r} is not a member of an RSA key")
    if "oth" in jwk:
        raise InvalidKeyMaterial("multi-prime RSA keys ('oth') are not supported")
    n = _uint(jwk, "n")
    if n.bit_length() > MAX_RSA_BITS:
        raise InvalidKeyMaterial(too_large_problem(n.bit_length()))
    e = _uint(jwk, "e")
    try:
        public = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise InvalidKeyMaterial("'n' and 'e' are not a valid RSA public key") from None
    given = [name for name in _RSA_PRIVATE if name in jwk]
    if not given:
        return public, None
    if "d" not in jwk:
        raise InvalidKeyMaterial(f"'d' is missing (private members {given} need it)")
    values = {name: _uint(jwk, name) if name in jwk else None for name in _RSA_PRIVATE}
    if ("p" in jwk) != ("q" in jwk):
        raise InvalidKeyMaterial("'p' and 'q' go together")
    if "p" not in jwk and any(name in jwk for name in ("dp", "dq", "qi")):
        raise InvalidKeyMaterial("'dp', 'dq' and 'qi' need 'p' and 'q'")
    try:
        private = _rsa_private_key(
            n,
            e,
            values["d"],
            values["p"],
            values["q"],
            values["dp"],
            values["dq"],
            values["qi"],
        )
    except ValueError:
        raise InvalidKeyMaterial(
            "the private members do not form one RSA key with 'n' and 'e'"
        ) from None
    return public, private


@lru_cache(maxsize=64)
def _rsa_private_key(
    n: int,
    e: int,
    d: int | None,
    p: int | None,
    q: int | None,
    dp: int | None,
    dq: int | None,
    qi: int | None,
) -> rsa.RSAPrivateKey:
    """The validated private key of these members, remembered (see the module docstring)."""
    assert d is not None
    if p is None or q is None:
        # RFC 7518 §6.3.2 lets a producer send only 'd'.
        p, q = rsa.rsa_recover_prime_factors(n, e, d)
    if dp is None:
        dp = rsa.rsa_crt_dmp1(d, p)
    if dq is None:
        dq = rsa.rsa_crt_dmq1(d, q)
    if qi is None:
        qi = rsa.rsa_crt_iqmp(p, q)
    return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n)).private_key()


def _ec_from_jwk(jwk: Mapping[str, Any]) -> tuple[PublicKey, PrivateKey | None]:
    for name in ("n", "e", "p", "q", "dp", "dq", "qi", "oth"):
        if name in jwk:
            raise InvalidKeyMaterial(f"{name!r} is not a member of an EC key")
    if "crv" not in jwk:
        raise InvalidKeyMaterial("'crv' is missing")
    crv = jwk["crv"]
    if not isinstance(crv, str) or crv not in CRV:
        raise InvalidKeyMaterial(f"'crv' must be P-256, P-384 or P-521, got {crv!r}")
    curve, size, prime, _ = CRV[crv]
    x = _uint(jwk, "x", size)
    y = _uint(jwk, "y", size)
    # OpenSSL would reduce a coordinate modulo the prime: another spelling of
    # the same point, which would not round-trip and would dodge kid checks.
    for name, value in (("x", x), ("y", y)):
        if value >= prime:
            raise InvalidKeyMaterial(f"{name!r} is not a {crv} coordinate")
    try:
        public = ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
    except ValueError:
        raise InvalidKeyMaterial(f"the point ('x', 'y') is not on the curve {crv}") from None
    if "d" not in jwk:
        return public, None
    d = _uint(jwk, "d", size)
    try:
        private = _ec_private_key(crv, d)
    except ValueError:
        raise InvalidKeyMaterial(f"'d' is not a {crv} private key") from None
    if private.public_key().public_numbers() != public.public_numbers():
        raise InvalidKeyMaterial("'d' does not match 'x' and 'y'")
    return public, private


@lru_cache(maxsize=64)
def _ec_private_key(crv: str, d: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(d, CRV[crv][0]())


def _uint(jwk: Mapping[str, Any], name: str, max_bytes: int | None = None) -> int:
    """A base64url-encoded unsigned integer member (RFC 7518 §2, Base64urlUInt).

    Padding and leading zero octets are tolerated (some producers emit them);
    :func:`encode_jwk` writes the canonical form.
    """
    if name not in jwk:
        raise InvalidKeyMaterial(f"{name!r} is missing")
    value = jwk[name]
    if not isinstance(value, str):
        raise InvalidKeyMaterial(f"{name!r} must be a base64url string, got {type(value).__name__}")
    data = _b64url_decode(value)
    if data is None:
        raise InvalidKeyMaterial(f"{name!r} is not base64url")
    if not data:
        raise InvalidKeyMaterial(f"{name!r} is empty")
    if max_bytes is not None and len(data.lstrip(b"\0")) > max_bytes:
        raise InvalidKeyMaterial(f"{name!r} is longer than {max_bytes} bytes")
    return int.from_bytes(data, "big")


def _b64url_decode(text: str) -> bytes | None:
    match = _B64URL.fullmatch(text)
    if match is None:
        return None
    body = text[: len(text) - len(match.group(1))]
    if len(body) % 4 == 1 or (match.group(1) and len(text) % 4):
        return None
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def public_jwk_members(public_key: PublicKey) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": b64url_int(numbers.n), "e": b64url_int(numbers.e)}
    curve, size = CURVES[public_key.curve.name]
    point = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": curve,
        "x": b64url(point.x.to_bytes(size, "big")),
        "y": b64url(point.y.to_bytes(size, "big")),
    }


def private_jwk_members(private_key: PrivateKey) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.private_numbers()
        return {
            "d": b64url_int(numbers.d),
            "p": b64url_int(numbers.p),
            "q": b64url_int(numbers.q),
            "dp": b64url_int(numbers.dmp1),
            "dq": b64url_int(numbers.dmq1),
            "qi": b64url_int(numbers.iqmp),
        }
    size = CURVES[private_key.curve.name][1]
    return {"d": b64url(private_key.private_numbers().private_value.to_bytes(size, "big"))}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_int(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))
