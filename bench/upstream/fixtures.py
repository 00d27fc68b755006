"""Upstream's test certificates, renewed in a scratch copy: they expired in 2021-2025.

Omejdn's suite signs client assertions with keys whose certificates
(``tests/test_resources/*.cert``, ``testClient.pem``) have expired. Its own
set-up passes anyway because its in-memory key store hands back whatever was
stored; Omejdn's file key store drops a key whose certificate has expired
(``Keys.adapt_to_cert``), and omejdn_pg refuses to store one. Renewing them —
same subject, same extensions, same key where the key is there, a validity
around today — tests what the suite means to test on any store. The trade-off:
a run with renewed certificates no longer exercises what a store does with an
expired one, which this package's own tests cover.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

RESOURCES: Final = Path("tests") / "test_resources"
PAIRS: Final = {
    "rsa.cert": "rsa.pem",
    "ec256.cert": "ec256.pem",
    "ec512.cert": "ec512.pem",
    "omejdn_test.cert": "omejdn_test.pem",
    "testClient.cert": None,
    "testClient.pem": None,
}
"""Each certificate and the file holding its private key (None: there is none)."""


def _load(data: bytes) -> tuple[x509.Certificate, bool]:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data), True
    return x509.load_der_x509_certificate(data), False


def renew(cert: x509.Certificate, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """``cert`` again, self-signed by ``key``, valid from yesterday for a year."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
    )
    for extension in cert.extensions:
        if extension.oid in (
            ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
            ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ):
            continue  # they name the old key; a self-signed renewal needs neither
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def renew_certificates(run_dir: Path) -> list[str]:
    """Renew every expired test certificate of the copy at ``run_dir``; their names."""
    now = datetime.datetime.now(datetime.UTC)
    renewed = []
    for cert_name, key_name in PAIRS.items():
        path = run_dir / RESOURCES / cert_name
        if not path.is_file():
            continue
        cert, pem = _load(path.read_bytes())
        if cert.not_valid_after_utc > now:
            continue
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if key_name is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            loaded = serialization.load_pem_private_key(
                (run_dir / RESOURCES / key_name).read_bytes(), password=None
            )
            assert isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
            key = loaded
        der = renew(cert, key)
        if pem:
            path.write_bytes(
                x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
            )
        else:
            path.write_bytes(der)
        renewed.append(cert_name)
    return renewed
