"""The domain objects Omejdn's events carry: User, Client, KeyMaterial.

Plain dataclasses, free of SQLAlchemy, so the host and the handlers never hold
a live ORM object (no session can leak out, no lazy load can surprise). Their
``from_dict``/``to_dict`` speak Omejdn's YAML form, which is also what the
file-based default plugins and the import/export commands read and write.

Attributes are accepted as a mapping (Omejdn 2) or as a list of
``{key, value}`` (older files) and are always kept as a mapping: the Ruby
plugin's habit of returning the list form is what made an update of a read
user destroy its attributes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg import passwords
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def normalize_attributes(attributes: object, owner: str = "attributes") -> dict[str, Any]:
    """Attributes as a mapping, from a mapping or a list of ``{key, value}``."""
    if attributes is None:
        return {}
    if isinstance(attributes, Mapping):
        result = dict(attributes)
    elif isinstance(attributes, list):
        result = {}
        for index, item in enumerate(attributes):
            if not isinstance(item, Mapping) or "key" not in item:
                raise InvalidValue(f"{owner}[{index}] must be a mapping with 'key' and 'value'")
            result[item["key"]] = item.get("value")
    else:
        raise InvalidValue(
            f"{owner} must be a mapping or a list of {{key, value}}, "
            f"got {type(attributes).__name__}"
        )
    for key in result:
        if not isinstance(key, str):
            raise InvalidValue(f"{owner}: attribute names must be strings, got {key!r}")
    return result


@dataclass
class User:
    username: str
    password: str | None = None
    """A hash in modular crypt format (never plaintext), or None (e.g. external users)."""
    attributes: dict[str, Any] = field(default_factory=dict)
    extern: str | None = None
    consent: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None

    def __repr__(self) -> str:
        hidden = "None" if self.password is None else "'<hash>'"
        return (
            f"User(username={self.username!r}, password={hidden}, "
            f"attributes={self.attributes!r}, extern={self.extern!r}, "
            f"consent={self.consent!r}, backend={self.backend!r})"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, backend: str | None = None) -> User:
        """A user from Omejdn's YAML form; a plaintext password is hashed on the way in."""
        username = data.get("username")
        if not isinstance(username, str) or not username:
            raise InvalidValue(f"a user needs a non-empty string 'username', got {username!r}")
        password = data.get("password")
        if password is not None and not isinstance(password, str):
            raise InvalidValue(f"user {username!r}: 'password' must be a string")
        extern = data.get("extern")
        if extern is not None and not isinstance(extern, str):
            raise InvalidValue(f"user {username!r}: 'extern' must be a string")
        consent = data.get("consent") or {}
        if not isinstance(consent, Mapping):
            raise InvalidValue(f"user {username!r}: 'consent' must be a mapping")
        return cls(
            username=username,
            password=passwords.string_to_pass_hash(password) if password else None,
            attributes=normalize_attributes(
                data.get("attributes"), f"user {username!r}: attributes"
            ),
            extern=extern,
            consent=dict(consent),
            backend=backend if backend is not None else data.get("backend"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Omejdn's YAML form (without ``backend``, which is where it lives, not what it is)."""
        result: dict[str, Any] = {"username": self.username}
        if self.password is not None:
            result["password"] = self.password
        result["attributes"] = dict(self.attributes)
        if self.extern is not None:
            result["extern"] = self.extern
        if self.consent:
            result["consent"] = dict(self.consent)
        return result


@dataclass
class Client:
    metadata: dict[str, Any]
    """RFC 7591 client metadata, ``client_id`` included; never ``backend``."""
    attributes: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None

    def __post_init__(self) -> None:
        client_id = self.metadata.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            raise InvalidValue(f"a client needs a non-empty string 'client_id', got {client_id!r}")

    def __repr__(self) -> str:
        shown = {
            k: ("<secret>" if k == "client_secret" and v is not None else v)
            for k, v in self.metadata.items()
        }
        return (
            f"Client(metadata={shown!r}, attributes={self.attributes!r}, backend={self.backend!r})"
        )

    @property
    def client_id(self) -> str:
        client_id: str = self.metadata["client_id"]
        return client_id

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, backend: str | None = None) -> Client:
        """A client from Omejdn's YAML form: metadata fields plus ``attributes``."""
        metadata = {k: v for k, v in data.items() if k not in ("attributes", "backend")}
        client_id = metadata.get("client_id")
        return cls(
            metadata=metadata,
            attributes=normalize_attributes(
                data.get("attributes"), f"client {client_id!r}: attributes"
            ),
            backend=backend if backend is not None else data.get("backend"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.metadata, "attributes": dict(self.attributes)}


# --- key material ---------------------------------------------------------------

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
CHAIN_SEPARATOR = "_"


@dataclass
class KeyMaterial:
    """A key pair and/or certificate chain of one target (e.g. the token signer).

    ``pk`` is derived from the first certificate or else the private key, and
    ``kid`` is the RFC 7638 JWK thumbprint of ``pk``, unless given.
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
            return self.sk.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode("ascii")
        if self.pk is not None and not self.certs:
            return self.pk.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii")
        return None

    def certs_pem(self, separator: str = CHAIN_SEPARATOR) -> str:
        """The chain as PEM certificates joined by ``separator``; '' when there is none."""
        return separator.join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.certs
        )

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


def load_key_pem(pem: str | bytes, what: str = "key") -> tuple[PrivateKey | None, PublicKey]:
    """A private key (PKCS#8, PKCS#1 or SEC1) or a public key from one PEM block."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if b"PRIVATE KEY-----" in data:
        try:
            key = _parse_private_key(data)
        except (ValueError, TypeError) as exc:
            raise InvalidKeyMaterial(f"{what}: not a readable unencrypted private key PEM") from exc
        private = _supported_private_key(key, what)
        return private, private.public_key()
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
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
    return serialization.load_pem_private_key(data, password=None)


def load_certificate_chain(
    text: str | bytes, what: str = "certificate chain"
) -> list[x509.Certificate]:
    """Certificates from PEM blocks joined by anything (``_``, newlines, nothing)."""
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
        _supported_public_key(cert.public_key(), f"{what}: certificate {index + 1}")
        certs.append(cert)
    return certs


def jwk_thumbprint(public_key: PublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public key."""
    members = _public_jwk_members(public_key)
    required = ("e", "kty", "n") if members["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({k: members[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


_CURVES = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}


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


def _supported_private_key(key: object, what: str) -> PrivateKey:
    if isinstance(key, rsa.RSAPrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _CURVES
    ):
        return key
    raise InvalidKeyMaterial(f"{what}: only RSA and EC (P-256, P-384, P-521) keys are supported")


def _supported_public_key(key: object, what: str) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey) or (
        isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES
    ):
        return key
    raise InvalidKeyMaterial(f"{what}: only RSA and EC (P-256, P-384, P-521) keys are supported")


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


def users_from_dicts(items: Iterable[Mapping[str, Any]], backend: str | None = None) -> list[User]:
    return [User.from_dict(item, backend=backend) for item in items]


def clients_from_dicts(
    items: Sequence[Mapping[str, Any]], backend: str | None = None
) -> list[Client]:
    return [Client.from_dict(item, backend=backend) for item in items]
