"""Certificates and PEM texts for the tests' keys: self-signed ones, and chains of any
length with a CA at the top."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from omejdn_pg.entities import PrivateKey


def make_cert(
    subject_key: PrivateKey, subject: str, issuer_key: PrivateKey, issuer: str, *, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def make_chain(leaf_key: PrivateKey, length: int) -> list[x509.Certificate]:
    """``[leaf, intermediate..., root]`` of ``length`` certificates, leaf first."""
    issuers = [ec.generate_private_key(ec.SECP256R1()) for _ in range(length - 1)]
    chain = []
    subject_key, subject = leaf_key, "leaf"
    for index, issuer_key in enumerate(issuers):
        issuer = f"ca{index}"
        chain.append(make_cert(subject_key, subject, issuer_key, issuer, ca=index > 0))
        subject_key, subject = issuer_key, issuer
    chain.append(make_cert(subject_key, subject, subject_key, subject, ca=length > 1))
    return chain


def pem(key: PrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def public_pem(key: PrivateKey, fmt: serialization.PublicFormat) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM, fmt).decode()


def self_signed(
    key: PrivateKey,
    name: str = "omejdn",
    *,
    valid_from: datetime.datetime | None = None,
    days: int = 30,
    key_usage: x509.KeyUsage | None = None,
) -> x509.Certificate:
    """A certificate of ``key`` signed by itself, valid for ``days`` from ``valid_from``
    (an hour ago by default, so a clock a little behind still finds it valid)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = valid_from or datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(key, hashes.SHA256())
