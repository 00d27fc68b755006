"""The key model: :class:`Key`, a key with its chain, descriptor and lifecycle, valid once built.

A :class:`Key` is a plain object — the ``cryptography`` key objects, the
certificate chain, the JWK descriptor (``params``) and the lifecycle state —
rather than a JWK dict passed around, because a dict would have to be parsed
and checked again by every layer that looks at it (the signer, the
repository, the CLI, the exporter), and would let a key whose members do not
belong together travel as far as the database. Parsed once at the edge
(:mod:`omejdn_pg.keys.jwk`, :mod:`omejdn_pg.keys.pem`), everything after the
edge can rely on the invariants (:mod:`omejdn_pg.keys.invariants`).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue
from omejdn_pg.keys.algorithms import (
    CRV,
    CURVE_OF_ALG,
    CURVES,
    ENCRYPTION_ALGS,
    RSA_ALGS,
    SUPPORTED_ALGS,
    PrivateKey,
    PublicKey,
    allowed_algs,
    supported_public_key,
)
from omejdn_pg.keys.invariants import KeyProblem, permitted_uses, validate
from omejdn_pg.keys.jwk import KEY_MEMBERS, decode_jwk, descriptor, encode_jwk, jwk_thumbprint
from omejdn_pg.keys.pem import (
    CHAIN_SEPARATOR,
    certificate_key,
    chain_pem,
    load_certificate_chain,
    load_key_pem,
    stored_key_pem,
)
from omejdn_pg.keys.states import UNDATED, KeyState, Lifecycle

_ISO = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(eq=False)
class Key:
    """One key: public key, optional private key, chain, descriptor, lifecycle.

    ``params`` is the JWK descriptor: every member that is neither a key
    member (:data:`KEY_MEMBERS`) nor derived from the chain
    (:data:`CHAIN_MEMBERS`), kept exactly as given. ``kid``, ``use`` and
    ``alg`` live there when given; the properties of the same names fill them
    in when not. The :class:`~omejdn_pg.keys.states.Lifecycle` is carried for the
    storage and the rules (:mod:`omejdn_pg.lifecycle`), not interpreted here.
    """

    public_key: PublicKey
    private_key: PrivateKey | None = None
    certificates: list[x509.Certificate] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    lifecycle: Lifecycle = UNDATED

    def __post_init__(self) -> None:
        if not isinstance(self.params, Mapping):
            raise KeyProblem(f"params must be a mapping, got {type(self.params).__name__}")
        if not isinstance(self.certificates, Sequence) or isinstance(self.certificates, str):
            raise KeyProblem("certificates must be a list of X.509 certificates")
        # Copies, so that the caller's dict or list changing later cannot
        # break invariants checked here.
        self.params = dict(self.params)
        self.certificates = list(self.certificates)
        validate(self)

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
            permitted = permitted_uses(self.certificates[0])
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
        return allowed_algs(self.family, self.use)[0]

    @property
    def family(self) -> str:
        """``RSA``, ``EC-P-256``, ``EC-P-384`` or ``EC-P-521``: keys of one family
        are interchangeable for the algorithms they serve."""
        if isinstance(self.public_key, rsa.RSAPublicKey):
            return "RSA"
        return "EC-" + CURVES[self.public_key.curve.name][0]

    @property
    def state(self) -> KeyState:
        """The state of its lifecycle, the part of it read most often."""
        return self.lifecycle.state

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
        """A key from a JWK dict (RFC 7517/7518), validated; see :mod:`omejdn_pg.keys.jwk`."""
        content = _frozen(jwk)
        if content is None:
            return cls.build(what, *decode_jwk(jwk, what))
        template = _JWKS_READ.get(content, lambda: cls.build(what, *decode_jwk(jwk, what)))
        return template.copied(UNDATED)

    def to_jwk(self, *, private: bool = True) -> dict[str, Any]:
        """The JWK: key members (private ones too if ``private`` and present),
        ``kid``/``use``/``alg`` filled in, the other params exactly as given,
        and ``x5c``/``x5t``/``x5t#S256`` for a chain."""
        return encode_jwk(self, private=private)

    # --- PEM -----------------------------------------------------------------------

    @classmethod
    def from_pem(
        cls,
        key_pem: str | bytes | None = None,
        certs_pem: str | bytes | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        what: str = "key",
        lifecycle: Lifecycle = UNDATED,
    ) -> Key:
        """A key from the stored form: a PEM key (private PKCS#8/PKCS#1/SEC1 or
        public), a PEM chain (any separator), and the descriptor."""
        described = _frozen({} if params is None else params)
        if described is None or not isinstance(lifecycle, Lifecycle):
            return _read_pem(key_pem, certs_pem, params, what, lifecycle)
        template = _PEMS_READ.get(
            (key_pem, certs_pem, described),
            lambda: _read_pem(key_pem, certs_pem, params, what, UNDATED),
        )
        return template.copied(lifecycle)

    def key_pem(self) -> str | None:
        """The private key as unencrypted PKCS#8 PEM; else the public key (SPKI
        PEM) when there is no certificate; else None (the certificate has it)."""
        return stored_key_pem(self.private_key, self.public_key, self.certificates)

    def certs_pem(self, separator: str = CHAIN_SEPARATOR) -> str:
        """The chain as PEM certificates joined by ``separator``; '' when there is none."""
        return chain_pem(self.certificates, separator)

    # --- the rest --------------------------------------------------------------------

    def copied(self, lifecycle: Lifecycle) -> Key:
        """This key with ``lifecycle``, its params and chain copied; not checked again:
        its invariants hold for a copy, and of the lifecycle only its type is one."""
        if not isinstance(lifecycle, Lifecycle):
            raise KeyProblem(f"lifecycle must be a Lifecycle, got {type(lifecycle).__name__}")
        copied = object.__new__(Key)
        copied.__dict__.update(
            self.__dict__,
            params={
                name: value if type(value) is str else copy.deepcopy(value)
                for name, value in self.params.items()
            },
            certificates=list(self.certificates),
            lifecycle=lifecycle,
        )
        return copied

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
        return bool(self.public_key == other.public_key)

    @classmethod
    def build(
        cls,
        what: str,
        public: PublicKey,
        private: PrivateKey | None,
        certificates: list[x509.Certificate],
        params: dict[str, Any],
        lifecycle: Lifecycle = UNDATED,
    ) -> Key:
        """A key from parts an edge has read, its invariants' errors prefixed with ``what``."""
        try:
            return cls(
                public_key=public,
                private_key=private,
                certificates=certificates,
                params=params,
                lifecycle=lifecycle,
            )
        except KeyProblem as exc:
            raise InvalidKeyMaterial(f"{what}: {exc.problem}") from None


def generate_key(
    alg: str = "RS256",
    params: Mapping[str, Any] | None = None,
    *,
    lifecycle: Lifecycle = UNDATED,
) -> Key:
    """A new signing key for ``alg``: RSA 2048 (e 65537) for RS*/PS*, the
    matching curve for ES256/ES384/ES512; ``params`` get ``use: sig`` and ``alg``."""
    private: PrivateKey
    if alg in RSA_ALGS:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg in CURVE_OF_ALG:
        private = ec.generate_private_key(CRV[CURVE_OF_ALG[alg]][0]())
    else:
        raise InvalidKeyMaterial(
            f"cannot generate a key for alg {alg!r}; supported: {', '.join(SUPPORTED_ALGS)}"
        )
    descriptor = {"use": "sig", "alg": alg, **(params or {})}
    if descriptor["alg"] != alg:
        raise InvalidKeyMaterial(
            f"generated key: params say alg {descriptor['alg']!r}, but {alg!r} was asked for"
        )
    return Key.build(
        "generated key",
        private.public_key(),
        private,
        [],
        descriptor,
        lifecycle=lifecycle,
    )


# Keys read before, by the content they were read from. Omejdn stores back the
# sets it loaded (a client saved with its JWKS, the signing set at start), and a
# KEYS_STORE reads the stored set to merge with, so the same JWKs and PEM rows
# are read over and over: base64 and DER decoding, cryptography's objects and
# the invariants, some 25 us a key each time. A changed key is different
# content, read afresh; only members made of strings are remembered, so that
# the content is cheap to compare and a copy shares nothing mutable. Failures
# are not remembered.
_Content = tuple[tuple[str, str | tuple[str, ...]], ...]


def _frozen(members: object) -> _Content | None:
    """``members`` as a hashable value; None if it is not a mapping or any member is not a
    string (x5c: strings)."""
    if not isinstance(members, Mapping):
        return None
    frozen: list[tuple[str, str | tuple[str, ...]]] = []
    for name, value in members.items():
        if type(name) is not str:
            return None
        if type(value) is str:
            frozen.append((name, value))
        elif name == "x5c" and type(value) is list and all(type(v) is str for v in value):
            frozen.append((name, tuple(value)))
        else:
            return None
    return tuple(frozen)


class _ReadBefore:
    """The last keys read, by their content; the least recently used is forgotten first."""

    def __init__(self, size: int = 64) -> None:
        self._keys: OrderedDict[Hashable, Key] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, content: Hashable, read: Callable[[], Key]) -> Key:
        """The key read from ``content`` before, else ``read()`` (remembered if it returns)."""
        with self._lock:
            key = self._keys.get(content)
            if key is not None:
                self._keys.move_to_end(content)
                return key
        key = read()
        with self._lock:
            self._keys[content] = key
            if len(self._keys) > self._size:
                self._keys.popitem(last=False)
        return key


_JWKS_READ: Final = _ReadBefore()
_PEMS_READ: Final = _ReadBefore()


def _read_pem(
    key_pem: str | bytes | None,
    certs_pem: str | bytes | None,
    params: Mapping[str, Any] | None,
    what: str,
    lifecycle: Lifecycle,
) -> Key:
    private: PrivateKey | None = None
    public: PublicKey | None = None
    if key_pem:
        private, public = load_key_pem(key_pem, what)
    certificates = load_certificate_chain(certs_pem, what) if certs_pem else []
    if public is None:
        if not certificates:
            raise InvalidKeyMaterial(f"{what}: neither a key nor a certificate")
        public = supported_public_key(certificate_key(certificates[0], what), what)
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidKeyMaterial(f"{what}: params must be a mapping, got {type(params).__name__}")
    for name in params:
        if not isinstance(name, str):
            raise InvalidKeyMaterial(f"{what}: parameter names must be strings, got {name!r}")
        if name in KEY_MEMBERS or name == "x5c":
            raise InvalidKeyMaterial(
                f"{what}: {name!r} is a key member, not a descriptor parameter"
            )
    return Key.build(
        what,
        public,
        private,
        certificates,
        descriptor(params, certificates, what),
        lifecycle=lifecycle,
    )
