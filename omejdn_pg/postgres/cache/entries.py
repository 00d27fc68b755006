"""Cache entries by kind, and which entries a change of a group's key alters.

An entry is keyed ``(kind, *identifiers)``; a change is named by its group
and key as notices carry it. Clients carry their JWKS (key target
``clients/<client_id>``), so the two groups reach into each other's entries.
"""

from __future__ import annotations

from typing import Final

from omejdn_pg.postgres.schema import CLIENT_CERTIFICATE_TARGET_TYPE

CacheKey = tuple[str, ...]
"""``(kind, *identifiers)``: ``config``, ``keys``, ``keys_all``, ``client``, ``user``."""

CONFIG: Final = "config"
KEYS: Final = "keys"
KEYS_ALL: Final = "keys_all"
CLIENT: Final = "client"
USER: Final = "user"
_GROUP_OF_KIND: Final = {
    CONFIG: "config",
    KEYS: "keys",
    KEYS_ALL: "keys",
    CLIENT: "client",
    USER: "user",
}


def affected(group: str, key: tuple[str, ...]) -> list[CacheKey] | None:
    """The entries a change of ``key`` in ``group`` can alter; None if ``key`` is malformed.

    Clients carry their JWKS (key target ``clients/<client_id>``), so a client
    change alters that key set and a change of that key set alters the client.
    """
    if group == "keys" and len(key) == 2:
        target_type, target = key
        found: list[CacheKey] = [(KEYS, target_type, target), (KEYS_ALL, target_type)]
        if target_type == CLIENT_CERTIFICATE_TARGET_TYPE:
            found.append((CLIENT, target))
        return found
    if group == "client" and len(key) == 1:
        return [
            (CLIENT, key[0]),
            (KEYS, CLIENT_CERTIFICATE_TARGET_TYPE, key[0]),
            (KEYS_ALL, CLIENT_CERTIFICATE_TARGET_TYPE),
        ]
    if group in ("config", "user") and len(key) == 1:
        return [(group, key[0])]
    return None


def belongs(entry: CacheKey, group: str) -> bool:
    """Whether a change of the whole ``group`` can alter ``entry``."""
    kind = entry[0]
    if group == "keys":
        return kind in (KEYS, KEYS_ALL, CLIENT)
    if group == "client":
        return kind == CLIENT or (
            kind in (KEYS, KEYS_ALL) and entry[1] == CLIENT_CERTIFICATE_TARGET_TYPE
        )
    return kind == group


def group_of(entry: CacheKey) -> str:
    return _GROUP_OF_KIND.get(entry[0], entry[0])
