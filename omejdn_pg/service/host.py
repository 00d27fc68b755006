"""The Host: the calls Omejdn's core makes for users, clients, configuration and keys.

Every storage path the CLI and the tests take goes through the events exactly
as the server's would: finding a user is "the first non-None answer to
USER_GET", verifying a password is "the first non-None answer, else False", a
new user goes to ``user_backend_default`` as Omejdn reads it (the ``omejdn``
configuration section, then the static file). Only what Omejdn's core has no
event for — listing stored sections and key targets, the operator's key
lifecycle — asks the PostgreSQL backend directly.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection

from omejdn_pg import bootstrap, lifecycle
from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import ConfigurationError, InvalidKeyMaterial, NotFound
from omejdn_pg.host import events
from omejdn_pg.host.events import EventBus
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.keys.algorithms import weak_key_problem
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key, generate_key
from omejdn_pg.passwords import PasswordPolicy, describe_hash, too_costly
from omejdn_pg.postgres.cache.changes import publish_change
from omejdn_pg.postgres.cache.entries import USER
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.postgres.repositories.bulk import UserImport
from omejdn_pg.postgres.repositories.config import ConfigRepository, Shape
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.settings.backend import (
    BACKEND_NAME,
    PLUGIN_NAME,
    BackendSettings,
    KeyLifecycleSettings,
)


def _first(answers: Iterable[Any]) -> Any:
    return next((answer for answer in answers if answer is not None), None)


OMEJDN_SECTION = "omejdn"


def backend_default(loader: EventBus, group: str) -> str | None:
    """``<group>_backend_default`` where Omejdn's core reads it: the ``omejdn``
    configuration section (CONFIGURATION_LOAD), then the static file; None if
    neither names one (the loader then picks the sole active backend)."""
    key = f"{group}_backend_default"
    section = _first(loader.fire(events.CONFIGURATION_LOAD, section=OMEJDN_SECTION, fallback={}))
    if isinstance(section, dict) and isinstance(section.get(key), str) and section[key]:
        name: str = section[key]
        return name
    static: str | None = getattr(loader.configuration, key)
    return static


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
    def __init__(self, loader: EventBus, postgres: PostgresBackendPlugin | None = None) -> None:
        self._loader = loader
        self._postgres = postgres

    @property
    def backend_default(self) -> str | None:
        return backend_default(self._loader, "user")

    def find(self, username: str) -> User | None:
        found: User | None = _first(self._loader.fire(events.USER_GET, username=username))
        return found

    def all(self) -> list[User]:
        return [u for answer in self._loader.fire(events.USER_GET_ALL) for u in answer or ()]

    def bulk(self) -> UserImport | None:
        """PostgreSQL's set-wise import of many users (no event has it: Omejdn's core
        writes one user at a time); None unless PostgreSQL serves users."""
        postgres = self._postgres
        if postgres is None or self._own_get_all() not in self._loader.handlers(
            events.USER_GET_ALL
        ):
            return None
        return UserImport(postgres.database, postgres.policy, lambda: postgres.changed(USER, None))

    def elsewhere(self) -> list[User]:
        """Every user of the backends other than PostgreSQL (their USER_GET_ALL)."""
        own = self._own_get_all()
        return [
            user
            for handler in self._loader.handlers(events.USER_GET_ALL)
            if handler != own
            for user in handler() or ()
        ]

    def _own_get_all(self) -> Callable[..., Any] | None:
        return self._postgres.user_get_all if self._postgres is not None else None

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
        answer = _first(
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
        found: Client | None = _first(self._loader.fire(events.CLIENT_GET, client_id=client_id))
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
        found: x509.Certificate | None = _first(
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
    def __init__(self, loader: EventBus, postgres: PostgresBackendPlugin | None) -> None:
        self._loader = loader
        self._postgres = postgres

    def read(self, section: str, fallback: Any = None) -> Any:
        answer = _first(
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
        shape: Shape = "list" if list_section else "dict"
        postgres = self._postgres

        def provision(conn: Connection) -> bool:
            created = ConfigRepository(conn).provision(section, shape, replace=replace)
            if created:
                publish_change(conn, "config", (section,))  # a replaced section vanished
            return created

        created = postgres.database.write(provision)
        if created:
            postgres.changed("config", (section,))
        return created

    def sections(self) -> list[str]:
        """Sections stored in PostgreSQL, or else in the deployment's files."""
        if self._postgres is not None:
            return self._postgres.database.read(lambda conn: ConfigRepository(conn).sections())
        return FileStore(self._loader.base_dir).sections()


class Keys:
    """Omejdn's ``Keys``: JWK Sets per target, plus the operator's key lifecycle."""

    def __init__(self, loader: EventBus, postgres: PostgresBackendPlugin | None) -> None:
        self._loader = loader
        self._postgres = postgres

    def store(self, target_type: str, target: str, keys: KeySet | Iterable[Key]) -> None:
        """Replace the target's key set (``Keys.store_keys``); an empty set deletes it."""
        jwks = (keys if isinstance(keys, KeySet) else KeySet(keys)).to_jwks(private=True)
        self._loader.fire(events.KEYS_STORE, target_type=target_type, target=target, jwks=jwks)

    def load(self, target_type: str, target: str, *, create: bool = False) -> KeySet:
        """The target's keys (``Keys.load_keys``): the first answer that has any.

        With ``create``, an empty set gets a new RS256 key, stored at once — as
        Omejdn's core does for its signing key; a backend never invents keys.
        """
        answers = self._loader.fire(
            events.KEYS_LOAD, target_type=target_type, target=target, create=create
        )
        what = f"KEYS_LOAD {target_type}/{target}"
        keys = next((found for found in map(lambda a: _key_set(a, what), answers) if found), None)
        if keys is None:
            keys = KeySet()
            if create:
                keys = KeySet([generate_key("RS256")])
                self.store(target_type, target, keys)
        return keys

    def signing_key(self, target_type: str = "omejdn", target: str = "omejdn") -> Key:
        """The key Omejdn's core signs with: the first private ``sig`` key of KEYS_LOAD."""
        keys = self.load(target_type, target, create=True)
        for key in keys:
            if key.is_private and key.use == "sig":
                return key
        raise NotFound(f"keys {target_type}/{target} has no private signing key")

    def load_all(self, target_type: str) -> list[Key]:
        """Every key of ``target_type`` from every backend, once each (``Keys.load_all_keys``).

        A list, not a KeySet: the per-set limit bounds what one target may hold,
        while a type (every client's keys) may hold any number.
        """
        seen: set[str] = set()
        found = []
        for answer in self._loader.fire(events.KEYS_LOAD_ALL, target_type=target_type):
            for key in _keys_of(answer, f"KEYS_LOAD_ALL {target_type}"):
                if key.kid not in seen:
                    seen.add(key.kid)
                    found.append(key)
        return found

    def jwks(self, target_type: str) -> dict[str, Any]:
        """The public keys of ``target_type`` as a JWK Set (RFC 7517): what ``/jwks.json``
        publishes — next, active and retired keys, never a private member."""
        return {"keys": [key.to_jwk(private=False) for key in self.load_all(target_type)]}

    def targets(self, target_type: str | None = None) -> list[tuple[str, str]]:
        """Targets stored in PostgreSQL, or else in the deployment's files."""
        if self._postgres is not None:
            return self._postgres.database.read(
                lambda conn: KeyRepository(conn).targets(target_type)
            )
        return FileStore(self._loader.base_dir).key_targets(target_type)

    # --- the lifecycle (ours; stored in PostgreSQL) ---------------------------------

    def stored(self, target_type: str, target: str) -> KeySet:
        """The target's keys as stored, with private keys, states and dates (no event
        carries the lifecycle, so this reads PostgreSQL directly)."""
        postgres = self._require_postgres()
        return postgres.database.read(lambda conn: postgres.keys(conn).load(target_type, target))

    def rotate(
        self,
        target_type: str,
        target: str,
        alg: str | None = None,
        *,
        publish_for: datetime.timedelta | None = None,
        now: datetime.datetime | None = None,
        create: bool = False,
        key: Key | None = None,
        certificate: bool | None = None,
    ) -> Key:
        """Create a ``next`` key that starts signing once it has been published long enough.

        Without ``alg``, the new key has the algorithm of the signer it
        replaces (RS256 for a target with none); ``key`` is a key of the
        operator's instead (with its chain, if it has one). A target that has
        no keys is refused unless ``create``. When the signer has a chain
        and ``key`` none, the new key gets a self-signed certificate of the
        same subject, unless ``certificate`` is False; True asks for one
        whatever the signer has.
        """
        lifecycle.check_target_type(target_type)
        moment = now or _now()
        wait = publish_for if publish_for is not None else self._lifecycle.publish_for
        new_keys: list[Key] = []
        problem = (
            weak_key_problem(key) or key.certificate_problem(moment) if key is not None else None
        )
        if problem is not None:
            # As KEYS_STORE refuses it: a weak key, or an expired chain published unnoticed.
            raise InvalidKeyMaterial(f"keys {target_type}/{target}: the new key: {problem}")

        def rotate(stored: KeySet) -> list[Key]:
            if not stored and not create:
                raise _missing(target_type, target, "--create starts a new set")
            signer = lifecycle.signer(stored)
            new_key = key or generate_key(alg or (signer.alg if signer else "RS256"))
            if not new_key.certificates and certificate is not False:
                model = signer.certificates[0] if signer and signer.certificates else None
                if model is not None or certificate:
                    new_key = _self_signed(new_key, model, target)
            new_keys.append(new_key)
            return lifecycle.rotate(stored, new_key, moment, wait)

        keys = self._modify(target_type, target, rotate)
        new_key = new_keys[0]
        return next(key for key in keys if key.kid == new_key.kid)

    def activate(
        self,
        target_type: str,
        target: str,
        kid: str,
        *,
        force: bool = False,
        now: datetime.datetime | None = None,
    ) -> KeySet:
        """Make key ``kid`` the signer now; the previous signer retires. A key still in
        its publish window is refused unless ``force``."""
        moment = now or _now()
        retire_for = self.retirement_window()
        return self._modify_existing(
            target_type,
            target,
            lambda stored: lifecycle.activate(stored, kid, moment, retire_for, force=force),
        )

    def retire(
        self,
        target_type: str,
        target: str,
        kid: str,
        *,
        force: bool = False,
        now: datetime.datetime | None = None,
    ) -> KeySet:
        moment = now or _now()
        retire_for = self.retirement_window()
        return self._modify_existing(
            target_type,
            target,
            lambda stored: lifecycle.retire(stored, kid, moment, retire_for, force=force),
        )

    def delete(
        self, target_type: str, target: str, kid: str | None = None, *, force: bool = False
    ) -> KeySet:
        """Delete one key, or (``kid`` None) the target's whole set; the signer of a
        set with other keys only with ``force``."""
        if kid is None:
            self.store(target_type, target, KeySet())
            return KeySet()
        return self._modify_existing(
            target_type, target, lambda stored: lifecycle.remove(stored, kid, force=force)
        )

    def maintain(self, *, now: datetime.datetime | None = None) -> list[lifecycle.Change]:
        """Advance every transition that is due: next keys activate, expired retired keys go."""
        postgres = self._require_postgres()
        moment = now or _now()
        retire_for = self.retirement_window()
        return postgres.database.write(
            lambda conn: postgres.keys(conn).maintain(moment, retire_for)
        )

    def rewrap(self) -> dict[str, int]:
        """Seal every private key under the first configured key-encryption key, in one
        transaction: ``{previous sealer (or "plaintext"): count}``."""
        postgres = self._require_postgres()
        return postgres.database.write(lambda conn: postgres.keys(conn).rewrap())

    def sealing_report(self) -> dict[str, int]:
        """How many private keys each key-encryption key seals (``plaintext``: none)."""
        postgres = self._require_postgres()
        return postgres.database.read(lambda conn: postgres.keys(conn).sealing_report())

    def retirement_window(self) -> datetime.timedelta:
        """How long a retired key stays published (configured, or from the token lifetimes)."""
        section = _first(
            self._loader.fire(events.CONFIGURATION_LOAD, section=OMEJDN_SECTION, fallback={})
        )
        return lifecycle.retirement_window(
            section if isinstance(section, dict) else None, self._lifecycle
        )

    @property
    def _lifecycle(self) -> KeyLifecycleSettings:
        postgres = self._postgres
        if postgres is not None and postgres.settings is not None:
            return postgres.settings.key_lifecycle
        return KeyLifecycleSettings()

    def _modify(
        self, target_type: str, target: str, change: Callable[[KeySet], Sequence[Key]]
    ) -> KeySet:
        postgres = self._require_postgres()
        return postgres.database.write(
            lambda conn: postgres.keys(conn).modify(target_type, target, change)
        )

    def _modify_existing(
        self, target_type: str, target: str, change: Callable[[KeySet], Sequence[Key]]
    ) -> KeySet:
        lifecycle.check_target_type(target_type)

        def existing(stored: KeySet) -> Sequence[Key]:
            if not stored:
                raise _missing(target_type, target, "see `keys list`")
            return change(stored)

        return self._modify(target_type, target, existing)

    def _require_postgres(self) -> PostgresBackendPlugin:
        postgres = self._postgres
        if postgres is None or "keys" not in (
            postgres.settings.handlers if postgres.settings else frozenset({"keys"})
        ):
            raise ConfigurationError(
                "the key lifecycle is kept in PostgreSQL: configure the postgres_backend "
                "plugin with the 'keys' handler"
            )
        return postgres


def _missing(target_type: str, target: str, hint: str) -> NotFound:
    return NotFound(f"there is no key set {target_type}/{target} ({hint})")


def _self_signed(key: Key, model: x509.Certificate | None, target: str) -> Key:
    """``key`` with a self-signed certificate of ``model``'s subject and validity span
    (else of CN=``target``, for a year), so that a signer published with a chain
    is followed by one published with a chain."""
    from omejdn_pg.certificates import self_signed_certificate

    assert key.private_key is not None  # a key made here
    subject: str | x509.Name = model.subject if model is not None else target
    span = (
        model.not_valid_after_utc - model.not_valid_before_utc
        if model is not None
        else datetime.timedelta(days=365)
    )
    days = max(1, round(span / datetime.timedelta(days=1)))
    return replace(key, certificates=[self_signed_certificate(key.private_key, subject, days)])


def _keys_of(answer: object, what: str) -> list[Key]:
    """The keys of a KEYS_LOAD_ALL answer, however many (no per-set limit)."""
    if isinstance(answer, dict) and isinstance(answer.get("keys"), list):
        return [
            Key.from_jwk(jwk, what=f"{what}: keys[{index}]")
            for index, jwk in enumerate(answer["keys"])
        ]
    return list(_key_set(answer, what))


def _key_set(answer: object, what: str) -> KeySet:
    """A handler's answer as a key set: a JWK Set (current core) or key material (older)."""
    if answer is None:
        return KeySet()
    if isinstance(answer, KeyMaterial):
        key = answer.to_key()
        return KeySet([key] if key is not None else [])
    if isinstance(answer, list) and all(isinstance(item, KeyMaterial) for item in answer):
        return KeySet(key for item in answer if (key := item.to_key()) is not None)
    return KeySet.from_jwks(answer, what=what)  # type: ignore[arg-type]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Host:
    """What Omejdn's core sees of storage: users, clients, config and keys."""

    def __init__(self, loader: EventBus) -> None:
        self.loader = loader
        plugin = loader.plugins.get(PLUGIN_NAME)
        self.postgres = plugin if isinstance(plugin, PostgresBackendPlugin) else None
        self.users = Users(loader, self.postgres)
        self.clients = Clients(loader)
        self.config = Config(loader, self.postgres)
        self.keys = Keys(loader, self.postgres)

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
            if self.postgres is not None:
                stack.enter_context(self.postgres.database.batch())
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every PostgreSQL read inside sees one consistent snapshot of the database."""
        with ExitStack() as stack:
            if self.postgres is not None:
                stack.enter_context(self.postgres.database.snapshot())
            yield
