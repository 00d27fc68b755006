"""The invariants of a :class:`~omejdn_pg.keys.model.Key`, checked whenever one is built.

The edges (the JWK codec, PEM loading) check everything that comes from
outside with errors that name the field; the constructor checks the cheap
invariants again (key types, key and chain match, the descriptor holds no key
member, ``use`` and ``alg`` fit the key and the certificate),
so that a Key built by hand cannot be inconsistent either. The price is a DER
encoding and a comparison per build. Not checked at all: the certificate's
validity period — an expired certificate must stay readable and publishable so
that an operator can see it and rotate the key (upstream Omejdn drops such keys
silently); :meth:`Key.certificate_problem` reports it to whoever decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg.errors import InvalidKeyMaterial
from omejdn_pg.keys.algorithms import USES, allowed_algs, key_type_problem
from omejdn_pg.keys.jwk import CHAIN_MEMBERS, KEY_MEMBERS
from omejdn_pg.keys.states import Lifecycle

if TYPE_CHECKING:
    from omejdn_pg.keys.model import Key


class KeyProblem(InvalidKeyMaterial):
    """An invariant of :class:`Key` that does not hold; the edges re-raise it
    with their own context (``JWK Set: keys[2]: ...``) instead of ``key: ...``."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"key: {problem}")
        self.problem = problem


def validate(key: Key) -> None:
    """The invariants of a Key; raises :class:`KeyProblem`."""
    public, private = key.public_key, key.private_key
    for candidate in (public, private):
        problem = key_type_problem(candidate) if candidate is not None else None
        if problem is not None:
            raise KeyProblem(problem)
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeyProblem(f"public_key is not a public key: {type(public).__name__}")
    if private is not None and not isinstance(
        private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    ):
        raise KeyProblem(f"private_key is not a private key: {type(private).__name__}")
    # cryptography compares keys by value (the modulus and exponent, the point).
    if private is not None and private.public_key() != public:
        raise KeyProblem("the private key does not match the public key")

    permitted: frozenset[str] | None = None
    for index, cert in enumerate(key.certificates):
        if not isinstance(cert, x509.Certificate):
            raise KeyProblem(
                f"certificates[{index}] is not an X.509 certificate: {type(cert).__name__}"
            )
    if key.certificates:
        first = key.certificates[0]
        try:
            held: object = first.public_key()
        except (ValueError, UnsupportedAlgorithm):
            held = None
        if not isinstance(held, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) or held != public:
            raise KeyProblem("the first certificate does not match the key")
        try:
            permitted = permitted_uses(first)
        except ValueError:
            raise KeyProblem("the first certificate's extensions cannot be read") from None
        if permitted is not None and not permitted:
            raise KeyProblem(
                "the first certificate's keyUsage permits neither signing nor encryption"
            )

    for name in key.params:
        if not isinstance(name, str):
            raise KeyProblem(f"parameter names must be strings, got {name!r}")
        if name in KEY_MEMBERS:
            raise KeyProblem(f"{name!r} is a key member, not a descriptor parameter")
        if name == "x5c" or (name in CHAIN_MEMBERS and key.certificates):
            raise KeyProblem(f"{name!r} is derived from the certificates, not a parameter")
    kid = key.params.get("kid")
    if "kid" in key.params and (not isinstance(kid, str) or not kid):
        raise KeyProblem(f"'kid' must be a non-empty string, got {kid!r}")
    use = key.params.get("use")
    if "use" in key.params and use not in USES:
        raise KeyProblem(f'\'use\' must be "sig" or "enc", got {use!r}')
    alg = key.params.get("alg")
    if "alg" in key.params and not isinstance(alg, str):
        raise KeyProblem(f"'alg' must be a string, got {alg!r}")

    use = key.use
    if permitted is not None and use not in permitted:
        raise KeyProblem(
            f"'use' {use!r} is not permitted by the first certificate's keyUsage "
            f"(it permits {' and '.join(sorted(permitted))})"
        )
    allowed = allowed_algs(key.family, use)
    if key.alg not in allowed:
        raise KeyProblem(
            f"'alg' {key.alg!r} does not fit an {key.family} key with use {use!r} "
            f"(allowed: {', '.join(allowed)})"
        )
    if not isinstance(key.lifecycle, Lifecycle):
        raise KeyProblem(f"lifecycle must be a Lifecycle, got {type(key.lifecycle).__name__}")


def permitted_uses(cert: x509.Certificate) -> frozenset[str] | None:
    """The JWK uses the certificate's keyUsage permits (RFC 5280 §4.2.1.3); None
    when it has no keyUsage extension, which restricts nothing.

    keyCertSign and cRLSign sign certificates and CRLs, not JWS: alone they
    permit no use (upstream counts them as ``sig``). encipherOnly/decipherOnly
    only qualify keyAgreement.
    """
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    uses = set()
    if usage.digital_signature or usage.content_commitment:
        uses.add("sig")
    if usage.key_encipherment or usage.data_encipherment or usage.key_agreement:
        uses.add("enc")
    return frozenset(uses)
