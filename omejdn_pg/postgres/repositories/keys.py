"""Key sets: several keys per ``(target_type, target)``, with descriptors and lifecycle.

A key is one or two rows of ``keys`` sharing ``(target_type, target, kid)``:
its PEM key (private PKCS#8, or the public key when there is neither a
private key nor a chain) and its chain (PEM certificates joined by ``_``).
The first key of the set in lifecycle order — the one that signs — is stored
as ``sk``/``certs``, exactly the rows Omejdn's Ruby plugin reads and writes;
every further key as ``extra_sk``/``extra_certs``, which it ignores. A Ruby
Omejdn sharing the database therefore sees the signing key of every target,
and a target with one key is the same two rows it always was. Rows the Ruby
plugin writes carry ``kid = ''`` and default descriptor columns; they read as
an active key whose kid is its RFC 7638 thumbprint.

Every write replaces the target's rows in the caller's transaction behind a
transaction-scoped advisory lock: the set is read, changed in Python (the
lifecycle rules are pure functions, :mod:`omejdn_pg.lifecycle`) and written
back whole. Sets are small (:attr:`KeySet.MAX_KEYS`), so rewriting one costs
less than reasoning about partial updates, and a reader — one statement, one
snapshot — never sees half of a change.

With a keyring (setting ``key_encryption``), private keys are sealed as they
are written and opened as they are read (:mod:`omejdn_pg.sealing`); each
sealed value is bound to ``(target_type, target, kid, "sk")`` — the row kind
without its ``extra_`` prefix, since a key changes between ``sk`` and
``extra_sk`` as the lifecycle reorders the set. Public keys and chains are
never sealed: they are published anyway.

Reads are single statements. Parsing is strict: a stored PEM that cannot be
read raises InvalidKeyMaterial naming the target instead of being skipped,
because silently missing a signing key is worse than a clear error.
Orderings use the "C" collation, so they agree with Python's ``sorted``
whatever the database's locale.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import marshal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, or_, select

from omejdn_pg import lifecycle
from omejdn_pg.errors import ConfigurationError, InvalidKeyMaterial, located
from omejdn_pg.json_values import check_json, check_text
from omejdn_pg.keys.algorithms import weak_key_problem
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.keys.states import Lifecycle
from omejdn_pg.names import check_file_name
from omejdn_pg.postgres.repositories.common import ConnectionReader, Reader, lock_for_update
from omejdn_pg.postgres.schema import (
    CERTIFICATES,
    CLIENT_CERTIFICATE_TARGET_TYPE,
    EXTRA_CERTIFICATES,
    EXTRA_SECRET_KEY,
    SECRET_KEY,
    KeyRecord,
)
from omejdn_pg.sealing import PREFIX as SEALED_PREFIX
from omejdn_pg.sealing import Keyring, is_sealed, public_half, row_context, sealed_by

log = logging.getLogger(__name__)

KEYS: Final[Table] = KeyRecord.__table__  # type: ignore[assignment]
MAINTENANCE_LOCK: Final = ("keys", "maintenance")

KEY_COLUMNS: Final = (
    KEYS.c.kid,
    KEYS.c.type,
    KEYS.c.value,
    KEYS.c.params,
    KEYS.c.state,
    KEYS.c.position,
    KEYS.c.created_at,
    KEYS.c.activate_at,
    KEYS.c.retired_at,
    KEYS.c.destroy_at,
)
"""What a key is read from; the client repository aggregates the same columns."""

# The reads are built once and bound at execution: building a statement costs
# more Python time than the server spends on a primary-key lookup.
_LOAD: Final = (
    select(*KEY_COLUMNS)
    .where(KEYS.c.target_type == bindparam("target_type"), KEYS.c.target == bindparam("target"))
    .order_by(KEYS.c.position, KEYS.c.kid.collate("C"), KEYS.c.type)
)
_LOAD_ALL: Final = (
    select(KEYS.c.target, *KEY_COLUMNS)
    .where(KEYS.c.target_type == bindparam("target_type"))
    .order_by(KEYS.c.target.collate("C"), KEYS.c.position, KEYS.c.kid.collate("C"), KEYS.c.type)
)
_KEY_TYPES: Final = {SECRET_KEY: "key", EXTRA_SECRET_KEY: "key"}
_CHAIN_TYPES: Final = {CERTIFICATES: "chain", EXTRA_CERTIFICATES: "chain"}

_warned: set[tuple[str, str, str, str]] = set()


class KeyRepository:
    """Key sets per ``(target_type, target)`` on a connection the caller owns."""

    def __init__(
        self, conn: Connection, keyring: Keyring | None = None, *, allow_plaintext: bool = False
    ) -> None:
        self.conn = conn
        self.keyring = keyring if keyring is not None else Keyring()
        self.allow_plaintext = allow_plaintext
        """Write private keys in plain text even where others are sealed (see :meth:`modify`)."""

    # --- reads -------------------------------------------------------------------

    def load(self, target_type: str, target: str) -> KeySet:
        """The target's keys in lifecycle order, in one statement; empty if none."""
        return load_keys(ConnectionReader(self.conn), target_type, target, self.keyring)

    def load_all(self, target_type: str) -> list[tuple[str, KeySet]]:
        """Every target of ``target_type`` with its keys, ordered by target, in one statement."""
        return load_all_keys(ConnectionReader(self.conn), target_type, self.keyring)

    def targets(self, target_type: str | None = None) -> list[tuple[str, str]]:
        """``(target_type, target)`` of every stored key set, sorted."""
        query = select(KEYS.c.target_type, KEYS.c.target).group_by(
            KEYS.c.target_type, KEYS.c.target
        )
        if target_type is not None:
            query = query.where(KEYS.c.target_type == check_text(target_type, "target_type"))
        query = query.order_by(KEYS.c.target_type.collate("C"), KEYS.c.target.collate("C"))
        return [(row.target_type, row.target) for row in self.conn.execute(query)]

    def due(self, now: datetime.datetime) -> list[tuple[str, str]]:
        """Targets with a lifecycle transition due at ``now``, and targets holding
        more than one active private key (several signers, as versions before the
        one-signer rule could leave them; :func:`lifecycle.advance` decides)."""
        private_active = (
            (KEYS.c.state == "active")
            & KEYS.c.type.in_(_KEY_TYPES)
            & ~KEYS.c.value.startswith("-----BEGIN PUBLIC KEY-----")
        )
        query = (
            select(KEYS.c.target_type, KEYS.c.target)
            .group_by(KEYS.c.target_type, KEYS.c.target)
            .having(
                or_(
                    func.bool_or((KEYS.c.state == "next") & (KEYS.c.activate_at <= now)),
                    func.bool_or((KEYS.c.state == "retired") & (KEYS.c.destroy_at <= now)),
                    func.count().filter(private_active) > 1,
                )
            )
            .order_by(KEYS.c.target_type.collate("C"), KEYS.c.target.collate("C"))
        )
        return [(row.target_type, row.target) for row in self.conn.execute(query)]

    # --- writes ------------------------------------------------------------------

    def store(
        self,
        target_type: str,
        target: str,
        keys: KeySet | Sequence[Key],
        *,
        now: datetime.datetime | None = None,
    ) -> None:
        """Replace the target's set with ``keys``, as KEYS_STORE does; an empty set deletes it.

        A key that arrives without its private key but with the kid and public
        key of a stored private key keeps the stored one (a host storing back a
        set it loaded, whose next and retired keys came without private
        members), and a stored key keeps its lifecycle state. New keys are
        active; a new signing key whose certificate is not valid at ``now`` is
        refused, so an expired chain is never published unnoticed, and a
        client's is stored with a warning (see :func:`_refused_certificate`).
        """
        target_type, target = check_target(target_type, target)
        if not isinstance(keys, KeySet | list | tuple) or not all(
            isinstance(key, Key) for key in keys
        ):
            raise InvalidKeyMaterial(
                f"keys {target_type}/{target}: expected a key set, got {type(keys).__name__}"
            )
        incoming = list(keys)
        moment = now or _now()
        self.modify(
            target_type,
            target,
            lambda stored: merge(target_type, target, stored, incoming, moment),
        )

    def modify(
        self, target_type: str, target: str, change: Callable[[KeySet], Sequence[Key]]
    ) -> KeySet:
        """Lock the target, apply ``change`` to its stored set, write the result back."""
        target_type, target = check_target(target_type, target)
        _lock(self.conn, target_type, target)
        return self._write(target_type, target, change(self.load(target_type, target)))

    def _write(self, target_type: str, target: str, keys: Sequence[Key]) -> KeySet:
        result = KeySet(lifecycle.ordered(keys))
        rows = key_rows(target_type, target, result, self.keyring)
        self._refuse_plaintext_beside_sealed(target_type, target, rows)
        self.conn.execute(
            delete(KEYS).where(KEYS.c.target_type == target_type, KEYS.c.target == target)
        )
        if rows:
            self.conn.execute(insert(KEYS), rows)
        return result

    def _refuse_plaintext_beside_sealed(
        self, target_type: str, target: str, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """A plain private key is not written where others are sealed, unless allowed.

        Sealed keys in the table say the operator chose key encryption; a
        process without the KEK (a CLI given only ``--url``, a service whose
        plugin file lost ``key_encryption``) would otherwise store a readable
        private key beside them without a word.
        """
        if self.keyring or self.allow_plaintext:
            return
        if not any(row["type"] in _KEY_TYPES and _is_private_pem(row["value"]) for row in rows):
            return
        sealed = self.conn.execute(
            select(KEYS.c.value)
            .where(KEYS.c.type.in_(_KEY_TYPES), KEYS.c.value.startswith(SEALED_PREFIX))
            .limit(1)
        ).first()
        if sealed is not None:
            raise ConfigurationError(
                f"keys {target_type}/{target}: the database holds private keys sealed by "
                f"key-encryption key {sealed_by(sealed.value)!r}, and none is configured here, "
                "so this private key would be stored in plain text beside them; configure "
                "key_encryption (--config, or $OMEJDN_PG_KEY_ENCRYPTION with --url), or pass "
                "--allow-plaintext to store it unsealed on purpose"
            )

    def delete(self, target_type: str, target: str) -> bool:
        """Delete the target's whole set; False if nothing was stored."""
        target_type, target = check_target(target_type, target)
        _lock(self.conn, target_type, target)
        result = self.conn.execute(
            delete(KEYS).where(KEYS.c.target_type == target_type, KEYS.c.target == target)
        )
        return result.rowcount > 0

    def maintain(
        self, now: datetime.datetime, retire_for: datetime.timedelta
    ) -> list[lifecycle.Change]:
        """Advance every transition due at ``now``, across all targets.

        One advisory lock for the whole run makes concurrent runs (several
        instances on one timer) queue instead of racing; the second finds
        nothing due, so running it any number of times changes nothing more.
        """
        lock_for_update(self.conn, *MAINTENANCE_LOCK)
        changes: list[lifecycle.Change] = []
        for target_type, target in self.due(now):
            _lock(self.conn, target_type, target)
            advanced, applied = lifecycle.advance(self.load(target_type, target), now, retire_for)
            if not applied:
                continue  # several active keys, but at most one of them signs
            self._write(target_type, target, advanced)
            changes.extend(
                lifecycle.Change(target_type, target, kid, change) for kid, change in applied
            )
        return changes

    def rewrap(self) -> dict[str, int]:
        """Seal every private key under the keyring's current KEK, in the caller's
        transaction; ``{kek id: values re-sealed}`` (``plaintext`` for keys sealed
        for the first time). Interrupted, the transaction rolls back whole, so
        every value still opens with the keys that sealed it."""
        rows = self.conn.execute(
            select(KEYS.c.target_type, KEYS.c.target, KEYS.c.kid, KEYS.c.type, KEYS.c.value)
            .where(KEYS.c.type.in_(_KEY_TYPES))
            .with_for_update()
        ).all()
        done: dict[str, int] = {}
        for row in rows:
            if not (is_sealed(row.value) or _is_private_pem(row.value)):
                continue
            what = f"keys {row.target_type}/{row.target}: key {row.kid}"
            context = row_context(row.target_type, row.target, row.kid, SECRET_KEY)
            with located(what, InvalidKeyMaterial):
                # Plain, or sealed before the public half was kept with it: sealed anew,
                # with it (so that listing and publishing need no KEK).
                anew = self.keyring.current is not None and (
                    not is_sealed(row.value) or public_half(row.value) is None
                )
                pem = self.keyring.open(row.value, context) if anew else ""
                resealed = "" if anew else self.keyring.rewrap(row.value, context)
            if anew:
                key = Key.from_pem(pem, what=what)
                resealed = self.keyring.seal(pem, context, public_der(key))
            if resealed != row.value:
                origin = sealed_by(row.value) or "plaintext"
                done[origin] = done.get(origin, 0) + 1
                self.conn.execute(
                    KEYS.update()
                    .where(
                        KEYS.c.target_type == row.target_type,
                        KEYS.c.target == row.target,
                        KEYS.c.kid == row.kid,
                        KEYS.c.type == row.type,
                    )
                    .values(value=resealed)
                )
        return done

    def sealing_report(self) -> dict[str, int]:
        """How many private keys each KEK seals (``plaintext``: not sealed at all)."""
        counts: dict[str, int] = {}
        for (value,) in self.conn.execute(select(KEYS.c.value).where(KEYS.c.type.in_(_KEY_TYPES))):
            if is_sealed(value) or _is_private_pem(value):
                origin = sealed_by(value) or "plaintext"
                counts[origin] = counts.get(origin, 0) + 1
        return dict(sorted(counts.items()))


# --- reads, on any Reader (a connection, or the primary's direct read path) --------


def load_keys(
    reader: Reader, target_type: str, target: str, keyring: Keyring | None = None
) -> KeySet:
    """The target's keys in lifecycle order, in one statement; empty if none."""
    target_type, target = check_target(target_type, target)
    rows = reader.rows(_LOAD, {"target_type": target_type, "target": target})
    return keys_from_rows(target_type, target, rows, keyring)


def load_all_keys(
    reader: Reader, target_type: str, keyring: Keyring | None = None
) -> list[tuple[str, KeySet]]:
    """Every target of ``target_type`` with its keys, ordered by target, in one statement."""
    target_type = check_text(target_type, "target_type")
    grouped: dict[str, list[Any]] = {}
    for row in reader.rows(_LOAD_ALL, {"target_type": target_type}):
        grouped.setdefault(row.target, []).append(row)
    return [
        (target, keys_from_rows(target_type, target, rows, keyring))
        for target, rows in grouped.items()
    ]


def _is_private_pem(value: str) -> bool:
    return "PRIVATE KEY-----" in value


def check_target(target_type: object, target: object) -> tuple[str, str]:
    """A target can become ``keys/<target_type>/<target>.key``: refuse what could not."""
    return check_file_name(target_type, "target_type"), check_file_name(target, "target")


def merge(
    target_type: str,
    target: str,
    stored: Sequence[Key],
    incoming: Sequence[Key],
    now: datetime.datetime,
) -> list[Key]:
    """What a KEYS_STORE of ``incoming`` leaves stored, given what was ``stored``."""
    by_kid = {key.kid: key for key in stored}
    result = []
    for key in incoming:
        old = by_kid.get(key.kid)
        if old is None or not old.same_key(key):
            problem = weak_key_problem(key) or _refused_certificate(target_type, target, key, now)
            if problem is not None:
                raise InvalidKeyMaterial(f"keys {target_type}/{target}: key {key.kid}: {problem}")
            result.append(dataclasses.replace(key, lifecycle=key.lifecycle.created(now)))
            continue
        private = key.private_key if key.private_key is not None else old.private_key
        result.append(dataclasses.replace(key, private_key=private, lifecycle=old.lifecycle))
    return result


def _refused_certificate(
    target_type: str, target: str, key: Key, now: datetime.datetime
) -> str | None:
    """Why a new key's certificate makes the store refuse it, or None (a client's: warned).

    The two kinds of key set differ in who relies on the certificate. The
    server's own keys (``omejdn``) sign every token, and their chain is
    published in ``/jwks.json`` for relying parties to check: an expired or
    not yet valid chain there breaks every verifier that looks at ``x5c``,
    so it is refused where it enters and the operator learns it at once.
    A client's keys are the client's registration, written by Omejdn's admin
    APIs and its core with whatever the client registered; Omejdn only
    verifies that client's own assertions with the public key, and the
    core's file store writes such a key as given. Refusing would fail the
    admin API with a 500 and the client's other fields with it, so the set
    is stored as given, with a warning naming the target and the expiry
    (and served, warned once more when read: the operator sees it).
    """
    problem = key.certificate_problem(now)
    if problem is None or target_type != CLIENT_CERTIFICATE_TARGET_TYPE:
        return problem
    log.warning("keys %s/%s: key %s stored with a %s", target_type, target, key.kid, problem)
    return None


def key_rows(
    target_type: str, target: str, keys: Iterable[Key], keyring: Keyring | None = None
) -> list[dict[str, Any]]:
    """The rows of a set, the first key as ``sk``/``certs`` and the rest as ``extra_*``;
    private keys sealed when ``keyring`` has a key-encryption key."""
    rows = []
    for position, key in enumerate(keys):
        params = {name: value for name, value in key.params.items() if name != "kid"}
        check_json(params, f"keys {target_type}/{target}: key {key.kid}: descriptor")
        common = {
            "target_type": target_type,
            "target": target,
            "kid": key.kid,
            "params": params,
            "position": position,
            **key.lifecycle.created(_now()).row(),
        }
        first = position == 0
        key_pem = key.key_pem()
        if key_pem is not None and key.private_key is not None and keyring:
            context = row_context(target_type, target, key.kid, SECRET_KEY)
            key_pem = keyring.seal(key_pem, context, public_der(key))
        if key_pem is not None:
            rows.append(
                {**common, "type": SECRET_KEY if first else EXTRA_SECRET_KEY, "value": key_pem}
            )
        if key.certificates:
            rows.append(
                {
                    **common,
                    "type": CERTIFICATES if first else EXTRA_CERTIFICATES,
                    "value": key.certs_pem(),
                }
            )
    return rows


def keys_from_rows(
    target_type: str, target: str, rows: Iterable[Any], keyring: Keyring | None = None
) -> KeySet:
    """A set from its rows (``KEY_COLUMNS``, in any order), in lifecycle order.

    Rows are grouped by kid; ``''`` (a row of the Ruby plugin's) is one key
    whose kid is its thumbprint. ``''`` as a chain is the Ruby plugin's empty
    chain, i.e. none.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = grouped.setdefault(row.kid, {"row": row})
        if row.type in _KEY_TYPES:
            entry["key"] = row.value
            if is_sealed(row.value):
                ring = keyring if keyring is not None else Keyring()
                context = row_context(target_type, target, row.kid, SECRET_KEY)
                what = f"keys {target_type}/{target}: key {row.kid}"
                with located(what, InvalidKeyMaterial):
                    if ring.public_only and not ring.opens(row.value):
                        entry["key"] = _public_pem(ring.public_of(row.value, context))
                        entry["unopened"] = (what, sealed_by(row.value))
                    else:
                        entry["key"] = ring.open(row.value, context)
        elif row.type in _CHAIN_TYPES:
            entry["chain"] = row.value
    keys = []
    owner = (
        f"keys of client {target!r}"
        if target_type == CLIENT_CERTIFICATE_TARGET_TYPE
        else f"keys {target_type}/{target}"
    )
    for kid, entry in sorted(grouped.items(), key=lambda item: item[1]["row"].position):
        row = entry["row"]
        what = owner + (f": key {kid}" if kid else "")
        params: dict[str, Any] = dict(row.params or {})
        if kid:
            params["kid"] = kid
        if not entry.get("key") and not entry.get("chain"):
            if "unopened" in entry:
                where, kek_id = entry["unopened"]
                raise InvalidKeyMaterial(
                    f"{where}: sealed by key-encryption key {kek_id!r}, which is not configured "
                    "here, before its public half was stored with it; list it once with the "
                    "KEK, or run `omejdn-pg keys rewrap` with it, which stores the public half"
                )
            continue  # the Ruby plugin's empty chain of a target without a key
        key = Key.from_pem(
            entry.get("key") or None,
            entry.get("chain") or None,
            params,
            what=what,
            lifecycle=Lifecycle.of_row(row),
        )
        _warn_about_certificate(target_type, target, key)
        keys.append(key)
    return KeySet(lifecycle.ordered(keys))


def _public_pem(public: bytes | None) -> str | None:
    """A sealed value's public half (DER SubjectPublicKeyInfo) as a PEM public key."""
    if public is None:
        return None
    body = base64.encodebytes(public).decode("ascii")
    return f"-----BEGIN PUBLIC KEY-----\n{body}-----END PUBLIC KEY-----\n"


def public_der(key: Key) -> bytes:
    """``key``'s public half as stored beside its sealed private key."""
    from cryptography.hazmat.primitives import serialization

    return key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _warn_about_certificate(target_type: str, target: str, key: Key) -> None:
    problem = key.certificate_problem()
    if problem is None:
        return
    seen = (target_type, target, key.kid, problem)
    if seen not in _warned:
        # Once per process and key: KEYS_LOAD runs for every token signed.
        _warned.add(seen)
        log.warning(
            "keys %s/%s: key %s is published with a %s; rotate it",
            target_type,
            target,
            key.kid,
            problem,
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _lock(conn: Connection, target_type: str, target: str) -> None:
    # A client's keys are also written by the client events, which lock the
    # client: take the same lock, so a KEYS_STORE cannot put back the keys of
    # a client deleted at the same moment.
    if target_type == CLIENT_CERTIFICATE_TARGET_TYPE:
        lock_for_update(conn, "client", target)
    else:
        lock_for_update(conn, "keys", f"{target_type}/{target}")


def public_jwks(keys: Iterable[Key]) -> dict[str, Any]:
    """A JWK Set of ``keys`` with no private member."""
    return {"keys": [key.to_jwk(private=False) for key in keys]}


def signing_jwks(keys: Iterable[Key]) -> dict[str, Any]:
    """KEYS_LOAD's answer: active keys with their private members, the others without."""
    return {"keys": [key.to_jwk(private=key.state == "active") for key in keys]}


class JwksAnswers:
    """KEYS_LOAD and KEYS_LOAD_ALL answers, converted once per stored content.

    A token request loads the signing keys, and turning their rows into a JWK
    Set (parse the PEM, check the key against its certificate, encode every
    RSA number in base64url) costs a third of the read. The rows are still
    read every time, so a changed key is seen at once; only when a target's
    rows are exactly what they were last time is the answer computed then
    reused, as a fresh copy each time (``marshal``: a caller may mutate it).
    One entry per target, the most recent content only; an answer is reused
    only with the keyring it was opened with.
    """

    def __init__(self, max_targets: int = 1024) -> None:
        self._max_targets = max_targets
        self._answers: dict[tuple[str, ...], tuple[object, Sequence[Any], bytes]] = {}

    def signing(
        self, reader: Reader, target_type: str, target: str, keyring: Keyring | None = None
    ) -> dict[str, Any] | None:
        """The target's set with the active keys' private members; None if it has no key."""
        target_type, target = check_target(target_type, target)
        rows = reader.rows(_LOAD, {"target_type": target_type, "target": target})
        if not rows:
            return None

        def convert() -> dict[str, Any] | None:
            keys = keys_from_rows(target_type, target, rows, keyring)
            return signing_jwks(keys) if keys else None

        answer: dict[str, Any] | None = self._answer(
            (target_type, target), keyring, list(rows), convert
        )
        return answer

    def public(
        self, reader: Reader, target_type: str, keyring: Keyring | None = None
    ) -> dict[str, Any]:
        """Every key of ``target_type``, next and retired ones included, without private members."""
        target_type = check_text(target_type, "target_type")
        rows = reader.rows(_LOAD_ALL, {"target_type": target_type})

        def convert() -> dict[str, Any]:
            grouped: dict[str, list[Any]] = {}
            for row in rows:
                grouped.setdefault(row.target, []).append(row)
            return public_jwks(
                key
                for target, owned in grouped.items()
                for key in keys_from_rows(target_type, target, owned, keyring)
            )

        answer: dict[str, Any] = self._answer((target_type,), keyring, list(rows), convert)
        return answer

    def client(
        self,
        client_id: str,
        key_rows: Sequence[Mapping[str, Any]],
        keyring: Keyring | None,
        convert: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """A client's public JWK Set (its ``jwks`` metadata) from its key rows as read.

        The listing reads every client's keys; a token request for a client that
        authenticates with ``private_key_jwt`` reads its one client.
        """
        answer: dict[str, Any] = self._answer(("client", client_id), keyring, key_rows, convert)
        return answer

    def _answer(
        self,
        target: tuple[str, ...],
        keyring: Keyring | None,
        content: Sequence[Any],
        convert: Callable[[], Any],
    ) -> Any:
        # The rows hold every column the answer is computed from, and nothing
        # changes them afterwards (params, a dict, is copied before use).
        found = self._answers.get(target)
        if found is not None and found[0] is keyring and found[1] == content:
            return marshal.loads(found[2])  # noqa: S302 - bytes this process made
        answer = convert()
        if len(self._answers) >= self._max_targets:
            self._answers.clear()
        self._answers[target] = (keyring, content, marshal.dumps(answer))
        return answer
