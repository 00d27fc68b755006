"""PEM and DER: the stored form of keys and chains, read with a size guard and a parse cache.

The expensive part of reading a key is OpenSSL's check of an RSA private key
(tens of milliseconds for 2048 bits, seconds for 8192), and KEYS_LOAD runs
for every token signed. Private keys are therefore parsed through a small
``lru_cache`` keyed by the PEM text: a given key is validated once per
process, a changed key is seen at once (the cache is keyed by content, not by
target), and failures are not cached. RSA keys above
:data:`~omejdn_pg.keys.algorithms.MAX_RSA_BITS` are refused from a cheap
unchecked parse before any of that work. The price is a parse done twice for
a new key and up to 64 parsed keys held in memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from omejdn_pg.errors import InvalidKeyMaterial
from omejdn_pg.keys.algorithms import (
    MAX_RSA_BITS,
    PrivateKey,
    PublicKey,
    supported_private_key,
    supported_public_key,
    too_large,
)

CHAIN_SEPARATOR: Final = "_"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


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
            raise InvalidKeyMaterial(too_large(what, exc.bits)) from None
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise InvalidKeyMaterial(f"{what}: not a readable unencrypted private key PEM") from exc
        private = supported_private_key(key, what)
        return private, private.public_key()
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKeyMaterial(f"{what}: not a private or public key in PEM form") from exc
    return None, supported_public_key(public, what)


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
        supported_public_key(certificate_key(certs[0], f"{what}: certificate 1"), what)
    return certs


def certificate_key(cert: x509.Certificate, what: str) -> object:
    """The certificate's public key, whatever its type; a key OpenSSL cannot read is refused."""
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidKeyMaterial(
            f"{what}: only RSA and EC (P-256, P-384, P-521) keys are supported"
        ) from None


def stored_key_pem(
    private: PrivateKey | None, public: PublicKey | None, certificates: Sequence[x509.Certificate]
) -> str | None:
    """The key as stored: the private key as unencrypted PKCS#8 PEM; else the public
    key (SPKI PEM) when no certificate holds it; else None (the certificate has it)."""
    if private is not None:
        return private_pem(private)
    if public is not None and not certificates:
        return public_pem(public)
    return None


@lru_cache(maxsize=64)
def private_pem(key: PrivateKey) -> str:
    """The key as unencrypted PKCS#8 PEM, remembered for the key object: a set stored
    back unchanged holds the objects its keys were read into (see :mod:`omejdn_pg.keys.model`)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def chain_pem(certificates: Iterable[x509.Certificate], separator: str) -> str:
    return separator.join(
        c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates
    )


def private_der(key: PrivateKey | None) -> bytes | None:
    if key is None:
        return None
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_der(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
