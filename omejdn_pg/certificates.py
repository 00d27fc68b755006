"""Self-signed certificates for keys the package makes (``omejdn-pg keys generate
--self-signed``, the new key of a rotated signer that had a chain, the example
deployment of ``examples/generate.py``), and the summary ``clients show`` and
``keys list`` print of one.

One builder serves both, so the two cannot drift apart. The trade-off of a
self-signed certificate is the usual one: nobody vouches for it, so whoever
relies on it must pin it (Omejdn publishes its certificate in the JWKS; a
client's certificate is registered with the client). Validity starts five
minutes back so that a verifier whose clock lags a little still accepts it;
the certificate is never a CA, and callers add any further extensions.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from omejdn_pg.entities import PrivateKey

CLOCK_SKEW: Final = datetime.timedelta(minutes=5)


def self_signed_certificate(
    key: PrivateKey,
    subject: str | x509.Name,
    days: int,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate of ``key`` signed by itself, valid for ``days``.

    ``subject`` is a common name or a whole name; ``extensions`` are
    ``(extension, critical)`` pairs added after ``BasicConstraints(ca=False)``.
    """
    name = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        if isinstance(subject, str)
        else subject
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def certificate_view(cert: x509.Certificate) -> dict[str, Any]:
    """What ``clients show`` and ``keys list`` say of a certificate."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }
