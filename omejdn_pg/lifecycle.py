"""The key lifecycle: which key of a set signs, which are only published, and when that changes.

Each key is ``next`` (published, never signs), ``active`` (published; a
private ``sig`` key signs) or ``retired`` (published so tokens it signed still
verify), and a retired key is destroyed when its window ends. Relying parties
cache the JWKS (Omejdn serves ``/jwks.json`` with ``max-age=86400``), so a new
key must be published for longer than that before the first token is signed
with it, and an old key must stay published for as long as a token it signed
may be presented. The rules, stated once (the README's "Keys and their
lifecycle" says the same for operators):

1. A target has one *signer*: the key Omejdn's core signs with, the first
   private ``use: sig`` key of ``KEYS_LOAD`` — the active one the lifecycle
   activated last (:func:`ordered` puts it first). Families do not matter:
   an ES256 key replaces an RS256 signer as well as another RSA key does.
2. Activating a signing key — by :func:`advance` when its publish window has
   passed, or by :func:`activate` — makes it *the* signer and retires every
   other active private signing key at the same moment, so that afterwards it
   is the only one. (Only a host's ``KEYS_STORE`` can store several: Omejdn's
   file layout holds them, and its core signs with the first. A set in which
   the lifecycle activated the signer loses such extras at the next
   :func:`advance`.)
3. Retirement and destruction are dated from when the transition happens
   (the ``now`` of the run that applies it), never from when it was
   scheduled: a run that comes late or not at all keeps keys published
   longer, never shorter. A key retired in a run is never destroyed by it.
4. A key is destroyed only when every token it can have signed has expired:
   its last moment as signer (``retired_at``) plus the longest token lifetime
   of the ``omejdn`` section plus the margin (:func:`retirement_window`).
5. A key signs only after it has been published for its publish window:
   :func:`activate` refuses a key before its ``activate_at`` unless forced
   (retiring a ``next`` key and activating it does not skip the window). The
   first key of an empty set signs at once: nobody can have cached a set
   that did not exist.
6. Once a target has a signer it keeps one: retiring or deleting the only
   signing key of a set that holds other keys needs ``force`` (then Omejdn
   cannot sign until a key is activated), and a second signing rotation
   cannot be pending beside the first, whatever its family.

Everything here is a pure function of a key list and a clock, so the rules
are tested without a database and every instance that applies them at the
same ``now`` reaches the same result. Storage applies them inside one
transaction per target (``omejdn_pg.postgres.repositories.keys``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from omejdn_pg.errors import InvalidInput
from omejdn_pg.keys.model import Key
from omejdn_pg.settings.backend import KeyLifecycleSettings

DEFAULT_PUBLISH_FOR: Final = KeyLifecycleSettings.publish_for
DEFAULT_RETIRE_MARGIN: Final = KeyLifecycleSettings.retire_margin
DEFAULT_TOKEN_LIFETIME: Final = datetime.timedelta(seconds=3600)
"""Omejdn's default access and ID token expiration."""
JWKS_MAX_AGE: Final = datetime.timedelta(days=1)
"""How long Omejdn lets relying parties cache ``/jwks.json``."""

TARGET_TYPES: Final = ("omejdn", "clients")
"""The target types Omejdn's core keeps keys for: its own, and its clients'."""

_STATE_RANK: Final = {"active": 0, "next": 1, "retired": 2}


class LifecycleError(InvalidInput):
    """A lifecycle step that would leave a target without a usable key, or names no key."""


class TooEarly(LifecycleError):
    """Activating a key before it has been published for its publish window."""


@dataclass(frozen=True)
class Change:
    """One transition applied to a key, for reports and logs."""

    target_type: str
    target: str
    kid: str
    change: str  # "activated", "retired", "destroyed", "created"

    def __str__(self) -> str:
        return f"keys {self.target_type}/{self.target}: {self.kid} {self.change}"


def check_target_type(target_type: str) -> None:
    """Refuse a target type Omejdn's core has no keys of (a typo would start a new set)."""
    if target_type not in TARGET_TYPES:
        raise LifecycleError(
            f"unknown target type {target_type!r} (target types: {', '.join(TARGET_TYPES)})"
        )


def is_signer(key: Key) -> bool:
    """Whether ``key`` signs: active, private and for ``use: sig``."""
    return key.state == "active" and key.use == "sig" and key.is_private


def can_sign(key: Key) -> bool:
    """Whether ``key`` would sign once active: private and for ``use: sig``."""
    return key.use == "sig" and key.is_private


def signer(keys: Iterable[Key]) -> Key | None:
    """The key Omejdn's core signs with: the first signer in lifecycle order."""
    return next((key for key in ordered(keys) if is_signer(key)), None)


def ordered(keys: Iterable[Key]) -> list[Key]:
    """The set in the order Omejdn's core relies on: active signing keys (the one
    activated last first, then those never activated by the lifecycle), the other
    active keys, next, retired — stable within each group."""
    return sorted(keys, key=_rank)


def _rank(key: Key) -> tuple[int, int, float]:
    if is_signer(key):
        when = key.lifecycle.activate_at
        return (0, 0, -when.timestamp() if when is not None else float("inf"))
    return (_STATE_RANK[key.state], 1, 0.0)


def retirement_window(
    omejdn_section: Mapping[str, Any] | None,
    settings: KeyLifecycleSettings | None = None,
) -> datetime.timedelta:
    """How long a retired key stays published: the longest token lifetime of the
    ``omejdn`` section plus the margin, or the configured ``retire_for`` if longer.

    Omejdn keeps lifetimes in seconds under ``access_token.expiration`` and
    ``id_token.expiration`` (3600 each unless configured). A configured
    window shorter than that would destroy keys whose tokens are still valid,
    so it can only lengthen the window.
    """
    settings = settings or KeyLifecycleSettings()
    lifetimes = []
    for token in ("access_token", "id_token"):
        token_settings = (omejdn_section or {}).get(token)
        seconds = token_settings.get("expiration") if isinstance(token_settings, Mapping) else None
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            lifetimes.append(datetime.timedelta(seconds=seconds))
        else:
            lifetimes.append(DEFAULT_TOKEN_LIFETIME)
    needed = max(lifetimes) + settings.retire_margin
    return max(needed, settings.retire_for) if settings.retire_for is not None else needed


def rotate(
    keys: Sequence[Key],
    new_key: Key,
    now: datetime.datetime,
    publish_for: datetime.timedelta = DEFAULT_PUBLISH_FOR,
) -> list[Key]:
    """Add ``new_key`` as ``next``, to sign from ``now + publish_for`` on.

    The first key of an empty set signs at once. A second pending signing key
    is refused whatever its family, since the later of two activations would
    cut the first one's signing short and it would be open which one wins.
    """
    if any(key.kid == new_key.kid for key in keys):
        raise LifecycleError(f"a key with kid {new_key.kid!r} exists already")
    pending = [k for k in keys if k.state == "next" and can_sign(k)]
    if pending and can_sign(new_key):
        raise LifecycleError(
            f"key {pending[0].kid} ({pending[0].alg}) is already waiting to sign from "
            f"{_show(pending[0].lifecycle.activate_at)}; activate or delete it first"
        )
    if not keys:
        started = new_key.lifecycle.published(now, datetime.timedelta(0)).activated(now)
        return [replace(new_key, lifecycle=started)]
    waiting = replace(new_key, lifecycle=new_key.lifecycle.published(now, publish_for))
    return ordered([*keys, waiting])


def activate(
    keys: Sequence[Key],
    kid: str,
    now: datetime.datetime,
    retire_for: datetime.timedelta,
    *,
    force: bool = False,
) -> list[Key]:
    """Make key ``kid`` the signer from ``now`` on; every other active signing key
    retires at ``now``.

    A key whose publish window has not passed is refused unless ``force``:
    relying parties that cached the JWKS before it was published would reject
    its tokens.
    """
    chosen = _find(keys, kid)
    if not chosen.is_private:
        raise LifecycleError(f"key {kid} has no private key, so it cannot sign")
    if chosen.use != "sig":
        raise LifecycleError(f"key {kid} is for use {chosen.use!r}: it never signs")
    others = [k.kid for k in keys if is_signer(k) and k.kid != kid]
    if is_signer(chosen) and not others:
        return list(keys)
    if (
        not force
        and chosen.state != "active"
        and chosen.lifecycle.activate_at is not None
        and now < chosen.lifecycle.activate_at
    ):
        raise TooEarly(
            f"key {kid} is in its publish window until {_show(chosen.lifecycle.activate_at)} "
            f"(published since {_show(chosen.lifecycle.created_at)}): relying parties that fetched "
            "the JWK Set before then do not know it yet; wait for `keys maintain`, or force it "
            "(--force)"
        )
    result = []
    for key in keys:
        if key.kid == kid:
            key = replace(key, lifecycle=key.lifecycle.activated(now))
        elif key.kid in others:
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
    """Stop publishing key ``kid`` as anything but retired; it stays published for
    ``retire_for`` from ``now``.

    Retiring the signer would leave Omejdn unable to sign any token, so that
    needs ``force``.
    """
    chosen = _find(keys, kid)
    if chosen.state == "retired":
        return list(keys)
    if not force and is_signer(chosen) and sum(map(is_signer, keys)) == 1:
        raise LifecycleError(
            f"key {kid} is the only active signing key; rotate first "
            "(or force it with --force, and Omejdn cannot sign until a key is active)"
        )
    return ordered(_retired(k, now, retire_for) if k.kid == kid else k for k in keys)


def remove(keys: Sequence[Key], kid: str, *, force: bool = False) -> list[Key]:
    """The set without key ``kid``; the only signing key of a set with other keys
    needs ``force``."""
    chosen = _find(keys, kid)
    if not force and len(keys) > 1 and is_signer(chosen) and sum(map(is_signer, keys)) == 1:
        raise LifecycleError(
            f"key {kid} is the signing key; activate another key first, delete the whole "
            "set, or force it with --force (and Omejdn cannot sign until a key is active)"
        )
    return [key for key in keys if key.kid != kid]


def advance(
    keys: Sequence[Key], now: datetime.datetime, retire_for: datetime.timedelta
) -> tuple[list[Key], list[tuple[str, str]]]:
    """Apply every transition due at ``now``: ``(new set, [(kid, change), ...])``.

    A ``next`` key whose time has come becomes active — a signing key becomes
    the signer and the previous signer retires — dated ``now``, however late
    that is. A set holding several active signing keys whose signer the
    lifecycle activated (a host's extras, or a set written before the
    one-signer rule) keeps only the signer. A retired key whose window has ended is
    destroyed; one retired in this run is not, its window starting now.
    Applying it twice changes nothing the second time.
    """
    changes: list[tuple[str, str]] = []
    current = list(keys)
    due = [k for k in current if k.state == "next" and is_due(k, now)]
    for key in sorted(due, key=lambda k: (k.lifecycle.activate_at, k.kid)):
        if can_sign(key):
            retiring = [k.kid for k in current if is_signer(k)]
            current = activate(current, key.kid, now, retire_for, force=True)
        else:
            retiring = []
            current = [
                replace(k, lifecycle=k.lifecycle.activated(now)) if k.kid == key.kid else k
                for k in current
            ]
        changes.append((key.kid, "activated"))
        changes.extend((kid, "retired") for kid in retiring)
    signers = [k for k in ordered(current) if is_signer(k)]
    if len(signers) > 1 and signers[0].lifecycle.activate_at is not None:
        current = activate(current, signers[0].kid, now, retire_for, force=True)
        changes.extend((k.kid, "retired") for k in signers[1:])
    kept = []
    for key in current:
        if key.state == "retired" and is_due(key, now):
            changes.append((key.kid, "destroyed"))
        else:
            kept.append(key)
    return ordered(kept), changes


def is_due(key: Key, now: datetime.datetime) -> bool:
    """Whether :func:`advance` would change ``key`` at ``now``."""
    dates = key.lifecycle
    if dates.state == "next":
        return dates.activate_at is not None and dates.activate_at <= now
    return dates.state == "retired" and dates.destroy_at is not None and dates.destroy_at <= now


def _retired(key: Key, now: datetime.datetime, retire_for: datetime.timedelta) -> Key:
    # A retired key keeps its private key until it is destroyed: an operator
    # may still re-activate it if the new key turns out to be unusable.
    return replace(key, lifecycle=key.lifecycle.retired(now, retire_for))


def _find(keys: Sequence[Key], kid: str) -> Key:
    for key in keys:
        if key.kid == kid:
            return key
    known = ", ".join(key.kid for key in keys) or "none"
    raise LifecycleError(f"no key with kid {kid!r} (keys: {known})")


def _show(moment: datetime.datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "an unknown time"
