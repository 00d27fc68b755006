"""The Host's keys: Omejdn's JWK Sets per target, plus the operator's key lifecycle.

``store``, ``load``, ``load_all`` and ``jwks`` fire the key events as
Omejdn's core does (``Keys.store_keys``, ``load_keys``, ``load_all_keys``).
The lifecycle — ``rotate``, ``activate``, ``retire``, ``maintain`` — and
sealing (``rewrap``, ``sealing_report``) have no event: they are kept in
PostgreSQL and reached through its operator surface
(:class:`~omejdn_pg.postgres.admin.Admin`), which reads and writes a target's
keys with the backend's keyring and the row locked; the rules themselves are
pure functions (:mod:`omejdn_pg.lifecycle`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cryptography import x509

from omejdn_pg import lifecycle
from omejdn_pg.entities import KeyMaterial
from omejdn_pg.errors import ConfigurationError, InvalidKeyMaterial, NotFound
from omejdn_pg.host import events
from omejdn_pg.host.events import EventBus
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.keys.algorithms import weak_key_problem
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key, generate_key
from omejdn_pg.postgres.admin import Admin
from omejdn_pg.service.core import omejdn_section
from omejdn_pg.settings.backend import KeyLifecycleSettings

if TYPE_CHECKING:
    pass


class Keys:
    """Omejdn's ``Keys``: JWK Sets per target, plus the operator's key lifecycle."""

    def __init__(self, loader: EventBus, postgres: Admin | None) -> None:
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
            return self._postgres.key_targets(target_type)
        return FileStore(self._loader.base_dir).key_targets(target_type)

    # --- the lifecycle (ours; stored in PostgreSQL) ---------------------------------

    def stored(self, target_type: str, target: str) -> KeySet:
        """The target's keys as stored, with private keys, states and dates (no event
        carries the lifecycle, so this reads PostgreSQL directly)."""
        return self._require_postgres().stored_keys(target_type, target)

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
        return self._change_one(lifecycle.activate, target_type, target, kid, force, now)

    def retire(
        self,
        target_type: str,
        target: str,
        kid: str,
        *,
        force: bool = False,
        now: datetime.datetime | None = None,
    ) -> KeySet:
        """Retire key ``kid`` now: it stays published for the retirement window."""
        return self._change_one(lifecycle.retire, target_type, target, kid, force, now)

    def _change_one(
        self,
        rule: Callable[..., list[Key]],
        target_type: str,
        target: str,
        kid: str,
        force: bool,
        now: datetime.datetime | None,
    ) -> KeySet:
        """Apply a lifecycle rule that changes one key, dated by this run, to a stored set."""
        moment = now or _now()
        retire_for = self.retirement_window()
        return self._modify_existing(
            target_type,
            target,
            lambda stored: rule(stored, kid, moment, retire_for, force=force),
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
        return postgres.maintain_keys(now or _now(), self.retirement_window())

    def rewrap(self) -> dict[str, int]:
        """Seal every private key under the first configured key-encryption key, in one
        transaction: ``{previous sealer (or "plaintext"): count}``."""
        return self._require_postgres().rewrap()

    def sealing_report(self) -> dict[str, int]:
        """How many private keys each key-encryption key seals (``plaintext``: none)."""
        return self._require_postgres().sealing_report()

    def retirement_window(self) -> datetime.timedelta:
        """How long a retired key stays published (configured, or from the token lifetimes)."""
        return lifecycle.retirement_window(omejdn_section(self._loader), self._lifecycle)

    @property
    def _lifecycle(self) -> KeyLifecycleSettings:
        postgres = self._postgres
        return postgres.key_lifecycle if postgres is not None else KeyLifecycleSettings()

    def _modify(
        self, target_type: str, target: str, change: Callable[[KeySet], Sequence[Key]]
    ) -> KeySet:
        return self._require_postgres().modify_keys(target_type, target, change)

    def _modify_existing(
        self, target_type: str, target: str, change: Callable[[KeySet], Sequence[Key]]
    ) -> KeySet:
        lifecycle.check_target_type(target_type)

        def existing(stored: KeySet) -> Sequence[Key]:
            if not stored:
                raise _missing(target_type, target, "see `keys list`")
            return change(stored)

        return self._modify(target_type, target, existing)

    @property
    def kept_in_postgres(self) -> bool:
        """Whether PostgreSQL keeps the keys (and so their lifecycle and sealing)."""
        return self._postgres is not None and self._postgres.serves("keys")

    def _require_postgres(self) -> Admin:
        postgres = self._postgres
        if postgres is None or not postgres.serves("keys"):
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
