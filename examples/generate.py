#!/usr/bin/env python3
"""Generate the example Omejdn deployment in this folder (or in DIR).

    python examples/generate.py [DIR] [--force]

Writes Omejdn's file layout:

    config/omejdn.yml             the main configuration
    config/scope_mapping.yml      scopes -> claims (Omejdn's defaults plus one)
    config/scope_description.yml  what the consent screen says about each scope
    config/webfinger.yml          domains the WebFinger endpoint answers for
    config/users.yml              4 users: 3 with bcrypt hashes, 1 external (LDAP)
    config/clients.yml            5 clients with RFC 7591 metadata
    keys/omejdn/omejdn.<kid>.*    Omejdn's signing keys, one multi-key target:
                                  an RSA key (.key, .cert, .yml) that signs and an
                                  EC P-256 key (.key, .yml), both in the JWKS
    keys/clients/<id>.cert|.yml   the JWKS of the private_key_jwt and mTLS clients
                                  (their certificates), as Omejdn's client store keeps it
    client-keys/<id>.key          those clients' own private keys (to try the flows)

This is Omejdn's current layout ("JWKS integration"): ``.yml`` files hold each
key's descriptor (kid, use, alg); see omejdn_pg/host/files/store.py.

Existing files are kept, so a second run changes nothing and the committed
YAML stays as it is; ``--force`` regenerates everything. Every key is created
here, at run time: none is committed to the repository. The user passwords
are demo passwords, printed below; the YAML holds only their bcrypt hashes.

Needs omejdn_pg installed: its certificates are built by the same code as
those of ``omejdn-pg keys generate --self-signed``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from omejdn_pg.certificates import self_signed_certificate
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.keys.algorithms import PrivateKey
from omejdn_pg.keys.model import Key
from omejdn_pg.keys.pem import load_key_pem

ISSUER = "https://auth.example.org"

# Demo passwords of the example users (only their bcrypt hashes are written).
DEMO_PASSWORDS = {
    "admin": "admin-demo-password",
    "alice": "alice-demo-password",
    "bob": "bob-demo-password",
}

OMEJDN: dict[str, Any] = {
    "issuer": ISSUER,
    "front_url": ISSUER,
    "bind_to": "0.0.0.0:4567",
    "environment": "production",
    "openid": True,
    "default_audience": [],
    "accept_audience": [ISSUER, f"{ISSUER}/token"],
    "access_token": {"expiration": 3600, "algorithm": "RS256"},
    "id_token": {"expiration": 3600, "algorithm": "RS256"},
}

SCOPE_MAPPING: dict[str, Any] = {
    "profile": [
        "name",
        "family_name",
        "given_name",
        "middle_name",
        "nickname",
        "preferred_username",
        "profile",
        "picture",
        "website",
        "gender",
        "birthdate",
        "zoneinfo",
        "locale",
        "updated_at",
    ],
    "email": ["email", "email_verified"],
    "address": [
        "address/formatted",
        "address/street_address",
        "address/locality",
        "address/region",
        "address/postal_code",
        "address/country",
    ],
    "phone": ["phone_number", "phone_number_verified"],
    "department": ["department"],
}

SCOPE_DESCRIPTION: dict[str, Any] = {
    "omejdn:read": "Read access to the Omejdn server API",
    "omejdn:write": "Write access to the Omejdn server API",
    "omejdn:admin": "Access to the Omejdn server admin API",
    "profile": (
        "Standard profile claims (e.g.: Name, picture, website, gender, birthdate, location)"
    ),
    "email": "Email-Address",
    "address": "Address",
    "phone": "Phone-number",
    "department": "The department you work in",
}

WEBFINGER: dict[str, Any] = {"example.org": {}, "partner.example.com": {}}


def users() -> list[dict[str, Any]]:
    def hashed(name: str) -> str:
        # Omejdn (Ruby bcrypt) writes $2a$ hashes of cost 12.
        salt = bcrypt.gensalt(rounds=12, prefix=b"2a")
        return bcrypt.hashpw(DEMO_PASSWORDS[name].encode(), salt).decode("ascii")

    return [
        {
            "username": "admin",
            "password": hashed("admin"),
            "attributes": {
                "omejdn": "admin",
                "name": "Omejdn Administrator",
                "email": "admin@example.org",
                "email_verified": True,
            },
        },
        {
            "username": "alice",
            "password": hashed("alice"),
            "attributes": {
                "name": "Alice Liddell",
                "given_name": "Alice",
                "family_name": "Liddell",
                "preferred_username": "alice",
                "email": "alice@example.org",
                "email_verified": True,
                "locale": "en-GB",
                "department": "research",
                "omejdn": "write",
            },
            "consent": {"spa-frontend": ["openid", "profile", "email"]},
        },
        {
            "username": "bob",
            "password": hashed("bob"),
            "attributes": {
                "name": "Bob Baumeister",
                "given_name": "Bob",
                "family_name": "Baumeister",
                "email": "bob@example.org",
                "email_verified": False,
                "phone_number": "+49 89 1234567",
                "phone_number_verified": True,
                "address": {
                    "formatted": "Lichtenbergstr. 11, 85748 Garching, Germany",
                    "street_address": "Lichtenbergstr. 11",
                    "locality": "Garching",
                    "postal_code": "85748",
                    "country": "DE",
                },
                "department": "operations",
            },
        },
        {
            # Authenticated by the LDAP user backend; Omejdn keeps no password for it.
            "username": "carol",
            "attributes": {"name": "Carol Chen", "email": "carol@partner.example.com"},
            "extern": "ldap",
        },
    ]


def clients() -> list[dict[str, Any]]:
    return [
        {
            "client_id": "spa-frontend",
            "client_name": "Example Web App",
            "client_uri": "https://app.example.org",
            "logo_uri": "https://app.example.org/logo.png",
            "policy_uri": "https://app.example.org/privacy",
            "tos_uri": "https://app.example.org/terms",
            "contacts": ["webteam@example.org"],
            "application_type": "web",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": [
                "https://app.example.org/callback",
                "https://app.example.org/silent-renew",
            ],
            "post_logout_redirect_uris": ["https://app.example.org/"],
            "scope": ["openid", "profile", "email"],
            "resource": [f"{ISSUER}/userinfo", "https://api.example.org"],
            "attributes": {},
        },
        {
            "client_id": "mobile-app",
            "client_name": "Example Mobile",
            "application_type": "native",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": ["org.example.mobile:/oauth2redirect"],
            "scope": ["openid", "profile", "email", "phone", "address"],
            "software_id": "example-mobile",
            "software_version": "2.4.1",
            "attributes": {},
        },
        {
            "client_id": "reporting-service",
            "client_name": "Reporting Service",
            "contacts": ["ops@example.org"],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "RS256",
            "grant_types": ["client_credentials"],
            "scope": ["omejdn:read"],
            "resource": [f"{ISSUER}/api"],
            "attributes": {"omejdn": "read"},
        },
        {
            "client_id": "partner-connector",
            "client_name": "Partner Data Connector",
            "client_uri": "https://connector.partner.example.com",
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": "CN=partner-connector,O=Partner Example,C=DE",
            "tls_client_certificate_bound_access_tokens": True,
            "grant_types": ["client_credentials"],
            "scope": ["department"],
            "resource": ["https://api.example.org"],
            "attributes": {"department": "partner"},
        },
        {
            "client_id": "admin-console",
            "client_name": "Omejdn Admin Console",
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "redirect_uris": ["https://admin.example.org/callback"],
            "scope": ["openid", "omejdn:read", "omejdn:write", "omejdn:admin"],
            "resource": [f"{ISSUER}/api"],
            "attributes": {"omejdn": {"value": "admin", "dynamic": False}},
        },
    ]


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_signed(
    key: PrivateKey,
    subject: list[x509.NameAttribute[Any]],
    *,
    client: bool,
    days: int = 825,
) -> x509.Certificate:
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    signing_only = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return self_signed_certificate(
        key,
        x509.Name(subject),
        days,
        extensions=[(signing_only, True), (x509.ExtendedKeyUsage([usage]), False)],
    )


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def signing_keys() -> list[Key]:
    """Omejdn's signing keys: RSA with a certificate, then EC P-256.

    Both keep their RFC 7638 thumbprint as kid, as Omejdn's own keys do. A file
    layout has no order but its names', and Omejdn signs with the first private
    ``sig`` key, so the EC key is drawn until its kid sorts after the RSA key's:
    the RSA key (``RS256``, as ``omejdn.yml`` says) is the one that signs.
    """
    private = rsa_key()
    cert = self_signed(
        private,
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "auth.example.org"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Org"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        ],
        client=False,
    )
    signer = Key(private.public_key(), private, [cert], {"use": "sig", "alg": "RS256"})
    while True:
        other = ec_key()
        second = Key(other.public_key(), other, [], {"use": "sig", "alg": "ES256"})
        if second.kid > signer.kid:
            return [signer, second]


class Writer:
    def __init__(self, base: Path, force: bool) -> None:
        self.base = base
        self.force = force
        self.store = FileStore(base)
        self.written: list[Path] = []
        self.kept: list[Path] = []

    def wanted(self, relative: str) -> Path | None:
        path = self.base / relative
        if path.exists() and not self.force:
            self.kept.append(path)
            return None
        return path

    def write(self, path: Path, data: bytes, mode: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        self.written.append(path)

    def section(self, name: str, data: Any) -> None:
        path = self.wanted(f"config/{name}.yml")
        if path is not None:
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
            mode = 0o600 if name in ("users", "clients") else 0o644
            self.write(path, text.encode("utf-8"), mode)

    def key_set(
        self, target_type: str, target: str, make: Callable[[], list[Key]], families: list[str]
    ) -> None:
        """The target's keys, through the file store Omejdn's default plugin uses
        (``keys/<type>/<target>[.<kid>].key|.cert|.yml``); kept if they are private
        keys of ``families`` (``RSA``, ``EC-P-256``, ...), in that order."""
        existing = self.store.load_keys(target_type, target)
        same = [key.family for key in existing] == families and all(
            key.is_private for key in existing
        )
        if not self.force and same:
            self.kept.extend(self._files(target_type, target))
            return
        self.store.store_keys(target_type, target, make())
        self.written.extend(self._files(target_type, target))

    def client_key(
        self,
        client_id: str,
        make: Callable[[], PrivateKey],
        subject: list[x509.NameAttribute[Any]],
    ) -> None:
        """A client's own private key (``client-keys/<id>.key``, to try the flows) and
        its JWKS as Omejdn keeps it: the certificate, as the key set of target
        ``clients/<id>`` (``keys/clients/<id>.cert`` and ``.yml``).

        Both are (re)made together, so the certificate always matches the key.
        """
        own = self.base / "client-keys" / f"{client_id}.key"
        existing = self.store.load_keys("clients", client_id)
        if not self.force and own.exists() and len(existing) == 1:
            held = load_key_pem(own.read_bytes(), str(own))[1]
            if Key(held).same_key(existing[0]):
                self.kept.extend([own, *self._files("clients", client_id)])
                return
        private = make()
        cert = self_signed(private, subject, client=True)
        alg = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        self.write(own, private_pem(private), 0o600)
        self.store.store_keys(
            "clients", client_id, [Key(private.public_key(), None, [cert], {"alg": alg})]
        )
        self.written.extend(self._files("clients", client_id))

    def _files(self, target_type: str, target: str) -> list[Path]:
        return [
            path
            for stored in self.store.stored_keys(target_type, target)
            for path in stored.files.paths
        ]


def generate(base: Path, force: bool) -> Writer:
    writer = Writer(base, force)
    writer.section("omejdn", OMEJDN)
    writer.section("scope_mapping", SCOPE_MAPPING)
    writer.section("scope_description", SCOPE_DESCRIPTION)
    writer.section("webfinger", WEBFINGER)
    writer.section("users", users())
    writer.section("clients", clients())
    # An example generated before JWKS had the EC key as a target of its own.
    legacy = base / "keys" / "omejdn" / "es256.key"
    if legacy.exists():
        legacy.unlink()
        writer.written.append(legacy)
    writer.key_set("omejdn", "omejdn", signing_keys, ["RSA", "EC-P-256"])
    writer.client_key(
        "reporting-service",
        rsa_key,
        [x509.NameAttribute(NameOID.COMMON_NAME, "reporting-service")],
    )
    writer.client_key(
        "partner-connector",
        ec_key,
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "partner-connector"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Partner Example"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        ],
    )
    return writer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="where to write the deployment (default: the folder of this script)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate existing files too")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    writer = generate(args.directory, args.force)
    if not args.quiet:
        print(
            f"{args.directory}: {len(writer.written)} file(s) written, "
            f"{len(writer.kept)} kept as they were",
            file=sys.stderr,
        )
        if any(p.name == "users.yml" for p in writer.written):
            demo = ", ".join(f"{user}/{password}" for user, password in DEMO_PASSWORDS.items())
            print(f"demo logins: {demo}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
