"""Private keys sealed at rest: envelope encryption bound to the row that holds the value.

A sealed value is ``$omejdn-pg-sealed$v1$<kek id>$<wrapped key>$<ciphertext>[$<public>]``:
a fresh 256-bit data key encrypts the PEM with AES-256-GCM, and the
key-encryption key (KEK) named in the value wraps that data key with
AES-256-GCM too. Both encryptions take the row's identity —
``target_type``, ``target``, ``kid`` and the row kind — as associated data, so
a sealed value copied to another row (another target, another kid) does not
open, and the value says which KEK opens it, so several can be configured:
the first seals, all open. Re-wrapping under a new KEK touches only the
wrapped data key, never the key material's ciphertext.

The optional last field is the key's public half (DER, base64url) in clear,
so that listing keys and publishing the JWKS need no KEK; it is part of the
associated data too, so a public half swapped by someone with write access
to the table makes the value fail to open (until then, a process without the
KEK publishes what the row says, as it does a certificate row). Values
sealed before the field existed have none: those need the KEK, or a
certificate, to be listed without it, and ``keys rewrap`` adds it.

The trade-offs, stated where they are made: a database superuser still sees
which targets have keys and can delete them (sealing is about reading, not
integrity of the whole table); whoever holds a KEK and a dump reads every key
it sealed; and a Ruby Omejdn sharing the database cannot read sealed keys at
all, since it expects a PEM in ``value``.

KEKs come from an environment variable or a file (32 bytes, base64 or
base64url; a file may hold the raw 32 bytes). A KMS is one more
:class:`KeySource`: anything that can wrap and unwrap a data key by id.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from omejdn_pg.errors import ConfigurationError, InvalidKeyMaterial

PREFIX: Final = "$omejdn-pg-sealed$v1$"
KEK_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A KEK id is a ``$``-separated field of the value: no ``$``, nothing a shell or
a log would mangle (``omejdn_pg.settings.validation`` refuses the same when configured)."""
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32


class KeySource(Protocol):
    """Something that wraps and unwraps data keys under one key-encryption key."""

    @property
    def id(self) -> str: ...

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


@dataclass(frozen=True)
class LocalKey:
    """A key-encryption key held in this process (from an environment variable or a file)."""

    id: str
    secret: bytes = field(repr=False)
    origin: str = ""
    """Where it came from, for messages (the variable's or file's name, never the value)."""

    def __post_init__(self) -> None:
        if not KEK_ID.fullmatch(self.id):
            raise ConfigurationError(
                f"key-encryption key id {self.id!r} is not allowed: 1 to 64 letters, digits, "
                "'.', '_' or '-'"
            )
        if len(self.secret) != KEY_BYTES:
            raise ConfigurationError(
                f"key-encryption key {self.id!r} ({self.origin}) must be {KEY_BYTES} bytes, "
                f"got {len(self.secret)}"
            )

    def __repr__(self) -> str:
        return f"LocalKey(id={self.id!r}, origin={self.origin!r})"

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(self.secret).encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return AESGCM(self.secret).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)


def row_context(target_type: str, target: str, kid: str, kind: str) -> bytes:
    """The associated data that binds a sealed value to its row."""
    return "\x00".join(("omejdn-pg", target_type, target, kid, kind)).encode("utf-8")


class Keyring:
    """The configured key-encryption keys: the first seals, every one opens."""

    def __init__(self, keys: Sequence[KeySource] = (), *, public_only: bool = False) -> None:
        """``public_only``: a value sealed by a KEK that is not here reads as its public
        half (``keys list``, ``keys jwks``) instead of failing; see :meth:`public_of`."""
        self.public_only = public_only
        self.unopened: set[bytes] = set()
        """Row contexts of the values read as their public half only (``public_only``)."""
        ids = [key.id for key in keys]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigurationError(f"key-encryption key ids must be unique: {duplicates}")
        self.keys = list(keys)
        self._by_id = {key.id: key for key in keys}

    def __repr__(self) -> str:
        return f"Keyring({[key.id for key in self.keys]!r})"

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def current(self) -> KeySource | None:
        return self.keys[0] if self.keys else None

    def seal(self, plaintext: str, context: bytes, public: bytes | None = None) -> str:
        """``plaintext`` sealed under the current KEK; unchanged when none is configured.

        ``public``: the key's public half (DER SubjectPublicKeyInfo), kept in
        clear as a fourth field so that listing and publishing keys need no KEK,
        and bound to the value as associated data so that a swapped one makes
        the value fail to open.
        """
        kek = self.current
        if kek is None:
            return plaintext
        bound = _bound(context, public)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = nonce + AESGCM(data_key).encrypt(nonce, plaintext.encode("utf-8"), bound)
        wrapped = kek.wrap(data_key, bound)
        return _format(kek.id, wrapped, ciphertext, public)

    def opens(self, value: str) -> bool:
        """Whether the KEK that sealed ``value`` is here (a plain value: True)."""
        kek_id = sealed_by(value)
        return kek_id is None or kek_id in self._by_id

    def public_of(self, value: str, context: bytes) -> bytes | None:
        """The public half stored with a sealed ``value`` (None: sealed before it was kept),
        for a ``public_only`` keyring without the KEK that sealed it."""
        self.unopened.add(context)
        return _fields(value)[3]

    def open(self, value: str, context: bytes) -> str:
        """The plaintext of a sealed ``value`` (a plain value is returned as it is).

        InvalidKeyMaterial when it cannot be opened; the caller, which knows the row,
        puts it first (:func:`omejdn_pg.errors.located`)."""
        if not is_sealed(value):
            return value
        kek_id, wrapped, ciphertext, public = _fields(value)
        bound = _bound(context, public)
        kek = self._by_id.get(kek_id)
        if kek is None:
            configured = ", ".join(repr(k.id) for k in self.keys) or "none"
            raise InvalidKeyMaterial(
                f"sealed by key-encryption key {kek_id!r}, which is not configured "
                f"(configured: {configured})"
            )
        try:
            data_key = kek.unwrap(wrapped, bound)
            nonce, body = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
            return AESGCM(data_key).decrypt(nonce, body, bound).decode("utf-8")
        except (InvalidTag, ValueError) as error:
            raise InvalidKeyMaterial(
                f"key-encryption key {kek_id!r} does not open the sealed value "
                "(a different key under the same id, or a value copied from another row)"
            ) from error

    def rewrap(self, value: str, context: bytes) -> str:
        """``value`` sealed under the current KEK: a sealed one gets its data key wrapped
        anew (the ciphertext is kept), a plain one is sealed."""
        kek = self.current
        if kek is None:
            raise ConfigurationError("no key-encryption key is configured to seal with")
        if not is_sealed(value):
            return self.seal(value, context)
        kek_id, wrapped, ciphertext, public = _fields(value)
        if kek_id == kek.id:
            return value
        bound = _bound(context, public)
        old = self._by_id.get(kek_id)
        if old is None:
            raise InvalidKeyMaterial(
                f"sealed by key-encryption key {kek_id!r}, which is not configured"
            )
        try:
            data_key = old.unwrap(wrapped, bound)
        except (InvalidTag, ValueError) as error:
            raise InvalidKeyMaterial(
                f"key-encryption key {kek_id!r} does not open the sealed value"
            ) from error
        return _format(kek.id, kek.wrap(data_key, bound), ciphertext, public)

    @classmethod
    def from_settings(
        cls, entries: Iterable[Mapping[str, str]], environ: Mapping[str, str] | None = None
    ) -> Keyring:
        """KEKs from ``[{id, env: NAME} | {id, file: PATH}, ...]``."""
        env = os.environ if environ is None else environ
        keys: list[KeySource] = []
        for entry in entries:
            kek_id = entry["id"]
            if "env" in entry:
                name = entry["env"]
                origin = f"environment variable {name}"
                text = env.get(name)
                if not text:
                    raise ConfigurationError(f"key-encryption key {kek_id!r}: {origin} is not set")
                secret = _decode_secret(text.strip().encode("ascii", "replace"), kek_id, origin)
            else:
                path = Path(entry["file"])
                origin = f"file {path}"
                try:
                    raw = path.read_bytes()
                except OSError as error:
                    raise ConfigurationError(
                        f"key-encryption key {kek_id!r}: cannot read {origin}: {error.strerror}"
                    ) from None
                secret = (
                    raw if len(raw) == KEY_BYTES else _decode_secret(raw.strip(), kek_id, origin)
                )
            keys.append(LocalKey(kek_id, secret, origin))
        return cls(keys)


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def sealed_by(value: str) -> str | None:
    """The id of the KEK that sealed ``value``, or None for a plain value."""
    if not is_sealed(value):
        return None
    return value[len(PREFIX) :].split("$", 1)[0]


def check_sealed(value: str) -> str:
    """The id of the KEK that sealed ``value``, after checking that the value is well
    formed — without opening it (a backup is checked with no KEK at hand)."""
    kek_id, wrapped, ciphertext = _parts(value)
    if not kek_id or not wrapped or not ciphertext:
        raise InvalidKeyMaterial("the sealed value is malformed")
    return kek_id


def generate_secret() -> str:
    """A new key-encryption key, base64url, for an environment variable or a file."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _parts(value: str) -> tuple[str, bytes, bytes]:
    kek_id, wrapped, ciphertext, _public = _fields(value)
    return kek_id, wrapped, ciphertext


def public_half(value: str) -> bytes | None:
    """The public half stored in clear with a sealed ``value``; None when it has none."""
    return _fields(value)[3]


def _fields(value: str) -> tuple[str, bytes, bytes, bytes | None]:
    """``(kek id, wrapped data key, ciphertext, public half or None)`` of a sealed value."""
    try:
        kek_id, wrapped, ciphertext, *rest = value[len(PREFIX) :].split("$")
        if len(rest) > 1 or (rest and not rest[0]):
            raise ValueError("too many fields")
        public = _unb64(rest[0]) if rest else None
        return kek_id, _unb64(wrapped), _unb64(ciphertext), public
    except (ValueError, binascii.Error) as error:
        raise InvalidKeyMaterial("the sealed value is malformed") from error


def _format(kek_id: str, wrapped: bytes, ciphertext: bytes, public: bytes | None) -> str:
    value = f"{PREFIX}{kek_id}${_b64(wrapped)}${_b64(ciphertext)}"
    return value + f"${_b64(public)}" if public else value


def _bound(context: bytes, public: bytes | None) -> bytes:
    """The associated data: the row's identity, and the public half stored in clear."""
    return context if public is None else context + b"\x00public\x00" + public


def _decode_secret(text: bytes, kek_id: str, origin: str) -> bytes:
    try:
        padded = text + b"=" * (-len(text) % 4)
        secret = base64.urlsafe_b64decode(padded.replace(b"+", b"-").replace(b"/", b"_"))
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"key-encryption key {kek_id!r} ({origin}) is not base64"
        ) from None
    if len(secret) != KEY_BYTES:
        raise ConfigurationError(
            f"key-encryption key {kek_id!r} ({origin}) must decode to {KEY_BYTES} bytes, "
            f"got {len(secret)}"
        )
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
