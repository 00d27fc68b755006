"""PostgreSQL storage backend for the Omejdn OAuth 2.0 / OpenID Connect server.

The public surface: the host contract (:class:`PluginLoader` and the event
names in :mod:`omejdn_pg.host.events`), the domain objects the events carry, the
facade Omejdn's core calls (:class:`Host`), and the package's exceptions.

The classes are imported when first used, not with the package: a host that
imports ``omejdn_pg`` (or ``omejdn-pg --help``) does not pay for SQLAlchemy,
psycopg and cryptography until it touches them.
"""

import importlib
from typing import TYPE_CHECKING, Any

from omejdn_pg.errors import (
    AlreadyExists,
    ConfigurationError,
    InvalidInput,
    InvalidKeyMaterial,
    InvalidSectionName,
    InvalidValue,
    NotFound,
    OmejdnPgError,
    SchemaOutOfDate,
    StorageError,
    StorageUnavailable,
)

if TYPE_CHECKING:
    from omejdn_pg.entities import Client, KeyMaterial, User
    from omejdn_pg.host.loader import PluginLoader
    from omejdn_pg.service.host import Host

_LAZY = {
    "Client": "omejdn_pg.entities",
    "KeyMaterial": "omejdn_pg.entities",
    "User": "omejdn_pg.entities",
    "PluginLoader": "omejdn_pg.host.loader",
    "Host": "omejdn_pg.service.host",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "AlreadyExists",
    "Client",
    "ConfigurationError",
    "Host",
    "InvalidInput",
    "InvalidKeyMaterial",
    "InvalidSectionName",
    "InvalidValue",
    "KeyMaterial",
    "NotFound",
    "OmejdnPgError",
    "PluginLoader",
    "SchemaOutOfDate",
    "StorageError",
    "StorageUnavailable",
    "User",
]
