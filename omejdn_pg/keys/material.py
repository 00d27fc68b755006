"""The one-key :class:`KeyMaterial` of upstream's older KEYS_* events and of the Ruby plugin.

One key per target and no descriptor, kept because the older events and the
Ruby plugin speak it; everything newer uses :class:`~omejdn_pg.keys.model.Key`
and converts at the edge (:meth:`KeyMaterial.to_key`,
:meth:`KeyMaterial.from_key`). The price is a second, smaller form of the same
data, which drops a key's descriptor and lifecycle when converted to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from omejdn_pg.errors import InvalidKeyMaterial
from omejdn_pg.keys.algorithms import PrivateKey, PublicKey, supported_public_key
from omejdn_pg.keys.jwk import chain_members, jwk_thumbprint, public_jwk_members
from omejdn_pg.keys.model import Key
from omejdn_pg.keys.pem import (
    CHAIN_SEPARATOR,
    chain_pem,
    load_certificate_chain,
    load_key_pem,
    private_der,
    public_der,
    stored_key_pem,
)


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
                self.pk = supported_public_key(self.certs[0].public_key(), "certificate")
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
            and private_der(self.sk) == private_der(other.sk)
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
        if pk is not None and certs and public_der(pk) != public_der(certs[0].public_key()):
            kind = "private key" if sk is not None else "public key"
            raise InvalidKeyMaterial(f"{what}: the {kind} does not match the first certificate")
        return material

    def key_pem(self) -> str | None:
        """The private key as unencrypted PKCS#8 PEM, else the public key, else None."""
        return stored_key_pem(self.sk, self.pk, self.certs)

    def certs_pem(self, separator: str = CHAIN_SEPARATOR) -> str:
        """The chain as PEM certificates joined by ``separator``; '' when there is none."""
        return chain_pem(self.certs, separator)

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK with ``kid``, and ``x5c``/``x5t`` for a chain."""
        if self.pk is None:
            raise InvalidKeyMaterial("key material without a public key has no JWK")
        jwk = public_jwk_members(self.pk)
        jwk["kid"] = self.kid
        jwk.update(chain_members(self.certs))
        return jwk

    def to_key(self) -> Key | None:
        """The material as a :class:`Key` (an active one); None when it is empty.

        A ``kid`` other than the thumbprint is kept in the descriptor.
        """
        if self.pk is None:
            return None
        params = {} if self.kid in (None, jwk_thumbprint(self.pk)) else {"kid": self.kid}
        return Key.build("key material", self.pk, self.sk, list(self.certs), params)

    @classmethod
    def from_key(cls, key: Key) -> KeyMaterial:
        """The one-key form of ``key``: its descriptor other than ``kid`` and its
        state have no place there and are dropped."""
        return cls(sk=key.private_key, certs=list(key.certificates), pk=key.public_key, kid=key.kid)
