"""Keys and key sets: the vocabulary of KEYS_STORE / KEYS_LOAD, free of SQL and events.

A :class:`Key` is a plain object — the ``cryptography`` key objects, the
certificate chain, the JWK descriptor (``params``) and the lifecycle state —
and a :class:`KeySet` is a list of them, convertible to and from a JWK Set
dict. They are plain objects rather than JWK dicts passed around because a
dict would have to be parsed and checked again by every layer that looks at
it (the signer, the repository, the CLI, the exporter), and would let a key
whose members do not belong together travel as far as the database. Parsed
once at the edge, everything after the edge can rely on the invariants.

What is validated, and when:

- At the edges (:meth:`Key.from_jwk`, :meth:`KeySet.from_jwks`,
  :meth:`Key.from_pem`), everything that comes from outside: member types and
  encodings, curve membership, the consistency of private and public members,
  that the first certificate holds the key, ``x5t``/``x5t#S256`` against the
  chain, ``use`` against the certificate's keyUsage (RFC 5280 §4.2.1.3),
  ``alg`` against the key. Errors name the field (``JWK Set: keys[2]: 'n' is
  not base64url``) and never quote key material.
- In the constructor, the cheap invariants again (key types, key and chain
  match, the descriptor holds no key member, state and dates), so that a Key
  built by hand cannot be inconsistent either.
- Not at all: the certificate's validity period. An expired certificate must
  stay readable and publishable so that an operator can see it and rotate
  the key (upstream Omejdn drops such keys silently);
  :meth:`Key.certificate_problem` reports it to whoever decides.

Reading is tolerant where being strict would only lose keys that other
producers really write — base64url with padding or leading zero octets,
an RSA key given by ``d`` alone (RFC 7518 §6.3.2), thumbprints in upstream
Omejdn's hex-based encoding, JWE algorithms on ``use: enc`` keys — and
writing is always canonical, so a JWK this module wrote round-trips exactly.

The expensive part is OpenSSL's check of an RSA private key (tens of
milliseconds for 2048 bits, seconds for 8192), and KEYS_LOAD runs for every
token signed. Private keys are therefore parsed through small ``lru_cache``\\ s
keyed by the PEM text or the JWK members' values: a given key is validated
once per process, a changed key is seen at once (the cache is keyed by
content, not by target), and failures are not cached. RSA keys above
:data:`MAX_RSA_BITS` and sets above :attr:`KeySet.MAX_KEYS` keys are refused
before any of that work, so a hostile JWK Set cannot pin a CPU.

RSA keys below :func:`min_rsa_bits` (2048 unless ``OMEJDN_PG_MIN_RSA_BITS``
says otherwise) are refused where a key enters — KEYS_STORE of either store,
a client's JWKS, ``keys import``, ``keys generate``, an import — by
:func:`weak_key_problem`, but read wherever they already are: a stored
RSA-1024 key stays loadable and publishable, so that it can be seen and
rotated, and storing a set back unchanged does not fail on it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Literal, TypeAlias, overload

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg.errors import ConfigurationError, InvalidKeyMaterial, InvalidValue

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

KeyState: TypeAlias = Literal["next", "active", "retired"]
KEY_STATES: Final[tuple[KeyState, ...]] = ("next", "active", "retired")

MAX_RSA_BITS: Final = 8192
"""Larger RSA keys are refused: validating one costs seconds of CPU per load."""
MIN_RSA_BITS: Final = 2048
"""Smaller RSA keys are refused where they enter (NIST SP 800-131A, RFC 7518 §3.3)."""
MIN_RSA_BITS_VARIABLE: Final = "OMEJDN_PG_MIN_RSA_BITS"
"""Overrides :data:`MIN_RSA_BITS` for the service and the CLI alike (1024 to 8192)."""

CHAIN_SEPARATOR: Final = "_"

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

KEY_MEMBERS: Final = frozenset(
    ("kty", "n", "e", "d", "p", "q", "dp", "dq", "qi", "oth", "crv", "x", "y")
)
"""JWK members that are the key itself; everything else is the descriptor (``params``)."""

CHAIN_MEMBERS: Final = frozenset(("x5c", "x5t", "x5t#S256"))
"""JWK members derived from :attr:`Key.certificates`, never kept in ``params``."""

_RSA_PRIVATE: Final = ("d", "p", "q", "dp", "dq", "qi")
_DESCRIBED: Final = ("kid", "use", "alg")

# curve name (cryptography) -> (JWK crv, coordinate bytes)
_CURVES: Final = {
    "secp256r1": ("P-256", 32),
    "secp384r1": ("P-384", 48),
    "secp521r1": ("P-521", 66),
}
# JWK crv -> (curve, coordinate bytes, field prime, JWS alg)
_CRV: Final[dict[str, tuple[type[ec.EllipticCurve], int, int, str]]] = {
    "P-256": (ec.SECP256R1, 32, 2**256 - 2**224 + 2**192 + 2**96 - 1, "ES256"),
    "P-384": (ec.SECP384R1, 48, 2**384 - 2**128 - 2**96 + 2**32 - 1, "ES384"),
    "P-521": (ec.SECP521R1, 66, 2**521 - 1, "ES512"),
}
_CURVE_OF_ALG: Final = {alg: crv for crv, (_, _, _, alg) in _CRV.items()}

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_B64URL = re.compile(r"[A-Za-z0-9_-]*(={0,2})")
_ISO = "%Y-%m-%dT%H:%M:%SZ"


class _KeyProblem(InvalidKeyMaterial):
    """An invariant of :class:`Key` that does not hold; the edges re-raise it
    with their own context (``JWK Set: keys[2]: ...``) instead of ``key: ...``."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"key: {problem}")
        self.problem = problem


@dataclass(eq=False)
class Key:
    """One key: public key, optional private key, chain, descriptor, lifecycle.

    ``params`` is the JWK descriptor: every member that is neither a key
    member (:data:`KEY_MEMBERS`) nor derived from the chain
    (:data:`CHAIN_MEMBERS`), kept exactly as given. ``kid``, ``use`` and
    ``alg`` live there when given; the properties of the same names fill them
    in when not. The dates are carried for the storage, not interpreted here.
    """

    public_key: PublicKey
    private_key: PrivateKey | None = None
    certificates: list[x509.Certificate] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    state: KeyState = "active"
    created_at: datetime | None = None
    activate_at: datetime | None = None
    retired_at: datetime | None = None
    destroy_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.params, Mapping):
            raise _KeyProblem(f"params must be a mapping, got {type(self.params).__name__}")
        if not isinstance(self.certificates, Sequence) or isinstance(self.certificates, str):
            raise _KeyProblem("certificates must be a list of X.509 certificates")
        # Copies, so that the caller's dict or list changing later cannot
        # break invariants checked here.
        self.params = dict(self.params)
        self.certificates = list(self.certificates)
        for name in ("created_at", "activate_at", "retired_at", "destroy_at"):
            setattr(self, name, _utc(getattr(self, name), name))
        _validate(self)

    # --- derived descriptor -------------------------------------------------------

    @property
    def kid(self) -> str:
        """``params['kid']`` if given, else the RFC 7638 thumbprint of the public key."""
        given = self.params.get("kid")
        return given if isinstance(given, str) else jwk_thumbprint(self.public_key)

    @property
    def use(self) -> str:
        """``params['use']``; else what ``alg`` implies; else the one use the
        certificate's keyUsage permits; else ``sig``."""
        given = self.params.get("use")
        if isinstance(given, str):
            return given
        alg = self.params.get("alg")
        if isinstance(alg, str):
            if alg in ENCRYPTION_ALGS["RSA"] or alg in ENCRYPTION_ALGS["EC"]:
                return "enc"
            if alg in SUPPORTED_ALGS:
                return "sig"
        if self.certificates:
            permitted = _permitted_uses(self.certificates[0])
            if permitted is not None and len(permitted) == 1:
                return next(iter(permitted))
        return "sig"

    @property
    def alg(self) -> str:
        """``params['alg']``, else the default of the key's family and use:
        RS256 / ES256 / ES384 / ES512 to sign, RSA-OAEP-256 / ECDH-ES to encrypt."""
        given = self.params.get("alg")
        if isinstance(given, str):
            return given
        return _allowed_algs(self.family, self.use)[0]

    @property
    def family(self) -> str:
        """``RSA``, ``EC-P-256``, ``EC-P-384`` or ``EC-P-521``: keys of one family
        are interchangeable for the algorithms they serve."""
        if isinstance(self.public_key, rsa.RSAPublicKey):
            return "RSA"
        return "EC-" + _CURVES[self.public_key.curve.name][0]

    @property
    def is_private(self) -> bool:
        return self.private_key is not None

    def __repr__(self) -> str:
        if isinstance(self.public_key, rsa.RSAPublicKey):
            kind = f"RSA-{self.public_key.key_size}"
        else:
            kind = self.family
        return (
            f"Key(kid={self.kid!r}, kind={kind!r}, private={'yes' if self.is_private else 'no'}, "
            f"certs={len(self.certificates)}, state={self.state!r})"
        )

    # --- JWK -----------------------------------------------------------------------

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any], *, what: str = "JWK") -> Key:
        """A key from a JWK dict (RFC 7517/7518), validated; see the module docstring."""
        if not isinstance(jwk, Mapping):
            raise InvalidKeyMaterial(
                f"{what}: a JWK must be a JSON object, got {type(jwk).__name__}"
            )
        for name in jwk:
            if not isinstance(name, str):
                raise InvalidKeyMaterial(f"{what}: member names must be strings, got {name!r}")
        certificates = _x5c(jwk["x5c"], what) if "x5c" in jwk else []
        kty = jwk.get("kty")
        private: PrivateKey | None = None
        if certificates and not any(m in jwk for m in KEY_MEMBERS - {"kty"}):
            # RFC 7517 §4.7: the certificate carries the key.
            public = _supported_public_key(
                _certificate_key(certificates[0], f"{what}: 'x5c'[0]"), f"{what}: 'x5c'[0]"
            )
            held = "RSA" if isinstance(public, rsa.RSAPublicKey) else "EC"
            if "kty" in jwk and kty != held:
                raise InvalidKeyMaterial(
                    f"{what}: 'kty' is {kty!r} but the first certificate holds an {held} key"
                )
        elif "kty" not in jwk:
            raise InvalidKeyMaterial(f"{what}: 'kty' is missing")
        elif kty == "RSA":
            public, private = _rsa_from_jwk(jwk, what)
        elif kty == "EC":
            public, private = _ec_from_jwk(jwk, what)
        else:
            raise InvalidKeyMaterial(f'{what}: \'kty\' must be "RSA" or "EC", got {kty!r}')
        params = _descriptor(jwk, certificates, what)
        return cls._build(what, public, private, certificates, params)

    def to_jwk(self, *, private: bool = True) -> dict[str, Any]:
        """The JWK: key members (private ones too if ``private`` and present),
        ``kid``/``use``/``alg`` filled in, the other params exactly as given,
        and ``x5c``/``x5t``/``x5t#S256`` for a chain."""
        jwk = _public_jwk_members(self.public_key)
        if private and self.private_key is not None:
            jwk.update(_private_jwk_members(self.private_key))
        jwk["kid"] = self.kid
        jwk["use"] = self.use
        jwk["alg"] = self.alg
        for name, value in self.params.items():
            if name not in _DESCRIBED:
                jwk[name] = copy.deepcopy(value)
        if self.certificates:
            first = self.certificates[0]
            jwk["x5c"] = [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii")
                for c in self.certificates
            ]
            jwk["x5t"] = _b64url(first.fingerprint(hashes.SHA1()))  # noqa: S303
            jwk["x5t#S256"] = _b64url(first.fingerprint(hashes.SHA256()))
        return jwk

    # --- PEM -----------------------------------------------------------------------

    @classmethod
    def from_pem(
        cls,
        key_pem: str | bytes | None = None,
        certs_pem: str | bytes | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        what: str = "key",
        state: KeyState = "active",
        created_at: datetime | None = None,
        activate_at: datetime | None = None,
        retired_at: datetime | None = None,
        destroy_at: datetime | None = None,
    ) -> Key:
        """A key from the stored form: a PEM key (private PKCS#8/PKCS#1/SEC1 or
        public), a PEM chain (any separator), and the descriptor."""
        private: PrivateKey | None = None
        public: PublicKey | None = None
        if key_pem:
            private, public = load_key_pem(key_pem, what)
        certificates = load_certificate_chain(certs_pem, what) if certs_pem else []
        if public is None:
            if not certificates:
                raise InvalidKeyMaterial(f"{what}: neither a key nor a certificate")
            public = _supported_public_key(_certificate_key(certificates[0], what), what)
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidKeyMaterial(
                f"{what}: params must be a mapping, got {type(params).__name__}"
            )
        for name in params:
            if not isinstance(name, str):
                raise InvalidKeyMaterial(f"{what}: parameter names must be strings, got {name!r}")
            if name in KEY_MEMBERS or name == "x5c":
                raise InvalidKeyMaterial(
                    f"{what}: {name!r} is a key member, not a descriptor parameter"
                )
        return cls._build(
            what,
            public,
            private,
            certificates,
            _descriptor(params, certificates, what),
            state=state,
            created_at=created_at,
            activate_at=activate_at,
            retired_at=retired_at,
            destroy_at=destroy_at,
        )

    def key_pem(self) -> str | None:
        """The private key as unencrypted PKCS#8 PEM; else the public key (SPKI
        PEM) when there is no certificate; else None (the certificate has it)."""
        if self.private_key is not None:
            return _private_pem(self.private_key)
        if not self.certificates:
            return _public_pem(self.public_key)
        return None

    def certs_pem(self, separator: str = CHAIN_SEPARATOR) -> str:
        """The chain as PEM certificates joined by ``separator``; '' when there is none."""
        return _chain_pem(self.certificates, separator)

    # --- the rest --------------------------------------------------------------------

    def public(self) -> Key:
        """A copy without the private key."""
        return dataclasses.replace(self, private_key=None, params=copy.deepcopy(self.params))

    def certificate_problem(self, now: datetime | None = None) -> str | None:
        """Why the first certificate is not valid at ``now`` (default: now), or None."""
        if not self.certificates:
            return None
        if now is not None and (now.tzinfo is None or now.utcoffset() is None):
            raise InvalidValue(f"now must be timezone-aware, got {now.isoformat()}")
        moment = datetime.now(UTC) if now is None else now
        first = self.certificates[0]
        if moment < first.not_valid_before_utc:
            return f"certificate not valid before {first.not_valid_before_utc.strftime(_ISO)}"
        if moment > first.not_valid_after_utc:
            return f"certificate expired on {first.not_valid_after_utc.strftime(_ISO)}"
        return None

    def same_key(self, other: Key) -> bool:
        """Whether both hold the same public key (whatever else differs)."""
        return _public_der(self.public_key) == _public_der(other.public_key)

    @classmethod
    def _build(
        cls,
        what: str,
        public: PublicKey,
        private: PrivateKey | None,
        certificates: list[x509.Certificate],
        params: dict[str, Any],
        **lifecycle: Any,
    ) -> Key:
        try:
            return cls(
                public_key=public,
                private_key=private,
                certificates=certificates,
                params=params,
                **lifecycle,
            )
        except _KeyProblem as exc:
            raise InvalidKeyMaterial(f"{what}: {exc.problem}") from None


class KeySet(Sequence[Key]):
    """The keys of one target (or of all targets of a type), kids unique."""

    MAX_KEYS: Final = 100
    """A larger set is refused: each key may cost a private-key validation."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self.keys: list[Key] = list(keys)
        if len(self.keys) > self.MAX_KEYS:
            raise InvalidKeyMaterial(
                f"a key set holds at most {self.MAX_KEYS} keys, got {len(self.keys)}"
            )
        seen: set[str] = set()
        for index, key in enumerate(self.keys):
            if not isinstance(key, Key):
                raise InvalidKeyMaterial(f"keys[{index}]: expected a Key, got {type(key).__name__}")
            if key.kid in seen:
                raise InvalidKeyMaterial(f"keys[{index}]: duplicate kid {key.kid!r}")
            seen.add(key.kid)

    @classmethod
    def from_jwks(
        cls, jwks: Mapping[str, Any] | Sequence[Any] | None, *, what: str = "JWK Set"
    ) -> KeySet:
        """Keys from ``{"keys": [...]}`` or a bare list of JWKs; None or ``{}`` is empty.

        Other members of the set are ignored, as RFC 7517 §5 asks.
        """
        if jwks is None:
            return cls()
        if isinstance(jwks, Mapping):
            if "keys" not in jwks:
                if jwks:
                    raise InvalidKeyMaterial(f"{what}: 'keys' is missing")
                return cls()
            items = jwks["keys"]
            if not isinstance(items, list | tuple):
                raise InvalidKeyMaterial(
                    f"{what}: 'keys' must be a list, got {type(items).__name__}"
                )
        elif isinstance(jwks, list | tuple):
            items = jwks
        else:
            raise InvalidKeyMaterial(
                f"{what}: must be a JSON object with 'keys' or a list of JWKs, "
                f"got {type(jwks).__name__}"
            )
        if len(items) > cls.MAX_KEYS:
            raise InvalidKeyMaterial(
                f"{what}: {len(items)} keys, more than the {cls.MAX_KEYS} a set may hold"
            )
        keys: list[Key] = []
        first_index: dict[str, int] = {}
        for index, item in enumerate(items):
            key = Key.from_jwk(item, what=f"{what}: keys[{index}]")
            if key.kid in first_index:
                raise InvalidKeyMaterial(
                    f"{what}: keys[{index}]: duplicate kid {key.kid!r} "
                    f"(also keys[{first_index[key.kid]}])"
                )
            first_index[key.kid] = index
            keys.append(key)
        return cls(keys)

    def to_jwks(self, *, private: bool = True) -> dict[str, Any]:
        return {"keys": [key.to_jwk(private=private) for key in self.keys]}

    def by_kid(self, kid: str) -> Key | None:
        return next((key for key in self.keys if key.kid == kid), None)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)

    @overload
    def __getitem__(self, index: int) -> Key: ...
    @overload
    def __getitem__(self, index: slice) -> KeySet: ...
    def __getitem__(self, index: int | slice) -> Key | KeySet:
        if isinstance(index, slice):
            return KeySet(self.keys[index])
        return self.keys[index]

    def __repr__(self) -> str:
        return f"KeySet({self.keys!r})"


def generate_key(
    alg: str = "RS256",
    params: Mapping[str, Any] | None = None,
    *,
    state: KeyState = "active",
    created_at: datetime | None = None,
    activate_at: datetime | None = None,
    retired_at: datetime | None = None,
    destroy_at: datetime | None = None,
) -> Key:
    """A new signing key for ``alg``: RSA 2048 (e 65537) for RS*/PS*, the
    matching curve for ES256/ES384/ES512; ``params`` get ``use: sig`` and ``alg``."""
    private: PrivateKey
    if alg in RSA_ALGS:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg in _CURVE_OF_ALG:
        private = ec.generate_private_key(_CRV[_CURVE_OF_ALG[alg]][0]())
    else:
        raise InvalidKeyMaterial(
            f"cannot generate a key for alg {alg!r}; supported: {', '.join(SUPPORTED_ALGS)}"
        )
    descriptor = {"use": "sig", "alg": alg, **(params or {})}
    if descriptor["alg"] != alg:
        raise InvalidKeyMaterial(
            f"generated key: params say alg {descriptor['alg']!r}, but {alg!r} was asked for"
        )
    return Key._build(
        "generated key",
        private.public_key(),
        private,
        [],
        descriptor,
        state=state,
        created_at=created_at,
        activate_at=activate_at,
        retired_at=retired_at,
        destroy_at=destroy_at,
    )


# --- the one-key form of the older API ----------------------------------------------


@dataclass
class KeyMaterial:
    """A key pair and/or certificate chain of one target (e.g. the token signer).

    The form of upstream's older KEYS_* events and of the Ruby plugin: one key
    per target, no descriptor. ``pk`` is derived from the first certificate or
    else the private key, and ``kid`` is the RFC 7638 JWK thumbprint of ``pk``,
    unless given. :meth:`to_key` / :meth:`from_key` convert to and from :class:`Key`.
    """

    sk: PrivateKey | None = None
    certs: list[x509.Certificate] = field(default_factory=list)
    pk: PublicKey | None = None
    kid: str | None = None

    def __post_init__(self) -> None:
        if self.pk is None:
            if self.certs:
                self.pk = _supported_public_key(self.certs[0].public_key(), "certificate")
            elif self.sk is not None:
                self.pk = self.sk.public_key()
        if self.kid is None and self.pk is not None:
            self.kid = jwk_thumbprint(self.pk)

    def __repr__(self) -> str:
        kind = type(self.pk).__name__ if self.pk is not None else None
        return (
            f"KeyMaterial(kid={self.kid!r}, private_key={self.sk is not None}, "
            f"certs={len(self.certs)}, public_key={kind})"
        )

    @property
    def is_empty(self) -> bool:
        return self.sk is None and not self.certs and self.pk is None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyMaterial):
            return NotImplemented
        return (
            self.kid == other.kid
            and _private_der(self.sk) == _private_der(other.sk)
            and [c.public_bytes(serialization.Encoding.DER) for c in self.certs]
            == [c.public_bytes(serialization.Encoding.DER) for c in other.certs]
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_pem(
        cls,
        key_pem: str | bytes | None = None,
        certs_pem: str | bytes | None = None,
        *,
        what: str = "key material",
    ) -> KeyMaterial:
        """Material from PEM text: a private key (PKCS#8, PKCS#1 or SEC1) or a
        public key, and a certificate chain (PEMs, any separator between them)."""
        sk: PrivateKey | None = None
        pk: PublicKey | None = None
        if key_pem:
            sk, pk = load_key_pem(key_pem, what)
        certs = load_certificate_chain(certs_pem, what) if certs_pem else []
        material = cls(sk=sk, certs=certs, pk=None if certs or sk else pk)
        # A public-only key must match too: it would otherwise be dropped silently.
        if pk is not None and certs and _public_der(pk) != _public_der(certs[0].public_key()):
            kind = "private key" if sk is not None else "public key"
            raise InvalidKeyMaterial(f"{what}: the {kind} does not match the first certificate")
        return material

    def key_pem(self) -> str | None:
        """The private key as unencrypted PKCS#8 PEM, else the public key, else None."""
        if self.sk is not None:
            return _private_pem(self.sk)
        if self.pk is not None and not self.certs:
            return _public_pem(self.pk)
        return None

    def certs_pem(self, separator: str = CHAIN_SEPARATOR) -> str:
        """The chain as PEM certificates joined by ``separator``; '' when there is none."""
        return _chain_pem(self.certs, separator)

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK with ``kid``, and ``x5c``/``x5t`` for a chain."""
        if self.pk is None:
            raise InvalidKeyMaterial("key material without a public key has no JWK")
        jwk = _public_jwk_members(self.pk)
        jwk["kid"] = self.kid
        if self.certs:
            jwk["x5c"] = [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii")
                for c in self.certs
            ]
            jwk["x5t"] = _b64url(self.certs[0].fingerprint(hashes.SHA1()))  # noqa: S303
            jwk["x5t#S256"] = _b64url(self.certs[0].fingerprint(hashes.SHA256()))
        return jwk

    def to_key(self) -> Key | None:
        """The material as a :class:`Key` (an active one); None when it is empty.

        A ``kid`` other than the thumbprint is kept in the descriptor.
        """
        if self.pk is None:
            return None
        params = {} if self.kid in (None, jwk_thumbprint(self.pk)) else {"kid": self.kid}
        return Key._build("key material", self.pk, self.sk, list(self.certs), params)

    @classmethod
    def from_key(cls, key: Key) -> KeyMaterial:
        """The one-key form of ``key``: its descriptor other than ``kid`` and its
        state have no place there and are dropped."""
        return cls(sk=key.private_key, certs=list(key.certificates), pk=key.public_key, kid=key.kid)


# --- PEM --------------------------------------------------------------------------


class _TooLarge(Exception):
    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.bits = bits


def load_key_pem(pem: str | bytes, what: str = "key") -> tuple[PrivateKey | None, PublicKey]:
    """A private key (PKCS#8, PKCS#1 or SEC1) or a public key from one PEM block."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if b"PRIVATE KEY-----" in data:
        try:
            key = _parse_private_key(data)
        except _TooLarge as exc:
            raise InvalidKeyMaterial(_too_large(what, exc.bits)) from None
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise InvalidKeyMaterial(f"{what}: not a readable unencrypted private key PEM") from exc
        private = _supported_private_key(key, what)
        return private, private.public_key()
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKeyMaterial(f"{what}: not a private or public key in PEM form") from exc
    return None, _supported_public_key(public, what)


@lru_cache(maxsize=64)
def _parse_private_key(data: bytes) -> object:
    """Parse (and validate) an unencrypted private key PEM, remembering recent ones.

    OpenSSL checks an RSA key's primes on every load, which costs tens of
    milliseconds — and KEYS_LOAD runs whenever a token is signed. The stored
    PEM still comes from the database on every load, so a rotated key is seen
    at once; only the parsing of an unchanged PEM is saved. Key objects are
    immutable, so sharing them between loads and threads is safe. Failures are
    not cached.
    """
    # The size is known before the costly check only from an unchecked parse,
    # which is cheap; the checked parse below is the one whose key is used.
    unchecked = serialization.load_pem_private_key(
        data, password=None, unsafe_skip_rsa_key_validation=True
    )
    if isinstance(unchecked, rsa.RSAPrivateKey) and unchecked.key_size > MAX_RSA_BITS:
        raise _TooLarge(unchecked.key_size)
    return serialization.load_pem_private_key(data, password=None)


def load_certificate_chain(
    text: str | bytes, what: str = "certificate chain"
) -> list[x509.Certificate]:
    """Certificates from PEM blocks joined by anything (``_``, newlines, nothing).

    Only the first certificate's key must be one this package supports: it is
    the key; the issuers' keys are never used here, so their type is not checked.
    """
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data)]
    certificate_blocks = [b for b in blocks if b.startswith(b"-----BEGIN CERTIFICATE-----")]
    if data.strip(b" \t\r\n_") and not certificate_blocks:
        raise InvalidKeyMaterial(f"{what}: no PEM certificate found")
    if len(certificate_blocks) != len(blocks):
        raise InvalidKeyMaterial(f"{what}: a certificate chain may hold only CERTIFICATE blocks")
    certs = []
    for index, block in enumerate(certificate_blocks):
        try:
            cert = x509.load_pem_x509_certificate(block)
        except ValueError as exc:
            raise InvalidKeyMaterial(f"{what}: certificate {index + 1} is not valid") from exc
        certs.append(cert)
    if certs:
        _supported_public_key(_certificate_key(certs[0], f"{what}: certificate 1"), what)
    return certs


def jwk_thumbprint(public_key: PublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public key."""
    members = _public_jwk_members(public_key)
    required = ("e", "kty", "n") if members["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({k: members[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


# --- validation -----------------------------------------------------------------------


def _validate(key: Key) -> None:
    """The invariants of a Key; raises :class:`_KeyProblem`."""
    public, private = key.public_key, key.private_key
    for candidate in (public, private):
        problem = _key_type_problem(candidate) if candidate is not None else None
        if problem is not None:
            raise _KeyProblem(problem)
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _KeyProblem(f"public_key is not a public key: {type(public).__name__}")
    if private is not None and not isinstance(
        private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    ):
        raise _KeyProblem(f"private_key is not a private key: {type(private).__name__}")
    if private is not None and _public_der(private.public_key()) != _public_der(public):
        raise _KeyProblem("the private key does not match the public key")

    permitted: frozenset[str] | None = None
    for index, cert in enumerate(key.certificates):
        if not isinstance(cert, x509.Certificate):
            raise _KeyProblem(
                f"certificates[{index}] is not an X.509 certificate: {type(cert).__name__}"
            )
    if key.certificates:
        first = key.certificates[0]
        try:
            held: object = first.public_key()
        except (ValueError, UnsupportedAlgorithm):
            held = None
        if not isinstance(held, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) or _public_der(
            held
        ) != _public_der(public):
            raise _KeyProblem("the first certificate does not match the key")
        try:
            permitted = _permitted_uses(first)
        except ValueError:
            raise _KeyProblem("the first certificate's extensions cannot be read") from None
        if permitted is not None and not permitted:
            raise _KeyProblem(
                "the first certificate's keyUsage permits neither signing nor encryption"
            )

    for name in key.params:
        if not isinstance(name, str):
            raise _KeyProblem(f"parameter names must be strings, got {name!r}")
        if name in KEY_MEMBERS:
            raise _KeyProblem(f"{name!r} is a key member, not a descriptor parameter")
        if name == "x5c" or (name in CHAIN_MEMBERS and key.certificates):
            raise _KeyProblem(f"{name!r} is derived from the certificates, not a parameter")
    kid = key.params.get("kid")
    if "kid" in key.params and (not isinstance(kid, str) or not kid):
        raise _KeyProblem(f"'kid' must be a non-empty string, got {kid!r}")
    use = key.params.get("use")
    if "use" in key.params and use not in USES:
        raise _KeyProblem(f'\'use\' must be "sig" or "enc", got {use!r}')
    alg = key.params.get("alg")
    if "alg" in key.params and not isinstance(alg, str):
        raise _KeyProblem(f"'alg' must be a string, got {alg!r}")

    use = key.use
    if permitted is not None and use not in permitted:
        raise _KeyProblem(
            f"'use' {use!r} is not permitted by the first certificate's keyUsage "
            f"(it permits {' and '.join(sorted(permitted))})"
        )
    allowed = _allowed_algs(key.family, use)
    if key.alg not in allowed:
        raise _KeyProblem(
            f"'alg' {key.alg!r} does not fit an {key.family} key with use {use!r} "
            f"(allowed: {', '.join(allowed)})"
        )
    if key.state not in KEY_STATES:
        raise _KeyProblem(f"state must be one of {', '.join(KEY_STATES)}, got {key.state!r}")


def _utc(value: object, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise _KeyProblem(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time is ambiguous; guessing a zone would shift lifecycle dates.
        raise _KeyProblem(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


def _permitted_uses(cert: x509.Certificate) -> frozenset[str] | None:
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


def _allowed_algs(family: str, use: str) -> tuple[str, ...]:
    """The algorithms a key of ``family`` may serve for ``use``, the default first."""
    if use == "enc":
        return ENCRYPTION_ALGS["RSA" if family == "RSA" else "EC"]
    if family == "RSA":
        return RSA_ALGS
    return (_CRV[family.removeprefix("EC-")][3],)


def _descriptor(
    members: Mapping[str, Any], certificates: list[x509.Certificate], what: str
) -> dict[str, Any]:
    """The params of a JWK: members other than the key's and the chain's,
    deep-copied so that the caller's dict and the key share nothing."""
    params: dict[str, Any] = {}
    for name, value in members.items():
        if name in KEY_MEMBERS or name == "x5c":
            continue
        if name in ("x5t", "x5t#S256") and certificates:
            _check_thumbprint(name, value, certificates[0], what)
            continue
        # Without a chain a thumbprint names a certificate held elsewhere
        # (x5u, a registry): a parameter like any other.
        params[name] = copy.deepcopy(value)
    return params


def _check_thumbprint(name: str, value: object, cert: x509.Certificate, what: str) -> None:
    if not isinstance(value, str):
        raise InvalidKeyMaterial(f"{what}: {name!r} must be a string, got {type(value).__name__}")
    digest = cert.fingerprint(hashes.SHA1() if name == "x5t" else hashes.SHA256())  # noqa: S303
    padded = base64.urlsafe_b64encode(digest).decode("ascii")
    # Upstream Omejdn (adapt_to_cert) writes base64url of the *hex* digest,
    # padded; its key files carry that form, so it is recognised on import
    # (and written back correctly).
    legacy = base64.urlsafe_b64encode(digest.hex().encode("ascii")).decode("ascii")
    if value not in (padded.rstrip("="), padded, legacy, legacy.rstrip("=")):
        raise InvalidKeyMaterial(f"{what}: {name!r} does not match the first certificate of 'x5c'")


def _x5c(value: object, what: str) -> list[x509.Certificate]:
    if not isinstance(value, list | tuple) or not value:
        raise InvalidKeyMaterial(f"{what}: 'x5c' must be a non-empty list of base64 certificates")
    certificates = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidKeyMaterial(
                f"{what}: 'x5c'[{index}] must be a string, got {type(item).__name__}"
            )
        try:
            # x5c is standard base64 (RFC 7517 §4.7), not base64url.
            der = binascii.a2b_base64(item.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            raise InvalidKeyMaterial(f"{what}: 'x5c'[{index}] is not base64") from None
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise InvalidKeyMaterial(
                f"{what}: 'x5c'[{index}] is not a DER X.509 certificate"
            ) from None
    return certificates


def _certificate_key(cert: x509.Certificate, what: str) -> object:
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidKeyMaterial(
            f"{what}: only RSA and EC (P-256, P-384, P-521) keys are supported"
        ) from None


def _rsa_from_jwk(jwk: Mapping[str, Any], what: str) -> tuple[PublicKey, PrivateKey | None]:
    for name in ("crv", "x", "y"):
        if name in jwk:
            raise InvalidKeyMaterial(f"{what}: {name!r} is not a member of an RSA key")
    if "oth" in jwk:
        raise InvalidKeyMaterial(f"{what}: multi-prime RSA keys ('oth') are not supported")
    n = _uint(jwk, "n", what)
    if n.bit_length() > MAX_RSA_BITS:
        raise InvalidKeyMaterial(_too_large(what, n.bit_length()))
    e = _uint(jwk, "e", what)
    try:
        public = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise InvalidKeyMaterial(f"{what}: 'n' and 'e' are not a valid RSA public key") from None
    given = [name for name in _RSA_PRIVATE if name in jwk]
    if not given:
        return public, None
    if "d" not in jwk:
        raise InvalidKeyMaterial(f"{what}: 'd' is missing (private members {given} need it)")
    values = {name: _uint(jwk, name, what) if name in jwk else None for name in _RSA_PRIVATE}
    if ("p" in jwk) != ("q" in jwk):
        raise InvalidKeyMaterial(f"{what}: 'p' and 'q' go together")
    if "p" not in jwk and any(name in jwk for name in ("dp", "dq", "qi")):
        raise InvalidKeyMaterial(f"{what}: 'dp', 'dq' and 'qi' need 'p' and 'q'")
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
            f"{what}: the private members do not form one RSA key with 'n' and 'e'"
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
    """The validated private key of these members, remembered (see _parse_private_key)."""
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


def _ec_from_jwk(jwk: Mapping[str, Any], what: str) -> tuple[PublicKey, PrivateKey | None]:
    for name in ("n", "e", "p", "q", "dp", "dq", "qi", "oth"):
        if name in jwk:
            raise InvalidKeyMaterial(f"{what}: {name!r} is not a member of an EC key")
    if "crv" not in jwk:
        raise InvalidKeyMaterial(f"{what}: 'crv' is missing")
    crv = jwk["crv"]
    if not isinstance(crv, str) or crv not in _CRV:
        raise InvalidKeyMaterial(f"{what}: 'crv' must be P-256, P-384 or P-521, got {crv!r}")
    curve, size, prime, _ = _CRV[crv]
    x = _uint(jwk, "x", what, size)
    y = _uint(jwk, "y", what, size)
    # OpenSSL would reduce a coordinate modulo the prime: another spelling of
    # the same point, which would not round-trip and would dodge kid checks.
    for name, value in (("x", x), ("y", y)):
        if value >= prime:
            raise InvalidKeyMaterial(f"{what}: {name!r} is not a {crv} coordinate")
    try:
        public = ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
    except ValueError:
        raise InvalidKeyMaterial(
            f"{what}: the point ('x', 'y') is not on the curve {crv}"
        ) from None
    if "d" not in jwk:
        return public, None
    d = _uint(jwk, "d", what, size)
    try:
        private = _ec_private_key(crv, d)
    except ValueError:
        raise InvalidKeyMaterial(f"{what}: 'd' is not a {crv} private key") from None
    if private.public_key().public_numbers() != public.public_numbers():
        raise InvalidKeyMaterial(f"{what}: 'd' does not match 'x' and 'y'")
    return public, private


@lru_cache(maxsize=64)
def _ec_private_key(crv: str, d: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(d, _CRV[crv][0]())


def _uint(jwk: Mapping[str, Any], name: str, what: str, max_bytes: int | None = None) -> int:
    """A base64url-encoded unsigned integer member (RFC 7518 §2, Base64urlUInt).

    Padding and leading zero octets are tolerated (some producers emit them);
    :meth:`Key.to_jwk` writes the canonical form.
    """
    if name not in jwk:
        raise InvalidKeyMaterial(f"{what}: {name!r} is missing")
    value = jwk[name]
    if not isinstance(value, str):
        raise InvalidKeyMaterial(
            f"{what}: {name!r} must be a base64url string, got {type(value).__name__}"
        )
    data = _b64url_decode(value)
    if data is None:
        raise InvalidKeyMaterial(f"{what}: {name!r} is not base64url")
    if not data:
        raise InvalidKeyMaterial(f"{what}: {name!r} is empty")
    if max_bytes is not None and len(data.lstrip(b"\0")) > max_bytes:
        raise InvalidKeyMaterial(f"{what}: {name!r} is longer than {max_bytes} bytes")
    return int.from_bytes(data, "big")


def _b64url_decode(text: str) -> bytes | None:
    match = _B64URL.fullmatch(text)
    if match is None:
        return None
    body = text[: len(text) - len(match.group(1))]
    if len(body) % 4 == 1 or (match.group(1) and len(text) % 4):
        return None
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


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


def _too_large(what: str, bits: int) -> str:
    return f"{what}: {_too_large_problem(bits)}"


def _too_large_problem(bits: int) -> str:
    return (
        f"an RSA key of {bits} bits is larger than the {MAX_RSA_BITS} bits allowed (MAX_RSA_BITS)"
    )


# --- encodings ------------------------------------------------------------------------


def _public_jwk_members(public_key: PublicKey) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": _b64url_int(numbers.n), "e": _b64url_int(numbers.e)}
    curve, size = _CURVES[public_key.curve.name]
    point = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": curve,
        "x": _b64url(point.x.to_bytes(size, "big")),
        "y": _b64url(point.y.to_bytes(size, "big")),
    }


def _private_jwk_members(private_key: PrivateKey) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.private_numbers()
        return {
            "d": _b64url_int(numbers.d),
            "p": _b64url_int(numbers.p),
            "q": _b64url_int(numbers.q),
            "dp": _b64url_int(numbers.dmp1),
            "dq": _b64url_int(numbers.dmq1),
            "qi": _b64url_int(numbers.iqmp),
        }
    size = _CURVES[private_key.curve.name][1]
    return {"d": _b64url(private_key.private_numbers().private_value.to_bytes(size, "big"))}


def _key_type_problem(key: object) -> str | None:
    """Why ``key`` is not one this package handles, or None."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return _too_large_problem(key.key_size) if key.key_size > MAX_RSA_BITS else None
    if (
        isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)
        and key.curve.name in _CURVES
    ):
        return None
    return "only RSA and EC (P-256, P-384, P-521) keys are supported"


def _supported_private_key(key: object, what: str) -> PrivateKey:
    problem = _key_type_problem(key)
    if problem is not None or not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidKeyMaterial(f"{what}: {problem or 'not a private key'}")
    return key


def _supported_public_key(key: object, what: str) -> PublicKey:
    problem = _key_type_problem(key)
    if problem is not None or not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidKeyMaterial(f"{what}: {problem or 'not a public key'}")
    return key


def _private_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _public_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _chain_pem(certificates: Iterable[x509.Certificate], separator: str) -> str:
    return separator.join(
        c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates
    )


def _private_der(key: PrivateKey | None) -> bytes | None:
    if key is None:
        return None
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_int(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))
