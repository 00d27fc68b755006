"""PostgreSQL storage backend for the Omejdn OAuth 2.0 / OpenID Connect server.

The public surface: the host contract (:class:`PluginLoader` and the event
names in :mod:`omejdn_pg.host.events`), the domain objects the events carry, the
facade Omejdn's core calls (:class:`Host`), and the package's exceptions.
"""

from omejdn_pg.entities import Client, KeyMaterial, User
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
from omejdn_pg.host.bootstrap import PluginLoader
from omejdn_pg.host.facade import Host

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
