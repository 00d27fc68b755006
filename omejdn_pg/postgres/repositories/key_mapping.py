"""Key sets as rows of ``keys``: a set to its rows and back, sealing and opening on the way.

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

With a keyring (setting ``key_encryption``), private keys are sealed as they
are written and opened as they are read (:mod:`omejdn_pg.sealing`); each
sealed value is bound to ``(target_type, target, kid, "sk")`` — the row kind
without its ``extra_`` prefix, since a key changes between ``sk`` and
``extra_sk`` as the lifecycle reorders the set. Public keys and chains are
never sealed: they are published anyway.

Parsing is strict: a stored PEM that cannot be read raises InvalidKeyMaterial
naming the target instead of being skipped, because silently missing a
signing key is worse than a clear error.
"""

from __future__ import annotations

import base64
import datetime
import logging
from collections.abc import Iterable
from typing import Any, Final

from sqlalchemy import Table

from omejdn_pg import lifecycle
from omejdn_pg.errors import InvalidKeyMaterial, located
from omejdn_pg.json_values import check_json
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.keys.states import Lifecycle
from omejdn_pg.postgres.schema import (
    CERTIFICATES,
    CLIENT_CERTIFICATE_TARGET_TYPE,
    EXTRA_CERTIFICATES,
    EXTRA_SECRET_KEY,
    SECRET_KEY,
    KeyRecord,
)
from omejdn_pg.sealing import Keyring, is_sealed, row_context, sealed_by

log = logging.getLogger(__name__)

KEYS: Final[Table] = KeyRecord.__table__  # type: ignore[assignment]

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


KEY_TYPES: Final = {SECRET_KEY: "key", EXTRA_SECRET_KEY: "key"}
CHAIN_TYPES: Final = {CERTIFICATES: "chain", EXTRA_CERTIFICATES: "chain"}

_warned: set[tuple[str, str, str, str]] = set()


def is_private_pem(value: str) -> bool:
    return "PRIVATE KEY-----" in value


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
            **key.lifecycle.created(now()).row(),
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
        if row.type in KEY_TYPES:
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
        elif row.type in CHAIN_TYPES:
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


def now() -> datetime.datetime:
    """The moment key rows are dated by (one place, so a test can move the clock)."""
    return datetime.datetime.now(datetime.UTC)
