"""Field-level differences for ``import -v``: which fields of which record an import changes.

The import engine (:mod:`omejdn_pg.service.transfer`) decides per user, client,
section and key target whether it is created, updated or left alone; it does
not say which fields differ. This module compares the deployment's record
with the stored one, for display only — the engine's decision stands. A
secret is never shown, neither old nor new: a password (hash or plaintext), a
``client_secret`` or a private key that changes prints as ``<changed>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from omejdn_pg.cli.output import compact
from omejdn_pg.service.listing import json_equal

if TYPE_CHECKING:
    from omejdn_pg.entities import Client, User
    from omejdn_pg.passwords import PasswordPolicy

CHANGED: Final = "<changed>"
ABSENT: Final = "(absent)"
SECRET_FIELDS: Final = frozenset({"password", "client_secret"})
JWKS: Final = "jwks"
WIDTH: Final = 72
"""Values longer than this are cut, so a big section's diff stays readable."""


class _Missing:
    def __repr__(self) -> str:
        return ABSENT


MISSING: Final = _Missing()


@dataclass(frozen=True)
class FieldChange:
    """One field of one record: its value before and after (MISSING where it has none)."""

    field: str
    old: Any
    new: Any
    secret: bool = False

    def text(self) -> str:
        if self.secret:
            return f"{self.field}: {CHANGED}"
        return f"{self.field}: {_shown(self.old)} -> {_shown(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        if self.secret:
            return {"field": self.field, "old": CHANGED, "new": CHANGED}
        return {
            "field": self.field,
            "old": None if self.old is MISSING else self.old,
            "new": None if self.new is MISSING else self.new,
        }


def _shown(value: Any) -> str:
    if value is MISSING:
        return ABSENT
    text = compact(value)
    return text if len(text) <= WIDTH else text[: WIDTH - 3] + "..."


def mapping_changes(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    prefix: str = "",
    secret: frozenset[str] = SECRET_FIELDS,
) -> list[FieldChange]:
    """Every key of ``old`` or ``new`` whose value differs, in key order."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        before, after = old.get(key, MISSING), new.get(key, MISSING)
        if before is MISSING or after is MISSING or not json_equal(before, after):
            changes.append(FieldChange(f"{prefix}{key}", before, after, key in secret))
    return changes


def user_changes(
    stored: User | None, entry: Mapping[str, Any], policy: PasswordPolicy
) -> list[FieldChange]:
    """What importing ``entry`` (a users.yml entry, its password maybe plaintext) changes.

    A plaintext password is verified against the stored hash (a bcrypt round)
    only for a stored user.
    """
    from omejdn_pg.entities import User

    planned = User.from_dict({k: v for k, v in entry.items() if k != "password"})
    before = _user_fields(stored) if stored is not None else {}
    after = _user_fields(planned)
    changes = [c for c in mapping_changes(before, after) if not c.field.startswith("attributes")]
    changes += mapping_changes(
        before.get("attributes", {}), after.get("attributes", {}), "attributes."
    )
    password = entry.get("password")
    old_hash = stored.password if stored is not None else None
    if _password_changes(password, old_hash, policy):
        changes.append(FieldChange("password", MISSING, MISSING, secret=True))
    return changes


def _user_fields(user: User) -> dict[str, Any]:
    fields = user.to_dict()
    fields.pop("username")
    fields.pop("password", None)
    return fields


def _password_changes(password: object, old_hash: str | None, policy: PasswordPolicy) -> bool:
    if not isinstance(password, str) or not password:
        return old_hash is not None
    if old_hash is None:
        return True
    if policy.is_hash(password):
        return password != old_hash
    return not policy.verify(password, old_hash)[0]


def client_changes(stored: Client | None, planned: Client) -> list[FieldChange]:
    """What importing ``planned`` over ``stored`` changes: metadata fields, then attributes.

    A client's ``jwks`` shows as its key ids (a key's JSON says little at a glance),
    or as ``<changed>`` when the same keys change otherwise.
    """
    old_metadata = stored.metadata if stored is not None else {}
    old_attributes = stored.attributes if stored is not None else {}
    changes = [
        _by_kids(change) if change.field == JWKS else change
        for change in mapping_changes(old_metadata, planned.metadata)
    ]
    return changes + mapping_changes(old_attributes, planned.attributes, "attributes.")


def _by_kids(change: FieldChange) -> FieldChange:
    old, new = _jwks_kids(change.old), _jwks_kids(change.new)
    if old == new:
        return FieldChange(change.field, MISSING, MISSING, secret=True)
    return FieldChange(f"{change.field} kids", old or MISSING, new or MISSING)


def _jwks_kids(jwks: Any) -> list[Any]:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        return []
    return [key.get("kid") for key in keys if isinstance(key, Mapping)]


def section_changes(stored: Any, planned: Any) -> list[FieldChange]:
    """A mapping section's top-level keys, or a list section as one ``items`` field."""
    if isinstance(stored, Mapping) and isinstance(planned, Mapping):
        return mapping_changes(stored, planned, secret=frozenset())
    if stored is not None and json_equal(stored, planned):
        return []
    return [FieldChange("items", MISSING if stored is None else stored, planned)]


def key_changes(stored: Any, planned: Any, differ: Callable[[Any, Any], bool]) -> list[FieldChange]:
    """A key set: its key ids (public), and whether the keys themselves change — as the
    engine's ``differ`` judges it; never shown, a private key may be among them."""
    changes = []
    old_kids, new_kids = _kids(stored), _kids(planned)
    if old_kids != new_kids:
        changes.append(FieldChange("kid", old_kids or MISSING, new_kids or MISSING))
    if stored is None or differ(stored, planned):
        changes.append(FieldChange("keys", MISSING, MISSING, secret=True))
    return changes


def _kids(material: Any) -> list[str]:
    if material is None:
        return []
    kid = getattr(material, "kid", None)
    if isinstance(kid, str):
        return [kid]
    try:
        return [k.kid for k in material if isinstance(getattr(k, "kid", None), str)]
    except TypeError:
        return []
