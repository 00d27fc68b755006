"""The Host: the calls Omejdn's core makes for users, clients, configuration and keys.

Every storage path the CLI and the tests take goes through the events exactly
as the server's would: finding a user is "the first non-None answer to
USER_GET", verifying a password is "the first non-None answer, else False", a
new user goes to ``user_backend_default`` as Omejdn reads it (the ``omejdn``
configuration section, then the static file). Only what Omejdn's core has no
event for — listing stored sections and key targets, the operator's key
lifecycle and sealing, provisioning a section, the set-wise import of users —
asks the PostgreSQL backend, and then through its operator surface
(:class:`~omejdn_pg.postgres.admin.Admin`), never its repositories: a stored
private key is read here exactly as the plugin reads it, with its keyring.
The Host adds no wiring of its own; :mod:`omejdn_pg.bootstrap` builds the
loader it wraps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from omejdn_pg import bootstrap
from omejdn_pg.entities import Client, User
from omejdn_pg.errors import ConfigurationError
from omejdn_pg.host import events
from omejdn_pg.host.events import EventBus
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.passwords import PasswordPolicy, describe_hash, too_costly
from omejdn_pg.postgres.admin import Admin
from omejdn_pg.service.core import backend_default, first
from omejdn_pg.service.keys import Keys
from omejdn_pg.settings.backend import BACKEND_NAME, BackendSettings

if TYPE_CHECKING:
    from omejdn_pg.postgres.database.unit_of_work import Database
    from omejdn_pg.postgres.plugin import PostgresBackendPlugin
    from omejdn_pg.postgres.repositories.bulk import UserImport


@dataclass(frozen=True)
class HashReport:
    kinds: dict[str, int]
    """``{"bcrypt cost 12": 1200, "argon2id": 3, "none": 4}``."""
    upgrading: int
    """Hashes the next successful login replaces (another scheme, a lower cost)."""
    refused: int
    """bcrypt hashes above the cost limit: logins against them always fail."""

    @property
    def total(self) -> int:
        return sum(self.kinds.values())


class Users:
    def __init__(self, loader: EventBus, postgres: Admin | None = None) -> None:
        self._loader = loader
        self._postgres = postgres

    @property
    def backend_default(self) -> str | None:
        return backend_default(self._loader, "user")

    def find(self, username: str) -> User | None:
        found: User | None = first(self._loader.fire(events.USER_GET, username=username))
        return found

    def all(self) -> list[User]:
        return [u for answer in self._loader.fire(events.USER_GET_ALL) for u in answer or ()]

    def bulk(self) -> UserImport | None:
        """PostgreSQL's set-wise import of many users (no event has it: Omejdn's core
        writes one user at a time); None unless PostgreSQL serves users."""
        postgres = self._postgres
        if postgres is None or not any(
            map(postgres.owns, self._loader.handlers(events.USER_GET_ALL))
        ):
            return None
        return postgres.user_import()

    def elsewhere(self) -> list[User]:
        """Every user of the backends other than PostgreSQL (their USER_GET_ALL)."""
        postgres = self._postgres
        return [
            user
            for handler in self._loader.handlers(events.USER_GET_ALL)
            if postgres is None or not postgres.owns(handler)
            for user in handler() or ()
        ]

    def add(self, user: User, backend: str | None = None) -> None:
        """Create ``user`` in ``backend``, by default the one Omejdn would choose."""
        self._loader.fire(
            events.USER_CREATE, user=user, user_backend=backend or self.backend_default
        )

    def save(self, user: User) -> None:
        self._loader.fire(events.USER_UPDATE, user=user)

    def delete(self, username: str) -> None:
        self._loader.fire(events.USER_DELETE, username=username)

    def verify_password(self, user: User, password: str) -> bool:
        answer = first(
            self._loader.fire(
                events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=user, password=password
            )
        )
        return bool(answer)

    def hash_report(self, policy: PasswordPolicy | None = None) -> HashReport:
        """Stored password hashes counted by scheme and cost — never a hash itself —
        and how many the next successful login will upgrade under ``policy``."""
        kinds: dict[str, int] = {}
        example: dict[str, str] = {}
        for user in self.all():
            kind = describe_hash(user.password)
            kinds[kind] = kinds.get(kind, 0) + 1
            if user.password and kind not in example:
                example[kind] = user.password
        policy = policy or PasswordPolicy()
        upgrading = {
            kind
            for kind, stored in example.items()
            if policy.is_hash(stored) and policy.needs_update(stored) and not too_costly(stored)
        }
        return HashReport(
            kinds=dict(sorted(kinds.items())),
            upgrading=sum(kinds[kind] for kind in upgrading),
            refused=sum(
                count
                for kind, count in kinds.items()
                if kind in example and too_costly(example[kind])
            ),
        )

    def update_password(self, user: User, password: str) -> None:
        self._loader.fire(events.USER_AUTHENTICATION_PASSWORD_CHANGE, user=user, password=password)


class Clients:
    def __init__(self, loader: EventBus) -> None:
        self._loader = loader

    @property
    def backend_default(self) -> str | None:
        return backend_default(self._loader, "client")

    def find(self, client_id: str) -> Client | None:
        found: Client | None = first(self._loader.fire(events.CLIENT_GET, client_id=client_id))
        return found

    def all(self) -> list[Client]:
        return [c for answer in self._loader.fire(events.CLIENT_GET_ALL) for c in answer or ()]

    def add(self, client: Client, backend: str | None = None) -> None:
        self._loader.fire(
            events.CLIENT_CREATE, client=client, client_backend=backend or self.backend_default
        )

    def save(self, client: Client) -> None:
        self._loader.fire(events.CLIENT_UPDATE, client=client)

    def delete(self, client_id: str) -> None:
        self._loader.fire(events.CLIENT_DELETE, client_id=client_id)

    def certificate(self, client: Client) -> x509.Certificate | None:
        """The client's certificate: the first of its JWKS's chains (or, for a backend
        of the core before JWKS, its certificate event's answer)."""
        found: x509.Certificate | None = first(
            self._loader.fire(events.CLIENT_AUTHENTICATION_CERTIFICATE_GET, client=client)
        )
        if found is not None:
            return found
        keys = KeySet.from_jwks(client.metadata.get("jwks"), what=f"client {client.client_id}")
        return next((key.certificates[0] for key in keys if key.certificates), None)

    def set_certificate(self, client: Client, certificate: x509.Certificate | None) -> None:
        """Make ``certificate`` the client's only key (in its JWKS), or remove its keys."""
        if self._loader.handlers(events.CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE):
            self._loader.fire(
                events.CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE,
                client=client,
                new_cert=certificate,
            )
            return
        keys = KeySet()
        if certificate is not None:
            keys = KeySet([Key.from_pem(None, certificate.public_bytes(Encoding.PEM))])
        client.metadata["jwks"] = keys.to_jwks(private=False)
        self.save(client)


class Config:
    def __init__(self, loader: EventBus, postgres: Admin | None) -> None:
        self._loader = loader
        self._postgres = postgres

    def read(self, section: str, fallback: Any = None) -> Any:
        answer = first(
            self._loader.fire(events.CONFIGURATION_LOAD, section=section, fallback=fallback)
        )
        return fallback if answer is None else answer

    def write(self, section: str, data: Any) -> None:
        self._loader.fire(events.CONFIGURATION_STORE, section=section, data=data)

    def create(self, section: str, *, list_section: bool = False, replace: bool = False) -> bool:
        """Provision an empty section in PostgreSQL ahead of its first write (run as the
        schema owner, for servers with DML rights only); False if it exists already."""
        if self._postgres is None:
            raise ConfigurationError("sections are provisioned in PostgreSQL only")
        return self._postgres.provision_section(
            section, "list" if list_section else "dict", replace=replace
        )

    def sections(self) -> list[str]:
        """Sections stored in PostgreSQL, or else in the deployment's files."""
        if self._postgres is not None:
            return self._postgres.sections()
        return FileStore(self._loader.base_dir).sections()


class Host:
    """What Omejdn's core sees of storage: users, clients, config and keys."""

    def __init__(self, loader: EventBus) -> None:
        self.loader = loader
        self.admin = Admin.of(loader)
        """What operators need of PostgreSQL beyond the events; None without it."""
        self.postgres: PostgresBackendPlugin | None = self.admin.plugin if self.admin else None
        self.users = Users(loader, self.admin)
        self.clients = Clients(loader)
        self.config = Config(loader, self.admin)
        self.keys = Keys(loader, self.admin)

    def __repr__(self) -> str:
        return (
            f"Host(plugins={sorted(self.loader.plugins)}, base_dir={str(self.loader.base_dir)!r})"
        )

    @classmethod
    def from_files(
        cls,
        paths: Iterable[str | os.PathLike[str]],
        *,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> Host:
        return cls(bootstrap.from_files(paths, base_dir=base_dir))

    @classmethod
    def from_env(cls, *, base_dir: str | os.PathLike[str] | None = None) -> Host:
        return cls(bootstrap.from_env(base_dir=base_dir))

    @classmethod
    def from_settings(
        cls,
        settings: BackendSettings,
        *,
        defaults: frozenset[str] = frozenset(),
        base_dir: str | os.PathLike[str] | None = None,
        user_backend_default: str = BACKEND_NAME,
        client_backend_default: str = BACKEND_NAME,
        database: Database | None = None,
    ) -> Host:
        """A host whose postgres backend uses ``settings`` (or an open ``database``),
        with only the default file plugins named in ``defaults``
        (:func:`omejdn_pg.bootstrap.from_settings`)."""
        return cls(
            bootstrap.from_settings(
                settings,
                defaults=defaults,
                base_dir=base_dir,
                user_backend_default=user_backend_default,
                client_backend_default=client_backend_default,
                database=database,
            )
        )

    def close(self) -> None:
        self.loader.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every PostgreSQL write inside is one transaction: all of them, or none."""
        with ExitStack() as stack:
            if self.admin is not None:
                stack.enter_context(self.admin.batch())
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every PostgreSQL read inside sees one consistent snapshot of the database."""
        with ExitStack() as stack:
            if self.admin is not None:
                stack.enter_context(self.admin.snapshot())
            yield
