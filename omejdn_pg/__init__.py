"""PostgreSQL storage backend for the Omejdn OAuth 2.0 / OpenID Connect server.

The public surface: the host contract (:class:`PluginLoader` and the event
names in :mod:`omejdn_pg.host.events`), the domain objects the events carry, the
service layer Omejdn's core calls (:class:`Host`), and the package's exceptions.

The classes are imported when first used, not with the package: a host that
imports ``omejdn_pg`` (or ``omejdn-pg --help``) does not pay for SQLAlchemy,
psycopg and cryptography until it touches them.
"""

from typing import TYPE_CHECKING

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
from omejdn_pg.lazy import lazy_names

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


__getattr__, __dir__ = lazy_names(globals(), _LAZY)


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
