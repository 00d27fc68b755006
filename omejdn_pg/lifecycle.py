"""The key lifecycle: which key of a set signs, which are only published, and when that changes.

Each key is ``next`` (published, never signs), ``active`` (signs) or
``retired`` (published so tokens it signed still verify), and a retired key is
destroyed when its window ends. The point of ``next`` is the order of events a
rotation needs and that signing with a key the moment it exists gets wrong:
relying parties cache the JWKS (Omejdn serves ``/jwks.json`` with
``max-age=86400``), so a new key must be published for longer than that
before the first token is signed with it, and an old key must stay published
for as long as a token it signed may be presented.

Everything here is a pure function of a key list and a clock, so the rules
are tested without a database and every instance that applies them at the
same time ``now`` reaches the same result. Storage applies them inside one
transaction per target (``omejdn_pg.postgres.repositories.keys``).

The set order is the contract with Omejdn's unchanged core, which signs with
the first private ``sig`` key of ``KEYS_LOAD``: active keys first, then next,
then retired, each group in stored order.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from omejdn_pg.errors import InvalidInput
from omejdn_pg.keys import Key
from omejdn_pg.settings import KeyLifecycleSettings

DEFAULT_PUBLISH_FOR: Final = KeyLifecycleSettings.publish_for
DEFAULT_RETIRE_MARGIN: Final = KeyLifecycleSettings.retire_margin
DEFAULT_TOKEN_LIFETIME: Final = datetime.timedelta(seconds=3600)
"""Omejdn's default access and ID token expiration."""

_STATE_RANK: Final = {"active": 0, "next": 1, "retired": 2}


class LifecycleError(InvalidInput):
    """A lifecycle step that would leave a target without a usable key, or names no key."""


@dataclass(frozen=True)
class Change:
    """One transition applied to a key, for reports and logs."""

    target_type: str
    target: str
    kid: str
    change: str  # "activated", "retired", "destroyed", "created"

    def __str__(self) -> str:
        return f"keys {self.target_type}/{self.target}: {self.kid} {self.change}"


def ordered(keys: Iterable[Key]) -> list[Key]:
    """The set in the order Omejdn's core relies on: active, next, retired (stable)."""
    return sorted(keys, key=lambda key: _STATE_RANK[key.state])


def retirement_window(
    omejdn_section: Mapping[str, Any] | None,
    settings: KeyLifecycleSettings | None = None,
) -> datetime.timedelta:
    """How long a retired key stays published: as configured, else the longest
    token lifetime of the ``omejdn`` section plus the margin.

    Omejdn keeps lifetimes in seconds under ``access_token.expiration`` and
    ``id_token.expiration`` (3600 each unless configured).
    """
    settings = settings or KeyLifecycleSettings()
    if settings.retire_for is not None:
        return settings.retire_for
    margin = settings.retire_margin
    lifetimes = []
    for token in ("access_token", "id_token"):
        token_settings = (omejdn_section or {}).get(token)
        seconds = token_settings.get("expiration") if isinstance(token_settings, Mapping) else None
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            lifetimes.append(datetime.timedelta(seconds=seconds))
        else:
            lifetimes.append(DEFAULT_TOKEN_LIFETIME)
    return max(lifetimes) + margin


def rotate(
    keys: Sequence[Key],
    new_key: Key,
    now: datetime.datetime,
    publish_for: datetime.timedelta = DEFAULT_PUBLISH_FOR,
) -> list[Key]:
    """Add ``new_key`` as ``next``, to sign from ``now + publish_for`` on.

    The first key of an empty set signs at once: nobody can have cached a set
    that did not exist. A second ``next`` key of the same family is refused,
    since two pending rotations would leave it open which one wins.
    """
    if any(key.kid == new_key.kid for key in keys):
        raise LifecycleError(f"a key with kid {new_key.kid!r} exists already")
    pending = [k for k in keys if k.state == "next" and k.family == new_key.family]
    if pending:
        raise LifecycleError(
            f"key {pending[0].kid} ({new_key.family}) is already waiting to become active "
            f"at {_show(pending[0].activate_at)}; activate or delete it first"
        )
    if not keys:
        return [replace(new_key, state="active", created_at=now, activate_at=now)]
    waiting = replace(new_key, state="next", created_at=now, activate_at=now + publish_for)
    return ordered([*keys, waiting])


def activate(
    keys: Sequence[Key], kid: str, now: datetime.datetime, retire_for: datetime.timedelta
) -> list[Key]:
    """Make key ``kid`` sign now; the other active keys of its family retire."""
    chosen = _find(keys, kid)
    if not chosen.is_private:
        raise LifecycleError(f"key {kid} has no private key, so it cannot sign")
    if chosen.state == "active":
        return list(keys)
    result = []
    for key in keys:
        if key.kid == kid:
            key = replace(key, state="active", activate_at=now, retired_at=None, destroy_at=None)
        elif key.state == "active" and key.family == chosen.family:
            key = _retired(key, now, retire_for)
        result.append(key)
    return ordered(result)


def retire(
    keys: Sequence[Key],
    kid: str,
    now: datetime.datetime,
    retire_for: datetime.timedelta,
    *,
    force: bool = False,
) -> list[Key]:
    """Stop signing with key ``kid``; it stays published for ``retire_for``.

    Retiring the last active signing key would leave Omejdn unable to sign any
    token, so that needs ``force``.
    """
    chosen = _find(keys, kid)
    if chosen.state == "retired":
        return list(keys)
    signers = [k for k in keys if k.state == "active" and k.use == "sig" and k.is_private]
    if not force and chosen in signers and len(signers) == 1:
        raise LifecycleError(
            f"key {kid} is the only active signing key; rotate first "
            "(or force it, and Omejdn cannot sign until a key is active)"
        )
    return ordered(_retired(k, now, retire_for) if k.kid == kid else k for k in keys)


def remove(keys: Sequence[Key], kid: str) -> list[Key]:
    """The set without key ``kid``."""
    _find(keys, kid)
    return [key for key in keys if key.kid != kid]


def advance(
    keys: Sequence[Key], now: datetime.datetime, retire_for: datetime.timedelta
) -> tuple[list[Key], list[tuple[str, str]]]:
    """Apply every transition due at ``now``: ``(new set, [(kid, change), ...])``.

    A ``next`` key whose time has come becomes active (retiring the active keys
    of its family); a retired key whose window has ended is destroyed. Applying
    it twice changes nothing the second time.
    """
    changes: list[tuple[str, str]] = []
    current = list(keys)
    for key in list(current):
        if key.state == "next" and key.activate_at is not None and key.activate_at <= now:
            retiring = [
                k.kid
                for k in current
                if k.state == "active" and k.family == key.family and k.kid != key.kid
            ]
            current = activate(current, key.kid, key.activate_at, retire_for)
            changes.append((key.kid, "activated"))
            changes.extend((kid, "retired") for kid in retiring)
    kept = []
    for key in current:
        if key.state == "retired" and key.destroy_at is not None and key.destroy_at <= now:
            changes.append((key.kid, "destroyed"))
        else:
            kept.append(key)
    return ordered(kept), changes


def is_due(key: Key, now: datetime.datetime) -> bool:
    """Whether :func:`advance` would change ``key`` at ``now``."""
    if key.state == "next":
        return key.activate_at is not None and key.activate_at <= now
    return key.state == "retired" and key.destroy_at is not None and key.destroy_at <= now


def _retired(key: Key, now: datetime.datetime, retire_for: datetime.timedelta) -> Key:
    # A retired key keeps its private key until it is destroyed: an operator
    # may still re-activate it if the new key turns out to be unusable.
    return replace(key, state="retired", retired_at=now, destroy_at=now + retire_for)


def _find(keys: Sequence[Key], kid: str) -> Key:
    for key in keys:
        if key.kid == kid:
            return key
    known = ", ".join(key.kid for key in keys) or "none"
    raise LifecycleError(f"no key with kid {kid!r} (keys: {known})")


def _show(moment: datetime.datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "an unknown time"
