"""The bench's data: rows in bulk SQL, key sets and configuration through the host.

Users and clients are the bulk (up to 100,000 users in the growth series), so
their rows go in with ``COPY`` — into ``users``, ``clients`` and
``attributes``, the rows the package itself writes for them (the run reads a
few back through USER_GET and CLIENT_GET and compares), seconds instead of
minutes. Key sets are intricate (PEM, descriptors, lifecycle columns) and
configuration sections few, so they go through the host facade inside one
``host.batch()`` transaction: KEYS_STORE for the signing set and for each
client's JWKS (target ``clients/<client_id>``, where the package keeps it),
CONFIGURATION_STORE for each section — the same events and validation as in
production, one commit.

Passwords are bcrypt hashes at cost 4 (so a login measures storage, not
bcrypt), from a small pool of distinct passwords: hashing 100,000 of them
would take longer than the rest of the run.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import bcrypt
import psycopg

from omejdn_pg import Client, Host
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.keys.states import Lifecycle
from omejdn_pg.settings.connection import ConnectionSettings

BCRYPT_COST: Final = 4
PASSWORD_POOL: Final = 32
CLIENT_COUNT: Final = 1000
JWKS_EVERY: Final = 10
"""Every 10th client has a JWKS (one ES256 key): private_key_jwt clients."""
CLIENT_KEYS: Final = "clients"
"""The key target type of a client's JWKS (target: its client_id)."""
SIGNING_TARGET: Final = ("omejdn", "omejdn")
KEYS_STORE_TARGET: Final = ("omejdn", "bench_rotation")
"""Where the KEYS_STORE case writes, so the signing set it reads stays as seeded."""

OMEJDN_SECTION: Final[dict[str, Any]] = {
    "issuer": "https://auth.example.org",
    "front_url": "https://auth.example.org",
    "bind_to": "0.0.0.0:4567",
    "environment": "production",
    "openid": True,
    "default_audience": [],
    "accept_audience": ["https://auth.example.org", "https://auth.example.org/token"],
    "access_token": {"expiration": 3600, "algorithm": "RS256"},
    "id_token": {"expiration": 3600, "algorithm": "RS256"},
    "user_backend_default": "postgres",
}
SCOPE_MAPPING_SECTION: Final[dict[str, Any]] = {
    "profile": ["name", "family_name", "given_name", "preferred_username", "locale"],
    "email": ["email", "email_verified"],
    "address": ["address/formatted", "address/locality", "address/country"],
    "phone": ["phone_number", "phone_number_verified"],
    "department": ["department"],
}
WEBFINGER_SECTION: Final[dict[str, Any]] = {"example.org": {}, "partner.example.com": {}}
SECTIONS: Final = {
    "omejdn": OMEJDN_SECTION,
    "scope_mapping": SCOPE_MAPPING_SECTION,
    "webfinger": WEBFINGER_SECTION,
}


def username(index: int) -> str:
    return f"user{index:06d}"


def password(index: int) -> str:
    return f"bench-password-{index % PASSWORD_POOL}"


def client_id(index: int) -> str:
    return f"client{index:04d}"


def user_attributes(index: int) -> dict[str, Any]:
    """Five attributes, as Omejdn's admin API or an import would store them."""
    return {
        "name": f"User {index}",
        "email": f"{username(index)}@example.org",
        "email_verified": index % 3 != 0,
        "omejdn": "admin" if index % 1000 == 0 else "user",
        "locale": ("en-GB", "de-DE", "fr-FR")[index % 3],
    }


@dataclass(frozen=True)
class PasswordHashes:
    """bcrypt hashes (cost 4) of the password pool."""

    hashes: tuple[str, ...]

    @classmethod
    def make(cls) -> PasswordHashes:
        return cls(
            tuple(
                bcrypt.hashpw(password(i).encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
                for i in range(PASSWORD_POOL)
            )
        )

    def of(self, index: int) -> str:
        return self.hashes[index % PASSWORD_POOL]


def seed_users(
    settings: ConnectionSettings, start: int, stop: int, hashes: PasswordHashes
) -> float:
    """Users ``start`` to ``stop - 1`` by COPY, in one transaction; returns seconds."""
    began = time.perf_counter()
    with psycopg.connect(settings.conninfo()) as conn, conn.cursor() as cur:
        with cur.copy("COPY users (username, password, consent) FROM STDIN") as copy:
            for index in range(start, stop):
                copy.write_row((username(index), hashes.of(index), "{}"))
        with cur.copy("COPY attributes (type, identifier, key, value) FROM STDIN") as copy:
            for index in range(start, stop):
                name = username(index)
                for key, value in user_attributes(index).items():
                    copy.write_row(("user", name, key, json.dumps(value)))
        cur.execute("ANALYZE users")
        cur.execute("ANALYZE attributes")
    return time.perf_counter() - began


def seed_clients(settings: ConnectionSettings, clients: Iterable[Client]) -> float:
    """The clients' metadata and attribute rows by COPY (not their keys); returns seconds."""
    began = time.perf_counter()
    with psycopg.connect(settings.conninfo()) as conn, conn.cursor() as cur:
        items = list(clients)
        with cur.copy("COPY clients (client_id, key, value) FROM STDIN") as copy:
            for item in items:
                for key, value in item.metadata.items():
                    if key != "jwks":
                        copy.write_row((item.client_id, key, json.dumps(value)))
        with cur.copy("COPY attributes (type, identifier, key, value) FROM STDIN") as copy:
            for item in items:
                for key, value in item.attributes.items():
                    copy.write_row(("client", item.client_id, key, json.dumps(value)))
        cur.execute("ANALYZE clients")
    return time.perf_counter() - began


def client(index: int) -> Client:
    identifier = client_id(index)
    metadata: dict[str, Any] = {
        "client_id": identifier,
        "client_name": f"Client {index}",
        "application_type": "web",
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [f"https://{identifier}.example.org/callback"],
        "scope": ["openid", "profile", "email"],
    }
    if index % JWKS_EVERY == 0:
        metadata["token_endpoint_auth_method"] = "private_key_jwt"
        metadata["jwks"] = KeySet([generate_key("ES256")]).to_jwks(private=False)
    return Client(metadata=metadata, attributes={"tier": ("gold", "silver")[index % 2]})


def clients() -> list[Client]:
    return [client(index) for index in range(CLIENT_COUNT)]


def signing_keys() -> KeySet:
    """Omejdn's signing set mid-rotation: the active RS256 key and its published successor."""
    now = datetime.datetime.now(datetime.UTC)
    return KeySet(
        [
            generate_key("RS256"),
            generate_key(
                "RS256", lifecycle=Lifecycle("next", activate_at=now + datetime.timedelta(days=2))
            ),
        ]
    )


def seed_host(host: Host, clients: Iterable[Client], keys: KeySet) -> float:
    """The clients' JWKS, the signing key sets and the sections, in one batch; seconds."""
    began = time.perf_counter()
    with host.batch():
        for item in clients:
            if "jwks" in item.metadata:
                host.keys.store(
                    CLIENT_KEYS, item.client_id, KeySet.from_jwks(item.metadata["jwks"])
                )
        host.keys.store(*SIGNING_TARGET, keys)
        host.keys.store(*KEYS_STORE_TARGET, keys)
        for section, data in SECTIONS.items():
            host.config.write(section, data)
    return time.perf_counter() - began
